"""Speculative sampling on tiny Shakespeare: tokens per second and acceptance rate against plain
cached sampling from the same target, side by side (alternating, in one process, one thread).

Target: a character-level GPT run (nanoGPT's CPU configuration, trained with the README's command);
drafts: a smaller GPT run over the same characters, and a character 5-gram (Kneser-Ney) fitted on
the same training text, wrapped as a ``FunctionDraft``. Each repetition generates the window's worth
of new tokens after a prompt from the validation text, with the plain sampler (``generate``, the
key/value cache) and with each speculative configuration, in turn; reported: the median tokens/s
of each, the ratio to plain sampling, the acceptance rate and the new tokens per target pass.

    python benchmarks/speculative.py --target runs/gpt --draft runs/gpt-small --data-dir DATA --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import data_dir, write_result  # noqa: E402

import chainrule  # noqa: E402
from chainrule.inference.sampling import generate  # noqa: E402
from chainrule.inference.speculative import FunctionDraft, speculative_generate  # noqa: E402
from chainrule.io.checkpoint import read_config  # noqa: E402
from chainrule.lm.ngram import NgramLM  # noqa: E402
from chainrule.text.tokenizers import tokenizer_from_dict  # noqa: E402


def ngram_draft(text: str, tok, order: int) -> tuple[FunctionDraft, float]:
    """A character n-gram over the training text (one 'sentence' of characters), mapped to the run's ids."""
    t0 = time.perf_counter()
    lm = NgramLM(order, "kneser-ney").fit([list(text)])
    fit_s = time.perf_counter() - t0
    ids = np.array([lm.token_id(tok.id_to_token(i)) for i in range(tok.vocab_size)])

    def fn(ctx: list[int]) -> torch.Tensor:  # the ids' look-up of NgramLM.next_log_probs, without strings
        return torch.from_numpy(lm._next_log_probs(ids[ctx[-(order - 1):]])[ids]).float()

    return FunctionDraft(fn), fit_s


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True, help="the target run (a character-level GPT)")
    ap.add_argument("--draft", required=True, help="a smaller run over the same characters")
    ap.add_argument("--data-dir", default=data_dir())
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=8)
    ap.add_argument("--gammas", type=int, nargs="+", default=[2, 4, 6])
    ap.add_argument("--ngram-order", type=int, default=5)
    ap.add_argument("--prompt-chars", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ckpt_t, ckpt_d = (Path(r) / "best" if (Path(r) / "best").is_dir() else Path(r) for r in (args.target, args.draft))
    target, small = chainrule.load(ckpt_t), chainrule.load(ckpt_d)
    tok = tokenizer_from_dict(read_config(ckpt_t)["extra"]["tokenizer"])
    raw = (Path(args.data_dir) / "tinyshakespeare" / "input.txt").read_text()
    cut = int(len(raw) * 0.9)  # the runs' 90/10 split by position
    draft_ng, fit_s = ngram_draft(raw[:cut], tok, args.ngram_order)
    new = target.dim - args.prompt_chars
    prompts = [tok.encode(raw[cut + 997 * r: cut + 997 * r + args.prompt_chars]) for r in range(args.reps)]
    configs = {"plain": None}
    for g in args.gammas:
        configs[f"gpt-small gamma={g}"] = (small, g)
        configs[f"5-gram gamma={g}"] = (draft_ng, g)
    times = {k: [] for k in configs}
    stats = {k: [0, 0, 0, 0] for k in configs if k != "plain"}  # drafted, accepted, new tokens, rounds
    uptime = [subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()]
    for r, prompt in enumerate(prompts):  # alternating: every configuration once per repetition
        for name, cfg in configs.items():
            gen = torch.Generator().manual_seed(r)
            t0 = time.perf_counter()
            if cfg is None:
                generate(target, prompt, new, generator=gen)
            else:
                _, st = speculative_generate(target, cfg[0], prompt, new, gamma=cfg[1], generator=gen)
                s = stats[name]
                s[0] += st.drafted
                s[1] += st.accepted
                s[2] += st.new_tokens
                s[3] += st.rounds
            times[name].append(new / (time.perf_counter() - t0))
    uptime.append(subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    plain = statistics.median(times["plain"])
    rows = {}
    for name in configs:
        med = statistics.median(times[name])
        row = {"tokens_per_s_median": med, "speedup_vs_plain": med / plain, "tokens_per_s": times[name]}
        if name in stats:
            d, a, n, rounds = stats[name]
            row.update(acceptance_rate=a / d, new_tokens_per_target_pass=n / rounds)
        rows[name] = row
        extra = "" if name == "plain" else (f" | acceptance {row['acceptance_rate']:.3f} | "
                                            f"{row['new_tokens_per_target_pass']:.2f} tokens per target pass")
        print(f"{name:22s} {med:8.1f} tokens/s | x{med / plain:.2f}{extra}")
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    flags = next((ln.split(":", 1)[1].split() for ln in lscpu.splitlines() if ln.startswith("Flags")), [])
    write_result("speculative", {"target": str(ckpt_t), "draft": str(ckpt_d), "target_parameters": target.num_parameters(),
                                 "draft_parameters": small.num_parameters(), "ngram_order": args.ngram_order,
                                 "ngram_fit_seconds": fit_s, "new_tokens": new, "reps": args.reps,
                                 "threads": args.threads, "uptime_before_after": uptime,
                                 "cpu_flags": [f for f in flags if f.startswith(("avx", "sse4", "fma", "amx"))],
                                 "results": rows})


if __name__ == "__main__":
    main()
