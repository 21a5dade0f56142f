"""The ``ollama`` local provider: an Anthropic Messages body in, Ollama's ``/api/chat``, Anthropic events out.

Split the sans-IO way, like ``gidgethub/sansio.py`` under ``gidgethub/httpx.py``:

* pure, synchronous mapping — :func:`to_ollama_request` (Anthropic body → Ollama body),
  :class:`EventTranslator` (Ollama chunks → the full Anthropic event grammar),
  :class:`NDJSONDecoder`, :func:`classify` (error responses → the typed taxonomy) and
  :func:`context_length_from_show` — testable without a network or an event loop;
* a thin async edge — :class:`OllamaProvider` — that owns the httpx client, the timeouts and nothing
  else.

Choices worth knowing:

* Ollama's native API is used rather than its Anthropic-compatible ``/v1/messages`` because only the
  native one takes ``options.num_ctx`` per request; without it Ollama silently truncates the memory
  Trooper budgeted for.
* Ollama reports token counts only in its final chunk, so ``message_start`` carries an estimate
  (characters / 4, images excluded) and ``message_delta`` the real cumulative counts
  (``prompt_eval_count`` / ``eval_count``), which every client takes as authoritative.
* Local thinking has no signature. Thinking blocks start with ``"signature": ""`` (as Anthropic's own
  ``content_block_start`` does, and because the SDK's ``ThinkingBlock`` requires the field) and no
  ``signature_delta`` is ever invented. When the client asked for ``thinking.display: "omitted"``
  no thinking block is emitted at all.
* An image given by URL (or by Files-API id) cannot be sent: Ollama takes only base64 data and this
  provider never fetches from the network on a model's behalf. It becomes a short text placeholder
  naming the URL, so the model knows an image was there.
* A model without thinking support answers ``think: true`` with a 400; since Claude Code always asks
  for thinking, that 400 is retried once without ``think`` and remembered per model.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import Any, Final, Literal

import aiohttp
import httpx
import orjson

from trooper.config import DEFAULT_OLLAMA_BASE_URL, Config, OllamaConfig
from trooper.providers.base import (
    AuthError,
    BadRequest,
    LocalRequest,
    ModelNotFound,
    Overloaded,
    ProviderError,
    Unreachable,
)
from trooper.wire import JSON, new_message_id, new_tool_use_id

__all__ = [
    "EventTranslator",
    "NDJSONDecoder",
    "OllamaProvider",
    "classify",
    "context_length_from_show",
    "estimate_input_tokens",
    "stop_reason",
    "to_ollama_messages",
    "to_ollama_request",
    "to_ollama_tools",
]

_JSON_HEADERS: Final = {"content-type": "application/json", "accept": "application/x-ndjson, application/json"}
#: Anthropic accepts tool ids matching this; an Ollama id outside it is replaced by a ``toolu_`` one.
_TOOL_ID: Final = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
#: Errors that may be raised by the transport (httpx's own, or aiohttp's when it leaks one unmapped).
_TRANSPORT_ERRORS: Final = (httpx.TransportError, aiohttp.ClientError, OSError)
_ERROR_BODY_LIMIT: Final = 64 * 1024


# ====================================================================== Anthropic body → Ollama body


def to_ollama_request(
    body: Mapping[str, Any],
    *,
    model: str,
    stream: bool,
    num_ctx: int | None = None,
    keep_alive: str | int | None = None,
) -> JSON:
    """The ``/api/chat`` body for an Anthropic Messages ``body``.

    Fields with no Ollama equivalent (``tool_choice``, ``cache_control``, ``metadata``,
    ``context_management``, ``output_config``, ``service_tier``…) are dropped; Ollama would ignore
    them anyway, and leaving them out keeps the local request small and its bytes predictable.
    """
    payload: JSON = {"model": model, "messages": to_ollama_messages(body), "stream": stream}
    tools = to_ollama_tools(body.get("tools") or ())
    if tools:
        payload["tools"] = tools
    think = _think(body.get("thinking"))
    if think is not None:
        payload["think"] = think
    options = _options(body, num_ctx)
    if options:
        payload["options"] = options
    if keep_alive is not None:
        payload["keep_alive"] = keep_alive
    return payload


def _options(body: Mapping[str, Any], num_ctx: int | None) -> JSON:
    options: JSON = {}
    if body.get("max_tokens") is not None:
        options["num_predict"] = body["max_tokens"]
    for name in ("temperature", "top_p", "top_k"):
        if body.get(name) is not None:
            options[name] = body[name]
    if body.get("stop_sequences"):
        options["stop"] = list(body["stop_sequences"])
    if num_ctx is not None:  # always: Ollama's default context is small and truncates silently
        options["num_ctx"] = num_ctx
    return options


def _think(thinking: Any) -> bool | None:
    """``enabled``/``adaptive`` → ``True``, ``disabled`` → ``False``, absent → the model's default."""
    if not isinstance(thinking, Mapping):
        return None
    kind = thinking.get("type")
    if kind in ("enabled", "adaptive"):
        return True
    if kind == "disabled":
        return False
    return None


def _thinking_displayed(body: Mapping[str, Any]) -> bool:
    thinking = body.get("thinking")
    return not (isinstance(thinking, Mapping) and thinking.get("display") == "omitted")


def to_ollama_tools(tools: Iterable[Any]) -> list[JSON]:
    """Client tools as Ollama functions; server tools (a ``type`` and no ``input_schema``) are skipped,
    since a local model cannot run Anthropic's web search or code execution."""
    out: list[JSON] = []
    for tool in tools:
        if not isinstance(tool, Mapping) or "input_schema" not in tool:
            continue
        function: JSON = {"name": tool.get("name", "")}
        if tool.get("description"):
            function["description"] = tool["description"]
        function["parameters"] = tool["input_schema"]
        out.append({"type": "function", "function": function})
    return out


def _system_text(system: Any) -> str:
    if isinstance(system, str):
        return system
    if isinstance(system, Sequence):
        return "\n\n".join(b["text"] for b in system if isinstance(b, Mapping) and isinstance(b.get("text"), str))
    return ""


def _image(block: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """``(base64 data, None)`` for an image Ollama can take, ``(None, placeholder)`` otherwise."""
    source = block.get("source")
    if not isinstance(source, Mapping):
        return None, "[image omitted]"
    kind = source.get("type")
    if kind == "base64" and isinstance(source.get("data"), str):
        return source["data"], None
    if kind == "url":
        return None, f"[image at {source.get('url', '?')} — not available to the local model]"
    if kind == "file":
        return None, f"[image file {source.get('file_id', '?')} — not available to the local model]"
    return None, "[image omitted]"


def _document_text(block: Mapping[str, Any]) -> str:
    """Plain-text documents keep their text; PDFs, URLs and files become a placeholder."""
    source = block.get("source")
    title = block.get("title")
    label = f"document {title!r}" if title else "document"
    if isinstance(source, Mapping):
        if source.get("type") == "text" and isinstance(source.get("data"), str):
            return f"[{label}]\n{source['data']}" if title else source["data"]
        if source.get("type") == "content":
            inner = _texts(source.get("content"))
            return f"[{label}]\n{inner}" if title else inner
    return f"[{label} — not available to the local model]"


def _texts(content: Any) -> str:
    """The text of a ``content`` that is a string or a list of blocks (images become placeholders)."""
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for block in content or ():
        if not isinstance(block, Mapping):
            continue
        text = _block_text(block)
        if text is None and block.get("type") == "image":
            text = _image(block)[1]
        if text:
            parts.append(text)
    return "\n\n".join(parts)


def _block_text(block: Mapping[str, Any]) -> str | None:
    kind = block.get("type")
    if kind == "text":
        return str(block.get("text", ""))
    if kind == "document":
        return _document_text(block)
    if kind == "search_result":
        head = " ".join(str(block[k]) for k in ("title", "source") if block.get(k))
        body = _texts(block.get("content"))
        return f"[{head}]\n{body}" if head else body
    return None


def _tool_message(block: Mapping[str, Any], names: Mapping[str, str]) -> JSON:
    """One ``role: tool`` message; images inside the result ride in its ``images`` list."""
    content = block.get("content")
    images: list[str] = []
    parts: list[str] = []
    if isinstance(content, str):
        parts.append(content)
    else:
        for item in content or ():
            if not isinstance(item, Mapping):
                continue
            if item.get("type") == "image":
                data, placeholder = _image(item)
                if data is not None:
                    images.append(data)
                elif placeholder:
                    parts.append(placeholder)
            else:
                text = _block_text(item)
                if text:
                    parts.append(text)
    text = "\n\n".join(parts)
    if block.get("is_error"):
        text = f"Error: {text}" if text else "Error"
    tool_id = str(block.get("tool_use_id", ""))
    message: JSON = {"role": "tool", "content": text}
    if images:
        message["images"] = images
    if tool_id in names:
        message["tool_name"] = names[tool_id]
    if tool_id:
        message["tool_call_id"] = tool_id
    return message


def to_ollama_messages(body: Mapping[str, Any]) -> list[JSON]:
    """Anthropic ``system`` + ``messages`` as Ollama messages, order preserved.

    A user message may hold tool results and text: each ``tool_result`` becomes its own
    ``role: tool`` message where it stands (its ``tool_name`` looked up from the assistant
    ``tool_use`` that asked for it), and the text/image blocks around them become user messages.
    """
    out: list[JSON] = []
    system = _system_text(body.get("system"))
    if system:
        out.append({"role": "system", "content": system})
    names: dict[str, str] = {}
    for message in body.get("messages") or ():
        if not isinstance(message, Mapping):
            continue
        role = str(message.get("role", "user"))
        content = message.get("content")
        if isinstance(content, str):
            out.append({"role": role, "content": content})
        elif role == "assistant":
            assistant = _assistant_message(content or (), names)
            if assistant["content"] or len(assistant) > 2:  # e.g. only redacted_thinking: nothing to send
                out.append(assistant)
        else:
            out.extend(_user_messages(role, content or (), names))
    return out


def _assistant_message(blocks: Iterable[Any], names: dict[str, str]) -> JSON:
    texts: list[str] = []
    thinking: list[str] = []
    calls: list[JSON] = []
    for block in blocks:
        if not isinstance(block, Mapping):
            continue
        kind = block.get("type")
        if kind == "tool_use":
            tool_id = str(block.get("id", ""))
            name = str(block.get("name", ""))
            if tool_id:
                names[tool_id] = name
            call: JSON = {"id": tool_id} if tool_id else {}
            call["function"] = {"name": name, "arguments": block.get("input") or {}}
            calls.append(call)
        elif kind == "thinking":  # the signature is Anthropic's, meaningless to a local model
            if block.get("thinking"):
                thinking.append(str(block["thinking"]))
        else:  # text; redacted_thinking and server-tool blocks have nothing a local model can use
            text = _block_text(block)
            if text:
                texts.append(text)
    out: JSON = {"role": "assistant", "content": "\n\n".join(texts)}
    if thinking:
        out["thinking"] = "\n\n".join(thinking)
    if calls:
        out["tool_calls"] = calls
    return out


def _user_messages(role: str, blocks: Iterable[Any], names: Mapping[str, str]) -> list[JSON]:
    out: list[JSON] = []
    texts: list[str] = []
    images: list[str] = []

    def flush() -> None:
        if texts or images:
            message: JSON = {"role": role, "content": "\n\n".join(texts)}
            if images:
                message["images"] = list(images)
            out.append(message)
            texts.clear()
            images.clear()

    for block in blocks:
        if not isinstance(block, Mapping):
            continue
        kind = block.get("type")
        if kind == "tool_result":
            flush()
            out.append(_tool_message(block, names))
        elif kind == "image":
            data, placeholder = _image(block)
            if data is not None:
                images.append(data)
            elif placeholder:
                texts.append(placeholder)
        else:
            text = _block_text(block)
            if text:
                texts.append(text)
    flush()
    return out


def estimate_input_tokens(payload: Mapping[str, Any]) -> int:
    """A rough prompt size (characters / 4, images excluded) for ``message_start``.

    Only a placeholder: Ollama tells the real count in its last chunk, and ``message_delta``
    carries it (the same estimate Ollama's own Anthropic layer uses when it has no metrics).
    """
    chars = 0
    for message in payload.get("messages") or ():
        chars += len(str(message.get("content", ""))) + len(str(message.get("thinking", "")))
        if message.get("tool_calls"):
            chars += len(orjson.dumps(message["tool_calls"]))
    if payload.get("tools"):
        chars += len(orjson.dumps(payload["tools"]))
    return chars // 4


# ====================================================================== Ollama chunks → Anthropic events


class NDJSONDecoder:
    """Incremental NDJSON parser: feed bytes as they arrive, get each complete JSON object."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[JSON]:
        self._buffer += data
        if b"\n" not in data:
            return []
        *lines, self._buffer = self._buffer.split(b"\n")
        return [_object(line) for line in lines if line.strip()]

    def flush(self) -> list[JSON]:
        """The last line when the body did not end with a newline (``stream: false`` bodies)."""
        line, self._buffer = self._buffer, b""
        return [_object(line)] if line.strip() else []


def _object(line: bytes) -> JSON:
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise ProviderError(f"Ollama sent a line that is not JSON: {line[:120]!r}") from None
    if not isinstance(value, dict):
        raise ProviderError(f"Ollama sent JSON that is not an object: {line[:120]!r}")
    return value


def _whole_body(body: bytes) -> list[JSON]:
    """A ``stream: false`` body: one object, or NDJSON from a server that streamed anyway."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        decoder = NDJSONDecoder()
        return [*decoder.feed(body), *decoder.flush()]
    if not isinstance(value, dict):
        raise ProviderError(f"Ollama sent JSON that is not an object: {body[:120]!r}")
    return [value]


def stop_reason(done_reason: str | None, tool_calls: bool) -> str:
    """Ollama says ``stop`` even when it called tools, so tools win.

    It never says which stop sequence matched, so ``stop_sequence`` is not reported: ``end_turn``.
    """
    if tool_calls:
        return "tool_use"
    if done_reason == "length":
        return "max_tokens"
    return "end_turn"


class EventTranslator:
    """Turns Ollama ``/api/chat`` chunks (streamed, or the one ``stream: false`` object) into events.

    ``feed`` returns the events a chunk produces: ``message_start`` with the first chunk, a
    thinking block for ``message.thinking``, a text block for ``message.content`` (a block stays
    open while the same kind keeps coming), a whole ``tool_use`` block per tool call (Ollama sends
    calls whole), and ``message_delta`` + ``message_stop`` with the ``done: true`` chunk.
    An ``{"error": …}`` chunk raises :class:`ProviderError` — after whatever was already returned.
    """

    def __init__(
        self,
        model: str,
        *,
        input_tokens: int = 0,
        emit_thinking: bool = True,
        message_id: str | None = None,
        new_tool_id: Callable[[], str] = new_tool_use_id,
    ) -> None:
        self.model = model
        self.message_id = message_id or new_message_id()
        self.started = False
        self.done = False
        self._input_tokens = input_tokens
        self._emit_thinking = emit_thinking
        self._new_tool_id = new_tool_id
        self._open: Literal["text", "thinking"] | None = None
        self._next_index = 0
        self._tool_ids: set[str] = set()

    def feed(self, chunk: Mapping[str, Any]) -> list[JSON]:
        """The events ``chunk`` produces (raises :class:`ProviderError` for an ``{"error": …}`` chunk)."""
        if self.done:
            return []
        if chunk.get("error"):
            raise ProviderError(f"Ollama: {chunk['error']}")
        events: list[JSON] = []
        if not self.started:
            self.started = True
            if isinstance(chunk.get("prompt_eval_count"), int):
                self._input_tokens = chunk["prompt_eval_count"]
            events.append(self._message_start())
        message = chunk.get("message")
        if isinstance(message, Mapping):
            thinking = message.get("thinking")
            if thinking and isinstance(thinking, str) and self._emit_thinking:
                events += self._delta("thinking", thinking)
            content = message.get("content")
            if content and isinstance(content, str):
                events += self._delta("text", content)
            for call in message.get("tool_calls") or ():
                if isinstance(call, Mapping):
                    events += self._tool_use(call)
        if chunk.get("done"):
            events += self._finish(chunk)
        return events

    def finish(self) -> list[JSON]:
        """Call when the body ended; a stream that never said ``done`` is an error."""
        if not self.done:
            raise ProviderError("Ollama's stream ended before its final chunk")
        return []

    # -- internals

    def _message_start(self) -> JSON:
        return {
            "type": "message_start",
            "message": {
                "id": self.message_id,
                "type": "message",
                "role": "assistant",
                "model": self.model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {
                    "input_tokens": self._input_tokens,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 0,
                    "output_tokens": 0,
                },
            },
        }

    def _close(self) -> list[JSON]:
        if self._open is None:
            return []
        self._open = None
        return [{"type": "content_block_stop", "index": self._next_index - 1}]

    def _delta(self, kind: Literal["text", "thinking"], value: str) -> list[JSON]:
        events: list[JSON] = []
        if self._open != kind:
            events += self._close()
            block: JSON = (
                {"type": "text", "text": ""}
                if kind == "text"
                else {"type": "thinking", "thinking": "", "signature": ""}
            )
            events.append({"type": "content_block_start", "index": self._next_index, "content_block": block})
            self._open = kind
            self._next_index += 1
        delta: JSON = (
            {"type": "text_delta", "text": value} if kind == "text" else {"type": "thinking_delta", "thinking": value}
        )
        events.append({"type": "content_block_delta", "index": self._next_index - 1, "delta": delta})
        return events

    def _tool_id(self, given: Any) -> str:
        tool_id = (
            given
            if isinstance(given, str) and _TOOL_ID.match(given) and given not in self._tool_ids
            else self._new_tool_id()
        )
        self._tool_ids.add(tool_id)
        return tool_id

    def _tool_use(self, call: Mapping[str, Any]) -> list[JSON]:
        events = self._close()
        function = call.get("function")
        function = function if isinstance(function, Mapping) else {}
        arguments = _arguments(function.get("arguments"))
        index = self._next_index
        self._next_index += 1
        block = {
            "type": "tool_use",
            "id": self._tool_id(call.get("id")),
            "name": str(function.get("name", "")),
            "input": {},
        }
        events.append({"type": "content_block_start", "index": index, "content_block": block})
        events.append(
            {
                "type": "content_block_delta",
                "index": index,
                "delta": {"type": "input_json_delta", "partial_json": orjson.dumps(arguments).decode()},
            }
        )
        events.append({"type": "content_block_stop", "index": index})
        return events

    def _finish(self, chunk: Mapping[str, Any]) -> list[JSON]:
        self.done = True
        events = self._close()
        tools_called = bool(self._tool_ids)
        prompt = chunk.get("prompt_eval_count")
        output = chunk.get("eval_count")
        usage = {
            "input_tokens": prompt if isinstance(prompt, int) else self._input_tokens,
            "output_tokens": output if isinstance(output, int) else 0,
        }
        events.append(
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason(chunk.get("done_reason"), tools_called), "stop_sequence": None},
                "usage": usage,
            }
        )
        events.append({"type": "message_stop"})
        return events


def _arguments(value: Any) -> JSON:
    """Tool input must be an object; Ollama sends one, but a string of JSON is accepted too."""
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, str):
        try:
            parsed = orjson.loads(value) if value.strip() else {}
        except orjson.JSONDecodeError:
            return {"arguments": value}
        return parsed if isinstance(parsed, dict) else {"arguments": parsed}
    return {} if value is None else {"arguments": value}


# ====================================================================== errors and /api/show


def _error_message(body: bytes) -> str:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:200].decode("utf-8", "replace").strip()
    if isinstance(parsed, dict) and parsed.get("error"):
        return str(parsed["error"])
    return body[:200].decode("utf-8", "replace").strip()


def classify(
    status: int, headers: Sequence[tuple[str, str]], body: bytes, *, model: str, base_url: str
) -> ProviderError:
    """Map an Ollama error response to the taxonomy, keeping status, headers and body.

    A 404 naming a model is :class:`ModelNotFound` with the fix in the message; a 404 that does not
    (gin's plain ``404 page not found``) means the URL is not an Ollama server. 429 and 502–504
    are load (:class:`Overloaded`); a 500 is the model failing (:class:`ProviderError`).
    """
    message = _error_message(body) or f"HTTP {status}"
    lowered = message.lower()
    kwargs: dict[str, Any] = {"status": status, "headers": headers, "body": body}
    if status == 404:
        if "model" in lowered and "not found" in lowered:
            return ModelNotFound(
                f"local model '{model}' is not installed in Ollama at {base_url} (ollama pull {model})", **kwargs
            )
        return ProviderError(f"{base_url} answered 404 to /api/chat; is it an Ollama server? ({message})", **kwargs)
    if status in (401, 403):
        return AuthError(f"Ollama at {base_url} refused the request: {message}", **kwargs)
    if status == 408:
        return Unreachable(f"Ollama at {base_url} timed out: {message}", **kwargs)
    if status == 429 or status in (502, 503, 504, 529):
        return Overloaded(f"Ollama at {base_url} is busy: {message}", **kwargs)
    if 400 <= status < 500:
        return BadRequest(f"Ollama rejected the request for '{model}': {message}", **kwargs)
    return ProviderError(f"Ollama failed running '{model}': {message}", **kwargs)


def _lacks_thinking(error: ProviderError) -> bool:
    return error.status == 400 and "does not support thinking" in error.message


def context_length_from_show(show: Mapping[str, Any]) -> int | None:
    """The context window in an ``/api/show`` answer: ``model_info["<arch>.context_length"]``.

    The key of the declared architecture wins; otherwise any ``*.context_length`` key will do.
    """
    info = show.get("model_info")
    if not isinstance(info, Mapping):
        return None
    arch = info.get("general.architecture")
    keys = [f"{arch}.context_length"] if isinstance(arch, str) else []
    keys += sorted(k for k in info if isinstance(k, str) and k.endswith(".context_length"))
    for key in keys:
        value = info.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


# ====================================================================== the async edge


def _make_client(
    base_url: str, connect_timeout: float, idle_timeout: float, transport: httpx.AsyncBaseTransport | None
) -> httpx.AsyncClient:
    """httpx over aiohttp's pool, the faster of httpx's pools. No read timeout here: waits are bounded per phase in
    :class:`OllamaProvider` (first byte, then idle gaps), because one socket read timeout cannot
    tell a model loading for minutes from a stream that stalled."""
    timeout = httpx.Timeout(connect=connect_timeout, read=None, write=idle_timeout, pool=connect_timeout)
    if transport is None:
        from httpx_aiohttp import AiohttpTransport

        limits = httpx.Limits(max_connections=64, max_keepalive_connections=16, keepalive_expiry=30)
        transport = AiohttpTransport(limits=limits, trust_env=False)
    return httpx.AsyncClient(base_url=base_url, transport=transport, timeout=timeout, trust_env=False)


class OllamaProvider:
    """A :class:`~trooper.providers.base.LocalProvider` over Ollama's native ``POST /api/chat``.

    Timeouts: ``connect_timeout`` to open a connection; ``first_byte_timeout`` until the first
    NDJSON line (loading a model can take minutes); ``idle_timeout`` for any silence between two
    chunks after that. A stream may last as long as it keeps talking.
    """

    kind: Literal["local"] = "local"

    def __init__(
        self,
        base_url: str = DEFAULT_OLLAMA_BASE_URL,
        *,
        connect_timeout: float = 5.0,
        first_byte_timeout: float = 600.0,
        idle_timeout: float = 300.0,
        probe_timeout: float = 10.0,
        keep_alive: str | int | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        client: httpx.AsyncClient | None = None,
        name: str = "ollama",
        model: str = "qwen3",
    ) -> None:
        """``client`` (used as given, not closed by :meth:`aclose`) or ``transport`` are test seams;
        by default the provider owns an httpx client over ``httpx_aiohttp.AiohttpTransport``."""
        self.name = name
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.connect_timeout = connect_timeout
        self.first_byte_timeout = first_byte_timeout
        self.idle_timeout = idle_timeout
        self.probe_timeout = probe_timeout
        self.keep_alive = keep_alive
        self._owns_client = client is None
        self._client = (
            client if client is not None else _make_client(self.base_url, connect_timeout, idle_timeout, transport)
        )
        self._no_think: set[str] = set()
        self._context_lengths: dict[str, int] = {}

    @classmethod
    def from_config(cls, config: Config) -> OllamaProvider:
        """What the ``trooper.providers`` entry point calls."""
        section: OllamaConfig = config.ollama
        return cls(
            section.base_url,
            connect_timeout=section.connect_timeout,
            first_byte_timeout=section.first_byte_timeout,
            idle_timeout=section.idle_timeout,
            keep_alive=section.keep_alive,
            model=section.model,
        )

    # -- LocalProvider

    async def events(self, request: LocalRequest) -> AsyncIterator[JSON]:
        """The Anthropic event sequence for one turn; see :class:`EventTranslator`.

        Everything that can fail before the first event (no connection, an error status, an error
        as the first line, silence past ``first_byte_timeout``) raises before anything is yielded,
        so the engine can still answer with a clean error or fall back.
        """
        payload = to_ollama_request(
            request.body,
            model=request.model,
            stream=request.stream,
            num_ctx=request.num_ctx,
            keep_alive=self.keep_alive,
        )
        if request.model in self._no_think:
            payload.pop("think", None)
        translator = EventTranslator(
            request.model, input_tokens=estimate_input_tokens(payload), emit_thinking=_thinking_displayed(request.body)
        )
        first_deadline = asyncio.get_running_loop().time() + self.first_byte_timeout
        response = await self._open_chat(request.model, payload, first_deadline)
        try:
            async with contextlib.aclosing(self._objects(response, first_deadline, request.stream)) as objects:
                async for chunk in objects:
                    for event in translator.feed(chunk):
                        yield event
            for event in translator.finish():
                yield event
        finally:
            await response.aclose()

    async def context_length(self, model: str) -> int | None:
        """``/api/show``'s ``<arch>.context_length``; None when Ollama or the model is not there.

        Successful answers are cached per model: the engine asks on every local turn, and a
        model's trained window does not change while it is installed.
        """
        if model in self._context_lengths:
            return self._context_lengths[model]
        try:
            async with asyncio.timeout(self.probe_timeout):
                response = await self._client.post(
                    "/api/show", content=orjson.dumps({"model": model}), headers=_JSON_HEADERS
                )
        except (TimeoutError, *_TRANSPORT_ERRORS):
            return None
        if response.status_code != 200:
            return None
        try:
            show = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            return None
        value = context_length_from_show(show) if isinstance(show, dict) else None
        if value is not None:
            self._context_lengths[model] = value
        return value

    async def health(self) -> bool:
        """True when an Ollama server answers ``GET /api/version`` (or ``GET /`` on servers without it)."""
        try:
            async with asyncio.timeout(self.probe_timeout):
                response = await self._client.get("/api/version")
                if response.status_code == 404:
                    response = await self._client.get("/")
        except (TimeoutError, *_TRANSPORT_ERRORS):
            return False
        return response.status_code == 200

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    # -- internals

    async def _send(self, payload: JSON, deadline: float) -> httpx.Response:
        request = self._client.build_request("POST", "/api/chat", content=orjson.dumps(payload), headers=_JSON_HEADERS)
        try:
            async with asyncio.timeout_at(deadline):
                return await self._client.send(request, stream=True)
        except TimeoutError as exc:
            raise Unreachable(f"Ollama at {self.base_url} did not answer within {self.first_byte_timeout:g}s") from exc
        except _TRANSPORT_ERRORS as exc:
            raise Unreachable(f"cannot reach Ollama at {self.base_url}: {exc or type(exc).__name__}") from exc

    async def _open_chat(self, model: str, payload: JSON, deadline: float) -> httpx.Response:
        """POST and return once a 2xx status arrived; error statuses raise the typed error."""
        while True:
            response = await self._send(payload, deadline)
            if response.status_code < 400:
                return response
            try:
                async with asyncio.timeout_at(deadline):
                    body = await self._read_limited(response)
            except (TimeoutError, *_TRANSPORT_ERRORS):
                body = b""
            finally:
                await response.aclose()
            headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in response.headers.raw]
            error = classify(response.status_code, headers, body, model=model, base_url=self.base_url)
            if payload.get("think") and _lacks_thinking(error):
                self._no_think.add(model)
                payload = {k: v for k, v in payload.items() if k != "think"}
                continue
            raise error

    @staticmethod
    async def _read_limited(response: httpx.Response) -> bytes:
        body = b""
        async for data in response.aiter_bytes():
            body += data
            if len(body) >= _ERROR_BODY_LIMIT:
                break
        return body

    async def _objects(
        self, response: httpx.Response, first_deadline: float, stream: bool
    ) -> AsyncGenerator[JSON, None]:
        """The JSON objects of the body, each read bounded by the first-byte deadline (until the first
        object) or by ``idle_timeout`` (after it). Transport failures become :class:`Unreachable`."""
        loop = asyncio.get_running_loop()
        decoder = NDJSONDecoder()
        raw = response.aiter_bytes()
        seen = False
        whole = b""
        try:
            while True:
                deadline = loop.time() + self.idle_timeout if seen else first_deadline
                try:
                    async with asyncio.timeout_at(deadline):
                        data = await anext(raw)
                except StopAsyncIteration:
                    break
                except TimeoutError as exc:
                    raise Unreachable(self._silence(seen)) from exc
                except _TRANSPORT_ERRORS as exc:
                    raise Unreachable(
                        f"the connection to Ollama at {self.base_url} broke: {exc or type(exc).__name__}"
                    ) from exc
                if not stream:  # one JSON object, possibly split over several reads
                    whole += data
                    seen = True
                    continue
                for chunk in decoder.feed(data):
                    seen = True
                    yield chunk
            if not stream:
                for chunk in _whole_body(whole):
                    yield chunk
                return
            for chunk in decoder.flush():
                yield chunk
        finally:
            closer = getattr(raw, "aclose", None)
            if closer is not None:
                with contextlib.suppress(Exception):
                    await closer()

    def _silence(self, seen: bool) -> str:
        if seen:
            return f"Ollama at {self.base_url} went silent for {self.idle_timeout:g}s mid-stream"
        return f"Ollama at {self.base_url} sent nothing within {self.first_byte_timeout:g}s"
