"""The monitor's panels that read the folded state: models, cluster, nodes, metrics, rates.

In: a MonitorState (data.py) this class is mixed into: its RunState fold, plan and summary.json.
Out: plain rows and series for the page (no NiceGUI here): `model_rows`, `cost`, `cluster_rows`,
`node_rows`, `metric_series`, `rates`, and the paths of the finished asks' Parquet files.
"""
from __future__ import annotations

import math
import os

from populace.runtime.store.fold import model_cost
from populace.runtime.store.rundir import ask_file

MAX_SHARDS_SHOWN = 10_000  # a damaged event may claim any number; no run has more shards than this


class Panels:
    """Read-only views over MonitorState's fields (mixed into MonitorState)."""

    def rates(self) -> dict:
        """Agents and calls per second over the whole run so far."""
        now = self.now()
        if now <= 0:
            return {"agents": 0.0, "calls": 0.0}
        return {"agents": self.state.agents_done / now, "calls": self.state.calls / now}

    def model_rows(self) -> list[dict]:
        """Per model: calls in flight (sampled during an ask), calls, retries, failures, tokens,
        latency p50/p95 and cost. Live from `models` events (after every ask); summary.json's
        latency (over every call, not only the most recent) once the run has ended. Runs written
        before `models` events existed count retries and failures from their (capped) events."""
        models = (self.plan or {}).get("models", {})
        summary_models = (self.summary or {}).get("models", {})
        state = self.state
        names = sorted(set(state.by_model) | set(self.retries) | set(self.failures) | set(state.in_flight))
        rows = []
        for name in names:
            counts = state.by_model.get(name, {"calls": 0, "tokens_in": 0, "tokens_out": 0})
            final = summary_models.get(name, {})
            model = models.get(name, {})
            rows.append({
                "model": name, "provider": model.get("provider", ""),
                "in_flight": state.in_flight.get(name, 0) if state.status in ("running", "paused") else 0,
                "calls": counts.get("calls", 0), "retries": counts.get("retries", self.retries.get(name, 0)),
                "failures": counts.get("failures", self.failures.get(name, 0)),
                "tokens_in": counts.get("tokens_in", 0), "tokens_out": counts.get("tokens_out", 0),
                "latency_p50": final.get("latency_p50_s", counts.get("latency_p50_s")),
                "latency_p95": final.get("latency_p95_s", counts.get("latency_p95_s")),
                "cost_usd": counts["cost_usd"] if "cost_usd" in counts else model_cost(model, counts),
            })
        return rows

    def cost(self) -> float | None:
        costs = [row["cost_usd"] for row in self.model_rows()]
        return None if any(c is None for c in costs) else sum(costs)

    def cluster_rows(self) -> list[dict]:
        """Per population: its shards' progress in the current step and, per shard (from the latest
        `shards` event), the node it runs on, its agents, bytes and process RSS, and its restarts."""
        rows = []
        for pop, count in sorted(self.state.shards.items()):
            progress = self.shard_progress.get(pop, [])
            active = self.running and self._index.get(self.running, {}) and self.state.current.startswith(self.running)
            restarts = [r for r in self.state.restarts if r.get("population") == pop]
            info = {s.get("shard"): s for s in self.state.shard_info.get(pop, [])}
            shards = [dict(info.get(i, {}), shard=i, restarts=sum(1 for r in restarts if r.get("shard") == i))
                      for i in range(min(count, MAX_SHARDS_SHOWN))]
            rows.append({"population": pop, "agents": self.state.agents.get(pop, 0), "shards": count,
                         "shards_done": sum(1 for p in progress if p), "shard_agents": list(progress),
                         "shard_steps": list(self.shard_steps.get(pop, [])), "in_step": bool(active),
                         "restarts": restarts, "shard_info": shards})
        return rows

    def node_rows(self) -> list[dict]:
        """The machines: per Ray node (or "local"), its address, host, shards, agents and bytes."""
        nodes: dict = {}
        for pop, shards in sorted(self.state.shard_info.items()):
            for s in shards:
                node = nodes.setdefault(s.get("node", "?"), {"node": s.get("node", "?"), "ip": s.get("ip", ""),
                                                             "host": s.get("host", ""), "shards": [], "agents": 0,
                                                             "bytes": 0, "rss": {}})
                node["shards"].append(f"{pop}/{s.get('shard')}")
                node["agents"] += s.get("agents") or 0
                node["bytes"] += s.get("bytes") or 0
                if s.get("rss") is not None:
                    node["rss"][s.get("pid")] = s["rss"]  # shards sharing a process share its RSS
        return [dict(n, rss=sum(n["rss"].values()) if n["rss"] else None) for n in nodes.values()]

    def metric_series(self) -> dict:
        """Every numeric recorded value, by name: (x labels, values), one point per executed record."""
        loop_vars = self._loop_vars()
        series: dict[str, tuple[list, list]] = {}
        for label, values in zip(self.record_labels, self.state.records):
            for name, value in values.items():
                if isinstance(value, bool) or not isinstance(value, (int, float)) or name in loop_vars:
                    continue
                xs, ys = series.setdefault(name, ([], []))
                xs.append(label)
                ys.append(None if isinstance(value, float) and not math.isfinite(value) else value)
        return series

    def _loop_vars(self) -> set:
        names = set()
        for row in self.steps:
            if row["op"] in ("repeat", "for"):
                step = self._find(row["id"])
                if step and step.get("var"):
                    names.add(step["var"])
        return names

    def _find(self, step_id: str) -> dict | None:
        def walk(steps):
            for step in steps:
                if step["id"] == step_id:
                    return step
                for body in [step.get("body"), step.get("else")] + [b["body"] for b in step.get("branches", [])]:
                    if isinstance(body, list):
                        found = walk(body)
                        if found:
                            return found
            return None
        return walk((self.plan or {}).get("workflow", []))

    def latest_ask_file(self) -> str | None:
        if not self.latest_ask:
            return None
        step, label = self.latest_ask
        return os.path.join(self.run_dir, ask_file(step, label))

    def source_of(self, step_id: str, context: int = 1) -> str:
        row = self._index.get(step_id) if self.plan else None
        return self.sources.excerpt(row["span"] if row else None, context)

    def ask_files(self) -> list[tuple[str, str, str]]:
        """(step id, iteration, path) of every finished ask, oldest first."""
        return list(self.asks)
