"""Provider batch APIs: a shard's ask sent as Anthropic Message Batches or OpenAI Batches, at half price.

In: an LLMModel with `batch = true` (its SDK clients, settings, cache, budget) and an AskBatch. Out:
Answers exactly like the direct path's (llm.py): typed values, replies, per-agent errors, usage
and a CallLog, with the same cache keys, so a batch run and a direct run share one cache.

How an ask goes, in rounds:
1. Every agent still waiting is looked up in the response cache; a hit is used as a reply.
2. The rest become one item each (custom_id: the request's cache key, 64 hex characters), sent
   as batches of at most `BATCH_ITEMS`; each batch is polled, every 0.1 s at first and then less
   often up to `batch_poll` seconds (default 10), until it has ended; its results are mapped back
   by custom_id and every reply is cached at once.
3. A reply that does not parse as the output type is re-asked in the next round (up to `reasks`);
   an errored, expired or canceled item is sent again in the next round (up to `max_retries`).
So a typed ask with no faults takes one batch per shard; each re-ask or retry costs another round.

Resume without paying twice: a batch's key (sha256 of its items' cache keys) and the provider's
batch id are committed to the cache's `batches` table before anything else happens, so an ask
that runs again after a crash (its step is redone from the checkpoint before it) finds the batch
it submitted and fetches its results instead of submitting it again.

With a budget, every item sets aside its worst case before it is submitted; the items that do not
fit are not sent, and the run stops after the ask (as on the direct path). While a batch runs, its
unfinished items count as this model's calls in flight (the CLI's and the monitor's figure).
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import time

from . import replies, requests
from .base import Answers, AskBatch, empty_values
from .budget import priced_usd, worst_case
from .cache import request_key
from .retry import RETRY_STATUS, backoff, is_connection_error, short
from .wire import parse  # a reply's text and usage, read as the direct path reads them

BATCH_ITEMS = 50_000  # OpenAI's limit per batch (Anthropic's is 100,000)
FIRST_POLL = 0.1  # seconds before the first status check; doubled up to `batch_poll`
ENDED = {"anthropic": ("ended",), "openai": ("completed", "failed", "expired", "cancelled")}


class BatchError(Exception):
    """The provider refused or lost a whole batch (not one of its items)."""


async def ask(model, batch: AskBatch, log) -> Answers:
    n = len(batch.ids)
    prompts = [batch.prompt] * n if isinstance(batch.prompt, str) else batch.prompt
    systems = [batch.system] * n if batch.system is None or isinstance(batch.system, str) else batch.system
    values = empty_values(batch.output, n)
    texts: list = [None] * n
    errors: list = [None] * n
    # agent index -> [messages, re-asks made, failed attempts of the current request]
    waiting = {i: [requests.messages(batch.memory(i) if batch.memory else [],
                                     requests.user_text(prompts[i], batch.output, batch.verbatim)), 0, 0]
               for i in range(n)}
    max_tokens = int(model.settings.get("max_tokens", 256))

    def answered(i: int, text: str) -> None:
        messages, turn, _ = waiting[i]
        value, problem = replies.parse(text, batch.output)
        texts[i] = text
        if problem is None:
            values[i] = value if not isinstance(value, bool) else float(value)
            del waiting[i]
        elif turn == model.reasks:
            errors[i] = f"unparsable reply after {model.reasks} re-asks: {problem}"
            del waiting[i]
        else:
            log.reasks += 1
            waiting[i] = [messages + [{"role": "assistant", "content": text or "(empty)"},
                                      {"role": "user", "content": replies.reask(problem, batch.output)}], turn + 1, 0]

    model.budget_hit = False
    while waiting and not model.budget_hit:
        items = []  # (agent index, cache key, request body, worst-case dollars)
        for i in list(waiting):
            messages = waiting[i][0]
            key = request_key(model.provider, model.settings["name"], model.params, systems[i], messages,
                              int(batch.ids[i]))
            hit = model.cache.get(key) if model.cache is not None else None
            if hit is not None:
                log.cache_hits += 1
                answered(i, hit[0])
            elif model.replay:
                errors[i] = "not in the cache (--replay refuses new calls)"
                del waiting[i]
            else:
                chars = sum(len(m["content"]) for m in messages) + len(systems[i] or "")
                worst = worst_case(model.price, chars, max_tokens) if model.budget else 0.0
                items.append((i, key, model.request_body(systems[i], messages), worst))
        if model.budget is not None:
            items = await _within_budget(model, items)
        if not items:
            continue  # only cache hits this round: their re-asks (if any) go out in the next
        results = await _run(model, [(key, body) for _, key, body, _ in items], log)
        for i, key, _, worst in items:
            text, usage, error = results.get(key, (None, None, "missing from the batch's results"))
            if error is None:
                log.calls += 1
                log.tokens_in += usage["input"]
                log.tokens_out += usage["output"]
                log.cache_read += usage["cache_read"]
                log.cache_write += usage["cache_write"]
                if model.budget is not None:
                    model.budget.settle(worst, priced_usd(model.price, usage["input"], usage["output"],
                                                          usage["cache_read"], usage["cache_write"]))
                if model.cache is not None:
                    model.cache.put(key, text, usage, model.name)
                answered(i, text)
                continue
            if model.budget is not None:
                model.budget.settle(worst, 0.0)  # an errored item is not billed
            waiting[i][2] += 1
            agent = int(batch.ids[i])
            if waiting[i][2] > model.max_retries:
                log.failures += 1
                log.note({"type": "model_failed", "model": model.name, "agent": agent, "error": error,
                          "attempts": waiting[i][2]})
                errors[i] = error
                del waiting[i]
            else:
                log.retries += 1
                log.note({"type": "model_retry", "model": model.name, "agent": agent, "error": error,
                          "attempt": waiting[i][2], "delay": 0})
    if model.cache is not None:
        await asyncio.to_thread(model.cache.flush)
    answers = Answers(values=values, replies=texts, errors=errors, tokens_in=log.tokens_in,
                      tokens_out=log.tokens_out, calls=log.calls)
    answers.log = log
    answers.budget_hit = model.budget_hit
    return answers


async def _within_budget(model, items: list) -> list:
    """The items whose worst case the budget still covers, in order; the rest are not sent."""
    kept = []
    for item in items:
        if not await model.budget.reserve(item[3]):
            model.budget_hit = True
            break
        kept.append(item)
    return kept


async def _run(model, items: list[tuple[str, dict]], log) -> dict:
    """Submit (or find again) and finish the batches for `items`; key -> (text, usage, error)."""
    chunks = [items[k:k + BATCH_ITEMS] for k in range(0, len(items), BATCH_ITEMS)]
    found = await asyncio.gather(*(_one(model, chunk, log) for chunk in chunks))
    return {key: result for part in found for key, result in part.items()}


async def _one(model, items: list[tuple[str, dict]], log) -> dict:
    client = model.clients[0]
    provider = Anthropic if model.provider == "anthropic" else OpenAI
    key = hashlib.sha256("\n".join([model.provider, model.settings["name"], *(k for k, _ in items)]).encode()).hexdigest()
    batch_id = model.cache.batch_id(key) if model.cache is not None else None
    if batch_id is None:
        batch_id = await _retrying(model, lambda: provider.submit(client, items))
        if model.cache is not None:
            model.cache.put_batch(key, model.provider, batch_id)  # committed before we wait on it
        log.note({"type": "batch_submitted", "model": model.name, "batch": batch_id, "items": len(items)})
    else:
        log.note({"type": "batch_resumed", "model": model.name, "batch": batch_id, "items": len(items)})
    began, delay = time.monotonic(), FIRST_POLL
    ceiling = float(model.settings.get("batch_poll", 10.0))
    # The items the provider has not finished count as calls in flight, so the CLI's and the monitor's
    # figure falls as the batch progresses (the provider's request_counts, read at each poll).
    out = len(items)
    model.in_flight_now += out
    try:
        while True:
            status, done = await _retrying(model, lambda: provider.status(client, batch_id))
            left = max(len(items) - done, 0)
            model.in_flight_now += left - out
            out = left
            if status in ENDED[model.provider]:
                break
            await asyncio.sleep(delay)
            delay = min(delay * 2, ceiling)
    finally:
        model.in_flight_now -= out
    results = await _retrying(model, lambda: provider.results(client, batch_id))
    log.note({"type": "batch_ended", "model": model.name, "batch": batch_id, "status": status,
                          "seconds": round(time.monotonic() - began, 3)})
    return results


async def _retrying(model, call):
    """A batch API call, retried like a message request (429, 5xx, dropped connections)."""
    for attempt in range(model.max_retries + 1):
        try:
            return await call()
        except Exception as e:
            status = getattr(e, "status_code", None)
            if status == 404:
                raise BatchError(f"model `{model.name}`: the server has no batch API here ({short(e)}); "
                                 "remove `batch = true` for a server without one") from None
            retryable = status in RETRY_STATUS or status is None and is_connection_error(e)
            if not retryable or attempt == model.max_retries:
                raise BatchError(f"model `{model.name}`: the batch API failed: {type(e).__name__}: {short(e)}") from None
            await asyncio.sleep(backoff(attempt, e))


def _item_error(kind: str, detail) -> str:
    return f"batch item {kind}" + (f": {detail}" if detail else "")


class Anthropic:
    """POST /v1/messages/batches, GET .../{id}, GET .../{id}/results (JSONL)."""

    @staticmethod
    async def submit(client, items) -> str:
        made = await client.messages.batches.create(requests=[{"custom_id": k, "params": body} for k, body in items])
        return made.id

    @staticmethod
    async def status(client, batch_id):
        got = await client.messages.batches.retrieve(batch_id)
        counts = got.request_counts
        return got.processing_status, counts.succeeded + counts.errored + counts.canceled + counts.expired

    @staticmethod
    async def results(client, batch_id) -> dict:
        out = {}
        async for line in await client.messages.batches.results(batch_id):
            result = line.result
            if result.type == "succeeded":
                out[line.custom_id] = (*parse("anthropic", result.message.model_dump()), None)
            else:
                error = getattr(getattr(result, "error", None), "error", None)
                out[line.custom_id] = (None, None, _item_error(result.type, getattr(error, "message", None)))
        return out


class OpenAI:
    """POST /v1/files (the JSONL of requests), POST /v1/batches, GET /v1/batches/{id}, GET /v1/files/{id}/content."""

    @staticmethod
    async def submit(client, items) -> str:
        lines = [json.dumps({"custom_id": k, "method": "POST", "url": "/v1/chat/completions", "body": body},
                            ensure_ascii=False) for k, body in items]
        uploaded = await client.files.create(file=("populace-batch.jsonl", ("\n".join(lines) + "\n").encode(),
                                                   "application/jsonl"), purpose="batch")
        made = await client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                           completion_window="24h")
        return made.id

    @staticmethod
    async def status(client, batch_id):
        got = await client.batches.retrieve(batch_id)
        counts = got.request_counts
        return got.status, (counts.completed + counts.failed) if counts else 0

    @staticmethod
    async def results(client, batch_id) -> dict:
        got = await client.batches.retrieve(batch_id)
        out = {}
        for file_id in (got.output_file_id, got.error_file_id):
            if not file_id:
                continue
            content = await client.files.content(file_id)
            for raw in content.text.splitlines():
                if not raw.strip():
                    continue
                line = json.loads(raw)
                response = line.get("response") or {}
                body = response.get("body") or {}
                if response.get("status_code") == 200 and body.get("choices"):
                    out[line["custom_id"]] = (*parse("openai", body), None)
                else:
                    error = line.get("error") or body.get("error") or {}
                    detail = error.get("message") if isinstance(error, dict) else error
                    out[line["custom_id"]] = (None, None, _item_error(f"failed ({response.get('status_code')})", detail))
        if got.status != "completed" and not out:
            raise BatchError(f"batch {batch_id} ended {got.status} with no results")
        return out
