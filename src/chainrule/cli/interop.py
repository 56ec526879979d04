"""The ``chainrule import-hf`` / ``export-hf`` commands (over :mod:`chainrule.interop.huggingface`)."""

from __future__ import annotations

import argparse
from typing import Any

from chainrule.apps.rundir import checkpoint_dir
from chainrule.cli.common import load_run, tokenizer_of


def _cmd_import(args: argparse.Namespace) -> int:
    from chainrule.interop.huggingface import import_gpt2
    from chainrule.models import load

    out = import_gpt2(args.directory, args.out, max_length=args.max_length)
    model = load(out)
    tok = tokenizer_of(out)
    what = f"{tok.vocab_size}-token {tok.kind} tokenizer" if tok is not None else "no tokenizer (token ids only)"
    print(f"imported GPT-2 from {args.directory}: {model.num_parameters():,} parameters, {len(model.blocks)} layers, "
          f"width {model.embed_dim}, window {model.dim} tokens, {model.num_values} values, {what} -> {out}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from chainrule.interop.huggingface import export_gpt2

    ckpt, model = load_run(args)
    model = model.cpu()
    out = export_gpt2(model, args.directory, tokenizer_of(ckpt))
    print(f"wrote {checkpoint_dir(args.run)} as a Hugging Face GPT-2 to {out} (vocabulary {model.num_values} + the "
          f"start token {model.num_values}): transformers' GPT2LMHeadModel.from_pretrained loads it")
    return 0


def register_cli(subparsers: Any, common: Any) -> None:
    """Add ``import-hf`` and ``export-hf`` to an argparse sub-parser set (``common``: the shared options)."""
    i = subparsers.add_parser("import-hf", help="a Hugging Face GPT-2 directory (save_pretrained's files) as a run",
                              description="Example: chainrule import-hf ./gpt2 --out runs/gpt2. Reads config.json, "
                                          "model.safetensors and tokenizer.json or vocab.json + merges.txt from the "
                                          "directory (never the network); every command then works on the run.")
    i.add_argument("directory", help="the Hugging Face model directory")
    i.add_argument("--out", "-o", required=True, help="the run directory to write (must not exist or be empty)")
    i.add_argument("--max-length", type=int, default=None,
                   help="the window in tokens (default: the checkpoint's n_positions, 1024 for GPT-2)")
    i.set_defaults(func=_cmd_import)
    e = subparsers.add_parser("export-hf", help="a chainrule GPT (transformer text run) as a Hugging Face GPT-2 directory",
                              description="Example: chainrule export-hf runs/gpt-shakespeare hf-out. transformers' "
                                          "GPT2LMHeadModel.from_pretrained(hf-out) then loads it; token V (one past the "
                                          "run's vocabulary) is the start token, suppressed in generation.")
    e.add_argument("run", help="run directory or checkpoint directory")
    e.add_argument("directory", help="the directory to write (must not exist or be empty)")
    common(e)
    e.set_defaults(func=_cmd_export)
