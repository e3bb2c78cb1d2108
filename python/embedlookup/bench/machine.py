"""The machine a benchmark ran on: its description and its measured limits."""

from __future__ import annotations

import os
import platform

__all__ = ["describe", "measure_limits"]


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _cpu_model() -> str:
    text = _read("/proc/cpuinfo") or ""
    for line in text.splitlines():
        if line.lower().startswith(("model name", "hardware", "cpu model")):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _caches() -> list[dict]:
    out = []
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        names = sorted(n for n in os.listdir(base) if n.startswith("index"))
    except OSError:
        return out
    for n in names:
        level, typ, size = (_read(f"{base}/{n}/{f}") for f in ("level", "type", "size"))
        shared = _read(f"{base}/{n}/shared_cpu_list")
        if level and size:
            out.append({"level": int(level), "type": typ, "size": size, "shared_cpu_list": shared})
    return out


def _memory_bytes() -> int | None:
    for line in (_read("/proc/meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _versions() -> dict:
    import numpy as np

    from .. import __version__, _core

    v = {
        "embedlookup": __version__,
        "isa": _core.isa(),
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
    try:
        import torch

        v["torch"] = torch.__version__
    except Exception:  # noqa: BLE001 - optional
        pass
    try:
        from importlib.metadata import version

        v["fbgemm_gpu"] = version("fbgemm-gpu-cpu")
    except Exception:  # noqa: BLE001 - optional
        pass
    return v


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages (None where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def busy_note(load: list[float] | None, cores: int | None) -> str | None:
    """A warning when other processes compete for the cores: timings are then
    slower and ratios between subjects move with the load (a 2-thread kernel
    suffers more from a stolen core than a 1-thread one)."""
    if not load or not cores or load[0] <= 0.75 * cores:
        return None
    return (
        f"the machine was busy (load average {load[0]:.1f} on {cores} cores): times are inflated and "
        f"ratios between subjects shift with the load; rerun on a quiet machine to compare runs"
    )


def describe() -> dict:
    """CPU model, logical cores (and those this process may use), caches, memory, versions."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "cpu": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "caches": _caches(),
        "memory_bytes": _memory_bytes(),
        "load_average": load_average(),
        "os": f"{platform.system()} {platform.release()}",
        "versions": _versions(),
    }


def summary(machine: dict) -> str:
    caches = ", ".join(
        f"L{c['level']}{'' if c['type'] == 'Unified' else c['type'][0].lower()} {c['size']}"
        for c in machine.get("caches", [])
    )
    mem = machine.get("memory_bytes")
    mem = f", {mem / 2**30:.1f} GiB RAM" if mem else ""
    v = machine.get("versions", {})
    load = machine.get("load_average")
    mem += f", load average {load[0]:.2f} at start" if load else ""
    return (
        f"{machine['cpu']}, {machine['usable_cores']}/{machine['logical_cores']} cores, {caches}{mem}; "
        f"isa {v.get('isa')}, torch {v.get('torch', '-')}, fbgemm {v.get('fbgemm_gpu', '-')}"
    )


def measure_limits(
    row_bytes: int,
    lookups: int,
    threads: int,
    table_bytes: int,
    copy_bytes: int,
    repeats: int = 5,
    update: bool = False,
) -> dict:
    """Bytes/s of a streaming copy (STREAM convention: read + write counted)
    and of a random prefetched gather of ``row_bytes`` rows from a
    ``table_bytes`` table, measured now in native code. With ``update``, also
    a random read-modify-write of that many distinct rows (read + write
    counted): the ceiling of a training step's backward, which writes back
    every row it reads."""
    from .. import _probes

    extra = {}
    if update:
        extra["update_bytes_per_s"] = _probes.update_bandwidth(
            int(table_bytes), int(row_bytes), int(lookups), repeats, threads
        )
    return extra | {
        "copy_bytes_per_s": _probes.copy_bandwidth(int(copy_bytes), repeats, threads),
        "gather_bytes_per_s": _probes.gather_bandwidth(
            int(table_bytes), int(row_bytes), int(lookups), repeats, threads
        ),
        "table_bytes": int(table_bytes),
        "copy_bytes": int(copy_bytes),
        "row_bytes": int(row_bytes),
        "threads": threads,
    }


def torch_huge_pages() -> str | None:
    """Asks torch's CPU allocator for transparent huge pages on its large
    tensors (``THP_MEM_ALLOC_ENABLE=1``, read once, when torch first
    allocates), as NumPy and embedlookup ask for theirs. Without it FBGEMM's
    weights and torch's optimizer state were the only tables on 4 KiB pages,
    which cost them TLB misses that moved with the host's state (FBGEMM's
    Zipf ratio by up to 25% between runs). A value the user set is kept.
    Returns a line for the report."""
    import os
    import sys

    mode = _thp_mode()
    if mode == "never":
        return None
    if "torch" in sys.modules and "THP_MEM_ALLOC_ENABLE" not in os.environ:
        return (
            "memory: torch was imported before the run, so its tensors stay on 4 KiB pages "
            "(set THP_MEM_ALLOC_ENABLE=1 before importing torch for like-for-like pages)"
        )
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    value = os.environ["THP_MEM_ALLOC_ENABLE"]
    if value != "1":
        return f"memory: THP_MEM_ALLOC_ENABLE={value} kept: torch's tensors on 4 KiB pages"
    return (
        f"memory: every subject's large arrays on transparent huge pages "
        f"(THP {mode}; torch: THP_MEM_ALLOC_ENABLE=1)"
    )


def _thp_mode() -> str:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            text = f.read()
    except OSError:
        return "unknown"
    i, j = text.find("["), text.find("]")
    return text[i + 1 : j] if 0 <= i < j else "unknown"


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters


def steady_allocator(threshold: int = 64 << 20) -> str | None:
    """Keeps per-call temporaries on glibc's heap instead of fresh mmaps.

    Peers such as torch's sparse optimizers and NumPy allocate temporaries of
    ~33 MB per call; above glibc's mmap threshold (at most 32 MiB by default)
    every call maps, faults in and zeroes fresh pages, whose cost follows
    the host's memory load and moved those peers' ratios by 20-30% between
    runs. Raising the threshold (and the trim threshold) makes every subject
    reuse its memory from the second call on, as a long-running training
    process does. Only to 64 MiB: tables and optimizer state (256 MB) still
    get fresh mappings, and so huge pages where their owner asks for them;
    placed in reused heap memory they got whatever pages it was first
    touched with. Returns a line for the report, or None where this is not
    glibc."""
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    if not (mallopt(_M_MMAP_THRESHOLD, int(threshold)) and mallopt(_M_TRIM_THRESHOLD, 2 * int(threshold))):
        return None
    return f"allocator: glibc mmap threshold raised to {threshold >> 20} MiB (temporaries reuse heap memory)"
