"""LLM providers: Anthropic (the `anthropic` SDK) and any OpenAI-compatible server (`openai` SDK).

In: an AskBatch of agents (system prompts, memory, prompts, the output type) and this shard's share
of the model's cluster-wide limits. Out: Answers with typed values, raw replies, per-agent errors,
token usage from the provider's own fields, and a log of retries and re-asks.

How a call goes: a bounded pool of workers (this shard's share of `in_flight`) pulls agents from a
queue; each call waits for the shard's share of `per_minute` and `tokens_per_minute`; 429, 529,
5xx, dropped connections and timeouts are retried with exponential backoff and jitter (honouring
`retry-after`) up to `max_retries`; the SDK's own retries are off so they do not multiply. A reply
that does not parse as the output type is re-asked (saying what was wrong) up to `reasks` times,
then the agent's value is missing with the error. Every reply that arrives goes into the cache
first. `in_flight` is one pool per model for the whole run (leases.py): a shard borrows what is
free while it has agents waiting and gives each permit back when its queue is empty; a Retry-After
pauses every shard. `per_minute` and `tokens_per_minute` are token buckets in the same pool, that
shards draw credits from in small chunks (limits.py); without a pool, a static share. With
a budget (budget.py), each attempt first sets aside its worst-case cost; a refused one ends the ask
(`budget_hit`): the calls in flight finish, and the driver stops the run before the step.
"""
from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field

import numpy as np

from . import replies, requests
from .requests import system_blocks
from .limits import Limiter, PooledLimiter, share
from .retry import RETRY_STATUS, backoff, is_connection_error, retry_after, short
from .budget import BudgetReached, priced_usd, worst_case
from .cache import ResponseCache, request_key
from .base import Answers, AskBatch, ModelError, empty_values

MAX_LOGGED = 50


@dataclass
class CallLog:
    retries: int = 0
    reasks: int = 0
    cache_hits: int = 0
    failures: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cache_read: int = 0
    cache_write: int = 0
    calls: int = 0
    latencies: list = field(default_factory=list)
    events: list = field(default_factory=list)  # retries and final failures, capped

    def note(self, event: dict) -> None:
        if len(self.events) < MAX_LOGGED:
            self.events.append(event)


class LLMModel:
    def __init__(self, model, shard_index: int, shards: int, cache: ResponseCache | None, replay: bool,
                 environment: dict | None = None, lease=None, budget=None):
        self.name = model.name
        self.provider = model.provider
        self.settings = model.settings
        limits = self.model_limits = model.limits
        # Calls in flight: borrowed from the run's pool for this model (leases.py), or a static share.
        self.lease = lease
        self.in_flight = int(limits.in_flight) if lease is not None else share(limits.in_flight, shard_index, shards)
        self.paused_until = 0.0  # monotonic: a Retry-After another shard was told
        self.budget = budget  # the run's hard budget (budget.py Allowance), or None
        self.price = model.price or {}
        self.budget_hit = False  # a call was refused in this ask: take no more agents
        self.system_shared = 0  # this ask's shared system prefix (characters), for the cache breakpoints
        self.per_minute = share(limits.per_minute, shard_index, shards)
        self.tokens_per_minute = share(limits.tokens_per_minute, shard_index, shards)
        self.max_retries = int(self.settings.get("max_retries", 4))
        self.reasks = int(self.settings.get("reasks", 2))
        self.timeout = float(self.settings.get("timeout", 60.0))
        self.cache = cache
        self.replay = replay
        self.in_flight_now = 0  # requests sent and not yet answered: the monitor samples it mid-step
        key_env = self.settings.get("api_key_env")
        environment = {**os.environ, **(environment or {})}
        self.api_key = environment.get(key_env) if key_env else None
        if not self.api_key and not replay:
            raise ModelError(f"model `{self.name}`: the environment variable {key_env} is not set")
        base = self.settings.get("base_url") or environment.get(
            {"anthropic": "ANTHROPIC_BASE_URL", "openai": "OPENAI_BASE_URL"}[self.provider])
        self.base_urls = base if isinstance(base, list) else [base]
        # Import the SDK now, while the shard starts, not inside the first step's timing.
        if self.provider == "anthropic":
            import anthropic  # noqa: F401
        else:
            import openai  # noqa: F401
        # Parameters that change the answer: part of the cache key.
        self.params = {k: self.settings[k] for k in ("max_tokens", "temperature", "top_p", "stop")
                       if k in self.settings}

    # ---------------------------------------------------------------- clients
    def _clients(self):
        if self.provider == "anthropic":
            import anthropic

            return [anthropic.AsyncAnthropic(api_key=self.api_key or "replay", base_url=url, max_retries=0,
                                             timeout=self.timeout) for url in self.base_urls]
        import httpx2 as httpx
        import openai

        # Default pool limits time out at ~1000 concurrent requests: size the pool to our share.
        limits = httpx.Limits(max_connections=self.in_flight + 8, max_keepalive_connections=self.in_flight + 8)
        return [openai.AsyncOpenAI(api_key=self.api_key or "replay", base_url=url, max_retries=0, timeout=self.timeout,
                                   http_client=openai.DefaultAsyncHttpxClient(limits=limits))
                for url in self.base_urls]

    def request_body(self, system, messages) -> dict:
        """The keyword arguments of the SDK's create() for one request: the body both paths send."""
        body = {"model": self.settings["name"], "max_tokens": int(self.settings.get("max_tokens", 256))}
        if self.provider == "anthropic":
            body["messages"] = messages
            if system:
                body["system"] = system_blocks(system, self.system_shared, self.settings.get("cache_prefix", True))
            if "stop" in self.settings:
                body["stop_sequences"] = self.settings["stop"]
            return body
        body["messages"] = ([{"role": "system", "content": system}] if system else []) + messages
        body.update({k: self.settings[k] for k in ("temperature", "top_p") if k in self.settings})
        if "stop" in self.settings:
            body["stop"] = self.settings["stop"]
        return body

    async def _send(self, client, system, messages):
        """One request; returns (text, usage dict)."""
        body = self.request_body(system, messages)
        if self.settings.get("transport", "lean") == "lean":
            transport = self.transports.get(id(client))
            if transport is None:
                from .wire import Transport

                transport = self.transports[id(client)] = Transport(client, self.provider, self.in_flight + 8, self.timeout)
            return await transport.send(body)
        if self.provider == "anthropic":
            resp = await client.messages.create(**body)
            text = "".join(getattr(b, "text", "") for b in resp.content)
            u = resp.usage
            return text, {"input": u.input_tokens or 0, "output": u.output_tokens or 0,
                          "cache_read": getattr(u, "cache_read_input_tokens", 0) or 0,
                          "cache_write": getattr(u, "cache_creation_input_tokens", 0) or 0}
        resp = await client.chat.completions.create(**body)
        text = resp.choices[0].message.content or ""
        u = resp.usage
        # OpenAI's automatic prefix cache: prompt_tokens counts the cached ones too; we count them
        # apart (as Anthropic reports them), so input + cache_read is the whole prompt.
        cached = getattr(getattr(u, "prompt_tokens_details", None), "cached_tokens", 0) or 0
        return text, {"input": (getattr(u, "prompt_tokens", 0) or 0) - cached,
                      "output": getattr(u, "completion_tokens", 0) or 0, "cache_read": cached, "cache_write": 0}

    async def _counted(self, client, system, messages):
        """`_send`, counted in `in_flight_now` while the request is out."""
        self.in_flight_now += 1
        try:
            return await self._send(client, system, messages)
        finally:
            self.in_flight_now -= 1

    # ---------------------------------------------------------------- one agent
    async def _call(self, clients, system, messages, sample: int, log: CallLog, agent: int):
        """Send with retries; the cache answers first and keeps every reply."""
        key = request_key(self.provider, self.settings["name"], self.params, system, messages, sample)
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                log.cache_hits += 1
                return hit[0], None
        if self.replay:
            return None, "not in the cache (--replay refuses new calls)"
        chars = sum(len(m["content"]) for m in messages) + len(system or "")
        estimate = chars // 4
        worst = worst_case(self.price, chars, int(self.settings.get("max_tokens", 256))) if self.budget else 0.0
        last_error = ""
        for attempt in range(self.max_retries + 1):
            if self.budget is not None and not await self.budget.reserve(worst):
                raise BudgetReached(f"model `{self.name}`: the run's budget cannot cover another call")
            await self.limiter.acquire(estimate)
            while time.monotonic() < self.paused_until:  # a provider asked a shard of this run to wait
                await asyncio.sleep(self.paused_until - time.monotonic())
            client = clients[(agent + attempt) % len(clients)]  # several base URLs: spread the load
            began = time.monotonic()
            try:
                text, usage = await self._counted(client, system, messages)
            except Exception as e:  # classified below: retry what can succeed later, fail the rest
                status = getattr(e, "status_code", None)
                retryable = status in RETRY_STATUS or status is None and is_connection_error(e)
                last_error = f"{type(e).__name__}" + (f" {status}" if status else "") + f": {short(e)}"
                if self.budget is not None:
                    self.budget.settle(worst, 0.0)  # a refused request is not billed
                if not retryable or attempt == self.max_retries:
                    log.failures += 1
                    log.note({"type": "model_failed", "model": self.name, "agent": agent, "error": last_error,
                              "attempts": attempt + 1})
                    return None, last_error
                delay = backoff(attempt, e)
                if self.lease is not None and retry_after(e) is not None:  # every shard waits, not only this one
                    await asyncio.get_running_loop().run_in_executor(None, self.lease.pause, delay)
                log.retries += 1
                log.note({"type": "model_retry", "model": self.name, "agent": agent, "error": last_error,
                          "attempt": attempt + 1, "delay": round(delay, 3)})
                await asyncio.sleep(delay)
                continue
            if self.budget is not None:
                self.budget.settle(worst, priced_usd(self.price, usage["input"], usage["output"],
                                                     usage["cache_read"], usage["cache_write"]))
            log.calls += 1
            log.latencies.append(time.monotonic() - began)
            log.tokens_in += usage["input"]
            log.tokens_out += usage["output"]
            log.cache_read += usage["cache_read"]
            log.cache_write += usage["cache_write"]
            if self.cache is not None:
                self.cache.put(key, text, usage, self.name)
            return text, None
        return None, last_error

    async def _agent(self, clients, batch: AskBatch, i: int, prompt: str, system, log: CallLog):
        messages = requests.messages(batch.memory(i) if batch.memory else [], prompt)
        agent = int(batch.ids[i])
        text, error = None, None
        for turn in range(self.reasks + 1):
            text, error = await self._call(clients, system, messages, agent, log, agent)
            if error is not None:
                return None, None, error
            value, problem = replies.parse(text, batch.output)
            if problem is None:
                return value, text, None
            if turn == self.reasks:
                return None, text, f"unparsable reply after {self.reasks} re-asks: {problem}"
            log.reasks += 1
            messages = messages + [{"role": "assistant", "content": text or "(empty)"},
                                   {"role": "user", "content": replies.reask(problem, batch.output)}]
        return None, text, error

    # ---------------------------------------------------------------- the batch
    def _loop(self) -> asyncio.AbstractEventLoop:
        # One event loop per model for the shard's lifetime: clients, connections and the limiter's
        # minute carry over from step to step instead of being rebuilt (and re-imported) each time.
        if getattr(self, "_event_loop", None) is None:
            import threading

            self._event_loop = asyncio.new_event_loop()
            threading.Thread(target=self._event_loop.run_forever, name=f"llm-{self.name}", daemon=True).start()
        return self._event_loop

    def ask(self, batch: AskBatch) -> Answers:
        return asyncio.run_coroutine_threadsafe(self._ask(batch), self._loop()).result()

    def close(self) -> None:
        """Close the lean path's connections and stop this model's event loop (the shard is done)."""
        loop = getattr(self, "_event_loop", None)
        if loop is None:
            return

        async def closing():
            for transport in getattr(self, "transports", {}).values():
                await transport.close()
            for client in getattr(self, "clients", None) or ():
                await client.close()  # else the SDK closes its pool when collected, on a stopped loop

        try:
            asyncio.run_coroutine_threadsafe(closing(), loop).result(timeout=10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            self._event_loop = None

    async def _ask(self, batch: AskBatch) -> Answers:
        n = len(batch.ids)
        if getattr(self, "limiter", None) is None:
            if self.lease is not None and (self.model_limits.per_minute or self.model_limits.tokens_per_minute):
                # the run's buckets, drawn in chunks of about a fifth of a second's rate
                self.limiter = PooledLimiter(self.lease, (self.model_limits.per_minute or 300) / 300)
            else:
                self.limiter = Limiter(self.per_minute, self.tokens_per_minute)
        if getattr(self, "clients", None) is None:
            self.clients = self._clients()
            self.transports: dict = {}  # client -> its lean HTTP path (wire.py), made on first use
        clients = self.clients
        if self.settings.get("batch"):  # the provider's batch API, at half price (batches.py)
            from . import batches

            try:
                return await batches.ask(self, batch, CallLog())
            finally:
                if self.budget is not None:
                    await asyncio.get_running_loop().run_in_executor(None, self.budget.give_back)
        prompts = [batch.prompt] * n if isinstance(batch.prompt, str) else batch.prompt
        systems = [batch.system] * n if batch.system is None or isinstance(batch.system, str) else batch.system
        values = empty_values(batch.output, n)
        texts: list = [None] * n
        errors: list = [None] * n
        log = CallLog()
        queue: asyncio.Queue = asyncio.Queue()
        for i in range(n):
            queue.put_nowait(i)

        self.budget_hit = False
        self.system_shared = batch.system_shared  # one ask at a time per model and shard

        async def worker():
            while not self.budget_hit:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                prompt = requests.user_text(prompts[i], batch.output, batch.verbatim)
                try:
                    value, text, error = await self._agent(clients, batch, i, prompt, systems[i], log)
                except BudgetReached:
                    # No more calls: the ones in flight finish and are cached; the run stops after the ask.
                    self.budget_hit = True
                    while not queue.empty():
                        queue.get_nowait()
                    return
                texts[i], errors[i] = text, error
                if error is None:
                    values[i] = value if not isinstance(value, bool) else float(value)

        try:
            if self.lease is None:
                await asyncio.gather(*(worker() for _ in range(min(self.in_flight, n) or 1)))
            else:
                await self._borrowing(queue, worker)
        finally:
            if self.budget is not None:
                await asyncio.get_running_loop().run_in_executor(None, self.budget.give_back)
            if isinstance(self.limiter, PooledLimiter):
                await asyncio.get_running_loop().run_in_executor(None, self.limiter.release)
        if self.cache is not None:
            await asyncio.to_thread(self.cache.flush)  # the step's replies are on disk before it ends
        answers = Answers(values=values, replies=texts, errors=errors, tokens_in=log.tokens_in,
                          tokens_out=log.tokens_out, calls=log.calls)
        answers.log = log
        answers.budget_hit = self.budget_hit
        return answers

    async def _borrowing(self, queue: asyncio.Queue, worker) -> None:
        """Run one worker per permit borrowed from the pool: ask for more every POLL seconds while
        agents wait, give each permit back when its worker finds the queue empty."""
        from .leases import POLL

        loop = asyncio.get_running_loop()
        running: set = set()
        finished: list = []
        try:
            while True:
                waiting = queue.qsize()
                if waiting > 0 and len(running) < self.in_flight:
                    grant, wait = await loop.run_in_executor(None, self.lease.take,
                                                             min(waiting, self.in_flight - len(running)))
                    if wait > 0:
                        self.paused_until = max(self.paused_until, time.monotonic() + wait)
                    running |= {asyncio.ensure_future(worker()) for _ in range(grant)}
                if not running and queue.empty():
                    break
                if running:
                    done, _ = await asyncio.wait(running, timeout=POLL, return_when=asyncio.FIRST_COMPLETED)
                else:
                    done = set()
                    await asyncio.sleep(POLL)
                if done:
                    running -= done
                    finished.extend(done)
                    await loop.run_in_executor(None, self.lease.give, len(done))
        finally:
            for task in running:
                task.cancel()
            if running:
                await asyncio.gather(*running, return_exceptions=True)
                await loop.run_in_executor(None, self.lease.give, len(running))
        for task in finished:
            task.result()  # a worker's exception is the step's

    def write(self, prompts: list[str], seed: int) -> list[str]:
        batch = AskBatch(ids=np.arange(len(prompts)), prompt=list(prompts), system=None,
                         memory_chars=np.zeros(len(prompts), dtype=np.int64), output={"kind": "str"},
                         where="write", seed=seed)
        answers = self.ask(batch)
        self.last_write_log = answers.log  # the shard folds it into the run's calls, tokens and cost
        if answers.budget_hit:
            raise ModelError(f"model `{self.name}`: the run's budget was spent before the persona texts were written")
        failed = [e for e in answers.errors if e]
        if failed:
            raise ModelError(f"model `{self.name}` could not write {len(failed)} persona text(s): {failed[0]}")
        return [str(v) for v in answers.values.tolist()]

