"""GPT-2 checkpoints in Hugging Face's layout, read into chainrule's GPT and written back.

A directory as ``transformers``' ``save_pretrained`` writes it — ``config.json`` (``"model_type":
"gpt2"``), ``model.safetensors`` and, for the text, ``tokenizer.json`` or ``vocab.json`` +
``merges.txt`` (byte-level BPE) — is read with ``safetensors`` and the ``tokenizers`` library only:
neither ``transformers`` nor the network is needed (a user brings the files; pickled
``pytorch_model.bin`` files are refused, convert them to safetensors).

How the two models line up. GPT-2 (Radford et al. 2019) predicts token t + 1 from tokens 0..t;
chainrule's :class:`~chainrule.models.transformer.Transformer` predicts ``x_0`` from a learned
start vector at position 0 and ``x_t`` from ``x_{t-1}`` at position t (inputs shifted right). So
the import puts GPT-2's embedding of its ``bos_token_id`` (``<|endoftext|>``, 50256, for the
released models) in ``start``: chainrule's ``log p(x)`` is GPT-2's ``log p(x | <|endoftext|>)``, the
way GPT-2 scores a document, and the window is ``n_positions`` tokens (1024) after the start.
Position embeddings, pre-norm blocks, the fused q/k/v projection (GPT-2's ``Conv1D`` stores weights
transposed), the final LayerNorm and the tied output are the same computation; the MLP's
activation is GPT-2's ``gelu_new`` (the tanh approximation of GELU), an option of the transformer.
Logits agree to float32 rounding (tests: <= 1e-5 on random models, both directions).

The export writes a chainrule GPT over V tokens as a GPT-2 over V + 1 tokens: the extra token
``V`` (``<|chainrule_start|>``, ``bos_token_id``) carries the start vector, ``generation_config.json``
suppresses it, and ``config.json`` records ``chainrule_start_token_id`` (and the run's tokenizer) so
that importing the export gives back the V-token model exactly. ``transformers``' logits for tokens
``0..V-1`` given ``[V, x_0, .., x_{t-1}]`` equal chainrule's; its softmax also gives token ``V`` some
mass, which the generation config removes when sampling (drop that column to score).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from chainrule.errors import CheckpointError, DataError, InputError
from chainrule.io.checkpoint import atomic_write
from chainrule.models.registry import create_model
from chainrule.models.transformer import Transformer
from chainrule.text.tokenizers import BPETokenizer, Tokenizer, tokenizer_from_dict

logger = logging.getLogger(__name__)

__all__ = ["START_TOKEN", "export_gpt2", "import_gpt2", "load_gpt2", "load_gpt2_tokenizer", "read_hf_config"]

#: config.json keys the export adds (transformers keeps unknown keys as config attributes)
START_KEY = "chainrule_start_token_id"
TOKENIZER_KEY = "chainrule_tokenizer"
#: the token string of the start token an export adds to a BPE tokenizer
START_TOKEN = "<|chainrule_start|>"
#: GPT-2 activations chainrule computes, by Hugging Face's name -> chainrule's
_ACTIVATIONS = {"gelu_new": "gelu_new", "gelu_pytorch_tanh": "gelu_new", "gelu": "gelu"}
_LN_EPS = 1e-5  # torch.nn.LayerNorm's default, which chainrule's blocks use


def _dir(directory: str | Path, what: str) -> Path:
    d = Path(directory)
    if not d.is_dir():
        raise InputError(f"{d} is not a directory; expected {what}")
    return d


def read_hf_config(directory: str | Path) -> dict[str, Any]:
    """The ``config.json`` of a Hugging Face model directory (a dict), checked to be GPT-2's."""
    d = _dir(directory, "a Hugging Face GPT-2 directory (config.json, model.safetensors)")
    path = d / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{d} has no config.json; expected a Hugging Face GPT-2 directory as save_pretrained "
                              "writes it (config.json, model.safetensors, tokenizer.json or vocab.json + merges.txt)")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path} is not a JSON object")
    if cfg.get("format") == "chainrule":
        raise InputError(f"{d} is a chainrule checkpoint, not a Hugging Face one: use it as a run directly")
    if cfg.get("model_type") != "gpt2":
        raise InputError(f"{path}: model_type {cfg.get('model_type')!r}; chainrule reads GPT-2 checkpoints "
                         "(model_type 'gpt2') only")
    return cfg


def _int(cfg: dict[str, Any], key: str, default: Any = None) -> int:
    v = cfg.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise CheckpointError(f"config.json: {key} must be a positive integer, got {v!r}")
    return v


def _check_supported(cfg: dict[str, Any]) -> str:
    """The chainrule activation of a GPT-2 config; an InputError for what chainrule's GPT does not compute."""
    act = cfg.get("activation_function", "gelu_new")
    if act not in _ACTIVATIONS:
        raise InputError(f"config.json: activation_function {act!r} is not supported; chainrule's GPT computes "
                         f"{', '.join(_ACTIVATIONS)}")
    n_embd = _int(cfg, "n_embd", 768)
    if cfg.get("n_inner") not in (None, 4 * n_embd):
        raise InputError(f"config.json: n_inner={cfg['n_inner']}; chainrule's GPT has an MLP of 4 * n_embd = {4 * n_embd}")
    if not math.isclose(float(cfg.get("layer_norm_epsilon", _LN_EPS)), _LN_EPS, rel_tol=1e-9):
        raise InputError(f"config.json: layer_norm_epsilon={cfg['layer_norm_epsilon']}; chainrule's LayerNorms use {_LN_EPS}")
    for key, want in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                      ("add_cross_attention", False)):
        if bool(cfg.get(key, want)) != want:
            raise InputError(f"config.json: {key}={cfg[key]} is not supported (chainrule's GPT: {want})")
    return _ACTIVATIONS[act]


def _read_state(d: Path) -> dict[str, torch.Tensor]:
    """The tensors of ``model.safetensors``, named without the ``transformer.`` prefix, as float32."""
    path = d / "model.safetensors"
    if not path.is_file():
        others = [p.name for p in (d / "pytorch_model.bin", d / "model.safetensors.index.json") if p.exists()]
        hint = (f" (found {', '.join(others)}: chainrule reads one safetensors file, never a pickle; convert it, e.g. "
                "load it in transformers and save_pretrained(..., safe_serialization=True) with max_shard_size large "
                "enough for one file)") if others else ""
        raise CheckpointError(f"{d} has no model.safetensors{hint}")
    try:
        raw = load_file(str(path))
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc})") from None
    out = {}
    for k, v in raw.items():
        name = k[len("transformer."):] if k.startswith("transformer.") else k
        if name.endswith((".attn.bias", ".attn.masked_bias")) and v.dim() != 1:
            continue  # the causal-mask buffers of old checkpoints, not weights
        out[name] = v.float()
    return out


def load_gpt2(directory: str | Path, *, max_length: int | None = None,
              map_location: str | torch.device = "cpu") -> Transformer:
    """A Hugging Face GPT-2 directory as chainrule's :class:`~chainrule.models.transformer.Transformer`.

    ``log_prob(x)`` of the result, ``x`` ``(B, T)`` token ids, is GPT-2's ``log p(x | bos)`` (see the
    module docstring). ``max_length``: the window T (default ``n_positions``; a shorter window is
    cheaper to score and sample with, the first T position embeddings are kept).

    Raises:
        CheckpointError: missing or unreadable files, tensors that do not match the config.
        InputError: a config chainrule's GPT does not compute (another model type, activation, MLP
            width, LayerNorm epsilon, attention scaling or cross-attention).
    """
    d = _dir(directory, "a Hugging Face GPT-2 directory")
    cfg = read_hf_config(d)
    activation = _check_supported(cfg)
    vocab, n_pos = _int(cfg, "vocab_size", 50257), _int(cfg, "n_positions", 1024)
    embed, layers, heads = _int(cfg, "n_embd", 768), _int(cfg, "n_layer", 12), _int(cfg, "n_head", 12)
    start = cfg.get(START_KEY)
    bos = start if start is not None else cfg.get("bos_token_id")
    if isinstance(bos, bool) or not isinstance(bos, int) or not 0 <= bos < vocab:
        raise InputError(f"{d / 'config.json'}: bos_token_id {bos!r} is not a token id in 0..{vocab - 1}; chainrule's GPT "
                         "starts every sequence from that token's embedding")
    num_values = start if start is not None else vocab  # a chainrule export: its extra start token is no value
    window = n_pos if max_length is None else max_length
    if isinstance(window, bool) or not isinstance(window, int) or not 1 <= window <= n_pos:
        raise InputError(f"max_length must be an integer in 1..{n_pos} (the checkpoint's n_positions), got {max_length!r}")
    tied = bool(cfg.get("tie_word_embeddings", True))
    model = create_model("transformer", (window,), num_values, num_layers=layers, num_heads=heads, embed_dim=embed,
                         dropout=0.0, bias=True, tie_weights=tied, activation=activation)
    state = _read_state(d)

    def get(name: str) -> torch.Tensor:
        if name not in state:
            raise CheckpointError(f"{d / 'model.safetensors'} lacks the tensor {name!r} that a GPT-2 of this config has")
        return state[name]

    wte = get("wte.weight")
    new = {"tok.weight": wte[:num_values], "pos": get("wpe.weight")[:window], "start": wte[bos],
           "ln_f.weight": get("ln_f.weight"), "ln_f.bias": get("ln_f.bias")}
    for i in range(layers):
        h, b = f"h.{i}.", f"blocks.{i}."
        for ours, theirs, conv in (("ln1", "ln_1", False), ("qkv", "attn.c_attn", True), ("proj", "attn.c_proj", True),
                                   ("ln2", "ln_2", False), ("fc", "mlp.c_fc", True), ("fc_out", "mlp.c_proj", True)):
            w = get(f"{h}{theirs}.weight")
            new[f"{b}{ours}.weight"] = w.T if conv else w  # Conv1D: (in, out); nn.Linear: (out, in)
            new[f"{b}{ours}.bias"] = get(f"{h}{theirs}.bias")
    if not tied:
        new["out.weight"] = get("lm_head.weight")[:num_values]
        new["out.bias"] = torch.zeros(num_values)  # GPT-2's lm_head has no bias
    sd = model.state_dict()
    for k, v in new.items():
        if tuple(v.shape) != tuple(sd[k].shape):
            raise CheckpointError(f"{d / 'model.safetensors'}: a tensor for {k} has shape {tuple(v.shape)}, the config "
                                  f"implies {tuple(sd[k].shape)}")
        sd[k] = v.contiguous()
    model.load_state_dict(sd)
    return model.to(map_location).eval()


def load_gpt2_tokenizer(directory: str | Path) -> Tokenizer | None:
    """The tokenizer of a Hugging Face GPT-2 directory, in chainrule's protocol, or None if it has none.

    ``tokenizer.json`` (any ``tokenizers`` file) or ``vocab.json`` + ``merges.txt`` (GPT-2's
    byte-level BPE: byte-level pre-tokenizer without a prefix space, byte-level decoder,
    ``<|endoftext|>`` a special token) become a :class:`~chainrule.text.tokenizers.BPETokenizer`
    with no chainrule specials (ids are the file's); a directory chainrule exported gives back the
    run's own tokenizer. Saved with ``save`` and read with ``load_tokenizer`` like any other.
    """
    d = _dir(directory, "a Hugging Face GPT-2 directory")
    cfg = read_hf_config(d)
    if isinstance(cfg.get(TOKENIZER_KEY), dict):
        return tokenizer_from_dict(cfg[TOKENIZER_KEY])
    try:
        import tokenizers
        from tokenizers import AddedToken, decoders, models, pre_tokenizers
    except ImportError:
        raise ImportError('reading a Hugging Face tokenizer needs the "tokenizers" package: pip install "chainrule[bpe]"') from None
    if (d / "tokenizer.json").is_file():
        try:
            hf = tokenizers.Tokenizer.from_file(str(d / "tokenizer.json"))
        except Exception as exc:  # the library raises plain Exceptions
            raise DataError(f"{d / 'tokenizer.json'} cannot be read by the tokenizers library: {exc}") from None
    elif (d / "vocab.json").is_file() and (d / "merges.txt").is_file():
        try:
            hf = tokenizers.Tokenizer(models.BPE.from_file(str(d / "vocab.json"), str(d / "merges.txt")))
        except Exception as exc:
            raise DataError(f"{d}: vocab.json + merges.txt cannot be read as a BPE vocabulary: {exc}") from None
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        if hf.token_to_id("<|endoftext|>") is not None:  # GPT2Tokenizer's special token
            hf.add_special_tokens([AddedToken("<|endoftext|>", special=True)])
    else:
        return None
    return BPETokenizer(hf, specials=())


def _new_directory(path: str | Path, option: str) -> Path:
    out = Path(path)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{option} {out} already exists and is not an empty directory; choose a new one "
                         "(nothing is overwritten)")
    out.mkdir(parents=True, exist_ok=True)
    return out


def import_gpt2(directory: str | Path, out: str | Path, *, max_length: int | None = None) -> Path:
    """Write a Hugging Face GPT-2 directory as a chainrule run ``out`` (``config.json`` +
    ``model.safetensors``, the tokenizer in the config as a trained text run has it), on which
    ``chainrule eval --text``, ``generate``, ``sample``, ``compress`` and ``inspect`` work.
    ``out`` must not exist or be empty. Returns ``out``."""
    model = load_gpt2(directory, max_length=max_length)
    tok = load_gpt2_tokenizer(directory)
    if tok is not None and tok.vocab_size > model.num_values:
        raise DataError(f"{directory}: the tokenizer has {tok.vocab_size} tokens, more than the model's "
                        f"{model.num_values}")
    if tok is None:
        logger.warning("%s has no tokenizer (tokenizer.json or vocab.json + merges.txt): the run works on token ids only",
                       directory)
    extra: dict[str, Any] = {"source": "huggingface", "hf_directory": str(Path(directory).resolve()),
                             "hf_model_type": "gpt2"}
    if tok is not None:
        extra["tokenizer"] = tok.to_dict()
    eos = read_hf_config(directory).get("eos_token_id")
    if isinstance(eos, int) and not isinstance(eos, bool) and 0 <= eos < model.num_values:
        extra["eos_token_id"] = eos  # generate's default end token, as transformers' generate stops at it
    target = _new_directory(out, "--out")
    return model.save(target, extra=extra)


def _check_exportable(model: Any) -> None:
    if not isinstance(model, Transformer) or getattr(model, "num_members", 1) > 1:
        raise InputError(f"export to GPT-2 needs a chainrule transformer, got {getattr(model, 'name', type(model).__name__)}")
    if len(model.shape) != 1 or model.num_values is None or model.head.name != "categorical" or model.group_size != 1:
        raise InputError(f"export to GPT-2 needs a sequence model of discrete tokens with a categorical head "
                         f"(shape (T,), K values), got shape {tuple(model.shape)}, head {model.head.name}")
    if model.conditional:
        raise InputError("export to GPT-2: a conditional model has no GPT-2 counterpart")
    if not torch.equal(model.order.cpu(), torch.arange(model.num_groups)):
        raise InputError("export to GPT-2 needs a model read left to right (GPT-2 has no other order); this one "
                         "was trained in another order")
    if not model.tied and model.out.bias is not None and bool((model.out.bias != 0).any()):
        raise InputError("export to GPT-2: the model has an untied output layer with a bias, which GPT-2's lm_head lacks")


def export_gpt2(model: Transformer, directory: str | Path, tokenizer: Tokenizer | None = None) -> Path:
    """Write a chainrule GPT as a Hugging Face GPT-2 directory that ``transformers``'
    ``GPT2LMHeadModel.from_pretrained`` loads: ``config.json``, ``model.safetensors``,
    ``generation_config.json`` and the tokenizer — ``tokenizer.json`` (+ ``tokenizer_config.json``)
    for a BPE tokenizer, with its chainrule specials and the start token added at their ids; the
    chainrule tokenizer file ``chainrule_tokenizer.json`` for the others, which ``transformers``
    cannot use. See the module docstring for the extra start token. ``directory`` must not exist or
    be empty. Returns it.
    """
    _check_exportable(model)
    v, t, c = model.num_values, model.num_groups, model.embed_dim
    blocks = list(model.blocks)
    act = "gelu_new" if blocks[0].approximate == "tanh" else "gelu"

    def f(x: torch.Tensor | None, like: int) -> torch.Tensor:
        return (torch.zeros(like) if x is None else x.detach().float().cpu()).contiguous()

    state: dict[str, torch.Tensor] = {
        "transformer.wte.weight": torch.cat([f(model.tok.weight, 0), f(model.start, 0)[None]]).contiguous(),
        "transformer.wpe.weight": f(model.pos, 0),
        "transformer.ln_f.weight": f(model.ln_f.weight, c), "transformer.ln_f.bias": f(model.ln_f.bias, c)}
    for i, blk in enumerate(blocks):
        h = f"transformer.h.{i}."
        for ours, theirs, conv in (("ln1", "ln_1", False), ("qkv", "attn.c_attn", True), ("proj", "attn.c_proj", True),
                                   ("ln2", "ln_2", False), ("fc", "mlp.c_fc", True), ("fc_out", "mlp.c_proj", True)):
            layer = getattr(blk, ours)
            w = f(layer.weight, 0)
            state[f"{h}{theirs}.weight"] = w.T.contiguous() if conv else w
            state[f"{h}{theirs}.bias"] = f(layer.bias, w.shape[0])
    if not model.tied:
        state["lm_head.weight"] = torch.cat([f(model.out.weight, 0), torch.zeros(1, c)]).contiguous()
    config = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": v + 1, "n_positions": t,
              "n_embd": c, "n_layer": len(blocks), "n_head": model.num_heads, "n_inner": None,
              "activation_function": act, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
              "layer_norm_epsilon": _LN_EPS, "initializer_range": 0.02, "scale_attn_weights": True,
              "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False, "use_cache": True,
              "bos_token_id": v, "eos_token_id": v, "pad_token_id": v, "tie_word_embeddings": model.tied,
              "dtype": "float32", START_KEY: v}
    if tokenizer is not None:
        config[TOKENIZER_KEY] = tokenizer.to_dict()
    generation = {"bos_token_id": v, "eos_token_id": v, "pad_token_id": v, "suppress_tokens": [v]}
    out = _new_directory(directory, "the export directory")
    atomic_write(out / "model.safetensors", lambda p: save_file(state, p, metadata={"format": "pt"}))
    atomic_write(out / "config.json", lambda p: Path(p).write_text(json.dumps(config, indent=2), encoding="utf-8"))
    atomic_write(out / "generation_config.json", lambda p: Path(p).write_text(json.dumps(generation, indent=2), encoding="utf-8"))
    if tokenizer is not None:
        _export_tokenizer(tokenizer, out, v, t)
    return out


def _export_tokenizer(tokenizer: Tokenizer, out: Path, v: int, window: int) -> None:
    if isinstance(tokenizer, BPETokenizer):
        import tokenizers
        from tokenizers import AddedToken

        hf = tokenizers.Tokenizer.from_str(tokenizer.hf_tokenizer.to_str())
        names = sorted(tokenizer.special_tokens, key=tokenizer.special_tokens.get) + [START_TOKEN]
        hf.add_special_tokens([AddedToken(s, special=True) for s in names])
        want = {**tokenizer.special_tokens, START_TOKEN: v}
        if all(hf.token_to_id(s) == i for s, i in want.items()):
            atomic_write(out / "tokenizer.json", lambda p: hf.save(p))
            tc = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": START_TOKEN, "eos_token": START_TOKEN,
                  "pad_token": START_TOKEN, "model_max_length": window, "add_prefix_space": False}
            atomic_write(out / "tokenizer_config.json", lambda p: Path(p).write_text(json.dumps(tc, indent=2), encoding="utf-8"))
            return
        logger.warning("the run's special tokens clash with BPE tokens of the same text; tokenizer.json not written, "
                       "chainrule_tokenizer.json instead")
    tokenizer.save(out / "chainrule_tokenizer.json")
