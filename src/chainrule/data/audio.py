"""Audio: mu-law companding, PCM WAV files, and WAV files as datasets of 8-bit code windows.

A WAV dataset (:func:`wav_dataset`) holds windows of mu-law codes ``0..255`` (unlabelled).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from chainrule.data.dataset import Dataset
from chainrule.data.sequences import WindowedSequence
from chainrule.errors import DataError


def mu_law_encode(x: torch.Tensor, channels: int = 256) -> torch.Tensor:
    """Mu-law companding (ITU-T G.711; WaveNet, van den Oord et al. 2016): audio in [-1, 1] ->
    codes 0..channels-1, ``sign(x) ln(1 + mu |x|) / ln(1 + mu)`` quantized, mu = channels - 1."""
    mu = channels - 1
    y = torch.sign(x) * torch.log1p(mu * x.abs().clamp(max=1.0)) / math.log1p(mu)
    return ((y + 1) / 2 * mu + 0.5).floor().long().clamp(0, mu)


def mu_law_decode(codes: torch.Tensor, channels: int = 256) -> torch.Tensor:
    """Inverse of :func:`mu_law_encode`: codes 0..channels-1 -> audio in [-1, 1]."""
    mu = channels - 1
    y = codes.double() / mu * 2 - 1
    return (torch.sign(y) * ((1 + mu) ** y.abs() - 1) / mu).float()


def read_wav(path: Path) -> tuple[torch.Tensor, int]:
    """Read a PCM WAV file (8, 16, 24 or 32-bit integer samples) as mono float audio in [-1, 1].

    Returns ``(audio (L,), sample_rate)``; several channels are averaged. Non-PCM files (float or
    compressed WAV) raise a DataError.
    """
    import wave

    try:
        with wave.open(str(path), "rb") as w:
            channels, width, rate, frames = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
            raw = w.readframes(frames)
    except (wave.Error, EOFError) as exc:
        raise DataError(f"{path}: not a PCM WAV file ({exc}); expected uncompressed integer PCM "
                        "(convert with e.g. `sox in.wav -e signed-integer -b 16 out.wav`)") from None
    if width == 1:
        a = (np.frombuffer(raw, np.uint8).astype(np.float64) - 128) / 128
    elif width == 3:
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3)
        v = (b[:, 0].astype(np.int32) | (b[:, 1].astype(np.int32) << 8) | (b[:, 2].astype(np.int32) << 16))
        a = np.where(v >= 1 << 23, v - (1 << 24), v) / float(1 << 23)
    else:
        a = np.frombuffer(raw, {2: "<i2", 4: "<i4"}[width]).astype(np.float64) / float(1 << (8 * width - 1))
    if a.size == 0:
        raise DataError(f"{path}: the WAV file has no samples")
    a = a.reshape(-1, channels).mean(1)
    return torch.from_numpy(a).float(), rate


def write_wav(path: Path, audio: torch.Tensor, sample_rate: int) -> Path:
    """Write mono float audio in [-1, 1] as 16-bit PCM."""
    import wave

    pcm = (audio.clamp(-1, 1) * 32767).round().short().numpy().astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.tobytes())
    return path


def wav_dataset(path: Path, block_size: int = 4096, val_fraction: float = 0.1) -> Dataset:
    """8-bit mu-law audio from a PCM WAV file, windows of ``block_size`` samples, split 90/10 by time
    (train: every window, stride 1; validation = test: non-overlapping windows)."""
    audio, rate = read_wav(path)
    codes = mu_law_encode(audio)
    n_train = int(len(codes) * (1 - val_fraction))
    train = WindowedSequence(codes[:n_train], block_size, 1)
    val = WindowedSequence(codes[n_train:], block_size, block_size)
    return Dataset(name=str(path), train=train, val=val, test=val, shape=(block_size,), num_values=256,  # type: ignore[arg-type]
                   is_image=False, sample_rate=rate,
                   description=f"{path}: {len(codes) / rate:.1f} s of audio at {rate} Hz, 8-bit mu-law, "
                               f"windows of {block_size}; 90/10 split by time (test = val)")
