"""Textbook models written in the language (examples/models/), run for real, checked against their
known dynamics: information cascades (`ask ... in order`), a prisoner's dilemma with re-matching
(`regroup`, bool arithmetic, `record ... by players.kind`), bounded confidence (neighbours against
oneself, `where` inside an aggregate, checked ranges) and the mixtures' per-kind starts. Each
model also runs on Ray with several shards and gives the local executor's numbers.
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import populace

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "examples" / "models"


def run(tmp_path, name: str, executor: str = "local", shards: int | None = None, **params):
    result = populace.run(str(MODELS / f"{name}.pop"), params=params, executor=executor, shards=shards,
                          run_dir=str(tmp_path / f"{name}-{executor}-{shards}"))
    assert result.status == "finished", result.summary.get("error")
    return result


# ---------------------------------------------------------------- information cascades
def _cascade_rule(signals: list[str]) -> list[str]:
    """The Bayesian guesser of Bikhchandani, Hirshleifer & Welch with ties to one's own signal."""
    out, a, b = [], 0, 0
    for s in signals:
        lead = a - b + (1 if s == "A" else -1)
        choice = "A" if lead > 0 else "B" if lead < 0 else s
        out.append(choice)
        a, b = a + (choice == "A"), b + (choice == "B")
    return out


@pytest.fixture(scope="module")
def cascades(tmp_path_factory, ray_session):
    tmp = tmp_path_factory.mktemp("cascade")
    return run(tmp, "cascade", trials=120), run(tmp, "cascade", "ray", 3, trials=6)


def test_each_guesser_sees_exactly_the_choices_before_it(cascades):
    local, _ = cascades
    agents = local.agents["people"]
    assert len(agents) == 40 * 120
    for trial, rows in agents.groupby("trial", observed=True):
        rows = rows.sort_values("agent")
        assert rows.guess.astype(str).tolist() == _cascade_rule(rows.signal.astype(str).tolist()), trial


def test_cascades_form_and_are_wrong_as_often_as_theory_says(cascades):
    local, _ = cascades
    trials = local.records["trials"]
    # Once a side leads by two, everyone after herds: the last ten agree in every trial.
    assert set(trials.late_right.round(9)) <= {0.0, 1.0}
    # Signals are right 70% of the time, yet a whole cascade goes wrong in a sizeable share of
    # trials: compare with the same rule played 20,000 times in plain Python.
    rng = random.Random(5)
    wrong = np.mean([_cascade_rule(["A" if rng.random() < 0.7 else "B" for _ in range(40)])[-1] == "B"
                     for _ in range(20_000)])
    seen = 1 - trials.late_right.mean()
    assert 0.15 < wrong < 0.35
    assert abs(seen - wrong) < 4 * np.sqrt(wrong * (1 - wrong) / len(trials))
    assert abs(trials.signals_right.mean() - 0.7) < 0.02  # the signals themselves are right 70% of the time


def test_ordered_ask_on_ray_with_shards_matches_local(cascades, tmp_path):
    _, ray = cascades
    local = run(tmp_path, "cascade", trials=6)
    pd.testing.assert_frame_equal(ray.records["trials"], local.records["trials"])
    assert ray.summary["calls"] == local.summary["calls"] == 40 * 6  # no more calls than agents


# ---------------------------------------------------------------- prisoner's dilemma
@pytest.fixture(scope="module")
def dilemmas(tmp_path_factory, ray_session):
    tmp = tmp_path_factory.mktemp("pd")
    return run(tmp, "prisoners_dilemma"), run(tmp, "prisoners_dilemma", "ray", 2)


def test_defection_pays_against_strangers(dilemmas):
    metrics = dilemmas[0].metrics
    assert list(metrics.columns[:3]) == ["round", "kind", "payoff"]
    by_kind = metrics.groupby("kind").payoff.mean()
    n = 1000  # half cooperators: a cooperator meets one with chance 499/999, a defector 500/999
    assert by_kind["Cooperator"] == pytest.approx(3 * 499 / (n - 1), abs=0.03)
    assert by_kind["Defector"] == pytest.approx((5 * 500 + 1 * 499) / (n - 1), abs=0.03)
    assert (metrics.pivot(index="round", columns="kind", values="payoff").pipe(lambda t: t.Defector > t.Cooperator)).all()


def test_pairs_are_drawn_anew_every_round(dilemmas):
    cooperators = dilemmas[0].metrics.query("kind == 'Cooperator'").payoff
    # With fixed pairs every round would repeat the first round's payoffs exactly.
    assert cooperators.nunique() > 10


def test_dilemma_on_ray_matches_local(dilemmas):
    pd.testing.assert_frame_equal(dilemmas[0].metrics, dilemmas[1].metrics)


# ---------------------------------------------------------------- bounded confidence
@pytest.fixture(scope="module")
def confidence_runs(tmp_path_factory, ray_session):
    tmp = tmp_path_factory.mktemp("hk")
    return {eps: run(tmp / str(eps), "bounded_confidence", confidence=eps, people=200, rounds=25)
            for eps in (0.05, 0.1, 0.3)} | {"ray": run(tmp, "bounded_confidence", "ray", 2, confidence=0.1,
                                                        people=200, rounds=25)}


def _clusters(opinions) -> np.ndarray:
    x = np.sort(np.asarray(opinions, dtype=float))
    cuts = np.flatnonzero(np.diff(x) > 1e-6)
    return np.array([c.mean() for c in np.split(x, cuts + 1)])


def test_wide_confidence_ends_in_consensus_narrow_in_camps(confidence_runs):
    counts = {}
    for eps in (0.05, 0.1, 0.3):
        centres = _clusters(confidence_runs[eps].agents["citizens"].opinion)
        counts[eps] = len(centres)
        # A resting state: camps lie further apart than anyone's confidence reaches.
        assert (np.diff(centres) > eps).all(), (eps, centres)
    assert counts[0.3] == 1
    assert counts[0.05] > counts[0.1] > 1
    assert 3 <= counts[0.1] <= 6  # about 1 / (2 * confidence)


def test_opinions_stay_in_their_declared_range(confidence_runs):
    for eps in (0.05, 0.1, 0.3):
        m = confidence_runs[eps].metrics
        assert (m.lowest >= 0).all() and (m.highest <= 1).all()
        assert (np.diff(m.highest - m.lowest) <= 1e-12).all()  # everyone moves inside the range: it never widens


def test_bounded_confidence_on_ray_matches_local(confidence_runs):
    pd.testing.assert_frame_equal(confidence_runs["ray"].metrics, confidence_runs[0.1].metrics)


# ---------------------------------------------------------------- mixtures: each kind its own start
@pytest.mark.parametrize("executor,shards", [("local", 1), ("ray", 3)])
def test_each_kind_of_a_mixture_starts_with_its_own_values(tmp_path, executor, shards, ray_session, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "tests"))  # policies_for_tests, for the local executor
    result = populace.run(str(ROOT / "tests" / "fixtures" / "run" / "mixture_kinds.pop"), executor=executor,
                          shards=shards, run_dir=str(tmp_path / "run"))
    assert result.status == "finished", result.summary.get("error")
    m = result.metrics.set_index("kind")
    assert m.loc["A", ["i", "f", "b", "s", "e", "n"]].tolist() == [1, 1.5, 1, 1, 1, 30]
    assert m.loc["B", ["i", "f", "b", "s", "e", "w", "n"]].tolist() == [7, -2.5, 0, 0, 0, 0, 71]
    assert 10 <= m.loc["A", "w"] <= 20  # from the persona, A's kind only
    assert m.said_b.tolist() == [0, 71]  # the python model of kind B answered; kind A's mock did not say "B"
    checks = result.records["checks"].iloc[0]
    assert checks.a_f == 1.5 and checks.trues == 30 and checks.first_b == 30
    personas = result.personas
    a = personas[personas.agent < 30] if "agent" in personas else personas.iloc[:30]
    assert checks.poorest_a == int(a.wealth.idxmin() if "agent" not in personas else a.agent[a.wealth.idxmin()])
    assert checks.rich == int((a.wealth > 15).sum())  # B's wealth starts at 0
    snapshot_free = result.asks["said"]
    assert len(snapshot_free) == 101


# ---------------------------------------------------------------- Schelling's segregation
@pytest.fixture(scope="module")
def towns(tmp_path_factory, ray_session):
    tmp = tmp_path_factory.mktemp("schelling")
    runs = {w: run(tmp / str(w), "schelling", side=30, wanted=w) for w in (0.0, 0.3, 0.8)}
    runs["ray"] = run(tmp, "schelling", "ray", 2, side=30, wanted=0.3)
    return runs


def test_mild_preferences_sort_the_town(towns):
    m = towns[0.3].metrics
    assert 0.45 < m.similar.iloc[0] < 0.55  # a random town: about half of one's neighbours are alike
    assert m.similar.iloc[-1] > 0.7  # after the moves, about three quarters (NetLogo: 70-75%)
    assert m.unhappy.iloc[-1] == 0 and len(m) < 30  # it settles, and the loop breaks
    nobody = towns[0.0].metrics
    assert len(nobody) == 1 and nobody.unhappy.iloc[0] == 0  # nobody minds: nobody moves
    picky = towns[0.8].metrics
    assert len(picky) == 30 and (picky.unhappy > 0.5).all()  # too picky to ever settle


def test_one_resident_per_cell_and_a_picture_per_cell(towns):
    agents = towns[0.3].agents["residents"]
    assert len(agents) == 810 and not agents.duplicated(["town_x", "town_y"]).any()
    assert agents.town_x.between(0, 29).all() and agents.town_y.between(0, 29).all()
    picture = agents.assign(red=agents.kind == "Red").pivot_table(index="town_y", columns="town_x", values="red")
    assert picture.shape == (30, 30) and picture.isna().sum().sum() == 900 - 810  # the empty cells


def test_schelling_on_ray_matches_local(towns):
    pd.testing.assert_frame_equal(towns["ray"].metrics, towns[0.3].metrics)
    pd.testing.assert_frame_equal(towns["ray"].agents["residents"], towns[0.3].agents["residents"])


@pytest.mark.parametrize("executor,shards", [("local", 1), ("ray", 3)])
def test_kinds_of_a_mixture_may_have_personas_of_their_own(tmp_path, executor, shards, ray_session):
    result = populace.run(str(ROOT / "tests" / "fixtures" / "run" / "mixture_personas.pop"), executor=executor,
                          shards=shards, run_dir=str(tmp_path / "run"))
    assert result.status == "finished", result.summary.get("error")
    people = result.personas.set_index("agent")
    young, old = people.loc[:39], people.loc[40:]  # 40% Y first, then O
    assert young.age.between(18, 30).all() and old.age.between(60, 90).all()
    assert young.pension.isna().all() and old.pension.between(1000, 2000).all()
    assert old.mood.isna().all() and young.mood.between(0, 1).all()
    m = result.metrics.set_index("kind")
    assert m.loc["Y", "age"] == pytest.approx(young.age.mean()) and m.loc["O", "n"] == 60
    assert np.isnan(m.loc["Y", "pension"]) and m.loc["O", "pension"] == pytest.approx(old.pension.mean())
    local = populace.run(str(ROOT / "tests" / "fixtures" / "run" / "mixture_personas.pop"), executor="local",
                         run_dir=str(tmp_path / "local"))
    pd.testing.assert_frame_equal(result.personas, local.personas)


# ---------------------------------------------------------------- beauty contest, verbatim
def test_beauty_contest_falls_towards_zero_with_the_prompt_sent_verbatim(tmp_path, ray_session):
    from populace.cli.main import main

    run_dir = tmp_path / "beauty"
    assert main(["run", str(MODELS / "beauty_contest.pop"), "--executor", "local", "--set", "players=300",
                 "--save-prompts", "100%", "--run-dir", str(run_dir), "--quiet"]) == 0
    m = populace.load(str(run_dir)).metrics
    assert m.mean_pick.is_monotonic_decreasing and m.mean_pick.iloc[-1] < 10 < m.mean_pick.iloc[0]
    assert m.target.tolist() == pytest.approx((m.mean_pick * 2 / 3).tolist(), rel=1e-9)
    picks = populace.load(str(run_dir)).asks["pick"]
    for row in m.itertuples():  # the winner is the agent closest to the target (the lowest id on ties)
        rnd = picks[picks["round"].astype(int) == row.round]
        distance = (rnd.value - row.target).abs()
        assert row.winner == rnd.agent[distance == distance.min()].min()
    prompts = pd.read_parquet(run_dir / "prompts")
    user = prompts[(prompts.agent == 7) & (prompts["round"].astype(int) == 1)].messages.iloc[0][-1]["content"]
    assert user.startswith("You are player 7 of 300.") and user.endswith("Your number:")  # nothing appended
    assert "0.67 times the mean" in user


def test_beauty_contest_on_ray_matches_local(tmp_path, ray_session):
    local = run(tmp_path, "beauty_contest", players=300, rounds=2)
    ray = run(tmp_path, "beauty_contest", "ray", 3, players=300, rounds=2)
    pd.testing.assert_frame_equal(local.metrics, ray.metrics)


# ---------------------------------------------------------------- El Farol with strategy kinds
def test_el_farol_fluctuates_around_the_threshold_and_coins_go_half_the_time(tmp_path, ray_session):
    local = run(tmp_path, "el_farol_kinds")
    weeks = local.records["weeks"].iloc[4:]
    assert 0.5 < weeks.attendance.mean() < 0.7 and weeks.attendance.std() > 0.04  # never settles
    assert 0.2 < weeks.crowded.mean() < 0.8
    by_kind = local.metrics.groupby("kind")
    assert by_kind.n.first().to_dict() == {"Flipper": 40, "Forecaster": 160}
    assert abs(by_kind.went.mean()["Flipper"] - 0.5) < 0.05
    ray = run(tmp_path, "el_farol_kinds", "ray", 2, weeks=8)
    pd.testing.assert_frame_equal(ray.metrics, run(tmp_path / "short", "el_farol_kinds", weeks=8).metrics)


# ---------------------------------------------------------------- a survey by subgroup
def test_survey_toplines_per_subgroup_are_the_respondents_answers(tmp_path, ray_session):
    result = run(tmp_path, "survey")
    answers = result.asks["yes"][["agent", "value"]].merge(result.personas, on="agent")
    region = answers.groupby("region").value.agg(["mean", "size"])
    table = result.records["by_region"].set_index("region")
    assert table.n.to_dict() == region["size"].to_dict() and table.n.sum() == 2000
    assert table.support.to_dict() == pytest.approx(region["mean"].to_dict())
    cells = result.records["cells"]
    assert len(cells) == 12 and cells.n.sum() == 2000  # 4 regions x 3 age groups
    assert set(result.records["by_age"].age_group) == {"18-34", "35-59", "60+"}
    assert result.metrics.answered.iloc[0] == 2000
    ray = run(tmp_path, "survey", "ray", 3)
    pd.testing.assert_frame_equal(ray.records["cells"], cells)


# ---------------------------------------------------------------- public goods with punishment
def test_punishment_keeps_contributions_up(tmp_path, ray_session):
    with_it = run(tmp_path / "with", "public_goods_punishment", punish=True).metrics
    without = run(tmp_path / "without", "public_goods_punishment", punish=False).metrics
    assert without.mean_contribution.is_monotonic_decreasing and without.fined.eq(0).all()
    assert without.mean_contribution.iloc[-1] < 0.5 * without.mean_contribution.iloc[0]  # decay
    assert with_it.mean_contribution.iloc[-1] > 2 * without.mean_contribution.iloc[-1]
    assert with_it.mean_contribution.iloc[-1] > 0.9 * with_it.mean_contribution.iloc[0]  # it holds up
    ray = run(tmp_path / "ray", "public_goods_punishment", "ray", 2, punish=True).metrics
    pd.testing.assert_frame_equal(ray, with_it)
