"""The lean HTTP path to an LLM provider: the SDK's request, bytes and headers, without its per-call cost.

In: an SDK client (`anthropic.AsyncAnthropic` or `openai.AsyncOpenAI`, built as usual: key, base
URL, timeout), a request body as the SDK's `create()` takes it, and the calls in flight to size
the connection pool. Out: (reply text, usage) as `LLMModel._send` returns them, or the SDK's own
exception classes (`RateLimitError`, `InternalServerError`, `APIConnectionError`,
`APITimeoutError`, ... made by the SDK from the response), so retries, Retry-After and error
messages behave exactly as on the SDK path.

Why: measured here (docs/performance.md, issue 17), a call through either SDK costs about 3.3 ms
of CPU (its request transforms, pydantic models, and httpx2's connection pool scanning every
connection for every request), a plain aiohttp request 0.26 ms. The body is serialised the way
the SDK serialises it (compact JSON, UTF-8, its key order: Anthropic's keys sorted; OpenAI's
`model`, `messages`, then sorted), and the URL and headers are built by the SDK client itself,
once (its `_build_request`: defaults, key, version, `x-stainless-*`); tests/test_wire.py checks
body, URL and headers byte for byte against what the SDK sends, so an SDK upgrade that changes
them fails there. `transport = "sdk"` in a model block goes through the SDK instead.
"""
from __future__ import annotations

import asyncio
import json

ANTHROPIC_PATH = "messages"
OPENAI_PATH = "chat/completions"


def body_bytes(provider: str, body: dict) -> bytes:
    """The request body exactly as the SDK serialises it."""
    if provider == "anthropic":
        ordered = {k: body[k] for k in sorted(body)}
    else:
        ordered = {k: body[k] for k in ("model", "messages") if k in body}
        ordered.update((k, body[k]) for k in sorted(body) if k not in ordered)
    return json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sdk_request(client, provider: str):
    """(URL, headers) of a create() request as the SDK builds it (its own `_build_request`, so its
    default, auth, version and per-request headers are exactly the SDK's); `host` and
    `content-length` are left to the HTTP client. Call inside the event loop that sends (the SDK
    says `x-stainless-async: async:asyncio` there)."""
    if provider == "anthropic":
        from anthropic._models import FinalRequestOptions
        path = "/v1/" + ANTHROPIC_PATH
    else:
        from openai._models import FinalRequestOptions
        path = "/" + OPENAI_PATH
    request = client._build_request(FinalRequestOptions.construct(method="post", url=path, json_data={}))
    headers = {k: v for k, v in request.headers.items() if k not in ("host", "content-length")}
    return str(request.url), headers


def parse(provider: str, data: dict) -> tuple[str, dict]:
    """(text, usage) from a provider's JSON reply; usage as LLMModel counts it."""
    u = data.get("usage") or {}
    if provider == "anthropic":
        text = "".join(b.get("text", "") for b in data.get("content") or () if isinstance(b, dict))
        return text, {"input": u.get("input_tokens") or 0, "output": u.get("output_tokens") or 0,
                      "cache_read": u.get("cache_read_input_tokens") or 0,
                      "cache_write": u.get("cache_creation_input_tokens") or 0}
    choices = data.get("choices") or [{}]
    text = ((choices[0] or {}).get("message") or {}).get("content") or ""
    cached = (u.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    return text, {"input": (u.get("prompt_tokens") or 0) - cached, "output": u.get("completion_tokens") or 0,
                  "cache_read": cached, "cache_write": 0}


class Transport:
    """POSTs to one SDK client's base URL over an aiohttp session of the calling event loop."""

    def __init__(self, client, provider: str, connections: int, timeout: float):
        self.client, self.provider, self.timeout = client, provider, float(timeout)
        self.url = self.headers = None  # the SDK's, taken in the sending loop (sdk_request)
        self.connections = connections
        self.session = None
        self.proxy = None

    def _session(self):
        import aiohttp

        if self.session is None:
            connector = aiohttp.TCPConnector(limit=self.connections, limit_per_host=0, ttl_dns_cache=300)
            # The proxy the environment names (HTTPS_PROXY, NO_PROXY, ...), looked up once: aiohttp's
            # trust_env looks it up (and reads ~/.netrc) again for every request, 10% of our CPU.
            try:
                from yarl import URL

                self.proxy = aiohttp.helpers.get_env_proxy_for_url(URL(self.url))[0]
            except LookupError:
                self.proxy = None
            self.session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=self.timeout),
                                                 auto_decompress=True)
        return self.session

    async def send(self, body: dict) -> tuple[str, dict]:
        import aiohttp

        data = body_bytes(self.provider, body)
        if self.url is None:
            self.url, self.headers = sdk_request(self.client, self.provider)
        try:
            session = self._session()
            async with session.post(self.url, data=data, headers=self.headers, proxy=self.proxy) as response:
                content = await response.read()
                status, headers = response.status, response.headers
        except asyncio.TimeoutError:
            raise self._sdk().APITimeoutError(request=self._request(data)) from None
        except (aiohttp.ClientError, OSError) as e:
            raise self._sdk().APIConnectionError(message=f"Connection error: {e}", request=self._request(data)) from None
        if status >= 400:
            raise self._status_error(status, headers, content, data)
        return parse(self.provider, json.loads(content))

    def _sdk(self):
        if self.provider == "anthropic":
            import anthropic

            return anthropic
        import openai

        return openai

    def _request(self, data: bytes):
        import httpx2

        return httpx2.Request("POST", self.url, headers=self.headers, content=data)

    def _status_error(self, status: int, headers, content: bytes, data: bytes):
        """The SDK's own exception for this response (RateLimitError, OverloadedError, ...)."""
        import httpx2

        response = httpx2.Response(status, headers=list(headers.items()), content=content, request=self._request(data))
        return self.client._make_status_error_from_response(response)

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None
