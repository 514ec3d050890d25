"""Failed answers: counted per ask, the run stopped when too many fail, and the first reasons kept.

In: an ask's counts (answers asked for, answers that failed after retries and re-asks) and its
error samples (agent id and message). Out: failures.json in the run directory (per step and
iteration: counts and the first distinct errors with agent ids and the step's scenario line), and
a RunFailed when the step's share of failures is above the run's `max_failed` (default 5%), or when
every answer of the step failed whatever the threshold: a run whose calls all fail never ends
`finished`.
"""
from __future__ import annotations

from .errors import RunFailed

DEFAULT_MAX_FAILED = 0.05
FIRST_ERRORS = 3


def max_failed(plan, given: float | None) -> float:
    """The run's threshold: `--max-failed`, else the scenario's `max_failed`, else 5%."""
    if given is not None:
        return float(given)
    return float(plan.settings.get("max_failed", DEFAULT_MAX_FAILED))


def first_errors(samples: list, step, label: str) -> list[dict]:
    """The first FIRST_ERRORS distinct messages, each with the first agent that got it and the step's line."""
    seen, out = set(), []
    where = f"{step.span.file}:{step.span.line}:{step.span.column}"
    for sample in samples:
        message = sample.get("error") or ""
        if message in seen:
            continue
        seen.add(message)
        out.append({"error": message, "agent": sample.get("agent"), "step": step.id, "iteration": label, "where": where})
        if len(out) == FIRST_ERRORS:
            break
    return out


def step_failed(driver, step, label: str, asked: int, failed: int, samples: list) -> None:
    """Note the step's failures; stop the run when there are too many."""
    errors = first_errors(samples, step, label)
    record = {"step": step.id, "iteration": label, "asked": asked, "failed": failed,
              "share": round(failed / asked, 6) if asked else 0.0, "errors": errors}
    driver.failures.append(record)
    driver.run_dir.write_json("failures.json", {"max_failed": driver.max_failed, "steps": driver.failures})
    share = failed / asked if asked else 0.0
    if share > driver.max_failed or failed == asked:
        shown = "; ".join(f"agent {e['agent']}: {e['error']}" for e in errors)
        raise RunFailed(f"{failed:,} of {asked:,} answers failed ({share:.1%}, more than max_failed "
                        f"{driver.max_failed:.0%}); first errors: {shown} (all in failures.json)", step, errors=errors)
