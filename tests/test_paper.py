"""The AgentScope paper's setups (examples/paper/guess.pop) run offline end to end at small sizes.

Each test runs the scenario with the params of one setup and checks its recorded metrics and
outputs: prompt variants, persona groups, model mixtures, temperature, the million-agent plan, and
the same file on real models (compiled only: no endpoint here).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from populace.compiler import compile_file
from populace.compiler.plan import plan_from_dict
from populace.runtime.engine.run import run_plan

ROOT = Path(__file__).resolve().parent.parent
PAPER = ROOT / "examples" / "paper"
GUESS = PAPER / "guess.pop"


def run(tmp_path, name, **params):
    overrides = [f"{k}={v}" for k, v in params.items()]
    plan = plan_from_dict(compile_file(str(GUESS), overrides).plan)
    run_dir = tmp_path / name
    summary = run_plan(plan, executor="local", run_dir=str(run_dir))
    assert summary["status"] == "finished", name
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return summary, metrics, run_dir


def first_round_guesses(run_dir: Path) -> pd.DataFrame:
    people = pd.read_parquet(run_dir / "personas.parquet")
    return pd.read_parquet(run_dir / "asks" / "ask.guess" / "round=1" / "part-0.parquet").merge(people, on="agent")


@pytest.fixture(scope="module")
def variants(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("variants")
    return {v: run(tmp, v, variant=v, players=300) for v in ("plain", "step_by_step", "ratio_51", "famous")}


def test_five_rounds_and_the_average_falls(variants):
    for name, (summary, metrics, _) in variants.items():
        assert [m["round"] for m in metrics] == [1, 2, 3, 4, 5], name
        means = [m["mean_guess"] for m in metrics]
        assert means == sorted(means, reverse=True) and means[0] > 3 * means[-1], (name, means)
        assert all(m["answered"] == 300 for m in metrics)
        assert summary["models"]["model_a"]["calls"] == 1500  # one call per agent and round
        assert summary["errors"] == 0


def test_step_by_step_guesses_lower_than_plain(variants):
    plain, step = variants["plain"][1], variants["step_by_step"][1]
    assert step[0]["mean_guess"] < plain[0]["mean_guess"] - 5
    assert step[0]["median_guess"] < plain[0]["median_guess"]


def test_the_51_100_variant_targets_0_51_of_the_mean(variants):
    for m in variants["ratio_51"][1]:
        assert m["ratio"] == 0.51
        assert m["target"] == pytest.approx(0.51 * m["mean_guess"])
    for m in variants["plain"][1]:
        assert m["ratio"] == pytest.approx(2 / 3)
        assert m["target"] == pytest.approx(2 / 3 * m["mean_guess"])
    assert variants["ratio_51"][1][0]["mean_guess"] < variants["plain"][1][0]["mean_guess"]


def test_naming_the_famous_game_sends_some_straight_to_zero(variants):
    assert variants["plain"][1][0]["share_zero"] == 0
    assert 0.05 < variants["famous"][1][0]["share_zero"] < 0.3
    assert variants["famous"][1][0]["mean_guess"] < variants["plain"][1][0]["mean_guess"]


def test_the_winning_number_carries_into_the_next_round(variants):
    _, metrics, run_dir = variants["plain"]
    # Round 2 anchors on round 1's winner: the mean guess sits below that winner.
    assert metrics[1]["mean_guess"] < metrics[0]["target"]
    assert (run_dir / "asks" / "ask.guess" / "round=5" / "part-0.parquet").exists()


def test_education_groups_of_200_and_deeper_reasoning_with_education(tmp_path):
    _, metrics, run_dir = run(tmp_path, "edu", grouping="education", per_group=40, rounds=2)
    guesses = first_round_guesses(run_dir)
    assert guesses.groupby("education").size().to_dict() == {
        "Bachelor's Degree": 40, "Elementary School": 40, "High School": 40, "Master's Degree": 40, "Ph.D.": 40}
    assert set(guesses["occupation"]) == {"unspecified"}
    mean = guesses.groupby("education")["value"].mean()
    assert mean["Ph.D."] < mean["Master's Degree"] < mean["Bachelor's Degree"] < mean["High School"] < mean["Elementary School"]
    assert metrics[0]["answered"] == 200


def test_occupation_groups_and_game_theory_professors_guess_lowest(tmp_path):
    summary, _, run_dir = run(tmp_path, "occ", grouping="occupation", per_group=30, rounds=1)
    guesses = first_round_guesses(run_dir)
    sizes = guesses.groupby("occupation").size()
    assert len(sizes) == 6 and set(sizes) == {30} and summary["agents"] == 180
    mean = guesses.groupby("occupation")["value"].mean().sort_values()
    assert list(mean.index[:2]) == ["Professor of Game Theory", "Economist"]
    assert mean["Professor of Game Theory"] < mean.drop("Professor of Game Theory").min() - 5


def test_education_by_occupation_with_written_backgrounds_reused_per_group(tmp_path):
    _, _, run_dir = run(tmp_path, "both", grouping="both", per_group=4, rounds=1)
    people = pd.read_parquet(run_dir / "personas.parquet")
    assert len(people) == 120 and set(people.groupby(["education", "occupation"]).size()) == {4}
    # reuse per (education, occupation): one written text per group, shared by its agents
    assert people["background"].nunique() == 30
    assert (people.groupby(["education", "occupation"])["background"].nunique() == 1).all()


def test_models_separately_and_mixed(tmp_path):
    means = {}
    for mixture in ("a", "b", "c", "mixed"):
        summary, metrics, _ = run(tmp_path, mixture, mixture=mixture, players=150, rounds=2)
        means[mixture] = metrics[0]["mean_guess"]
        calls = {name: summary["models"].get(name, {}).get("calls", 0) for name in ("model_a", "model_b", "model_c")}
        if mixture == "mixed":
            assert calls == {"model_a": 100, "model_b": 100, "model_c": 100}  # 50 agents on each, 2 rounds
        else:
            assert calls[f"model_{mixture}"] == 300 and sum(calls.values()) == 300
    # The stand-ins differ (b reasons deepest, c shallowest); the mixture sits between them.
    assert means["b"] < means["a"] < means["c"]
    assert means["b"] < means["mixed"] < means["c"]


def test_temperature_spreads_the_guesses(tmp_path):
    cold = run(tmp_path, "cold", temperature=0.0, players=300, rounds=1)[1][0]
    hot = run(tmp_path, "hot", temperature=1.5, players=300, rounds=1)[1][0]
    assert hot["std_guess"] > 2 * cold["std_guess"]


def test_a_million_agents_compile_and_a_large_round_runs(tmp_path):
    plan = compile_file(str(GUESS), ["players=1000000"]).plan
    assert plan["populations"]["players"]["size"] == 1_000_000
    summary, metrics, _ = run(tmp_path, "large", players=20_000, rounds=1)
    assert metrics[0]["answered"] == 20_000 and summary["agents"] == 20_000


def test_the_same_file_compiles_on_real_models(tmp_path):
    # What a user does: point the import at models_vllm.pop. Copy the folder so the repo is untouched.
    copy = tmp_path / "paper"
    shutil.copytree(PAPER, copy)
    scenario = copy / "guess.pop"
    text = scenario.read_text()
    assert text.count('import "models.pop"') == 1
    scenario.write_text(text.replace('import "models.pop"', 'import "models_vllm.pop"'))
    plan = compile_file(str(scenario), ["temperature=0.3", "mixture=mixed", "players=1500"]).plan
    for name in ("model_a", "model_b", "model_c"):
        model = plan["models"][name]
        assert model["provider"] == "openai" and model["settings"]["temperature"] == 0.3
    assert plan["models"]["writer"]["provider"] == "openai"


def test_check_and_explain_accept_every_setup(capsys):
    from populace.cli.main import main

    assert main(["check", str(GUESS)]) == 0
    for setup in (["variant=famous"], ["grouping=both"], ["mixture=mixed", "players=1500"], ["temperature=0"]):
        assert main(["explain", str(GUESS), *[a for s in setup for a in ("--set", s)]]) == 0
    out = capsys.readouterr().out
    assert "6,000 agents" in out and "500 agents (33%), model model_b" in out
