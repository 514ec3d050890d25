"""`populace prompt RUN --agent N [--step S] [--iteration I]`: the exact request an agent was sent.

In: a run directory, an agent id, and an ask: its number in the run (`--step 3`: the third ask
executed, as the events list them), its id (`--step ask.guess`, with `--iteration round=3` or
`--step "ask.guess[round=3]"`), or by default the last ask the run executed. Out: the system
prompt, the agent's memory and the prompt with its reply instruction, as the model got them.
The request is read from prompts/ when the run kept it (`--save-prompts`); otherwise the run is
replayed in a temporary directory, from its plan, seed and response cache, up to that ask: every
model answers as it did (python and mock models are deterministic, LLM replies come from the
cache), so nothing is paid and the request is the one that was sent.
"""
from __future__ import annotations

import os
import sys
import tempfile

import pyarrow.parquet as pq

from populace.runtime.store.events import read_events
from populace.runtime.store.rundir import ask_file


class PromptError(Exception):
    pass


def asks_executed(run_dir: str) -> list[tuple[str, str]]:
    """(step id, iteration) of every ask the run finished, in order (a resumed run's replayed ask once)."""
    seen, out = set(), []
    for e in read_events(os.path.join(run_dir, "events.jsonl")):
        if e["type"] == "step_finished" and e.get("op") == "ask":
            key = (e.get("step", ""), e.get("iteration", ""))
            if key not in seen:
                seen.add(key)
                out.append(key)
    return out


def pick_ask(run_dir: str, step: str | None, iteration: str | None) -> tuple[str, str]:
    done = asks_executed(run_dir)
    if not done:
        raise PromptError(f"{run_dir} has no finished ask yet")
    if step is None:
        return done[-1]
    if step.isdigit():
        number = int(step)
        if not 1 <= number <= len(done):
            raise PromptError(f"the run executed {len(done)} ask(s); --step takes 1 to {len(done)}")
        return done[number - 1]
    name = step if step.startswith("step:") else "step:" + step
    if "[" in name and iteration is None:
        name, iteration = name[:name.index("[")], name[name.index("["):]
    if iteration is not None and not iteration.startswith("["):
        iteration = f"[{iteration}]"
    matches = [d for d in done if d[0] == name and (iteration is None or d[1] == iteration)]
    if not matches:
        shown = ", ".join(f"{s[5:]}{i}" for s, i in done[:8]) + (" ..." if len(done) > 8 else "")
        raise PromptError(f"no finished ask {name[5:]}{iteration or ''} in this run (asks: {shown})")
    return matches[-1]


def saved_request(run_dir: str, step_id: str, label: str, agent: int) -> dict | None:
    path = os.path.join(run_dir, "prompts", ask_file(step_id, label)[len("asks/"):])
    if not os.path.exists(path):
        return None
    rows = pq.read_table(path, filters=[("agent", "=", agent)]).to_pylist()
    return rows[0] if rows else None


def replayed_request(run_dir: str, step_id: str, label: str, agent: int, cache: str | None) -> dict | None:
    """Run the plan again (local, replaying the cache) up to the ask, keeping this agent's request."""
    from populace.compiler.plan import read_plan
    from populace.runtime.engine.run import run_plan

    plan = read_plan(os.path.join(run_dir, "plan.json"))
    starts = [e for e in read_events(os.path.join(run_dir, "events.jsonl")) if e["type"] == "run_started"]
    folder = next((e["scenario_dir"] for e in starts if isinstance(e.get("scenario_dir"), str)), None)
    cache = cache or os.path.join(run_dir, "cache.sqlite")
    done = {"flag": False}

    def listen(event):
        if event["type"] == "step_finished" and event.get("step") == step_id and event.get("iteration") == label:
            done["flag"] = True

    with tempfile.TemporaryDirectory(prefix="populace-prompt-") as tmp:
        replay = os.path.exists(cache) and any(not m.offline for m in plan.models.values())
        summary = run_plan(plan, executor="local", run_dir=os.path.join(tmp, "run"), cache=cache, replay=replay,
                           listener=listen, should_stop=lambda: done["flag"], checkpoint_every=0, folder=folder,
                           max_failed=1.0, prompts={"agents": [agent], "step": step_id, "iteration": label})
        if not done["flag"]:
            raise PromptError(f"the replay did not reach {step_id[5:]}{label}: {summary.get('error', summary['status'])}")
        return saved_request(os.path.join(tmp, "run"), step_id, label, agent)


def show(request: dict, agent: int, step_id: str, label: str, out) -> None:
    out.write(f"agent {agent} at {step_id[5:]}{label}, model {request['model']}\n")
    if request.get("system"):
        out.write(f"--- system ---\n{request['system']}\n")
    for message in request["messages"]:
        out.write(f"--- {message['role']} ---\n{message['content']}\n")


def run(run_dir: str, agent: int, step: str | None, iteration: str | None, cache: str | None) -> int:
    try:
        step_id, label = pick_ask(run_dir, step, iteration)
        request = saved_request(run_dir, step_id, label, agent)
        if request is None:
            request = replayed_request(run_dir, step_id, label, agent, cache)
        if request is None:
            raise PromptError(f"agent {agent} was not asked in {step_id[5:]}{label} (not in the population, "
                              "or the ask's `where` left it out)")
    except PromptError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"error: {run_dir}: {e.strerror or e}", file=sys.stderr)
        return 1
    show(request, agent, step_id, label, sys.stdout)
    return 0
