"""The workflow's steps as typed values: one frozen dataclass per kind of step.

In: nothing (pure data); codec.py reads them from the plan's JSON and writes them back. Out: the
step classes the runtime's interpreter dispatches on by type. A new kind of step is added here
once (with its `OP` and fields), in the plan schema (tests/test_plan_types.py checks that both
say the same), in the compiler's workflow pass and in the interpreter.

Expressions (`Expr`) stay plan JSON: `{"agg": "mean", ...}`, evaluated by plan/evaluate.py in the
driver and by the runtime's column evaluator in shards. Types stay plan JSON too (`{"kind": "int"}`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .codec import key, optional

Expr = dict  # a plan expression (see evaluate.py)
PlanType = dict  # a plan type: {"kind": "int", "min": 0, "max": 100}

_STEP = dict(frozen=True, slots=True, kw_only=True)


@dataclass(frozen=True, slots=True)
class Span:
    """Where a step (or declaration) was written: file, 1-based lines and columns."""

    file: str
    line: int
    column: int
    end_line: int
    end_column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(**_STEP)
class Step:
    OP: ClassVar[str] = ""
    id: str
    span: Span

    @staticmethod
    def decode(data: dict) -> type:
        """The class of a step's JSON, by its `op`."""
        return STEP_KINDS[data["op"]]


# ---------------------------------------------------------------- control flow (the driver)
@dataclass(**_STEP)
class Repeat(Step):
    OP: ClassVar[str] = "repeat"
    count: Expr
    var: str | None
    body: tuple[Step, ...]


@dataclass(**_STEP)
class For(Step):
    OP: ClassVar[str] = "for"
    var: str
    iterable: Expr
    body: tuple[Step, ...]


@dataclass(frozen=True, slots=True)
class Branch:
    cond: Expr
    body: tuple[Step, ...]


@dataclass(**_STEP)
class If(Step):
    OP: ClassVar[str] = "if"
    branches: tuple[Branch, ...]
    orelse: tuple[Step, ...] = key("else")


@dataclass(**_STEP)
class Stop(Step):
    """`stop when` (scope "run") or `break when` (scope "loop")."""

    OP: ClassVar[str] = "stop"
    scope: str
    cond: Expr


@dataclass(**_STEP)
class Let(Step):
    OP: ClassVar[str] = "let"
    name: str
    value: Expr


@dataclass(**_STEP)
class SetVar(Step):
    OP: ClassVar[str] = "set_var"
    name: str
    operator: str
    value: Expr


@dataclass(**_STEP)
class SetEnv(Step):
    OP: ClassVar[str] = "set_env"
    env: str
    field: str
    operator: str
    value: Expr


@dataclass(frozen=True, slots=True)
class RecordItem:
    name: str
    value: Expr
    type: PlanType


@dataclass(**_STEP)
class Record(Step):
    """A row of a table (`table`, or `metrics` when unnamed); with `by`, one row per value of the keys."""

    OP: ClassVar[str] = "record"
    items: tuple[RecordItem, ...]
    table: str | None = optional()
    by: tuple[RecordItem, ...] = optional(())


@dataclass(**_STEP)
class Regroup(Step):
    """Draw a random group set's groups anew (seeded by the step and the iteration)."""

    OP: ClassVar[str] = "regroup"
    group: str


@dataclass(**_STEP)
class Snapshot(Step):
    """Write every agent of a population: id, kind, state and answers, at this point of the run."""

    OP: ClassVar[str] = "snapshot"
    population: str


# ---------------------------------------------------------------- agent steps (every shard)
@dataclass(frozen=True, slots=True)
class Output:
    name: str
    type: PlanType


@dataclass(**_STEP)
class Ask(Step):
    OP: ClassVar[str] = "ask"
    population: str
    where: Expr | None
    model: str | None
    prompt: Expr
    output: Output
    per_agent_prompt: bool
    in_order: bool = optional(False)  # one agent after another, each seeing the answers before it
    verbatim: bool = optional(False)  # the prompt as written: no reply instruction appended


@dataclass(frozen=True, slots=True)
class TellTarget:
    """Who hears a tell: a population, a group set, a network's neighbours, or one agent."""

    kind: str  # population | group | neighbors | agent
    population: str | None = None
    group: str | None = optional()
    env: str | None = optional()
    index: Expr | None = optional()


@dataclass(**_STEP)
class Tell(Step):
    OP: ClassVar[str] = "tell"
    target: TellTarget
    sender: str | None
    where: Expr | None
    message: Expr


@dataclass(**_STEP)
class Broadcast(Step):
    OP: ClassVar[str] = "broadcast"
    populations: tuple[str, ...]
    message: Expr


@dataclass(**_STEP)
class SetState(Step):
    OP: ClassVar[str] = "set_state"
    population: str
    field: str
    operator: str
    value: Expr
    where: Expr | None


@dataclass(**_STEP)
class Call(Step):
    """An environment method as a statement (`feed.post(...)`, `world.move(...)`, a Python kind's action)."""

    OP: ClassVar[str] = "call"
    env: str
    method: str
    args: tuple[Expr, ...]
    population: str | None


STEP_KINDS: dict[str, type] = {cls.OP: cls for cls in (Repeat, For, If, Stop, Let, SetVar, SetEnv, Record, Ask, Tell,
                                                       Broadcast, SetState, Call, Regroup, Snapshot)}
AGENT_STEPS = (Ask, SetState, Tell, Broadcast)  # steps that change agents: a checkpoint comes before each


def children(step: Step) -> tuple[tuple[Step, ...], ...]:
    """The blocks nested in a step: a loop's body, a branch's bodies and the else."""
    if isinstance(step, (Repeat, For)):
        return (step.body,)
    if isinstance(step, If):
        return tuple(b.body for b in step.branches) + (step.orelse,)
    return ()


def walk(steps):
    """Every step, depth first, loop bodies and branches included."""
    for step in steps:
        yield step
        for block in children(step):
            yield from walk(block)
