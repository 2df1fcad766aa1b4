"""What every speed figure must name: the CPU it was measured on (model, cores), the torch
build, and which native bf16 the CPU has (AMX tiles, AVX-512 BF16, or none)."""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import torch

from spp_det.files import write_atomic


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux; platform's guess elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    """{"cpu", "cores", "torch", "threads", "amx", "avx512_bf16", "native_bf16"}."""
    probe = lambda name: bool(getattr(torch.cpu, name, lambda: False)())  # noqa: E731 (private probes)
    amx, avx512_bf16 = probe("_is_amx_tile_supported"), probe("_is_avx512_bf16_supported")
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "amx": amx, "avx512_bf16": avx512_bf16,
            "native_bf16": "AMX" if amx else ("AVX-512 BF16" if avx512_bf16 else "none")}


def describe(info: dict) -> str:
    """One line for a table's caption."""
    return (f"{info['cpu']}, {info['cores']} cores, {info['threads']} threads, torch {info['torch']}, "
            f"native bf16: {info['native_bf16']}")


def write_report(out: Path, name: str, lines: list[str], record: dict) -> None:
    """Print a benchmark's table and write it as ``out/<name>.md``, with ``record`` (the
    machine added) as ``out/<name>.json``; both atomically."""
    table = "\n".join(lines)
    print(table)
    write_atomic(Path(out) / f"{name}.md", (table + "\n").encode())
    write_atomic(Path(out) / f"{name}.json", json.dumps({"machine": machine_info(), **record}, indent=2).encode())


if __name__ == "__main__":
    print(describe(machine_info()))
