"""The plan as the monitor shows it, and the scenario lines behind its steps.

In: plan.json's dict (its `workflow` steps, each with an `id`, `op` and `span`) and a run
directory (scenario paths are tried as written, then beside the run directory). Out: one row per
step in document order (`plan_steps`: depth, parent loops, label, fixed loop count), numbered
scenario excerpts (`Sources.excerpt`) and `file:line:col` strings (`where`). No NiceGUI here.
"""
from __future__ import annotations

import os
import re

# ---------------------------------------------------------------- the plan as rows

def plan_steps(plan: dict) -> list[dict]:
    """The workflow in document order: one row per step with its depth, parent loops and label."""
    rows: list[dict] = []

    def walk(steps, depth, ancestors):
        for step in steps:
            row = {"id": step["id"], "op": step["op"], "depth": depth, "ancestors": ancestors,
                   "label": step_label(step), "span": step.get("span"), "count": _loop_count(step),
                   "index": len(rows)}
            rows.append(row)
            inner = ancestors + (step["id"],)
            if isinstance(step.get("body"), list):
                walk(step["body"], depth + 1, inner)
            for branch in step.get("branches", []):
                walk(branch["body"], depth + 1, inner)
            if isinstance(step.get("else"), list):
                walk(step["else"], depth + 1, inner)

    walk(plan.get("workflow", []), 0, ())
    return rows


def step_label(step: dict) -> str:
    op = step["op"]
    if op == "ask":
        return f"ask {step['population']} -> {step['output']['name']}"
    if op == "repeat":
        count = _loop_count(step)
        return f"repeat {count if count is not None else '…'}" + (f" as {step['var']}" if step.get("var") else "")
    if op == "for":
        return f"for {step['var']} in …"
    if op == "record":
        return "record " + ", ".join(item["name"] for item in step.get("items", []))
    if op == "let":
        return f"let {step['name']}"
    if op == "set_var":
        return f"{step['name']} {step['operator']} …"
    if op == "set_env":
        return f"{step['env']}.{step['field']} {step['operator']} …"
    if op == "set_state":
        return f"update {step.get('population', '')}".strip()
    if op == "tell":
        return f"tell {step['target'].get('population', '')}"
    if op == "broadcast":
        return "broadcast to " + ", ".join(step.get("populations", []))
    if op == "stop":
        return "stop when …" if step.get("scope") == "run" else "break when …"
    return op


def _loop_count(step: dict) -> int | None:
    """A loop's number of iterations when the plan fixes it (a literal count or list), else None."""
    if step["op"] == "repeat" and isinstance(step.get("count"), dict) and "lit" in step["count"]:
        return int(step["count"]["lit"])
    if step["op"] == "for" and isinstance(step.get("iterable"), dict) and isinstance(step["iterable"].get("lit"), list):
        return len(step["iterable"]["lit"])
    return None


def _label_parts(label: str) -> list[str]:
    """`[t=1, round=2]` -> ["t=1", "round=2"]."""
    inner = label.strip()[1:-1] if label.startswith("[") else ""
    return [part.strip() for part in inner.split(",") if part.strip()]


# ---------------------------------------------------------------- scenario sources

class Sources:
    """Scenario files by path, read once; a file that moved since the run shows nothing, not an error."""

    def __init__(self, run_dir: str):
        self.run_dir = run_dir
        self._lines: dict[str, list[str] | None] = {}

    def lines(self, path: str | None) -> list[str] | None:
        if not path:
            return None
        if path not in self._lines:
            text = None
            for candidate in (path, os.path.join(os.path.dirname(os.path.abspath(self.run_dir)), path)):
                try:
                    with open(candidate, encoding="utf-8", errors="replace") as f:
                        text = f.read().splitlines()
                    break
                except OSError:
                    continue
            self._lines[path] = text
        return self._lines[path]

    def excerpt(self, span: dict | None, context: int = 0) -> str:
        """Lines `span.line`..`span.end_line` (plus `context` around), numbered like a diagnostic."""
        if not span:
            return ""
        lines = self.lines(span.get("file"))
        if not lines:
            return ""
        first = max(1, span["line"] - context)
        last = min(len(lines), span.get("end_line", span["line"]) + context)
        width = len(str(last))
        return "\n".join(f"{n:>{width}} | {lines[n - 1]}" for n in range(first, last + 1))


def where(span: dict | None) -> str:
    return f"{span['file']}:{span['line']}:{span.get('column', 1)}" if span else ""


_WHERE = re.compile(r"^(?P<file>[^\s:][^:]*):(?P<line>\d+):(?P<column>\d+): ")


def _iteration_number(part: str) -> int:
    try:
        return int(part.split("=", 1)[1])
    except (IndexError, ValueError):
        return 0
