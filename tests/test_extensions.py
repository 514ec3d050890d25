"""Environment kinds written in Python: the declaration API, the compiler's checks, entry points,
and real runs of examples/market (local and Ray agree; actions, queries and per-agent queries
checked against the Parquet files; a resumed run restores the kind's state)."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from populace.compiler import compile_file
from populace.compiler.plan.extensions import ExtensionError
from populace.compiler.plan import load_plan, plan_from_dict
from populace.runtime import action, each, environment_kind, param, query
from populace.cli.main import main
from populace.runtime.engine.run import run_plan

from test_environments import asks, assert_same_runs

ROOT = Path(__file__).resolve().parent.parent
MARKET = ROOT / "examples" / "market" / "market.pop"


def run(path, tmp_path, name, executor="local", shards=None, overrides=()):
    plan = plan_from_dict(compile_file(str(path), list(overrides)).plan)
    run_dir = tmp_path / name
    summary = run_plan(plan, executor=executor, shards=shards, run_dir=str(run_dir))
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return summary, metrics, run_dir, plan


# ------------------------------------------------------------------ the declaration API
def test_a_kind_declares_typed_params_and_methods():
    @environment_kind("counter")
    class Counter:
        people = param("population")
        step = param(int, 1, low=1)

        def start(self, agents):
            return {"n": 0}

        @action()
        def tick(self, state):
            state["n"] += self.step

        @action(each(bool))
        def vote(self, state, votes):
            pass

        @query(int)
        def value(self, state):
            return state["n"]

    spec = Counter.__populace_kind__
    assert spec.kind == "counter" and spec.target.endswith(":test_a_kind_declares_typed_params_and_methods.<locals>.Counter")
    assert list(spec.params) == ["people", "step"] and spec.params["step"].default == 1 and spec.population_param == "people"
    assert {m: spec.methods[m].role for m in spec.methods} == {"tick": "action", "vote": "action", "value": "query"}


def _kind(**attrs):
    return environment_kind("k")(type("K", (), {"start": lambda self, n: {}, **attrs}))


@pytest.mark.parametrize("build, message", [
    (lambda: param(dict), "param type"),
    (lambda: param(int, "five", low=0), "the default 'five' does not fit: must be int"),
    (lambda: param(str, "z", choices=("a", "b")), "must be one of 'a', 'b'"),
    (lambda: param(float, -1.0, low=0.0), "must be in 0.0.., not -1.0"),
    (lambda: query(set), "query() takes"),
    (lambda: query(list[int], per_agent=True), "a per-agent query returns int, float, str or bool"),
    (lambda: environment_kind("2x"), "a name like"),
    (lambda: environment_kind("board"), "built-in kind or a word of the language"),
    (lambda: environment_kind("where"), "built-in kind or a word of the language"),
    (lambda: environment_kind("k")(type("NoStart", (), {})), "needs `start"),
    (lambda: _kind(f=query(int, per_agent=True)(lambda self, s: [])), "need a param(\"population\")"),
    (lambda: _kind(name=param(str)), "cannot be called `name` (Populace sets it)"),
    (lambda: _kind(seed=param(int, 1)), "cannot be called `seed`"),
    (lambda: _kind(a=action(each(int), int)(lambda self, state, xs: None)), "K.a declares 2 argument(s)"),
    (lambda: _kind(q=query(int)(lambda self: 1)), "K.q declares 0 argument(s), so it must take (self, state)"),
])
def test_mistakes_in_a_kind_are_said_in_words(build, message):
    with pytest.raises(ExtensionError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build()


# ------------------------------------------------------------------ compiling
def test_the_plan_names_the_class_and_says_version_1_1(in_repo_root):
    plan = json.loads(compile_file(str(MARKET.relative_to(ROOT))).data)
    env = plan["environments"]["exchange"]
    assert env["kind"] == "python" and env["extension"]["kind"] == "market" and env["extension"]["class"] == "market:Market"
    from market import Market  # examples/market is on the path once compiled

    assert env["extension"]["signature"] == Market.__populace_kind__.signature()
    # the module's text is part of what the plan was compiled from: editing it changes the plan's hash
    assert set(plan["scenario"]["sources"]) == {"examples/market/market.pop", "examples/market/market.py"}
    assert env["params"] == {"price": 60.0, "impact": 0.2} and env["population"] == "traders"
    assert plan["plan_version"] == "1.1" and plan["scenario"]["settings"]["extensions"] == ["market"]
    load_plan(json.dumps(plan))  # the runtime reads it back


def test_explain_lists_the_kind_and_where_it_runs():
    from populace.compiler.explain import explain

    text = explain(compile_file(str(MARKET)))
    assert "exchange: market (Python: market:Market, runs in the driver) over traders; price = 60.0, impact = 0.2" in text


def test_a_plan_without_python_kinds_stays_1_0_and_a_1_0_plan_with_one_is_refused():
    flagship = json.loads(compile_file(str(ROOT / "examples" / "guess_two_thirds.pop")).data)
    assert flagship["plan_version"] == "1.0"  # older runtimes still run it
    plan = json.loads(compile_file(str(MARKET)).data)
    plan["plan_version"] = "1.0"
    with pytest.raises(Exception) as err:
        load_plan(json.dumps(plan))
    assert err.value.path == "$.plan_version" and "1.1" in err.value.message


def test_installed_kinds_come_from_entry_points(tmp_path, monkeypatch, capsys):
    """A package that declares `[project.entry-points."populace.environments"]` is found without
    `extensions`: here a real distribution's metadata on sys.path, as pip would install it."""
    (tmp_path / "lamp_kinds.py").write_text(textwrap.dedent('''
        from populace.runtime import environment_kind, param, query

        @environment_kind("lamp")
        class Lamp:
            watts = param(int, 60)

            def start(self, agents):
                return {"on": True, "watts": self.watts}

            @query(int)
            def power(self, state):
                return state["watts"] if state["on"] else 0
    '''))
    info = tmp_path / "lamp_kinds-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: lamp-kinds\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[populace.environments]\nlamp = lamp_kinds:Lamp\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    scenario = tmp_path / "s" / "room.pop"
    scenario.parent.mkdir()
    scenario.write_text(textwrap.dedent('''
        model m { provider = mock }
        agent P { model = m }
        population people = 3 x P
        environment desk : lamp(watts = 40)
        workflow {
          record power = desk.power()
        }
    '''))
    plan = json.loads(compile_file(str(scenario)).data)
    assert plan["environments"]["desk"]["extension"]["class"] == "lamp_kinds:Lamp"
    run_dir = tmp_path / "run"
    assert main(["run", str(scenario), "--executor", "local", "--quiet", "--run-dir", str(run_dir)]) == 0
    assert json.loads((run_dir / "metrics.jsonl").read_text())["power"] == 40


# ------------------------------------------------------------------ running examples/market
@pytest.fixture(scope="module")
def market_runs(tmp_path_factory, ray_session):
    tmp = tmp_path_factory.mktemp("market")
    small = ["traders=400", "rounds=12"]
    return {"local": run(MARKET, tmp, "local", overrides=small),
            "ray3": run(MARKET, tmp, "ray3", executor="ray", shards=3, overrides=small)}


def test_orders_move_the_price_and_positions_add_up(market_runs):
    summary, metrics, run_dir, plan = market_runs["local"]
    assert summary["status"] == "finished"
    orders = asks(run_dir)
    price, net = 60.0, 0
    for m in metrics:
        day = orders[f"asks/ask.order/round={m['round']}/part-0.parquet"]
        buys, sells = int((day["value"] == "buy").sum()), int((day["value"] == "sell").sum())
        # the action saw every agent's order: its volume and the traders' positions say so
        assert m["volume"] == buys + sells
        net += buys - sells
        assert m["net_shares"] == net  # a per-agent query, stored in state and summed
        assert m["price"] == pytest.approx(price)  # the `let` before the ask: yesterday's close
        price = m["close"]
    closes = [m["close"] for m in metrics]
    # Opening at 60, below what most traders believe (normal(100, 10)), the price climbs to them.
    assert closes[0] > 60 and max(closes[-4:]) > 90 and min(closes[-4:]) < 120


def test_market_agrees_across_executors_and_shards(market_runs):
    assert_same_runs(market_runs)


def test_a_resumed_market_restores_the_kinds_state(tmp_path, capsys):
    run_dir = tmp_path / "r"
    args = ["--set", "traders=300", "--set", "rounds=5", "--executor", "local", "--quiet"]
    assert main(["run", str(MARKET), *args[:4], "--run-dir", str(run_dir), *args[4:]]) == 0
    finished = (run_dir / "metrics.jsonl").read_text()
    (run_dir / "summary.json").unlink()
    # from the last checkpoint (before round 5's ask): the price there comes from driver.json
    assert main(["resume", str(run_dir), "--executor", "local", "--quiet"]) == 0
    assert (run_dir / "metrics.jsonl").read_text() == finished


# ------------------------------------------------------------------ failures are said in words
FAULTY = '''
from populace.runtime import action, each, environment_kind, param, query

@environment_kind("faulty")
class Faulty:
    people = param("population")
    fail = param(str, "none", choices=("none", "start", "action", "state"))

    def start(self, agents):
        if self.fail == "start":
            raise ValueError("no opening stock")
        return {"n": 0}

    @action(each(int))
    def add(self, state, values):
        if self.fail == "action":
            raise KeyError("ledger")
        if self.fail == "state":
            state["when"] = object()
        state["n"] += sum(v for v in values if v is not None)

    @query(int)
    def total(self, state):
        return state["n"]
'''


@pytest.mark.parametrize("fail, code, message", [
    ("start", 1, "faulty_kinds:Faulty.start failed: ValueError: no opening stock"),
    ("action", 1, "box.add(): KeyError: 'ledger'"),
    ("state", 1, "left a state that is not JSON"),
])
def test_a_failing_kind_stops_the_run_with_its_own_message(tmp_path, capsys, monkeypatch, fail, code, message):
    import sys

    monkeypatch.delitem(sys.modules, "faulty_kinds", raising=False)  # each case writes its own copy
    (tmp_path / "faulty_kinds.py").write_text(FAULTY)
    scenario = tmp_path / "f.pop"
    scenario.write_text(textwrap.dedent(f'''
        scenario f {{ extensions = ["faulty_kinds"] }}
        model m {{ provider = mock }}
        agent P {{ model = m }}
        population people = 4 x P
        environment box : faulty(people, fail = "{fail}")
        workflow {{
          ask people "a number" -> n: int in 0..9
          box.add(people.n)
          record total = box.total()
        }}
    '''))
    run_dir = tmp_path / "run"
    # --quiet: a failed run says why even then
    assert main(["run", str(scenario), "--executor", "local", "--quiet", "--run-dir", str(run_dir)]) == code
    out, err = capsys.readouterr()
    assert message in out + err and "Traceback" not in out + err
    if fail != "start":  # the run started: the error is in its events, with the scenario line
        failed = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()
                  if '"run_failed"' in line]
        assert failed and message in failed[0]["error"] and "f.pop:9" in failed[0]["error"]


def echo(agent):
    """A python model that answers with its prompt: what the agent saw."""
    return agent["prompt"]


def even_buys(agent):
    return "buy" if agent["id"] % 2 == 0 else "sell"


def test_prompts_see_queries_and_their_own_per_agent_values(tmp_path, monkeypatch):
    scenario = tmp_path / "see.pop"
    scenario.write_text(textwrap.dedent(f'''
        scenario see {{
          extensions = ["market"]
        }}
        model echo {{
          provider = python
          function = "test_extensions:echo"
        }}
        model rule {{
          provider = python
          function = "test_extensions:even_buys"
        }}
        agent T {{ model = echo }}
        population traders = 6 x T
        environment ex : market(traders, price = 10.0, impact = 0.0) {{
          fee = 0.25
        }}
        workflow {{
          ask traders using rule "order" -> order: enum("buy", "sell", "hold")
          ex.order(traders.order)
          ex.fee = ex.fee * 2
          ask traders "{{{{ ex.position() }}}} at {{{{ ex.quote() }}}}, fee {{{{ ex.fee }}}}, {{{{ ex.history(2) }}}}" -> seen: str
        }}
    '''))
    monkeypatch.syspath_prepend(str(ROOT / "examples" / "market"))  # `market` is not next to this scenario
    run_dir = tmp_path / "run"
    assert main(["run", str(scenario), "--executor", "local", "--shards", "2", "--quiet", "--run-dir", str(run_dir)]) == 0
    seen = pd.read_parquet(next((run_dir / "asks" / "ask.seen").rglob("*.parquet")))
    assert seen["value"].tolist() == [f"{1 if i % 2 == 0 else -1} at 10, fee 0.5, [10, 10]" for i in range(6)]


# ------------------------------------------------------------------ what a kind's methods get and give
CHECKS = '''
import numpy as np
from populace.runtime import action, each, environment_kind, param, query

@environment_kind("probe")
class Probe:
    people = param("population")
    mode = param(str, "plain")

    def start(self, agents):
        if self.mode == "int-keys":
            return {1: "one"}
        if self.mode == "numpy":
            return {"n": np.int64(3), "xs": np.arange(3), "pair": (1, 2)}
        return {"seen": [], "free": 2}

    @action(each(int), each(bool))
    def take(self, state, ns, flags):
        state["seen"] = [type(v).__name__ for v in ns + flags]
        if self.mode == "list":
            return [1]

    @query(int)
    def bad(self, state):
        return "abc"

    @query(int, per_agent=True)
    def short(self, state):
        return [1]

    @query(str)
    def types(self, state):
        return ",".join(state["seen"])
'''


def _probe(tmp_path, mode="plain", workflow="", fields=""):
    (tmp_path / "probe_kinds.py").write_text(CHECKS)
    scenario = tmp_path / "p.pop"
    scenario.write_text(textwrap.dedent(f'''
        scenario p {{
          extensions = ["probe_kinds"]
        }}
        model m {{ provider = mock }}
        agent A {{ model = m }}
        population people = 3 x A
        environment box : probe(people, mode = "{mode}"){fields}
        workflow {{
          ask people "n" -> n: int in 0..9
          ask people "f" -> f: bool
        {workflow}
        }}
    '''))
    return scenario


@pytest.fixture
def probe_module(monkeypatch):
    """probe_kinds is written anew in each test's folder: forget the one imported before."""
    import sys

    monkeypatch.delitem(sys.modules, "probe_kinds", raising=False)


def test_each_arguments_arrive_as_python_ints_and_bools(tmp_path, probe_module):
    scenario = _probe(tmp_path, workflow="  box.take(people.n, people.f)\n  record t = box.types()")
    run_dir = tmp_path / "run"
    assert main(["run", str(scenario), "--executor", "local", "--quiet", "--run-dir", str(run_dir)]) == 0
    assert json.loads((run_dir / "metrics.jsonl").read_text())["t"] == "int,int,int,bool,bool,bool"


@pytest.mark.parametrize("mode, workflow, message", [
    ("plain", "  record b = box.bad()", "probe_kinds:Probe.bad returned str 'abc', not int"),
    ("plain", '  ask people "{{ box.short() }}" -> z: int', "probe_kinds:Probe.short returned 1 value, not one per agent (3)"),
    ("list", "  box.take(people.n, people.f)", "probe_kinds:Probe.take returned list; an action changes"),
    ("int-keys", "", "probe_kinds:Probe.start left a state that is not JSON (key 1 is not text"),
])
def test_wrong_values_from_a_kind_are_said_with_its_name(tmp_path, capsys, probe_module, mode, workflow, message):
    scenario = _probe(tmp_path, mode, workflow)
    assert main(["run", str(scenario), "--executor", "local", "--quiet", "--run-dir", str(tmp_path / "run")]) == 1
    out, err = capsys.readouterr()
    assert message in out + err and "Traceback" not in out + err


def test_numpy_values_and_tuples_in_the_state_become_plain_json(tmp_path, probe_module):
    import sys

    from populace.runtime.environments.python_kinds import Extensions

    scenario = _probe(tmp_path, "numpy")
    plan = plan_from_dict(compile_file(str(scenario)).plan)
    state = Extensions(plan, str(tmp_path)).start("box")
    assert state == {"n": 3, "xs": [0, 1, 2], "pair": [1, 2]} and type(state["n"]) is int
    assert "probe_kinds" in sys.modules


def test_a_declared_field_may_not_hide_the_kinds_state(tmp_path, capsys, probe_module):
    scenario = _probe(tmp_path, fields=" {\n  free = 99\n}")
    assert main(["run", str(scenario), "--executor", "local", "--quiet", "--run-dir", str(tmp_path / "run")]) == 1
    assert "declares a field `free`, which is also a key of probe_kinds:Probe's state" in capsys.readouterr().err


def test_a_class_changed_since_compiling_is_refused(tmp_path, probe_module):
    from populace.runtime.engine.preflight import unsupported

    raw = compile_file(str(_probe(tmp_path))).plan
    raw["environments"]["box"]["extension"]["signature"] = "0" * 16  # as if `take` had changed since
    from populace.compiler.plan import plan_hash

    raw["plan_hash"] = plan_hash(raw)
    [problem] = unsupported(plan_from_dict(raw), folder=str(tmp_path))
    assert "probe_kinds:Probe changed since the scenario was compiled" in problem


def test_resume_from_another_folder_finds_the_scenarios_python(tmp_path, monkeypatch, probe_module):
    """The run records where the scenario's folder is; a resume started elsewhere imports from it."""
    import sys

    scenario = _probe(tmp_path, workflow="  box.take(people.n, people.f)\n  record t = box.types()")
    run_dir = tmp_path / "run"
    assert main(["run", str(scenario), "--executor", "local", "--quiet", "--run-dir", str(run_dir)]) == 0
    finished = (run_dir / "metrics.jsonl").read_text()
    (run_dir / "summary.json").unlink()
    monkeypatch.delitem(sys.modules, "probe_kinds")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(tmp_path)])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["resume", str(run_dir), "--executor", "local", "--quiet"]) == 0
    assert (run_dir / "metrics.jsonl").read_text() == finished
