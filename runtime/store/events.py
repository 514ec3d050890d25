"""Reading a run's events.jsonl: all at once (resume, status) or as it grows (the monitor).

In: the path of events.jsonl, written line by line by the driver (rundir.RunDir.event). Out: event
dicts; a torn last line (a crash mid-write) and a damaged line (not a JSON object with a `type`)
are skipped, not fatal; events written by a newer Populace raise NewerFormatError (rundir),
naming the file and both versions. What the events mean is folded in fold.py.
"""
from __future__ import annotations

import json

from .fold import RunState
from .rundir import check_format

MAX_READ = 4 << 20  # bytes folded per EventTail.read: a huge backlog is caught up over a few polls


def read_events(path: str) -> list[dict]:
    out = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.endswith("\n"):
                break
            try:
                event = json.loads(line)
            except ValueError:  # JSONDecodeError; also numbers too large to read back
                continue
            if not isinstance(event, dict) or not isinstance(event.get("type"), str):
                continue
            if event["type"] == "run_started":
                check_format(event.get("format"), path, event.get("populace_version"))
            out.append(event)
    return out


def fold_events(path: str) -> RunState:
    """The run state of a run directory's events.jsonl."""
    return RunState.from_events(read_events(path))


class EventTail:
    """Reads the lines appended to events.jsonl since the last call; a half-written line waits."""

    def __init__(self, path: str):
        self.path = path
        self.offset = 0
        self.pending = b""

    def read(self) -> list[dict]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read(MAX_READ)
        except FileNotFoundError:
            return []
        self.offset += len(chunk)
        lines = (self.pending + chunk).split(b"\n")
        self.pending = lines.pop()
        events = []
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and isinstance(event.get("type"), str):  # else damaged: skipped
                events.append(event)
        return events


__all__ = ["EventTail", "RunState", "fold_events", "read_events"]
