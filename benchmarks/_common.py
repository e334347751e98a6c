"""Shared helpers of the benchmark scripts: the machine, interleaved timing, summaries.

Every benchmark times a baseline and ours in the same process run, interleaved
(A B A B ...), so that load from other processes on a shared machine falls on
both alike. A summary gives the median of the repetitions with their min and
max; a ratio is the median of the per-round ratios (each round times the
baseline and the candidate back to back), which is more robust to slow drifts
in load than a ratio of medians. Both are reported.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def quiet_tensorflow() -> None:
    """Keeps TensorFlow's C++ start-up log out of the benchmark output."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def machine() -> dict[str, Any]:
    """CPU model, core count, memory and the current load average."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memory_gib = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    memory_gib = round(int(line.split()[1]) / 2**20, 1)
                    break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": memory_gib,
        "python": platform.python_version(),
        "load": load(),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    }


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def versions() -> dict[str, str]:
    """Versions of the numerical libraries already imported (nothing is imported here)."""
    found = {}
    for name in ("tensorflow", "keras", "jax", "numpy", "h5py"):
        module = sys.modules.get(name)
        if module is not None:
            found[name] = getattr(module, "__version__", "?")
    return found


def summary(samples: Sequence[float]) -> dict[str, float]:
    return {
        "median": statistics.median(samples),
        "min": min(samples),
        "max": max(samples),
        "n": len(samples),
    }


def interleaved(
    runs: dict[str, Callable[[], None]], rounds: int,
    prepare: dict[str, Callable[[], None]] | None = None,
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Calls each run once per round, `rounds` times; the order rotates by one
    each round, so that no run always follows the same other run. A run's
    `prepare` callable, if given, is called just before it, outside the timing
    (e.g. to restore the state the run changes).

    Returns the wall seconds and the process CPU seconds (all threads) of each
    call. CPU time counts the work done, not the waiting, so it is less
    disturbed by other processes on a shared machine than wall time.
    """
    wall: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            if prepare and name in prepare:
                prepare[name]()
            start, start_cpu = time.perf_counter(), time.process_time()
            runs[name]()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return wall, cpu


def paired_ratio(candidate: Sequence[float], baseline: Sequence[float]) -> dict[str, float]:
    """Median (min, max) of candidate/baseline over rounds, plus the ratio of medians."""
    ratios = [c / b for c, b in zip(candidate, baseline)]
    return {
        "median": statistics.median(ratios),
        "min": min(ratios),
        "max": max(ratios),
        "of_medians": statistics.median(candidate) / statistics.median(baseline),
        "of_mins": min(candidate) / min(baseline),
    }


def run_process(argv: Sequence[str], *, env: dict[str, str] | None = None, cwd: Path | None = None) -> float:
    """Runs a whole process to completion and returns its wall time in seconds."""
    start = time.perf_counter()
    result = subprocess.run(
        list(argv), cwd=cwd or ROOT, env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} exited with {result.returncode}:\n"
            f"{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
        )
    return elapsed


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f}"


def fmt_s(seconds: float) -> str:
    return f"{seconds:.2f}"


def print_machine(info: dict[str, Any]) -> None:
    print(
        f"machine: {info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB, "
        f"Python {info['python']}; load average (1, 5, 15 min): {info['load']}"
    )


def write_json(path: str | None, document: dict[str, Any]) -> None:
    if path:
        Path(path).write_text(json.dumps(document, indent=2))


def python() -> str:
    return sys.executable
