"""The fake LLM server's batch APIs, driven by the real anthropic and openai SDKs (no mocks, max_retries=0)."""
from __future__ import annotations

import asyncio
import json
import time
import urllib.request

import anthropic
import openai
import pytest

from fake_llm import FakeLLM, default_reply, tokens

QUESTIONS = ["Pick a number between 0 and 100.", "Describe your morning.", "Give an integer for your mood."]
LATENCY = 0.05


def claude(fake: FakeLLM) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=fake.url, api_key="test", max_retries=0)


def gpt(fake: FakeLLM) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=fake.openai_url, api_key="test", max_retries=0)


def params(prompt: str, **extra) -> dict:
    return {"model": "claude-fake", "max_tokens": 64, "messages": [{"role": "user", "content": prompt}], **extra}


def chat_body(prompt: str) -> dict:
    return {"model": "gpt-fake", "max_tokens": 64,
            "messages": [{"role": "system", "content": "You are a villager."}, {"role": "user", "content": prompt}]}


def jsonl(lines: list[dict]) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


async def until_ended(client: anthropic.AsyncAnthropic, batch_id: str, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while True:
        batch = await client.messages.batches.retrieve(batch_id)
        if batch.processing_status == "ended":
            return batch
        assert time.monotonic() < deadline, f"batch {batch_id} still {batch.processing_status}"
        await asyncio.sleep(0.01)


async def until_done(client: openai.AsyncOpenAI, batch_id: str, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while True:
        batch = await client.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "expired", "cancelled"):
            return batch
        assert time.monotonic() < deadline, f"batch {batch_id} still {batch.status}"
        await asyncio.sleep(0.01)


async def submit_openai(client: openai.AsyncOpenAI, lines: list[dict]):
    upload = await client.files.create(file=("in.jsonl", jsonl(lines), "application/jsonl"), purpose="batch")
    return upload, await client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                               completion_window="24h")


def lines_of(content) -> list[dict]:
    return [json.loads(line) for line in content.text.splitlines() if line.strip()]


@pytest.mark.asyncio
async def test_anthropic_batch_answers_as_the_direct_endpoint_does():
    system = [{"type": "text", "text": "Shared rules of the game. " * 20, "cache_control": {"type": "ephemeral"}}]
    requests = [{"custom_id": f"q{i}", "params": params(q, system=system)} for i, q in enumerate(QUESTIONS)]
    with FakeLLM(batch_latency=LATENCY) as fake:
        async with claude(fake) as client:
            created = await client.messages.batches.create(requests=requests)
            assert created.type == "message_batch" and created.id.startswith("msgbatch_")
            assert created.processing_status == "in_progress" and created.results_url is None
            assert created.ended_at is None and created.request_counts.processing == len(QUESTIONS)
            assert created.expires_at > created.created_at
            ended = await until_ended(client, created.id)
            results = [item async for item in await client.messages.batches.results(created.id)]
            direct = {q: await client.messages.create(**params(q, system=system)) for q in QUESTIONS}
        stats = fake.stats()
    assert ended.ended_at is not None and ended.ended_at >= ended.created_at
    assert ended.results_url == f"{fake.url}/v1/messages/batches/{created.id}/results"
    counts = ended.request_counts
    assert (counts.processing, counts.succeeded, counts.errored, counts.canceled, counts.expired) == (0, 3, 0, 0, 0)
    assert [item.custom_id for item in results] == ["q0", "q1", "q2"]
    for item, question in zip(results, QUESTIONS):
        assert item.result.type == "succeeded"
        message = item.result.message
        assert message.type == "message" and message.model == "claude-fake" and message.stop_reason == "end_turn"
        assert message.content[0].text == default_reply(question, {}) == direct[question].content[0].text
        assert message.usage.output_tokens == direct[question].usage.output_tokens
        assert message.usage.input_tokens == tokens(len(question))
    # the batch shares the server's prompt-cache memory: its first item wrote the system prompt, the rest read it
    cached = tokens(len(system[0]["text"]))
    first, later = results[0].result.message.usage, results[1].result.message.usage
    assert first.cache_creation_input_tokens == cached and first.cache_read_input_tokens == 0
    assert later.cache_read_input_tokens == cached and later.cache_creation_input_tokens == 0
    assert direct[QUESTIONS[0]].usage.cache_read_input_tokens == cached
    # batch items count in batch_items and the token totals, not in requests
    assert stats.batches_created == 1 and stats.batch_items == 3
    assert stats.requests == 3 and stats.by_path == {"/v1/messages": 3}
    assert [t.path for t in stats.tokens] == ["/v1/messages/batches"] * 3 + ["/v1/messages"] * 3
    assert stats.output_tokens == 2 * sum(r.result.message.usage.output_tokens for r in results)
    assert stats.distinct_prompts == 3 and all(n == 2 for n in stats.attempts.values())


@pytest.mark.asyncio
async def test_anthropic_batch_item_fault_is_errored_and_the_next_attempt_succeeds():
    with FakeLLM(batch_latency=LATENCY, fail_first_n=1, fail_status=500) as fake:
        async with claude(fake) as client:
            first = await client.messages.batches.create(requests=[{"custom_id": "a", "params": params(QUESTIONS[0])}])
            ended = await until_ended(client, first.id)
            [item] = [item async for item in await client.messages.batches.results(first.id)]
            retry = await client.messages.batches.create(requests=[{"custom_id": "a", "params": params(QUESTIONS[0])}])
            await until_ended(client, retry.id)
            [again] = [item async for item in await client.messages.batches.results(retry.id)]
        stats = fake.stats()
    assert ended.request_counts.errored == 1 and ended.request_counts.succeeded == 0
    assert item.custom_id == "a" and item.result.type == "errored"
    assert item.result.error.type == "error" and item.result.error.error.type == "api_error"
    assert "attempt 1" in item.result.error.error.message
    assert again.result.type == "succeeded" and again.result.message.content[0].text == default_reply(QUESTIONS[0], {})
    assert stats.faults == {"fail": 1} and stats.requests == 0 and stats.by_status == {}
    assert stats.batches_created == 2 and stats.batch_items == 2


@pytest.mark.asyncio
async def test_anthropic_batch_malformed_fault_is_a_succeeded_item_with_the_malformed_text():
    with FakeLLM(batch_latency=0.0, malformed_first_n=1) as fake:
        async with claude(fake) as client:
            batch = await client.messages.batches.create(requests=[
                {"custom_id": "m", "params": params(QUESTIONS[0])},
                {"custom_id": "bad", "params": {"model": "claude-fake", "messages": []}},  # no max_tokens
            ])
            ended = await until_ended(client, batch.id)
            item, bad = [item async for item in await client.messages.batches.results(batch.id)]
    assert item.result.type == "succeeded" and item.result.message.content[0].text == "I think maybe fifty?"
    assert bad.result.type == "errored" and bad.result.error.error.type == "invalid_request_error"
    assert ended.request_counts.succeeded == 1 and ended.request_counts.errored == 1


@pytest.mark.asyncio
async def test_anthropic_batch_progress_restart_and_cancel():
    requests = [{"custom_id": f"n{i}", "params": params(f"Pick a number, round {i}.")} for i in range(4)]
    with FakeLLM(batch_latency=0.6) as fake:  # items answered at 0.15, 0.3, 0.45 and 0.6 s
        async with claude(fake) as client:
            batch = await client.messages.batches.create(requests=requests)
            await asyncio.sleep(0.2)
            midway = await client.messages.batches.retrieve(batch.id)
            with pytest.raises(anthropic.AnthropicError, match="results_url"):
                await client.messages.batches.results(batch.id)
        # a new client (a restarted process) finds the batch by id
        async with claude(fake) as client:
            ended = await until_ended(client, batch.id)
            listed = [b.id async for b in client.messages.batches.list()]
            doomed = await client.messages.batches.create(requests=requests)
            canceling = await client.messages.batches.cancel(doomed.id)
            canceled = await until_ended(client, doomed.id)
            results = [item async for item in await client.messages.batches.results(doomed.id)]
            with pytest.raises(anthropic.NotFoundError):
                await client.messages.batches.retrieve("msgbatch_nope")
            with pytest.raises(anthropic.BadRequestError):
                await client.messages.batches.create(requests=[{"custom_id": "bad id!", "params": params("x")}])
        stats = fake.stats()
    assert midway.processing_status == "in_progress"
    assert 1 <= midway.request_counts.succeeded <= 3
    assert midway.request_counts.processing == 4 - midway.request_counts.succeeded
    assert ended.request_counts.succeeded == 4 and listed == [batch.id]
    assert canceling.processing_status == "canceling" and canceling.cancel_initiated_at is not None
    # canceled before its first item was due (0.15 s), unless this machine is very busy
    done = canceled.request_counts.succeeded
    assert canceled.request_counts.canceled == 4 - done >= 1 and canceled.request_counts.processing == 0
    assert [item.result.type for item in results] == ["succeeded"] * done + ["canceled"] * (4 - done)
    assert stats.batches_created == 2 and stats.batch_items == 8 and stats.requests == 0


@pytest.mark.asyncio
async def test_openai_batch_answers_as_the_direct_endpoint_does():
    lines = [{"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": chat_body(q)}
             for i, q in enumerate(QUESTIONS)]
    with FakeLLM(batch_latency=LATENCY) as fake:
        async with gpt(fake) as client:
            upload, created = await submit_openai(client, lines)
            assert upload.object == "file" and upload.purpose == "batch" and upload.status == "processed"
            assert upload.id.startswith("file-") and upload.bytes == len(jsonl(lines)) and upload.filename == "in.jsonl"
            assert created.object == "batch" and created.id.startswith("batch_") and created.status == "in_progress"
            assert created.input_file_id == upload.id and created.endpoint == "/v1/chat/completions"
            assert created.output_file_id is None and created.request_counts.total == 3
            done = await until_done(client, created.id)
            output = lines_of(await client.files.content(done.output_file_id))
            direct = {q: await client.chat.completions.create(**chat_body(q)) for q in QUESTIONS}
        stats = fake.stats()
    assert done.status == "completed" and done.completed_at is not None and done.error_file_id is None
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (3, 3, 0)
    assert [line["custom_id"] for line in output] == ["r0", "r1", "r2"]
    assert len({line["id"] for line in output}) == 3 and all(line["id"].startswith("batch_req_") for line in output)
    for line, question in zip(output, QUESTIONS):
        assert line["error"] is None and line["response"]["status_code"] == 200 and line["response"]["request_id"]
        body = openai.types.chat.ChatCompletion.model_validate(line["response"]["body"])
        assert body.object == "chat.completion" and body.choices[0].finish_reason == "stop"
        assert body.choices[0].message.content == direct[question].choices[0].message.content
        assert body.usage.model_dump() == direct[question].usage.model_dump()
    assert done.usage.input_tokens == sum(line["response"]["body"]["usage"]["prompt_tokens"] for line in output)
    assert stats.batches_created == 1 and stats.batch_items == 3
    assert stats.requests == 3 and stats.by_path == {"/v1/chat/completions": 3}
    assert [t.path for t in stats.tokens] == ["/v1/batches"] * 3 + ["/v1/chat/completions"] * 3


@pytest.mark.asyncio
async def test_openai_batch_failed_items_go_to_the_error_file():
    def fault(identity, attempt, body):  # fail the mood question only, on its first attempt
        return "fail" if attempt == 1 and "mood" in body["messages"][-1]["content"] else None

    lines = [{"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": chat_body(q)}
             for i, q in enumerate(QUESTIONS)]
    with FakeLLM(batch_latency=LATENCY, fault=fault, fail_status=429) as fake:
        async with gpt(fake) as client:
            _, created = await submit_openai(client, lines)
            done = await until_done(client, created.id)
            output = lines_of(await client.files.content(done.output_file_id))
            errors = lines_of(await client.files.content(done.error_file_id))
            error_file = await client.files.retrieve(done.error_file_id)
            with pytest.raises(openai.NotFoundError):
                await client.batches.retrieve("batch_nope")
            with pytest.raises(openai.BadRequestError):
                await submit_openai(client, [{"custom_id": "x", "method": "POST", "url": "/v1/embeddings", "body": {}}])
        stats = fake.stats()
    assert done.status == "completed" and done.request_counts.completed == 2 and done.request_counts.failed == 1
    assert [line["custom_id"] for line in output] == ["r0", "r1"]
    [failed] = errors
    assert failed["custom_id"] == "r2" and failed["response"]["status_code"] == 429
    assert failed["response"]["body"]["error"]["code"] == "rate_limit_exceeded"
    assert error_file.purpose == "batch_output" and error_file.bytes > 0
    assert stats.faults == {"fail": 1} and stats.batch_items == 3 and stats.batches_created == 1


@pytest.mark.asyncio
async def test_openai_batch_survives_a_client_restart_and_cancel():
    lines = [{"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": chat_body(f"Round {i}.")}
             for i in range(3)]
    with FakeLLM(batch_latency=0.6) as fake:
        async with gpt(fake) as client:
            _, created = await submit_openai(client, lines)
        async with gpt(fake) as client:  # a restarted client, by id only
            done = await until_done(client, created.id)
            listed = [batch.id async for batch in client.batches.list()]
            _, doomed = await submit_openai(client, lines)
            cancelling = await client.batches.cancel(doomed.id)
            cancelled = await until_done(client, doomed.id)
        with urllib.request.urlopen(f"{fake.url}/_stats", timeout=5) as response:
            served = json.loads(response.read())
    assert done.status == "completed" and done.request_counts.completed == 3 and listed == [created.id]
    assert cancelling.status == "cancelling" and cancelled.status == "cancelled"
    assert cancelled.cancelled_at is not None and cancelled.request_counts.completed < 3
    # items answered before the cancel are in the output file; none are when it came first (the usual case)
    assert (cancelled.output_file_id is None) == (cancelled.request_counts.completed == 0)
    assert served["batches_created"] == 2 and served["batch_items"] == 6 and served["requests"] == 0
