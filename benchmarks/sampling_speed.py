"""Sampling speed: the incremental cache of each sequence model against re-running the model on
the whole prefix at every step (what nanoGPT's `generate` and a naive sampler do).

For each architecture a model with a context of 512 tokens generates 512 new tokens, at batch 1 and
batch 64, both ways; reported: tokens per second and the speed-up. The uncached baseline reads
only the prefix so far (not the padded window), which is the cheapest uncached sampler. The two
ways are checked to give the same conditionals on the first steps.

Targets (issue 4): transformer >= 5x, WaveNet (>= 10 layers) >= 10x, LSTM >= 20x.

    python benchmarks/sampling_speed.py --threads 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

import chainrule  # noqa: E402

MODELS = {
    "transformer": {"num_layers": 4, "num_heads": 4, "embed_dim": 128},
    "wavenet": {"layers_per_stack": 10, "num_stacks": 1, "residual_channels": 64, "skip_channels": 128},
    "lstm": {"hidden_size": 256, "num_layers": 2, "embedding_size": 64},
}


@torch.inference_mode()
def cached(model: chainrule.AutoregressiveModel, n: int, steps: int, g: torch.Generator) -> torch.Tensor:
    state, prev, out = model.init_state(n), None, []
    for i in range(steps):
        params, state = model.step(state, i, prev)
        prev = model.head(params).sample(g)  # (n, 1): one variable per group
        out.append(prev[:, 0])
    return torch.stack(out, 1)


@torch.inference_mode()
def uncached(model: chainrule.AutoregressiveModel, n: int, steps: int, g: torch.Generator) -> torch.Tensor:
    x = torch.zeros(n, 0, dtype=torch.long)
    for i in range(steps):
        # the whole prefix so far, plus a dummy last token whose own value the output at i never reads
        inp = torch.cat([x, torch.zeros(n, 1, dtype=torch.long)], 1)
        params = model.forward_embedded(model.encode_values(inp), torch.arange(i + 1), None)[:, i]
        x = torch.cat([x, model.head(params).sample(g)], 1)
    return x


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=65)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.models:
        hp = MODELS[name]
        torch.manual_seed(0)
        model = chainrule.create_model(name, (args.tokens,), args.vocab, **hp).eval()
        # same conditionals both ways: same seed -> same tokens
        a = cached(model, 2, 8, torch.Generator().manual_seed(1))
        b = uncached(model, 2, 8, torch.Generator().manual_seed(1))
        assert torch.equal(a, b), f"{name}: cached and uncached sampling disagree"
        for n in args.batches:
            times = {}
            for way, fn in (("cached", cached), ("uncached", uncached)):
                t0 = time.perf_counter()
                fn(model, n, args.tokens, torch.Generator().manual_seed(0))
                times[way] = time.perf_counter() - t0
            row = {"model": name, "batch": n, "parameters": model.num_parameters(),
                   "cached_tokens_per_s": round(n * args.tokens / times["cached"], 1),
                   "uncached_tokens_per_s": round(n * args.tokens / times["uncached"], 1),
                   "speedup": round(times["uncached"] / times["cached"], 2),
                   "cached_seconds": round(times["cached"], 2), "uncached_seconds": round(times["uncached"], 2)}
            if name == "wavenet":
                row["layers"] = len(model.dilations)
                row["receptive_field"] = model.receptive_field
            rows.append(row)
            print(row, flush=True)
    suffix = "" if args.models == list(MODELS) else "_" + "_".join(args.models)
    write_result("sampling_speed" + suffix, {"new_tokens": args.tokens, "vocab": args.vocab, "rows": rows,
                                              "models": {m: MODELS[m] for m in args.models}})


if __name__ == "__main__":
    main()
