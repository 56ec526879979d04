"""How the values of the user's arrays are read: discrete with K values (inferred from the values
present, or given), or real-valued; every decision described in one line.

The rules (:func:`summarize_values`), for the arrays of a ``.npy`` / ``.npz`` file or a folder of PNGs:

- **booleans and integers** (any integer dtype) are discrete: K = 2 when the values are 0 and 1
  (binary); else K = 256 for 8-bit images (arrays ``(N, H, W)`` or ``(N, C, H, W)`` of uint8, or
  whose largest value is 128..255), whatever the largest value present; else K = the largest
  value + 1 (e.g. 17 for values 0..16, 32 for 5-bit images). Negative values are an error.
- **floats whose values are all integers** (``0.0 .. 255.0``, ``0.0 / 1.0``) are discrete by the
  same rule (floats that differ from integers by float rounding only, a few ulps, are rounded);
  pass ``dequantize=True`` (``--dequantize``) to model them as continuous data.
- **other floats** are real-valued (K = None); when they lie in [0, 1] they are read as grey
  intensities, which ``binarize="threshold"`` (x >= 0.5) or ``"dynamic"`` (Bernoulli(x)) turn into
  binary data.
- ``num_values=K`` (``--num-values K``) overrides the inferred K of discrete data: K must exceed
  every value present (:class:`ValueRangeError` otherwise); a larger K is allowed.
- NaN / inf values, and dtypes other than booleans, integers and floats, are refused.

Nothing in this module imports the rest of the package but :mod:`chainrule.errors`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from chainrule.errors import DataError

logger = logging.getLogger(__name__)

#: Discrete data with more values than this get a warning in their summary: probably not categorical.
MANY_VALUES = 2**16

#: Floats within this many ulps of an integer (relative to max(1, |x|)) count as that integer: the
#: error of ``x / 255 * 255`` or of a float32 round trip, far below any real measurement's resolution.
_ROUNDING_ULPS = 16


class ValueRangeError(DataError):
    """The data do not fit a given ``num_values`` (K): they hold the value ``value >= K``, or (with
    ``value`` None) they are not integers at all; ``data`` says what they are, in a few words."""

    def __init__(self, message: str, value: int | None, num_values: int, data: str = "") -> None:
        super().__init__(message)
        self.value = value
        self.num_values = num_values
        self.data = data


@dataclass(frozen=True)
class ValueSummary:
    """What the values of a dataset are and how they were read, for the one line that says so.

    Attributes:
        num_values: the K chosen (None: real-valued).
        dtype: the arrays' dtype, e.g. ``"uint8"``.
        low, high: the smallest and the largest value present (over all splits).
        kind: ``"binary"``, ``"8-bit"`` (8-bit images), ``"max+1"``, ``"given"`` (``num_values=K``),
            ``"intensities"`` (real values in [0, 1]) or ``"real"``.
        integral_floats: the data are floats whose values are integers (read as discrete).
        rounded: the largest distance to the nearest integer of float values taken as integers
            (0.0 when they are exact integers).
        after: what a transform did next (``"binarized (x >= 128) -> K=2"``), or "".
    """

    num_values: int | None
    dtype: str
    low: float
    high: float
    kind: str
    integral_floats: bool = False
    rounded: float = 0.0
    after: str = ""

    @property
    def values(self) -> str:
        """The values present, e.g. ``"{0, 1}"``, ``"0..255"`` or ``"in [-2.31, 3.05]"``."""
        if self.num_values is None:
            return f"in [{self.low:.4g}, {self.high:.4g}]"
        low, high = int(self.low), int(self.high)
        if high - low <= 1:
            return "{" + ", ".join(str(v) for v in range(low, high + 1)) + "}"
        return f"{low}..{high}"

    @property
    def what(self) -> str:
        """The data in a few words: ``"uint8 images, values 0..200"``, ``"float32 values in [0, 1], not integers"``."""
        kind = "images, values" if self.kind == "8-bit" else "values"
        text = f"{self.dtype} {kind} {self.values}"
        if self.num_values is None:
            return text + ", not integers"
        if self.integral_floats and self.rounded:
            return text + f", integers up to float rounding ({self.rounded:.1g}, rounded)"
        return text + (", all integers" if self.integral_floats else "")

    def result(self) -> str:
        """``"K=2 (binary)"``, ``"real-valued (K=None)"``, ..."""
        k = self.num_values
        if k is None:
            return "real-valued (K=None)" + (", read as grey intensities" if self.kind == "intensities" else "")
        why = {"binary": "binary", "8-bit": "8-bit pixels", "max+1": "the largest value + 1",
               "given": f"--num-values {k}"}[self.kind]
        text = f"{'discrete, ' if self.integral_floats else ''}K={k} ({why})"
        if k > MANY_VALUES:
            text += f" (a categorical over {k:,} values: is this really categorical data?)"
        return text

    def hint(self) -> str:
        """What to pass to read the data differently."""
        if self.kind == "intensities":
            return "--binarize threshold (x >= 0.5) or dynamic (Bernoulli(x)) makes them binary"
        if self.kind == "real":
            if self.low >= 0 and self.high <= 255:
                return "if they are 8-bit pixels, round them to integers (np.rint) for a discrete model"
            return ""
        hints = [] if self.kind == "given" else ["override with --num-values K"]
        if self.integral_floats:
            hints.append("pass --dequantize if they are continuous")
        return ", or ".join(hints)

    def line(self) -> str:
        """The one line the command line prints, e.g.
        ``data: uint8 values {0, 1} -> K=2 (binary); override with --num-values K``."""
        text = f"data: {self.what} -> {self.result()}"
        if self.after:
            return f"{text}, then {self.after}"
        hint = self.hint()
        return f"{text}; {hint}" if hint else text

    def then(self, after: str) -> ValueSummary:
        """This summary, followed by what a transform did (``after``)."""
        return replace(self, after=f"{self.after}, then {after}" if self.after else after)


def _integral(x: np.ndarray) -> tuple[bool, float]:
    """``(every value is an integer up to float rounding, the largest distance to one)``."""
    if x.dtype.kind != "f":  # an integer split next to float ones (an .npz)
        return True, 0.0
    flat = x.reshape(-1)
    eps = np.finfo(x.dtype).eps
    worst = 0.0
    for start in range(0, flat.size, 1 << 20):  # in chunks: the temporaries of a big array would double it
        chunk = flat[start:start + (1 << 20)]
        dev = np.abs(chunk - np.rint(chunk))
        if not dev.any():
            continue
        if not (dev <= _ROUNDING_ULPS * eps * np.maximum(1.0, np.abs(chunk))).all():
            return False, float(dev.max())
        worst = max(worst, float(dev.max()))
    return True, worst


#: The most discrete values K data may have (the models' and the entropy coder's ceiling).
MAX_NUM_VALUES = 1 << 24


def summarize_values(splits: Sequence[np.ndarray], source: object = "data", *, image: bool | None = None,
                     num_values: int | None = None) -> tuple[ValueSummary, list[np.ndarray]]:
    """Read the values of ``splits`` (arrays ``(N, ...)``, e.g. train, val, test) by the rules of
    this module's docstring: ``(summary, the splits as int64 (discrete) or float32 (real))``.

    Args:
        splits: the arrays; their values are pooled (K covers every split).
        source: names the data in errors (a path).
        image: the arrays hold images (the 8-bit rule for uint8); default: ``ndim >= 3``.
        num_values: K given by the caller: every value must be below it.

    Raises:
        DataError: a non-numeric dtype, NaN or inf, negative discrete values, or ``num_values``
            given for data that are not integers; :class:`ValueRangeError` (a DataError) when a
            value is ``>= num_values``.
    """
    splits = [np.asarray(x) for x in splits]
    if not splits:
        raise DataError(f"{source}: no arrays")
    dtype = np.result_type(*splits)
    if dtype.kind not in "biuf":
        raise DataError(f"{source}: array of dtype {dtype}; expected numbers: integers, booleans or floats")
    if num_values is not None and (isinstance(num_values, bool) or not isinstance(num_values, (int, np.integer))
                                   or num_values < 2):
        raise DataError(f"num_values (--num-values) must be an integer >= 2, got {num_values!r}")
    if image is None:
        image = splits[0].ndim >= 3
    nonempty = [x for x in splits if x.size]
    if not nonempty:
        raise DataError(f"{source}: the arrays hold no values")
    integral_floats, rounded = False, 0.0
    if dtype.kind == "f":
        if not all(np.isfinite(x).all() for x in splits):
            n_nan = sum(int(np.isnan(x).sum()) for x in splits)
            n_inf = sum(int(np.isinf(x).sum()) for x in splits)
            raise DataError(f"{source}: the data contain {n_nan} NaN and {n_inf} infinite values; expected "
                            "finite numbers (drop or impute the missing values)")
        low = min(float(x.min()) for x in nonempty)
        high = max(float(x.max()) for x in nonempty)
        checks = [_integral(x) for x in nonempty]
        integral = all(ok for ok, _ in checks)
        rounded = max(dev for _, dev in checks) if integral else 0.0
        if integral and rounded and len({float(np.rint(low)), float(np.rint(high))}) < 2:
            integral = False  # near-constant data near one integer: continuous, not rounding error
        if not integral:
            kind = "intensities" if low >= 0 and high <= 1 else "real"
            summary = ValueSummary(None, str(dtype), low, high, kind)
            if num_values is not None:
                raise ValueRangeError(
                    f"{source}: num_values={num_values} (--num-values {num_values}) is for discrete data, but "
                    f"the data are {summary.what}; round them to integers 0..K-1 (or leave --num-values out "
                    "for a real-valued model)", None, int(num_values), summary.what)
            return summary, [np.asarray(x, np.float32) for x in splits]
        integral_floats = True
        splits = [np.rint(x) for x in splits]
        low, high = float(np.rint(low)), float(np.rint(high))
    else:
        low = min(int(x.min()) for x in nonempty)
        high = max(int(x.max()) for x in nonempty)
    ilow, ihigh = int(low), int(high)
    if ilow < 0:
        raise DataError(
            f"{source}: {dtype} values {ilow}..{ihigh} include negative ones; discrete data are integers 0..K-1: "
            f"shift them (x - ({ilow})), or save continuous data as non-integer floats")
    if num_values is not None:
        k = int(num_values)
        if ihigh >= k:
            raise ValueRangeError(
                f"{source}: holds the value {ihigh}, but num_values={k} (--num-values {k}) allows only 0..{k - 1}; K must exceed the largest value: "
                f"give K >= {ihigh + 1}, or leave it out to infer K",
                ihigh, k, f"{dtype} values {ilow}..{ihigh}")
        kind = "given"
    elif ihigh <= 1 and not (dtype == np.uint8 and image and ihigh == 0):
        k, kind = 2, "binary"
    elif image and (dtype == np.uint8 or 128 <= ihigh <= 255):
        # 8-bit pixels: the dtype's range, or values that need 8 bits; not the largest value seen
        # (a split without a white pixel must not change K, nor make --binarize refuse the data)
        k, kind = 256, "8-bit"
    else:
        k, kind = max(ihigh + 1, 2), "max+1"
    if k > MAX_NUM_VALUES:
        raise DataError(f"{source}: holds the value {ihigh}, so K = {k:,} discrete values; at most {MAX_NUM_VALUES:,} "
                        "(2**24) are supported (no model or coder fits more): are these categorical data? Save "
                        "continuous data as floats (a real-valued model), or map the values to 0..K-1")
    summary = ValueSummary(k, str(dtype), low, high, kind, integral_floats, rounded)
    if k > MANY_VALUES:
        logger.warning("%s: %d discrete values; is this really categorical data?", source, k)
    return summary, [np.asarray(x, np.int64) for x in splits]
