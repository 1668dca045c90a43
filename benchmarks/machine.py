"""What every benchmark prints first: the machine it ran on (ratios, not times, are compared)."""

from __future__ import annotations

import os
from pathlib import Path


def cpu() -> str:
    names = [
        line.split(":", 1)[1].strip()
        for line in Path("/proc/cpuinfo").read_text().splitlines()
        if line.startswith("model name")
    ]
    return f"{names[0] if names else 'unknown CPU'}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}"
