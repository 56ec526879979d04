"""Any-order runs (``sigma_gpt``): likelihood in several orders, exact burst sampling against
ancestral sampling, and the approximate parallel steps, all in one process on one thread.

1. NLL of the first ``--eval-examples`` validation examples: in the model's order (left to right /
   raster), and in a uniformly random order per example (each exact in its order).
2. Sampling ``-n`` examples, ancestral (one pass per variable, the key/value cache) and burst
   (exact, :func:`chainrule.inference.parallel.burst_sample`, a random order per sample), each run
   ``--repeats`` times, alternating (ratios from the same run): passes per sample, wall time, and
   the NLL of the samples under the model (raster order), which must agree within noise.
   Also: -log p(hidden | observed) per hidden variable for random masks with 20/50/80% observed.
3. The approximate steps (:func:`chainrule.inference.parallel.parallel_sample`, NOT the model's
   distribution) for each S in ``--steps``: the NLL of their samples under the model, against
   ancestral sampling's (the entropy estimate every exact sampler shares).

    python benchmarks/any_order_decoding.py runs/ts_any_sigma_side --name any_order_decoding_text
    python benchmarks/any_order_decoding.py runs/any_order_mnist_sigma --name any_order_decoding_mnist
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import data_dir, machine, write_result  # noqa: E402

import chainrule  # noqa: E402
from chainrule.cli.common import checkpoint_dir  # noqa: E402
from chainrule.data import load_dataset  # noqa: E402
from chainrule.inference.parallel import burst_sample, parallel_sample  # noqa: E402
from chainrule.io.checkpoint import read_config  # noqa: E402


def nll(model, x: torch.Tensor, order=None, per_example_random: int | None = None, batch: int = 50) -> float:
    """Mean NLL (nats per example); ``per_example_random``: a seed, each example its own random order."""
    return float(nlls(model, x, order, per_example_random, batch).mean())


def nlls(model, x: torch.Tensor, order=None, per_example_random: int | None = None, batch: int = 50) -> torch.Tensor:
    """NLL of every example (nats), ``(N,)``."""
    out = []
    g = None if per_example_random is None else torch.Generator().manual_seed(per_example_random)
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            xb, _ = model.validate(x[i:i + batch])
            if g is None:
                out.append(-model.log_prob(xb, order=order))
                continue
            o = torch.rand(len(xb), model.num_groups, generator=g).argsort(1)
            params = model.forward_embedded(model.group_features(model.embed(xb)), o, None)
            out.append(-model.head(params).log_prob(model.groups.gather(xb.reshape(len(xb), -1))).sum(-1))
    return torch.cat(out).double()


def mean_se(v: torch.Tensor) -> dict:
    return {"mean": float(v.mean()), "standard_error": float(v.std() / len(v) ** 0.5)}


def hidden_nll(model, x: torch.Tensor, fraction: float, seed: int = 0, batch: int = 50) -> float:
    """-log p(x_hidden | x_observed) in nats per hidden variable: each example its own random mask
    (each variable observed with probability ``fraction``) and order (observed first, then the rest
    in a random order); exact, the chain rule over the hidden variables after the observed ones."""
    g = torch.Generator().manual_seed(seed)
    total, count = 0.0, 0
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            xb, _ = model.validate(x[i:i + batch])
            n = len(xb)
            seen = torch.rand(n, model.num_groups, generator=g) < fraction
            key = torch.rand(n, model.num_groups, generator=g) + 2.0 * (~seen)
            o = key.argsort(1)
            params = model.forward_embedded(model.group_features(model.embed(xb)), o, None)
            lp = model.head(params).log_prob(model.groups.gather(xb.reshape(n, -1)))  # (n, G)
            total += float(-(lp * ~seen).sum())
            count += int((~seen).sum())
    return total / max(count, 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("--name", required=True)
    ap.add_argument("-n", type=int, default=32, help="samples per sampler run")
    ap.add_argument("--windows", type=int, nargs="+", default=[4, 8, 16], help="burst: variables drafted per iteration")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--steps", type=int, nargs="+", default=None, help="approximate steps S (default: G, G/4, G/16, 8, 1)")
    ap.add_argument("--eval-examples", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ckpt = checkpoint_dir(args.run)
    extra = read_config(ckpt).get("extra", {})
    model = chainrule.load(ckpt).eval()
    ds = load_dataset(extra["dataset"], data_dir(), **({"block_size": extra["block_size"]} if "block_size" in extra else {}))
    g = model.num_groups
    val = ds.val[:args.eval_examples]
    res: dict = {"run": str(ckpt), "model": model.config, "parameters": model.num_parameters(), "machine": machine(),
                 "eval_examples": len(val), "dim": g}
    res["val_nll_model_order"] = nll(model, val)
    res["val_nll_random_orders"] = nll(model, val, per_example_random=0)
    print(f"val NLL (first {len(val)}): model order {res['val_nll_model_order']:.3f}, random orders "
          f"{res['val_nll_random_orders']:.3f} nats/example ({res['val_nll_model_order'] / g:.4f} / "
          f"{res['val_nll_random_orders'] / g:.4f} per variable)")

    res["hidden_nll_per_variable"] = {}
    for frac in (0.2, 0.5, 0.8):
        res["hidden_nll_per_variable"][str(frac)] = hidden_nll(model, val, frac)
        print(f"observed {frac:.0%}: -log p(hidden | observed) {res['hidden_nll_per_variable'][str(frac)]:.4f} "
              "nats per hidden variable")

    kinds = ["ancestral"] + [f"burst_w{w}" for w in args.windows]
    runs: dict[str, list] = {k: [] for k in kinds}
    samples: dict[str, list] = {k: [] for k in kinds}
    for r in range(args.repeats):
        for kind in kinds:
            gen = torch.Generator().manual_seed(100 + r)
            t0 = time.perf_counter()
            if kind == "ancestral":  # one random order per call (the cost does not depend on it)
                x = model.sample(args.n, generator=gen, order=f"random:{r}")
                passes = float(g)
            else:
                x, st = burst_sample(model, args.n, generator=gen, window=int(kind[7:]), return_stats=True)
                passes = float(st["passes"].float().mean())
            dt = time.perf_counter() - t0
            v = nlls(model, x)
            samples[kind].append(v)
            runs[kind].append({"seconds": dt, "passes_per_sample": passes, "sample_nll": float(v.mean())})
            print(f"{kind:11s} repeat {r}: {dt:.1f} s, {passes:.1f} passes/sample, sample NLL {float(v.mean()):.2f}")
    for kind, rows in runs.items():
        res[kind] = {"runs": rows, "median_seconds": statistics.median(r["seconds"] for r in rows),
                     "passes_per_sample": statistics.mean(r["passes_per_sample"] for r in rows),
                     "sample_nll": mean_se(torch.cat(samples[kind]))}
        if kind != "ancestral":
            res[kind]["pass_reduction"] = g / res[kind]["passes_per_sample"]
            res[kind]["wall_time_ratio_ancestral_over_burst"] = res["ancestral"]["median_seconds"] / res[kind]["median_seconds"]
            print(f"{kind}: {res[kind]['pass_reduction']:.2f}x fewer passes, wall time ancestral/burst "
                  f"{res[kind]['wall_time_ratio_ancestral_over_burst']:.2f}; sample NLL {res[kind]['sample_nll']}")
    print(f"ancestral sample NLL {res['ancestral']['sample_nll']}")

    steps = args.steps or sorted({g, max(1, g // 4), max(1, g // 16), 8, 1}, reverse=True)
    res["approximate"] = []
    for s in steps:
        t0 = time.perf_counter()
        x = parallel_sample(model, args.n * args.repeats, s, generator=torch.Generator().manual_seed(7))
        dt = time.perf_counter() - t0
        row = {"steps": s, "seconds": dt, "sample_nll": mean_se(nlls(model, x))}
        res["approximate"].append(row)
        print(f"approximate, {s} steps: {dt:.1f} s, sample NLL {row['sample_nll']}")
    res["args"] = vars(args)
    write_result(args.name, res)


if __name__ == "__main__":
    main()
