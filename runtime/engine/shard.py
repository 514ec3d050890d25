"""A shard: a contiguous range of one population's agents, held as columns, stepped all at once.

In: the typed plan, the population, and the agent range [start, stop). Out: per step, small
results for the driver: ask summaries with a pyarrow table of every agent's prompt hash, reply,
value and error (asking.py); partial aggregates (sums, counts, ...) instead of rows. The same
class runs in-process (local executor) and inside a Ray actor (ray executor).
"""
from __future__ import annotations

import os
import sys

import numpy as np
import pyarrow as pa

from populace.compiler.plan import Plan
from populace.compiler.plan.evaluate import EvalError
from populace.runtime.columns.aggregates import partial
from populace.runtime.columns.vector import Context, Frame, evaluate, is_vector, truth
from populace.runtime.environments import builtin as environments
from populace.runtime.environments import groups, network
from populace.runtime.models.base import empty_values, make_model
from populace.runtime.personas import sampling as personas
from populace.runtime.store import checkpoints
from populace.runtime.store.tables import arrow_values, from_arrow, plain

from . import asking, by_group, ordered, process, starts
from .ranges import checked_state
from .memory import Memory


class Shard:
    def __init__(self, plan: Plan, population: str, index: int, start: int, stop: int, shards: int = 1,
                 options: dict | None = None):
        self.plan = plan
        self.options = options or {}
        self.population = population
        self.index = index
        self.shards = shards
        self.start, self.stop = start, stop
        self.seed = plan.seed
        pop = plan.populations[population]
        self.ids = np.arange(start, stop, dtype=np.int64)
        self.models: dict = {}
        self.write_usage: dict = {}
        own = [plan.agents[part.agent].persona for part in pop.mixture]
        if len(set(own)) > 1:  # the kinds of this mixture have personas of their own
            self.columns, self.types = personas.sample_kinds(
                [plan.personas.get(p) if p else None for p in own],
                [(part.start, part.start + part.count) for part in pop.mixture], start, stop, self.seed)
        else:
            persona = plan.personas.get(pop.persona) if pop.persona else None
            self.columns = personas.sample(persona, start, stop, self.seed, write=self._write,
                                           known=self.options.get("persona_texts"))
            self.types = personas.column_types(persona)
        self.persona_fields = list(self.columns)
        # Agent kinds: mixture parts are contiguous id ranges.
        self.kinds = []  # (agent name, local slice)
        for part in pop.mixture:
            lo, hi = max(part.start, start), min(part.start + part.count, stop)
            if lo < hi:
                self.kinds.append((part.agent, slice(lo - start, hi - start)))
        self.kind_column = np.empty(len(self.ids), dtype=object)  # `self.kind`, one per agent
        for agent_name, local in self.kinds:
            self.kind_column[local] = agent_name
        self.regroups: dict = {}  # group set -> times drawn anew, as the driver last said (`regroup`)
        for name, st in pop.state.items():
            self.columns[name] = starts.constant_column(self, name, st)
            self.types[name] = st.type
        for name, st in pop.state.items():
            if st.default_expr is not None:  # from the persona: after every column exists
                starts.computed_starts(self, name, st)
        for name, ty in pop.outputs.items():
            self.columns[name] = empty_values(ty, len(self.ids))
            self.types[name] = ty
        self.memory = Memory(max([plan.agents[a].memory for a, _ in self.kinds] or [0]), len(self.ids))
        self._derived: dict = {}  # group keys and adjacency rows: rebuilt from the seed, never saved
        self.restarted_from = None
        self._where = None  # node and host, found on the first info() (a restart is a new process)
        if self.options.get("checkpoints") and process.reconstructed():
            # Ray brought this shard back after its process died: reload the latest checkpoint,
            # which was taken just before the step whose call Ray is about to send again.
            latest = checkpoints.latest_checkpoint(self.options["checkpoints"])
            if latest is not None:
                self.load_checkpoint(latest)
            self.restarted_from = os.path.basename(latest) if latest else "start"
        elif self.options.get("restore"):
            self.load_checkpoint(self.options["restore"])
        # Build the agents' model clients up front: a missing API key or an unloadable policy fails
        # the run at start, and SDK imports do not land inside the first step.
        for agent_name, _ in self.kinds:
            model = plan.agents[agent_name].model
            if model:
                self.model(model)

    def _ctx(self, context: dict) -> Context:
        """A step's context; it also says how often each group set has been drawn anew."""
        self.regroups = context.get("groups") or {}
        return Context(**context)

    def ready(self) -> bool:
        """Answered once the shard is built: start-up errors surface here, before the first step."""
        return True

    def pid(self) -> int:
        return os.getpid()

    def info(self) -> dict:
        """Where this shard runs and what it holds, for the monitor's cluster panel (cheap: no scan).

        `bytes` counts the numpy arrays' own buffers (an object column counts its pointers, not the
        strings they point at); `rss` is the whole process's resident memory, which counts those too.
        """
        if self._where is None:
            self._where = process.where()
        arrays = [*self.columns.values(), *self.memory.arrays(), self.ids]
        return dict(self._where, shard=self.index, agents=len(self.ids), pid=os.getpid(),
                    bytes=int(sum(np.asarray(a).nbytes for a in arrays)), rss=process.rss())

    def load(self) -> dict:
        """Model requests being sent right now, per model: sampled by the driver while an ask runs
        (in a Ray actor through its own concurrency group, so it answers while `ask` is busy)."""
        return {name: model.in_flight_now for name, model in self.models.items() if hasattr(model, "in_flight_now")}

    def take_restart(self):
        """The checkpoint this shard was restarted from (once), or None: the driver makes it an event."""
        restarted, self.restarted_from = self.restarted_from, None
        return restarted

    # ---------------------------------------------------------------- models
    def model(self, name: str):
        if name not in self.models:
            self.models[name] = make_model(self.plan.models[name], self.index, self.shards, self.options,
                                           holder=(self.population, self.index))
        return self.models[name]

    def close(self) -> None:
        """The run is over: models close their connections (a Ray actor is killed instead)."""
        [model.close() for model in self.models.values() if hasattr(model, "close")]

    def _write(self, model_name: str, prompts: list[str]) -> list[str]:
        return write_texts(self.model(model_name), model_name, prompts, self.seed, self.write_usage)

    def take_write_usage(self) -> dict:
        """Calls and tokens spent writing persona texts (once): the driver adds them to the run's totals."""
        usage, self.write_usage = self.write_usage, {}
        return usage

    # ---------------------------------------------------------------- groups and neighbours
    def frame(self) -> Frame:
        return Frame(columns=self.columns, ids=self.ids, types=self.types, world=self, kinds=self.kind_column)

    def group_keys(self, name: str) -> np.ndarray:
        """This shard's agents' group keys in group set `name` (derived from the seed and the number of
        `regroup`s so far: never saved)."""
        version = int(self.regroups.get(name, 0))
        key = ("group", name, version)
        cached = self._derived.get(key)
        if cached is None:
            for old in [k for k in self._derived if k[:2] == ("group", name)]:
                del self._derived[old]
            group = self.plan.groups[name]
            size = self.plan.populations[self.population].size
            cached = self._derived[key] = groups.group_keys(group, size, self.seed, self.ids, self.columns, version)
        return cached

    def adjacency(self, env_name: str, ctx) -> tuple:
        """CSR rows of this shard's agents in a network (built once) or a grid (after every move)."""
        env = self.plan.environments[env_name]
        values = ctx.env.get(env_name, {})
        version = values.get("_moves", 0) if env.kind == "grid" else 0
        key = ("adjacency", env_name, version)
        cached = self._derived.get(key)
        if cached is None:
            for old in [k for k in self._derived if k[:2] == ("adjacency", env_name)]:
                del self._derived[old]
            if env.kind == "grid":
                cells = np.asarray(values["_positions"], dtype=np.int64)
                cached = environments.grid_adjacency(env, cells, self.start, self.stop)
            else:
                size = self.plan.populations[self.population].size
                graph = network.build(env_name, env.params, size, self.seed, values.get("_edges"))
                cached = network.rows(graph, self.start, self.stop)
                del graph
            self._derived[key] = cached
        return cached

    def group_partials(self, specs: list[dict], context: dict) -> list:
        """Per-group partials of group aggregates: [(group keys, partial arrays)] per spec."""
        ctx = self._ctx(context)
        frame = self.frame()
        out = []
        for spec in specs:
            values = evaluate(environments.strip_via(spec["arg"]), frame, ctx)
            keys = self.group_keys(spec["via"]["group"])
            if "where" in spec:
                keep = truth(evaluate(environments.strip_via(spec["where"]), frame, ctx), len(self.ids))
                values, keys = (np.asarray(values)[keep] if is_vector(values) else values), keys[keep]
            out.append(groups.partials(spec, values, keys))
        return out

    def column(self, expr: dict, context: dict, where: dict | None = None) -> np.ndarray:
        """One value per agent of this shard (the driver gathers a population's column); with `where`,
        missing (NaN / None) for the agents it does not keep."""
        ctx = self._ctx(context)
        frame = self.frame()
        values = evaluate(environments.strip_via(expr), frame, ctx)
        if not is_vector(values):
            values = np.full(len(self.ids), values, dtype=object if isinstance(values, str) or values is None else None)
        if where is not None:
            keep = truth(evaluate(environments.strip_via(where), frame, ctx), len(self.ids))
            values = np.asarray(values)
            if values.dtype == object:
                values = values.copy()
                values[~keep] = None
            else:
                values = np.where(keep, values.astype(np.float64), np.nan)
        return values

    def texts(self, expr: dict, context: dict, keep: int) -> list:
        """The last `keep` present texts of `expr` in agent id order (posts for a chat room)."""
        values = self.column(expr, context)
        present = [v for v in environments.text_column(values, len(self.ids)) if v is not None]
        return present[-keep:] if keep else []

    def outgoing(self, step, context: dict) -> dict:
        """Senders' messages for a tell to groups or neighbours: ids, group keys and texts."""
        ctx = self._ctx(context)
        frame = self.frame()
        sel = np.flatnonzero(self.mask(step.where, frame, ctx))
        message = evaluate(step.message, frame, ctx)
        texts = [message[i] for i in sel.tolist()] if is_vector(message) else [message] * len(sel)
        out = {"ids": self.ids[sel], "texts": texts}
        if step.target.kind == "group":
            out["keys"] = self.group_keys(step.target.group)[sel]
        return out

    def mask(self, where, frame, ctx) -> np.ndarray:
        """Who a step's `where` selects: a missing value (an agent with no answer yet) selects no one."""
        if where is None:
            return np.ones(frame.size, dtype=bool)
        return truth(evaluate(where, frame, ctx), frame.size)

    # ---------------------------------------------------------------- agent steps
    def ask(self, step, context: dict) -> dict:
        return asking.ask(self, step, self._ctx(context))

    def ask_in_order(self, step, context: dict, prior: dict, turn: int) -> dict | None:
        """`ask ... in order`, on the shard whose turn it is (ordered.py)."""
        return ordered.ask_in_order(self, step, self._ctx(context), prior, turn)

    def memory_of(self, local: int) -> list:
        return self.memory.of(local)

    def tell(self, step, context: dict) -> int:
        """Deliver a message into the memory of this shard's receivers; return how many got it."""
        ctx = self._ctx(context)
        frame = self.frame()
        target = step.target
        if target.kind == "agent":
            index = int(evaluate(target.index, frame, ctx))
            local = index - self.start
            if not 0 <= local < len(self.ids):
                return 0
            message = evaluate(step.message, frame, ctx)
            self.memory.remember(np.array([local]), message if isinstance(message, str) else message[local], None)
            return 1
        if target.kind in ("group", "neighbors"):
            sent = ctx.aggregates["_tell"]
            if target.kind == "group":
                texts = groups.mates(np.asarray(sent["keys"]), np.asarray(sent["ids"]), sent["texts"],
                                     self.group_keys(target.group), self.ids)
            else:
                offsets, neighbours = self.adjacency(target.env, ctx)
                texts = network.messages(sent["texts"], offsets, neighbours)
            sel = np.array([i for i, t in enumerate(texts) if t is not None], dtype=np.int64)
            self.memory.remember(sel, [texts[i] for i in sel.tolist()], None)
            return int(len(sel))
        if target.kind != "population":
            raise EvalError(f"telling {target.kind} is not supported by this runtime yet")
        sel = np.flatnonzero(self.mask(step.where, frame, ctx))
        message = evaluate(step.message, frame, ctx)
        self.memory.remember(sel, [message[i] for i in sel.tolist()] if is_vector(message) else message, None)
        return int(len(sel))

    def broadcast(self, message: str) -> int:
        self.memory.remember(np.arange(len(self.ids)), message, None)
        return len(self.ids)

    def set_state(self, step, context: dict) -> int:
        ctx = self._ctx(context)
        frame = self.frame()
        mask = self.mask(step.where, frame, ctx)
        value = evaluate(step.value, frame, ctx)
        column = self.columns[step.field]
        new = np.asarray(value)[mask] if is_vector(value) else value
        if step.operator != "=":
            new = {"+=": np.add, "-=": np.subtract, "*=": np.multiply, "/=": np.divide}[step.operator](column[mask], new)
        field = self.plan.populations[self.population].state.get(step.field)
        if field is not None and ("min" in field.type or "max" in field.type):
            new = checked_state(step.field, field, new if is_vector(new) else np.full(int(mask.sum()), new),
                                self.ids[mask], f"line {step.span.line}" if step.span else "an update")
        column[mask] = new
        return int(mask.sum())

    def partials(self, specs: list[dict], context: dict) -> list:
        ctx = self._ctx(context)
        frame = self.frame()
        return [self._partial(spec, frame, ctx) for spec in specs]

    def _partial(self, spec: dict, frame: Frame, ctx: Context):
        """One aggregate's partial over this shard's agents (those its `where` keeps)."""
        values, ids, n = evaluate(spec["arg"], frame, ctx), self.ids, len(self.ids)
        if "where" in spec:
            keep = truth(evaluate(spec["where"], frame, ctx), n)
            values = np.asarray(values)[keep] if is_vector(values) else values
            ids, n = ids[keep], int(keep.sum())
        return partial(spec, values, n, ids)

    def keyed_partials(self, keys: list, specs: list[dict], context: dict) -> list:
        """`record ... by`: per spec, per-group partials over this shard's agents (by_group.py)."""
        return by_group.keyed_partials(keys, specs, self.frame(), self._ctx(context))

    def snapshot(self) -> pa.Table:
        """Every agent of this shard: id, kind, state fields and answers so far (`snapshot`)."""
        pop = self.plan.populations[self.population]
        columns = {"agent": pa.array(self.ids), "kind": pa.array(self.kind_column.tolist(), pa.string())}
        for name in [*pop.state, *pop.outputs]:
            columns[name] = arrow_values(self.columns[name], self.types[name])
        return pa.table(columns)

    # ---------------------------------------------------------------- checkpoints
    def save_checkpoint(self, directory: str) -> str:
        """What changes during a run (state, outputs, memory) to one Arrow file, atomically.
        Personas are not saved: they are sampled again, identically, from the seed."""
        pop = self.plan.populations[self.population]
        values = {name: arrow_values(self.columns[name], self.types[name])
                  for name in list(pop.state) + list(pop.outputs) if name in self.columns}
        return checkpoints.save_shard(checkpoints.shard_file(directory, self.population, self.index), self.ids, values,
                                      self.memory.text, self.memory.chars, self.memory.count)

    def load_checkpoint(self, directory: str) -> None:
        path = checkpoints.shard_file(directory, self.population, self.index)
        saved = checkpoints.load_shard(path, self.start, len(self.ids))
        state = self.plan.populations[self.population].state
        for name, column in saved["values"].items():
            self.columns[name] = from_arrow(column, self.types[name], name in state)
        for j, texts in saved["memory"].items():
            arr = np.empty(len(self.ids), dtype=object)
            arr[:] = [self.memory.intern(t) for t in texts]
            self.memory.text[j] = arr
        for j, chars in saved["chars"].items():
            self.memory.chars[j] = chars
        self.memory.count = saved["count"]

    # ---------------------------------------------------------------- inspection
    def inspect(self, agent_id: int) -> dict | None:
        local = agent_id - self.start
        if not 0 <= local < len(self.ids):
            return None
        return {
            "id": agent_id,
            "kind": next(a for a, sl in self.kinds if sl.start <= local < sl.stop),
            "persona": {k: plain(self.columns[k][local]) for k in self.persona_fields},
            "values": {k: plain(v[local]) for k, v in self.columns.items() if k not in self.persona_fields},
            "memory": self.memory.of(local) if self.memory.k else [],
        }

    def persona_table(self) -> pa.Table:
        cols = {"agent": pa.array(self.ids, pa.int64())}
        for k in self.persona_fields:
            cols[k] = arrow_values(self.columns[k], self.types.get(k, {"kind": "any"}))
        return pa.table(cols)

    def stats(self) -> dict:
        return {"population": self.population, "shard": self.index, "agents": len(self.ids), "bytes": self.nbytes()}

    def nbytes(self) -> int:
        total, seen = 0, set()
        for arr in list(self.columns.values()) + self.memory.arrays() + [self.ids]:
            arr = np.asarray(arr)
            total += arr.nbytes
            if arr.dtype == object:
                for x in arr.tolist():
                    if x is not None and id(x) not in seen:
                        seen.add(id(x))
                        total += sys.getsizeof(x)
        return total


def write_texts(model, model_name: str, prompts: list[str], seed: int, usage: dict) -> list[str]:
    """Persona texts from `model`; its calls and tokens are added to `usage[model_name]`."""
    texts = model.write(prompts, seed)
    log = getattr(model, "last_write_log", None)
    if log is not None:
        counts = usage.setdefault(model_name, {"calls": 0, "tokens_in": 0, "tokens_out": 0,
                                               "cache_read": 0, "cache_write": 0, "cache_hits": 0})
        for key in counts:
            counts[key] += getattr(log, key)
    return texts
