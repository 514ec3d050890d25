"""How a run ends early: a `stop when`, a `break when`, or a failure that names its scenario line.

In: a message and the typed step it happened at. Out: exceptions that survive pickling (a shard's
error crosses Ray workers) and whose text starts with `file:line:col: ` of the step.
"""
from __future__ import annotations


class StopRun(Exception):
    pass


class BreakLoop(Exception):
    pass


class BudgetStop(Exception):
    """The run's budget cannot cover another call: the run stops before the step it was in."""

    def __init__(self, step_id: str, label: str):
        super().__init__(step_id + label)
        self.step_id, self.label = step_id, label

    def __reduce__(self):
        return (BudgetStop, (self.step_id, self.label))


class RunFailed(Exception):
    """The run cannot go on; carries the step's scenario span for the message."""

    def __init__(self, message: str, step=None, errors: list | None = None):
        span = getattr(step, "span", None)
        where = f"{span.file}:{span.line}:{span.column}: " if span else ""
        super().__init__(where + message)
        self.message = message
        self.step = step
        self.errors = errors or []  # the first distinct failed answers, when too many failed

    def __reduce__(self):
        return (RunFailed, (self.message, self.step, self.errors))
