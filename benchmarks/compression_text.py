"""Lossless compression of text with a trained character model, side by side with gzip, bz2 and xz
on the same bytes in one run.

The text is the last 10% of tiny Shakespeare (the validation split a run trained on the first 90%
never saw), written to a file; ``chainrule compress RUN FILE OUT`` and ``chainrule decompress RUN
OUT BACK`` run as two separate processes with different thread counts (1 and 2), and BACK must
equal FILE byte for byte. The model codes windows of its block size independently (no context
across windows), so the first characters of every window are coded with little context.

    python benchmarks/compression_text.py runs/tinyshakespeare_lstm [--limit CHARS]
"""

from __future__ import annotations

import argparse
import bz2
import gzip
import lzma
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import data_dir, machine, write_result  # noqa: E402


def run(cmd: list[str], threads: int) -> float:
    """Run a chainrule command in its own process; its wall time in seconds."""
    t0 = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    p = subprocess.run([sys.executable, "-m", "chainrule", *cmd, "--threads", str(threads), "--no-progress"],
                       env=env, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{p.stdout}\n{p.stderr}")
    print(p.stdout.strip())
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="a run of a character model trained on tinyshakespeare")
    ap.add_argument("--limit", type=int, default=None, help="only the first N characters of the held-out text")
    args = ap.parse_args()
    raw = (Path(data_dir()) / "tinyshakespeare" / "input.txt").read_bytes()
    text = raw[int(0.9 * len(raw)):]  # the held-out tenth (the character datasets' 90/10 split point)
    if args.limit:
        text = text[: args.limit]
    with tempfile.TemporaryDirectory() as tmp:
        src, crz, back = Path(tmp) / "heldout.txt", Path(tmp) / "heldout.crz", Path(tmp) / "back.txt"
        src.write_bytes(text)
        t_enc = run(["compress", args.run, str(src), str(crz)], threads=1)
        t_dec = run(["decompress", args.run, str(crz), str(back)], threads=2)
        assert back.read_bytes() == text, "decompression did not give the text back"
        size = crz.stat().st_size
    n = len(text)
    sizes = {"chainrule (file)": size, "gzip -9": len(gzip.compress(text, 9)), "bz2 -9": len(bz2.compress(text, 9)),
             "xz -9e": len(lzma.compress(text, preset=9 | lzma.PRESET_EXTREME))}
    result = {"benchmark": "compression_text", "command": " ".join(["python"] + sys.argv), "machine": machine(),
              "run": args.run, "characters": n,
              "bits_per_char": {k: round(8 * v / n, 4) for k, v in sizes.items()}, "bytes": sizes,
              "encode_seconds": round(t_enc, 1), "decode_seconds": round(t_dec, 1),
              "encode_chars_per_s": round(n / t_enc), "decode_chars_per_s": round(n / t_dec),
              "round_trip": "compress with 1 thread, decompress with 2 threads in another process: identical bytes"}
    for k, v in sizes.items():
        print(f"{k:18s} {v:9d} bytes  {8 * v / n:.4f} bits/char")
    print(f"{n} characters; encode {t_enc:.1f} s ({n / t_enc:.0f} chars/s), decode {t_dec:.1f} s "
          f"({n / t_dec:.0f} chars/s), process start included")
    write_result("compression_text", result)


if __name__ == "__main__":
    main()
