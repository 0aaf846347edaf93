"""What machine a number was measured on, and how much memory this process uses.

`describe_machine()` returns a JSON-serialisable dict; every field that cannot be read is None (or an
empty list), never an exception, so it works in containers, on boards without /proc fields and on
non-Linux systems:

    cpu_model            "Intel(R) Xeon(R) ...", "Cortex-A72", or None
    board                the device-tree model ("Raspberry Pi 4 Model B Rev 1.4") or None
    architecture         platform.machine(): "x86_64", "aarch64", ...
    logical_cores        os.cpu_count()
    usable_cores         CPUs this process may run on (sched_getaffinity), else logical_cores
    physical_cores       distinct (package, core) pairs, or None when the topology is not readable
    cpu_flags            the ML-relevant ISA extensions present, from the list below, sorted
    memory_total_bytes   physical memory
    os, os_release       platform.system(), the distribution's PRETTY_NAME if known
    kernel               platform.release()
    python, python_implementation
    libraries            {"numpy": "2.1.0", "onnxruntime": ..., "edgefleet": ...}; not installed -> None
"""

from __future__ import annotations

import os
import platform
import re
from importlib import metadata
from pathlib import Path

# ISA extensions that decide which kernels an ML runtime can use (x86 first, then Arm).
ML_FLAGS = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
    "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8",
    "neon", "asimd", "asimdhp", "asimddp", "fphp", "sve", "sve2", "i8mm", "svei8mm", "bf16", "svebf16",
)  # fmt: skip
LIBRARIES = ("numpy", "onnxruntime", "edgefleet")

PROC = Path("/proc")
SYS_CPU = Path("/sys/devices/system/cpu")


def describe_machine() -> dict:
    cpuinfo = _cpuinfo_blocks(_read(PROC / "cpuinfo"))
    return {
        "cpu_model": _cpu_model(cpuinfo),
        "board": _board(cpuinfo),
        "architecture": platform.machine() or None,
        "logical_cores": os.cpu_count(),
        "usable_cores": _usable_cores(),
        "physical_cores": _physical_cores(cpuinfo),
        "cpu_flags": _cpu_flags(cpuinfo),
        "memory_total_bytes": _memory_total(),
        "os": platform.system() or None,
        "os_release": _os_release(),
        "kernel": platform.release() or None,
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "libraries": {name: _version(name) for name in LIBRARIES},
    }


def peak_rss_bytes() -> int | None:
    """The process's peak resident set size (VmHWM), or getrusage's ru_maxrss; None if neither exists.

    Linux folds per-thread RSS counters into VmHWM lazily, so VmHWM can read a few KiB below a VmRSS
    taken earlier; the peak is at least the current size, whatever the kernel has folded in so far."""
    peak = _status_kib("VmHWM")
    if peak is not None:
        return max(peak, current_rss_bytes() or 0)
    try:
        import resource
    except ImportError:  # Windows
        return None
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(maxrss) if platform.system() == "Darwin" else int(maxrss) * 1024  # bytes on macOS, KiB else


def current_rss_bytes() -> int | None:
    """The process's resident set size now (VmRSS, or /proc/self/statm); None where neither exists."""
    rss = _status_kib("VmRSS")
    if rss is not None:
        return rss
    fields = _read(PROC / "self" / "statm").split()
    try:
        return int(fields[1]) * os.sysconf("SC_PAGE_SIZE")
    except (IndexError, ValueError, OSError, AttributeError):
        return None


# readers: each returns None (or empty) on anything unexpected ---------------------------------------------
def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _cpuinfo_blocks(text: str) -> list[dict[str, str]]:
    """/proc/cpuinfo as one dict per blank-line separated block (per CPU, plus Arm's trailing block)."""
    blocks = []
    for chunk in re.split(r"\n\s*\n", text):
        fields = {}
        for line in chunk.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields[key.strip().lower()] = value.strip()
        if fields:
            blocks.append(fields)
    return blocks


def _first(blocks: list[dict[str, str]], *keys: str) -> str | None:
    for key in keys:
        for block in blocks:
            if block.get(key):
                return block[key]
    return None


def _cpu_model(blocks: list[dict[str, str]]) -> str | None:
    # x86 and newer Arm kernels: "model name"; MIPS: "cpu model"; old 32-bit Arm: "Processor" (a name,
    # not the index x86 puts there); arm64 often names nothing, so the part number is decoded.
    model = _first(blocks, "model name", "cpu model")
    processor = _first(blocks, "processor")
    if model is None and processor and not processor.isdigit():
        model = processor
    return model or _arm_part(blocks) or _first(blocks, "hardware") or platform.processor() or None


# Arm Ltd (implementer 0x41) part numbers of cores found on edge boards and Arm servers.
ARM_PARTS = {
    "0xd03": "Cortex-A53", "0xd04": "Cortex-A35", "0xd05": "Cortex-A55", "0xd07": "Cortex-A57",
    "0xd08": "Cortex-A72", "0xd09": "Cortex-A73", "0xd0a": "Cortex-A75", "0xd0b": "Cortex-A76",
    "0xd0d": "Cortex-A77", "0xd41": "Cortex-A78", "0xd44": "Cortex-X1", "0xd46": "Cortex-A510",
    "0xd47": "Cortex-A710", "0xd4b": "Cortex-A78C", "0xd0c": "Neoverse-N1", "0xd40": "Neoverse-V1",
    "0xd49": "Neoverse-N2", "0xd4f": "Neoverse-V2",
}  # fmt: skip


def _arm_part(blocks: list[dict[str, str]]) -> str | None:
    if (_first(blocks, "cpu implementer") or "").lower() != "0x41":
        return None
    parts = sorted({ARM_PARTS.get(b.get("cpu part", "").lower(), "") for b in blocks} - {""})
    return " + ".join(parts) or None  # big.LITTLE boards list both kinds


def _board(blocks: list[dict[str, str]]) -> str | None:
    tree = _read(Path("/proc/device-tree/model")).strip("\x00\n ")
    if tree:
        return tree
    model = _first(blocks, "model")  # a Raspberry Pi names itself here; x86 puts a number
    return model if model and not model.isdigit() else None


def _cpu_flags(blocks: list[dict[str, str]]) -> list[str]:
    present = set((_first(blocks, "flags", "features") or "").split())
    return sorted(flag for flag in ML_FLAGS if flag in present)


def _usable_cores() -> int | None:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count()


def _physical_cores(blocks: list[dict[str, str]]) -> int | None:
    cores = set()
    for topology in SYS_CPU.glob("cpu[0-9]*/topology"):
        package, core = _read(topology / "physical_package_id").strip(), _read(topology / "core_id").strip()
        if package and core:
            cores.add((package, core))
    if cores:
        return len(cores)
    pairs = {(b.get("physical id"), b.get("core id")) for b in blocks if "core id" in b}
    return len(pairs) or None


def _memory_total() -> int | None:
    match = re.search(r"^MemTotal:\s+(\d+)\s*kB", _read(PROC / "meminfo"), re.MULTILINE)
    if match:
        return int(match.group(1)) * 1024
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _os_release() -> str | None:
    for path in (Path("/etc/os-release"), Path("/usr/lib/os-release")):
        match = re.search(r'^PRETTY_NAME="?([^"\n]*)"?', _read(path), re.MULTILINE)
        if match:
            return match.group(1)
    return platform.platform() or None


def _status_kib(field: str) -> int | None:
    match = re.search(rf"^{field}:\s+(\d+)\s*kB", _read(PROC / "self" / "status"), re.MULTILINE)
    return int(match.group(1)) * 1024 if match else None


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
