"""A shard: a contiguous range of one population's agents, held as columns, stepped all at once.

In: the plan (JSON), the population, and the agent range [start, stop). Out: per step, small
results for the driver: ask summaries with a pyarrow table of every agent's prompt hash, reply,
value and error; partial aggregates (sums, counts, ...) instead of rows. The same class runs
in-process (local executor) and inside a Ray actor (ray executor).
"""
from __future__ import annotations

import math
import os
import sys

import numpy as np
import pyarrow as pa

from populace.compiler.plan import plan_from_dict
from populace.compiler.plan.evaluate import EvalError, format_value

from populace.runtime.environments import builtin as environments
from populace.runtime.environments import groups
from populace.runtime.environments import network
from populace.runtime.personas import sampling as personas
from populace.runtime.columns import rng
from populace.runtime.models.base import AskBatch, ModelError, empty_values, make_model
from populace.runtime.store.rundir import RUN_FORMAT, check_format, populace_version, replacing
from populace.runtime.columns.vector import Context, Frame, evaluate, is_vector, render_column

MAX_ERROR_SAMPLES = 20


class Shard:
    def __init__(self, plan_raw: dict, population: str, index: int, start: int, stop: int, shards: int = 1,
                 options: dict | None = None):
        self.plan = plan_from_dict(plan_raw)
        self.options = options or {}
        self.population = population
        self.index = index
        self.shards = shards
        self.start, self.stop = start, stop
        self.seed = self.plan.seed
        pop = self.plan.populations[population]
        self.ids = np.arange(start, stop, dtype=np.int64)
        self.models: dict = {}
        self.write_usage: dict = {}
        persona = self.plan.raw["personas"].get(pop.persona) if pop.persona else None
        self.columns = personas.sample(persona, start, stop, self.seed, write=self._write,
                                       known=self.options.get("persona_texts"))
        self.persona_fields = list(self.columns)
        self.types = personas.column_types(persona)
        for name, st in pop.state.items():
            self.columns[name] = _filled(st["type"], st["default"], len(self.ids))
            self.types[name] = st["type"]
        for name, ty in pop.outputs.items():
            self.columns[name] = empty_values(ty, len(self.ids))
            self.types[name] = ty
        # Agent kinds: mixture parts are contiguous id ranges.
        self.kinds = []  # (agent name, local slice)
        for part in pop.mixture:
            lo, hi = max(part["start"], start), min(part["start"] + part["count"], stop)
            if lo < hi:
                self.kinds.append((part["agent"], slice(lo - start, hi - start)))
        self.memory_limit = max([self.plan.agents[a].memory for a, _ in self.kinds] or [0])
        k = self.memory_limit
        n = len(self.ids)
        self.mem_text = [np.full(n, None, dtype=object) for _ in range(2 * k)]  # prompt, reply per slot
        self.mem_chars = np.zeros((2 * k, n), dtype=np.int32)
        self.mem_count = np.zeros(n, dtype=np.int64)
        self._interned: dict = {}
        self._derived: dict = {}  # group keys and adjacency rows: rebuilt from the seed, never saved
        self.restarted_from = None
        self._where = None  # node and host, found on the first info() (a restart is a new process)
        if self.options.get("checkpoints") and _reconstructed():
            # Ray brought this shard back after its process died: reload the latest checkpoint,
            # which was taken just before the step whose call Ray is about to send again.
            latest = latest_checkpoint(self.options["checkpoints"])
            if latest is not None:
                self.load_checkpoint(latest)
            self.restarted_from = os.path.basename(latest) if latest else "start"
        elif self.options.get("restore"):
            self.load_checkpoint(self.options["restore"])
        # Build the agents' model clients up front: a missing API key or an unloadable policy fails
        # the run at start, and SDK imports do not land inside the first step.
        for agent_name, _ in self.kinds:
            model = self.plan.agents[agent_name].model
            if model:
                self.model(model)

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
            self._where = _where()
        arrays = [*self.columns.values(), *self.mem_text, self.mem_chars, self.mem_count, self.ids]
        return dict(self._where, shard=self.index, agents=len(self.ids), pid=os.getpid(),
                    bytes=int(sum(np.asarray(a).nbytes for a in arrays)), rss=_rss())

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
            self.models[name] = make_model(self.plan.raw["models"][name], self.index, self.shards, self.options)
        return self.models[name]

    def _write(self, model_name: str, prompts: list[str]) -> list[str]:
        return write_texts(self.model(model_name), model_name, prompts, self.seed, self.write_usage)

    def take_write_usage(self) -> dict:
        """Calls and tokens spent writing persona texts (once): the driver adds them to the run's totals."""
        usage, self.write_usage = self.write_usage, {}
        return usage

    # ---------------------------------------------------------------- steps
    def frame(self) -> Frame:
        return Frame(columns=self.columns, ids=self.ids, types=self.types, world=self)

    # ---------------------------------------------------------------- groups and neighbours
    def group_keys(self, name: str) -> np.ndarray:
        """This shard's agents' group keys in group set `name` (derived from the seed: never saved)."""
        cached = self._derived.get(("group", name))
        if cached is None:
            group = self.plan.groups[name]
            size = self.plan.populations[self.population].size
            cached = self._derived[("group", name)] = groups.group_keys(group, size, self.seed, self.ids, self.columns)
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
        ctx = Context(**context)
        frame = self.frame()
        out = []
        for spec in specs:
            values = evaluate(environments.strip_via(spec["arg"]), frame, ctx)
            out.append(groups.partials(spec, values, self.group_keys(spec["via"]["group"])))
        return out

    def column(self, expr: dict, context: dict) -> np.ndarray:
        """One value per agent of this shard (the driver gathers a population's column)."""
        ctx = Context(**context)
        values = evaluate(environments.strip_via(expr), self.frame(), ctx)
        if is_vector(values):
            return values
        return np.full(len(self.ids), values, dtype=object if isinstance(values, str) or values is None else None)

    def texts(self, expr: dict, context: dict, keep: int) -> list:
        """The last `keep` present texts of `expr` in agent id order (posts for a chat room)."""
        values = self.column(expr, context)
        present = [v for v in environments.text_column(values, len(self.ids)) if v is not None]
        return present[-keep:] if keep else []

    def outgoing(self, step: dict, context: dict) -> dict:
        """Senders' messages for a tell to groups or neighbours: ids, group keys and texts."""
        ctx = Context(**context)
        frame = self.frame()
        sel = np.flatnonzero(self._mask(step.get("where"), frame, ctx))
        message = evaluate(step["message"], frame, ctx)
        texts = [message[i] for i in sel.tolist()] if is_vector(message) else [message] * len(sel)
        out = {"ids": self.ids[sel], "texts": texts}
        if step["target"]["kind"] == "group":
            out["keys"] = self.group_keys(step["target"]["group"])[sel]
        return out

    def _mask(self, where, frame, ctx) -> np.ndarray:
        if where is None:
            return np.ones(len(self.ids), dtype=bool)
        value = evaluate(where, frame, ctx)
        if is_vector(value):
            return np.asarray(value, dtype=bool)
        return np.full(len(self.ids), bool(value))

    def ask(self, step: dict, context: dict) -> dict:
        ctx = Context(**context)
        frame = self.frame()
        mask = self._mask(step["where"], frame, ctx)
        prompt = evaluate(step["prompt"], frame, ctx)
        out_name, out_type = step["output"]["name"], step["output"]["type"]
        column = self.columns.get(out_name)
        if column is None:
            column = self.columns[out_name] = empty_values(out_type, len(self.ids))
            self.types[out_name] = out_type
        ids_parts, hash_parts, reply_parts, error_parts, value_index = [], [], [], [], []
        summary = {"agents": 0, "errors": 0, "calls": 0, "tokens_in": 0, "tokens_out": 0, "error_samples": []}
        for agent_name, local in self.kinds:
            sel = np.flatnonzero(mask[local]) + local.start
            if not len(sel):
                continue
            agent = self.plan.agents[agent_name]
            model_name = step["model"] or agent.model
            model = self.model(model_name)
            system = self._system(agent, frame, ctx, sel)
            sub_prompt = [prompt[i] for i in sel.tolist()] if is_vector(prompt) else prompt
            batch = AskBatch(
                ids=self.ids[sel], prompt=sub_prompt, system=system, memory_chars=self._memory_chars(sel),
                output=out_type, where=ctx.where, seed=self.seed,
                persona={k: self.columns[k][sel] for k in self.persona_fields},
                state={k: self.columns[k][sel] for k in self.plan.populations[self.population].state},
                variables=ctx.variables, env=ctx.env, memory=lambda i, sel=sel: self.memory_of(int(sel[i])),
                shards=self.shards,
            )
            answers = model.ask(batch)
            column[sel] = answers.values
            replies = answers.replies if answers.replies is not None else render_column(answers.values, out_type)
            self._remember(sel, sub_prompt, replies)
            ids_parts.append(self.ids[sel])
            if isinstance(sub_prompt, str):
                hash_parts.append(np.full(len(sel), rng.text_hash(sub_prompt), dtype=np.int64))
            else:
                cache: dict = {}
                hash_parts.append(np.fromiter((cache[p] if p in cache else cache.setdefault(p, rng.text_hash(p))
                                               for p in sub_prompt), dtype=np.int64, count=len(sel)))
            reply_parts.extend(r if e is None or answers.replies is not None else None
                               for r, e in zip(replies, answers.errors))
            error_parts.extend(answers.errors)
            value_index.append(sel)
            n_err = sum(e is not None for e in answers.errors)
            summary["agents"] += len(sel)
            summary["errors"] += n_err
            summary["calls"] += answers.calls
            summary["tokens_in"] += answers.tokens_in
            summary["tokens_out"] += answers.tokens_out
            summary.setdefault("by_model", {}).setdefault(model_name, [0, 0, 0])
            counts = summary["by_model"][model_name]
            counts[0] += answers.calls
            counts[1] += answers.tokens_in
            counts[2] += answers.tokens_out
            log = getattr(answers, "log", None)
            if log is not None:  # an LLM: retries, re-asks, cache use, latencies
                llm = summary.setdefault("llm", {}).setdefault(model_name, {
                    "retries": 0, "reasks": 0, "cache_hits": 0, "failures": 0, "cache_read": 0, "cache_write": 0,
                    "latencies": [], "events": []})
                for key in ("retries", "reasks", "cache_hits", "failures", "cache_read", "cache_write"):
                    llm[key] += getattr(log, key)
                llm["latencies"].extend(round(x, 4) for x in log.latencies[:2000])
                llm["events"].extend(log.events)
            if n_err and len(summary["error_samples"]) < MAX_ERROR_SAMPLES:
                for i, e in enumerate(answers.errors):
                    if e is not None:
                        summary["error_samples"].append({"agent": int(self.ids[sel[i]]), "error": e})
                        if len(summary["error_samples"]) >= MAX_ERROR_SAMPLES:
                            break
        sel_all = np.concatenate(value_index) if value_index else np.zeros(0, dtype=np.int64)
        summary["table"] = pa.table({
            "agent": pa.array(np.concatenate(ids_parts) if ids_parts else np.zeros(0, np.int64), pa.int64()),
            "prompt_hash": pa.array(np.concatenate(hash_parts) if hash_parts else np.zeros(0, np.int64), pa.int64()),
            "reply": pa.array(reply_parts, pa.string()),
            "value": arrow_values(column[sel_all], out_type),
            "error": pa.array(error_parts, pa.string()),
        })
        return summary

    def _system(self, agent, frame, ctx, sel):
        if agent.system is None:
            return None
        value = evaluate(agent.system, frame, ctx)
        return [value[i] for i in sel.tolist()] if is_vector(value) else value

    # ---------------------------------------------------------------- memory
    def _memory_chars(self, sel: np.ndarray) -> np.ndarray:
        if not self.memory_limit:
            return np.zeros(len(sel), dtype=np.int64)
        return self.mem_chars[:, sel].sum(axis=0).astype(np.int64)

    def _intern(self, text):
        if text is None or len(text) > 64:
            return text
        return self._interned.setdefault(text, text)

    def _remember(self, sel: np.ndarray, prompts, replies) -> None:
        """Push (prompt, reply) into the ring of the last `memory` entries of each selected agent."""
        k = self.memory_limit
        if not k or not len(sel):
            return
        slots = (self.mem_count[sel] % k) * 2
        prompt_list = prompts if isinstance(prompts, list) else None
        for slot in np.unique(slots).tolist():
            which = slots == slot
            agents = sel[which]
            idx = np.flatnonzero(which)
            if prompt_list is None:
                self.mem_text[slot][agents] = prompts
                self.mem_chars[slot, agents] = len(prompts)
            else:
                texts = [prompt_list[i] for i in idx.tolist()]
                self.mem_text[slot][agents] = texts
                self.mem_chars[slot, agents] = [len(t) for t in texts]
            if replies is None:
                self.mem_text[slot + 1][agents] = None
                self.mem_chars[slot + 1, agents] = 0
            else:
                texts = [self._intern(replies[i]) for i in idx.tolist()]
                self.mem_text[slot + 1][agents] = texts
                self.mem_chars[slot + 1, agents] = [len(t) if t else 0 for t in texts]
        self.mem_count[sel] += 1

    def memory_of(self, local: int) -> list:
        """One agent's memory, oldest first: ("user", text) and ("assistant", reply) entries."""
        k = self.memory_limit
        count = int(self.mem_count[local])
        out = []
        for j in range(max(0, count - k), count):
            slot = (j % k) * 2
            out.append(("user", self.mem_text[slot][local]))
            reply = self.mem_text[slot + 1][local]
            if reply is not None:
                out.append(("assistant", reply))
        return out

    def tell(self, step: dict, context: dict) -> int:
        """Deliver a message into the memory of this shard's receivers; return how many got it."""
        ctx = Context(**context)
        frame = self.frame()
        target = step["target"]
        if target["kind"] == "agent":
            index = int(evaluate(target["index"], frame, ctx))
            local = index - self.start
            if not 0 <= local < len(self.ids):
                return 0
            message = evaluate(step["message"], frame, ctx)
            self._remember(np.array([local]), message if isinstance(message, str) else message[local], None)
            return 1
        if target["kind"] in ("group", "neighbors"):
            sent = ctx.aggregates["_tell"]
            if target["kind"] == "group":
                texts = groups.mates(np.asarray(sent["keys"]), np.asarray(sent["ids"]), sent["texts"],
                                     self.group_keys(target["group"]), self.ids)
            else:
                offsets, neighbours = self.adjacency(target["env"], ctx)
                texts = network.messages(sent["texts"], offsets, neighbours)
            sel = np.array([i for i, t in enumerate(texts) if t is not None], dtype=np.int64)
            self._remember(sel, [texts[i] for i in sel.tolist()], None)
            return int(len(sel))
        if target["kind"] != "population":
            raise EvalError(f"telling {target['kind']} is not supported by this runtime yet")
        mask = self._mask(step.get("where"), frame, ctx)
        sel = np.flatnonzero(mask)
        message = evaluate(step["message"], frame, ctx)
        self._remember(sel, [message[i] for i in sel.tolist()] if is_vector(message) else message, None)
        return int(len(sel))

    def broadcast(self, message: str) -> int:
        self._remember(np.arange(len(self.ids)), message, None)
        return len(self.ids)

    # ---------------------------------------------------------------- state and aggregates
    def set_state(self, step: dict, context: dict) -> int:
        ctx = Context(**context)
        frame = self.frame()
        mask = self._mask(step["where"], frame, ctx)
        value = evaluate(step["value"], frame, ctx)
        column = self.columns[step["field"]]
        new = np.asarray(value)[mask] if is_vector(value) else value
        op = step["operator"]
        if op == "=":
            column[mask] = new
        else:
            old = column[mask]
            column[mask] = {"+=": np.add, "-=": np.subtract, "*=": np.multiply, "/=": np.divide}[op](old, new)
        return int(mask.sum())

    def partials(self, specs: list[dict], context: dict) -> list:
        ctx = Context(**context)
        frame = self.frame()
        return [partial(spec, evaluate(spec["arg"], frame, ctx), len(self.ids)) for spec in specs]

    # ---------------------------------------------------------------- checkpoints
    def checkpoint_file(self, directory: str) -> str:
        return os.path.join(directory, f"{self.population}-{self.index}.arrow")

    def save_checkpoint(self, directory: str) -> str:
        """Write what changes during a run (state, outputs, memory) to one Arrow file, atomically.
        Personas are not saved: they are sampled again, identically, from the seed."""
        pop = self.plan.populations[self.population]
        cols = {"agent": pa.array(self.ids, pa.int64())}
        for name in list(pop.state) + list(pop.outputs):
            if name in self.columns:
                cols["v:" + name] = arrow_values(self.columns[name], self.types[name])
        for j, texts in enumerate(self.mem_text):
            cols[f"m:{j}"] = pa.array(texts.tolist(), pa.string())
            cols[f"c:{j}"] = pa.array(self.mem_chars[j], pa.int32())
        cols["count"] = pa.array(self.mem_count, pa.int64())
        table = pa.table(cols).replace_schema_metadata({"populace_format": str(RUN_FORMAT),
                                                          "populace_version": populace_version()})
        target = self.checkpoint_file(directory)
        # a full disk: no partial file left behind, and the error names the file
        with replacing(target, ".arrow") as tmp, pa.OSFile(tmp, "wb") as sink, \
                pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        return target

    def load_checkpoint(self, directory: str) -> None:
        path = self.checkpoint_file(directory)
        try:
            with pa.memory_map(path) as source:
                table = pa.ipc.open_file(source).read_all()
            table.validate(full=True)  # flipped bytes in offsets or text: an error here, not a crash later
        except (OSError, pa.ArrowInvalid) as e:
            raise CheckpointError(f"cannot read checkpoint {path}: {e}") from None
        meta = table.schema.metadata or {}
        stamp = meta.get(b"populace_format", b"1")
        check_format(int(stamp) if stamp.isdigit() else 1, path,
                     meta.get(b"populace_version", b"").decode("utf-8", "replace") or None)
        if table.num_rows != len(self.ids) or table.column("agent")[0].as_py() != self.start:
            raise CheckpointError(f"checkpoint {path} holds other agents than shard {self.population}/{self.index}")
        for field in table.schema.names:
            if field.startswith("v:"):
                name = field[2:]
                state = name in self.plan.populations[self.population].state
                self.columns[name] = from_arrow(table.column(field), self.types[name], state)
            elif field.startswith("m:"):
                j = int(field[2:])
                arr = np.empty(len(self.ids), dtype=object)
                arr[:] = [self._intern(t) for t in table.column(field).to_pylist()]
                self.mem_text[j] = arr
            elif field.startswith("c:"):
                self.mem_chars[int(field[2:])] = table.column(field).to_numpy()
        self.mem_count = table.column("count").to_numpy().copy()

    # ---------------------------------------------------------------- inspection
    def inspect(self, agent_id: int) -> dict | None:
        local = agent_id - self.start
        if not 0 <= local < len(self.ids):
            return None
        return {
            "id": agent_id,
            "kind": next(a for a, s in self.kinds if s.start <= local < s.stop),
            "persona": {k: _py(self.columns[k][local]) for k in self.persona_fields},
            "values": {k: _py(v[local]) for k, v in self.columns.items() if k not in self.persona_fields},
            "memory": self.memory_of(local) if self.memory_limit else [],
        }

    def persona_table(self) -> pa.Table:
        cols = {"agent": pa.array(self.ids, pa.int64())}
        for k in self.persona_fields:
            cols[k] = arrow_values(self.columns[k], self.types.get(k, {"kind": "any"}))
        return pa.table(cols)

    def stats(self) -> dict:
        return {"population": self.population, "shard": self.index, "agents": len(self.ids),
                "bytes": self.nbytes()}

    def nbytes(self) -> int:
        total, seen = 0, set()
        arrays = list(self.columns.values()) + self.mem_text + [self.mem_chars, self.mem_count, self.ids]
        for arr in arrays:
            arr = np.asarray(arr)
            total += arr.nbytes
            if arr.dtype == object:
                for x in arr.tolist():
                    if x is not None and id(x) not in seen:
                        seen.add(id(x))
                        total += sys.getsizeof(x)
        return total


def _where() -> dict:
    """The Ray node (id, IP) this process runs on inside a Ray actor; "local" for the local executor."""
    import socket

    where = {"node": "local", "ip": "", "host": socket.gethostname()}
    ray = sys.modules.get("ray")  # never import Ray here: the local executor does without it
    if ray is not None and ray.is_initialized():
        context = ray.get_runtime_context()
        if context.get_actor_id() is not None:
            where["node"], where["ip"] = context.get_node_id(), ray.util.get_node_ip_address()
    return where


def _rss() -> int | None:
    """This process's resident memory in bytes (Linux: /proc/self/statm, one small read), else None."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _reconstructed() -> bool:
    try:
        import ray

        import warnings

        with warnings.catch_warnings():  # the property warns about a deprecated call inside Ray itself
            warnings.simplefilter("ignore", DeprecationWarning)
            return ray.is_initialized() and ray.get_runtime_context().was_current_actor_reconstructed
    except Exception:  # not inside a Ray actor (local executor): never a restart
        return False


def latest_checkpoint(root: str) -> str | None:
    """The newest complete checkpoint directory (its driver.json written last), or None."""
    if not os.path.isdir(root):
        return None
    done = sorted(d for d in os.listdir(root) if os.path.exists(os.path.join(root, d, "driver.json")))
    return os.path.join(root, done[-1]) if done else None


class CheckpointError(Exception):
    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __reduce__(self):
        return (CheckpointError, (self.message,))


def from_arrow(column, ty: dict, state: bool) -> np.ndarray:
    """The inverse of arrow_values: back to the shard's in-memory column for this type.
    State fields never miss a value and keep their own dtype; ask outputs use NaN / None for missing."""
    import json

    kind = ty.get("kind")
    values = column.to_pylist()
    if kind in ("int", "float", "bool"):
        if state:
            return np.array(values, dtype={"int": np.int64, "float": np.float64, "bool": bool}[kind])
        return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    arr = np.empty(len(values), dtype=object)
    if kind in ("list", "record", "any"):
        arr[:] = [None if v is None else json.loads(v) for v in values]
    else:
        arr[:] = values
    return arr


def _filled(ty: dict, value, n: int) -> np.ndarray:
    kind = ty["kind"]
    if kind == "int":
        return np.full(n, value, dtype=np.int64)
    if kind == "float":
        return np.full(n, value, dtype=np.float64)
    if kind == "bool":
        return np.full(n, bool(value), dtype=bool)
    arr = np.empty(n, dtype=object)
    arr[:] = [value] * n if isinstance(value, (list, dict)) else value
    return arr


def _py(v):
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and v != v:
        return None
    return v


def arrow_values(values: np.ndarray, ty: dict) -> pa.Array:
    """A column of typed values for Parquet: ints and bools with nulls where the value is missing."""
    kind = ty.get("kind")
    arr = np.asarray(values)
    if kind in ("int", "bool") and arr.dtype.kind == "f":
        missing = np.isnan(arr)
        filled = np.where(missing, 0, arr)
        return pa.array(filled.astype(np.int64 if kind == "int" else bool), mask=missing)
    if kind == "float":
        return pa.array(arr.astype(np.float64), mask=np.isnan(arr.astype(np.float64)))
    if arr.dtype.kind in "iub":
        return pa.array(arr)
    if kind in ("list", "record", "any"):
        import json

        return pa.array([None if v is None else json.dumps(_py(v), sort_keys=True, default=str) for v in arr.tolist()],
                        pa.string())
    return pa.array([None if v is None else str(v) for v in arr.tolist()], pa.string())


# ------------------------------------------------------------------ map-reduce aggregates
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


def partial(spec: dict, values, n: int):
    """One shard's partial result for an aggregate; `combine` reduces partials to the value."""
    fn = spec["agg"]
    arr = np.asarray(values) if is_vector(values) else np.full(n, values)
    if arr.dtype == object:
        present = arr[np.array([v is not None for v in arr.tolist()], dtype=bool)] if len(arr) else arr
        if fn == "count":
            return int(len(present))
        if fn in ("min", "max"):
            return (min(present.tolist()) if fn == "min" else max(present.tolist())) if len(present) else None
        arr = np.asarray([float(v) for v in present.tolist()], dtype=float)
    arr = arr.astype(np.float64)
    present = arr[~np.isnan(arr)]
    if fn == "count":
        return int(len(present))
    if fn in ("mean", "sum"):
        return (exact_sum(present), int(len(present)))
    if fn == "share":
        return (float((present != 0).sum()), int(len(present)))
    if fn == "std":
        return (int(len(present)), exact_sum(present), exact_sum(present ** 2))
    if fn in ("min", "max"):
        return (float(present.min()) if fn == "min" else float(present.max())) if len(present) else None
    if fn == "histogram" and "low" in spec["params"] and "high" in spec["params"]:
        p = spec["params"]
        counts, _ = np.histogram(present, bins=int(p["bins"]), range=(p["low"], p["high"]))
        return counts.astype(np.int64)
    return present  # median, quantile, histogram without a range: the values themselves


def exact_sum(values: np.ndarray) -> tuple[float, float]:
    """(hi, lo): hi is the correctly rounded sum of `values`, lo the correctly rounded rest.

    Shards add their agents' values; summing the shards' float sums would depend on where the
    shard boundaries fall (in the last bits). fsum of every shard's (hi, lo) is the correctly
    rounded total whatever the sharding, so 1, 2 or 40 shards give the same mean, bit for bit.
    Whole numbers (counts, int answers, bools) whose sum is exact in a float take numpy's sum.
    """
    if not len(values):
        return (0.0, 0.0)
    magnitude = float(np.abs(values).sum())
    if magnitude < 2.0 ** 53 and bool(np.all(values == np.trunc(values))):
        return (float(values.sum()), 0.0)
    items = values.tolist()
    hi = math.fsum(items)
    items.append(-hi)
    return (hi, math.fsum(items))


def _total(pairs) -> float:
    return math.fsum(x for pair in pairs for x in pair)


def combine(spec: dict, parts: list):
    fn, params = spec["agg"], spec["params"]
    if fn == "count":
        return int(sum(parts))
    if fn == "mean":
        total, count = _total(p[0] for p in parts), sum(p[1] for p in parts)
        return total / count if count else float("nan")
    if fn == "sum":
        total = _total(p[0] for p in parts)
        return int(total) if params.get("int") else total
    if fn == "share":
        t, c = sum(p[0] for p in parts), sum(p[1] for p in parts)
        return t / c if c else float("nan")
    if fn == "std":
        n, s, ss = sum(p[0] for p in parts), _total(p[1] for p in parts), _total(p[2] for p in parts)
        return float(np.sqrt(max(ss / n - (s / n) ** 2, 0.0))) if n else float("nan")
    if fn in ("min", "max"):
        present = [p for p in parts if p is not None]
        value = (min(present) if fn == "min" else max(present)) if present else None
        return int(value) if params.get("int") and isinstance(value, float) else value
    if fn == "histogram":
        bins = int(params["bins"])
        if "low" in params and "high" in params:
            counts = np.sum(parts, axis=0) if parts else np.zeros(bins, dtype=np.int64)
            edges = np.linspace(params["low"], params["high"], bins + 1)
        else:
            values = np.concatenate(parts) if parts else np.zeros(0)
            counts, edges = np.histogram(values, bins=bins)
        return {"counts": [int(c) for c in counts], "edges": [round(float(e), 6) for e in edges]}
    values = np.concatenate(parts) if parts else np.zeros(0)
    if not len(values):
        return float("nan")
    if fn == "median":
        return float(np.median(values))
    if fn == "quantile":
        return float(np.quantile(values, params["q"]))
    raise EvalError(f"unknown aggregate {fn}")


__all__ = ["Shard", "partial", "combine", "ModelError", "format_value"]
