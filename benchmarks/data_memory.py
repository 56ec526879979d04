"""Memory of a loaded dataset: resident set size (RSS) before and after ``load_dataset``, the peak
during the load, and the bytes of the three splits' tensors.

    python benchmarks/data_memory.py binarized-mnist
    python benchmarks/data_memory.py mnist

Run it once per code version (in a fresh process each: RSS is the process's) to compare storage
types; each run writes ``results/data_memory_<name>.json``.
"""

from __future__ import annotations

import argparse
import resource
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import data_dir, write_result  # noqa: E402


def rss_mb() -> float:
    """This process's resident set size now (``/proc/self/status`` VmRSS), MB."""
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("name", nargs="?", default="binarized-mnist")
    ap.add_argument("--label", default="", help="a note stored with the result (e.g. the code version)")
    args = ap.parse_args()
    import torch  # noqa: F401  (imported before the first reading: torch's own memory is not the data's)

    from chainrule.data import load_dataset

    before = rss_mb()
    ds = load_dataset(args.name, data_dir())
    after = rss_mb()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    splits = {s: getattr(ds, s) for s in ("train", "val", "test")}
    tensor_mb = sum(t.numel() * t.element_size() for t in splits.values() if hasattr(t, "element_size")) / 2**20
    write_result(f"data_memory_{args.name}", {
        "dataset": args.name, "label": args.label, "dtype": {s: str(t.dtype) for s, t in splits.items()},
        "rss_before_mb": round(before, 1), "rss_after_mb": round(after, 1), "rss_added_mb": round(after - before, 1),
        "peak_rss_mb": round(peak, 1), "split_tensors_mb": round(tensor_mb, 1)})


if __name__ == "__main__":
    main()
