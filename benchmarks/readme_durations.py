"""How long each training command of the README takes on one CPU core (README "Durations").

For every command: the seconds per training step (the median of a few timed steps after two
warm-up steps, ``torch.set_num_threads(1)``), the seconds per example of the exact evaluation
(validation and test), and the seconds to draw the 64 samples a run ends with. The duration of the
whole command is derived, not run: ``epochs x (steps per epoch x s/step + validation)`` + test
evaluation + sampling, with the epochs the command asks for (a ceiling when early stopping may end
it sooner). The short variants the README gives are run as written by hand (their times are in
the README next to them).

    PYTHONPATH=src python benchmarks/readme_durations.py [NAME ...]
"""

from __future__ import annotations

import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import data_dir, write_result  # noqa: E402

from chainrule.data import load_dataset  # noqa: E402
from chainrule.inference.likelihood import per_example_nll  # noqa: E402
from chainrule.inference.sampling import default_generator  # noqa: E402
from chainrule.models import create_model  # noqa: E402
from chainrule.training import TrainConfig, Trainer  # noqa: E402

#: name -> (the README command's model, dataset options, hyperparameters, train options, epochs, steps/epoch)
COMMANDS = {
    "pixelcnn-binarized-mnist": ("pixelcnn", {"name": "binarized-mnist"}, {"channels": 64, "num_layers": 12},
                                 {"batch_size": 64}, 100, None),
    "cgated-mnist": ("gated_pixelcnn", {"name": "mnist", "binarize": "threshold"}, {"num_classes": 10},
                     {"batch_size": 64}, 100, None),
    "gpt-tinyshakespeare": ("transformer", {"name": "tinyshakespeare", "block_size": 65},
                            {"num_layers": 4, "num_heads": 4, "embed_dim": 128},
                            {"batch_size": 12, "optimizer": "adamw", "weight_decay": 0.1}, 4, 500),
    "made-binarized-mnist": ("made", {"name": "binarized-mnist"}, {"hidden_sizes": [500]}, {"batch_size": 64}, 200, None),
    "nade-fashion-mnist": ("nade", {"name": "fashion-mnist", "binarize": "threshold"}, {"hidden_size": 100},
                           {"batch_size": 64}, 5, None),
    "causalconv-digits": ("causalconv", {"name": "digits"}, {"channels": 128, "dilations": [1, 2, 4, 8], "num_layers": 4},
                          {"batch_size": 64}, 100, None),
    "cnade-digits": ("nade", {"name": "digits"}, {"hidden_size": 200, "num_classes": 10}, {"batch_size": 64}, 100, None),
}


def measure(name: str, steps: int = 6) -> dict:
    model_name, data, hp, opts, epochs, steps_per_epoch = COMMANDS[name]
    data = dict(data)
    ds = load_dataset(data.pop("name"), data_dir(), **data)
    torch.manual_seed(0)
    model = create_model(model_name, ds.shape, ds.num_values, **hp)
    trainer = Trainer(model, TrainConfig(**opts), progress=False)
    conditional = "num_classes" in hp
    g = torch.Generator().manual_seed(0)
    times = []
    for i in range(steps + 2):
        idx = torch.randint(len(ds.train), (opts["batch_size"],), generator=g)
        x = ds.train[idx]
        if ds.train_transform is not None:
            x = ds.train_transform(x, g)
        x, _ = model.validate(x)
        ctx = ds.train_labels[idx] if conditional else None
        t0 = time.perf_counter()
        trainer.train_step(x, ctx, 1e-4)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    step = statistics.median(times)
    n_eval = min(len(ds.val), 256)
    t0 = time.perf_counter()
    per_example_nll(model, ds.val[torch.arange(n_eval)], ds.val_labels[:n_eval] if conditional else None)
    eval_per_example = (time.perf_counter() - t0) / n_eval
    t0 = time.perf_counter()
    model.sample(64, torch.arange(64) % 10 if conditional else None, generator=default_generator(model, 0))
    sample_seconds = time.perf_counter() - t0
    per_epoch_steps = steps_per_epoch or math.ceil(len(ds.train) / opts["batch_size"])
    epoch_seconds = per_epoch_steps * step + len(ds.val) * eval_per_example
    total = epochs * epoch_seconds + len(ds.test) * eval_per_example + sample_seconds
    return {"name": name, "model": model_name, "seconds_per_step": step, "steps_per_second": 1 / step,
            "eval_seconds_per_example": eval_per_example, "sample_64_seconds": sample_seconds,
            "steps_per_epoch": per_epoch_steps, "epochs": epochs, "train": len(ds.train), "val": len(ds.val),
            "test": len(ds.test), "epoch_seconds": epoch_seconds, "total_seconds_at_most": total,
            "total_hours_at_most": total / 3600}


def main() -> None:
    torch.set_num_threads(1)
    names = sys.argv[1:] or list(COMMANDS)
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    rows = []
    for name in names:
        row = measure(name)
        print(row, flush=True)
        rows.append(row)
    write_result("readme_durations", {"uptime_before": load, "uptime_after": subprocess.run(
        ["uptime"], capture_output=True, text=True).stdout.strip(), "rows": rows})


if __name__ == "__main__":
    main()
