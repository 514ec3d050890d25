"""How a failed LLM request is judged and waited on: retryable or not, and for how long.

In: the exception an SDK raised (its status code, its response headers). Out: whether another
attempt can succeed (`RETRY_STATUS`, `is_connection_error`), the delay before it (`backoff`: the
provider's retry-after(-ms) when it sent one, else exponential backoff with full jitter), whether
the provider asked every client to wait (`retry_after`), and the error as one short line (`short`).
"""
from __future__ import annotations

import random

RETRY_STATUS = (408, 409, 429, 500, 502, 503, 504, 529)


def is_connection_error(e: Exception) -> bool:
    names = {c.__name__ for c in type(e).__mro__}
    return bool(names & {"APIConnectionError", "APITimeoutError", "ConnectionError", "TimeoutError"})


def backoff(attempt: int, e: Exception) -> float:
    response = getattr(e, "response", None)
    headers = getattr(response, "headers", None) or {}
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name) if hasattr(headers, "get") else None
        if value:
            try:
                return min(float(value) * scale, 120.0)
            except ValueError:
                pass
    # Exponential backoff with full jitter: 0.5 s, 1 s, 2 s, ... capped at 30 s.
    return random.uniform(0, min(30.0, 0.5 * 2 ** attempt))


def retry_after(e: Exception):
    headers = getattr(getattr(e, "response", None), "headers", None) or {}
    return (headers.get("retry-after-ms") or headers.get("retry-after")) if hasattr(headers, "get") else None


def short(e: Exception) -> str:
    text = str(e).replace("\n", " ")
    return text if len(text) < 200 else text[:197] + "..."
