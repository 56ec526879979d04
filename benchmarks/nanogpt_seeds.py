"""nanoGPT's own training at its README CPU configuration, over several seeds, scored exactly.

The spread between seeds of chainrule's GPT (``benchmarks/tinyshakespeare.py --seed S``) is compared
with nanoGPT's: this runs karpathy/nanoGPT's ``train.py`` itself (a checkout given by ``--nanogpt``,
run as it is, nothing copied into chainrule) with its README CPU command

    python train.py config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20
        --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128
        --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0

once per seed. ``train.py`` seeds with ``torch.manual_seed(1337 + seed_offset)`` and has no option
for it, so a small wrapper adds ``S - 1337`` to that call (seed 1337 is the unchanged script).
Its checkpoint (the weights of its best *estimated* validation loss, 20 random batches every 250
iterations, as it keeps them) is then scored with the exact definition both sides use in
BENCHMARKS.md §2: every non-overlapping window s[i:i+65], i = 0, 64, ..., of the validation split
(the last 10% of the text), 64 predictions from 1..64 characters of context, mean nats/char.

    python benchmarks/nanogpt_seeds.py --nanogpt PATH --seeds 1337 1338 1339 1340 1341
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import data_dir, write_result  # noqa: E402

README_ARGS = ["config/train_shakespeare_char.py", "--device=cpu", "--compile=False", "--eval_iters=20",
               "--log_interval=1", "--block_size=64", "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128",
               "--max_iters=2000", "--lr_decay_iters=2000", "--dropout=0.0"]

# run train.py as its own __main__, with torch.manual_seed shifted by the seed's offset from 1337
WRAPPER = """
import runpy, sys, torch
offset, threads = int(sys.argv[1]), int(sys.argv[2])
torch.set_num_threads(threads)
seed = torch.manual_seed
torch.manual_seed = lambda s: seed(s + offset)
sys.argv = ["train.py"] + sys.argv[3:]
runpy.run_path("train.py", run_name="__main__")
"""


def prepare(root: Path) -> Path:
    """nanoGPT's own ``prepare.py`` on the tiny Shakespeare text of ``../shared/data`` (it would
    download the same file)."""
    folder = root / "data" / "shakespeare_char"
    if not (folder / "val.bin").is_file():
        shutil.copyfile(Path(data_dir()) / "tinyshakespeare" / "input.txt", folder / "input.txt")
        subprocess.run([sys.executable, "prepare.py"], cwd=folder, check=True)
    return folder


def exact_val_loss(root: Path, ckpt_path: Path, val: np.ndarray) -> tuple[float, int]:
    """Mean cross-entropy (nats/char) of the checkpoint over every non-overlapping 65-character window."""
    spec = importlib.util.spec_from_file_location("nanogpt_model", root / "model.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["nanogpt_model"] = mod
    spec.loader.exec_module(mod)
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    model = mod.GPT(mod.GPTConfig(**ckpt["model_args"]))
    model.load_state_dict({k.removeprefix("_orig_mod."): v for k, v in ckpt["model"].items()})
    model.eval()
    starts = np.arange(0, len(val) - 64, 64)
    windows = torch.from_numpy(np.stack([val[i:i + 65].astype(np.int64) for i in starts]))
    total, count = 0.0, 0
    with torch.no_grad():
        for a in range(0, len(windows), 256):
            w = windows[a:a + 256]
            logits, _ = model(w[:, :-1].contiguous(), w[:, 1:].contiguous())
            total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), w[:, 1:].reshape(-1), reduction="sum"))
            count += w[:, 1:].numel()
    return total / count, count


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nanogpt", required=True, help="a checkout of karpathy/nanoGPT")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1337, 1338, 1339, 1340, 1341])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--name", default="nanogpt_seeds")
    args = ap.parse_args()
    root = Path(args.nanogpt).resolve()
    val = np.fromfile(prepare(root) / "val.bin", dtype=np.uint16)
    runs = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as out:
            t0 = time.perf_counter()
            res = subprocess.run([sys.executable, "-c", WRAPPER, str(seed - 1337), str(args.threads), *README_ARGS,
                                  f"--out_dir={out}"], cwd=root, capture_output=True, text=True,
                                 env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
            if res.returncode:
                raise SystemExit(res.stderr[-3000:])
            seconds = time.perf_counter() - t0
            estimates = [line for line in res.stdout.splitlines() if line.startswith("step ")]
            loss, scored = exact_val_loss(root, Path(out) / "ckpt.pt", val)
        runs.append({"seed": seed, "val_loss_nats_per_char": loss, "val_tokens_scored": scored,
                     "wall_seconds": seconds, "last_estimate": estimates[-1] if estimates else None})
        print(runs[-1], flush=True)
    losses = [r["val_loss_nats_per_char"] for r in runs]
    write_result(args.name, {"nanogpt": str(root), "readme_args": README_ARGS, "threads": args.threads, "runs": runs,
                             "mean": statistics.mean(losses),
                             "stdev": statistics.stdev(losses) if len(losses) > 1 else None,
                             "load_average_after": list(os.getloadavg())})


if __name__ == "__main__":
    main()
