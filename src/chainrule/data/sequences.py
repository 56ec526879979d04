"""Token sequences: a text as overlapping windows of character or byte ids.

:class:`WindowedSequence` indexes all windows of a 1-D token stream like a tensor ``(N, length)``
without materializing them; :func:`text_dataset` turns a text into a :class:`Dataset` of such
windows (unlabelled).
"""

from __future__ import annotations

from pathlib import Path

import torch

from chainrule.data.dataset import Dataset, storage_dtype
from chainrule.errors import DataError

#: Levels of the text datasets: one token per character, or per UTF-8 byte.
TEXT_LEVELS = ("char", "byte")


class WindowedSequence:
    """All windows of ``length`` tokens of a 1-D stream, starting every ``stride`` tokens, indexable
    like a tensor ``(N, length)`` without materializing it (a text of L tokens has L - length + 1
    windows at stride 1).

    ``windows[idx]`` takes an int, a slice or a LongTensor of window numbers and returns
    ``(B, length)`` long token ids.
    """

    def __init__(self, stream: torch.Tensor, length: int, stride: int = 1) -> None:
        if stream.dim() != 1:
            raise DataError(f"a token stream must be 1-D, got shape {tuple(stream.shape)}")
        if length < 1 or stride < 1:
            raise DataError(f"window length and stride must be >= 1, got {length}, {stride}")
        if len(stream) < length:
            raise DataError(f"the text has {len(stream)} tokens, fewer than one window of {length}: "
                            "use a smaller --block-size or more text")
        # the tokens at their natural width (uint8 for characters and bytes); windows come out int64
        width = storage_dtype(int(stream.max()) + 1 if stream.numel() else 1)
        self.stream, self.length, self.stride = stream.to(width), length, stride
        self._offsets = torch.arange(length)

    def __len__(self) -> int:
        return (len(self.stream) - self.length) // self.stride + 1

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self), self.length)

    @property
    def dtype(self) -> torch.dtype:
        return torch.long

    def __getitem__(self, idx: int | slice | torch.Tensor) -> torch.Tensor:
        if isinstance(idx, slice):
            idx = torch.arange(len(self))[idx]
        idx = torch.as_tensor(idx, dtype=torch.long)
        if idx.numel() and (int(idx.min()) < -len(self) or int(idx.max()) >= len(self)):
            raise IndexError(f"window index out of range 0..{len(self) - 1}")
        idx = idx % len(self)
        starts = idx * self.stride
        return self.stream[starts.unsqueeze(-1) + self._offsets].long()

    def __repr__(self) -> str:
        return f"WindowedSequence({len(self)} windows of {self.length}, stride {self.stride}, {len(self.stream)} tokens)"


def _decode_utf8(raw: bytes, path: Path) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}: not UTF-8 text: byte {exc.start} (0x{raw[exc.start]:02x}) cannot be decoded ({exc.reason}); "
            "use level='byte' (--level byte), which takes any bytes"
        ) from None


def text_dataset(raw: bytes, name: str, path: Path, level: str = "char", block_size: int = 256,
                 val_fraction: float = 0.1) -> Dataset:
    """Character- or byte-level windows of ``block_size`` tokens from a text, split by position.

    The first 90% of the tokens train (every window, stride 1: the trainer draws random windows),
    the last 10% validate (non-overlapping windows) — nanoGPT's split. The text has no third
    part: ``test`` is the validation stream too (state which you report).
    """
    from chainrule.text.tokenizers import ByteTokenizer, CharTokenizer

    if level not in TEXT_LEVELS:
        raise DataError(f"unknown text level {level!r}; choices: {', '.join(TEXT_LEVELS)}")
    if not raw:
        raise DataError(f"{path}: the text is empty")
    if level == "char":
        text = _decode_utf8(raw, path)
        tok = CharTokenizer.fit(text, specials=())
        ids = torch.tensor(tok.encode(text), dtype=torch.long)
    else:
        tok = ByteTokenizer(specials=())
        ids = torch.frombuffer(bytearray(raw), dtype=torch.uint8).long()
    n_train = int(len(ids) * (1 - val_fraction))
    train = WindowedSequence(ids[:n_train], block_size, 1)
    val = WindowedSequence(ids[n_train:], block_size, block_size)
    return Dataset(name=name, train=train, val=val, test=val, shape=(block_size,), num_values=tok.vocab_size,  # type: ignore[arg-type]
                   is_image=False, tokenizer=tok,
                   description=f"{name}: {len(ids):,} {level} tokens, vocabulary {tok.vocab_size}, "
                               f"windows of {block_size}; 90/10 split by position (test = val)")
