"""A fake LLM server that the real anthropic and openai SDKs talk to over HTTP, for tests and benchmarks.

In: FakeLLM options (latency, a reply rule, a deterministic fault schedule). Out: one server on
127.0.0.1 (a free port) answering POST /v1/messages in the Anthropic Messages wire format and
POST /v1/chat/completions in the OpenAI chat completions wire format, both providers' batch APIs
(below), plus counters that the starting process reads with `fake.stats()` and any process reads with
GET /_stats (POST /_reset clears them).

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

Batch APIs, in the providers' wire formats, so `client.messages.batches.*` and `client.files.*` /
`client.batches.*` of the real SDKs work unchanged:

    Anthropic  POST /v1/messages/batches {"requests": [{"custom_id", "params": <Messages body>}]}
               GET  /v1/messages/batches[/{id}]   POST /v1/messages/batches/{id}/cancel
               GET  /v1/messages/batches/{id}/results   (JSONL, application/binary; 400 before ended)
    OpenAI     POST /v1/files (multipart: file, purpose)   GET /v1/files/{id}[/content]
               POST /v1/batches {"input_file_id", "endpoint": "/v1/chat/completions", "completion_window"}
               GET  /v1/batches[/{id}]   POST /v1/batches/{id}/cancel

A MessageBatch is `in_progress` (or `canceling`) until it is `ended`; then `ended_at` and `results_url`
(`<base>/v1/messages/batches/{id}/results`) are set, and each result line is `{"custom_id", "result":
{"type": "succeeded", "message": <Message>}}`, `{"type": "errored", "error": {"type": "error", "error":
{"type", "message"}}}` or `{"type": "canceled"}`, in submission order. An OpenAI Batch is `in_progress`
(or `cancelling`) until `completed` (or `cancelled`); then `output_file_id` names a file of the 200 lines
and `error_file_id` one of the failed lines, each set only when it has lines: `{"id": "batch_req_<n>",
"custom_id", "response": {"status_code", "request_id", "body": <chat.completion or error JSON>},
"error": null}`. `request_counts` show progress while a batch runs.

Each item is answered by the same code as the direct endpoint (reply rule, usage, prompt cache, fault
schedule by identity and attempt), without the `latency` wait: its items are answered one by one,
evenly spread over `batch_latency` seconds from creation (0.2 by default), and the batch ends after
the last. A fail fault makes the item errored with the fault's status and error body, a drop makes it
errored as a 500 api_error, a slow fault is answered normally, a malformed or out_of_range fault is a
succeeded item carrying that text, and a malformed item body is an errored 400 item. Cancelling stops
the answering; the unanswered items are canceled. Malformed batch submissions (an invalid custom_id,
a duplicate one, an input line for another endpoint) are refused with 400, where the real OpenAI API
would create a batch with status `failed`. Batches and files live in the server's memory until it
stops (reset() keeps them), so a restarted client retrieves an earlier batch by id.

Counting: `requests`, `by_path`, `by_status`, `per_minute` and `in_flight` count the direct endpoints
(and unrouted paths) only; neither the batch/file calls nor the batch items count there. The batch
items do count where the model work is counted: `attempts`, `prompts`, `faults`, and `tokens` (with
path `/v1/messages/batches` or `/v1/batches`, so they can be told apart) and hence the token totals.
`batches_created` counts submitted batches and `batch_items` the items in them, so a test can assert
that a resumed run did not resubmit.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import signal
import socket
import threading
import re
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, NamedTuple

from aiohttp import web

ANTHROPIC_PATH = "/v1/messages"
OPENAI_PATH = "/v1/chat/completions"
ANTHROPIC_BATCHES_PATH = "/v1/messages/batches"
OPENAI_FILES_PATH = "/v1/files"
OPENAI_BATCHES_PATH = "/v1/batches"
STATS_PATH = "/_stats"
RESET_PATH = "/_reset"

_ANTHROPIC_CUSTOM_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")

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
    batches_created: int  # batches submitted (both providers)
    batch_items: int  # requests inside those batches; not counted in `requests`

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


class _Outcome(NamedTuple):
    """How one request is answered: status 200 (body a Message / chat.completion), an error status
    (body the provider's error JSON), or 0 for a dropped connection (body the error a batch item gets)."""
    status: int
    body: bytes
    count: TokenCount | None = None


@dataclass(slots=True)
class _Admitted:
    """A request past parsing and fault choice, waiting for its reply (see FakeLLM._admit)."""
    conversation: _Conversation
    identity: str
    prompt: str
    attempt: int
    kind: str | None  # None, "slow", "malformed" or "out_of_range"


@dataclass(slots=True)
class _Batch:
    """One submitted batch, of either provider; kept in FakeLLM._batches until the server stops."""
    id: str
    wire: type[_Wire]
    items: list[tuple[str, object]]  # (custom_id, request body) in submission order
    created_at: float  # time.time()
    info: dict = field(default_factory=dict)  # OpenAI: input_file_id, endpoint, completion_window, metadata
    outcomes: list[_Outcome] = field(default_factory=list)  # answers of items[:len(outcomes)]
    cancel_initiated_at: float | None = None
    ended_at: float | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    task: asyncio.Task | None = None

    def counts(self) -> tuple[int, int, int, int]:
        """(processing, succeeded, errored, canceled) right now."""
        succeeded = sum(1 for outcome in self.outcomes if outcome.status == 200)
        errored = len(self.outcomes) - succeeded
        rest = len(self.items) - len(self.outcomes)
        return (0, succeeded, errored, rest) if self.ended_at is not None else (rest, succeeded, errored, 0)


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
    batches_created: int = 0
    batch_items: int = 0


class FakeLLM:
    """A fake Anthropic + OpenAI server in a background thread; use as a context manager.

    Attributes once started: `url` (Anthropic base_url), `openai_url` (OpenAI base_url, `url + "/v1"`),
    `port`; `stats()` returns a Stats snapshot, `reset()` clears counters, attempts and the cache memory.
    `requests`, `in_flight` and `peak_in_flight` read live counters. Submitted batches and uploaded
    files are kept (by id) until stop(), across reset().
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
        batch_latency: float = 0.2,
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
        batch_latency: seconds from a batch's creation until it has ended; its items are answered one
            by one, evenly spread over that time (not after `latency` each), so the counts show progress.
        """
        schedule = (("fail", fail_first_n), ("drop", drop_first_n), ("slow", slow_first_n),
                    ("malformed", malformed_first_n), ("out_of_range", out_of_range_first_n))
        rates = (("fail", fail_rate), ("drop", drop_rate), ("slow", slow_rate),
                 ("malformed", malformed_rate), ("out_of_range", out_of_range_rate))
        if any(n < 0 for _, n in schedule) or any(not 0.0 <= r <= 1.0 for _, r in rates):
            raise ValueError("first_n options must be >= 0 and rates within [0, 1]")
        if sum(r for _, r in rates) > 1.0:
            raise ValueError("fault rates add up to more than 1")
        if batch_latency < 0:
            raise ValueError(f"batch_latency must be >= 0, got {batch_latency}")
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
        self.batch_latency = batch_latency
        self._schedule = tuple((kind, n) for kind, n in schedule if n)
        self._rates = tuple((kind, r) for kind, r in rates if r)
        self._fault_replies = {malformed_text.strip(), out_of_range_text.strip()}
        self.host = host
        self.port = port
        self._lock = threading.Lock()
        self._counters = _Counters()
        self._message_ids = 0
        # batches and files outlive reset(), as a provider's do, so a restarted client finds them by id
        self._batches: dict[str, _Batch] = {}
        self._files: dict[str, dict] = {}  # OpenAI file id -> {"object": <file object>, "content": bytes}
        self._serial = Counter()  # next number per id prefix
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
        asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=10)
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
        app.router.add_post(ANTHROPIC_BATCHES_PATH, self._anthropic_batch_create)
        app.router.add_get(ANTHROPIC_BATCHES_PATH, self._anthropic_batch_list)
        app.router.add_get(ANTHROPIC_BATCHES_PATH + "/{id}", self._anthropic_batch_retrieve)
        app.router.add_get(ANTHROPIC_BATCHES_PATH + "/{id}/results", self._anthropic_batch_results)
        app.router.add_post(ANTHROPIC_BATCHES_PATH + "/{id}/cancel", self._anthropic_batch_cancel)
        app.router.add_post(OPENAI_FILES_PATH, self._openai_file_create)
        app.router.add_get(OPENAI_FILES_PATH + "/{id}", self._openai_file_retrieve)
        app.router.add_get(OPENAI_FILES_PATH + "/{id}/content", self._openai_file_content)
        app.router.add_post(OPENAI_BATCHES_PATH, self._openai_batch_create)
        app.router.add_get(OPENAI_BATCHES_PATH, self._openai_batch_list)
        app.router.add_get(OPENAI_BATCHES_PATH + "/{id}", self._openai_batch_retrieve)
        app.router.add_post(OPENAI_BATCHES_PATH + "/{id}/cancel", self._openai_batch_cancel)
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
                batches_created=c.batches_created,
                batch_items=c.batch_items,
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
            except ValueError as error:
                return self._respond(request, wire, _Outcome(400, wire.error(400, f"malformed request: {error}")))
            admitted = self._admit(wire, body)
            if isinstance(admitted, _Outcome):  # a malformed body, a fail or a drop fault: answered at once
                return self._respond(request, wire, admitted)
            if admitted.kind == "slow":
                delay = self.slow_seconds
            else:
                delay = self._delay(admitted.identity, admitted.attempt)
            if delay > 0:
                await asyncio.sleep(delay)
            return self._respond(request, wire, self._complete(wire, body, admitted, path))
        finally:
            with self._lock:
                self._counters.in_flight -= 1

    def _admit(self, wire: type[_Wire], body) -> _Admitted | _Outcome:
        """Parse a request body, count its attempt and choose its fault: the part of answering before the wait.

        Returns the final _Outcome when there is nothing to wait for (a 400, a fail or a drop fault),
        else an _Admitted for _complete(). Shared by the direct endpoints and the batch items.
        """
        try:
            conversation = wire.parse(body)
        except (ValueError, TypeError, KeyError, AttributeError) as error:
            return _Outcome(400, wire.error(400, f"malformed request: {error}"))
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
            return _Outcome(self.fail_status, wire.error(self.fail_status, f"fake {self.fail_status} for attempt {attempt}"))
        if kind == "drop":
            return _Outcome(0, wire.error(500, f"fake dropped connection for attempt {attempt}"))
        return _Admitted(conversation, identity, prompt, attempt, kind)

    def _complete(self, wire: type[_Wire], body: dict, admitted: _Admitted, path: str) -> _Outcome:
        """The reply text (the rule's, or a malformed/out-of-range fault's) as a 200 outcome, with usage."""
        if admitted.kind == "malformed":
            text = self.malformed_text
        elif admitted.kind == "out_of_range":
            text = self.out_of_range_text
        else:
            text = self.reply(admitted.prompt, body)
        return self._reply(wire, body, admitted.conversation, text, path)

    def _respond(self, request: web.Request, wire: type[_Wire], outcome: _Outcome) -> web.StreamResponse:
        """An outcome as the direct endpoint's HTTP answer (counted in by_status)."""
        if outcome.status == 0:
            return self._drop(request)
        with self._lock:
            self._counters.by_status[outcome.status] += 1
        headers = {}
        if outcome.status == 429 and self.retry_after is not None:
            headers["retry-after"] = f"{self.retry_after:g}"
        return web.Response(status=outcome.status, body=outcome.body, headers=headers, content_type="application/json")

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

    def _reply(self, wire: type[_Wire], body: dict, conversation: _Conversation, text: str, path: str) -> _Outcome:
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
        return _Outcome(200, wire.response(message_id, body, text, stop_reason, stop_sequence, count), count)

    # -- batches ----------------------------------------------------------------------------------
    # Items are answered by the same _admit/_complete as the direct endpoints, one by one on a task
    # of the server loop, evenly spread over batch_latency; batches and files stay in memory by id.

    async def _shutdown(self) -> None:
        tasks = [batch.task for batch in self._batches.values() if batch.task is not None and not batch.task.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await self._runner.cleanup()

    def _next_id(self, prefix: str) -> int:
        self._serial[prefix] += 1
        return self._serial[prefix]

    def _submit(self, batch: _Batch, path: str) -> _Batch:
        self._batches[batch.id] = batch
        with self._lock:
            self._counters.batches_created += 1
            self._counters.batch_items += len(batch.items)
        batch.task = asyncio.get_running_loop().create_task(self._run_batch(batch, path))
        return batch

    async def _run_batch(self, batch: _Batch, path: str) -> None:
        loop = asyncio.get_running_loop()
        start, n = loop.time(), len(batch.items)
        try:
            for index, (_, body) in enumerate(batch.items):
                delay = start + self.batch_latency * (index + 1) / n - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                batch.outcomes.append(self._answer_item(batch.wire, body, path))
        except asyncio.CancelledError:  # cancel(), or the server stopping: the rest are canceled
            pass
        finally:
            batch.ended_at = time.time()
            if batch.wire is _OpenAIWire:
                self._write_openai_results(batch)

    def _answer_item(self, wire: type[_Wire], body, path: str) -> _Outcome:
        """One batch item, answered as the direct endpoint would, minus the wait: a fail fault gives
        an error outcome, a drop a 500 one, a slow fault an ordinary answer."""
        admitted = self._admit(wire, body)
        if isinstance(admitted, _Outcome):
            return admitted if admitted.status else _Outcome(500, admitted.body)
        return self._complete(wire, body, admitted, path)

    def _find_batch(self, request: web.Request, wire: type[_Wire]) -> _Batch | web.Response:
        batch = self._batches.get(request.match_info["id"])
        if batch is None or batch.wire is not wire:
            return _json_error(wire, 404, f"no batch with id {request.match_info['id']!r}")
        return batch

    def _cancel(self, batch: _Batch) -> None:
        if batch.ended_at is None and batch.cancel_initiated_at is None:
            batch.cancel_initiated_at = time.time()
            batch.task.cancel()  # runs after this response is built, so the answer says canceling

    # Anthropic Message Batches

    def _message_batch(self, batch: _Batch, request: web.Request) -> dict:
        processing, succeeded, errored, canceled = batch.counts()
        if batch.ended_at is not None:
            status = "ended"
        elif batch.cancel_initiated_at is not None:
            status = "canceling"
        else:
            status = "in_progress"
        return {
            "id": batch.id,
            "type": "message_batch",
            "processing_status": status,
            "request_counts": {"processing": processing, "succeeded": succeeded, "errored": errored,
                               "canceled": canceled, "expired": 0},
            "created_at": _rfc3339(batch.created_at),
            "expires_at": _rfc3339(batch.created_at + 86400),
            "ended_at": _rfc3339(batch.ended_at),
            "cancel_initiated_at": _rfc3339(batch.cancel_initiated_at),
            "archived_at": None,
            "results_url": (f"{request.scheme}://{request.host}{ANTHROPIC_BATCHES_PATH}/{batch.id}/results"
                            if batch.ended_at is not None else None),
        }

    async def _anthropic_batch_create(self, request: web.Request) -> web.Response:
        try:
            payload = json.loads(await request.read())
            entries = payload["requests"]
            if not isinstance(entries, list) or not entries:
                raise ValueError("requests: a non-empty list required")
            items = []
            for index, entry in enumerate(entries):
                custom_id, params = entry["custom_id"], entry["params"]
                if not isinstance(custom_id, str) or not _ANTHROPIC_CUSTOM_ID.fullmatch(custom_id):
                    raise ValueError(f"requests.{index}.custom_id: 1-64 characters of [a-zA-Z0-9_-] required")
                if not isinstance(params, dict):
                    raise ValueError(f"requests.{index}.params: an object required")
                items.append((custom_id, params))
            if len({custom_id for custom_id, _ in items}) != len(items):
                raise ValueError("requests: custom_id values must be unique within a batch")
        except (ValueError, TypeError, KeyError, AttributeError) as error:
            return _json_error(_AnthropicWire, 400, f"malformed batch: {error}")
        batch_id = f"msgbatch_{self._next_id('msgbatch')}"
        batch = self._submit(_Batch(batch_id, _AnthropicWire, items, time.time()), ANTHROPIC_BATCHES_PATH)
        return web.json_response(self._message_batch(batch, request))

    async def _anthropic_batch_retrieve(self, request: web.Request) -> web.Response:
        batch = self._find_batch(request, _AnthropicWire)
        if isinstance(batch, web.Response):
            return batch
        return web.json_response(self._message_batch(batch, request))

    async def _anthropic_batch_list(self, request: web.Request) -> web.Response:
        data = [self._message_batch(batch, request) for batch in reversed(self._batches.values())
                if batch.wire is _AnthropicWire]
        return web.json_response({"data": data, "has_more": False,
                                  "first_id": data[0]["id"] if data else None,
                                  "last_id": data[-1]["id"] if data else None})

    async def _anthropic_batch_cancel(self, request: web.Request) -> web.Response:
        batch = self._find_batch(request, _AnthropicWire)
        if isinstance(batch, web.Response):
            return batch
        self._cancel(batch)
        return web.json_response(self._message_batch(batch, request))

    async def _anthropic_batch_results(self, request: web.Request) -> web.Response:
        batch = self._find_batch(request, _AnthropicWire)
        if isinstance(batch, web.Response):
            return batch
        if batch.ended_at is None:
            return _json_error(_AnthropicWire, 400, f"batch {batch.id} has not ended; its results are not ready")
        lines = []
        for index, (custom_id, _) in enumerate(batch.items):
            if index >= len(batch.outcomes):
                result = {"type": "canceled"}
            elif batch.outcomes[index].status == 200:
                result = {"type": "succeeded", "message": json.loads(batch.outcomes[index].body)}
            else:
                result = {"type": "errored", "error": json.loads(batch.outcomes[index].body)}
            lines.append(json.dumps({"custom_id": custom_id, "result": result}) + "\n")
        return web.Response(body="".join(lines).encode(), content_type="application/binary")

    # OpenAI Files and Batch API

    def _store_file(self, filename: str, purpose: str, content: bytes) -> dict:
        file = {"id": f"file-{self._next_id('file')}", "object": "file", "bytes": len(content),
                "created_at": int(time.time()), "filename": filename, "purpose": purpose,
                "status": "processed", "status_details": None, "expires_at": None}
        self._files[file["id"]] = {"object": file, "content": content}
        return file

    def _write_openai_results(self, batch: _Batch) -> None:
        succeeded, failed = [], []
        for (custom_id, _), outcome in zip(batch.items, batch.outcomes):
            number = self._next_id("batch_req")
            line = json.dumps({
                "id": f"batch_req_{number}",
                "custom_id": custom_id,
                "response": {"status_code": outcome.status, "request_id": f"req_fake{number}",
                             "body": json.loads(outcome.body)},
                "error": None,
            }) + "\n"
            (succeeded if outcome.status == 200 else failed).append(line)
        if succeeded:
            batch.output_file_id = self._store_file(f"{batch.id}_output.jsonl", "batch_output",
                                                    "".join(succeeded).encode())["id"]
        if failed:
            batch.error_file_id = self._store_file(f"{batch.id}_error.jsonl", "batch_output",
                                                   "".join(failed).encode())["id"]

    def _openai_batch(self, batch: _Batch) -> dict:
        _, succeeded, errored, _ = batch.counts()
        created = int(batch.created_at)
        ended = int(batch.ended_at) if batch.ended_at is not None else None
        cancelling = int(batch.cancel_initiated_at) if batch.cancel_initiated_at is not None else None
        if ended is not None:
            status = "cancelled" if cancelling is not None else "completed"
        else:
            status = "cancelling" if cancelling is not None else "in_progress"
        counts = [outcome.count for outcome in batch.outcomes if outcome.count is not None]
        input_tokens = sum(count.input_tokens for count in counts)
        output_tokens = sum(count.output_tokens for count in counts)
        first_body = batch.items[0][1]
        return {
            "id": batch.id,
            "object": "batch",
            "endpoint": batch.info["endpoint"],
            "errors": None,
            "input_file_id": batch.info["input_file_id"],
            "completion_window": batch.info["completion_window"],
            "status": status,
            "output_file_id": batch.output_file_id,
            "error_file_id": batch.error_file_id,
            "created_at": created,
            "in_progress_at": created,
            "expires_at": created + 86400,
            "finalizing_at": ended if status == "completed" else None,
            "completed_at": ended if status == "completed" else None,
            "failed_at": None,
            "expired_at": None,
            "cancelling_at": cancelling,
            "cancelled_at": ended if status == "cancelled" else None,
            "request_counts": {"total": len(batch.items), "completed": succeeded, "failed": errored},
            "metadata": batch.info.get("metadata"),
            "model": first_body.get("model") if isinstance(first_body, dict) else None,
            "usage": {"input_tokens": input_tokens, "input_tokens_details": {"cached_tokens": 0},
                      "output_tokens": output_tokens, "output_tokens_details": {"reasoning_tokens": 0},
                      "total_tokens": input_tokens + output_tokens},
        }

    async def _openai_file_create(self, request: web.Request) -> web.Response:
        try:
            form = await request.post()
            upload, purpose = form["file"], form["purpose"]
            content, filename = upload.file.read(), upload.filename
        except (KeyError, AttributeError, ValueError) as error:
            return _json_error(_OpenAIWire, 400, f"a multipart form with `file` and `purpose` required: {error}")
        return web.json_response(self._store_file(filename, str(purpose), content))

    def _find_file(self, request: web.Request) -> dict | web.Response:
        stored = self._files.get(request.match_info["id"])
        if stored is None:
            return _json_error(_OpenAIWire, 404, f"no file with id {request.match_info['id']!r}")
        return stored

    async def _openai_file_retrieve(self, request: web.Request) -> web.Response:
        stored = self._find_file(request)
        return stored if isinstance(stored, web.Response) else web.json_response(stored["object"])

    async def _openai_file_content(self, request: web.Request) -> web.Response:
        stored = self._find_file(request)
        if isinstance(stored, web.Response):
            return stored
        return web.Response(body=stored["content"], content_type="application/octet-stream")

    async def _openai_batch_create(self, request: web.Request) -> web.Response:
        try:
            payload = json.loads(await request.read())
            input_file_id, endpoint = payload["input_file_id"], payload["endpoint"]
            completion_window = payload["completion_window"]
        except (ValueError, TypeError, KeyError) as error:
            return _json_error(_OpenAIWire, 400, f"malformed batch: {error}")
        if endpoint != OPENAI_PATH:
            return _json_error(_OpenAIWire, 400, f"endpoint {endpoint!r}: the fake serves only {OPENAI_PATH}")
        stored = self._files.get(input_file_id)
        if stored is None:
            return _json_error(_OpenAIWire, 404, f"no file with id {input_file_id!r}")
        items = []
        try:
            for number, line in enumerate(stored["content"].decode("utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                    custom_id, body = entry["custom_id"], entry["body"]
                    if not isinstance(custom_id, str) or not isinstance(body, dict):
                        raise ValueError("custom_id (a string) and body (an object) required")
                    if entry.get("method") != "POST" or entry.get("url") != endpoint:
                        raise ValueError(f"method POST and url {endpoint} required")
                except (ValueError, TypeError, KeyError, AttributeError) as error:
                    raise ValueError(f"line {number}: {error}") from None
                items.append((custom_id, body))
            if not items:
                raise ValueError("the input file has no requests")
            if len({custom_id for custom_id, _ in items}) != len(items):
                raise ValueError("custom_id values must be unique within a batch")
        except ValueError as error:  # UnicodeDecodeError is one too
            return _json_error(_OpenAIWire, 400, f"invalid input file {input_file_id}: {error}")
        info = {"input_file_id": input_file_id, "endpoint": endpoint, "completion_window": completion_window,
                "metadata": payload.get("metadata")}
        batch_id = f"batch_{self._next_id('batch')}"
        batch = self._submit(_Batch(batch_id, _OpenAIWire, items, time.time(), info), OPENAI_BATCHES_PATH)
        return web.json_response(self._openai_batch(batch))

    async def _openai_batch_retrieve(self, request: web.Request) -> web.Response:
        batch = self._find_batch(request, _OpenAIWire)
        return batch if isinstance(batch, web.Response) else web.json_response(self._openai_batch(batch))

    async def _openai_batch_list(self, request: web.Request) -> web.Response:
        data = [self._openai_batch(batch) for batch in reversed(self._batches.values()) if batch.wire is _OpenAIWire]
        return web.json_response({"object": "list", "data": data, "has_more": False,
                                  "first_id": data[0]["id"] if data else None,
                                  "last_id": data[-1]["id"] if data else None})

    async def _openai_batch_cancel(self, request: web.Request) -> web.Response:
        batch = self._find_batch(request, _OpenAIWire)
        if isinstance(batch, web.Response):
            return batch
        self._cancel(batch)
        return web.json_response(self._openai_batch(batch))

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


def _rfc3339(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _json_error(wire: type[_Wire], status: int, message: str) -> web.Response:
    """An error answer of the batch and file endpoints (not counted in by_status, which is the direct endpoints')."""
    return web.Response(status=status, body=wire.error(status, message), content_type="application/json")


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
    parser.add_argument("--batch-latency", type=float, default=0.2, help="seconds until a submitted batch has ended")
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
