"""Personas: marginals (KS, chi-square), clamp and round, by(), tables, derived and written fields,
shard layouts, the `populace personas` command, and `reuse per` against the fake LLM server.

Every test samples with a fixed seed, so a p-value is a fixed number, not a coin toss: ALPHA only
says how far from the declared distribution a sample may look. Each test of a distribution also
checks that the same sample *fails* the same test against a slightly wrong parameter, so a wrong
parameterisation (sd for variance, exclusive ends, a swapped beta) could not pass.
"""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from fake_llm import FakeLLM
from populace.compiler import compile_file
from populace.compiler.explain import explain
from populace.compiler.plan import Persona, plan_from_dict
from populace.compiler.plan.codec import from_json
from populace.runtime.personas import sampling as personas
from populace.cli import personas as persona_cli
from populace.cli.main import main
from populace.runtime.engine.run import run_plan

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "personas"
DISTRIBUTIONS = FIXTURES / "distributions.pop"
N = 20_000
ALPHA = 1e-3


@pytest.fixture(scope="module")
def plan():
    return compile_file(str(DISTRIBUTIONS), []).plan


@pytest.fixture(scope="module")
def persona(plan):
    return from_json(Persona, plan["personas"]["everyone"])


@pytest.fixture(scope="module")
def columns(plan, persona):
    return personas.sample(persona, 0, N, plan["scenario"]["seed"], persona_cli.model_writer(plan, plan["scenario"]["seed"]))


def ks_p(values, dist) -> float:
    return stats.kstest(np.asarray(values, dtype=float), dist.cdf).pvalue


def chi2_p(values, pmf: dict) -> float:
    """Chi-square of observed counts against `pmf` (value -> probability; the rest lumped together)."""
    values = list(np.asarray(values).tolist())
    keys = list(pmf)
    observed = np.array([sum(1 for v in values if v == k) for k in keys] + [sum(1 for v in values if v not in pmf)], float)
    expected = np.array([pmf[k] for k in keys] + [max(0.0, 1.0 - sum(pmf.values()))]) * len(values)
    if observed[-1] and expected[-1] == 0:
        return 0.0  # a value the distribution cannot produce
    keep = expected > 0
    return stats.chisquare(observed[keep], expected[keep] * observed[keep].sum() / expected[keep].sum()).pvalue


def poisson_pmf(lam: float, top: int) -> dict:
    pmf = {k: stats.poisson.pmf(k, lam) for k in range(top)}
    return pmf  # >= top is the lumped rest


def lognormal(mean, sigma):
    return stats.lognorm(s=sigma, scale=np.exp(mean))


# ------------------------------------------------------------------ marginals
CONTINUOUS = [
    # field, the declared distribution, a slightly wrong one
    ("u", stats.uniform(2, 3), stats.uniform(2, 3.1)),
    ("height", stats.norm(170, 10), stats.norm(170, 10.5)),
    ("height", stats.norm(170, 10), stats.norm(170.4, 10)),
    ("income", lognormal(10, 0.5), lognormal(10, 0.53)),
    ("income", lognormal(10, 0.5), lognormal(10.03, 0.5)),
    ("curiosity", stats.beta(2, 5), stats.beta(2, 5.3)),
    ("curiosity", stats.beta(2, 5), stats.beta(5, 2)),
    ("score", stats.uniform(0, 10), stats.uniform(0, 10.3)),  # round = 2 moves the CDF by at most 0.0005
]


@pytest.mark.parametrize("name,declared,wrong", CONTINUOUS, ids=[f"{c[0]}-{i}" for i, c in enumerate(CONTINUOUS)])
def test_continuous_marginals_pass_kolmogorov_smirnov(columns, name, declared, wrong):
    assert ks_p(columns[name], declared) > ALPHA
    assert ks_p(columns[name], wrong) < ALPHA  # the test has the power to see a wrong parameter


DISCRETE = [
    ("ui", {k: 1 / 9 for k in range(18, 27)}, {k: 1 / 8 for k in range(18, 26)}),  # both ends included
    ("ui", {k: 1 / 9 for k in range(18, 27)}, {k: 1 / 10 for k in range(18, 28)}),
    ("smoker", {True: 0.3, False: 0.7}, {True: 0.32, False: 0.68}),
    ("children", poisson_pmf(1.7, 8), poisson_pmf(1.8, 8)),
    ("gender", {"female": 0.5, "male": 0.4, "other": 0.1}, {"female": 0.5, "male": 0.42, "other": 0.08}),
    ("major", {"economics": 1 / 3, "physics": 1 / 3, "history": 1 / 3},
     {"economics": 0.36, "physics": 0.32, "history": 0.32}),
    ("occupation", {"teacher": 0.4, "nurse": 0.2, "engineer": 0.2, "farmer": 0.2},
     {"teacher": 0.42, "nurse": 0.2, "engineer": 0.19, "farmer": 0.19}),
]


@pytest.mark.parametrize("name,declared,wrong", DISCRETE, ids=[f"{c[0]}-{i}" for i, c in enumerate(DISCRETE)])
def test_discrete_marginals_pass_chi_square(columns, name, declared, wrong):
    assert chi2_p(columns[name], declared) > ALPHA
    assert chi2_p(columns[name], wrong) < ALPHA


def test_types_of_sampled_columns(columns):
    assert columns["ui"].dtype.kind == "i" and columns["children"].dtype.kind == "i"
    assert columns["smoker"].dtype == bool
    assert columns["whole"].dtype.kind == "i"  # round = 0 gives whole numbers
    assert columns["height"].dtype.kind == "f"
    assert set(columns["gender"].tolist()) == {"female", "male", "other"}


# ------------------------------------------------------------------ clamp and round
def test_clamp_piles_the_tails_on_the_bounds(columns):
    values = columns["clamped"]  # normal(170, 10, clamp = [160, 175])
    assert values.min() == 160 and values.max() == 175
    low, high = stats.norm.cdf(-1), stats.norm.sf(0.5)

    def bins(sd):
        lo, hi = stats.norm.cdf(160, 170, sd), stats.norm.sf(175, 170, sd)
        return {"low": lo, "high": hi, "inside": 1 - lo - hi}

    where = np.where(values == 160, "low", np.where(values == 175, "high", "inside"))
    assert chi2_p(where, bins(10)) > ALPHA and chi2_p(where, bins(11)) < ALPHA
    assert abs((values == 160).mean() - low) < 0.01 and abs((values == 175).mean() - high) < 0.01
    inside = values[(values > 160) & (values < 175)]
    truncated = stats.truncnorm(-1, 0.5, loc=170, scale=10)
    assert ks_p(inside, truncated) > ALPHA
    assert ks_p(inside, stats.truncnorm(-1.25, 0.625, loc=170, scale=8)) < ALPHA  # sd 8, same bounds


def test_round_keeps_the_distribution(columns):
    rounded = columns["rounded"]  # normal(50, 7, round = 1)
    assert np.array_equal(rounded, np.round(rounded, 1))
    assert abs(rounded.mean() - 50) < 0.2 and abs(rounded.std() - 7) < 0.15
    score = columns["score"]  # uniform(0, 10, round = 2)
    assert np.allclose(score * 100, np.round(score * 100)) and 0 <= score.min() and score.max() <= 10


def test_clamp_then_round_to_whole_numbers(columns):
    whole = columns["whole"]  # lognormal(3, 0.4, clamp = [10, 40], round = 0)
    assert whole.min() == 10 and whole.max() == 40

    def pmf(mean, sigma):
        d = lognormal(mean, sigma)
        out = {10: d.cdf(10.5), 40: d.sf(39.5)}
        out.update({k: d.cdf(k + 0.5) - d.cdf(k - 0.5) for k in range(11, 40)})
        return out

    assert chi2_p(whole, pmf(3, 0.4)) > ALPHA
    assert chi2_p(whole, pmf(3, 0.44)) < ALPHA


# ------------------------------------------------------------------ by(), derived, written
BY_CASES = [
    ("teacher", stats.norm(45000, 5000), stats.norm(45000, 5500)),
    ("nurse", stats.uniform(30000, 20000), stats.uniform(30000, 21000)),
    ("engineer", lognormal(11, 0.25), lognormal(11.03, 0.25)),  # else:
    ("farmer", lognormal(11, 0.25), lognormal(11, 0.28)),  # else:
]


@pytest.mark.parametrize("occupation,declared,wrong", BY_CASES, ids=[c[0] for c in BY_CASES])
def test_by_samples_each_case_from_its_distribution(columns, occupation, declared, wrong):
    salary = columns["salary"][columns["occupation"] == occupation]
    assert len(salary) > 3000 and not np.isnan(salary).any()
    assert ks_p(salary, declared) > ALPHA
    assert ks_p(salary, wrong) < ALPHA


def test_by_a_bool_field(columns):
    smokers = columns["smoker"]
    assert chi2_p(columns["kids_by"][smokers], poisson_pmf(1, 6)) > ALPHA
    assert chi2_p(columns["kids_by"][~smokers], poisson_pmf(2.5, 8)) > ALPHA
    assert chi2_p(columns["kids_by"][~smokers], poisson_pmf(1, 6)) < ALPHA


def test_derived_fields_follow_their_expressions(columns):
    assert columns["age_group"].tolist() == np.where(columns["ui"] < 22, "young", "older").tolist()
    assert np.allclose(columns["per_child"], columns["salary"] / (columns["children"] + 1))


def test_written_field_is_shared_per_combination(columns):
    frame = pd.DataFrame({k: columns[k] for k in ("age_group", "major", "background")})
    per_combination = frame.groupby(["age_group", "major"])["background"].nunique()
    assert len(per_combination) == 6 and (per_combination == 1).all()
    assert frame["background"].nunique() == 6


# ------------------------------------------------------------------ tables
def test_table_with_replacement_draws_rows_uniformly(columns):
    ids = columns["row.id"]
    assert chi2_p(ids, {k: 1 / 40 for k in range(40)}) > ALPHA
    assert chi2_p(ids, {k: (1.3 if k < 20 else 0.7) / 40 for k in range(40)}) < ALPHA
    rows = {r["id"]: r for r in personas.read_table(str(FIXTURES / "people.csv"))}
    for i in range(0, N, 997):  # every column of an agent comes from one row
        row = rows[int(ids[i])]
        assert (columns["row.name"][i], columns["row.city"][i], columns["row.height"][i]) == \
            (row["name"], row["city"], row["height"])


def test_table_in_order_gives_row_i_to_agent_i(columns):
    assert columns["ordered.id"].tolist() == [i % 40 for i in range(N)]
    assert columns["ordered.name"][41] == "person1"


WITHOUT = """
scenario unique {{
  seed = 5
  param n = 40
}}
model m {{
  provider = mock
}}
persona p {{
  who ~ sample("people.csv", replace = false)
}}
agent A {{
  persona = p
  model = m
}}
population people = param.n x A
workflow {{
  ask people "Hi" -> said: str
}}
"""


def test_table_without_replacement_uses_each_row_once(tmp_path):
    shutil.copy(FIXTURES / "people.csv", tmp_path / "people.csv")
    path = tmp_path / "unique.pop"
    path.write_text(WITHOUT.format())
    raw = compile_file(str(path), []).plan
    persona = from_json(Persona, raw["personas"]["p"])
    whole = personas.sample(persona, 0, 40, 5)
    assert sorted(whole["who.id"].tolist()) == list(range(40))
    assert whole["who.id"].tolist() != list(range(40))  # shuffled, not in file order
    parts = [personas.sample(persona, a, b, 5)["who.id"] for a, b in ((0, 7), (7, 30), (30, 40))]
    assert np.concatenate(parts).tolist() == whole["who.id"].tolist()
    assert personas.sample(persona, 0, 40, 6)["who.id"].tolist() != whole["who.id"].tolist()
    with pytest.raises(ValueError, match="fewer than the agents"):
        personas.sample(persona, 0, 41, 5)


# ------------------------------------------------------------------ determinism
def test_same_personas_whatever_the_shard_layout(plan, persona, columns):
    seed = plan["scenario"]["seed"]
    write = persona_cli.model_writer(plan, seed)
    cuts = [0, 1, 1000, 4095, 4097, 8192, 13_000, N]  # ranges that start and end inside and on blocks
    parts = [personas.sample(persona, a, b, seed, write) for a, b in zip(cuts, cuts[1:])]
    assert list(parts[0]) == list(columns)
    for name, whole in columns.items():
        joined = np.concatenate([p[name] for p in parts])
        assert joined.dtype == whole.dtype or whole.dtype == object, name
        assert pd.Series(joined).equals(pd.Series(whole)), name
    other_seed = personas.sample(persona, 0, 100, seed + 1, write)
    assert not np.array_equal(other_seed["height"], columns["height"][:100])


def test_agent_i_depends_only_on_seed_and_i(plan, persona, columns):
    seed = plan["scenario"]["seed"]
    one = personas.sample(persona, 12_345, 12_346, seed, persona_cli.model_writer(plan, seed))
    for name in ("u", "height", "gender", "salary", "row.id", "background"):
        assert one[name][0] == columns[name][12_345], name


# ------------------------------------------------------------------ the personas command
def test_personas_command_prints_what_a_run_writes(tmp_path, capsys):
    shutil.copytree(FIXTURES, tmp_path / "personas")
    path = tmp_path / "personas" / "distributions.pop"
    n = 5000  # two shards of 2500: the second starts inside the first block of 4096
    raw = compile_file(str(path), [f"n={n}"]).plan
    run_plan(plan_from_dict(raw), executor="local", shards=2, run_dir=str(tmp_path / "run"))
    written = pd.read_parquet(tmp_path / "run" / "personas.parquet")
    assert main(["personas", str(path), "--set", f"n={n}", "-n", str(n), "--format", "jsonl", "--summary-size", "0"]) == 0
    printed = pd.DataFrame([json.loads(line) for line in capsys.readouterr().out.splitlines()])
    assert list(printed.columns) == list(written.columns) and len(printed) == n
    for name in written.columns:
        if written[name].dtype.kind == "f":
            assert np.allclose(printed[name].astype(float), written[name]), name
        else:
            assert printed[name].tolist() == written[name].tolist(), name


def test_table_columns_in_personas_parquet_keep_their_types(tmp_path):
    shutil.copytree(FIXTURES, tmp_path / "personas")
    raw = compile_file(str(tmp_path / "personas" / "distributions.pop"), ["n=50"]).plan
    run_plan(plan_from_dict(raw), executor="local", shards=1, run_dir=str(tmp_path / "run"))
    written = pd.read_parquet(tmp_path / "run" / "personas.parquet")
    assert written["row.city"].isin(["Lyon", "Oslo", "Quito", "Pune", "Accra"]).all()
    assert written["row.height"].dtype.kind == "f"


def test_personas_command_formats_and_summary(capsys):
    assert main(["personas", str(DISTRIBUTIONS), "-n", "3", "--format", "csv", "--summary-size", "2000"]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].startswith("agent,u,ui,height,") and len(lines) == 4
    assert "Distribution of each field over agents 0 to 1,999" in err
    assert "gender" in err and '"female"' in err and "mean" in err and "6 distinct" in err
    assert main(["personas", str(DISTRIBUTIONS), "-n", "2", "--seed", "9", "--summary-size", "500"]) == 0
    out, _ = capsys.readouterr()
    assert "people: persona everyone, agents 0 to 1" in out and "Distribution of each field" in out


def test_summary_describes_each_kind():
    cat = persona_cli.describe(np.array(["a", "b", "a", "a"], dtype=object), {"kind": "enum", "values": ["a", "b"]})
    assert cat == '"a" 3 (75.0%), "b" 1 (25.0%)'
    assert persona_cli.describe(np.array([True, False, False, False]), {"kind": "bool"}) == \
        "true 1 (25.0%), false 3 (75.0%)"
    num = persona_cli.describe(np.array([1.0, 2.0, 3.0, 4.0, 5.0]), {"kind": "float"})
    assert num == "mean 3, sd 1.581, min 1, 25% 2, median 3, 75% 4, max 5"
    assert persona_cli.describe(np.array(["x", "y", "x"], dtype=object), {"kind": "str"}).startswith("2 distinct")


# ------------------------------------------------------------------ written backgrounds, fake LLM
WRITTEN = """
scenario bios {{
  seed = 11
  param n = 600
}}
model scribe {{
  provider = anthropic
  name = "claude-haiku-4-5"
  max_tokens = 40
}}
model offline {{
  provider = mock
}}
persona p {{
  city ~ choice("Lyon", "Oslo", "Quito")
  job  ~ choice("baker": 2, "nurse": 1, "pilot": 1, "clerk": 1)
  age  ~ uniform_int(20, 60)
  bio  ~ write(scribe, "Two sentences about a {{{{ job }}}} from {{{{ city }}}}.") {reuse}
}}
agent A {{
  persona = p
  model = offline
  system = "{{{{ persona.bio }}}}"
}}
population folks = param.n x A
workflow {{
  ask folks "Hi" -> said: str
}}
"""


@pytest.fixture
def fake_anthropic(monkeypatch):
    with FakeLLM(latency=0.0, reply=lambda prompt, request: f"Bio: {prompt}") as fake:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
        yield fake


def _written(tmp_path, reuse="reuse per (city, job)") -> Path:
    path = tmp_path / "bios.pop"
    path.write_text(WRITTEN.format(reuse=reuse))
    return path


def test_reuse_per_writes_once_per_combination_and_the_cache_pays_nothing(tmp_path, fake_anthropic):
    path = _written(tmp_path)
    raw = compile_file(str(path), []).plan
    cache = str(tmp_path / "cache.sqlite")
    first = run_plan(plan_from_dict(raw), executor="local", shards=1, run_dir=str(tmp_path / "first"), cache=cache)
    table = pd.read_parquet(tmp_path / "first" / "personas.parquet")
    combinations = table.groupby(["city", "job"]).ngroups
    assert combinations == 12 and fake_anthropic.requests == combinations
    # the written texts are in the run's calls, tokens and cost
    assert first["models"]["scribe"]["calls"] == combinations and first["models"]["scribe"]["tokens_out"] > 0
    assert first["cost_usd"] is None or first["cost_usd"] > 0
    assert (table.groupby(["city", "job"])["bio"].nunique() == 1).all()
    assert table["bio"].iloc[0] == f"Bio: Two sentences about a {table['job'].iloc[0]} from {table['city'].iloc[0]}."
    assert "folks.bio = write" not in explain(compile_file(str(path), []))
    assert "p.bio = write(scribe): 600 agents, 12 distinct texts, 12 calls" in explain(compile_file(str(path), []))
    # a second run with the same cache pays for nothing and gets the same texts
    run_plan(plan_from_dict(raw), executor="local", shards=1, run_dir=str(tmp_path / "second"), cache=cache)
    assert fake_anthropic.requests == combinations
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "second" / "personas.parquet"), table)


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_shards_agree_on_reused_texts_and_pay_once(tmp_path, fake_anthropic, request, executor):
    """Four shards hold every (city, job): still one call per combination, and the text of the
    whole population's first agent with it, as with one shard, even when the prompt also shows a
    field outside `reuse per` (age: warning W1001) that differs between the shards' first agents."""
    if executor == "ray":
        request.getfixturevalue("ray_session")
    path = _written(tmp_path, reuse="reuse per (city, job)")
    path.write_text(path.read_text().replace("from {{ city }}.", "from {{ city }}, aged {{ age }}."))
    raw = compile_file(str(path), []).plan
    one = run_plan(plan_from_dict(raw), executor="local", shards=1, run_dir=str(tmp_path / "one"))
    assert fake_anthropic.requests == 12
    four = run_plan(plan_from_dict(raw), executor=executor, shards=4, run_dir=str(tmp_path / "four"))
    assert fake_anthropic.requests == 24  # 12 more (a new cache): not 12 per shard
    assert four["models"]["scribe"]["calls"] == one["models"]["scribe"]["calls"] == 12
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "four" / "personas.parquet"),
                                  pd.read_parquet(tmp_path / "one" / "personas.parquet"))


def test_without_reuse_per_one_text_per_distinct_prompt(tmp_path, fake_anthropic):
    path = _written(tmp_path, reuse="")
    text = path.read_text().replace("from {{ city }}.", "from {{ city }}, aged {{ age }}.")
    path.write_text(text)
    raw = compile_file(str(path), ["n=300"]).plan
    run_plan(plan_from_dict(raw), executor="local", shards=1, run_dir=str(tmp_path / "run"))
    table = pd.read_parquet(tmp_path / "run" / "personas.parquet")
    assert fake_anthropic.requests == table.groupby(["city", "job", "age"]).ngroups == table["bio"].nunique()
    assert "300 agents, one text per agent, 300 calls" in explain(compile_file(str(path), ["n=300"]))


def test_personas_command_writes_with_the_llm_when_the_key_is_set(tmp_path, fake_anthropic, capsys):
    path = _written(tmp_path)
    assert main(["personas", str(path), "-n", "10", "--format", "jsonl", "--summary-size", "600"]) == 0
    out, err = capsys.readouterr()
    rows = [json.loads(line) for line in out.splitlines()]
    assert all(r["bio"] == f"Bio: Two sentences about a {r['job']} from {r['city']}." for r in rows)
    assert fake_anthropic.requests == len({(r["city"], r["job"]) for r in rows})  # the summary writes nothing
    assert "bio (text): 12 distinct combinations of (city, job) over 600 agents: 12 calls to `scribe`" in err


def test_personas_command_without_the_key_leaves_written_fields_out(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    path = _written(tmp_path)
    assert main(["personas", str(path), "-n", "4", "--format", "jsonl"]) == 0
    out, err = capsys.readouterr()
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 4 and "bio" not in rows[0] and {"city", "job", "age"} <= set(rows[0])
    assert "note: `bio` is left out: written by model `scribe` (anthropic): set ANTHROPIC_API_KEY" in err


def test_personas_command_rejects_an_unknown_population(capsys):
    assert main(["personas", str(DISTRIBUTIONS), "--population", "nobody"]) == 1
    assert "no population `nobody`; populations: people" in capsys.readouterr().err
