"""The same behaviour after a refactoring: short training runs on two source trees, side by side.

Each case is one ``chainrule train`` command (float32, fixed seed, so that the arithmetic cannot
depend on a timing measurement), run in a fresh process on the old tree and on the new one,
alternating ``--repeats`` times. Reported per case: whether the two trees wrote bit-identical
weights (``best/`` and ``last/``) and the same ``log.csv`` NLL columns, and the ratio of their
training times (the ``seconds`` column: time inside training and validation, not imports), the
median over repeats, new / old. For example

    git -C . archive a966acc src | tar -x -C /tmp/before
    python benchmarks/same_behaviour.py --before-src /tmp/before/src --repeats 3
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_result  # noqa: E402

NEW_SRC = Path(__file__).resolve().parents[1] / "src"

#: name -> the arguments after `chainrule train` (each a few seconds on one thread).
CASES: dict[str, list[str]] = {
    "gated_pixelcnn-digits": ["gated_pixelcnn", "--dataset", "digits", "-p", "channels=16", "-p", "num_layers=3",
                              "--steps-per-epoch", "60", "--epochs", "2"],
    "made-digits": ["made", "--dataset", "digits", "-p", "hidden_sizes=[200]", "-p", "num_masks=2",
                    "--steps-per-epoch", "60", "--epochs", "2"],
    "nade-digits": ["nade", "--dataset", "digits", "-p", "hidden_size=100", "--steps-per-epoch", "60", "--epochs", "2"],
    "transformer-text": ["transformer", "--dataset", "{text}", "--block-size", "32", "-p", "embed_dim=32",
                         "-p", "num_layers=2", "-p", "num_heads=2", "--steps-per-epoch", "60", "--epochs", "2"],
}
COMMON = ["--precision", "float32", "--seed", "0", "--threads", "1", "--no-progress", "--num-samples", "1"]


def digest(run: Path) -> str:
    h = hashlib.sha256()
    for sub in ("best", "last"):
        for f in sorted((run / sub).glob("*.safetensors")):
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def log_rows(run: Path) -> tuple[list[list[str]], float]:
    with open(run / "log.csv") as f:
        rows = list(csv.DictReader(f))
    nll = [[r[k] for k in ("epoch", "train_nll_nats", "val_nll_nats")] for r in rows]
    return nll, sum(float(r["seconds"]) for r in rows)


def run_once(src: Path, args: list[str], work: Path) -> tuple[str, list[list[str]], float]:
    out = work / "run"
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1", "CHAINRULE_CACHE_DIR": str(work / "cache")}
    cmd = [sys.executable, "-m", "chainrule", "train", *args, *COMMON, "--out", str(out), "--force"]
    p = subprocess.run(cmd, env=env, cwd=work, capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed with PYTHONPATH={src}:\n{p.stderr[-2000:]}")
    rows, seconds = log_rows(out)
    return digest(out), rows, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before-src", required=True, type=Path, help="the old tree's src/ directory")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--name", default="same_behaviour")
    args = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        text = Path(tmp) / "text.txt"
        text.write_text("the quick brown fox jumps over the lazy dog. " * 400)
        for name in args.cases:
            case = [a.replace("{text}", str(text)) for a in CASES[name]]
            times: dict[str, list[float]] = {"old": [], "new": []}
            seen: dict[str, set] = {"old": set(), "new": set()}
            rows: dict[str, list] = {}
            for r in range(args.repeats):
                for side, src in (("old", args.before_src), ("new", NEW_SRC))[:: 1 if r % 2 == 0 else -1]:
                    work = Path(tmp) / f"{name}-{side}-{r}"
                    work.mkdir()
                    d, rws, sec = run_once(src.resolve(), case, work)
                    seen[side].add(d)
                    rows[side] = rws
                    times[side].append(sec)
            same = seen["old"] == seen["new"] and len(seen["old"]) == 1 and rows["old"] == rows["new"]
            ratio = statistics.median(times["new"]) / statistics.median(times["old"])
            results[name] = {"identical": same, "weights": {k: sorted(v) for k, v in seen.items()},
                             "log_rows": rows, "seconds": times, "new_over_old": ratio}
            print(f"{name}: identical weights and log rows: {same}; training time new/old {ratio:.3f} "
                  f"(old {[round(t, 2) for t in times['old']]}, new {[round(t, 2) for t in times['new']]})", flush=True)
    load = os.getloadavg()
    write_result(args.name, {"machine": machine(), "load_average_after": load, "before_src": str(args.before_src),
                             "cases": results})


if __name__ == "__main__":
    main()
