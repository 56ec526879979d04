"""GPT training step against nanoGPT's, side by side in one process, alternating step by step.

nanoGPT (github.com/karpathy/nanoGPT; its ``model.py`` imported from a checkout given by
``--nanogpt``, run as it is, nothing copied) at its README CPU configuration — 4 layers, 4 heads,
128 dims, context 64, batch 12, no dropout, AdamW (lr 1e-3, betas (0.9, 0.99), weight decay 0.1 on
matrices), gradient clipping 1.0, no biases (``bias=False``, its ``train.py`` default) — against chainrule's ``transformer`` with the same
configuration, on the same random windows of tiny Shakespeare (chainrule's window is 65 tokens,
whose 64 predictions after the first are exactly nanoGPT's). One step = forward, loss,
backward, clip, AdamW step.

Arms: chainrule at ``precision="auto"`` (its default: measured at its first step, said in the
result) and ``"float32"``; nanoGPT at its default on a CPU (its ``train.py`` runs the CPU without
autocast: float32) — so "both at their defaults" is chainrule auto vs nanoGPT, "both float32" is
chainrule float32 vs nanoGPT. The first two rounds warm up (and hold auto's measurement).

With ``--nanogpt-compile`` a fourth arm runs nanoGPT as its ``train.py`` does by default
(``compile=True``: ``torch.compile`` of the model, inductor's C++ backend on a CPU; its README's CPU
command passes ``--compile=False``); its compile time (the first step) is reported apart and left
out of the median. ``--bf16-arm`` adds chainrule forced to bf16 autocast, for reference;
``--chainrule-compile`` adds chainrule's bf16 step with its forward and loss under ``torch.compile``
(not something ``precision="auto"`` does: measured to see what compiling would buy, and its cost).

    python benchmarks/gpt_nanogpt_step.py --nanogpt PATH --threads 1 --steps 40 [--nanogpt-compile]
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import data_dir, write_result  # noqa: E402

import chainrule  # noqa: E402
from chainrule.data import load_dataset  # noqa: E402
from chainrule.training import TrainConfig, Trainer  # noqa: E402
from chainrule.training.precision import network_nll  # noqa: E402


def load_nanogpt(root: Path):
    spec = importlib.util.spec_from_file_location("nanogpt_model", root / "model.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["nanogpt_model"] = mod
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nanogpt", required=True, help="a checkout of karpathy/nanoGPT (its model.py)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=12)
    ap.add_argument("--nanogpt-compile", action="store_true", help="add nanoGPT under torch.compile (train.py's default)")
    ap.add_argument("--bf16-arm", action="store_true", help="add chainrule forced to bf16 autocast")
    ap.add_argument("--chainrule-compile", action="store_true", help="add chainrule bf16 under torch.compile")
    ap.add_argument("--name", default="gpt_nanogpt_step", help="the result file's name")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_before = list(os.getloadavg())
    ng = load_nanogpt(Path(args.nanogpt))
    ds = load_dataset("tinyshakespeare", data_dir(), block_size=65)
    g = torch.Generator().manual_seed(0)
    batches = [ds.train[torch.randint(len(ds.train), (args.batch_size,), generator=g)] for _ in range(args.steps + 2)]

    torch.manual_seed(1337)
    cfg = dict(optimizer="adamw", lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1, grad_clip=1.0, batch_size=args.batch_size)
    trainers = {}
    for p in ("auto", "float32") + (("bfloat16",) if args.bf16_arm else ()):
        model = chainrule.create_model("transformer", ds.shape, ds.num_values, num_layers=4, num_heads=4, embed_dim=128)
        trainers[p] = Trainer(model, TrainConfig(precision=p, **cfg), progress=False)
    # bias=False: nanoGPT's train.py default (its GPTConfig's own default is True, GPT-2's), as
    # chainrule's transformer; 2026-12-06 and before this benchmark gave nanoGPT bias=True
    theirs = ng.GPT(ng.GPTConfig(block_size=64, vocab_size=ds.num_values, n_layer=4, n_head=4, n_embd=128,
                                 dropout=0.0, bias=False))
    opt = theirs.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu")

    def nanogpt_step(model, optimizer):
        def step(w: torch.Tensor) -> None:
            _, loss = model(w[:, :-1].contiguous(), w[:, 1:].contiguous())
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return step

    runs = {"chainrule auto": lambda w: trainers["auto"].train_step(w, None, 1e-3),
            "chainrule float32": lambda w: trainers["float32"].train_step(w, None, 1e-3),
            "nanoGPT (default: float32 on a CPU)": nanogpt_step(theirs, opt)}
    if args.bf16_arm:
        runs["chainrule bfloat16"] = lambda w: trainers["bfloat16"].train_step(w, None, 1e-3)
    if args.chainrule_compile:  # the bf16 training pass and float32 loss compiled; AdamW as the trainer builds it
        twin_cr = copy.deepcopy(trainers["float32"].model)
        twin_cr_opt = Trainer(twin_cr, TrainConfig(precision="bfloat16", **cfg), progress=False).optimizer
        loss_fn = torch.compile(lambda w: network_nll(twin_cr, w, None, torch.bfloat16).mean() / twin_cr.dim)

        def step_compiled(w: torch.Tensor) -> None:
            loss = loss_fn(w)
            twin_cr_opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(twin_cr.parameters(), 1.0)
            twin_cr_opt.step()
    first: dict[str, float] = {}
    if args.chainrule_compile:
        runs["chainrule bfloat16, torch.compile"] = step_compiled
    if args.nanogpt_compile:  # a second nanoGPT, same initial weights, compiled as train.py does
        twin = ng.GPT(ng.GPTConfig(block_size=64, vocab_size=ds.num_values, n_layer=4, n_head=4, n_embd=128,
                                   dropout=0.0, bias=False))
        twin.load_state_dict(theirs.state_dict())
        twin_opt = twin.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu")
        runs["nanoGPT compiled (train.py's default compile=True)"] = nanogpt_step(torch.compile(twin), twin_opt)
    times: dict[str, list[float]] = {k: [] for k in runs}
    for k, w in enumerate(batches):
        for label, fn in runs.items():
            t0 = time.perf_counter()
            fn(w)
            if k == 0:
                first[label] = time.perf_counter() - t0  # auto's measurement, oneDNN's kernels, the compile
            if k >= 2:
                times[label].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    tps = {k: args.batch_size * 64 / v for k, v in med.items()}  # 64 predictions per window on both sides
    nano = "nanoGPT (default: float32 on a CPU)"
    comp = "nanoGPT compiled (train.py's default compile=True)"
    write_result(args.name, {
        "load_average_before_after": [load_before, list(os.getloadavg())],
        "steps": args.steps, "batch_size": args.batch_size,
        "parameters": {"chainrule": trainers["auto"].model.num_parameters(), "nanoGPT": sum(p.numel() for p in theirs.parameters())},
        "auto_chose": trainers["auto"].choose_precision(batches[0]).label,
        "auto_measured_ms": {k: round(v * 1000, 2) for k, v in trainers["auto"].choose_precision(batches[0]).seconds.items()},
        "median_step_seconds": {k: round(v, 5) for k, v in med.items()},
        "tokens_per_second": {k: round(v) for k, v in tps.items()},
        "ratio_auto_over_nanogpt_defaults": round(tps["chainrule auto"] / tps[nano], 3),
        "ratio_float32_over_nanogpt_float32": round(tps["chainrule float32"] / tps[nano], 3),
        "first_step_seconds": {k: round(v, 3) for k, v in first.items()},
        **({"ratio_auto_over_nanogpt_compiled": round(tps["chainrule auto"] / tps[comp], 3)} if comp in tps else {}),
    })


if __name__ == "__main__":
    main()
