"""Shared test fixtures: golden files and one Ray for the whole test run.

Goldens are refreshed with `pytest --update-goldens` and reviewed like code.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def pytest_addoption(parser):
    parser.addoption("--update-goldens", action="store_true", help="rewrite golden files from current output")


@pytest.fixture
def golden(request):
    """golden(path, text): compare text to the file at path (or write it with --update-goldens)."""
    update = request.config.getoption("--update-goldens")

    def check(path: Path, text: str) -> None:
        path = Path(path)
        if update or not path.exists():
            if not update:
                pytest.fail(f"golden {path.relative_to(ROOT)} is missing; run pytest --update-goldens and review it")
            path.write_text(text, encoding="utf-8")
            return
        expected = path.read_text(encoding="utf-8")
        assert text == expected, f"output differs from golden {path.relative_to(ROOT)} (pytest --update-goldens to refresh)"

    return check


@pytest.fixture
def in_repo_root(monkeypatch):
    """Run with the repository root as working directory, so diagnostics show repo-relative paths."""
    monkeypatch.chdir(ROOT)
    return ROOT


@pytest.fixture(scope="session")
def ray_session():
    """One real local Ray for the whole test run (starting Ray costs ~5 s)."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if not ray.is_initialized():
        # Workers import test policies (policies_for_tests) from the tests folder.
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=300 * 1024 * 1024,
                 log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).resolve().parent)}})
    yield ray
    ray.shutdown()
