"""Environments and interactions at run time: real runs, local and Ray with different shard counts
giving identical results, and numbers checked against the Parquet files."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from populace.compiler import compile_file
from populace.compiler.plan import plan_from_dict
from populace.runtime.environments import groups
from populace.runtime.environments import network
from populace.runtime.engine.run import run_plan

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
FIXTURES = ROOT / "tests" / "fixtures" / "run"
sys.path.insert(0, str(Path(__file__).resolve().parent))  # group_policy below, for the local executor


def group_policy(agent):
    """pick: id % 10; heard: the sum of the numbers in the last message; state: table_total * 100 + team_size."""
    if agent["prompt"] == "pick":
        return agent["id"] % 10
    if agent["prompt"] == "heard":
        role, text = agent["memory"][-1]
        return 0 if role == "assistant" else sum(int(x) for x in text.split())
    return agent["state"]["table_total"] * 100 + agent["state"]["team_size"]


def network_policy(agent):
    """degree N: N; heard: the sum of the numbers in the last message; state NAME: that state value."""
    prompt = agent["prompt"]
    if prompt.startswith("degree"):
        return int(prompt.split()[1])
    if prompt == "heard":
        role, text = agent["memory"][-1]
        return 0 if role == "assistant" else sum(int(x) for x in text.split())
    if prompt == "move":
        return ("north", "south", "east", "west", "stay")[agent["id"] % 5]
    value = agent["state"][prompt.split()[1]]
    return None if value != value else float(value)


def run(path, tmp_path, name, executor="local", shards=None, overrides=()):
    plan = plan_from_dict(compile_file(str(path), list(overrides)).plan)
    run_dir = tmp_path / name
    summary = run_plan(plan, executor=executor, shards=shards, run_dir=str(run_dir))
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return summary, metrics, run_dir, plan


def asks(run_dir: Path) -> dict:
    return {str(p.relative_to(run_dir)): pd.read_parquet(p) for p in sorted((run_dir / "asks").rglob("*.parquet"))}


def assert_same_runs(runs: dict) -> None:
    names = list(runs)
    base = runs[names[0]]
    assert base[0]["status"] == "finished"
    for name in names[1:]:
        other = runs[name]
        assert other[0]["status"] == "finished", name
        assert other[1] == base[1], name
        a, b = asks(base[2]), asks(other[2])
        assert a.keys() == b.keys()
        for key in a:
            pd.testing.assert_frame_equal(a[key], b[key])


def keys_of(plan, group: str, personas: pd.DataFrame) -> np.ndarray:
    g = plan.groups[group]
    size = plan.populations[g.population].size
    return groups.group_keys(g, size, plan.seed, np.arange(size), {c: personas[c].to_numpy() for c in personas})


# ------------------------------------------------------------------ groups
@pytest.fixture(scope="module")
def group_runs(tmp_path_factory, ray_session):
    tmp = tmp_path_factory.mktemp("groups")
    return {"local-1": run(FIXTURES / "groups.pop", tmp, "local-1", "local", 1),
            "local-4": run(FIXTURES / "groups.pop", tmp, "local-4", "local", 4),
            "ray-3": run(FIXTURES / "groups.pop", tmp, "ray-3", "ray", 3)}


def test_group_aggregates_and_messages_match_the_parquet_files(group_runs):
    summary, metrics, run_dir, plan = group_runs["local-1"]
    assert summary["status"] == "finished"
    personas = pd.read_parquet(run_dir / "personas.parquet")
    pick = pd.read_parquet(run_dir / "asks/ask.pick/part-0.parquet")["value"].to_numpy()
    heard = pd.read_parquet(run_dir / "asks/ask.heard/part-0.parquet")["value"].to_numpy()
    state = pd.read_parquet(run_dir / "asks/ask.state/part-0.parquet")["value"].to_numpy()
    tables = keys_of(plan, "tables", personas)
    teams = keys_of(plan, "teams", personas)
    # random groups of 4 (30 agents: seven of 4 and one of 2), membership from the seed
    assert sorted(np.bincount(tables).tolist()) == [2] + [4] * 7
    for i in range(30):
        mates = (tables == tables[i]) & (np.arange(30) != i)
        assert heard[i] == pick[mates & (pick > 1)].sum(), i
        assert state[i] == pick[tables == tables[i]].sum() * 100 + (teams == teams[i]).sum(), i
    assert metrics[0]["total"] == sum(pick[tables == t].sum() * (tables == t).sum() for t in set(tables))
    assert metrics[0]["biggest_team"] == max(np.unique(teams, return_counts=True)[1])


@pytest.mark.parametrize("fn", ["mean", "sum", "std"])
def test_per_group_float_aggregates_do_not_depend_on_the_sharding(fn):
    """Groups span shards: each shard sends every group's correctly rounded sum and its rest, so
    1, 2, 3 or 7 shards give the same bits, and the sum is math.fsum of the group's values."""
    import math

    rng = np.random.default_rng(5)
    keys, x = rng.integers(0, 3000, 20_000), rng.random(20_000) * 3.3
    spec = {"agg": fn, "params": {}}
    results = [groups.combine(spec, [groups.partials(spec, xs, ks) for xs, ks in
                                     zip(np.array_split(x, k), np.array_split(keys, k))])["values"] for k in (1, 2, 3, 7)]
    assert all(np.array_equal(results[0], r) for r in results[1:])
    if fn == "sum":
        unique = np.unique(keys)
        assert results[0][:50].tolist() == [math.fsum(x[keys == g].tolist()) for g in unique[:50]]


@pytest.mark.slow
def test_groups_agree_across_executors_and_shards(group_runs):
    assert_same_runs(group_runs)


# ------------------------------------------------------------------ public_goods.pop
@pytest.fixture(scope="module")
def public_goods_runs(tmp_path_factory, ray_session):
    tmp = tmp_path_factory.mktemp("public_goods")
    path = EXAMPLES / "public_goods.pop"
    return {"local-1": run(path, tmp, "local-1", "local", 1),
            "local-3": run(path, tmp, "local-3", "local", 3),
            "ray-2": run(path, tmp, "ray-2", "ray", 2)}


def test_public_goods_contributions_follow_conditional_cooperation(public_goods_runs):
    summary, metrics, run_dir, plan = public_goods_runs["local-1"]
    assert summary["status"] == "finished" and summary["errors"] == 0
    means = [m["mean_contribution"] for m in metrics]
    assert [m["round"] for m in metrics] == list(range(1, 11))
    assert all(a > b for a, b in zip(means, means[1:])), means  # cooperation unravels
    assert 8 < means[0] < 12 and means[-1] < means[0] / 3
    personas = pd.read_parquet(run_dir / "personas.parquet")
    tables = keys_of(plan, "tables", personas)
    assert np.bincount(tables).tolist() == [4] * 100
    trust = personas["trust"].to_numpy()
    earnings = np.zeros(400)
    previous = None
    for r in range(1, 11):
        c = pd.read_parquet(run_dir / f"asks/ask.contribution/round={r}/part-0.parquet")["value"].to_numpy().astype(float)
        assert c.mean() == pytest.approx(means[r - 1])
        if previous is None:
            want = np.clip(np.round(20 * trust), 0, 20)
        else:  # each agent follows its own table's contributions of the round before
            totals = np.bincount(tables, weights=previous)[tables]
            want = np.clip(np.round((0.7 + 0.25 * trust) * (totals - previous) / 3), 0, 20)
        np.testing.assert_array_equal(c, want)
        earnings += 20 - c + 2.0 * np.bincount(tables, weights=c)[tables] / 4
        assert metrics[r - 1]["mean_earnings"] == pytest.approx(earnings.mean())
        previous = c


@pytest.mark.slow
def test_public_goods_agrees_across_executors_and_shards(public_goods_runs):
    assert_same_runs(public_goods_runs)


# ------------------------------------------------------------------ networks
@pytest.fixture(scope="module")
def network_runs(tmp_path_factory, ray_session):
    tmp = tmp_path_factory.mktemp("network")
    return {"local-1": run(FIXTURES / "network.pop", tmp, "local-1", "local", 1),
            "local-3": run(FIXTURES / "network.pop", tmp, "local-3", "local", 3),
            "ray-2": run(FIXTURES / "network.pop", tmp, "ray-2", "ray", 2)}


def test_network_aggregates_degree_and_messages(network_runs):
    summary, metrics, run_dir, plan = network_runs["local-1"]
    assert summary["status"] == "finished" and summary["errors"] == 0, summary
    v = pd.read_parquet(run_dir / "personas.parquet")["v"].to_numpy()
    value = {name.removeprefix("out_"): pd.read_parquet(run_dir / f"asks/ask.{name}/part-0.parquet")["value"].to_numpy()
             for name in ("degree", "heard", "out_ring_sum", "out_world_mean", "out_follows_max")}
    n = 40
    for i in range(n):  # ring(k = 4): two neighbours on each side
        ring = [(i + d) % n for d in (-2, -1, 1, 2)]
        assert value["ring_sum"][i] == v[ring].sum()
        assert value["heard"][i] == sum(v[j] for j in sorted(ring) if v[j] > 4)
    offsets, neighbours = network.build("world", plan.environments["world"].params, n, plan.seed)
    degree = np.diff(offsets)
    np.testing.assert_array_equal(value["degree"], degree)
    assert degree.sum() == 2 * len({(min(a, b), max(a, b)) for a in range(n)
                                    for b in neighbours[offsets[a]:offsets[a + 1]].tolist()})  # symmetric
    assert 4 <= degree.mean() <= 6
    for i in range(n):
        assert value["world_mean"][i] == pytest.approx(v[neighbours[offsets[i]:offsets[i + 1]]].mean())
    # follows.csv is directed: agent i's neighbours are those it follows
    follows = {0: [1, 2], 1: [2], 2: [0], 3: [0, 39]}
    for i in range(n):
        if i in follows:
            assert value["follows_max"][i] == max(v[follows[i]])
        else:
            assert value["follows_max"][i] == -1  # no one followed: the update skipped them
    assert metrics[0]["mean_ring_sum"] == pytest.approx(value["ring_sum"].mean())


@pytest.mark.slow
def test_networks_agree_across_executors_and_shards(network_runs):
    assert_same_runs(network_runs)


def test_a_million_node_small_world_is_compact():
    offsets, neighbours = network.build("net", {"generator": {"name": "small_world", "k": 10, "p": 0.1}},
                                        1_000_000, 1)
    assert offsets.dtype == np.int64 and neighbours.dtype == np.int32
    assert 9.8 < len(neighbours) / 1_000_000 <= 10
    assert offsets.nbytes + neighbours.nbytes < 50 * 2**20
    again = network.build("net", {"generator": {"name": "small_world", "k": 10, "p": 0.1}}, 1_000_000, 1)
    np.testing.assert_array_equal(again[1], neighbours)


@pytest.mark.parametrize("generator", [{"name": "scale_free", "m": 3}, {"name": "random", "p": 0.01},
                                       {"name": "complete"}, {"name": "ring", "k": 2}])
def test_generators_are_seeded_and_undirected(generator):
    offsets, neighbours = network.build("g", {"generator": generator}, 500, 3)
    edges = {(a, b) for a in range(500) for b in neighbours[offsets[a]:offsets[a + 1]].tolist()}
    assert all((b, a) in edges for a, b in edges) and not any(a == b for a, b in edges)
    mean_degree = len(neighbours) / 500
    want = {"scale_free": (5, 6), "random": (4, 6), "complete": (499, 499), "ring": (2, 2)}[generator["name"]]
    assert want[0] <= mean_degree <= want[1], mean_degree
    again = network.build("g", {"generator": generator}, 500, 3)
    np.testing.assert_array_equal(again[1], neighbours)
    other = network.build("g", {"generator": generator}, 500, 4)
    assert generator["name"] in ("complete", "ring") or not np.array_equal(other[1], neighbours)


def test_scale_free_degrees_follow_a_power_law():
    """Preferential attachment gives P(degree >= k) ~ k^-2 (degree exponent 3), and early agents
    collect the most ties; a uniform attachment would give an exponential tail instead."""
    offsets, _ = network.build("g", {"generator": {"name": "scale_free", "m": 3}}, 100_000, 11)
    degree = np.diff(offsets)
    assert degree.min() >= 1 and abs(degree.mean() - 6) < 0.1
    ks = np.array([10, 20, 40, 80, 160])
    slope = np.polyfit(np.log(ks), np.log([(degree >= k).mean() for k in ks]), 1)[0]
    assert -2.4 < slope < -1.6, slope
    assert degree[:100].mean() > 10 * degree[-10_000:].mean()


# ------------------------------------------------------------------ rumor.pop
@pytest.fixture(scope="module")
def rumor_runs(tmp_path_factory, ray_session):
    tmp = tmp_path_factory.mktemp("rumor")
    path = EXAMPLES / "rumor.pop"
    return {"local-1": run(path, tmp, "local-1", "local", 1),
            "local-3": run(path, tmp, "local-3", "local", 3, overrides=()),
            "ray-2": run(path, tmp, "ray-2", "ray", 2)}


def test_rumor_spreads_day_by_day(rumor_runs):
    summary, metrics, run_dir, plan = rumor_runs["local-1"]
    assert summary["status"] == "finished" and summary["errors"] == 0
    shares = [m["believers"] for m in metrics]
    assert [m["day"] for m in metrics] == list(range(1, 11))
    assert all(b > a for a, b in zip(shares, shares[1:])), shares
    assert shares[-1] > 5 * shares[0]
    sources = pd.read_parquet(run_dir / "personas.parquet")["source"].to_numpy().astype(bool)
    asked = pd.read_parquet(run_dir / "asks/ask.convinced/day=1/part-0.parquet")
    assert len(asked) == 10_000 - sources.sum()  # believers are not asked again
    convinced = asked["value"].sum()
    assert shares[0] == pytest.approx((sources.sum() + convinced) / 10_000)


@pytest.mark.slow
def test_rumor_agrees_across_executors_and_shards(rumor_runs):
    assert_same_runs(rumor_runs)


# ------------------------------------------------------------------ debate.pop: a chat room
@pytest.fixture(scope="module")
def debate_runs(tmp_path_factory, ray_session):
    tmp = tmp_path_factory.mktemp("debate")
    path = EXAMPLES / "debate.pop"
    return {"local-1": run(path, tmp, "local-1", "local", 1), "ray-3": run(path, tmp, "ray-3", "ray", 3)}


def test_debate_room_keeps_the_last_posts_and_stances_follow_it(debate_runs):
    summary, metrics, run_dir, plan = debate_runs["local-1"]
    assert summary["status"] == "finished" and summary["errors"] == 0
    assert [m["round"] for m in metrics] == list(range(1, 7))
    for m in metrics:
        r = m["round"]
        stance = pd.read_parquet(run_dir / f"asks/ask.stance/round={r}/part-0.parquet")
        text = pd.read_parquet(run_dir / f"asks/ask.text/round={r}/part-0.parquet")
        assert m["pro"] == pytest.approx((stance["value"] == "pro").mean())
        # every post argues its author's stance; the room holds the last 50 posts in agent id order
        assert (text["value"].str.split(":").str[0] == stance["value"]).all()
        assert m["posts"] == 50 and m["room"] == text.sort_values("agent")["value"].tolist()[-50:]
    # the room leans con, so pro speakers drift to con round after round (and never back)
    pros = [m["pro"] for m in metrics]
    assert all(sum(p.startswith("con") for p in m["room"]) > 25 for m in metrics)
    assert all(b <= a for a, b in zip(pros, pros[1:])) and pros[-1] < pros[0] - 0.1, pros


@pytest.mark.slow
def test_debate_agrees_across_executors_and_shards(debate_runs):
    assert_same_runs(debate_runs)


# ------------------------------------------------------------------ grids
@pytest.fixture(scope="module")
def grid_runs(tmp_path_factory, ray_session):
    tmp = tmp_path_factory.mktemp("grid")
    return {"local-1": run(FIXTURES / "grid.pop", tmp, "local-1", "local", 1),
            "ray-3": run(FIXTURES / "grid.pop", tmp, "ray-3", "ray", 3)}


def _cells_near(cell, width, height, torus, moore, radius=1):
    x, y = cell % width, cell // width
    out = set()
    for dx in range(-radius, radius + 1):
        for dy in range(-radius, radius + 1):
            if (dx, dy) == (0, 0) or (not moore and abs(dx) + abs(dy) > radius):
                continue
            nx, ny = x + dx, y + dy
            if torus:
                nx, ny = nx % width, ny % height
            elif not (0 <= nx < width and 0 <= ny < height):
                continue
            out.add(ny * width + nx)
    return out | {cell}


def test_grid_moves_and_neighbourhoods(grid_runs):
    from populace.runtime.environments import builtin as environments

    summary, metrics, run_dir, plan = grid_runs["local-1"]
    assert summary["status"] == "finished" and summary["errors"] == 0, summary
    v = pd.read_parquet(run_dir / "personas.parquet")["v"].to_numpy()
    world, plain = plan.environments["world"], plan.environments["plain"]
    cells = {"world": np.array(environments.grid_positions(plan, world)),
             "plain": np.array(environments.grid_positions(plan, plain))}
    assert cells["world"].max() < 25 and cells["plain"].max() < 24
    for t in (1, 2):
        near = pd.read_parquet(run_dir / f"asks/ask.out_near/t={t}/part-0.parquet")["value"].to_numpy()
        near_plain = pd.read_parquet(run_dir / f"asks/ask.out_near_plain/t={t}/part-0.parquet")["value"].to_numpy()
        heard = pd.read_parquet(run_dir / f"asks/ask.heard/t={t}/part-0.parquet")["value"].to_numpy()
        for i in range(30):
            around = _cells_near(cells["world"][i], 5, 5, True, True)
            others = [j for j in range(30) if j != i and cells["world"][j] in around]
            assert near[i] == len(others), (t, i)
            assert heard[i] == sum(v[j] for j in others if v[j] > 4), (t, i)
            around = _cells_near(cells["plain"][i], 6, 4, False, False)
            others = [j for j in range(30) if j != i and cells["plain"][j] in around]
            assert near_plain[i] == v[others].sum(), (t, i)
        moves = pd.read_parquet(run_dir / f"asks/ask.step/t={t}/part-0.parquet")["value"].tolist()
        before = cells["plain"].copy()
        cells = {name: environments.move(env, cells[name], moves) for name, env in (("world", world), ("plain", plain))}
        x, y = before % 6, before // 6
        assert ((cells["plain"] % 6 >= 0) & (cells["plain"] // 6 < 4)).all()
        east = np.array([m == "east" for m in moves])
        np.testing.assert_array_equal(cells["plain"][east] % 6, np.minimum(x[east] + 1, 5))  # walls stop
        np.testing.assert_array_equal(cells["plain"][east] // 6, y[east])


@pytest.mark.parametrize("width, height, agents", [(12, 9, 200), (60, 50, 40)])  # dense: cell table; sparse: binary search
@pytest.mark.parametrize("torus, moore, radius", [(True, True, 1), (False, False, 2), (False, True, 2)])
def test_grid_adjacency_matches_brute_force(width, height, agents, torus, moore, radius):
    from populace.runtime.environments import builtin as environments

    class Env:
        params = {"width": width, "height": height, "torus": torus, "radius": radius,
                  "neighborhood": "moore" if moore else "von_neumann"}

    cells = np.random.default_rng(width).integers(0, width * height, agents)
    offsets, neighbours = environments.grid_adjacency(Env, cells, 5, agents - 3)
    for row, i in enumerate(range(5, agents - 3)):
        around = _cells_near(cells[i], width, height, torus, moore, radius)
        want = sorted(j for j in range(agents) if j != i and cells[j] in around)
        assert neighbours[offsets[row]:offsets[row + 1]].tolist() == want, i


@pytest.mark.slow
def test_grids_agree_across_executors_and_shards(grid_runs):
    assert_same_runs(grid_runs)


# ------------------------------------------------------------------ el_farol.pop
@pytest.fixture(scope="module")
def el_farol_runs(tmp_path_factory, ray_session):
    tmp = tmp_path_factory.mktemp("el_farol")
    path = EXAMPLES / "el_farol.pop"
    return {"local-1": run(path, tmp, "local-1", "local", 1), "ray-2": run(path, tmp, "ray-2", "ray", 2)}


def test_el_farol_attendance_oscillates_around_the_threshold(el_farol_runs):
    summary, metrics, run_dir, plan = el_farol_runs["local-1"]
    assert summary["status"] == "finished" and summary["errors"] == 0
    attendance = np.array([m["attendance"] for m in metrics])
    assert len(attendance) == 52
    settled = attendance[4:]  # after a month of learning
    assert 0.55 <= settled.mean() <= 0.65, settled.mean()
    assert ((settled >= 0.4) & (settled <= 0.8)).mean() >= 0.85
    assert settled.std() > 0.03  # nobody's rule is right for long: it keeps moving
    crowded = np.array([m["crowded"] for m in metrics])
    assert 0.2 < crowded.mean() < 0.8
    week3 = pd.read_parquet(run_dir / "asks/ask.go/week=3/part-0.parquet")
    assert week3["value"].mean() == pytest.approx(attendance[2])


@pytest.mark.slow
def test_el_farol_agrees_across_executors_and_shards(el_farol_runs):
    assert_same_runs(el_farol_runs)


# ------------------------------------------------------------------ checkpoints and refusals
@pytest.mark.parametrize("example", ["debate", "public_goods"])
def test_stop_then_resume_keeps_rooms_and_groups(tmp_path, example):
    """A chat room's log lives in the driver's checkpoint; group keys are rebuilt from the seed."""
    from populace.runtime.engine.resume import resume_run
    from populace.runtime.store.rundir import request_control

    path = EXAMPLES / f"{example}.pop"
    _, whole, whole_dir, plan = run(path, tmp_path, "whole")
    broken_dir = tmp_path / "broken"
    broken_dir.mkdir()

    def listener(event):
        if event["type"] == "record" and event["values"]["round"] == 3:
            request_control(str(broken_dir), "stop")

    assert run_plan(plan, executor="local", run_dir=str(broken_dir), listener=listener)["status"] == "stopped"
    request_control(str(broken_dir), "resume")
    assert resume_run(str(broken_dir), executor="local")["status"] == "finished"
    resumed = [json.loads(x) for x in (broken_dir / "metrics.jsonl").read_text().splitlines()]
    assert resumed == whole
    a, b = asks(whole_dir), asks(broken_dir)
    assert a.keys() == b.keys()
    for key in a:
        pd.testing.assert_frame_equal(a[key], b[key])


def test_misuse_the_compiler_lets_through_is_refused_before_the_run(tmp_path):
    from populace.runtime.engine.preflight import unsupported

    text = (FIXTURES / "network.pop").read_text().replace("population nodes = param.n x Node",
                                                          "population nodes = param.n x Node\npopulation others = 5 x Node")
    text = text.replace('tell neighbors(ring) from nodes', 'tell neighbors(ring) from others')
    path = FIXTURES / "_misuse.pop"
    path.write_text(text)
    try:
        plan = plan_from_dict(compile_file(str(path)).plan)
    finally:
        path.unlink()
    problems = unsupported(plan)
    assert len(problems) == 1 and "the senders (`others`) must be the agents of `ring` (`nodes`)" in problems[0]


# ------------------------------------------------------------------ the reducers themselves
@pytest.mark.parametrize("fn", groups.PER_GROUP)
def test_group_partials_combine_to_the_same_values_whatever_the_split(fn):
    gen = np.random.default_rng(0)
    keys = gen.integers(0, 7, 200)
    values = gen.integers(0, 10, 200).astype(float)
    values[gen.random(200) < 0.1] = np.nan  # missing answers are skipped
    spec = {"agg": fn, "params": {"q": 0.3}}
    whole = groups.combine(spec, [groups.partials(spec, values, keys)])
    split = groups.combine(spec, [groups.partials(spec, values[a:b], keys[a:b]) for a, b in ((0, 50), (50, 51), (51, 200))])
    np.testing.assert_allclose(whole["values"], split["values"])
    for k, got in zip(whole["keys"].tolist(), whole["values"].tolist()):
        present = values[(keys == k) & ~np.isnan(values)]
        want = {"mean": present.mean(), "sum": present.sum(), "count": len(present), "share": (present != 0).mean(),
                "min": present.min(), "max": present.max(), "std": present.std(), "median": np.median(present),
                "quantile": np.quantile(present, 0.3)}[fn]
        assert got == pytest.approx(want)


@pytest.mark.parametrize("fn", ["mean", "sum", "count", "share", "min", "max", "std", "median", "quantile"])
def test_neighbour_aggregates_match_a_loop(fn):
    offsets, neighbours = network.build("g", {"generator": {"name": "random", "p": 0.05}}, 120, 2)
    values = np.random.default_rng(1).integers(0, 5, 120).astype(float)
    values[::11] = np.nan
    got = network.aggregate(fn, values, offsets, neighbours, {"q": 0.8})
    for i in range(120):
        present = [x for x in values[neighbours[offsets[i]:offsets[i + 1]]] if x == x]
        if not present:
            assert fn == "count" and got[i] == 0 or got[i] != got[i] or (fn == "sum" and got[i] == 0)
            continue
        arr = np.array(present)
        want = {"mean": arr.mean(), "sum": arr.sum(), "count": len(arr), "share": (arr != 0).mean(),
                "min": arr.min(), "max": arr.max(), "std": arr.std(), "median": np.median(arr),
                "quantile": np.quantile(arr, 0.8)}[fn]
        assert got[i] == pytest.approx(want), i
