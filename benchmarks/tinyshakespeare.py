"""Character-level tiny Shakespeare with chainrule's sequence models.

Default: the GPT at nanoGPT's README CPU configuration (4 layers, 4 heads, 128 dims, context 64,
batch 12, 2000 steps, AdamW lr 1e-3 betas (0.9, 0.99), weight decay 0.1 on matrices, 100 warmup
steps, cosine to 1e-4, gradient clipping 1.0, no dropout). nanoGPT's windows are x = s[i:i+64],
y = s[i+1:i+65]: 64 predictions with 1..64 characters of context. chainrule's model of a 65-token
window predicts the same 64 characters (plus the first one, unconditionally), so it is trained on
windows of 65 and its validation loss is computed as nanoGPT defines it, exactly: every
non-overlapping window s[i:i+65], i = 0, 64, 128, ... of the last 10% of the text, positions 1..64
(``evaluate_stream`` with stride 64). Also reported: wall time and training throughput (tokens/s). nanoGPT itself (karpathy/nanoGPT, not part of this
repository) is run beside it with its README command for the side-by-side numbers in BENCHMARKS.md.

    python benchmarks/tinyshakespeare.py --threads 1
    python benchmarks/tinyshakespeare.py --model lstm -p hidden_size=512 --max-seconds 600 --name ts_lstm
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
from chainrule.inference.likelihood import evaluate, evaluate_stream  # noqa: E402
from chainrule.inference.sampling import generate  # noqa: E402
from chainrule.training import TrainConfig, Trainer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="transformer")
    ap.add_argument("-p", "--param", action="append", default=[])
    ap.add_argument("--name", default="tinyshakespeare_gpt")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--block-size", type=int, default=65, help="window; the context is block_size - 1")
    ap.add_argument("--batch-size", type=int, default=12)
    ap.add_argument("--max-steps", type=int, default=2000)
    ap.add_argument("--steps-per-epoch", type=int, default=500)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--min-lr", type=float, default=1e-4)
    ap.add_argument("--warmup-steps", type=int, default=100)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--max-seconds", type=float, default=None)
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--precision", default="auto", help="TrainConfig.precision (auto: measured at the first step)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    ds = load_dataset("tinyshakespeare", data_dir(), block_size=args.block_size)
    hp = {"num_layers": 4, "num_heads": 4, "embed_dim": 128} if args.model == "transformer" else {}
    hp.update(parse_hyperparameters(args.param))
    torch.manual_seed(args.seed)
    model = chainrule.create_model(args.model, ds.shape, ds.num_values, **hp)
    epochs = -(-args.max_steps // args.steps_per_epoch)
    config = TrainConfig(epochs=epochs, batch_size=args.batch_size, lr=args.lr, optimizer="adamw",
                         weight_decay=args.weight_decay, schedule="cosine", warmup_steps=args.warmup_steps,
                         min_lr=args.min_lr, betas=(0.9, 0.99), grad_clip=1.0, patience=None,
                         steps_per_epoch=args.steps_per_epoch, max_steps=args.max_steps,
                         max_seconds=args.max_seconds, seed=args.seed, precision=args.precision)
    trainer = Trainer(model, config, out_dir=Path("runs") / args.name, progress=False,
                      extra={"dataset": "tinyshakespeare", "block_size": args.block_size,
                             "tokenizer": ds.tokenizer.to_dict()})
    res = trainer.fit(ds.train, ds.val)
    total = time.perf_counter() - t_start
    val = evaluate(model, ds.val)
    # nanoGPT's definition: every character of the validation text predicted from 1..T-1 previous ones
    stream = evaluate_stream(model, ds.val.stream, stride=args.block_size - 1)
    prompt = ds.tokenizer.encode("ROMEO:")
    sample = ds.tokenizer.decode(generate(model, prompt, args.block_size - len(prompt), temperature=0.8,
                                          generator=torch.Generator().manual_seed(0))[0].tolist())
    write_result(args.name, {
        "model": args.model, "hyperparameters": model.config["hyperparameters"], "parameters": model.num_parameters(),
        "train_config": vars(args), "precision": str(trainer.autocast_dtype or "float32").removeprefix("torch."), "steps": args.max_steps if args.max_seconds is None else None,
        "epochs_run": res.epochs_run, "train_seconds": round(res.train_seconds, 1),
        "wall_seconds_incl_data_loading": round(total, 1),
        "train_tokens_per_second": round(res.examples_per_second * args.block_size, 1),
        "val_loss_nats_per_char": stream.nats_per_token, "val_tokens_scored": stream.num_tokens,
        "val_loss_nats_per_char_whole_windows": val.nll_nats / val.dim,
        "val_curve_nats_per_char": [round(r["val_nats_per_dim"], 4) for r in res.history],
        "sample": sample,
    })


if __name__ == "__main__":
    main()
