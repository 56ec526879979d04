"""σ-GPT (``sigma_gpt``, any order) on fixed-binarization MNIST: a short order-agnostic training run.

Trains with a fresh random order per image (order-agnostic), validates each "epoch" of
``--steps-per-epoch`` steps on the first ``--val-images`` validation images in raster order (the
full 10,000 cost minutes per pass on a shared CPU), and reports the test NLL (nats/image) of the
best checkpoint in raster order, in ``--test-orders`` random orders (each image its own order) and
of an ensemble over ``--ensemble`` orders, on the first ``--test-images`` test images.

    python benchmarks/any_order_mnist.py --max-seconds 2400 --name any_order_mnist_sigma
    python benchmarks/any_order_mnist.py --max-seconds 2400 --name any_order_mnist_sigma --resume   # continue

The checkpoint (runs/NAME/best) is what ``benchmarks/any_order_decoding.py`` and the README's
completion pictures use.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import data_dir, write_result  # noqa: E402

import chainrule  # noqa: E402
from chainrule.cli.common import parse_hyperparameters  # noqa: E402
from chainrule.data import load_dataset  # noqa: E402
from chainrule.inference.likelihood import evaluate  # noqa: E402
from chainrule.training import TrainConfig, Trainer  # noqa: E402
from chainrule.training.trainer import TrainingInterrupted  # noqa: E402


def random_order_nll(model, x: torch.Tensor, seed: int, batch: int = 100) -> float:
    """Mean -log p(x) (nats) with a uniformly random order per image (exact in each order)."""
    g = torch.Generator().manual_seed(seed)
    total = 0.0
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            xb = x[i:i + batch]
            e = model.group_features(model.embed(xb))
            o = torch.rand(len(xb), model.num_groups, generator=g).argsort(1)
            params = model.forward_embedded(e, o, None)
            xg = model.groups.gather(xb.reshape(len(xb), -1))
            total += float(-model.head(params).log_prob(xg).sum())
    return total / len(x)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-p", "--param", action="append", default=[])
    ap.add_argument("--name", default="any_order_mnist_sigma")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--steps-per-epoch", type=int, default=200)
    ap.add_argument("--epochs", type=int, default=1000)
    ap.add_argument("--val-images", type=int, default=500)
    ap.add_argument("--test-images", type=int, default=1000)
    ap.add_argument("--test-orders", type=int, default=1)
    ap.add_argument("--max-seconds", type=float, default=2400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resume", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ds = load_dataset("binarized-mnist", data_dir())
    hp = {"num_layers": 4, "num_heads": 4, "embed_dim": 64}
    hp.update(parse_hyperparameters(args.param))
    torch.manual_seed(args.seed)
    model = chainrule.create_model("sigma_gpt", ds.shape, ds.num_values, **hp)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, optimizer="adamw",
                         weight_decay=0.0, schedule="constant", grad_clip=1.0, patience=None,
                         steps_per_epoch=args.steps_per_epoch, max_seconds=args.max_seconds, seed=args.seed)
    out = Path("runs") / args.name
    extra = {"dataset": "binarized-mnist", "data_dir": data_dir(), "command": sys.argv}
    trainer = Trainer(model, config, out_dir=out, extra=extra, progress=False)
    try:
        res = trainer.fit(ds.train, ds.val[:args.val_images], resume=args.resume)
    except TrainingInterrupted as exc:
        sys.exit(exc.exit_code)
    best = chainrule.load(out / "best").eval()
    test = ds.test[:args.test_images]
    t0 = time.perf_counter()
    raster = evaluate(best, test).nll_nats
    rand = [random_order_nll(best, test, seed=s) for s in range(args.test_orders)]
    write_result(args.name, {
        "model": "sigma_gpt", "hyperparameters": best.config["hyperparameters"], "parameters": best.num_parameters(),
        "train_config": vars(args), "epochs_run": res.epochs_run, "best_epoch": res.best_epoch,
        "steps": res.epochs_run * args.steps_per_epoch, "train_seconds": round(res.train_seconds, 1),
        "best_val_nll_nats_raster": res.best_val_nll_nats,
        "test_images": len(test), "test_nll_nats_raster": raster,
        "test_nll_nats_random_orders": rand, "eval_seconds": round(time.perf_counter() - t0, 1),
        "val_curve_nats": [round(r["val_nll_nats"], 3) for r in res.history],
    })
    print(f"test NLL raster {raster:.2f}, random orders {[round(r, 2) for r in rand]} nats/image "
          f"({len(test)} images); {res.epochs_run * args.steps_per_epoch} steps in {res.train_seconds:.0f} s")


if __name__ == "__main__":
    main()
