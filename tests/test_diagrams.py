"""Diagrams are generated from the transitions table, committed, and never stale."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from trooper import graph
from trooper.conversation import (
    EVENTS,
    MACHINE,
    STATES,
    TRANSITIONS,
    Conversation,
    Health,
    conversation_from_dict,
    conversation_to_dict,
    fire,
)
from trooper.graph import DOT_FILE, MERMAID_FILE, README_FILE, render, stale_diagrams, write_diagrams

DIAGRAMS = Path(__file__).resolve().parent.parent / "diagrams"


def travelled() -> Conversation:
    """cloud → local → quota_exhausted (one local turn) → cloud → quota_exhausted ×… ending in quota."""
    conv = Conversation(id="audit-1")
    for event, health in [
        ("force_local", Health.UP),
        ("release", Health.QUOTA),
        ("local_turn", Health.QUOTA),
        ("cloud_recovered", Health.UP),
        ("quota_hit", Health.UP),
        ("cloud_recovered", Health.UP),
        ("quota_hit", Health.UP),
        ("cloud_recovered", Health.UP),
        ("quota_hit", Health.UP),
    ]:
        assert fire(conv, event, reason="test", at=0.0, health=health) is not None
    return conv


def test_committed_diagrams_are_not_stale() -> None:
    stale = stale_diagrams(DIAGRAMS)
    assert stale == [], (
        f"{', '.join(p.name for p in stale)} no longer match trooper/conversation.py's TRANSITIONS; "
        "regenerate with `trooper graph --write diagrams/` (or `python -m trooper.graph --write diagrams/`)"
    )


def test_a_table_change_makes_every_diagram_stale(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    write_diagrams(tmp_path)
    assert stale_diagrams(tmp_path) == []
    extra = {"trigger": "panic", "source": "cloud", "dest": "offline"}
    monkeypatch.setattr(graph, "TRANSITIONS", [*TRANSITIONS, extra])
    assert sorted(p.name for p in stale_diagrams(tmp_path)) == sorted([MERMAID_FILE, DOT_FILE, README_FILE])
    assert sorted(p.name for p in stale_diagrams(DIAGRAMS)) == sorted([MERMAID_FILE, DOT_FILE, README_FILE])
    assert "panic" in render("mermaid")


def test_write_then_tamper_or_delete_is_detected(tmp_path: Path) -> None:
    target = tmp_path / "nested" / "diagrams"
    written = write_diagrams(target)
    assert [p.name for p in written] == [MERMAID_FILE, DOT_FILE, README_FILE]
    assert stale_diagrams(target) == []
    (target / DOT_FILE).write_text("digraph {}\n", encoding="utf-8")
    (target / README_FILE).unlink()
    assert [p.name for p in stale_diagrams(target)] == [DOT_FILE, README_FILE]


def test_readme_embeds_the_mermaid_diagram() -> None:
    readme = (DIAGRAMS / README_FILE).read_text(encoding="utf-8")
    mermaid = (DIAGRAMS / MERMAID_FILE).read_text(encoding="utf-8")
    assert f"```mermaid\n{mermaid}```\n" in readme
    assert "trooper graph --write diagrams/" in readme
    assert "do not edit" in readme


@pytest.mark.parametrize("fmt", ["mermaid", "dot"])
def test_machine_diagram_has_every_state_and_event(fmt: graph.Format) -> None:
    text = render(fmt)
    for state in STATES:
        assert re.search(rf"\b{state}\b", text), state
    for event in EVENTS:
        assert re.search(rf"\b{event}\b", text), event
    for condition in ("health_up", "health_quota", "health_down"):
        assert condition in text
    assert "local_turn [internal]" in text
    assert "×" not in text  # counts only appear on a conversation's view


def test_mermaid_shape() -> None:
    text = render("mermaid")
    assert text.startswith('---\ntitle: "Trooper conversation"\n---\nstateDiagram-v2\n')
    assert "[*] --> cloud" in text
    assert "  local --> quota_exhausted: release [health_quota]\n" in text
    assert all(line == line.rstrip() for line in text.splitlines())
    # Mermaid's transition labels end at ':' or ';' — none may contain them.
    for line in text.splitlines():
        if "-->" in line and ": " in line:
            assert not re.search(r"[:;]", line.split(": ", 1)[1]), line


def test_dot_shape() -> None:
    text = render("dot")
    assert text.startswith('digraph "Trooper conversation" {')
    assert text.rstrip().endswith("}")
    assert 'local -> offline [label="release [health_down]"]' in text


def test_render_is_deterministic_and_registers_nothing() -> None:
    conv = travelled()
    assert render("mermaid") == render("mermaid")
    assert render("dot", conv) == render("dot", conv)
    assert MACHINE.models == []
    assert not hasattr(conv, "get_graph")


def test_conversation_view_highlights_state_path_and_counts() -> None:
    conv = travelled()
    assert conv.state == "quota_exhausted"

    mermaid = render("mermaid", conv, title="conversation audit-1")
    assert 'title: "conversation audit-1"' in mermaid
    assert "Class quota_exhausted s_active" in mermaid
    assert "Class cloud s_previous" in mermaid
    assert "Class local s_previous" in mermaid
    assert "Class offline s_default" in mermaid
    assert "cloud --> quota_exhausted: quota_hit ×3" in mermaid
    assert "quota_exhausted --> cloud: cloud_recovered ×3" in mermaid
    assert "local --> quota_exhausted: release ×1 [health_quota]" in mermaid
    assert "quota_exhausted --> quota_exhausted: local_turn ×1 [internal]" in mermaid
    assert "cloud --> offline: connection_lost\n" in mermaid  # never taken: no count
    assert "%% path: cloud -> local -> quota_exhausted -> cloud" in mermaid

    dot = render("dot", conv)
    assert re.search(r"quota_exhausted \[label=\"quota_exhausted\\l\" color=red [^\]]*peripheries=2\]", dot)
    assert 'cloud -> quota_exhausted [label="quota_hit ×3" color=blue]' in dot
    assert "cloud -> offline [label=connection_lost]" in dot
    assert dot.startswith("// conversation audit-1: state quota_exhausted, 9 transitions\n")


def test_fresh_and_restored_conversations_render() -> None:
    fresh = render("mermaid", Conversation(id="new"))
    assert "Class cloud s_active" in fresh
    assert "×" not in fresh
    data = conversation_to_dict(travelled())
    data["edge_counts"]["cloud->nowhere:gone_event"] = 2  # written by an older table
    restored = conversation_from_dict(data)
    assert "quota_hit ×3" in render("dot", restored)


def test_module_entry_point(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert graph.main(["--check", str(DIAGRAMS)]) == 0
    assert graph.main(["--check", str(tmp_path)]) == 1
    assert "stale:" in capsys.readouterr().err
    assert graph.main(["--write", str(tmp_path)]) == 0
    assert graph.main(["--check", str(tmp_path)]) == 0
    capsys.readouterr()
    assert graph.main(["dot"]) == 0
    assert capsys.readouterr().out == render("dot")


def test_unknown_format_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown diagram format"):
        render("svg")  # type: ignore[arg-type]
