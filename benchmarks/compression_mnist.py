"""Lossless compression of an MNIST test set with a trained image model, side by side with
general-purpose compressors on the same images in one run: the fixed-binarization set (default)
or 8-bit MNIST (``--dataset mnist``, 256 grey levels).

chainrule: ``chainrule.apps.compression.compress`` (range coding with the model's conditionals,
one stream for all images), checked to decompress to the same images; its payload against the
ideal code length sum -log2 p(x) (the issue's bound: <= ideal * (1 + 1e-3) + 64 bits; the header
is reported separately). Others, on the same images: gzip, bz2 and xz (level 9) on one byte per
pixel and, for 0/1 images, on the bits packed 8 per byte (the smallest raw form); PNG (1-bit or
8-bit grey) and lossless WebP per image, summed (each file pays its own header, as a user storing
images would). Encoding and decoding are timed (images/s). With ``--decode-threads T`` the file is
decoded by ``chainrule decompress`` in another process with T torch threads (the round trip across
processes and thread counts the issue asks for).

    python benchmarks/compression_mnist.py runs/binarized_mnist_pixelcnn --threads 1 [--limit N] [--every K]
    python benchmarks/compression_mnist.py runs/mnist8_gated --dataset mnist --threads 1
    python benchmarks/compression_mnist.py runs/binarized_mnist_row_lstm --threads 1 --decode-threads 2
"""

from __future__ import annotations

import argparse
import bz2
import gzip
import io
import lzma
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import data_dir, machine, write_result  # noqa: E402

import chainrule  # noqa: E402
from chainrule.apps.compression import compress, decompress, read_header  # noqa: E402
from chainrule.apps.pipeline import checkpoint_dir  # noqa: E402
from chainrule.data import load_dataset  # noqa: E402


def per_image(encode, images: np.ndarray) -> int:  # noqa: ANN001
    return sum(len(encode(im)) for im in images)


def png(im: np.ndarray, binary: bool) -> bytes:
    buf = io.BytesIO()
    pic = Image.fromarray((im * 255).astype(np.uint8)).convert("1") if binary else Image.fromarray(im)
    pic.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def webp(im: np.ndarray, binary: bool) -> bytes:
    buf = io.BytesIO()
    Image.fromarray((im * 255).astype(np.uint8) if binary else im).save(buf, format="WEBP", lossless=True,
                                                                          quality=100, method=6)
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", help="a run directory (or checkpoint) of a model of the dataset")
    ap.add_argument("--dataset", default="binarized-mnist", choices=["binarized-mnist", "mnist"],
                    help="the fixed-binarization test set, or 8-bit MNIST's")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--limit", type=int, default=None, help="only the first N test images")
    ap.add_argument("--every", type=int, default=1,
                    help="only every K-th test image (a sample spread over the whole file, which is sorted by class)")
    ap.add_argument("--decode-threads", type=int, default=None,
                    help="decode in another process (chainrule decompress) with this many torch threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = chainrule.load(checkpoint_dir(args.run)).eval()
    ds = load_dataset(args.dataset, data_dir())
    binary = args.dataset == "binarized-mnist"
    x = ds.test[:: args.every]
    x = x if args.limit is None else x[: args.limit]
    n = len(x)
    t0 = time.perf_counter()
    blob = compress(model, x)
    t_enc = time.perf_counter() - t0
    t0 = time.perf_counter()
    if args.decode_threads is None:
        back = decompress(model, blob)
        t_dec = time.perf_counter() - t0
    else:
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "x.crz").write_bytes(blob)
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "chainrule", "decompress", args.run, str(Path(tmp) / "x.crz"),
                            str(Path(tmp) / "x.npy"), "--threads", str(args.decode_threads), "--no-progress"], check=True)
            t_dec = time.perf_counter() - t0
            back = torch.from_numpy(np.load(Path(tmp) / "x.npy"))
    assert torch.equal(back.reshape(x.shape).long(), x.long()), "decompression did not give the images back"
    _, payload = read_header(blob)
    with torch.inference_mode():
        ideal_bits = float(-sum(model.log_prob(x[i:i + 500]).double().sum() for i in range(0, n, 500)) / math.log(2))
    images = x.reshape(n, 28, 28).numpy().astype(np.uint8)
    packed = np.packbits(images.reshape(n, -1), axis=1).tobytes()
    raw = images.tobytes()
    sizes = {"chainrule (file)": len(blob), "chainrule (payload)": len(payload)}
    if binary:
        sizes.update({"gzip -9, packed bits": len(gzip.compress(packed, 9)),
                      "bz2 -9, packed bits": len(bz2.compress(packed, 9)),
                      "xz -9, packed bits": len(lzma.compress(packed, preset=9 | lzma.PRESET_EXTREME))})
    sizes.update({
        "gzip -9, byte per pixel": len(gzip.compress(raw, 9)),
        "bz2 -9, byte per pixel": len(bz2.compress(raw, 9)),
        "xz -9, byte per pixel": len(lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME)),
        f"PNG {'1-bit' if binary else '8-bit grey'}, per image": per_image(lambda im: png(im, binary), images),
        "WebP lossless, per image": per_image(lambda im: webp(im, binary), images),
    })
    result = {
        "benchmark": "compression_mnist", "dataset": args.dataset, "command": " ".join(["python"] + sys.argv), "machine": machine(),
        "model": model.config, "images": n, "ideal_bits": ideal_bits,
        "ideal_bytes_per_image": ideal_bits / 8 / n,
        "payload_bits": 8 * len(payload), "header_bytes": len(blob) - len(payload),
        "bound_bits": ideal_bits * (1 + 1e-3) + 64,
        "within_bound": 8 * len(payload) <= ideal_bits * (1 + 1e-3) + 64,
        "bytes_per_image": {k: round(v / n, 2) for k, v in sizes.items()},
        "bits_per_dim": {k: round(8 * v / (n * 784), 4) for k, v in sizes.items()},
        "encode_threads": args.threads,
        "decode": "in this process" if args.decode_threads is None else
                  f"chainrule decompress in another process, {args.decode_threads} threads",
        "encode_seconds": round(t_enc, 1), "decode_seconds": round(t_dec, 1),
        "encode_images_per_s": round(n / t_enc, 1), "decode_images_per_s": round(n / t_dec, 1),
    }
    for k, v in result["bytes_per_image"].items():
        print(f"{k:28s} {v:9.2f} bytes/image  {result['bits_per_dim'][k]:.4f} bits/dim")
    print(f"ideal {result['ideal_bytes_per_image']:.2f} bytes/image; payload within the bound: {result['within_bound']}; "
          f"encode {t_enc:.1f} s ({n / t_enc:.1f} images/s), decode {t_dec:.1f} s ({n / t_dec:.1f} images/s)")
    write_result("compression_mnist" if binary else "compression_mnist8", result)


if __name__ == "__main__":
    main()
