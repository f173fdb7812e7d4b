"""What a benchmark ran on, recorded beside its numbers: CPU, memory, GPUs, versions, Ray.

One description for the benchmark job and every script in bench/, so tables from different
tools name the machine the same way. Ray is loaded only by the parts that ask it, so the CPU and
load readings also serve scripts on a bare GPU box without Ray (``bench/gpu_sweep.py``).
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

__all__ = ["bf16_cpu_warning", "cpu_has_bf16", "cpu_model", "load_average", "load_average_text", "machine_description", "memory_gb", "object_store_use"]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cpu_has_bf16(cpuinfo: str | None = None) -> bool | None:
    """Whether this CPU has bfloat16 arithmetic (x86 AVX512-BF16 or AMX-BF16, Arm BF16);
    None when /proc/cpuinfo cannot say. ``cpuinfo``: its text (tests), else read here."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags = set(value.split())
            return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})
    return None


def bf16_cpu_warning(precision: str, actor_gpus: float, cpuinfo: str | None = None) -> str | None:
    """One line for stderr when ``--precision bf16`` is about to run on CPU model actors of a
    CPU without bf16 units: autocast then emulates it, several times slower than fp32
    (bench/RESULTS.md, "bf16 autocast vs fp32").
    The driver's CPU stands for the actors' (the same on a local Ray; one image on a cluster)."""
    if precision != "bf16" or actor_gpus > 0 or cpu_has_bf16(cpuinfo) is not False:
        return None
    return ("warning: --precision bf16 on a CPU without bf16 units (no AVX512-BF16/AMX) runs 3-5x slower than fp32; "
            "drop the flag (fp32 is the reference) or run on GPUs")


def memory_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError):
        pass
    return None


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages: a busy machine explains a slow number."""
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


def load_average_text() -> str:
    values = load_average()
    return " ".join(f"{v:g}" for v in values) if values else "n/a"


def machine_description(actors: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    import ray

    versions = {"python": platform.python_version(), "torch": torch.__version__, "ray": ray.__version__, "numpy": np.__version__}
    try:
        import decord  # optional here: a description must not fail for want of the decoder

        versions["decord"] = decord.__version__
    except ImportError:  # pragma: no cover
        versions["decord"] = None
    driver_gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        affinity = os.cpu_count()
    desc: dict[str, Any] = {
        "host": platform.node(),
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": affinity,
        "memory_gb": memory_gb(),
        "gpus": driver_gpus,
        "actor_accelerators": sorted({a.get("accelerator", "cpu") for a in actors}),
        "versions": versions,
        "load_average": load_average(),
    }
    if ray.is_initialized():
        total = ray.cluster_resources()
        desc["ray_cluster"] = {
            "nodes": sum(1 for node in ray.nodes() if node.get("Alive")),
            "cpus": total.get("CPU", 0.0),
            "gpus": total.get("GPU", 0.0),
            "object_store_gb": round(total.get("object_store_memory", 0.0) / 2**30, 2),
        }
    return desc


def object_store_use() -> tuple[float | None, float | None]:
    """(bytes used, bytes available) in the object store, summed over nodes; (None, None) when
    this Ray does not expose it (the raylets' store stats are not public API)."""
    try:
        import ray
        from ray._private.internal_api import get_memory_info_reply, get_state_from_address

        reply = get_memory_info_reply(get_state_from_address(ray.get_runtime_context().gcs_address))
        stats = reply.store_stats
        used = float(stats.object_store_bytes_used)
        return used, used + float(stats.object_store_bytes_avail)
    except Exception:
        return None, None
