"""`populace sweep`: the grid, replicates and their seeds, the table's contents, failing runs recorded."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from populace.cli.main import main
from populace.cli.sweep import SweepError, parse_grid, plan_runs, replicate_seed

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "tests" / "fixtures" / "sweep" / "tiny.pop"


def test_grid_parses_names_and_values():
    assert parse_grid(["variant=plain, famous", "param.rounds=3"]) == {"variant": ["plain", "famous"], "rounds": ["3"]}
    for bad in (["variant"], ["=1"], ["a=1,"], ["a=1,1"], ["a=1", "a=2"], ["1a=2"]):
        with pytest.raises(SweepError):
            parse_grid(bad)


def test_every_combination_times_every_replicate(tmp_path):
    runs = plan_runs({"a": ["1", "2"], "b": ["x", "y", "z"]}, 2, 7, str(tmp_path))
    assert len(runs) == 12
    assert [r.index for r in runs] == list(range(12))
    combos = {(r.params["a"], r.params["b"], r.replicate) for r in runs}
    assert len(combos) == 12
    assert runs[0].params == {"a": "1", "b": "x"} and runs[-1].params == {"a": "2", "b": "z"}
    assert len({r.run_dir for r in runs}) == 12 and all(r.run_dir.startswith(str(tmp_path)) for r in runs)
    # Replicate 0 keeps the scenario's seed; a replicate's seed is the same in every combination
    # (common random numbers), different between replicates, and deterministic.
    assert {r.seed for r in runs if r.replicate == 0} == {7}
    assert {r.seed for r in runs if r.replicate == 1} == {replicate_seed(7, 1)}
    assert replicate_seed(7, 1) != 7 and replicate_seed(7, 1) == replicate_seed(7, 1)
    assert len({replicate_seed(7, i) for i in range(100)}) == 100
    assert all(0 <= replicate_seed(s, i) < 2**31 for s in (0, 7, 2**40) for i in range(1, 5))


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory):
    sweep_dir = tmp_path_factory.mktemp("sweep") / "tiny"
    code = main(["sweep", str(TINY), "--grid", "fail=0,1", "--grid", "scale=1,2", "--replicates", "2",
                 "--executor", "local", "--parallel", "2", "--sweep-dir", str(sweep_dir), "--set", "players=40"])
    return code, sweep_dir


def test_sweep_writes_one_run_directory_per_run(local_sweep):
    code, sweep_dir = local_sweep
    assert code == 1  # some runs failed
    runs = sorted(p for p in sweep_dir.iterdir() if p.is_dir())
    assert len(runs) == 8
    manifest = json.loads((sweep_dir / "sweep.json").read_text())
    assert manifest["grid"] == {"fail": ["0", "1"], "scale": ["1", "2"]} and manifest["replicates"] == 2
    assert [r["status"] for r in manifest["runs"]] == ["finished"] * 4 + ["failed"] * 4
    for run in manifest["runs"]:
        summary = json.loads((Path(run["run_dir"]) / "summary.json").read_text())
        assert summary["seed"] == run["seed"] and summary["params"]["players"] == 40
        assert summary["params"]["fail"] == int(run["params"]["fail"])


def test_table_holds_params_seed_replicate_and_metrics(local_sweep):
    _, sweep_dir = local_sweep
    table = pd.read_parquet(sweep_dir / "sweep.parquet")
    csv = pd.read_csv(sweep_dir / "sweep.csv")
    assert len(table) == len(csv)
    assert list(table.columns[:10]) == ["fail", "scale", "players", "run", "replicate", "seed", "status", "error",
                                        "seconds", "run_dir"]  # swept params, then those --set fixed
    assert table["scale"].dtype == "float64" and table["fail"].dtype == "int64"  # typed like the params
    finished = table[table["status"] == "finished"]
    # A finished run: two rounds, two records each.
    assert finished.groupby("run").size().tolist() == [4, 4, 4, 4]
    assert finished["error"].isna().all()
    rounds = finished.dropna(subset=["mean_pick"])
    assert sorted(rounds["round"].unique()) == [1, 2]
    # Common random numbers: within a replicate, scale=2 doubles exactly what scale=1 recorded.
    by = rounds.set_index(["replicate", "round", "scale"])["mean_pick"]
    for replicate in (0, 1):
        for rnd in (1, 2):
            assert by[(replicate, rnd, 2.0)] == pytest.approx(2 * by[(replicate, rnd, 1.0)])
    assert by[(0, 1, 1.0)] != by[(1, 1, 1.0)]  # replicates differ
    assert set(finished["seed"]) == {11, replicate_seed(11, 1)}
    spread = json.loads(rounds["spread"].iloc[0])  # nested values are JSON text
    assert sum(spread["counts"]) == 40
    assert (csv["mean_pick"].dropna().to_numpy() == table["mean_pick"].dropna().to_numpy()).all()


def test_failing_run_is_recorded_without_stopping_the_others(local_sweep):
    _, sweep_dir = local_sweep
    table = pd.read_parquet(sweep_dir / "sweep.parquet")
    failed = table[table["status"] == "failed"]
    assert sorted(failed["run"].unique()) == [4, 5, 6, 7] and set(failed["fail"]) == {1}
    assert failed["error"].str.contains("index 1 is out of range").all()
    assert failed["error"].str.contains("tiny.pop:").all()  # the scenario line that failed
    # The record made before the failure is kept.
    assert failed.groupby("run").size().tolist() == [1, 1, 1, 1] and failed["mean_pick"].notna().all()


def test_a_value_that_does_not_compile_fails_only_its_runs(tmp_path, capsys):
    code = main(["sweep", str(TINY), "--grid", "players=30,lots", "--executor", "local", "--parallel", "1",
                 "--sweep-dir", str(tmp_path / "s")])
    assert code == 1
    table = pd.read_csv(tmp_path / "s" / "sweep.csv")
    assert table.groupby("players")["status"].first().to_dict() == {"30": "finished", "lots": "failed"}
    error = table[table["players"] == "lots"]["error"].iloc[0]
    assert "E1021" in error and "players" in error
    out = capsys.readouterr()
    assert "[2/2]" in out.out and "1 of 2 runs finished" in out.out


def test_usage_errors(tmp_path, capsys):
    assert main(["sweep", str(TINY), "--grid", "nope=1,2", "--executor", "local", "--sweep-dir", str(tmp_path / "a")]) == 2
    assert "no param `nope`" in capsys.readouterr().err
    assert main(["sweep", str(TINY), "--grid", "rounds", "--executor", "local"]) == 2
    assert main(["sweep", str(TINY), "--replicates", "0", "--executor", "local", "--sweep-dir", str(tmp_path / "b")]) == 2


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["1", "2"])
def test_sweep_on_one_shared_ray(tmp_path, ray_session, local_sweep, parallel):
    code = main(["sweep", str(TINY), "--grid", "fail=0,1", "--executor", "ray", "--shards", "2", "--parallel", parallel,
                 "--sweep-dir", str(tmp_path / "ray"), "--set", "players=40"])
    assert code == 1
    assert ray_session.is_initialized()  # the sweep used the Ray it found and left it up
    table = pd.read_parquet(tmp_path / "ray" / "sweep.parquet")
    assert table.groupby("fail")["status"].first().to_dict() == {0: "finished", 1: "failed"}
    # Same params and seed as the local sweep's first run: the same records, whatever the executor.
    local = pd.read_parquet(local_sweep[1] / "sweep.parquet")
    ours = table[table["fail"] == 0]["mean_pick"].dropna().tolist()
    assert ours == local[local["run"] == 0]["mean_pick"].dropna().tolist()
    summary = json.loads((Path(table["run_dir"].iloc[0]) / "summary.json").read_text())
    assert summary["executor"] == "ray" and summary["shards"] == {"players": 2}


def test_a_stopped_run_ends_a_sequential_sweep(tmp_path, monkeypatch):
    from populace.cli import sweep

    real = sweep.execute_run

    def stop_the_second(file, run, *args):
        if run.index == 1:  # what a run interrupted by Ctrl-C returns: the driver ends it "stopped"
            return sweep.RunResult(run, "stopped")
        return real(file, run, *args)

    monkeypatch.setattr(sweep, "execute_run", stop_the_second)
    outcome = sweep.run_sweep(str(TINY), {"players": ["10", "20", "30"]}, executor="local", parallel=1,
                              sweep_dir=str(tmp_path / "s"))
    assert [r.status for r in outcome["runs"]] == ["finished", "stopped", "skipped"]
    table = pd.read_csv(tmp_path / "s" / "sweep.csv")
    assert table.groupby("run")["status"].first().tolist() == ["finished", "stopped", "skipped"]


@pytest.mark.slow
def test_ctrl_c_stops_the_runs_in_progress_of_a_parallel_sweep_on_ray(tmp_path, ray_session):
    """Drivers of a parallel Ray sweep run in threads, where Ctrl-C never arrives: the sweep tells
    them to stop at their next step. They end "stopped" (resumable), the rest "skipped"."""
    import _thread
    import threading
    import time

    from populace.cli import sweep

    slow = tmp_path / "slow.pop"
    slow.write_text(TINY.read_text().replace("  provider = mock\n", "  provider = mock\n  latency = 200ms\n"))
    sweep_dir = tmp_path / "s"

    def interrupt_when_both_run(runs):
        def wait():
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if all(sweep.read_records(r.run_dir) for r in runs[:2]):
                    break
                time.sleep(0.05)
            _thread.interrupt_main()  # what Ctrl-C does to the main thread
        threading.Thread(target=wait, daemon=True).start()

    outcome = sweep.run_sweep(str(slow), {"players": ["10", "20", "30"]}, executor="ray", parallel=2,
                              sweep_dir=str(sweep_dir), overrides=["rounds=40"], on_start=interrupt_when_both_run)
    statuses = [r.status for r in outcome["runs"]]
    assert statuses == ["stopped", "stopped", "skipped"]
    first = outcome["runs"][0].run.run_dir
    assert 0 < len(sweep.read_records(first)) < 80  # two records a round: it stopped well before round 40
    assert main(["resume", first, "--quiet"]) == 0
    assert [r["round"] for r in sweep.read_records(first) if "mean_pick" in r] == list(range(1, 41))


def test_after_ctrl_c_no_new_run_starts(tmp_path):
    """A worker may already hold the next run when Ctrl-C comes: the sweep's stop mark makes it a
    skipped run (and a run in progress stops at its next step); sweep.json says skipped, not pending."""
    from populace.cli import sweep

    runs = sweep.plan_runs({"players": ["10"]}, 1, 11, str(tmp_path))
    open(sweep._stop_mark(runs[0]), "w").close()
    result = sweep._interruptible(str(TINY), runs[0], [], "local", None, None)
    assert result.status == "skipped" and not (Path(runs[0].run_dir) / "summary.json").exists()
    outcome = sweep.run_sweep(str(TINY), {"players": ["10", "20"]}, executor="local", parallel=1,
                              sweep_dir=str(tmp_path / "s"))
    assert [r.status for r in outcome["runs"]] == ["finished", "finished"]  # a new sweep clears the mark
    manifest = json.loads((tmp_path / "s" / "sweep.json").read_text())
    assert [r["status"] for r in manifest["runs"]] == ["finished", "finished"]
