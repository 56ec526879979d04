"""A latent run on MNIST (chainrule compose) against the pixel-level Gated PixelCNN: sampling time for
64 images (measured side by side, alternating, in one process), the bound on the test split with
its two terms, and the two-part code of (a subset of) the test split against xz.

    python benchmarks/latent_mnist.py runs/latent-mnist --dataset mnist --threads 1 --limit 1000

The pixel model is timed with random weights (sampling speed does not depend on them), in the
configuration of BENCHMARKS.md's MNIST runs: 8-bit, 5 layers of 32 maps with the logistic mixture;
binary, 8 layers of 32 maps.
"""

from __future__ import annotations

import argparse
import lzma
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import data_dir, write_result  # noqa: E402

import chainrule  # noqa: E402
from chainrule.apps import latent as lat  # noqa: E402
from chainrule.data import load_dataset  # noqa: E402
from chainrule.latent import load as load_latent  # noqa: E402

PIXEL = {"mnist": {"channels": 32, "num_layers": 5, "head_channels": 32, "head": "logistic_mixture"},
         "binarized-mnist": {"channels": 32, "num_layers": 8, "head_channels": 32},
         "digits": {"channels": 32, "num_layers": 5, "head_channels": 32, "first_kernel_size": 5}}  # the quick start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", help="the latent run (chainrule compose)")
    ap.add_argument("--dataset", default="mnist", choices=list(PIXEL))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--limit", type=int, default=1000, help="compress the first N test images (0: none)")
    ap.add_argument("--skip-bound", action="store_true", help="do not evaluate the bound on the whole test split")
    ap.add_argument("--name", default=None, help="result file name (default latent_DATASET)")
    ap.add_argument("--random-prior", default=None, metavar="JSON",
                    help="time sampling with a gated_pixelcnn prior of these hyperparameters and random weights "
                         "instead of the run's (sampling speed does not depend on the weights)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_latent(args.run)
    if args.random_prior:
        import json

        from chainrule.latent import LatentModel

        prior = chainrule.create_model("gated_pixelcnn", model.vqvae.code_shape, model.vqvae.codebook_size,
                                       **json.loads(args.random_prior))
        model = LatentModel(model.vqvae, prior.eval()).eval()
    ds = load_dataset(args.dataset, data_dir())
    k = model.num_values
    pixel = chainrule.create_model("gated_pixelcnn", model.shape, k, **PIXEL[args.dataset]).eval()
    t_latent, t_pixel = [], []
    for r in range(args.repeats):  # alternating: the machine's load falls on both alike
        g = torch.Generator().manual_seed(r)
        t0 = time.perf_counter()
        model.sample(64, generator=g)
        t_latent.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        pixel.sample(64, generator=torch.Generator().manual_seed(r))
        t_pixel.append(time.perf_counter() - t0)
    result = {"run": args.run, "dataset": args.dataset, "latent_model": model.config,
              "pixel_model": {"gated_pixelcnn": PIXEL[args.dataset], "parameters": pixel.num_parameters()},
              "latent_parameters": model.num_parameters(),
              "sample64_seconds": {"latent": t_latent, "pixel": t_pixel,
                                   "latent_median": statistics.median(t_latent),
                                   "pixel_median": statistics.median(t_pixel),
                                   "speedup": statistics.median(t_pixel) / statistics.median(t_latent)}}
    print(f"64 samples: latent {statistics.median(t_latent):.2f} s, pixel {statistics.median(t_pixel):.2f} s, "
          f"{result['sample64_seconds']['speedup']:.1f}x", flush=True)
    if not args.skip_bound:
        t0 = time.perf_counter()
        result["test_bound"] = lat.bound_of(model, ds.test)
        result["bound_seconds"] = time.perf_counter() - t0
        print(result["test_bound"], flush=True)
    if args.limit:
        x = ds.test[:args.limit]
        n = len(x)
        t0 = time.perf_counter()
        blob, sizes = lat.compress(model, x)
        t_enc = time.perf_counter() - t0
        t0 = time.perf_counter()
        back, _ = lat.decompress(model, blob)
        t_dec = time.perf_counter() - t0
        assert torch.equal(back, x.long()), "the two-part code did not give the images back"
        raw = x.reshape(n, -1).numpy().astype(np.uint8)
        packed = np.packbits(raw, axis=1).tobytes() if k == 2 else None
        dims = n * model.dim
        sizes_b = {"two-part code (file)": len(blob),
                   "two-part code (payload)": (sizes["code_bits"] + sizes["pixel_bits"]) // 8,
                   "bound, -log2 p(z*) - log2 p(x|z*)": (sizes["ideal_code_bits"] + sizes["ideal_pixel_bits"]) / 8,
                   "xz -9e, byte per pixel": len(lzma.compress(raw.tobytes(), preset=9 | lzma.PRESET_EXTREME))}
        if packed is not None:
            sizes_b["xz -9e, packed bits"] = len(lzma.compress(packed, preset=9 | lzma.PRESET_EXTREME))
        result["compression"] = {"images": n, "round_trip": "bit-exact", "encode_seconds": t_enc,
                                 "decode_seconds": t_dec, "code_bits": sizes["code_bits"],
                                 "pixel_bits": sizes["pixel_bits"], "ideal_code_bits": sizes["ideal_code_bits"],
                                 "ideal_pixel_bits": sizes["ideal_pixel_bits"],
                                 "bits_per_dim": {k2: 8 * v / dims for k2, v in sizes_b.items()}}
    name = args.name or f"latent_{args.dataset.replace('-', '_')}"
    write_result(name, result)
    if math.isfinite(result["sample64_seconds"]["speedup"]):
        print(f"wrote benchmarks/results/{name}.json")


if __name__ == "__main__":
    main()
