"""Read a process tree's memory and CPU from /proc (Linux): shared by the benchmarks.

In: a root pid. Out: the pids below it, a process's proportional set size in bytes, and its CPU
seconds (user + system).
"""
from __future__ import annotations

import os

TICKS = os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def pss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime
    except (OSError, ValueError, IndexError):
        return 0.0


def run_with_peak_memory(cmd: list[str], what: str) -> tuple[float, int]:
    """Run a command to its end; return (wall seconds, the peak PSS sum of its process tree).
    Exits with the command's stderr if it fails."""
    import subprocess
    import sys
    import threading
    import time

    peak = 0
    began = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=dict(os.environ, RAY_AUTH_MODE="disabled"))
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, sum(pss_bytes(p) for p in descendants(proc.pid)))
            time.sleep(0.25)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, err = proc.communicate()
    wall = time.perf_counter() - began
    done.set()
    sampler.join()
    if proc.returncode != 0:
        sys.exit(f"run failed for {what}: {err.decode()[-2000:]}")
    return wall, peak


def scenario_with(path, old: str, new: str, prefix: str):
    """A temporary copy of a scenario with one line swapped (e.g. the agent's model)."""
    import tempfile
    from pathlib import Path

    text = Path(path).read_text()
    if old not in text:
        raise SystemExit(f"{Path(path).name} no longer contains {old!r}; update the benchmark")
    out = Path(tempfile.mkdtemp(prefix=prefix)) / Path(path).name
    out.write_text(text.replace(old, new))
    return out
