"""Does bf16 autocast speed up convolutions on this CPU? The measurement of ../shared/ANCHORS.md:
eight 3x3 convolutions, 64 channels, 28x28, batch 32, forward + backward, 1 thread, in float32,
float32 channels-last, bf16 autocast and bf16 autocast channels-last, interleaved round by round.
It prints the CPU's bf16 flags: AMX (``amx_bf16``) is what makes bf16 fast; AVX-512 BF16 alone
(``avx512_bf16``) is not (measured here: bf16 1.5x slower than float32).

    python benchmarks/bf16_convolutions.py --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_result  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    net = torch.nn.Sequential(*[torch.nn.Conv2d(64, 64, 3, padding=1) for _ in range(8)])
    x = torch.randn(32, 64, 28, 28)
    xcl = x.contiguous(memory_format=torch.channels_last)

    def run(inp: torch.Tensor, bf16: bool) -> None:
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            y = net(inp)
        y.float().sum().backward()

    cases = {"float32": (x, False), "float32 channels-last": (xcl, False), "bf16": (x, True),
             "bf16 channels-last": (xcl, True)}
    times: dict[str, list[float]] = {k: [] for k in cases}
    for r in range(args.rounds + 1):
        for label, (inp, bf16) in cases.items():
            t0 = time.perf_counter()
            run(inp, bf16)
            if r:
                times[label].append(time.perf_counter() - t0)
    ms = {k: round(1000 * statistics.median(v), 1) for k, v in times.items()}
    flags = sorted({f for f in open("/proc/cpuinfo").read().split() if "bf16" in f or f.startswith("amx")})
    result = {"benchmark": "bf16_convolutions", "command": " ".join(["python"] + sys.argv), "machine": machine(),
              "cpu_bf16_flags": flags, "median_ms": ms,
              "speedup_bf16_over_float32": round(ms["float32"] / ms["bf16"], 2)}
    print(result)
    write_result("bf16_convolutions", result)


if __name__ == "__main__":
    main()
