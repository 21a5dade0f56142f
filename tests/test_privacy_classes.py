"""One test per class of the security review: each leak closed, each false positive gone.

Leak tests plant canaries and read every byte the fake cloud received. False-positive tests assert
the cloud receives exactly what it would have received without Trooper in between. Everything runs
in-process (a real engine and server, the fakes' ASGI apps, no sockets).
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import attrs
import pytest

from tests.privacy_kit import Messages, canary, leaked
from trooper.audit import configure_logging
from trooper.config import Config, LocalityConfig, OllamaConfig
from trooper.ledger import LedgerIndex, LedgerRecord
from trooper.store import SQLiteStore, SyncStore
from trooper.testing import FakeAnthropic, FakeOllama
from trooper.testing import fake_anthropic as cloud_script
from trooper.testing import fake_ollama as local_script
from trooper.testing.harness import TrooperHarness

MODEL = "claude-sonnet-4-6"
Make = Callable[..., TrooperHarness]


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Make]:
    started: list[TrooperHarness] = []

    def build(store: Any = None, **locality: Any) -> TrooperHarness:
        config = Config(ollama=OllamaConfig(model="qwen3"), locality=attrs.evolve(LocalityConfig(), **locality))
        cloud, local = (started[0].cloud, started[0].local) if started else (FakeAnthropic(), FakeOllama())
        harness = TrooperHarness(config, store or SQLiteStore(tmp_path / "t.sqlite3"), cloud, local).start()
        started.append(harness)
        return harness

    yield build
    for harness in started:
        harness.stop()


def fakes(harness: TrooperHarness) -> tuple[FakeAnthropic, FakeOllama]:
    assert isinstance(harness.cloud, FakeAnthropic) and isinstance(harness.local, FakeOllama)
    return harness.cloud, harness.local


def dump(message: anthropic.types.Message) -> dict[str, Any]:
    return {"role": "assistant", "content": [block.model_dump(exclude_none=True) for block in message.content]}


def sent_messages(cloud: FakeAnthropic) -> Messages:
    return list(cloud.last_json("/v1/messages")["messages"])


# ==================================================================================== leak classes


def test_a_short_reply_pasted_into_a_new_prompt_is_refused(make: Make) -> None:
    trooper = make()
    cloud, local = fakes(trooper)
    local.enqueue(local_script.Reply(text="The PIN is 4821-7733."))
    client = trooper.client()
    client.messages.create(model=MODEL, max_tokens=32, messages=[{"role": "user", "content": "::local my pin?"}])
    for paste in (
        "remind me: the pin is 4821-7733 ok?",
        "THE PIN IS 4821\u200b-7733",
        "pin is ４８２１-７７３３, right",
    ):
        with pytest.raises(anthropic.PermissionDeniedError):
            client.messages.create(model=MODEL, max_tokens=32, messages=[{"role": "user", "content": paste}])
    assert leaked(cloud, ["4821-7733", "4821"]) == []


def test_a_quote_of_ten_words_from_a_long_reply_is_refused(make: Make) -> None:
    trooper = make()
    cloud, local = fakes(trooper)
    reply = "We should move the Kowalczyk account to the eastern region before Friday, then tell finance."
    local.enqueue(local_script.Reply(text=reply))
    client = trooper.client()
    client.messages.create(model=MODEL, max_tokens=32, messages=[{"role": "user", "content": "::local plan?"}])
    with pytest.raises(anthropic.PermissionDeniedError):
        client.messages.create(
            model=MODEL,
            max_tokens=32,
            messages=[{"role": "user", "content": "someone said 'move the Kowalczyk account to the eastern region'"}],
        )
    assert leaked(cloud, ["kowalczyk"]) == []


def test_text_without_spaces_is_matched_by_characters(make: Make) -> None:
    trooper = make()
    cloud, local = fakes(trooper)
    reply = "項目代號是青龍計劃，預算為四百萬元，負責人是王小明，不要外傳。這件事下週一在董事會上宣布，之前請保密。" * 2
    local.enqueue(local_script.Reply(text=reply))
    client = trooper.client()
    client.messages.create(model=MODEL, max_tokens=32, messages=[{"role": "user", "content": "::local 計劃?"}])
    with pytest.raises(anthropic.PermissionDeniedError):
        client.messages.create(
            model=MODEL, max_tokens=32, messages=[{"role": "user", "content": "翻譯：" + reply[:60]}]
        )
    # A sentence of everyday words it shares with an unrelated prompt goes through.
    client.messages.create(model=MODEL, max_tokens=32, messages=[{"role": "user", "content": "請保密，謝謝"}])
    assert leaked(cloud, [reply[:20]]) == []


def test_a_script_the_local_model_wrote_is_recognised_decoded(make: Make) -> None:
    """Multi-line tool input is matched as the script it is, not as its JSON escapes."""
    trooper = make()
    cloud, local = fakes(trooper)
    secret = canary("SCRIPT")
    script = f"#!/bin/sh\nexport VAULT_ADDR=https://vault.corp.example:8200\nvault login {secret}\n"
    local.enqueue(
        local_script.Reply(
            text="", tool_calls=[{"name": "Write", "arguments": {"file_path": "/w/l.sh", "content": script}}]
        )
    )
    client = trooper.client()
    tools = [{"name": "Write", "description": "write a file", "input_schema": {"type": "object"}}]
    call = client.messages.create(
        model=MODEL,
        max_tokens=64,
        tools=tools,
        messages=[{"role": "user", "content": "::local write the login script"}],
    )
    assert call.content[0].type == "tool_use"
    # Pasted into a prompt:
    with pytest.raises(anthropic.PermissionDeniedError):
        client.messages.create(
            model=MODEL,
            max_tokens=32,
            messages=[
                {"role": "user", "content": "why does `export VAULT_ADDR=https://vault.corp.example:8200` fail?"}
            ],
        )
    # Read back by a cloud tool loop: the file's content comes back as the cloud's own tool result.
    cloud.enqueue(cloud_script.tool_use("Read", {"file_path": "/w/l.sh"}))
    history: Messages = [{"role": "user", "content": "read /w/l.sh and explain it"}]
    read = client.messages.create(model=MODEL, max_tokens=64, tools=tools, messages=history)
    history += [
        dump(read),
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": read.content[0].id,
                    "content": "     1\t" + script.replace("\n", "\n     2\t", 1),
                }
            ],
        },  # type: ignore[union-attr]
    ]
    with pytest.raises(anthropic.PermissionDeniedError):
        client.messages.create(model=MODEL, max_tokens=64, tools=tools, messages=history)
    assert leaked(cloud, [secret, "vault.corp.example:8200"]) == []


def test_a_control_on_a_cloud_tool_loop_continuation_moves_the_rest_of_the_turn_local(make: Make) -> None:
    trooper = make()
    cloud, local = fakes(trooper)
    client = trooper.client()
    tools = [{"name": "bash", "description": "run a command", "input_schema": {"type": "object"}}]
    for control in ("marker", "body", "header"):
        cloud.enqueue(cloud_script.tool_use("bash", {"command": "ls"}))
        history: Messages = [{"role": "user", "content": f"list files ({control})"}]
        call = client.messages.create(model=MODEL, max_tokens=64, tools=tools, messages=history)
        secret_result, secret_typed = canary("RES"), canary("TYPED")
        blocks: list[dict[str, Any]] = [
            {"type": "tool_result", "tool_use_id": call.content[0].id, "content": secret_result}  # type: ignore[union-attr]
        ]
        options: dict[str, Any] = {}
        if control == "marker":
            blocks.append({"type": "text", "text": f"::local and this stays here {secret_typed}"})
        elif control == "body":
            options["extra_body"] = {"x_force_local": True}
        else:
            options["extra_headers"] = {"X-Force-Local": "true"}
        history += [dump(call), {"role": "user", "content": blocks}]
        local.enqueue(local_script.Reply(text=f"local conclusion {canary('LC')}"))
        raw = client.messages.with_raw_response.create(
            model=MODEL, max_tokens=64, tools=tools, messages=history, **options
        )
        assert raw.headers["x-trooper-route"] == "local"
        assert local.chat_requests()[-1]  # the local model got the tool result
        history += [dump(raw.parse()), {"role": "user", "content": "next, in the cloud"}]
        client.messages.create(model=MODEL, max_tokens=64, tools=tools, messages=history)
        sent = sent_messages(cloud)
        assert sent[0] == history[0] and sent[1] == history[1]  # the cloud keeps its own prompt and call
        assert leaked(cloud, [secret_result, secret_typed]) == []


def test_the_marker_after_a_prefill_and_after_a_leading_reminder(make: Make) -> None:
    trooper = make()
    cloud, local = fakes(trooper)
    client = trooper.client()
    secret = canary("PRE")
    raw = client.messages.with_raw_response.create(
        model=MODEL,
        max_tokens=32,
        messages=[
            {"role": "user", "content": f"::local finish it {secret}"},
            {"role": "assistant", "content": "Sure:"},
        ],
    )
    assert raw.headers["x-trooper-route"] == "local"
    reminder = "<system-reminder>\nCLAUDE.md says hi\n</system-reminder>\n"
    raw = client.messages.with_raw_response.create(
        model=MODEL,
        max_tokens=32,
        messages=[{"role": "user", "content": [{"type": "text", "text": f"{reminder}::local {secret}"}]}],
    )
    assert raw.headers["x-trooper-route"] == "local"
    sent = local.chat_requests()[-1]["messages"]
    assert all("::local" not in str(message.get("content")) for message in sent)  # the marker is cut
    assert any("CLAUDE.md says hi" in str(message.get("content")) for message in sent)  # the reminder stays
    assert cloud.requests == []


def test_the_current_turn_is_filtered_too(make: Make) -> None:
    """A local exchange replayed inside the current turn, or counted under another session id."""
    trooper = make()
    cloud, local = fakes(trooper)
    client = trooper.client(default_headers={"X-Trooper-Session": "first"})
    prompt, answer = canary("P"), canary("A")
    local.enqueue(local_script.Reply(text=f"it is {answer}"))
    history: Messages = [{"role": "user", "content": f"local question {prompt}"}]
    reply = client.messages.create(model=MODEL, max_tokens=32, messages=history, extra_body={"x_force_local": True})
    other = trooper.client(default_headers={"X-Trooper-Session": "second"})
    # The same exchange as a prefill continuation, unmarked: it stays local; the client is told why.
    for session in (client, other):
        with pytest.raises(anthropic.PermissionDeniedError) as refused:
            session.messages.create(model=MODEL, max_tokens=32, messages=[*history, dump(reply)])
        assert "::local" in refused.value.message
    counted = other.messages.count_tokens(
        model=MODEL, messages=[*history, dump(reply), {"role": "user", "content": "n?"}]
    )
    assert counted.input_tokens > 0
    assert leaked(cloud, [prompt, answer]) == []


def test_unicode_renormalised_long_reply_is_withheld_and_refused(make: Make) -> None:
    import unicodedata

    trooper = make()
    cloud, local = fakes(trooper)
    client = trooper.client()
    reply = "Die Überweisung an Müller-Lüdenscheidt über 14.300 € geht am Freitag raus; bitte nicht weitersagen. " * 2
    local.enqueue(local_script.Reply(text=reply))
    history: Messages = [{"role": "user", "content": "::local Überweisung?"}]
    first = client.messages.create(model=MODEL, max_tokens=64, messages=history)
    resent = {"role": "assistant", "content": unicodedata.normalize("NFD", first.content[0].text)}  # type: ignore[union-attr]
    client.messages.create(model=MODEL, max_tokens=32, messages=[*history, resent, {"role": "user", "content": "ok"}])
    with pytest.raises(anthropic.PermissionDeniedError):
        client.messages.create(
            model=MODEL, max_tokens=32, messages=[{"role": "user", "content": unicodedata.normalize("NFKD", reply)}]
        )
    assert leaked(cloud, ["Müller-Lüdenscheidt", "14.300"]) == []


def _image(seed: str) -> dict[str, Any]:
    data = base64.b64encode(("PNG" + seed * 40).encode()).decode()
    return {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}}


def test_images_documents_and_search_results_a_local_turn_saw(make: Make) -> None:
    trooper = make()
    cloud, local = fakes(trooper)
    client = trooper.client()
    image, doc_secret, found_secret = _image(canary("IMG")), canary("DOC"), canary("SEARCH")
    document = {
        "type": "document",
        "source": {"type": "text", "media_type": "text/plain", "data": f"memo {doc_secret}"},
    }
    search = {
        "type": "search_result",
        "source": "https://intranet.example/x",
        "title": "internal",
        "content": [{"type": "text", "text": f"result {found_secret}"}],
    }
    history: Messages = [
        {"role": "user", "content": [image, document, search, {"type": "text", "text": "::local look"}]}
    ]
    reply = client.messages.create(model=MODEL, max_tokens=32, messages=history)
    history += [dump(reply), {"role": "user", "content": "and now the cloud"}]
    client.messages.create(model=MODEL, max_tokens=32, messages=history)
    assert image["source"]["data"].encode() not in cloud.received_bytes()
    for attachment in (image, document):  # re-attached to a new cloud prompt
        with pytest.raises(anthropic.PermissionDeniedError):
            client.messages.create(
                model=MODEL,
                max_tokens=32,
                messages=[{"role": "user", "content": [attachment, {"type": "text", "text": "what is this?"}]}],
            )
    # An image inside a local tool result, re-attached later.
    tools = [{"name": "shot", "description": "screenshot", "input_schema": {"type": "object"}}]
    local.enqueue(
        local_script.Reply(text="", tool_calls=[{"name": "shot", "arguments": {}}]), local_script.Reply(text="seen")
    )
    loop: Messages = [{"role": "user", "content": "::local take a screenshot"}]
    call = client.messages.create(model=MODEL, max_tokens=32, tools=tools, messages=loop)
    screen = _image(canary("SHOT"))
    loop += [
        dump(call),
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.content[0].id, "content": [screen]}]},
    ]  # type: ignore[union-attr]
    client.messages.create(model=MODEL, max_tokens=32, tools=tools, messages=loop)
    with pytest.raises(anthropic.PermissionDeniedError):
        client.messages.create(
            model=MODEL, max_tokens=32, messages=[{"role": "user", "content": [screen, {"type": "text", "text": "?"}]}]
        )
    assert leaked(cloud, [doc_secret, found_secret]) == []
    assert screen["source"]["data"].encode() not in cloud.received_bytes()


def test_side_requests_about_a_local_turn(make: Make) -> None:
    trooper = make()
    cloud, local = fakes(trooper)
    client = trooper.client(default_headers={"X-Claude-Code-Session-Id": "cc-1"})
    secret = canary("SIDE")
    tools = [{"name": "Bash", "description": "run", "input_schema": {"type": "object"}}]
    command = f"curl -s https://vault.internal/v1/{secret}"
    local.enqueue(local_script.Reply(text="", tool_calls=[{"name": "Bash", "arguments": {"command": command}}]))
    client.messages.create(
        model=MODEL, max_tokens=32, tools=tools, messages=[{"role": "user", "content": f"::local fetch {secret}"}]
    )
    # A title request that wraps the local prompt in its own template: the marker inside keeps it local.
    title = trooper.client().messages.with_raw_response.create(
        model=MODEL,
        max_tokens=16,
        messages=[{"role": "user", "content": f"Write a 5-word title for: ::local fetch {secret}"}],
    )
    assert title.headers["x-trooper-route"] == "local"
    # A command-prefix check of a command the local model proposed: refused, not sent.
    with pytest.raises(anthropic.PermissionDeniedError):
        trooper.client().messages.create(
            model=MODEL,
            max_tokens=16,
            messages=[{"role": "user", "content": f"<policy_spec>...</policy_spec>\nCommand: {command}"}],
        )
    assert leaked(cloud, [secret, "vault.internal/v1"]) == []


def test_system_messages_a_local_turn_saw_are_local_when_protected(make: Make) -> None:
    secret_note, secret_reminder, secret_system = canary("NOTE"), canary("REM"), canary("SYS")
    note = {"role": "system", "content": [{"type": "text", "text": f"# Environment {secret_note}"}]}
    reminder = {"type": "text", "text": f"<system-reminder>\nproject notes {secret_reminder}\n</system-reminder>"}
    for protect in (False, True):
        trooper = make(protect_client_context=protect)
        cloud, _ = fakes(trooper)
        cloud.reset()
        client = trooper.client(default_headers={"X-Trooper-Session": f"p-{protect}"})
        history: Messages = [{"role": "user", "content": [reminder, {"type": "text", "text": "::local hello"}]}, note]
        reply = client.messages.create(model=MODEL, max_tokens=32, system=f"be brief {secret_system}", messages=history)
        history += [dump(reply), {"role": "user", "content": "cloud now"}]
        client.messages.create(model=MODEL, max_tokens=32, system=f"be brief {secret_system}", messages=history)
        found = leaked(cloud, [secret_note, secret_reminder, secret_system])
        assert found == ([] if protect else [secret_note, secret_reminder, secret_system])
        # Never for other conversations: a new conversation with the same context keeps it.
        other = trooper.client(default_headers={"X-Trooper-Session": f"other-{protect}"})
        fresh: Messages = [
            {"role": "user", "content": [reminder, {"type": "text", "text": "a different opening"}]},
            note,
        ]
        other.messages.create(model=MODEL, max_tokens=32, system=f"be brief {secret_system}", messages=fresh)
        assert cloud.last_json("/v1/messages")["messages"] == fresh


def test_forced_content_never_becomes_shareable_whatever_the_order(make: Make, tmp_path: Path) -> None:
    """A forced tool loop released mid-loop by another request of the session stays forced; and an
    index reading a shareable record and a forced one for the same key, in either order, keeps it local."""
    trooper = make(share_fallback_after_recovery=True)
    cloud, local = fakes(trooper)
    client = trooper.client(default_headers={"X-Trooper-Session": "share"})
    tools = [{"name": "read", "description": "read", "input_schema": {"type": "object"}}]
    secret_result, secret_answer = canary("FR"), canary("FA")
    local.enqueue(local_script.Reply(text="", tool_calls=[{"name": "read", "arguments": {"path": "/x"}}]))
    loop: Messages = [{"role": "user", "content": "::local read /x"}]
    call = client.messages.create(model=MODEL, max_tokens=32, tools=tools, messages=loop)
    # Another request of the same session releases the conversation's state meanwhile.
    client.messages.create(model=MODEL, max_tokens=32, messages=[{"role": "user", "content": "unrelated"}])
    loop += [
        dump(call),
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": call.content[0].id, "content": secret_result}],
        },
    ]  # type: ignore[union-attr]
    local.enqueue(local_script.Reply(text=f"it says {secret_answer}"))
    final = client.messages.with_raw_response.create(model=MODEL, max_tokens=32, tools=tools, messages=loop)
    assert final.headers["x-trooper-route"] == "local"
    loop += [dump(final.parse()), {"role": "user", "content": "cloud, summarise"}]
    trooper.restart()
    client = trooper.client(default_headers={"X-Trooper-Session": "share"})
    client.messages.create(model=MODEL, max_tokens=32, tools=tools, messages=loop)
    assert leaked(cloud, [secret_result, secret_answer]) == []
    key = 12345
    shared = LedgerRecord.of("prompt", [key], origin="fallback", shareable=True)
    forced = LedgerRecord.of("prompt", [key], origin="forced")
    for order in ([shared, forced], [forced, shared]):
        index = LedgerIndex(share_fallback=True)
        index.add(order)
        assert index.local_prompt(key, "any")
        store = SyncStore(SQLiteStore(tmp_path / f"order-{order[0].origin}.sqlite3"))
        store.ledger_append(order)
        reread = LedgerIndex(share_fallback=True)
        reread.add(store.ledger_since(0)[0])
        assert reread.local_prompt(key, "any")
        store.close()


def test_no_local_content_in_trooper_logs(make: Make) -> None:
    trooper = make()
    _, local = fakes(trooper)
    secret = canary("LOG")
    stream = io.StringIO()
    configure_logging("info", stream)
    try:
        local.enqueue(local_script.HttpError(500, f"model crashed while printing {secret}"))
        with pytest.raises(anthropic.APIStatusError):
            trooper.client().messages.create(
                model=MODEL, max_tokens=32, messages=[{"role": "user", "content": "::local go"}]
            )
        local.enqueue(local_script.Reply(text="partial words here", error=f"boom near {secret}", error_after=2))
        with (
            pytest.raises(anthropic.APIError),
            trooper.client().messages.stream(
                model=MODEL, max_tokens=32, messages=[{"role": "user", "content": "::local again"}]
            ) as events,
        ):
            for _ in events:
                pass
        trooper.settle()
    finally:
        configure_logging("info", open(os.devnull, "w"))  # noqa: SIM115
    logged = stream.getvalue()
    assert "local_failed" in logged and "local_stream_broken" in logged
    assert secret not in logged and "partial words" not in logged


# ================================================================================ false positives


def test_a_local_yes_does_not_touch_other_conversations(make: Make) -> None:
    trooper = make()
    cloud, _ = fakes(trooper)
    for control in ("marker", "body"):
        first = trooper.client(default_headers={"X-Trooper-Session": f"a-{control}"})
        body: dict[str, Any] = {"extra_body": {"x_force_local": True}} if control == "body" else {}
        content = "::local yes" if control == "marker" else "yes"
        first.messages.create(model=MODEL, max_tokens=8, messages=[{"role": "user", "content": content}], **body)
        other = trooper.client(default_headers={"X-Trooper-Session": f"b-{control}"})
        history: Messages = [{"role": "user", "content": "yes"}]
        reply = other.messages.create(model=MODEL, max_tokens=8, messages=history)
        history += [dump(reply), {"role": "user", "content": "and yes again"}]
        other.messages.create(model=MODEL, max_tokens=8, messages=history)
        assert sent_messages(cloud) == history  # exactly what the client sent: no gap, no notice


def test_a_cloud_tool_call_identical_to_a_local_one_passes_with_its_result(make: Make) -> None:
    trooper = make()
    cloud, local = fakes(trooper)
    client = trooper.client()
    tools = [{"name": "Read", "description": "read", "input_schema": {"type": "object"}}]
    path = "/srv/app/config/settings_prod.yaml"
    local.enqueue(
        local_script.Reply(text="", tool_calls=[{"name": "Read", "arguments": {"file_path": path}}]),
        local_script.Reply(text="read it"),
    )
    loop: Messages = [{"role": "user", "content": "::local read the settings"}]
    call = client.messages.create(model=MODEL, max_tokens=32, tools=tools, messages=loop)
    file_text = "database:\n  host: db.internal.example\n  pool: 20\n"
    loop += [
        dump(call),
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.content[0].id, "content": file_text}]},
    ]  # type: ignore[union-attr]
    client.messages.create(model=MODEL, max_tokens=32, tools=tools, messages=loop)
    # Now a cloud loop reads the same file with the same call, and a listing that names the path.
    cloud.enqueue(cloud_script.tool_use("Read", {"file_path": path}), cloud_script.text("fine"))
    history: Messages = [{"role": "user", "content": "check the settings file"}]
    read = client.messages.create(model=MODEL, max_tokens=32, tools=tools, messages=history)
    history += [
        dump(read),
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": read.content[0].id, "content": f"{path}:\n{file_text}"}],
        },
    ]  # type: ignore[union-attr]
    raw = client.messages.with_raw_response.create(model=MODEL, max_tokens=32, tools=tools, messages=history)
    assert raw.headers["x-trooper-route"] == "cloud"
    assert sent_messages(cloud) == history


def test_the_claude_md_reminder_of_a_local_prompt_stays(make: Make) -> None:
    trooper = make()
    cloud, _ = fakes(trooper)
    client = trooper.client(default_headers={"X-Claude-Code-Session-Id": "cc-md"})
    reminder = {
        "type": "text",
        "text": "<system-reminder>\nAs you answer, follow CLAUDE.md: use tabs.\n</system-reminder>",
    }
    history: Messages = [{"role": "user", "content": [reminder, {"type": "text", "text": "::local private start"}]}]
    reply = client.messages.create(model=MODEL, max_tokens=16, messages=history)
    history += [dump(reply), {"role": "user", "content": "now in the cloud"}]
    client.messages.create(model=MODEL, max_tokens=16, messages=history)
    assert reminder in sent_messages(cloud)[0]["content"]
    later = trooper.client(default_headers={"X-Claude-Code-Session-Id": "cc-md-2"})
    fresh: Messages = [{"role": "user", "content": [reminder, {"type": "text", "text": "another conversation"}]}]
    later.messages.create(model=MODEL, max_tokens=16, messages=fresh)
    assert sent_messages(cloud) == fresh


def test_an_empty_local_tool_result_does_not_touch_empty_or_image_cloud_results(make: Make) -> None:
    trooper = make()
    cloud, local = fakes(trooper)
    client = trooper.client()
    tools = [{"name": "t", "description": "t", "input_schema": {"type": "object"}}]
    local.enqueue(
        local_script.Reply(text="", tool_calls=[{"name": "t", "arguments": {}}]), local_script.Reply(text="done")
    )
    loop: Messages = [{"role": "user", "content": "::local run t"}]
    call = client.messages.create(model=MODEL, max_tokens=16, tools=tools, messages=loop)
    loop += [
        dump(call),
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.content[0].id, "content": ""}]},
    ]  # type: ignore[union-attr]
    client.messages.create(model=MODEL, max_tokens=16, tools=tools, messages=loop)
    cloud.enqueue(cloud_script.tool_use("t", {}), cloud_script.tool_use("t", {}), cloud_script.text("ok"))
    history: Messages = [{"role": "user", "content": "run t twice in the cloud"}]
    first = client.messages.create(model=MODEL, max_tokens=16, tools=tools, messages=history)
    history += [
        dump(first),
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": first.content[0].id, "content": ""}]},
    ]  # type: ignore[union-attr]
    second = client.messages.create(model=MODEL, max_tokens=16, tools=tools, messages=history)
    history += [
        dump(second),
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": second.content[0].id, "content": [_image("plain")]}],
        },
    ]  # type: ignore[union-attr]
    client.messages.create(model=MODEL, max_tokens=16, tools=tools, messages=history)
    assert sent_messages(cloud) == history


def test_re_sent_local_replies_never_make_later_cloud_turns_fail(make: Make) -> None:
    trooper = make()
    cloud, local = fakes(trooper)
    client = trooper.client()
    reply_text = f"It's the \"blue\" server, the one called {canary('SRV')}, don't restart it."
    local.enqueue(local_script.Reply(text=reply_text))
    history: Messages = [{"role": "user", "content": "::local which server?"}]
    client.messages.create(model=MODEL, max_tokens=32, messages=history)
    smart = reply_text.replace('"', "\u201c").replace("'", "\u2019")
    for resent in (smart, reply_text[:25], reply_text + " (edited)"):
        turn = [*history, {"role": "assistant", "content": resent}, {"role": "user", "content": "thanks, cloud"}]
        raw = client.messages.with_raw_response.create(model=MODEL, max_tokens=16, messages=turn)
        assert raw.headers["x-trooper-route"] == "cloud"
        assert sent_messages(cloud)[-1]["content"][-1] == {"type": "text", "text": "thanks, cloud"}
    assert leaked(cloud, [reply_text[:25], "SRV"]) == []


def test_a_quota_error_mid_cloud_loop_keeps_the_clouds_own_content(make: Make) -> None:
    trooper = make()
    cloud, local = fakes(trooper)
    client = trooper.client()
    tools = [{"name": "grep", "description": "grep", "input_schema": {"type": "object"}}]
    cloud.enqueue(cloud_script.tool_use("grep", {"pattern": "TODO"}))
    history: Messages = [{"role": "user", "content": f"find the todos {canary('ASK')}"}]
    call = client.messages.create(model=MODEL, max_tokens=16, tools=tools, messages=history)
    history += [
        dump(call),
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": call.content[0].id, "content": "a.py:3 TODO"}],
        },
    ]  # type: ignore[union-attr]
    cloud.enqueue(cloud_script.rate_limited(retry_after=0))
    local.enqueue(local_script.Reply(text="one todo in a.py"))
    answered = client.messages.with_raw_response.create(model=MODEL, max_tokens=16, tools=tools, messages=history)
    assert answered.headers["x-trooper-route"] == "local"
    history += [dump(answered.parse()), {"role": "user", "content": "and now?"}]
    recovered = client.messages.with_raw_response.create(model=MODEL, max_tokens=16, tools=tools, messages=history)
    assert recovered.headers["x-trooper-route"] == "cloud"
    sent = sent_messages(cloud)
    assert sent[0] == history[0] and sent[1] == history[1]  # its prompt and its own tool call


def test_a_local_prompt_split_or_merged_into_other_blocks_stays_local(make: Make) -> None:
    """Provenance holds for the message as a whole, not only block by block (found by the machine)."""
    trooper = make()
    cloud, local = fakes(trooper)
    client = trooper.client(default_headers={"X-Trooper-Session": "split"})
    prompt, answer = "table family letter market paper", "animal green pocket letter little"  # everyday words
    local.enqueue(local_script.Reply(text=answer))
    history: Messages = [{"role": "user", "content": [{"type": "text", "text": f"local question {prompt}"}]}]
    reply = client.messages.create(model=MODEL, max_tokens=16, messages=history, extra_body={"x_force_local": True})
    history.append(dump(reply))
    split = [
        {
            "role": "user",
            "content": [{"type": "text", "text": "loc"}, {"type": "text", "text": f"al question {prompt}"}],
        }
    ]
    merged = [{"role": "user", "content": f"local question {prompt}"}]
    for opening in (split, merged):
        resent = [*opening, history[1], {"role": "user", "content": "what now?"}]
        client.messages.count_tokens(model=MODEL, messages=resent)
        client.messages.create(model=MODEL, max_tokens=16, messages=resent)
    assert leaked(cloud, [prompt, answer]) == []
