"""Sampling 28x28 binary images with the image models: the cached step against the naive sampler
that re-runs the whole network on the image at every pixel (pytorch-generative's and
openai/pixel-cnn's way; openai/pixel-cnn#10: 11 minutes for 16 images).

Every naive step costs the same full pass, so the naive sampler is timed over its first
``--naive-steps`` pixels and its time per image is that times 784 / steps (the JSON says so).
The cached sampler is timed over whole images. The two are checked to draw the same pixels from
one seed over the naive steps. Targets (issue 10): >= 20x at batch 64; 64 digits in under 30 s.

    python benchmarks/image_sampling.py --threads 1
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_result  # noqa: E402

import chainrule  # noqa: E402

MODELS = {
    "pixelcnn": {"channels": 64, "num_layers": 12, "head_channels": 64},
    "gated_pixelcnn": {"channels": 64, "num_layers": 8, "head_channels": 64},
    "pixelcnnpp": {"channels": 64, "num_resnets": 2},
    "row_lstm": {"hidden_channels": 32, "num_layers": 4},
    "diagonal_bilstm": {"hidden_channels": 32, "num_layers": 4},
}


@torch.inference_mode()
def cached(model: chainrule.AutoregressiveModel, n: int, steps: int, g: torch.Generator) -> torch.Tensor:
    state, prev, out = model.init_state(n), None, []
    for i in range(steps):
        params, state = model.step(state, i, prev)
        prev = model.head(params).sample(g)
        out.append(prev[:, 0])
    return torch.stack(out, 1)


@torch.inference_mode()
def naive(model: chainrule.AutoregressiveModel, n: int, steps: int, g: torch.Generator) -> torch.Tensor:
    x = torch.zeros(n, model.dim, dtype=torch.long)
    order = model.order.tolist()
    for i in range(steps):
        params = model(x.reshape(n, *model.shape))[:, order[i]]  # the full pass over the image
        x[:, order[i]] = model.head(params).sample(g)[:, 0]
    return x[:, order[:steps]]


def merge(rows: list[dict], previous: Path) -> list[dict]:
    """Keep the rows of models not re-measured in this run (``--models`` picks a subset)."""
    if not previous.is_file():
        return rows
    import json

    done = {(r["model"], r["batch"]) for r in rows}
    return [r for r in json.loads(previous.read_text()).get("rows", []) if (r["model"], r["batch"]) not in done] + rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--naive-steps", type=int, default=56, help="pixels the naive sampler is timed over (2 rows)")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.models:
        torch.manual_seed(0)
        model = chainrule.create_model(name, (1, 28, 28), 2, **MODELS[name]).eval()
        d = model.dim
        for n in args.batches:
            a = cached(model, n, args.naive_steps, torch.Generator().manual_seed(1))
            b = naive(model, n, args.naive_steps, torch.Generator().manual_seed(1))
            assert torch.equal(a, b), f"{name}: cached and naive samplers drew different pixels"
            t0 = time.perf_counter()
            cached(model, n, d, torch.Generator().manual_seed(2))
            t_cached = time.perf_counter() - t0
            t0 = time.perf_counter()
            naive(model, n, args.naive_steps, torch.Generator().manual_seed(2))
            t_naive = (time.perf_counter() - t0) * d / args.naive_steps
            row = {"model": name, "batch": n, "parameters": model.num_parameters(),
                   "cached_seconds": round(t_cached, 2), "naive_seconds_projected": round(t_naive, 1),
                   "naive_steps_timed": args.naive_steps, "speedup": round(t_naive / t_cached, 1),
                   "cached_images_per_s": round(n / t_cached, 2), "naive_images_per_s": round(n / t_naive, 3)}
            print(row, flush=True)
            rows.append(row)
    rows = merge(rows, Path(__file__).resolve().parent / "results" / "image_sampling.json")
    write_result("image_sampling", {"benchmark": "image_sampling", "command": " ".join(["python"] + sys.argv),
                                    "machine": machine(), "models": MODELS, "rows": rows})


if __name__ == "__main__":
    main()
