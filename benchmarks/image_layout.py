"""Training-step time of every image model with its feature maps channels-last (what the layers
write on a CPU, :func:`chainrule.nn.pixel.cpu_layout`) against the contiguous NCHW layout.

One float32 training step (forward, NLL, backward, Adam) on a batch of 28x28 images, the two
layouts alternating step by step so that the machine's load hits both alike; the median of
``--steps`` steps each. The values are the same in both layouts (tests/test_image_models.py); only
the speed differs.

    python benchmarks/image_layout.py --threads 1
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

import chainrule  # noqa: E402
import chainrule.nn.pixel as pixel_layers  # noqa: E402
import chainrule.nn.pixelcnnpp as pixelcnnpp_layers  # noqa: E402
from chainrule.training import TrainConfig, Trainer  # noqa: E402

# (model, hyperparameters, num_values): the networks of the other benchmarks of BENCHMARKS.md section 5
MODELS = [
    ("pixelcnn", {"channels": 64, "num_layers": 12, "head_channels": 64}, 2),
    ("gated_pixelcnn", {"channels": 64, "num_layers": 8, "head_channels": 64}, 2),
    ("gated_pixelcnn", {"channels": 32, "num_layers": 5, "head_channels": 32, "head": "logistic_mixture"}, 256),
    ("row_lstm", {"hidden_channels": 32, "num_layers": 4}, 2),
    ("diagonal_bilstm", {"hidden_channels": 32, "num_layers": 4}, 2),
    ("pixelcnnpp", {"channels": 32, "num_resnets": 2}, 256),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=6)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    layout = pixel_layers.cpu_layout
    rows = []
    for name, hp, k in MODELS:
        torch.manual_seed(0)
        model = chainrule.create_model(name, (1, 28, 28), k, **hp)
        trainer = Trainer(model, TrainConfig(precision="float32"), progress=False)
        x = torch.randint(0, k, (args.batch_size, 1, 28, 28))
        times: dict[str, list[float]] = {"channels_last": [], "nchw": []}
        for step in range(args.steps + 1):
            for label in times:
                fn = layout if label == "channels_last" else (lambda maps: maps)
                pixel_layers.cpu_layout = pixelcnnpp_layers.cpu_layout = fn
                t0 = time.perf_counter()
                trainer.train_step(x, None, 1e-4)
                if step:  # the first round warms up
                    times[label].append(time.perf_counter() - t0)
        pixel_layers.cpu_layout = pixelcnnpp_layers.cpu_layout = layout
        med = {label: statistics.median(v) for label, v in times.items()}
        row = {"model": name, "hyperparameters": hp, "num_values": k, "parameters": model.num_parameters(),
               "median_step_seconds": {label: round(v, 4) for label, v in med.items()},
               "speedup_channels_last": round(med["nchw"] / med["channels_last"], 2)}
        print(row, flush=True)
        rows.append(row)
    write_result("image_layout", {"benchmark": "image_layout", "command": " ".join(["python"] + sys.argv),
                                  "machine": machine(), "batch_size": args.batch_size, "rows": rows})


if __name__ == "__main__":
    main()
