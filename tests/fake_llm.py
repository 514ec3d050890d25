"""A fake LLM server that the real anthropic and openai SDKs talk to over HTTP, for tests and benchmarks.

In: FakeLLM options (latency, a reply rule, a deterministic fault schedule). Out: one server on
127.0.0.1 (a free port) answering POST /v1/messages in the Anthropic Messages wire format and
POST /v1/chat/completions in the OpenAI chat completions wire format, plus counters that the starting
process reads with `fake.stats()` and any process reads with GET /_stats.

    with FakeLLM(latency=0.2, fail_first_n=1, fail_status=429) as fake:
        client = anthropic.AsyncAnthropic(base_url=fake.url, api_key="test", max_retries=0)
        openai_client = openai.AsyncOpenAI(base_url=fake.openai_url, api_key="test")

The server runs in a daemon thread with its own event loop (uvloop when installed), so it serves
SDK clients in the test process, in subprocesses and in Ray actors alike. Standalone:
`python tests/fake_llm.py --port 8765 --latency 0.2`.

What a request is: its *prompt* is the last user message; its *identity* is the system text plus the
whole conversation. A re-ask that quotes one of our own faulty replies back (`..., user Q, assistant
"I think maybe fifty?", user "Answer with an integer."`) keeps the identity of the original question,
so attempts are counted per identity and a malformed first answer is followed by a valid one.

Faults are chosen per (identity, attempt number), never by wall clock or arrival order, so a run with
faults is reproducible however requests interleave. `<kind>_first_n` schedules stack in the order
fail, drop, slow, malformed, out_of_range (fail_first_n=1, malformed_first_n=1: attempt 1 gets the
status error, attempt 2 the malformed text, attempt 3 the real answer); after the schedules, each
`<kind>_rate` is a probability drawn from a seeded hash of (identity, attempt).

Usage is reported as ceil(characters / 4). For Anthropic, a system prompt with `cache_control` is a
cache write the first time its text is seen and a cache read afterwards; with several marked blocks,
the longest marked prefix seen before is read and the rest up to the last mark written. As in the
real API, `input_tokens` then counts only the uncached rest, so input + cache_creation + cache_read
is the total. Unlike the real API, a prefix of any length is cached (no minimum).
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import signal
import socket
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

from aiohttp import web

ANTHROPIC_PATH = "/v1/messages"
OPENAI_PATH = "/v1/chat/completions"
STATS_PATH = "/_stats"
RESET_PATH = "/_reset"

FAULT_KINDS = ("fail", "drop", "slow", "malformed", "out_of_range")

_ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
    413: "request_too_large", 429: "rate_limit_error", 500: "api_error", 503: "api_error", 529: "overloaded_error",
}
_OPENAI_ERROR_TYPES = {
    400: ("invalid_request_error", None), 404: ("invalid_request_error", "not_found"),
    429: ("requests", "rate_limit_exceeded"), 500: ("server_error", None), 503: ("server_error", None),
}
_WORDS = ("market river lantern garden harbor signal orchard meadow engine library village winter "
          "compass thunder candle window mirror forest bridge letter").split()
_VERBS = "trust watch follow question welcome avoid remember study".split()


def _digest(*parts: str) -> int:
    """A stable 64-bit hash (Python's hash() is salted per process, so runs would not reproduce)."""
    h = hashlib.blake2b(digest_size=8)
    for part in parts:
        h.update(part.encode("utf-8", "surrogatepass"))
        h.update(b"\x1f")
    return int.from_bytes(h.digest(), "big")


def _uniform(*parts: str) -> float:
    return _digest(*parts) / 2.0**64


def tokens(text_length: int) -> int:
    """The fake tokenizer: a token is four characters, rounded up."""
    return (text_length + 3) // 4


def default_reply(prompt: str, request: dict) -> str:
    """An integer 0..100 when the prompt asks for a number, else a short sentence; both hashed from the prompt."""
    h = _digest(prompt)
    lowered = prompt.lower()
    if "number" in lowered or "integer" in lowered:
        return str(h % 101)
    return f"I would {_VERBS[h % len(_VERBS)]} the {_WORDS[(h >> 8) % len(_WORDS)]} near the {_WORDS[(h >> 16) % len(_WORDS)]}."


class TokenCount(NamedTuple):
    path: str
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Stats:
    """A consistent snapshot of what the server saw since it started (or since reset())."""
    requests: int
    by_path: dict[str, int]
    by_status: dict[int, int]
    faults: dict[str, int]
    in_flight: int
    peak_in_flight: int
    per_minute: list[int]  # requests received in each minute since start, oldest first
    distinct_prompts: int
    prompts: list[str]  # the prompt text (last user message) of each distinct request identity
    attempts: dict[str, int]  # request identity (hex digest) -> attempts seen
    tokens: list[TokenCount]  # one per answered request, in answer order
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int

    def to_json(self) -> dict:
        out = {name: getattr(self, name) for name in self.__dataclass_fields__}
        out["by_status"] = {str(k): v for k, v in self.by_status.items()}
        out["tokens"] = [list(t) for t in self.tokens]
        return out


@dataclass(slots=True)
class _Conversation:
    """What the server needs from one request, whichever protocol it came in."""
    system: str
    turns: list[tuple[str, str]]  # (role, text) of the non-system messages
    cached_prefix: tuple | None  # Anthropic system texts up to each cache_control block, shortest first
    total_chars: int


@dataclass(slots=True)
class _Counters:
    started: float = field(default_factory=time.monotonic)
    requests: int = 0
    by_path: Counter = field(default_factory=Counter)
    by_status: Counter = field(default_factory=Counter)
    faults: Counter = field(default_factory=Counter)
    in_flight: int = 0
    peak_in_flight: int = 0
    per_minute: defaultdict = field(default_factory=lambda: defaultdict(int))
    attempts: dict = field(default_factory=dict)  # identity -> [attempts, prompt text]
    tokens: list = field(default_factory=list)
    cached_systems: set = field(default_factory=set)


class FakeLLM:
    """A fake Anthropic + OpenAI server in a background thread; use as a context manager.

    Attributes once started: `url` (Anthropic base_url), `openai_url` (OpenAI base_url, `url + "/v1"`),
    `port`; `stats()` returns a Stats snapshot, `reset()` clears counters, attempts and the cache memory.
    `requests`, `in_flight` and `peak_in_flight` read live counters.
    """

    def __init__(
        self,
        *,
        latency: float = 0.0,
        latency_jitter: float = 0.0,
        reply: Callable[[str, dict], str] | None = None,
        seed: int = 0,
        fail_first_n: int = 0,
        fail_rate: float = 0.0,
        fail_status: int = 429,
        retry_after: float | None = 1.0,
        drop_first_n: int = 0,
        drop_rate: float = 0.0,
        slow_first_n: int = 0,
        slow_rate: float = 0.0,
        slow_seconds: float = 30.0,
        malformed_first_n: int = 0,
        malformed_rate: float = 0.0,
        malformed_text: str = "I think maybe fifty?",
        out_of_range_first_n: int = 0,
        out_of_range_rate: float = 0.0,
        out_of_range_text: str = "150",
        fault: Callable[[str, int, dict], str | None] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ):
        """Options (all keyword-only):

        latency, latency_jitter: seconds before a reply; the jitter adds a uniform [0, jitter) drawn
            from a hash of (identity, attempt), so it too reproduces. Status errors and dropped
            connections answer at once, as a gateway that refuses a request does.
        reply: (prompt_text, request_json) -> str, called on the server thread (keep it cheap);
            default `default_reply`.
        fail_*: answer with status `fail_status` (429 carries `retry-after: retry_after` seconds when
            retry_after is not None; 529 is Anthropic's overloaded_error; 500 api_error).
        drop_*: close the socket without any response.
        slow_*: answer after `slow_seconds` instead of `latency` (longer than the client's timeout).
        malformed_*: 200 with `malformed_text`; out_of_range_*: 200 with `out_of_range_text`.
        fault: (identity, attempt, request_json) -> one of FAULT_KINDS or None; replaces the
            first_n/rate schedule entirely when given.
        seed: salts the fault draws and the jitter.
        """
        schedule = (("fail", fail_first_n), ("drop", drop_first_n), ("slow", slow_first_n),
                    ("malformed", malformed_first_n), ("out_of_range", out_of_range_first_n))
        rates = (("fail", fail_rate), ("drop", drop_rate), ("slow", slow_rate),
                 ("malformed", malformed_rate), ("out_of_range", out_of_range_rate))
        if any(n < 0 for _, n in schedule) or any(not 0.0 <= r <= 1.0 for _, r in rates):
            raise ValueError("first_n options must be >= 0 and rates within [0, 1]")
        if sum(r for _, r in rates) > 1.0:
            raise ValueError("fault rates add up to more than 1")
        if fail_status < 400:
            raise ValueError(f"fail_status must be an error status, got {fail_status}")
        self.latency = latency
        self.latency_jitter = latency_jitter
        self.reply = reply or default_reply
        self.seed = str(seed)
        self.fail_status = fail_status
        self.retry_after = retry_after
        self.slow_seconds = slow_seconds
        self.malformed_text = malformed_text
        self.out_of_range_text = out_of_range_text
        self.fault = fault
        self._schedule = tuple((kind, n) for kind, n in schedule if n)
        self._rates = tuple((kind, r) for kind, r in rates if r)
        self._fault_replies = {malformed_text.strip(), out_of_range_text.strip()}
        self.host = host
        self.port = port
        self._lock = threading.Lock()
        self._counters = _Counters()
        self._message_ids = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    # -- lifecycle --------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def openai_url(self) -> str:
        return f"{self.url}/v1"

    def __enter__(self) -> FakeLLM:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> FakeLLM:
        """Bind the port and serve from a daemon thread; return once the server accepts connections."""
        if self._thread is not None:
            raise RuntimeError("FakeLLM is already running")
        ready = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(target=self._serve, args=(ready, failure), name="fake-llm", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._thread = None
            raise failure[0]
        return self

    def stop(self) -> None:
        """Stop serving: in-flight requests (a slow reply, say) are cancelled, their sockets closed."""
        if self._thread is None:
            return
        loop = self._loop
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(timeout=10)
        self._thread = None

    def _serve(self, ready: threading.Event, failure: list) -> None:
        try:
            import uvloop
            loop = uvloop.new_event_loop()
        except ImportError:  # uvloop only lowers CPU per request; asyncio serves the same protocol
            loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._bind())
        except BaseException as error:  # reported to start() in the caller's thread
            failure.append(error)
            ready.set()
            loop.close()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _bind(self) -> None:
        app = web.Application(client_max_size=64 * 2**20)
        app.router.add_post(ANTHROPIC_PATH, self._anthropic)
        app.router.add_post(OPENAI_PATH, self._openai)
        app.router.add_get(STATS_PATH, self._stats_endpoint)
        app.router.add_post(RESET_PATH, self._reset_endpoint)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        # no access log: formatting a log line per request would be most of the server's CPU
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        # a benchmark opens 1000+ connections at once; the default backlog of 128 drops SYNs
        sock.listen(4096)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        site = web.SockSite(self._runner, sock)
        await site.start()

    # -- instrumentation --------------------------------------------------------------------------

    @property
    def requests(self) -> int:
        return self._counters.requests

    @property
    def in_flight(self) -> int:
        return self._counters.in_flight

    @property
    def peak_in_flight(self) -> int:
        return self._counters.peak_in_flight

    def stats(self) -> Stats:
        """A consistent copy of the counters, safe to read while the server keeps serving."""
        with self._lock:
            c = self._counters
            minutes = max(c.per_minute, default=-1) + 1
            return Stats(
                requests=c.requests,
                by_path=dict(c.by_path),
                by_status=dict(c.by_status),
                faults=dict(c.faults),
                in_flight=c.in_flight,
                peak_in_flight=c.peak_in_flight,
                per_minute=[c.per_minute.get(m, 0) for m in range(minutes)],
                distinct_prompts=len(c.attempts),
                prompts=[prompt for _, prompt in c.attempts.values()],
                attempts={identity: n for identity, (n, _) in c.attempts.items()},
                tokens=list(c.tokens),
                input_tokens=sum(t.input_tokens for t in c.tokens),
                output_tokens=sum(t.output_tokens for t in c.tokens),
                cache_creation_input_tokens=sum(t.cache_creation_input_tokens for t in c.tokens),
                cache_read_input_tokens=sum(t.cache_read_input_tokens for t in c.tokens),
            )

    def reset(self) -> None:
        """Forget counters, attempts and seen cache prefixes (between benchmark phases, say)."""
        with self._lock:
            in_flight = self._counters.in_flight
            self._counters = _Counters()
            self._counters.in_flight = in_flight

    # -- requests ---------------------------------------------------------------------------------

    async def _anthropic(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(request, _AnthropicWire)

    async def _openai(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(request, _OpenAIWire)

    async def _answer(self, request: web.Request, wire: type[_Wire]) -> web.StreamResponse:
        path = request.path
        with self._lock:
            c = self._counters
            c.requests += 1
            c.by_path[path] += 1
            c.per_minute[int((time.monotonic() - c.started) // 60)] += 1
            c.in_flight += 1
            if c.in_flight > c.peak_in_flight:
                c.peak_in_flight = c.in_flight
        try:
            try:
                body = json.loads(await request.read())
                conversation = wire.parse(body)
            except (ValueError, TypeError, KeyError, AttributeError) as error:
                return self._error(wire, 400, f"malformed request: {error}")
            identity, prompt = self._identify(conversation)
            with self._lock:
                record = self._counters.attempts.get(identity)
                if record is None:
                    record = self._counters.attempts[identity] = [0, prompt]
                record[0] += 1
                attempt = record[0]
            kind = self._choose_fault(identity, attempt, body)
            if kind is not None:
                with self._lock:
                    self._counters.faults[kind] += 1
            if kind == "fail":
                return self._error(wire, self.fail_status, f"fake {self.fail_status} for attempt {attempt}")
            if kind == "drop":
                return self._drop(request)
            delay = self.slow_seconds if kind == "slow" else self._delay(identity, attempt)
            if delay > 0:
                await asyncio.sleep(delay)
            if kind == "malformed":
                text = self.malformed_text
            elif kind == "out_of_range":
                text = self.out_of_range_text
            else:
                text = self.reply(prompt, body)
            return self._reply(wire, body, conversation, text, path)
        finally:
            with self._lock:
                self._counters.in_flight -= 1

    def _identify(self, conversation: _Conversation) -> tuple[str, str]:
        """Return (identity, prompt text), folding re-asks that quote our faulty reply into the original."""
        turns = conversation.turns
        while (len(turns) >= 3 and turns[-1][0] == "user" and turns[-2][0] == "assistant"
               and turns[-2][1].strip() in self._fault_replies):
            turns = turns[:-2]
        prompt = next((text for role, text in reversed(turns) if role == "user"), "")
        identity = hashlib.blake2b(
            json.dumps([conversation.system, turns], ensure_ascii=False).encode(), digest_size=12
        ).hexdigest()
        return identity, prompt

    def _choose_fault(self, identity: str, attempt: int, body: dict) -> str | None:
        if self.fault is not None:
            kind = self.fault(identity, attempt, body)
            if kind is not None and kind not in FAULT_KINDS:
                raise ValueError(f"fault() returned {kind!r}, not one of {FAULT_KINDS}")
            return kind
        n = attempt
        for kind, first_n in self._schedule:
            if n <= first_n:
                return kind
            n -= first_n
        if self._rates:
            u = _uniform(self.seed, "fault", identity, str(attempt))
            for kind, rate in self._rates:
                if u < rate:
                    return kind
                u -= rate
        return None

    def _delay(self, identity: str, attempt: int) -> float:
        if not self.latency_jitter:
            return self.latency
        return self.latency + self.latency_jitter * _uniform(self.seed, "jitter", identity, str(attempt))

    def _drop(self, request: web.Request) -> web.StreamResponse:
        # abort() sends nothing more, not even a response line; aiohttp then skips writing the
        # response we return because its transport is gone
        request.transport.abort()
        return web.Response(status=499)

    def _error(self, wire: type[_Wire], status: int, message: str) -> web.Response:
        with self._lock:
            self._counters.by_status[status] += 1
        headers = {}
        if status == 429 and self.retry_after is not None:
            headers["retry-after"] = f"{self.retry_after:g}"
        return web.Response(status=status, body=wire.error(status, message), headers=headers,
                            content_type="application/json")

    def _reply(self, wire: type[_Wire], body: dict, conversation: _Conversation, text: str, path: str) -> web.Response:
        text, stop_reason, stop_sequence = _truncate(text, body, wire)
        total = tokens(conversation.total_chars)
        cache_creation = cache_read = 0
        if conversation.cached_prefix:
            # As the real API: the longest marked prefix seen before is read, and what lies between
            # it and the last breakpoint is written (every marked prefix is cached from now on).
            ids = [_digest(prefix) for prefix in conversation.cached_prefix]
            with self._lock:
                hits = [i for i, prefix_id in enumerate(ids) if prefix_id in self._counters.cached_systems]
                self._counters.cached_systems.update(ids)
            read_chars = len(conversation.cached_prefix[hits[-1]]) if hits else 0
            cache_read = tokens(read_chars) if read_chars else 0
            cache_creation = tokens(len(conversation.cached_prefix[-1])) - cache_read
        count = TokenCount(path, total - cache_creation - cache_read, tokens(len(text)), cache_creation, cache_read)
        with self._lock:
            self._message_ids += 1
            message_id = self._message_ids
            self._counters.tokens.append(count)
            self._counters.by_status[200] += 1
        return web.Response(body=wire.response(message_id, body, text, stop_reason, stop_sequence, count),
                            content_type="application/json")

    async def _stats_endpoint(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats().to_json())

    async def _reset_endpoint(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"ok": True})

    async def _not_found(self, request: web.Request) -> web.Response:
        with self._lock:
            self._counters.requests += 1
            self._counters.by_path[request.path] += 1
        wire = _OpenAIWire if request.path.startswith("/v1/chat") else _AnthropicWire
        return self._error(wire, 404, f"no route for {request.method} {request.path}")


def _truncate(text: str, body: dict, wire: type[_Wire]) -> tuple[str, str, str | None]:
    """Apply stop sequences and max_tokens as the real APIs do; return (text, stop reason, stop sequence)."""
    stops = body.get(wire.stop_field) or ()
    if isinstance(stops, str):
        stops = (stops,)
    cut, hit = len(text), None
    for stop in stops:
        at = text.find(stop) if stop else -1
        if 0 <= at < cut:
            cut, hit = at, stop
    if hit is not None:
        return text[:cut], wire.stop_sequence_reason, hit
    limit = body.get(wire.max_tokens_field)
    if isinstance(limit, int) and tokens(len(text)) > limit:
        return text[: limit * 4], wire.length_reason, None
    return text, wire.end_reason, None


def _text_of(content) -> str:
    """Text of a message content: a string, or a list of blocks of which the text ones count."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(block.get("text", "") for block in content if block.get("type", "text") == "text")


class _Wire:
    stop_field: str
    max_tokens_field: str
    end_reason: str
    length_reason: str
    stop_sequence_reason: str


class _AnthropicWire(_Wire):
    """POST /v1/messages: model, max_tokens, system (str or text blocks), messages, stop_sequences."""
    stop_field = "stop_sequences"
    max_tokens_field = "max_tokens"
    end_reason, length_reason, stop_sequence_reason = "end_turn", "max_tokens", "stop_sequence"

    @staticmethod
    def parse(body: dict) -> _Conversation:
        if not isinstance(body.get("max_tokens"), int):
            raise ValueError("max_tokens: field required")
        if not isinstance(body.get("messages"), list):
            raise ValueError("messages: field required")
        system = body.get("system")
        cached_prefix = None
        if isinstance(system, list):
            texts = [block.get("text", "") for block in system]
            marks = [i for i, block in enumerate(system) if block.get("cache_control")]
            if marks:
                cached_prefix = tuple("".join(texts[: i + 1]) for i in marks)
            system = "".join(texts)
        system = system or ""
        turns = [(message["role"], _text_of(message.get("content"))) for message in body["messages"]]
        return _Conversation(system, turns, cached_prefix, len(system) + sum(len(text) for _, text in turns))

    @staticmethod
    def response(message_id: int, body: dict, text: str, stop_reason: str, stop_sequence: str | None,
                 count: TokenCount) -> bytes:
        return json.dumps({
            "id": f"msg_fake{message_id:018d}",
            "type": "message",
            "role": "assistant",
            "content": [{"type": "text", "text": text}],
            "model": body.get("model", "fake"),
            "stop_reason": stop_reason,
            "stop_sequence": stop_sequence,
            "usage": {
                "input_tokens": count.input_tokens,
                "output_tokens": count.output_tokens,
                "cache_creation_input_tokens": count.cache_creation_input_tokens,
                "cache_read_input_tokens": count.cache_read_input_tokens,
            },
        }).encode()

    @staticmethod
    def error(status: int, message: str) -> bytes:
        kind = _ANTHROPIC_ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
        return json.dumps({"type": "error", "error": {"type": kind, "message": message}}).encode()


class _OpenAIWire(_Wire):
    """POST /v1/chat/completions: model, messages (system role included), max_tokens, temperature, stop."""
    stop_field = "stop"
    max_tokens_field = "max_tokens"
    end_reason, length_reason, stop_sequence_reason = "stop", "length", "stop"

    @staticmethod
    def parse(body: dict) -> _Conversation:
        if not isinstance(body.get("messages"), list):
            raise ValueError("messages: field required")
        system_parts, turns = [], []
        for message in body["messages"]:
            text = _text_of(message.get("content"))
            if message["role"] in ("system", "developer"):
                system_parts.append(text)
            else:
                turns.append((message["role"], text))
        system = "\n".join(system_parts)
        total = sum(len(text) for text in system_parts) + sum(len(text) for _, text in turns)
        return _Conversation(system, turns, None, total)

    @staticmethod
    def response(message_id: int, body: dict, text: str, stop_reason: str, stop_sequence: str | None,
                 count: TokenCount) -> bytes:
        return json.dumps({
            "id": f"chatcmpl-fake{message_id:018d}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "fake"),
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": stop_reason,
            }],
            "usage": {
                "prompt_tokens": count.input_tokens,
                "completion_tokens": count.output_tokens,
                "total_tokens": count.input_tokens + count.output_tokens,
            },
        }).encode()

    @staticmethod
    def error(status: int, message: str) -> bytes:
        kind, code = _OPENAI_ERROR_TYPES.get(status, ("server_error" if status >= 500 else "invalid_request_error", None))
        return json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}}).encode()


def main(argv: list[str] | None = None) -> None:
    """Serve until Ctrl-C, then print the stats."""
    parser = argparse.ArgumentParser(description="Fake Anthropic + OpenAI server for trying Populace by hand.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--latency-jitter", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fail-status", type=int, default=429)
    parser.add_argument("--retry-after", type=float, default=1.0)
    parser.add_argument("--slow-seconds", type=float, default=30.0)
    for kind in FAULT_KINDS:
        flag = kind.replace("_", "-")
        parser.add_argument(f"--{flag}-first-n", type=int, default=0, help=f"{kind} the first N attempts of each prompt")
        parser.add_argument(f"--{flag}-rate", type=float, default=0.0, help=f"{kind} this fraction of later attempts")
    args = parser.parse_args(argv)
    options = {name: value for name, value in vars(args).items()}
    fake = FakeLLM(**options)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with fake:
        print(f"fake LLM serving on {fake.url}", flush=True)
        print(f"  ANTHROPIC_BASE_URL={fake.url}   OPENAI_BASE_URL={fake.openai_url}   stats: {fake.url}{STATS_PATH}",
              flush=True)
        stop.wait()
        stats = fake.stats()
    print(json.dumps({k: v for k, v in stats.to_json().items() if k not in ("tokens", "attempts", "prompts")}, indent=2))


if __name__ == "__main__":
    main()
