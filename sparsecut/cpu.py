"""What the CPU offers the kernels that choose by it (onnxruntime's, OpenVINO's): a neutral place, read by passes
(the default int8 format) and targets (latency table keys, channel blocks) alike."""

from __future__ import annotations

from functools import cache

__all__ = ["cpu_vector_extensions"]


@cache
def cpu_vector_extensions() -> str:
    """The vector extensions CPU kernels choose by (from /proc/cpuinfo; empty where unknown)."""
    wanted = ("avx512f", "avx512_vnni", "avx512bw", "avx_vnni", "avx2", "fma", "amx_tile", "asimd", "sve")
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    flags = set(line.split(":", 1)[1].split())
                    return ",".join(w for w in wanted if w in flags)
    except OSError:
        pass
    return ""
