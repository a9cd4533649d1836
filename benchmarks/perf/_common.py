"""Helpers shared by the benchmark scripts in this folder (run as ``python benchmarks/perf/X.py``,
which puts this folder on ``sys.path``)."""

from __future__ import annotations

import os
import platform
import sys
import time
from typing import Any

import torch


def sync(device: torch.device) -> None:
    """Wait for queued device work, so wall-clock timings cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def command(script: str) -> str:
    """The command line that ran ``script``, relative to the working directory."""
    return "python " + " ".join([os.path.relpath(script), *sys.argv[1:]])


def machine(device: torch.device) -> dict[str, Any]:
    """What a result was measured on."""
    return {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date_utc": time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime()),
    }
