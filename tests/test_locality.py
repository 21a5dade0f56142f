"""Per-turn locality through the proxy: forced-local turns run on the fake Ollama, the next turn goes
back to the cloud by itself, and the cloud never receives anything the local turn saw or said."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Any

import anthropic
import orjson
import pytest

from tests.conftest import API_KEY, Harness, make_config
from trooper.store import MemoryStore
from trooper.testing import FakeAnthropic, FakeOllama
from trooper.testing import fake_ollama as local_script

MODEL = "claude-sonnet-4-6"
Messages = list[dict[str, Any]]


def canary(tag: str) -> str:
    return f"CANARY-{tag}-{uuid.uuid4().hex[:12]}"


def assert_absent(fake: FakeAnthropic, *secrets: str) -> None:
    """No secret in the raw bytes, nor in their JSON-unescaped, case- and whitespace-folded forms."""
    raw = fake.received_bytes()
    folded = " ".join(raw.decode("utf-8", "replace").split()).casefold()
    unescaped = folded
    for request in fake.requests:
        if request.body:
            with contextlib.suppress(orjson.JSONDecodeError):
                unescaped += " ".join(orjson.dumps(orjson.loads(request.body)).decode().split()).casefold()
    for secret in secrets:
        assert secret.encode() not in raw
        assert secret.casefold() not in folded
        assert secret.casefold() not in unescaped


def _history_with(reply: anthropic.types.Message, messages: Messages) -> Messages:
    return [*messages, {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in reply.content]}]


@pytest.mark.parametrize("control", ["body", "header", "marker"])
@pytest.mark.parametrize("stream", [False, True])
def test_forced_local_turn_then_cloud_turn(
    trooper: Harness, fake_cloud: FakeAnthropic, fake_local: FakeOllama, control: str, stream: bool
) -> None:
    client = trooper.client()
    secret_prompt, secret_reply = canary("PROMPT"), canary("REPLY")
    fake_local.enqueue(local_script.Reply(text=f"The vault is at {secret_reply} and nowhere else."))
    prompt = f"where is the vault? {secret_prompt}"
    kwargs: dict[str, Any] = {}
    if control == "body":
        kwargs["extra_body"] = {"x_force_local": True}
    elif control == "header":
        kwargs["extra_headers"] = {"X-Force-Local": "true"}
    else:
        prompt = f"::local {prompt}"
    history: Messages = [{"role": "user", "content": "hello, start of the session"}]
    first = client.messages.create(model=MODEL, max_tokens=256, messages=history)
    history = [*_history_with(first, history), {"role": "user", "content": prompt}]

    if stream:
        with client.messages.stream(model=MODEL, max_tokens=256, messages=history, **kwargs) as events:
            text = "".join(events.text_stream)
            local = events.get_final_message()
            headers = events.response.headers
    else:
        raw = client.messages.with_raw_response.create(model=MODEL, max_tokens=256, messages=history, **kwargs)
        local, headers = raw.parse(), raw.headers
        text = local.content[0].text  # type: ignore[union-attr]
    assert secret_reply in text
    assert headers["x-trooper-route"] == "local"
    assert headers["x-trooper-state"] == "local"
    assert headers["x-trooper-reason"] == f"forced:{control}"
    assert local.id.startswith("msg_")
    sent_local = fake_local.chat_requests()[-1]
    assert sent_local["model"] == "qwen3"
    local_prompt = sent_local["messages"][-1]["content"]
    assert secret_prompt in local_prompt and "::local" not in local_prompt
    assert "x_force_local" not in orjson.dumps(sent_local).decode()

    history = [*_history_with(local, history), {"role": "user", "content": "thanks; now a cloud question"}]
    fake_cloud.clear()
    raw_next = client.messages.with_raw_response.create(model=MODEL, max_tokens=256, messages=history)
    assert raw_next.headers["x-trooper-route"] == "cloud"
    assert raw_next.headers["x-trooper-state"] == "cloud"
    assert_absent(fake_cloud, secret_prompt, secret_reply)
    sent = fake_cloud.last_json()
    texts = orjson.dumps(sent).decode()
    assert "hello, start of the session" in texts and "thanks; now a cloud question" in texts
    assert "1 earlier turn of this conversation ran on a local model" in texts


def test_local_tool_loop_stays_local_and_never_reaches_the_cloud(
    trooper: Harness, fake_cloud: FakeAnthropic, fake_local: FakeOllama
) -> None:
    client = trooper.client()
    secret_arg, secret_result, secret_answer = canary("ARG"), canary("RESULT"), canary("ANSWER")
    fake_local.enqueue(
        local_script.Reply(text="", tool_calls=[{"name": "read_file", "arguments": {"path": f"/srv/{secret_arg}"}}]),
        local_script.Reply(text=f"The file says {secret_answer}."),
    )
    tools = [
        {
            "name": "read_file",
            "description": "read a file",
            "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}},
        }
    ]
    history: Messages = [{"role": "user", "content": "read the secret file"}]
    call = client.messages.create(
        model=MODEL,
        max_tokens=256,
        tools=tools,
        messages=history,  # type: ignore[arg-type]
        extra_body={"x_force_local": True},
    )
    assert call.stop_reason == "tool_use"
    use = next(b for b in call.content if b.type == "tool_use")
    assert use.id.startswith("toolu_") and use.input == {"path": f"/srv/{secret_arg}"}
    history = [
        *_history_with(call, history),
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": secret_result}]},
    ]
    # The tool result continues the local turn: no control needed, and it must not go to the cloud.
    raw = client.messages.with_raw_response.create(
        model=MODEL,
        max_tokens=256,
        tools=tools,  # type: ignore[arg-type]
        messages=history,
    )
    answer = raw.parse()
    assert raw.headers["x-trooper-route"] == "local"
    assert raw.headers["x-trooper-reason"] == "continuation"
    assert secret_answer in answer.content[0].text  # type: ignore[union-attr]
    tool_message = fake_local.chat_requests()[-1]["messages"][-1]
    assert tool_message["role"] == "tool" and tool_message["content"] == secret_result
    assert fake_cloud.requests == []

    history = [*_history_with(answer, history), {"role": "user", "content": "now summarise the weather"}]
    reply = client.messages.with_raw_response.create(
        model=MODEL,
        max_tokens=256,
        tools=tools,  # type: ignore[arg-type]
        messages=history,
    )
    assert reply.headers["x-trooper-route"] == "cloud"
    assert_absent(fake_cloud, secret_arg, secret_result, secret_answer, use.id)


def test_cloud_tool_loop_stays_in_the_cloud(trooper: Harness, fake_cloud: FakeAnthropic) -> None:
    from trooper.testing import fake_anthropic as cloud_script

    client = trooper.client()
    fake_cloud.enqueue(cloud_script.tool_use("lookup", {"q": "x"}), cloud_script.text("done"))
    history: Messages = [{"role": "user", "content": "look it up"}]
    call = client.messages.create(model=MODEL, max_tokens=64, messages=history)
    use = next(b for b in call.content if b.type == "tool_use")
    history = [
        *_history_with(call, history),
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "42"}]},
    ]
    raw = client.messages.with_raw_response.create(model=MODEL, max_tokens=64, messages=history)
    assert raw.headers["x-trooper-route"] == "cloud"
    assert raw.headers["x-trooper-reason"] == "continuation"
    assert fake_cloud.last_json()["messages"] == history


def test_forced_local_fails_closed_when_local_is_down(trooper_local_down: Harness, fake_cloud: FakeAnthropic) -> None:
    client = trooper_local_down.client()
    secret = canary("DOWN")
    with pytest.raises(anthropic.APIStatusError) as info:
        client.messages.create(
            model=MODEL,
            max_tokens=64,
            messages=[{"role": "user", "content": secret}],
            extra_body={"x_force_local": True},
        )
    assert info.value.status_code == 503
    assert "must run locally" in info.value.message
    assert fake_cloud.requests == []
    assert client.messages.create(
        model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "a cloud turn still works"}]
    ).content
    assert_absent(fake_cloud, secret)


def test_forced_local_with_a_missing_model_names_the_model(fake_cloud: FakeAnthropic, fake_local: FakeOllama) -> None:
    import attrs

    config = make_config()
    config = attrs.evolve(config, ollama=attrs.evolve(config.ollama, model="llama-not-pulled"))
    harness = Harness(config, MemoryStore(), fake_cloud.url, fake_local.url).start()
    try:
        with pytest.raises(anthropic.NotFoundError) as info:
            harness.client().messages.create(
                model=MODEL,
                max_tokens=64,
                messages=[{"role": "user", "content": "x"}],
                extra_headers={"X-Force-Local": "1"},
            )
        assert "llama-not-pulled" in info.value.message
        assert fake_cloud.requests == []
    finally:
        harness.stop()


def test_local_error_mid_stream_becomes_an_sse_error(
    trooper: Harness, fake_cloud: FakeAnthropic, fake_local: FakeOllama
) -> None:
    fake_local.enqueue(local_script.Reply(text="partial answer then boom", error="model crashed", error_after=2))
    with (
        pytest.raises(anthropic.APIStatusError) as info,
        trooper.client().messages.stream(
            model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "x"}], extra_body={"x_force_local": True}
        ) as stream,
    ):
        for _ in stream:
            pass
    assert "model crashed" in str(info.value)
    assert fake_cloud.requests == []


def test_egress_guard_refuses_local_text_pasted_into_a_cloud_prompt(
    trooper: Harness, fake_cloud: FakeAnthropic, fake_local: FakeOllama
) -> None:
    client = trooper.client()
    answer = (
        "The migration plan moves the billing ledger to the eastern cluster on Tuesday night, "
        "then drains the old replicas, then rotates every credential used by the batch jobs."
    )
    fake_local.enqueue(local_script.Reply(text=answer))
    client.messages.create(
        model=MODEL,
        max_tokens=64,
        messages=[{"role": "user", "content": "plan it"}],
        extra_body={"x_force_local": True},
    )
    pasted = f"Please review this plan: {answer.upper()}"
    with pytest.raises(anthropic.PermissionDeniedError) as info:
        client.messages.create(model=MODEL, max_tokens=64, messages=[{"role": "user", "content": pasted}])
    assert "messages.0.content.0" in info.value.message and "::local" in info.value.message
    assert fake_cloud.requests == []
    # The guard's refusal is not sticky: an unrelated prompt goes through.
    assert client.messages.create(model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "hi"}]).content


@pytest.fixture
def two_instances(
    fake_cloud: FakeAnthropic, fake_local: FakeOllama, tmp_path: Any
) -> Iterator[tuple[Harness, Harness]]:
    """Two Trooper instances sharing one SQLite store, as behind a load balancer."""
    from trooper.store import SQLiteStore

    path = tmp_path / "shared.sqlite3"
    first = Harness(make_config(), SQLiteStore(path), fake_cloud.url, fake_local.url).start()
    second = Harness(make_config(), SQLiteStore(path), fake_cloud.url, fake_local.url).start()
    yield first, second
    first.stop()
    second.stop()


def test_ledger_holds_across_sessions_restarts_and_instances(
    two_instances: tuple[Harness, Harness], fake_cloud: FakeAnthropic, fake_local: FakeOllama
) -> None:
    first, second = two_instances
    secret_prompt, secret_reply = canary("P"), canary("R")
    fake_local.enqueue(local_script.Reply(text=f"answer {secret_reply}"))
    history: Messages = [{"role": "user", "content": f"::local {secret_prompt}"}]
    local = first.client().messages.create(
        model=MODEL, max_tokens=64, messages=history, extra_headers={"X-Trooper-Session": "alpha"}
    )
    history = [*_history_with(local, history), {"role": "user", "content": "continue in the cloud"}]
    # Another instance, another session id, re-formatted history: still withheld.
    reformatted: Messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": f"  ::local   {secret_prompt}\n", "cache_control": {"type": "ephemeral"}}
            ],
        },
        {"role": "assistant", "content": f"answer\n{secret_reply}"},
        {"role": "user", "content": "continue in the cloud"},
    ]
    for harness, messages, session in ((second, history, "beta"), (second, reformatted, "gamma")):
        reply = harness.client().messages.with_raw_response.create(
            model=MODEL, max_tokens=64, messages=messages, extra_headers={"X-Trooper-Session": session}
        )
        assert reply.headers["x-trooper-route"] == "cloud"
    first.restart()
    first.client().messages.create(model=MODEL, max_tokens=64, messages=history)
    assert len(fake_cloud.requests) == 3
    assert_absent(fake_cloud, secret_prompt, secret_reply)


def test_session_identity_sources(trooper: Harness) -> None:
    base = {"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
    headers = {"x-api-key": API_KEY, "anthropic-version": "2023-06-01"}

    def session(extra_headers: dict[str, str], body: dict[str, Any]) -> str:
        reply = trooper.http().post("/v1/messages", json=body, headers={**headers, **extra_headers})
        assert reply.status_code == 200, reply.text
        return reply.headers["x-trooper-session"]

    cc = "0d7a5a3e-1111-4222-8333-444455556666"
    meta_new = {
        **base,
        "metadata": {"user_id": orjson.dumps({"device_id": "d", "account_uuid": "", "session_id": cc}).decode()},
    }
    meta_old = {**base, "metadata": {"user_id": f"user_{'a' * 64}_account__session_{cc}"}}
    assert session({"X-Trooper-Session": "mine"}, meta_new) == "mine"
    assert session({"X-Session-ID": "other"}, base) == "other"
    assert session({"X-Claude-Code-Session-Id": cc}, base) == cc
    assert session({}, meta_new) == cc
    assert session({}, meta_old) == cc
    derived = session({}, base)
    assert derived.startswith("sess_") and session({}, base) == derived
    bad = trooper.http().post("/v1/messages", json=base, headers={**headers, "X-Trooper-Session": "a b/c"})
    assert bad.status_code == 400 and "x-trooper-session" in bad.json()["error"]["message"]


#: What Claude Code 2.1.x sends (observed on the wire): a prompt whose first text block
#: is a <system-reminder>, and a ``system`` message of environment notes right after the first prompt.
REMINDER = {"type": "text", "text": "<system-reminder>\nAttribution for git commits goes here.\n</system-reminder>"}
NOTE = {"role": "system", "content": [{"type": "text", "text": "# Environment\nPrimary working directory: /w"}]}


def test_claude_code_system_notes_pass_through_verbatim(trooper: Harness, fake_cloud: FakeAnthropic) -> None:
    body = orjson.dumps(
        {
            "model": MODEL,
            "max_tokens": 64,
            "stream": False,
            "messages": [{"role": "user", "content": [REMINDER, {"type": "text", "text": "say hi"}]}, NOTE],
        }
    )
    reply = trooper.http().post(
        "/v1/messages?beta=true",
        content=body,
        timeout=30,
        headers={"x-api-key": API_KEY, "content-type": "application/json", "anthropic-version": "2023-06-01"},
    )
    assert reply.status_code == 200, reply.text
    assert reply.headers["x-trooper-route"] == "cloud"
    assert fake_cloud.requests[-1].body == body


def test_claude_code_marker_before_a_system_note_runs_locally(
    trooper: Harness, fake_cloud: FakeAnthropic, fake_local: FakeOllama
) -> None:
    """The marker is in the last *user* message even when a system note follows it (Claude Code's first turn)."""
    secret_prompt, secret_reply = canary("CC-PROMPT"), canary("CC-REPLY")
    fake_local.enqueue(local_script.Reply(text=f"it is at {secret_reply}"))
    client = trooper.client(default_headers={"X-Claude-Code-Session-Id": str(uuid.uuid4())})
    prompt = {"role": "user", "content": [REMINDER, {"type": "text", "text": f"::local where is it? {secret_prompt}"}]}
    history: Messages = [prompt, NOTE]
    raw = client.messages.with_raw_response.create(model=MODEL, max_tokens=64, messages=history)  # type: ignore[arg-type]
    assert raw.headers["x-trooper-route"] == "local" and raw.headers["x-trooper-reason"] == "forced:marker"
    assert not fake_cloud.requests
    sent = fake_local.chat_requests()[-1]["messages"]
    assert [m["role"] for m in sent] == ["user", "system"]  # the note stays where the client put it
    assert "::local" not in sent[0]["content"] and secret_prompt in sent[0]["content"]

    history = [*_history_with(raw.parse(), history), {"role": "user", "content": "now the cloud, please"}]
    cloud = client.messages.with_raw_response.create(model=MODEL, max_tokens=64, messages=history)  # type: ignore[arg-type]
    assert cloud.headers["x-trooper-route"] == "cloud"
    assert_absent(fake_cloud, secret_prompt, secret_reply)
    messages = fake_cloud.last_json()["messages"]
    assert messages[0]["role"] == "user"  # still opens with a user message once the prompt is withheld
    assert NOTE in messages  # the client's own context is not local content: it is kept
    assert "now the cloud, please" in orjson.dumps(messages).decode()


@pytest.mark.parametrize("control", ["body", "header", "marker"])
def test_count_tokens_of_a_local_turn_never_reaches_the_cloud(
    trooper: Harness, fake_cloud: FakeAnthropic, control: str
) -> None:
    """Counting sends the conversation: a request marked local is estimated by Trooper instead."""
    secret = canary("COUNT")
    text = f"::local how long is {secret}?" if control == "marker" else f"how long is {secret}?"
    kwargs: dict[str, Any] = {}
    if control == "body":
        kwargs["extra_body"] = {"x_force_local": True}
    elif control == "header":
        kwargs["extra_headers"] = {"X-Force-Local": "true"}
    raw = trooper.client().messages.with_raw_response.count_tokens(
        model=MODEL, messages=[{"role": "user", "content": text}], **kwargs
    )
    assert raw.headers["x-trooper-estimate"] == "true"
    assert raw.parse().input_tokens > 0
    assert not fake_cloud.requests
    assert_absent(fake_cloud, secret)


def test_count_tokens_inside_a_local_conversation_is_estimated(
    trooper: Harness, fake_cloud: FakeAnthropic, fake_local: FakeOllama
) -> None:
    """Right after a local turn the history is counted here (the egress guard would also refuse it)."""
    secret = canary("COUNT-STATE")
    fake_local.enqueue(local_script.Reply(text="local reply"))
    client = trooper.client(default_headers={"X-Trooper-Session": f"count-{uuid.uuid4().hex[:8]}"})
    history: Messages = [{"role": "user", "content": "a cloud question first"}]
    history = _history_with(
        client.messages.create(model=MODEL, max_tokens=32, messages=history),  # type: ignore[arg-type]
        history,
    )
    history.append({"role": "user", "content": f"::local keep {secret} here"})
    reply = client.messages.create(model=MODEL, max_tokens=32, messages=history)  # type: ignore[arg-type]
    history = _history_with(reply, history)
    fake_cloud.clear()
    raw = client.messages.with_raw_response.count_tokens(model=MODEL, messages=history)  # type: ignore[arg-type]
    assert raw.headers["x-trooper-estimate"] == "true"
    assert not fake_cloud.requests
