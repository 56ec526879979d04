"""Shared helpers of the benchmark scripts: machine description and result files."""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def data_dir() -> str:
    """$CHAINRULE_DATA, else the workplace's ../shared/data next to the checkout."""
    return os.environ.get("CHAINRULE_DATA") or str(DEFAULT_DATA)


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "python": sys.version.split()[0],
            "torch_threads": torch.get_num_threads(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def write_result(name: str, result: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    result = {"benchmark": name, "command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": machine(), **result}
    path.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return path
