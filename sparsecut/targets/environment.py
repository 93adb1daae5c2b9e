"""Where a measurement was taken: device, library versions, threads — recorded in every latency report."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from functools import cache

from sparsecut.cpu import cpu_vector_extensions

__all__ = ["cpu_name", "cpu_vector_extensions", "gpu_name", "host_environment"]


@cache
def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@cache
def gpu_name() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    first = out.stdout.strip().splitlines()
    return first[0] if first else None


def host_environment() -> dict[str, str]:
    import numpy

    env = {
        "cpu": cpu_name(),
        "cpu_count": str(os.cpu_count()),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
    }
    gpu = gpu_name()
    if gpu:
        env["gpu"] = gpu
    return env
