"""docs/results.md, executed: the run it describes is made with the real CLI in a fresh folder, then
every ```python block runs in order in one namespace and every ```sql block through DuckDB. A
block that breaks, or a claim about a column that stops holding, fails here."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

from populace.cli.main import main

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "results.md"


def blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", PAGE.read_text(encoding="utf-8"), flags=re.S)


def test_the_page_has_code_to_run():
    assert len(blocks("python")) >= 3 and len(blocks("sql")) >= 2


def test_every_code_block_of_the_results_page_runs(tmp_path, monkeypatch):
    import duckdb  # the test extra has duckdb and matplotlib: a missing one fails, it is never skipped
    import matplotlib  # noqa: F401
    (tmp_path / "examples").mkdir()
    shutil.copy(ROOT / "examples" / "guess_two_thirds.pop", tmp_path / "examples")
    monkeypatch.chdir(tmp_path)
    command = re.search(r"```\n(populace run [^\n]+)\n```", PAGE.read_text(encoding="utf-8")).group(1)
    assert main(command.split()[1:] + ["--quiet"]) == 0
    namespace: dict = {}
    for code in blocks("python"):
        exec(compile(code, str(PAGE), "exec"), namespace)  # the page's own code, as a reader runs it
    for query in blocks("sql"):
        assert len(duckdb.sql(query).df()) > 0
    # What the page says about the data:
    answers, metrics, bins = namespace["answers"], namespace["metrics"], namespace["bins"]
    assert sorted(answers["round"].astype(int).unique()) == [1, 2, 3] and len(answers) == 600
    assert str(answers["value"].dtype) == "int64" and answers["error"].isna().all()
    assert list(metrics["round"]) == [1, 2, 3] and metrics["mean_guess"].is_monotonic_decreasing
    assert str(bins["bin_low"].dtype) == "float64" and bins.groupby("round")["count"].sum().eq(200).all()
    assert (tmp_path / "guess.png").stat().st_size > 10_000
    assert namespace["again"].status == "finished" and len(namespace["again"].asks["guess"]) == 300
