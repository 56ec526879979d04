"""Classic density estimators on scikit-learn's 8x8 digits (the book's split 1000 / 350 / 447).

1. RNADE on uniformly dequantized digits, y = (x + u) / 17 in [0, 1)^64, against scikit-learn's
   GaussianMixture (full covariance; the number of components chosen on the validation split),
   fitted and scored on exactly the same dequantized arrays, in one run. Reported: test
   log-likelihood per image in nats (higher is better) and the discrete-equivalent NLL bound
   -log p(y) + 64 log 17.
2. Categorical NADE (17-way softmax per pixel) on the discrete digits: test NLL in nats, to set
   beside the causal-conv ARM (benchmarks/digits_arm.py).

    python benchmarks/digits_density.py --threads 1
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

import chainrule  # noqa: E402
from chainrule.data import load_dataset  # noqa: E402
from chainrule.inference.likelihood import evaluate  # noqa: E402
from chainrule.training import TrainConfig, Trainer  # noqa: E402


def fit(name: str, ds, seed: int, **hp) -> tuple[chainrule.AutoregressiveModel, dict]:
    torch.manual_seed(seed)
    model = chainrule.create_model(name, ds.shape, ds.num_values, **hp)
    config = TrainConfig(epochs=1000, batch_size=64, lr=1e-3, optimizer="adam", patience=30, seed=seed)
    res = Trainer(model, config, progress=False).fit(ds.train, ds.val, train_transform=ds.train_transform)
    return model, {"epochs_run": res.epochs_run, "best_epoch": res.best_epoch, "train_seconds": round(res.train_seconds, 1),
                   "best_val_nll_nats": res.best_val_nll_nats, "parameters": model.num_parameters(), "hyperparameters": hp}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out: dict = {}

    # 1. RNADE vs GaussianMixture on the same dequantized data
    from sklearn.mixture import GaussianMixture

    dq = load_dataset("digits", dequantize=True, seed=args.seed)
    offset = dq.discrete_nll_offset_nats()
    # the GMM gets one fixed dequantization of the training set (it cannot re-draw noise per batch)
    g = torch.Generator().manual_seed(args.seed + 1)
    train_np = dq.train_transform(dq.train, g).reshape(len(dq.train), -1).numpy().astype(np.float64)
    val_np = dq.val.reshape(len(dq.val), -1).numpy().astype(np.float64)
    test_np = dq.test.reshape(len(dq.test), -1).numpy().astype(np.float64)
    t0 = time.perf_counter()
    gmm_rows = []
    best = None
    for k in (1, 2, 5, 10, 20, 30, 50):
        for reg in (1e-6, 1e-4, 1e-3):
            gm = GaussianMixture(k, covariance_type="full", reg_covar=reg, random_state=args.seed, max_iter=500).fit(train_np)
            v = gm.score(val_np)  # mean log-likelihood per example, nats
            gmm_rows.append({"components": k, "reg_covar": reg, "val_ll_nats": v})
            if best is None or v > best[0]:
                best = (v, gm, k, reg)
    v, gm, k, reg = best
    gmm_test = gm.score(test_np)
    out["gmm"] = {"components": k, "reg_covar": reg, "val_ll_nats": v, "test_ll_nats": gmm_test,
                  "test_nll_discrete_bound_nats": -gmm_test + offset, "fit_seconds_all": round(time.perf_counter() - t0, 1),
                  "grid": gmm_rows}
    print("GMM", out["gmm"]["components"], gmm_test, flush=True)

    rnade, info = fit("rnade", dq, args.seed, hidden_size=100, num_mixture_components=10)
    r = evaluate(rnade, dq.test)
    out["rnade"] = {**info, "test_ll_nats": -r.nll_nats, "test_nll_discrete_bound_nats": r.nll_nats + offset}
    print("RNADE", -r.nll_nats, flush=True)
    out["rnade_minus_gmm_test_ll_nats"] = -r.nll_nats - gmm_test

    # 2. Categorical NADE on the discrete digits
    ds = load_dataset("digits")
    nade, info = fit("nade", ds, args.seed, hidden_size=500)
    t = evaluate(nade, ds.test)
    out["categorical_nade"] = {**info, "test_nll_nats": t.nll_nats, "test_bits_per_dim": t.bits_per_dim}
    print("NADE", t.nll_nats, flush=True)
    out["uniform_nll_nats"] = 64 * math.log(17)
    write_result("digits_density", out)


if __name__ == "__main__":
    main()
