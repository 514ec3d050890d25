"""The prices table: built in, overridden by `--prices FILE`, and a model block's `price` over both."""
from __future__ import annotations

import json

import pytest

from populace.cli.main import main
from populace.compiler import compile_file
from populace.compiler.prices import BUILT_IN, PricesError, load_prices

SCENARIO = """
scenario priced {
  seed = 1
}
model a {
  provider = anthropic
  name = "claude-haiku-4-5"
}
model b {
  provider = openai
  name = "my-vllm-model"
  base_url = "http://127.0.0.1:9/v1"
}
model c {
  provider = openai
  name = "gpt-4o"
  base_url = "http://127.0.0.1:9/v1"
  price = {input: 9, output: 9}
}
agent X {
  model = a
}
population xs = 3 x X
workflow {
  ask xs "Hi?" -> n: int in 0..9
  ask xs using b "Hi?" -> m: int in 0..9
  ask xs using c "Hi?" -> k: int in 0..9
}
"""


def test_a_prices_file_replaces_and_adds_entries_and_a_block_price_wins(tmp_path):
    path = tmp_path / "s.pop"
    path.write_text(SCENARIO)
    (tmp_path / "prices.json").write_text(json.dumps({"claude-haiku-4-5": {"input": 0.8, "output": 4},
                                                      "my-vllm-model": {"input": 0, "output": 0},
                                                      "gpt-4o": {"input": 1, "output": 1}}))
    plain = compile_file(str(path)).plan["models"]
    assert plain["a"]["price"] == BUILT_IN["claude-haiku-4-5"] and plain["b"]["price"] is None
    table = load_prices(str(tmp_path / "prices.json"))
    models = compile_file(str(path), prices=table).plan["models"]
    assert models["a"]["price"] == {"input": 0.8, "output": 4.0}  # a whole entry, not merged field by field
    assert models["b"]["price"] == {"input": 0.0, "output": 0.0} and models["b"]["price_known"]
    assert models["c"]["price"] == {"input": 9.0, "output": 9.0}  # the block's own price
    assert table["gpt-4o-mini"] == BUILT_IN["gpt-4o-mini"]  # the rest of the built-in table stays


@pytest.mark.parametrize("text, message", [
    ('{"m": {"input": 1}}', "`m` needs at least `input` and `output`"),
    ('{"m": {"input": 1, "output": -1}}', "`m.output` must be a number of dollars, 0 or more"),
    ('{"m": {"input": 1, "output": 1, "cached": 1}}', "`m` has no price `cached`"),
    ('[1, 2]', "must be an object of model name -> price"),
    ('{"m": ', "is not JSON"),
])
def test_a_malformed_prices_file_is_refused_naming_the_field(tmp_path, text, message):
    (tmp_path / "p.json").write_text(text)
    with pytest.raises(PricesError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_prices(str(tmp_path / "p.json"))


def test_explain_prices_from_the_file(tmp_path, capsys):
    path = tmp_path / "s.pop"
    path.write_text(SCENARIO)
    (tmp_path / "prices.json").write_text(json.dumps({"my-vllm-model": {"input": 1000, "output": 1000}}))
    assert main(["explain", str(path), "--prices", str(tmp_path / "prices.json")]) == 0
    out = capsys.readouterr().out
    assert "b (openai)" in out and "price unknown" not in out.split("Totals")[1].split("all models")[0]
