"""Entropy-coding speed against xz -9e, and before/after a change of chainrule, side by side in one
run: binarized MNIST test digits compressed and decompressed with trained models.

For every run directory given, alternating in one run (one torch thread everywhere):

- ``xz -9e`` (Python's ``lzma``, preset 9 | EXTREME: the same coder and settings as the command)
  on the same images, on the bits packed 8 per byte (its smallest form) and on one byte per pixel,
  timed before and after each chainrule measurement (the mean of its two timings is compared);
- chainrule (this checkout) in a fresh process: ``compress`` the first ``--images`` test digits to
  a file, then ``decompress`` that file in *another* fresh process, which checks that the images come
  back bit for bit;
- optionally chainrule at another source tree (``--before-src``, e.g. ``git archive BASE src``) the
  same way, on the first ``--before-images`` digits (an old path may be too slow for all of them).

Reported per model: images/s of encoding and decoding (wall clock and process CPU time: the machine
may be shared, and CPU time is what the process itself spent), the ratios to xz's, the file and
payload sizes against xz's, and the payload against the ideal code length sum -log2 p(x).

    python benchmarks/compression_speed.py runs/bmnist_nade500 runs/bmnist_made500 \\
        --images 10000 --before-src /tmp/before/src --before-images 300
"""

from __future__ import annotations

import argparse
import json
import lzma
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
XZ = 9 | lzma.PRESET_EXTREME


def worker(argv: list[str]) -> None:
    """In a fresh process: ``encode RUN N OUT`` or ``decode RUN N FILE``; prints one JSON line."""
    import torch

    import chainrule
    from chainrule.apps.compression import compress, decompress, read_header
    from chainrule.apps.pipeline import checkpoint_dir
    from chainrule.data import load_dataset

    mode, run, n, path = argv[0], argv[1], int(argv[2]), Path(argv[3])
    torch.set_num_threads(1)
    model = chainrule.load(checkpoint_dir(run)).eval()
    x = load_dataset("binarized-mnist", data_dir()).test[:n]
    out: dict[str, Any] = {"chainrule": chainrule.__file__}
    w, c = time.perf_counter(), time.process_time()
    if mode == "encode":
        blob = compress(model, x)
        out.update(wall=time.perf_counter() - w, cpu=time.process_time() - c)
        path.write_bytes(blob)
        out["file_bytes"] = len(blob)
        out["payload_bytes"] = len(read_header(blob)[1])
        with torch.inference_mode():
            out["ideal_bits"] = float(-sum(model.log_prob(x[i:i + 500]).double().sum()
                                           for i in range(0, n, 500)) / math.log(2))
    else:
        back = decompress(model, path.read_bytes())
        out.update(wall=time.perf_counter() - w, cpu=time.process_time() - c)
        out["round_trip"] = bool(torch.equal(back.reshape(x.shape).long(), x.long()))
    print(json.dumps(out))


def run_worker(src: str, mode: str, run: str, n: int, path: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, __file__, "--worker", mode, run, str(n), str(path)], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def time_xz(data: bytes) -> dict[str, float]:
    w, c = time.perf_counter(), time.process_time()
    z = lzma.compress(data, preset=XZ)
    enc_w, enc_c = time.perf_counter() - w, time.process_time() - c
    w, c = time.perf_counter(), time.process_time()
    assert lzma.decompress(z) == data
    return {"bytes": len(z), "enc_wall": enc_w, "enc_cpu": enc_c,
            "dec_wall": time.perf_counter() - w, "dec_cpu": time.process_time() - c}


def xz_forms(images: np.ndarray) -> dict[str, dict[str, float]]:
    flat = images.reshape(len(images), -1).astype(np.uint8)
    return {"packed bits": time_xz(np.packbits(flat, axis=1).tobytes()), "byte per pixel": time_xz(flat.tobytes())}


def mean_xz(a: dict[str, dict[str, float]], b: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    return {form: {k: (a[form][k] + b[form][k]) / 2 for k in a[form]} for form in a}


def measure(src: str, run: str, images: np.ndarray, tmp: Path, tag: str) -> dict[str, Any]:
    """xz, chainrule encode (one process), chainrule decode (another), xz again."""
    n = len(images)
    xz_a = xz_forms(images)
    path = tmp / f"{tag}.crz"
    enc = run_worker(src, "encode", run, n, path)
    dec = run_worker(src, "decode", run, n, path)
    xz = mean_xz(xz_a, xz_forms(images))
    assert dec["round_trip"], f"{tag}: decompression did not give the images back"
    out: dict[str, Any] = {"images": n, "source": enc["chainrule"], "round_trip_other_process": dec["round_trip"],
                           "file_bytes_per_image": enc["file_bytes"] / n,
                           "payload_over_ideal": 8 * enc["payload_bytes"] / enc["ideal_bits"] - 1,
                           "ideal_bytes_per_image": enc["ideal_bits"] / 8 / n}
    for kind in ("wall", "cpu"):
        out[f"encode_images_per_s_{kind}"] = n / enc[kind]
        out[f"decode_images_per_s_{kind}"] = n / dec[kind]
    out["xz"] = {}
    for form, t in xz.items():
        out["xz"][form] = {
            "bytes_per_image": t["bytes"] / n,
            "file_size_ratio": enc["file_bytes"] / t["bytes"],
            **{f"{d}_images_per_s_{kind}": n / t[f"{d[:3]}_{kind}"] for d in ("encode", "decode") for kind in ("wall", "cpu")},
            **{f"{d}_speed_ratio_{kind}": t[f"{d[:3]}_{kind}"] / (enc if d == "encode" else dec)[kind]
               for d in ("encode", "decode") for kind in ("wall", "cpu")},
        }
    return out


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2:])
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", help="run directories of binarized-MNIST models")
    ap.add_argument("--images", type=int, default=10000, help="the first N test digits")
    ap.add_argument("--before-src", default=None, help="a src/ tree of chainrule to compare with (before a change)")
    ap.add_argument("--before-images", type=int, default=300)
    ap.add_argument("--only-before", nargs="*", default=None,
                    help="measure the before tree for these runs only (default: all)")
    ap.add_argument("--name", default="compression_speed")
    args = ap.parse_args()
    sys.path.insert(0, SRC)
    from chainrule.data import load_dataset

    test = load_dataset("binarized-mnist", data_dir()).test.numpy()
    uptime = [os.getloadavg()]
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for run in args.runs:
            name = Path(run).name
            entry: dict[str, Any] = {}
            entry["after"] = measure(SRC, run, test[: args.images], Path(tmp), f"{name}_after")
            print(name, "after", json.dumps(entry["after"]), flush=True)
            if args.before_src and (args.only_before is None or name in args.only_before):
                m = min(args.before_images, args.images)
                entry["before"] = measure(args.before_src, run, test[:m], Path(tmp), f"{name}_before")
                entry["after_same_images"] = measure(SRC, run, test[:m], Path(tmp), f"{name}_after_small")
                entry["speedup_cpu"] = {d: entry["after_same_images"][f"{d}_images_per_s_cpu"]
                                        / entry["before"][f"{d}_images_per_s_cpu"] for d in ("encode", "decode")}
                print(name, "before", json.dumps(entry["before"]), flush=True)
            results[name] = entry
            uptime.append(os.getloadavg())
    write_result(args.name, {"images": args.images, "before_src": args.before_src, "load_average_1_5_15": uptime,
                             "models": results})


if __name__ == "__main__":
    main()
