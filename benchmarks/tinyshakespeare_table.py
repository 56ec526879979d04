"""One table: character-level n-gram models against the neural models on tiny Shakespeare.

All rows score the same thing: the last 10% of the raw text (nanoGPT's split by position), case and
punctuation kept, in nats per character. For the n-gram models each line is a sentence and its
newline is the sentence end ``</s>`` (so predicting ``</s>`` is predicting the newline character,
and an empty line is a sentence of no characters); the first 90% of the characters train them
(the line cut by the split is dropped from both sides). The neural rows are read from the results
of ``benchmarks/tinyshakespeare.py`` (gpt, lstm, wavenet, gpt_long, lstm_long) when present.

    python benchmarks/tinyshakespeare_table.py
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, data_dir, write_result  # noqa: E402

from chainrule.lm.ngram import NgramLM  # noqa: E402


def main() -> None:
    text = (Path(data_dir()) / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    cut = int(len(text) * 0.9)
    train_lines = text[:cut].split("\n")[:-1]  # the last, cut line is dropped
    test_lines = text[cut:].split("\n")[1:]  # the first, cut line is dropped
    if test_lines and test_lines[-1] == "":
        test_lines = test_lines[:-1]  # the text ends with a newline: no empty sentence after it
    train = [list(line) for line in train_lines]
    test = [list(line) for line in test_lines]
    rows = []
    for order in range(2, 11):
        t0 = time.perf_counter()
        lm = NgramLM(order, "kneser-ney").fit(train)
        fit_s = time.perf_counter() - t0
        res = lm.perplexity(test)
        rows.append({"model": f"{order}-gram, modified Kneser-Ney", "nats_per_char": res.cross_entropy_nats_per_token,
                     "perplexity": res.perplexity, "tokens": res.num_tokens, "oov": res.num_oov,
                     "fit_seconds": round(fit_s, 2)})
        print(rows[-1], flush=True)
    for name in ("tinyshakespeare_gpt", "tinyshakespeare_lstm", "tinyshakespeare_wavenet", "tinyshakespeare_gpt_long",
                 "tinyshakespeare_lstm_long"):
        path = RESULTS / f"{name}.json"
        if path.is_file():
            r = json.loads(path.read_text())
            rows.append({"model": f"{r['model']} {r['hyperparameters']}"[:120], "nats_per_char": r["val_loss_nats_per_char"],
                         "perplexity": math.exp(r["val_loss_nats_per_char"]), "tokens": r.get("val_tokens_scored"),
                         "parameters": r["parameters"], "train_seconds": r["train_seconds"], "source": name})
    write_result("tinyshakespeare_table", {"rows": rows})


if __name__ == "__main__":
    main()
