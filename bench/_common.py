"""Helpers every benchmark script shares: machine description and the ``--json`` output.

The scripts run as ``python bench/<name>.py``, so this module is imported as ``_common``."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (Linux), else the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_avg() -> list[float]:
    """1/5/15-minute load averages (how busy the machine was: the figures depend on it)."""
    return [round(v, 2) for v in os.getloadavg()]


def vmhwm_mib() -> float:
    """Peak resident memory of this process (``VmHWM`` of /proc/self/status, Linux), MiB; NaN elsewhere."""
    status = Path("/proc/self/status")
    for line in status.read_text().splitlines() if status.exists() else []:
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write a benchmark's results as indented JSON (numpy scalars as floats) and say where."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    print(f"wrote {path}")
