"""The lean HTTP path (runtime/models/wire.py) sends what the SDK sends, byte for byte, and gets
the same answers: requests captured from the real SDKs through httpx2.MockTransport."""
from __future__ import annotations

import asyncio
import json
import anthropic
import httpx2
import openai
import pandas as pd
import pytest

from fake_llm import FakeLLM
from populace.compiler import compile_file
from populace.compiler.plan import plan_from_dict
from populace.runtime.engine.run import run_plan
from populace.runtime.models.wire import Transport, body_bytes, parse, sdk_request as lean_request

ANTHROPIC_REPLY = {"id": "m", "type": "message", "role": "assistant", "model": "x",
                   "content": [{"type": "text", "text": "42"}], "stop_reason": "end_turn", "stop_sequence": None,
                   "usage": {"input_tokens": 3, "output_tokens": 1, "cache_read_input_tokens": 5,
                             "cache_creation_input_tokens": 2}}
OPENAI_REPLY = {"id": "c", "object": "chat.completion", "created": 1, "model": "x",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "42"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10,
                          "prompt_tokens_details": {"cached_tokens": 4}}}

BODIES = {
    "anthropic": [
        {"model": "claude-haiku-4-5", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]},
        {"model": "claude-haiku-4-5", "max_tokens": 64, "stop_sequences": ["\n", "END"],
         "system": [{"type": "text", "text": "Règles: “2/3” ✓", "cache_control": {"type": "ephemeral"}},
                    {"type": "text", "text": " You are 7.", "cache_control": {"type": "ephemeral"}}],
         "messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                      {"role": "user", "content": "Answer with an integer.\n\"quoted\""}]},
    ],
    "openai": [
        {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "hi é"}]},
        {"model": "meta-llama/Llama-3.1-8B", "max_tokens": 512, "temperature": 0.7, "top_p": 0.95, "stop": ["\n"],
         "messages": [{"role": "system", "content": "Tu es 日本"}, {"role": "user", "content": "x"}]},
    ],
}


def sdk_request(provider: str, body: dict):
    """The request the SDK sends for `body` (method, URL, headers, bytes), and the client."""
    seen = []

    def handler(request):
        seen.append(request)
        return httpx2.Response(200, json=ANTHROPIC_REPLY if provider == "anthropic" else OPENAI_REPLY)

    async def send():
        # made and closed in one loop: a client left open would be collected after its loop closed
        http = httpx2.AsyncClient(transport=httpx2.MockTransport(handler))
        if provider == "anthropic":
            client = anthropic.AsyncAnthropic(api_key="k-test", base_url="http://127.0.0.1:9", max_retries=0,
                                              timeout=60.0, http_client=http)
            await client.messages.create(**body)
        else:
            client = openai.AsyncOpenAI(api_key="k-test", base_url="http://127.0.0.1:9/v1", max_retries=0,
                                        timeout=60.0, http_client=http)
            await client.chat.completions.create(**body)
        await http.aclose()
        return client

    client = asyncio.run(send())
    return seen[0], client


@pytest.mark.parametrize("provider, index", [(p, i) for p, bodies in BODIES.items() for i in range(len(bodies))])
def test_the_lean_path_sends_the_sdks_bytes_and_headers(provider, index):
    body = BODIES[provider][index]
    request, client = sdk_request(provider, body)
    assert body_bytes(provider, body) == request.content
    async def built():
        return lean_request(client, provider)

    url, headers = asyncio.run(built())  # in a loop, as the shard's LLM loop builds it
    assert url == str(request.url)
    assert headers == {k: v for k, v in request.headers.items() if k not in ("host", "content-length")}


def test_replies_are_read_as_the_sdk_path_reads_them():
    assert parse("anthropic", ANTHROPIC_REPLY) == ("42", {"input": 3, "output": 1, "cache_read": 5, "cache_write": 2})
    assert parse("openai", OPENAI_REPLY) == ("42", {"input": 5, "output": 1, "cache_read": 4, "cache_write": 0})


def test_an_error_is_the_sdks_own_exception():
    client = openai.AsyncOpenAI(api_key="k", base_url="http://127.0.0.1:9/v1")
    lean = Transport(client, "openai", 8, 60.0)
    lean.url, lean.headers = lean_request(client, "openai")
    error = lean._status_error(429, {"retry-after": "2", "content-type": "application/json"},
                               json.dumps({"error": {"message": "slow down"}}).encode(), b"{}")
    assert isinstance(error, openai.RateLimitError) and error.status_code == 429
    assert error.response.headers["retry-after"] == "2"


SCENARIO = """
scenario wire {{
  seed = 4
  param n = 40
}}
model llm {{
  provider = {provider}
  name = "m"
  max_tokens = 8
  {url}
  {transport}
}}
persona p {{
  mood ~ choice("calm", "angry")
}}
agent A {{
  persona = p
  model = llm
  memory = last 4
  system = "You are {{{{persona.mood}}}}."
}}
population people = param.n x A
workflow {{
  repeat 2 as round {{
    ask people "Round {{{{round}}}}: pick a number." -> pick: int in 0..100
    record mean_pick = mean(people.pick)
  }}
}}
"""


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_both_paths_store_identical_answers(tmp_path, monkeypatch, provider):
    results = {}
    with FakeLLM(latency=0.0, malformed_first_n=1, fail_first_n=1, fail_status=529, retry_after=0.01) as fake:
        monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
        monkeypatch.setenv("OPENAI_API_KEY", "k")
        url = f'base_url = "{fake.url if provider == "anthropic" else fake.openai_url}"'
        for transport in ("lean", "sdk"):
            fake.reset()
            path = tmp_path / f"{transport}.pop"
            path.write_text(SCENARIO.format(provider=provider, url=url, transport=f'transport = "{transport}"'))
            plan = plan_from_dict(compile_file(str(path)).plan)
            summary = run_plan(plan, executor="local", run_dir=str(tmp_path / transport))
            answers = pd.concat(pd.read_parquet(p) for p in sorted((tmp_path / transport / "asks").rglob("*.parquet")))
            results[transport] = (summary, answers.reset_index(drop=True), fake.stats())
    (lean, lean_answers, lean_stats), (sdk, sdk_answers, sdk_stats) = results["lean"], results["sdk"]
    pd.testing.assert_frame_equal(lean_answers, sdk_answers)
    for key in ("calls", "tokens_in", "tokens_out", "errors"):
        assert lean[key] == sdk[key], key
    for key in ("retries", "reasks", "cache_read", "cache_write"):
        assert lean["models"]["llm"][key] == sdk["models"]["llm"][key], key
    assert lean["models"]["llm"]["retries"] > 0 and lean["models"]["llm"]["reasks"] > 0
    assert lean_stats.by_status == sdk_stats.by_status and lean_stats.input_tokens == sdk_stats.input_tokens
