"""Every response to the API says which request it was and where it went, whatever answered it.

A turn's response carries route, state, session and reason; a token count says whether the cloud
counted it or Trooper estimated it; the model list is the cloud's; Trooper's own errors — a bad
body, a body too large, an unknown route — say ``x-trooper-route: none`` (nothing was sent).
"""

from __future__ import annotations

from typing import Any

import anthropic
import pytest

from tests.conftest import Harness

MODEL = "claude-sonnet-4-6"
HEADERS = {"x-api-key": "sk-ant-test-0000", "anthropic-version": "2023-06-01"}


def _trooper_headers(response: Any) -> dict[str, str]:
    return {name: value for name, value in response.headers.items() if name.startswith("x-trooper-")}


@pytest.mark.parametrize(
    "case",
    [
        (
            "POST",
            "/v1/messages",
            {"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]},
            200,
            "cloud",
        ),
        ("POST", "/v1/messages", {"model": MODEL, "max_tokens": 8}, 400, "none"),
        ("POST", "/v1/messages", b"{not json", 400, "none"),
        (
            "POST",
            "/v1/messages",
            {"model": MODEL, "max_tokens": 8, "messages": [{"role": "robot", "content": "x"}]},
            400,
            "none",
        ),
        (
            "POST",
            "/v1/messages/count_tokens",
            {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
            200,
            "cloud",
        ),
        ("POST", "/v1/messages/count_tokens", {"model": MODEL, "messages": "nope"}, 400, "none"),
        ("GET", "/v1/models", None, 200, "cloud"),
        ("GET", "/v1/nothing", None, 404, "none"),
        ("POST", "/v1/messages", b"x" * (33 << 20), 413, "none"),
    ],
    ids=["turn", "no-messages", "not-json", "bad-role", "count", "bad-count", "models", "no-route", "too-large"],
)
def test_every_api_response_names_its_request_and_route(trooper: Harness, case: tuple[str, str, Any, int, str]) -> None:
    method, path, body, status, route = case
    http = trooper.http()
    options: dict[str, Any] = {"json": body} if isinstance(body, dict) else {"content": body}
    response = http.request(method, path, headers=HEADERS, **options)
    assert response.status_code == status, response.text[:200]
    found = _trooper_headers(response)
    assert found["x-trooper-route"] == route
    assert found["x-trooper-request-id"].startswith("req_")
    if status >= 400:
        assert response.json()["type"] == "error"
    assert http.get("/v1/models", headers=HEADERS).status_code == 200  # and it keeps serving


def test_a_turn_and_its_audit_share_the_request_id(trooper: Harness) -> None:
    raw = trooper.client(default_headers={"X-Trooper-Session": "ids"}).messages.with_raw_response.create(
        model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "::local hi"}]
    )
    trooper.settle()
    request_id = raw.headers["x-trooper-request-id"]
    assert {entry.get("request_id") for entry in trooper.store.audit("ids")} == {request_id}


def test_a_count_trooper_estimates_says_so_and_why(trooper: Harness) -> None:
    client = trooper.client(default_headers={"X-Trooper-Session": "count"})
    client.messages.create(model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "::local a secret"}])
    raw = client.messages.with_raw_response.count_tokens(
        model=MODEL, messages=[{"role": "user", "content": "::local how long is this?"}]
    )
    found = _trooper_headers(raw)
    assert found["x-trooper-route"] == "none" and found["x-trooper-estimate"] == "true"
    assert found["x-trooper-reason"] == "local" and found["x-trooper-session"] == "count"
    assert raw.parse().input_tokens > 0


def test_a_cloud_error_on_the_model_list_still_says_cloud(trooper: Harness) -> None:
    with pytest.raises(anthropic.NotFoundError) as failed:
        trooper.client().models.retrieve("claude-no-such-model")
    assert failed.value.response.headers["x-trooper-route"] == "cloud"
    assert failed.value.response.headers["x-trooper-request-id"].startswith("req_")
