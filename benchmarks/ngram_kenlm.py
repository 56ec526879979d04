"""n-gram queries: chainrule against KenLM's Python module on the same ARPA file, side by side.

Tiny Shakespeare, word level, as ``benchmarks/ngram_nltk.py`` splits it (lines lower-cased and
whitespace-split, empty lines dropped; the first 90% train, the last 10% test; tokens seen < 2
times are ``<unk>``). For each order (3 and 5 by default), chainrule fits interpolated modified
Kneser-Ney and writes an ARPA file; then *both* libraries read that file (``NgramLM.from_arpa``,
``kenlm.Model``) and score every test sentence with ``<s>`` before and ``</s>`` after:
chainrule's ``sentence_log_probs(sentences)`` (token lists in, one call for the corpus) and
KenLM's ordinary ``model.score(" ".join(s), bos=True, eos=True)`` in a list comprehension (the
sentences joined into strings beforehand, outside the timing). The two alternate ``--repeats`` times
in one process with one thread; the best time of each is compared (process CPU time and wall clock),
and the scores must agree (ARPA stores log10 values with 6-7 digits: up to ~1e-5 per sentence). Each
call then runs right after the *other* library's, on caches that hold the other's tables; the
``warm_*`` numbers time blocks of 5 calls of one side in a row instead (blocks alternating).

With ``--before-src DIR`` (a src/ tree of an older chainrule) the same is run in a fresh process on
that tree too, for a before/after comparison of chainrule's own speed; ``--rounds`` fresh processes
per tree alternate (after, before, after, before, ...) and the round with the best chainrule time
of each tree is reported (all rounds are in the JSON, with the machine's load averages around each).

    python benchmarks/ngram_kenlm.py --orders 3 5 --repeats 15 [--before-src /tmp/before/src] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import data_dir, write_result  # noqa: E402

SRC = str(Path(__file__).resolve().parents[1] / "src")


def load_split() -> tuple[list[list[str]], list[list[str]]]:
    text = (Path(data_dir()) / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    lines = [ln.lower().split() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln]
    cut = int(0.9 * len(lines))
    return lines[:cut], lines[cut:]


def lscpu() -> dict[str, str]:
    """``lscpu``'s model name and the flags that matter for vectorized code (empty where there is no lscpu)."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    keep = [f for f in flags if f.startswith(("avx", "amx", "fma", "sse4", "bmi"))]
    return {"model_name": fields.get("Model name", "").strip(), "cpus": fields.get("CPU(s)", "").strip(),
            "flags": " ".join(keep)}


def best(fn, repeats: int) -> tuple[Any, float, float]:  # noqa: ANN001
    cpu, wall, out = math.inf, math.inf, None
    for _ in range(repeats):
        c, w = time.process_time(), time.perf_counter()
        out = fn()
        cpu, wall = min(cpu, time.process_time() - c), min(wall, time.perf_counter() - w)
    return out, cpu, wall


def worker(arpa: str, repeats: int) -> dict[str, Any]:
    """Score the test set with chainrule (whatever ``chainrule`` imports) and KenLM, alternating."""
    import kenlm

    import chainrule
    from chainrule.lm.ngram import NgramLM

    _, test = load_split()
    joined = [" ".join(s) for s in test]
    ours = NgramLM.from_arpa(arpa)
    theirs = kenlm.Model(arpa)
    ours.sentence_log_probs(test)  # first touch (builds look-up tables) outside the timing
    cr_cpu = cr_wall = kl_cpu = kl_wall = math.inf
    for _ in range(repeats):  # alternate, keep the best of each
        a, c, w = best(lambda: ours.sentence_log_probs(test), 1)
        cr_cpu, cr_wall = min(cr_cpu, c), min(cr_wall, w)
        b, c, w = best(lambda: [theirs.score(s, bos=True, eos=True) for s in joined], 1)
        kl_cpu, kl_wall = min(kl_cpu, c), min(kl_wall, w)
    # the same, each side called 5 times in a row per block (blocks alternate): caches warm with
    # that side's own tables instead of the other's, as when one library scores batch after batch
    warm_cr = warm_kl = math.inf
    for _ in range(max(1, repeats // 5)):
        warm_cr = min(warm_cr, best(lambda: ours.sentence_log_probs(test), 5)[1])
        warm_kl = min(warm_kl, best(lambda: [theirs.score(s, bos=True, eos=True) for s in joined], 5)[1])
    diff = np.abs(np.asarray(a) / math.log(10) - np.asarray(b))
    n = len(test)
    return {"chainrule": chainrule.__file__, "sentences": n, "tokens_scored": int(sum(len(s) + 1 for s in test)),
            "chainrule_sentences_per_s_cpu": n / cr_cpu, "kenlm_sentences_per_s_cpu": n / kl_cpu,
            "chainrule_sentences_per_s_wall": n / cr_wall, "kenlm_sentences_per_s_wall": n / kl_wall,
            "ratio_cpu": kl_cpu / cr_cpu, "ratio_wall": kl_wall / cr_wall,
            "warm_chainrule_sentences_per_s_cpu": n / warm_cr, "warm_kenlm_sentences_per_s_cpu": n / warm_kl,
            "warm_ratio_cpu": warm_kl / warm_cr,
            "max_abs_diff_log10_per_sentence": float(diff.max())}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        print(json.dumps(worker(sys.argv[2], int(sys.argv[3]))))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--orders", type=int, nargs="+", default=[3, 5])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--before-src", default=None)
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    sys.path.insert(0, SRC)
    from chainrule.lm.ngram import NgramLM

    train, _ = load_split()
    load = [os.getloadavg()]
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.orders:
            arpa = str(NgramLM(n, "kneser-ney").fit(train, min_count=2).to_arpa(Path(tmp) / f"w{n}.arpa"))
            entry: dict[str, Any] = {"rounds": []}
            for _ in range(args.rounds):
                for tag, src in (("after", SRC), ("before", args.before_src)):
                    if src is None:
                        continue
                    env = {**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": "1"}
                    before_load = os.getloadavg()
                    res = subprocess.run([sys.executable, __file__, "--worker", arpa, str(args.repeats)], env=env,
                                         capture_output=True, text=True, check=True)
                    got = {"tag": tag, **json.loads(res.stdout.strip().splitlines()[-1]),
                           "load_average_1_5_15_before_after": [before_load, os.getloadavg()]}
                    entry["rounds"].append(got)
                    if tag not in entry or got["chainrule_sentences_per_s_cpu"] > entry[tag]["chainrule_sentences_per_s_cpu"]:
                        entry[tag] = got
                    print(n, tag, json.dumps(got), flush=True)
            out[str(n)] = entry
            load.append(os.getloadavg())
    write_result("ngram_kenlm", {"orders": args.orders, "repeats": args.repeats, "rounds": args.rounds,
                                 "before_src": args.before_src, "lscpu": lscpu(), "load_average_1_5_15": load,
                                 "results": out})


if __name__ == "__main__":
    main()
