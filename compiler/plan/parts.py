"""The plan's declarations as typed values: models and their limits, personas, agents,
populations, groups, environments, the scenario, and the Plan that holds them with its steps.

In: nothing (pure data); codec.py reads and writes them. Out: what the runtime reads instead of
JSON dicts. `Limits` holds every default of a model's limits, once.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .codec import optional
from .steps import Expr, PlanType, Span, Step, walk

# ---------------------------------------------------------------- models
# Requests in flight across the cluster when a model does not say: remote APIs get a polite
# number, offline models (mock, python) are bounded only by memory.
DEFAULT_IN_FLIGHT = {"anthropic": 64, "openai": 64}
DEFAULT_IN_FLIGHT_OFFLINE = 1024
OFFLINE_PROVIDERS = ("mock", "python")


def default_in_flight(provider: str) -> int:
    return DEFAULT_IN_FLIGHT.get(provider, DEFAULT_IN_FLIGHT_OFFLINE)


@dataclass(frozen=True, slots=True)
class Limits:
    """Cluster-wide limits of one model: requests in flight, requests and tokens per minute."""

    in_flight: int
    per_minute: int | None = optional()
    tokens_per_minute: int | None = optional()


@dataclass(frozen=True, slots=True)
class Model:
    name: str
    provider: str
    settings: dict
    limits: Limits
    price: dict | None
    price_known: bool
    span: Span

    @property
    def offline(self) -> bool:
        return self.provider in OFFLINE_PROVIDERS


# ---------------------------------------------------------------- personas and agents
@dataclass(frozen=True, slots=True)
class Persona:
    name: str
    fields: tuple[dict, ...]  # in evaluation order: {"name", "kind": sample|derive|by|write|table, ...}
    span: Span


@dataclass(frozen=True, slots=True)
class StateField:
    """A state field: its type, its starting value (a constant, or an expression of the agent's persona
    and params), and what an update outside the declared range does (`fail` the run, or `clip`)."""

    type: PlanType
    default: object
    default_expr: Expr | None = optional()
    out_of_range: str | None = optional()


@dataclass(frozen=True, slots=True)
class Agent:
    name: str
    persona: str | None
    model: str | None
    memory: int
    system: Expr | None
    state: dict[str, StateField]
    span: Span


@dataclass(frozen=True, slots=True)
class MixturePart:
    """One agent kind of a population: agents start..start+count-1 (contiguous ids)."""

    agent: str
    share: float
    start: int
    count: int


@dataclass(frozen=True, slots=True)
class Population:
    name: str
    size: int
    persona: str | None
    mixture: tuple[MixturePart, ...]
    state: dict[str, StateField]
    outputs: dict[str, PlanType]
    max_agents_per_shard: int
    span: Span


@dataclass(frozen=True, slots=True)
class Group:
    """Random groups of `size`, or one group per value of persona field `by_field`."""

    name: str
    population: str
    span: Span
    size: int | None = optional()
    by_field: str | None = optional()


# ---------------------------------------------------------------- environments
@dataclass(frozen=True, slots=True)
class EnvField:
    type: PlanType
    init: object


@dataclass(frozen=True, slots=True)
class Extension:
    """A kind written in Python: its name, `module:Class` and the signature the compiler checked."""

    kind: str
    signature: str
    target: str = field(metadata={"key": "class"})


@dataclass(frozen=True, slots=True)
class Environment:
    name: str
    kind: str  # board | chatroom | network | grid | python
    fields: dict[str, EnvField]
    params: dict
    span: Span
    population: str | None = optional()
    extension: Extension | None = optional()


# ---------------------------------------------------------------- the scenario and the plan
@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    source: str
    seed: int
    settings: dict  # checkpoint_every, description, extensions
    params: dict
    sources: dict[str, str]  # file -> sha256 of its text
    span: Span


@dataclass(frozen=True, slots=True)
class Plan:
    plan_version: str
    plan_hash: str
    scenario: Scenario
    models: dict[str, Model]
    personas: dict[str, Persona]
    agents: dict[str, Agent]
    populations: dict[str, Population]
    groups: dict[str, Group]
    environments: dict[str, Environment]
    workflow: tuple[Step, ...]

    # Short names for what the runtime reads most.
    @property
    def seed(self) -> int:
        return self.scenario.seed

    @property
    def settings(self) -> dict:
        return self.scenario.settings

    @property
    def params(self) -> dict:
        return self.scenario.params

    def steps(self):
        """Every step, depth first (loop bodies and branches included)."""
        return walk(self.workflow)
