"""Golden plans and the plan contract: tests/fixtures/compile/<case>.pop next to <case>.plan.json (pretty
JSON, compiled from the repository root); byte-stable output; schema validity; plans that do not grow
with agents or rounds; malformed plans refused with a JSON path; schema and compiler kept in step.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import jsonschema
import pytest

from populace.compiler import compile_file
from populace.compiler.passes.personas import DISTRIBUTIONS
from populace.compiler.kinds import KINDS
from populace.compiler.expressions import AGGREGATES
from populace.dsl.diagnostics import DiagnosticError
from populace.compiler.plan import PLAN_VERSION, PlanError, canonical_bytes, load_plan, needed_version, plan_from_dict, read_plan
from populace.compiler.plan.evaluate import BINARY

ROOT = Path(__file__).resolve().parent.parent
COMPILE = ROOT / "tests" / "fixtures" / "compile"
CASES = sorted(COMPILE.glob("*.pop"))
EXAMPLES = sorted((ROOT / "examples").glob("*.pop")) + sorted((ROOT / "examples" / "models").glob("*.pop"))
SCHEMA = json.loads((ROOT / "compiler" / "plan" / "schemas" / "plan.v1.json").read_text(encoding="utf-8"))
FLAGSHIP = "examples/guess_two_thirds.pop"


def _compile(path: Path, overrides=()):
    return compile_file(str(path.relative_to(ROOT)), list(overrides))


def _steps(steps):
    for step in steps:
        yield step
        yield from _steps(step.get("body", ()))
        for branch in step.get("branches", ()):
            yield from _steps(branch["body"])
        yield from _steps(step.get("else", ()))


def _expression_forms(value, out: set) -> set:
    """The keys that tell plan expressions apart, found anywhere in a plan (steps included)."""
    if isinstance(value, dict):
        if "id" not in value:  # a step is not an expression
            out |= {k for k in ("lit", "var", "env", "col", "agg", "op", "call", "method", "if", "list", "record",
                                "get", "index", "template") if k in value}
        for v in value.values():
            _expression_forms(v, out)
    elif isinstance(value, list):
        for v in value:
            _expression_forms(v, out)
    return out


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.stem)
def test_golden_plan(case, golden, in_repo_root):
    compiled = _compile(case)
    golden(case.with_suffix(".plan.json"), json.dumps(compiled.plan, indent=2, sort_keys=True) + "\n")


@pytest.mark.parametrize("case", CASES + EXAMPLES, ids=lambda p: p.stem)
def test_compiling_twice_gives_the_same_bytes(case, in_repo_root):
    first, second = _compile(case), _compile(case)
    assert first.data == second.data and first.plan_hash == second.plan_hash
    assert load_plan(first.data).plan_hash == first.plan_hash  # and the runtime reads it back


@pytest.mark.parametrize("case", CASES + EXAMPLES, ids=lambda p: p.stem)
def test_every_plan_validates_against_the_committed_schema(case, in_repo_root):
    plan = json.loads(_compile(case).data)
    errors = list(jsonschema.Draft202012Validator(SCHEMA).iter_errors(plan))
    assert errors == []
    assert plan["plan_version"] == needed_version(plan)


def test_plan_size_and_compile_time_do_not_depend_on_agents_or_rounds(in_repo_root):
    def timed(overrides):
        runs = []
        for _ in range(5):
            start = time.perf_counter()
            compiled = compile_file(FLAGSHIP, overrides)
            runs.append(time.perf_counter() - start)
        return compiled, sorted(runs)[2]

    small, small_time = timed(["players=10", "rounds=3"])
    big, big_time = timed(["players=1000000", "rounds=1000"])
    assert big.plan["populations"]["players"]["size"] == 1_000_000
    assert big.plan["scenario"]["params"]["rounds"] == 1000

    def unhashed(compiled) -> str:  # the hash's hex digits vary from plan to plan
        return canonical_bytes({k: v for k, v in compiled.plan.items() if k != "plan_hash"}).decode()

    small_text, big_text = unhashed(small), unhashed(big)
    # The same plan apart from digits: the loop was not unrolled, the agents not listed.
    assert re.sub(r"[0-9]+", "0", small_text) == re.sub(r"[0-9]+", "0", big_text)
    assert len(big_text) - len(small_text) == len(re.findall("[0-9]", big_text)) - len(re.findall("[0-9]", small_text))
    assert len(big.data) == len(small.data) + len(big_text) - len(small_text)
    assert len(big.data) < 20_000
    # Independent of size: a plan that listed agents or unrolled rounds would take seconds, not milliseconds.
    assert big_time < 1.0 and big_time < 2 * small_time + 0.1


# ------------------------------------------------------------------ malformed plans are refused
@pytest.fixture
def plan_bytes(in_repo_root) -> bytes:
    return _compile(COMPILE / "flagship_small.pop").data


def _refused(data) -> PlanError:
    with pytest.raises(PlanError) as caught:
        load_plan(data)
    return caught.value


def test_truncated_plan(plan_bytes):
    err = _refused(plan_bytes[: len(plan_bytes) // 2])
    assert err.path == "$" and "not valid JSON" in err.message and "truncated" in err.message


def test_newer_major_version_names_both_versions(plan_bytes):
    plan = json.loads(plan_bytes)
    plan["plan_version"] = "2.0"
    err = _refused(json.dumps(plan))
    assert err.path == "$.plan_version" and "2.0" in err.message and PLAN_VERSION in err.message


def test_schema_violation_deep_in_the_workflow_names_its_path(plan_bytes):
    plan = json.loads(plan_bytes)
    ask = plan["workflow"][0]["body"][0]
    assert ask["op"] == "ask"
    ask["output"]["type"]["kind"] = "integer"
    err = _refused(json.dumps(plan))
    assert err.path == "$.workflow[0].body[0].output.type.kind" and "'integer'" in err.message


def test_unknown_step_op_is_named(plan_bytes):
    plan = json.loads(plan_bytes)
    plan["workflow"][0]["body"][1]["op"] = "unroll"
    err = _refused(json.dumps(plan))
    assert err.path == "$.workflow[0].body[1].op" and "unroll" in err.message


def test_hand_edited_plan_fails_its_hash(plan_bytes, tmp_path):
    plan = json.loads(plan_bytes)
    plan["scenario"]["params"]["players"] = 1_000_000
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan), encoding="utf-8")
    with pytest.raises(PlanError) as caught:
        read_plan(str(path))
    assert caught.value.path == "$.plan_hash" and "edited" in caught.value.message
    plan_from_dict(json.loads(plan_bytes))  # the untouched plan loads


def test_plan_error_survives_pickling():
    import pickle

    err = pickle.loads(pickle.dumps(PlanError("bad", "$.workflow[0]")))
    assert (err.message, err.path) == ("bad", "$.workflow[0]")


# ------------------------------------------------------------------ schema and compiler in step
def _schema_consts(defs_key: str, prop: str) -> set:
    return {branch["properties"][prop]["const"] for branch in SCHEMA["$defs"][defs_key]["oneOf"]}


def test_every_step_op_is_in_the_schema_and_every_schema_op_is_emitted(in_repo_root):
    emitted_by_fixtures = set()
    forms = set()
    for case in CASES:
        plan = _compile(case).plan
        emitted_by_fixtures |= {step["op"] for step in _steps(plan["workflow"])}
        _expression_forms(plan, forms)
    in_source = set(re.findall(r'"op": "([a-z_]+)"', (ROOT / "compiler" / "passes" / "workflow.py").read_text(encoding="utf-8")))
    in_schema = _schema_consts("step", "op")
    assert in_source == in_schema
    assert emitted_by_fixtures == in_schema  # and the fixtures exercise every one of them
    schema_forms = {branch["required"][0] for branch in SCHEMA["$defs"]["expr"]["anyOf"]}
    assert forms == schema_forms


def test_operator_aggregate_distribution_and_kind_lists_match_the_schema():
    expr = {branch["required"][0]: branch for branch in SCHEMA["$defs"]["expr"]["anyOf"]}
    assert set(expr["op"]["properties"]["op"]["enum"]) == set(BINARY) | {"and", "or", "not", "neg"}
    assert set(expr["agg"]["properties"]["agg"]["enum"]) == set(AGGREGATES)
    assert set(SCHEMA["$defs"]["dist"]["properties"]["name"]["enum"]) == set(DISTRIBUTIONS) | {"choice", "constant"}
    assert set(SCHEMA["properties"]["environments"]["additionalProperties"]["properties"]["kind"]["enum"]) == set(KINDS) | {"python"}


def test_set_takes_keywords_as_words_for_text_params(tmp_path):
    scenario = tmp_path / "s.pop"
    scenario.write_text('scenario s {\n  param mode = "plain"\n  param n = 3\n}\n'
                        'model m { provider = mock }\nagent P { model = m }\npopulation people = 2 x P\n')
    for word in ("none", "true", "false", "hello"):
        plan = json.loads(compile_file(str(scenario), [f"mode={word}"]).data)
        assert plan["scenario"]["params"]["mode"] == word
    with pytest.raises(DiagnosticError) as err:
        compile_file(str(scenario), ["n=none"])
    assert "param `n` is int, not none" in str(err.value.diagnostics[0].message)


def test_a_plan_that_uses_an_undeclared_name_is_refused_with_the_path(in_repo_root):
    """The schema cannot see names: a hand-edited plan without the model its agents use is refused."""
    from populace.compiler.plan import plan_hash

    plan = json.loads(compile_file(FLAGSHIP).data)
    del plan["models"]["level_k"]
    plan["plan_hash"] = plan_hash(plan)
    with pytest.raises(PlanError) as err:
        load_plan(json.dumps(plan))
    assert err.value.path == "$.agents.Player.model" and "'level_k' is used but not declared" in err.value.message


@pytest.mark.parametrize("path", sorted((ROOT / "examples").rglob("*.pop")), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_example_file_checks_on_its_own(path, capsys):
    # scenarios and the modules they import alike: a module's params come from its importer (W1003)
    from populace.cli.main import main

    assert main(["check", str(path)]) == 0, capsys.readouterr().err


def test_a_module_that_uses_its_importers_params_is_not_run_on_its_own(capsys):
    from populace.cli.main import main

    assert main(["run", str(ROOT / "examples" / "paper" / "models_vllm.pop"), "--executor", "local"]) == 1
    assert "run the scenario that imports it" in capsys.readouterr().err
