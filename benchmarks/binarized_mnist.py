"""Fixed-binarization MNIST (Larochelle's 50k/10k/10k): train a model, report test NLL in nats.

Targets (../shared/ANCHORS.md): FVSBN <= 97.45 nats (Larochelle & Murray 2011); MADE, one hidden
layer, single mask <= 88.40 (Germain et al. 2015, whose MNIST runs use 8000 hidden units and direct
input-output connections); NADE (500 hidden) <= 88.33; MADE 2 hidden layers, 32 masks <= 86.64;
EoNADE <= 85.10. An ensemble (num_masks / num_orders > 1) is evaluated both as the ensemble
(probabilities averaged) and by its first ordering alone. The commands of every recorded run are
in BENCHMARKS.md; for example

    python benchmarks/binarized_mnist.py fvsbn --threads 1
    python benchmarks/binarized_mnist.py made -p hidden_sizes=[8000] -p direct_connections=true --patience 10
    python benchmarks/binarized_mnist.py fvsbn --dynamic --name dynamic_mnist_fvsbn

``--dynamic`` trains on MNIST re-binarized every batch (x ~ Bernoulli(intensity / 255)), with
validation and test sets binarized once from a fixed seed: numbers from it are not comparable
with the fixed-binarization rows (the published ones usually differ by about a nat or more).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import data_dir, write_result  # noqa: E402

import chainrule  # noqa: E402
from chainrule.cli.common import parse_hyperparameters  # noqa: E402
from chainrule.data import load_dataset  # noqa: E402
from chainrule.inference.likelihood import evaluate  # noqa: E402
from chainrule.training import TrainConfig, Trainer  # noqa: E402
from chainrule.training.trainer import TrainingInterrupted  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("-p", "--param", action="append", default=[])
    ap.add_argument("--name", help="result name (default binarized_mnist_MODEL)")
    ap.add_argument("--dynamic", action="store_true",
                    help="MNIST with dynamic binarization (train re-drawn every batch, val/test drawn once) "
                         "instead of the fixed binarization")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--optimizer", default="adam")
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--schedule", default="plateau")
    ap.add_argument("--patience", type=int, default=30)
    ap.add_argument("--max-seconds", type=float, default=3300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resume", action="store_true", help="continue runs/NAME from its last/ checkpoint")
    ap.add_argument("--precision", default="auto", help="float32, bfloat16, float16 or auto (see TrainConfig)")
    ap.add_argument("--val-components", type=int, default=None,
                    help="ensembles: validate each epoch with the first N components (default: all)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    name = args.name or f"binarized_mnist_{args.model}"
    ds = load_dataset("mnist", data_dir(), binarize="dynamic") if args.dynamic else load_dataset("binarized-mnist", data_dir())
    model = chainrule.create_model(args.model, ds.shape, ds.num_values, **parse_hyperparameters(args.param))
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer,
                         weight_decay=args.weight_decay, schedule=args.schedule, patience=args.patience,
                         max_seconds=args.max_seconds, seed=args.seed,
                         val_components=args.val_components, precision=args.precision)
    out = Path("runs") / name
    extra = {"dataset": "mnist" if args.dynamic else "binarized-mnist", "binarize": "dynamic" if args.dynamic else None,
             "data_dir": data_dir(), "command": sys.argv}  # so that `chainrule eval/inspect runs/NAME` need no flags
    trainer = Trainer(model, config, out_dir=out, extra=extra, progress=False)
    try:
        result = trainer.fit(ds.train, ds.val, train_transform=ds.train_transform, resume=args.resume)
    except TrainingInterrupted as exc:  # SIGINT / SIGTERM: last/ is saved; say how to continue, no traceback
        sys.exit(exc.exit_code)  # the trainer has said what it saved and how to continue
    t0 = time.perf_counter()
    test = evaluate(model, ds.test)
    single = evaluate(model, ds.test, member=0).nll_nats if model.num_members > 1 else None
    write_result(name, {
        "model": args.model, "dataset": ds.description, "hyperparameters": model.config["hyperparameters"], "parameters": model.num_parameters(),
        "train_config": vars(args), "epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
        "stopped_early": result.stopped_early, "train_seconds": round(result.train_seconds, 1),
        "train_images_per_second": round(result.examples_per_second, 1),
        "best_val_nll_nats": result.best_val_nll_nats, "test_nll_nats": test.nll_nats,
        "num_members": model.num_members, "test_nll_nats_single_ordering": single,
        "test_bits_per_dim": test.bits_per_dim, "eval_seconds": round(time.perf_counter() - t0, 2),
        "val_curve_nats": [round(r["val_nll_nats"], 3) for r in result.history],
    })


if __name__ == "__main__":
    main()
