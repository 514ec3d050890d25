"""The prices table: USD per million tokens by model name, built in and overridable by a file.

In: optionally a JSON file (`--prices FILE`) mapping model names to prices:

    {"claude-haiku-4-5": {"input": 1.0, "output": 5.0, "cache_read": 0.1, "cache_write": 1.25},
     "my-vllm-model":    {"input": 0.0, "output": 0.0}}

Out: the table the models pass prices from: the built-in one with the file's entries replacing
(whole entries, not single fields) or adding models. A model block's own `price = {...}` still wins
over both. A malformed file raises PricesError naming the file, the model and the field.
"""
from __future__ import annotations

import json

BUILT_IN = {  # list prices; checked 2026-12 against the providers' pricing pages
    "claude-haiku-4-5": {"input": 1.0, "output": 5.0, "cache_read": 0.1, "cache_write": 1.25},
    "claude-sonnet-4-5": {"input": 3.0, "output": 15.0, "cache_read": 0.3, "cache_write": 3.75},
    "claude-opus-4-1": {"input": 15.0, "output": 75.0, "cache_read": 1.5, "cache_write": 18.75},
    "gpt-4o-mini": {"input": 0.15, "output": 0.6},
    "gpt-4o": {"input": 2.5, "output": 10.0},
    "gpt-4.1-mini": {"input": 0.4, "output": 1.6},
}
FIELDS = ("input", "output", "cache_read", "cache_write")


class PricesError(ValueError):
    pass


def load_prices(path: str | None) -> dict:
    """The built-in table, with the entries of the file at `path` (if any) over it."""
    table = {name: dict(price) for name, price in BUILT_IN.items()}
    if path is None:
        return table
    try:
        with open(path, encoding="utf-8") as f:
            given = json.load(f)
    except OSError as e:
        raise PricesError(f"cannot read the prices file {path}: {e.strerror or e}") from None
    except ValueError as e:
        raise PricesError(f"the prices file {path} is not JSON: {e}") from None
    if not isinstance(given, dict):
        raise PricesError(f"the prices file {path} must be an object of model name -> price, e.g. "
                          '{"claude-haiku-4-5": {"input": 1.0, "output": 5.0}}')
    for name, price in given.items():
        if not isinstance(price, dict) or not {"input", "output"} <= set(price):
            raise PricesError(f"{path}: `{name}` needs at least `input` and `output` (USD per million tokens)")
        for key, value in price.items():
            if key not in FIELDS:
                raise PricesError(f"{path}: `{name}` has no price `{key}` (prices: {', '.join(FIELDS)})")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise PricesError(f"{path}: `{name}.{key}` must be a number of dollars, 0 or more, not {value!r}")
        table[name] = {k: float(v) for k, v in price.items()}
    return table
