"""A fake Ollama server on a real loopback socket, speaking Ollama's native API byte for byte.

Why a fake and not mocks: the Ollama provider must be proven against what really crosses the wire
(NDJSON lines flushed one by one, a ``{"error": …}`` line after a 200, a connection cut in the middle
of a chunked body, a server that goes quiet), and the egress tests need every byte a "local" server
received. So this is a Starlette app served by :class:`~trooper.testing._runner.LoopbackServer`,
with the response shapes of ``ollama/ollama`` (``api/types.go``, ``server/routes.go``):

* ``POST /api/chat`` — NDJSON (``application/x-ndjson``) when ``stream`` is absent or true, one JSON
  object when it is false; 404 ``model 'x' not found`` for a model that is not installed;
* ``POST /api/show`` — ``model_info`` with ``"<arch>.context_length"``, ``capabilities``, ``details``;
  404 ``model "x" not found, try pulling it first``;
* ``GET /api/tags``, ``GET /api/version``, ``GET``/``HEAD /`` ("Ollama is running");
* anything else — 404 ``404 page not found`` as plain text, like gin.

Replies to ``/api/chat`` come from a queue of scripted items (:class:`Reply`, :class:`HttpError`,
:class:`RawReply`, or a callable that receives the :class:`RecordedRequest`); when the queue is empty
the answer is ``Reply()`` — the text "local ok". Every request is recorded before it is answered.

"Ollama is down" is a closed port: :func:`unused_port_url` gives one.

Usage::

    with FakeOllama() as ollama:
        ollama.enqueue(Reply(text="Hello there"), HttpError(500, "boom"))
        ...  # point the provider at ollama.url
        assert ollama.last_json("/api/chat")["options"]["num_ctx"] == 8192
"""

from __future__ import annotations

import asyncio
import re
import socket
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Final, Literal

import attrs
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from trooper.testing._recording import RecordedRequest, RequestLog
from trooper.testing._runner import LoopbackServer

__all__ = [
    "DEFAULT_CONTEXT_LENGTH",
    "DEFAULT_MODEL",
    "FakeModel",
    "FakeOllama",
    "HttpError",
    "RawReply",
    "RecordedRequest",
    "Reply",
    "Script",
    "final_object",
    "stream_lines",
    "unused_port_url",
]

DEFAULT_MODEL: Final = "qwen3"
DEFAULT_CONTEXT_LENGTH: Final = 32768
OLLAMA_VERSION: Final = "0.14.2"

_NDJSON: Final = "application/x-ndjson"
_JSON: Final = "application/json; charset=utf-8"
_TEXT: Final = "text/plain; charset=utf-8"
_ALL_METHODS: Final = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
#: Granularity of the interruptible sleeps, so :meth:`FakeOllama.stop` never waits on a slow reply.
_TICK: Final = 0.02


def unused_port_url() -> str:
    """A ``http://127.0.0.1:<port>`` URL on which nothing listens: "the local server is down".

    The port comes from the kernel (bind to 0) and is released at once, so a connection to it is
    refused. Another process could grab it in between; on a test machine that is vanishingly rare.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# ------------------------------------------------------------------------------------------ values


@attrs.frozen
class FakeModel:
    """An installed model: what ``/api/show`` and ``/api/tags`` report, and what chat accepts."""

    name: str
    context_length: int = DEFAULT_CONTEXT_LENGTH
    capabilities: tuple[str, ...] = ("completion", "tools", "thinking")
    #: The GGUF architecture, the prefix of ``<arch>.context_length``; defaults to the name's family.
    architecture: str | None = None
    parameter_size: str = "8.2B"
    quantization_level: str = "Q4_K_M"

    @property
    def tagged(self) -> str:
        return _tagged(self.name)

    @property
    def arch(self) -> str:
        if self.architecture:
            return self.architecture
        base = self.name.rsplit("/", 1)[-1].split(":", 1)[0]
        return re.sub(r"[^a-z0-9]", "", base.lower()) or "llama"


def _calls(value: Iterable[Mapping[str, Any]]) -> tuple[Mapping[str, Any], ...]:
    return tuple(value)


def _lines(value: Iterable[bytes | Mapping[str, Any]]) -> tuple[bytes | Mapping[str, Any], ...]:
    return tuple(value)


@attrs.frozen
class Reply:
    """A successful chat answer, streamed the way Ollama streams it.

    Lines, in order: ``thinking`` split into word chunks (``message.thinking``), ``text`` split into
    word chunks (``message.content``), one line with all ``tool_calls``, and the ``done:true`` line
    with ``done_reason`` and the metrics. With ``stream:false`` the same content comes as one object.

    Failure knobs: ``error`` sends ``{"error": error}`` after ``error_after`` lines (status stays
    200; with ``stream:false`` it becomes a 500); ``drop_after`` cuts the connection after that many
    lines (mid-body with ``stream:false``); ``delay`` waits between lines; ``headers_delay`` waits
    before the status line (a model that is still loading).

    ``tool_calls`` items are either Ollama's own shape ``{"id"?, "function": {...}}`` (sent as they
    are) or the shorthand ``{"name", "arguments", "id"?}``.
    """

    text: str = "local ok"
    thinking: str = ""
    tool_calls: Sequence[Mapping[str, Any]] = attrs.field(default=(), converter=_calls)
    done_reason: str = "stop"
    #: The prompt's token count the done line reports: ``"counted"`` (the default) counts the request
    #: as a tokenizer would, roughly (four characters a token, four tokens of framing a message);
    #: ``None`` leaves it out, as Ollama does when it is zero.
    prompt_eval_count: int | Literal["counted"] | None = "counted"
    #: Defaults to the number of content lines sent.
    eval_count: int | None = None
    delay: float = 0.0
    headers_delay: float = 0.0
    error: str | None = None
    error_after: int = 1
    drop_after: int | None = None


@attrs.frozen
class HttpError:
    """An error status with Ollama's body ``{"error": message}`` (or ``raw`` bytes when given)."""

    status: int
    message: str = "internal error"
    raw: bytes | None = None


@attrs.frozen
class RawReply:
    """Exact bytes: each item of ``lines`` is sent as one chunk (dicts are JSON-encoded + ``\\n``)."""

    lines: Sequence[bytes | Mapping[str, Any]] = attrs.field(default=(), converter=_lines)
    status: int = 200
    content_type: str = _NDJSON
    delay: float = 0.0


Item = Reply | HttpError | RawReply
#: What the reply queue holds: a reply, or a function of the request that returns one (None = default).
Script = Item | Callable[[RecordedRequest], Item | None]


# ------------------------------------------------------------------------------------------ server


class FakeOllama(RequestLog):
    """``with FakeOllama() as ollama: ollama.url`` — a scripted Ollama that records every request."""

    def __init__(
        self,
        models: Iterable[str | FakeModel] = (DEFAULT_MODEL,),
        *,
        context_length: int = DEFAULT_CONTEXT_LENGTH,
        version: str = OLLAMA_VERSION,
        replies: Iterable[Script] = (),
        port: int = 0,
    ) -> None:
        """``port=0`` (the default) takes a free port; a fixed one serves the fake at a known URL."""
        self.port = port
        self.version = version
        self.models: dict[str, FakeModel] = {}
        for model in models:
            entry = model if isinstance(model, FakeModel) else FakeModel(model, context_length=context_length)
            self.models[entry.tagged] = entry
        super().__init__()
        self._queue: deque[Script] = deque(replies)
        self._closing = threading.Event()
        self._server: LoopbackServer | None = None
        #: The ASGI app: served on a socket by :meth:`start`, or driven in-process
        #: (:mod:`trooper.testing.inprocess`).
        self.app: Starlette = self._starlette()

    # -- lifecycle

    def start(self) -> FakeOllama:
        self._closing.clear()
        self._server = LoopbackServer(self.app, port=self.port).start()
        return self

    def stop(self) -> None:
        """Stop within about a second: slow replies in flight notice and cut their connections."""
        self._closing.set()
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> FakeOllama:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeOllama is not running; call start() or use it as a context manager")
        return self._server.url

    # -- scripting and inspection (thread-safe: the server runs in its own thread)

    def enqueue(self, *items: Script) -> None:
        """Queue replies for the next ``/api/chat`` requests, first in, first out."""
        with self._lock:
            self._queue.extend(items)

    @property
    def pending(self) -> int:
        """Scripted replies not used yet."""
        with self._lock:
            return len(self._queue)

    def chat_requests(self) -> list[Any]:
        """The JSON bodies of every ``/api/chat`` request, in order."""
        return [r.json() for r in self.requests if r.path == "/api/chat"]

    def reset(self) -> None:
        """Forget recorded requests and unused scripted replies: a clean slate between tests."""
        with self._lock:
            self._requests.clear()
            self._queue.clear()

    # -- the ASGI app

    def _starlette(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/", self._root, methods=["GET", "HEAD"]),
                Route("/api/version", self._version, methods=["GET"]),
                Route("/api/tags", self._tags, methods=["GET"]),
                Route("/api/show", self._show, methods=["POST"]),
                Route("/api/chat", self._chat, methods=["POST"]),
                Route("/{path:path}", self._not_found, methods=_ALL_METHODS),
            ]
        )

    async def _record(self, request: Request) -> RecordedRequest:
        recorded = RecordedRequest(
            method=request.method,
            path=request.url.path,
            query=request.url.query,
            headers=tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw),
            body=await request.body(),
        )
        self._keep(recorded)
        return recorded

    async def _root(self, request: Request) -> Response:
        await self._record(request)
        return Response(b"Ollama is running", media_type=_TEXT)

    async def _version(self, request: Request) -> Response:
        await self._record(request)
        return _json(200, {"version": self.version})

    async def _not_found(self, request: Request) -> Response:
        await self._record(request)
        return Response(b"404 page not found", status_code=404, media_type=_TEXT)

    async def _tags(self, request: Request) -> Response:
        await self._record(request)
        return _json(200, {"models": [_tag_entry(m) for m in self.models.values()]})

    async def _show(self, request: Request) -> Response:
        recorded = await self._record(request)
        body, problem = _parse(recorded.body)
        if problem is not None:
            return problem
        name = str(body.get("model") or body.get("name") or "")
        if not name:
            return _error(400, "model is required")
        model = self.models.get(_tagged(name))
        if model is None:
            return _error(404, f'model "{name}" not found, try pulling it first')
        return _json(200, _show_entry(model))

    async def _chat(self, request: Request) -> Response:
        recorded = await self._record(request)
        body, problem = _parse(recorded.body)
        if problem is not None:
            return problem
        name = str(body.get("model") or "")
        if not name:
            return _error(400, "model is required")
        model = self.models.get(_tagged(name))
        if model is None:
            return _error(404, f"model '{name}' not found")
        if body.get("tools") and "tools" not in model.capabilities:
            return _error(400, f'"{name}" does not support tools')
        think = body.get("think")
        if think not in (None, False, "") and "thinking" not in model.capabilities:
            return _error(400, f'"{name}" does not support thinking')
        item = self._next(recorded)
        if isinstance(item, Reply) and item.prompt_eval_count == "counted":
            item = attrs.evolve(item, prompt_eval_count=prompt_tokens(body))
        stream = body.get("stream", True) is not False
        if isinstance(item, HttpError):
            raw = item.raw if item.raw is not None else orjson.dumps({"error": item.message})
            return _Lines(item.status, _JSON, [raw], closing=self._closing, content_length=True)
        if isinstance(item, RawReply):
            parts = [p if isinstance(p, bytes) else orjson.dumps(p) + b"\n" for p in item.lines]
            return _Lines(item.status, item.content_type, parts, delay=item.delay, closing=self._closing)
        return self._reply(item, name, stream)

    def _next(self, recorded: RecordedRequest) -> Item:
        with self._lock:
            script = self._queue.popleft() if self._queue else None
        if script is None:
            return Reply()
        if isinstance(script, Reply | HttpError | RawReply):
            return script
        return script(recorded) or Reply()

    def _reply(self, reply: Reply, model: str, stream: bool) -> Response:
        lines = stream_lines(reply, model)
        if stream:
            if reply.error is not None:
                cut = max(0, min(reply.error_after, len(lines) - 1))
                lines = [*lines[:cut], {"error": reply.error}]
            parts = [orjson.dumps(line) + b"\n" for line in lines]
            return _Lines(
                200,
                _NDJSON,
                parts,
                delay=reply.delay,
                headers_delay=reply.headers_delay,
                drop_after=reply.drop_after,
                closing=self._closing,
            )
        if reply.error is not None:
            return _Lines(
                500,
                _JSON,
                [orjson.dumps({"error": reply.error})],
                headers_delay=reply.headers_delay,
                closing=self._closing,
                content_length=True,
            )
        whole = orjson.dumps(final_object(reply, model))
        if reply.drop_after is not None:  # promise the whole body, send half of it, hang up
            return _Lines(
                200,
                _JSON,
                [whole[: len(whole) // 2], whole[len(whole) // 2 :]],
                drop_after=1,
                headers_delay=reply.headers_delay,
                closing=self._closing,
                declared_length=len(whole),
            )
        return _Lines(
            200, _JSON, [whole], headers_delay=reply.headers_delay, closing=self._closing, content_length=True
        )


# --------------------------------------------------------------------------------- wire shapes


def _tagged(name: str) -> str:
    """Ollama's name normalisation: ``qwen3`` and ``qwen3:latest`` are the same model."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _words(text: str) -> list[str]:
    """Split into word-sized chunks (each word with its trailing space), the way models stream."""
    return re.findall(r"\S+\s*|\s+", text)


def _tool_call(call: Mapping[str, Any], index: int) -> dict[str, Any]:
    if "function" in call:
        return dict(call)
    out: dict[str, Any] = {}
    if call.get("id"):
        out["id"] = call["id"]
    out["function"] = {"index": index, "name": call["name"], "arguments": call.get("arguments", {})}
    return out


def prompt_tokens(body: Mapping[str, Any]) -> int:
    """About what a tokenizer would count for an ``/api/chat`` body: what ``"counted"`` reports."""
    found = body.get("messages")
    messages: list[Any] = found if isinstance(found, list) else []
    chars = sum(len(orjson.dumps(message)) for message in messages)
    chars += len(orjson.dumps(body.get("tools"))) if body.get("tools") else 0
    return max(1, chars // 4 + 4 * len(messages))


def _metrics(reply: Reply, sent: int) -> dict[str, Any]:
    out: dict[str, Any] = {"total_duration": 182242375, "load_duration": 41295167}
    if isinstance(reply.prompt_eval_count, int):
        out["prompt_eval_count"] = reply.prompt_eval_count
        out["prompt_eval_duration"] = 24573166
    out["eval_count"] = reply.eval_count if reply.eval_count is not None else max(1, sent)
    out["eval_duration"] = 115959084
    return out


def stream_lines(reply: Reply, model: str) -> list[dict[str, Any]]:
    """The NDJSON objects Ollama streams for ``reply`` (field order as Ollama's Go structs)."""
    lines: list[dict[str, Any]] = []
    for piece in _words(reply.thinking):
        lines.append(
            {
                "model": model,
                "created_at": _now(),
                "message": {"role": "assistant", "content": "", "thinking": piece},
                "done": False,
            }
        )
    for piece in _words(reply.text):
        lines.append(
            {"model": model, "created_at": _now(), "message": {"role": "assistant", "content": piece}, "done": False}
        )
    if reply.tool_calls:
        calls = [_tool_call(call, i) for i, call in enumerate(reply.tool_calls)]
        lines.append(
            {
                "model": model,
                "created_at": _now(),
                "message": {"role": "assistant", "content": "", "tool_calls": calls},
                "done": False,
            }
        )
    lines.append(
        {
            "model": model,
            "created_at": _now(),
            "message": {"role": "assistant", "content": ""},
            "done_reason": reply.done_reason,
            "done": True,
            **_metrics(reply, len(lines)),
        }
    )
    return lines


def final_object(reply: Reply, model: str) -> dict[str, Any]:
    """The single object Ollama answers with when ``stream`` is false."""
    message: dict[str, Any] = {"role": "assistant", "content": reply.text}
    if reply.thinking:
        message["thinking"] = reply.thinking
    if reply.tool_calls:
        message["tool_calls"] = [_tool_call(call, i) for i, call in enumerate(reply.tool_calls)]
    sent = len(_words(reply.thinking)) + len(_words(reply.text)) + (1 if reply.tool_calls else 0)
    return {
        "model": model,
        "created_at": _now(),
        "message": message,
        "done_reason": reply.done_reason,
        "done": True,
        **_metrics(reply, sent),
    }


def _details(model: FakeModel) -> dict[str, Any]:
    return {
        "parent_model": "",
        "format": "gguf",
        "family": model.arch,
        "families": [model.arch],
        "parameter_size": model.parameter_size,
        "quantization_level": model.quantization_level,
    }


def _tag_entry(model: FakeModel) -> dict[str, Any]:
    return {
        "name": model.tagged,
        "model": model.tagged,
        "modified_at": "2026-01-15T10:00:00.000000Z",
        "size": 5_200_000_000,
        "digest": "0" * 64,
        "details": _details(model),
    }


def _show_entry(model: FakeModel) -> dict[str, Any]:
    arch = model.arch
    return {
        "license": "Apache License 2.0",
        "modelfile": f'# Modelfile generated by "ollama show"\nFROM {model.tagged}\n',
        "parameters": "temperature 0.6\ntop_k 20\ntop_p 0.95",
        "template": "{{ .Prompt }}",
        "details": _details(model),
        "model_info": {
            "general.architecture": arch,
            "general.parameter_count": 8_190_735_360,
            f"{arch}.block_count": 36,
            f"{arch}.context_length": model.context_length,
            f"{arch}.embedding_length": 4096,
        },
        "capabilities": list(model.capabilities),
        "modified_at": "2026-01-15T10:00:00.000000Z",
    }


def _json(status: int, payload: Any) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type=_JSON)


def _error(status: int, message: str) -> Response:
    return _json(status, {"error": message})


def _parse(body: bytes) -> tuple[dict[str, Any], Response | None]:
    try:
        parsed = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return {}, _error(400, "invalid character in request body")
    if not isinstance(parsed, dict):
        return {}, _error(400, "unexpected EOF" if parsed is None else "invalid request body")
    return parsed, None


class _Lines(Response):
    """Sends ``parts`` one ASGI message each, so every NDJSON line is flushed on its own.

    It can pause before the headers and between parts, and it can stop early without finishing
    the body: uvicorn then closes the socket, which is exactly a connection dropped mid-stream.
    Every pause is cut short when the fake stops, so shutdown never waits for a slow script.
    """

    def __init__(
        self,
        status: int,
        media_type: str,
        parts: Sequence[bytes],
        *,
        closing: threading.Event,
        delay: float = 0.0,
        headers_delay: float = 0.0,
        drop_after: int | None = None,
        content_length: bool = False,
        declared_length: int | None = None,
    ) -> None:
        # Response.__init__ is skipped on purpose: it would add content-length: 0 to a stream.
        self.status_code = status
        self.media_type = media_type
        self.background = None
        self._parts = list(parts)
        self._closing = closing
        self._delay = delay
        self._headers_delay = headers_delay
        self._drop_after = drop_after
        length = (
            declared_length
            if declared_length is not None
            else (sum(len(p) for p in self._parts) if content_length else None)
        )
        self.raw_headers = [(b"content-type", media_type.encode("latin-1"))]
        if length is not None:
            self.raw_headers.append((b"content-length", str(length).encode()))

    async def _sleep(self, seconds: float) -> bool:
        """Sleep in small steps; False when the fake is stopping."""
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while not self._closing.is_set():
            left = end - loop.time()
            if left <= 0:
                return True
            await asyncio.sleep(min(_TICK, left))
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._headers_delay and not await self._sleep(self._headers_delay):
            body = orjson.dumps({"error": "server shutting down"})
            await send(
                {
                    "type": "http.response.start",
                    "status": 503,
                    "headers": [(b"content-type", _JSON.encode()), (b"content-length", str(len(body)).encode())],
                }
            )
            await send({"type": "http.response.body", "body": body, "more_body": False})
            return
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        for index, part in enumerate(self._parts):
            if self._drop_after is not None and index >= self._drop_after:
                return  # leave the body unfinished: the server closes the connection
            if index and self._delay and not await self._sleep(self._delay):
                return
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
