"""The fake LLM server, driven by the real anthropic and openai SDKs (max_retries=0, so every fault shows)."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import anthropic
import openai
import pytest

from fake_llm import FakeLLM, default_reply, tokens

QUESTION = "Pick a number between 0 and 100."


def claude(fake: FakeLLM, **options) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=fake.url, api_key="test", max_retries=0, **options)


def gpt(fake: FakeLLM, **options) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=fake.openai_url, api_key="test", max_retries=0, **options)


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


async def ask(client: anthropic.AsyncAnthropic, prompt: str = QUESTION, **options):
    return await client.messages.create(
        model="claude-fake", max_tokens=64, messages=[{"role": "user", "content": prompt}], **options
    )


@pytest.mark.asyncio
async def test_anthropic_reply_carries_text_and_usage():
    system = "You are a farmer in a village of 500 people."
    with FakeLLM() as fake:
        async with claude(fake) as client:
            message = await ask(client, system=system)
        stats = fake.stats()
    assert message.type == "message" and message.role == "assistant" and message.model == "claude-fake"
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert message.content[0].type == "text"
    assert 0 <= int(message.content[0].text) <= 100
    assert message.content[0].text == default_reply(QUESTION, {})
    assert message.usage.input_tokens == tokens(len(system) + len(QUESTION))
    assert message.usage.output_tokens == tokens(len(message.content[0].text))
    assert message.usage.cache_creation_input_tokens == 0 and message.usage.cache_read_input_tokens == 0
    assert stats.requests == 1 and stats.by_path == {"/v1/messages": 1} and stats.by_status == {200: 1}
    assert stats.distinct_prompts == 1 and stats.prompts == [QUESTION]
    assert stats.input_tokens == message.usage.input_tokens and stats.output_tokens == message.usage.output_tokens


@pytest.mark.asyncio
async def test_text_prompts_get_a_sentence_and_replies_are_deterministic():
    with FakeLLM() as fake:
        async with claude(fake) as client:
            first = await ask(client, "Describe your morning.")
            again = await ask(client, "Describe your morning.")
    assert first.content[0].text == again.content[0].text
    assert first.content[0].text.endswith(".") and not first.content[0].text[:-1].isdigit()


@pytest.mark.asyncio
async def test_a_cached_system_prompt_is_written_once_then_read():
    system = [{"type": "text", "text": "Shared rules of the game. " * 40, "cache_control": {"type": "ephemeral"}}]
    with FakeLLM() as fake:
        async with claude(fake) as client:
            first = await ask(client, "Round 1: pick a number.", system=system)
            second = await ask(client, "Round 2: pick a number.", system=system)
    cached = tokens(len(system[0]["text"]))
    assert first.usage.cache_creation_input_tokens == cached and first.usage.cache_read_input_tokens == 0
    assert second.usage.cache_read_input_tokens == cached and second.usage.cache_creation_input_tokens == 0
    total = tokens(len(system[0]["text"]) + len("Round 2: pick a number."))
    assert second.usage.input_tokens + second.usage.cache_read_input_tokens == total


@pytest.mark.asyncio
async def test_rate_limit_raises_with_retry_after_then_succeeds():
    with FakeLLM(fail_first_n=1, fail_status=429, retry_after=2) as fake:
        async with claude(fake) as client:
            with pytest.raises(anthropic.RateLimitError) as raised:
                await ask(client)
            assert raised.value.status_code == 429
            assert raised.value.response.headers["retry-after"] == "2"
            assert raised.value.body["error"]["type"] == "rate_limit_error"
            assert (await ask(client)).content[0].text == default_reply(QUESTION, {})
        assert fake.stats().faults == {"fail": 1}


@pytest.mark.asyncio
async def test_overloaded_529_raises_overloaded_error():
    with FakeLLM(fail_first_n=1, fail_status=529) as fake:
        async with claude(fake) as client:
            with pytest.raises(anthropic.OverloadedError) as raised:
                await ask(client)
    assert isinstance(raised.value, anthropic.InternalServerError)
    assert raised.value.status_code == 529 and raised.value.body["error"]["type"] == "overloaded_error"


@pytest.mark.asyncio
async def test_500_raises_internal_server_error():
    with FakeLLM(fail_first_n=1, fail_status=500) as fake:
        async with claude(fake) as client:
            with pytest.raises(anthropic.InternalServerError) as raised:
                await ask(client)
    assert raised.value.status_code == 500 and raised.value.body["error"]["type"] == "api_error"


@pytest.mark.asyncio
async def test_dropped_connection_raises_connection_error():
    with FakeLLM(drop_first_n=1) as fake:
        async with claude(fake) as client:
            with pytest.raises(anthropic.APIConnectionError) as raised:
                await ask(client)
            assert not isinstance(raised.value, anthropic.APITimeoutError)
            assert (await ask(client)).content[0].text  # the next attempt is answered
        assert fake.stats().faults == {"drop": 1}


@pytest.mark.asyncio
async def test_slow_reply_outlasts_the_client_timeout():
    with FakeLLM(slow_first_n=1, slow_seconds=5) as fake:
        async with claude(fake, timeout=0.3) as client:
            with pytest.raises(anthropic.APITimeoutError):
                await ask(client)


@pytest.mark.asyncio
async def test_malformed_then_out_of_range_then_valid_on_reasks():
    with FakeLLM(malformed_first_n=1, out_of_range_first_n=1) as fake:
        turns = [{"role": "user", "content": QUESTION}]
        replies = []
        async with claude(fake) as client:
            for _ in range(3):
                message = await client.messages.create(model="claude-fake", max_tokens=64, messages=turns)
                replies.append(message.content[0].text)
                # the re-ask quotes the bad reply back, as a runtime does; the server counts it as attempt 2, 3
                turns = turns[:1] + [{"role": "assistant", "content": replies[-1]},
                                     {"role": "user", "content": "Answer with one integer from 0 to 100."}]
        stats = fake.stats()
    assert replies == ["I think maybe fifty?", "150", default_reply(QUESTION, {})]
    assert stats.distinct_prompts == 1 and list(stats.attempts.values()) == [3]


@pytest.mark.asyncio
async def test_peak_concurrency_counts_simultaneous_requests():
    with FakeLLM(latency=0.2) as fake:
        async with claude(fake) as client:
            started = time.perf_counter()
            await asyncio.gather(*(ask(client, f"Agent {i}: pick a number.") for i in range(50)))
            elapsed = time.perf_counter() - started
        stats = fake.stats()
    assert stats.peak_in_flight == 50 and stats.in_flight == 0
    assert stats.requests == 50 and stats.distinct_prompts == 50 and sum(stats.per_minute) == 50
    assert elapsed < 1.5  # served together, not one after another


@pytest.mark.asyncio
async def test_openai_chat_completion_and_errors():
    with FakeLLM(fail_first_n=1, fail_status=429, retry_after=1) as fake:
        messages = [{"role": "system", "content": "You are a voter."},
                    {"role": "user", "content": "Give an integer from 0 to 100."}]
        async with gpt(fake) as client:
            with pytest.raises(openai.RateLimitError) as raised:
                await client.chat.completions.create(model="gpt-fake", max_tokens=16, messages=messages)
            assert raised.value.response.headers["retry-after"] == "1"
            assert raised.value.body["code"] == "rate_limit_exceeded"
            completion = await client.chat.completions.create(model="gpt-fake", max_tokens=16, messages=messages)
        stats = fake.stats()
    assert completion.object == "chat.completion" and completion.model == "gpt-fake"
    text = completion.choices[0].message.content
    assert 0 <= int(text) <= 100 and completion.choices[0].finish_reason == "stop"
    assert completion.usage.prompt_tokens == tokens(len("You are a voter.") + len("Give an integer from 0 to 100."))
    assert completion.usage.completion_tokens == tokens(len(text))
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    assert stats.by_path == {"/v1/chat/completions": 2} and stats.by_status == {429: 1, 200: 1}


@pytest.mark.asyncio
async def test_openai_500_and_dropped_connection():
    with FakeLLM(fail_first_n=1, fail_status=500, drop_first_n=1) as fake:
        messages = [{"role": "user", "content": "Say something."}]
        async with gpt(fake) as client:
            with pytest.raises(openai.InternalServerError):
                await client.chat.completions.create(model="gpt-fake", messages=messages)
            with pytest.raises(openai.APIConnectionError):
                await client.chat.completions.create(model="gpt-fake", messages=messages)


@pytest.mark.asyncio
async def test_stop_sequences_and_max_tokens_truncate_like_the_api():
    with FakeLLM(reply=lambda prompt, request: "alpha beta gamma delta epsilon") as fake:
        go = [{"role": "user", "content": "Go."}]
        async with claude(fake) as client, gpt(fake) as chat_client:
            stopped = await ask(client, "Go.", stop_sequences=["gamma"])
            short = await client.messages.create(model="m", max_tokens=2, messages=go)
            chat = await chat_client.chat.completions.create(model="m", max_tokens=2, messages=go)
    assert stopped.content[0].text == "alpha beta " and stopped.stop_reason == "stop_sequence"
    assert stopped.stop_sequence == "gamma"
    assert short.content[0].text == "alpha be" and short.stop_reason == "max_tokens"
    assert chat.choices[0].finish_reason == "length"


@pytest.mark.asyncio
async def test_fault_rates_reproduce_across_runs():
    async def outcomes() -> list[str]:
        with FakeLLM(fail_rate=0.2, fail_status=503, malformed_rate=0.2, seed=7) as fake:
            async with claude(fake) as client:
                results = await asyncio.gather(*(ask(client, f"Agent {i}: pick a number.") for i in range(40)),
                                               return_exceptions=True)
        return [type(r).__name__ if isinstance(r, Exception) else r.content[0].text for r in results]

    first, second = await outcomes(), await outcomes()
    assert first == second
    assert 0 < first.count("ServiceUnavailableError") < 40 and 0 < first.count("I think maybe fifty?") < 40


@pytest.mark.asyncio
async def test_stats_endpoint_and_reset():
    with FakeLLM() as fake:
        async with claude(fake) as client:
            await ask(client)
        over_http = get_json(fake.url + "/_stats")
        assert over_http["requests"] == 1 and over_http["by_status"] == {"200": 1}
        fake.reset()
        assert fake.stats().requests == 0 and fake.stats().distinct_prompts == 0


def test_command_line_serves_until_terminated():
    script = Path(__file__).with_name("fake_llm.py")
    server = subprocess.Popen([sys.executable, str(script), "--port", "0", "--latency", "0"],
                              stdout=subprocess.PIPE, text=True)
    try:
        url = server.stdout.readline().split()[-1]
        assert url.startswith("http://127.0.0.1:")
        assert get_json(url + "/_stats")["requests"] == 0
    finally:
        server.terminate()
        server.wait(timeout=10)
        server.stdout.close()
    assert server.returncode == 0
