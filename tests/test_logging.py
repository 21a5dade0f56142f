"""Log lines that help: a logged exception carries its type, message and stack, never content or keys."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any, Literal

import anthropic
import orjson
import pytest
import structlog

from tests.conftest import QUIET, make_config
from trooper.audit import configure_logging
from trooper.engine import Engine
from trooper.providers.base import UpstreamRequest, UpstreamResponse
from trooper.server import UVICORN_OPTIONS, create_app
from trooper.store import MemoryStore
from trooper.testing import LoopbackServer

SECRET_KEY = "sk-ant-LOGCANARY-0123456789"
SECRET_TEXT = "CANARY-log-payload-7f3a"


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging("info", stream)
    yield stream
    configure_logging("info", QUIET)


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def _parse_config_file(text: bytes) -> Any:
    return orjson.loads(text)


def test_a_logged_exception_has_type_message_and_stack(logs: io.StringIO) -> None:
    log = structlog.get_logger("trooper.test")
    try:
        _parse_config_file(b'{"api_key": "' + SECRET_KEY.encode() + b'", ')
    except orjson.JSONDecodeError:
        log.exception("internal_error", api_key=SECRET_KEY)
    (line,) = _lines(logs)
    assert line["event"] == "internal_error" and line["level"] == "error"
    assert "exc_info" not in line
    (error,) = line["exception"]
    assert error["exc_type"] == "JSONDecodeError"
    assert error["exc_value"]
    assert [frame["name"] for frame in error["frames"]][-1] == "_parse_config_file"
    assert all(set(frame) <= {"filename", "lineno", "name", "line"} for frame in error["frames"])
    assert SECRET_KEY not in logs.getvalue()


def test_credentials_in_an_exception_message_are_masked(logs: io.StringIO) -> None:
    log = structlog.get_logger("trooper.test")
    try:
        raise RuntimeError(f"upstream refused x-api-key={SECRET_KEY} and Authorization: Bearer abc.def" + "x" * 1000)
    except RuntimeError:
        log.exception("internal_error")
    (error,) = _lines(logs)[0]["exception"]
    assert SECRET_KEY not in error["exc_value"] and "abc.def" not in error["exc_value"]
    assert len(error["exc_value"]) <= 300


def test_a_bad_level_is_refused_in_words() -> None:
    with pytest.raises(ValueError, match="log level must be one of debug, info, warning, error, critical"):
        configure_logging("loud", QUIET)


class BrokenPlugin:
    """A cloud provider plugin with a bug: every request raises, with the request in its frame."""

    name = "broken"
    kind: Literal["cloud"] = "cloud"

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        payload = request.body  # a local holding the request: it must not reach the log
        raise RuntimeError(f"plugin bug handling {len(payload)} bytes")

    async def aclose(self) -> None:
        return None


def test_an_internal_error_through_the_server_logs_its_stack_but_no_content(logs: io.StringIO) -> None:
    config = make_config()
    engine = Engine(cloud=BrokenPlugin(), local=None, store=MemoryStore(), config=config)
    with LoopbackServer(create_app(config, engine), **UVICORN_OPTIONS) as server:
        client = anthropic.Anthropic(base_url=server.url, api_key=SECRET_KEY, max_retries=0)
        with pytest.raises(anthropic.InternalServerError):
            client.messages.create(
                model="claude-sonnet-4-6", max_tokens=16, messages=[{"role": "user", "content": SECRET_TEXT}]
            )
    errors = [line for line in _lines(logs) if line["event"] == "internal_error"]
    assert len(errors) == 1, logs.getvalue()
    (error,) = errors[0]["exception"]
    assert error["exc_type"] == "RuntimeError"
    assert error["exc_value"].startswith("plugin bug handling ")
    assert "send" in [frame["name"] for frame in error["frames"]]
    assert SECRET_TEXT not in logs.getvalue() and SECRET_KEY not in logs.getvalue()
