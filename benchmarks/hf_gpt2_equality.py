"""chainrule's Hugging Face GPT-2 import against ``transformers`` itself, on a tiny *random* GPT-2.

No GPT-2 files are on this machine (and nothing may be downloaded), so this measures only the
equality, never a quality figure: a random GPT-2 (GPT-2's architecture and ``gelu_new``, a byte-level
BPE trained here on the start of tiny Shakespeare) is written by ``save_pretrained``, read by
``chainrule import-hf``, and then (1) the logits of both on random token windows, (2) the bits per
byte of a text — ``chainrule eval --text`` against the same windows scored by ``transformers`` —
and (3) the logits of the chainrule-written export read back by ``transformers`` are compared.
With real GPT-2 files the same command (``chainrule import-hf DIR --out RUN`` then ``chainrule eval
RUN --text FILE``) gives GPT-2's bits per byte.

    python benchmarks/hf_gpt2_equality.py --data-dir DATA
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import data_dir, write_result  # noqa: E402

import transformers  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402

from chainrule.apps.inspection import inspect_text  # noqa: E402
from chainrule.interop.huggingface import export_gpt2, import_gpt2, load_gpt2_tokenizer  # noqa: E402
from chainrule.models import load  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", default=data_dir())
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    raw = (Path(args.data_dir) / "tinyshakespeare" / "input.txt").read_text()
    hf_tok = Tokenizer(models.BPE())
    hf_tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf_tok.decoder = decoders.ByteLevel()
    hf_tok.train_from_iterator([raw[:200_000]], trainers.BpeTrainer(
        vocab_size=2048, special_tokens=["<|endoftext|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    eot = hf_tok.token_to_id("<|endoftext|>")
    cfg = transformers.GPT2Config(vocab_size=hf_tok.get_vocab_size(), n_positions=128, n_embd=64, n_layer=4, n_head=4,
                                  bos_token_id=eot, eos_token_id=eot)  # activation_function: gelu_new (GPT-2's)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "gpt2"
        hf.save_pretrained(d)
        hf_tok.save(str(d / "tokenizer.json"))
        run = import_gpt2(d, Path(tmp) / "run")
        ours, tok = load(run), load_gpt2_tokenizer(d)
        x = torch.randint(0, cfg.vocab_size, (8, 128), generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            want = hf(torch.cat([torch.full((8, 1), eot), x[:, :-1]], 1)).logits
            got = ours(x)
        import_diff = float((got - want).abs().max())
        # bits per byte of a validation text: chainrule's eval --text path against transformers on its windows
        text = raw[int(len(raw) * 0.9):][:20_000]
        ins = inspect_text(ours, tok, text)
        ids = tok.encode(text)
        window, stride = ours.dim, ours.dim // 2
        starts = list(range(0, max(1, len(ids) - window + 1), stride))
        if starts[-1] != len(ids) - window:
            starts.append(len(ids) - window)
        total, done = 0.0, 0
        with torch.no_grad():
            for s in starts:
                w = torch.tensor([ids[s:s + window]])
                lp = torch.log_softmax(hf(torch.cat([torch.full((1, 1), eot), w[:, :-1]], 1)).logits.double(), -1)
                per = lp.gather(-1, w[..., None])[0, :, 0]
                total += float(-per[done - s:].sum())
                done = s + window
        n_bytes = len(text.encode("utf-8"))
        bpb_ours, bpb_hf = ins.total_bits / n_bytes, total / math.log(2) / n_bytes
        # the export, read back by transformers
        exp = export_gpt2(ours, Path(tmp) / "export", tok)
        back = transformers.GPT2LMHeadModel.from_pretrained(exp).eval()
        v = ours.num_values
        with torch.no_grad():
            exp_diff = float((back(torch.cat([torch.full((8, 1), v), x[:, :-1]], 1)).logits[..., :v] - got).abs().max())
    res = {"note": "random weights: an equality check, not a quality figure; no GPT-2 files on this machine",
           "config": {"vocab_size": cfg.vocab_size, "n_positions": 128, "n_embd": 64, "n_layer": 4, "n_head": 4,
                      "activation_function": cfg.activation_function},
           "max_abs_logit_diff_import": import_diff, "max_abs_logit_diff_export": exp_diff,
           "text_bytes": n_bytes, "text_tokens": len(ids), "bits_per_byte_chainrule": bpb_ours,
           "bits_per_byte_transformers": bpb_hf, "bits_per_byte_abs_diff": abs(bpb_ours - bpb_hf)}
    print(f"logits, import: max |diff| {import_diff:.2e}; export read by transformers: {exp_diff:.2e}; "
          f"bits/byte of {n_bytes} bytes: chainrule {bpb_ours:.6f}, transformers {bpb_hf:.6f} (random weights)")
    write_result("hf_gpt2_equality", res)


if __name__ == "__main__":
    main()
