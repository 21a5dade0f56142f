"""The walk's remembered verdicts change nothing: with them or without, every request gets the same lineage.

The ledger's index remembers the walk's verdicts on messages that were not local, under the
generations of its local and seen records. This property drives two indexes through the same
records — local replies, prompts (whole messages, blocks, bound to a session or not), tool calls,
sightings — chosen from the very places the walk visits, so that they hit, and checks after every
step that the index that remembers walks exactly like the one that does not.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from trooper.ledger import LedgerIndex, LedgerRecord
from trooper.lineage import MESSAGE, Lineage, prompt_key, reply_key, scoped, seen_key, tool_key_of, walk

WORDS = ["alpha", "beta", "gamma", "delta"]
SESSIONS = ["s1", "s2"]


@st.composite
def conversations(draw: st.DrawFn) -> list[dict[str, Any]]:
    """A conversation from few words, so that messages and places repeat across requests."""
    messages: list[dict[str, Any]] = []
    for number in range(draw(st.integers(1, 8))):
        text = " ".join(draw(st.lists(st.sampled_from(WORDS), min_size=1, max_size=3)))
        if number % 2 == 0:
            if draw(st.booleans()) and messages and messages[-1]["role"] == "assistant":
                used = messages[-1]["content"]
                calls = [b for b in used if isinstance(used, list) and b.get("type") == "tool_use"]
                if calls:
                    block = {"type": "tool_result", "tool_use_id": calls[0]["id"], "content": text}
                    messages.append({"role": "user", "content": [block]})
                    continue
            image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": text}}
            forms = [text, [{"type": "text", "text": text}], [image]]
            messages.append({"role": "user", "content": draw(st.sampled_from(forms))})
        elif draw(st.booleans()):
            call = {"type": "tool_use", "id": f"t{draw(st.integers(0, 3))}", "name": "Bash", "input": {"c": text}}
            messages.append({"role": "assistant", "content": [{"type": "text", "text": text}, call]})
        else:
            messages.append({"role": "assistant", "content": text})
    return messages


def _record(lineage: Lineage, choice: int, kind: str, session: str) -> LedgerRecord | None:
    """A record for one place of ``lineage`` (``choice`` picks the step), as a turn would write it."""
    if not lineage.steps:
        return None
    step = lineage.steps[choice % len(lineage.steps)]
    if kind == "reply":
        return LedgerRecord.of("reply", [reply_key(step.before)], session=session)
    if kind == "reply.session":
        return LedgerRecord.of("reply.session", [scoped(reply_key(step.before), session)], session=session)
    if kind == "prompt":
        return LedgerRecord.of("prompt", [prompt_key(step.before, MESSAGE + step.identity)], session=session)
    if kind == "prompt.block":
        return LedgerRecord.of("prompt", [prompt_key(step.before, step.identity)], session=session)
    if kind == "tool":
        return LedgerRecord.of("tool", [tool_key_of(f"t{choice % 4}")], session=session)
    if kind == "seen":
        return LedgerRecord.of("seen", [seen_key(step.before, step.identity)], session=session)
    return LedgerRecord.of("seen.reply", [reply_key(step.before)], session=session)


KINDS = ["reply", "reply.session", "prompt", "prompt.block", "tool", "seen", "seen.reply"]
steps = st.lists(
    st.tuples(
        conversations(),
        st.sampled_from(SESSIONS),
        st.lists(st.tuples(st.integers(0, 20), st.sampled_from(KINDS)), max_size=3),
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=150, deadline=None)
@given(steps)
def test_remembered_walks_are_the_walks(plan: list[tuple[list[dict[str, Any]], str, list[tuple[int, str]]]]) -> None:
    remembering, plain = LedgerIndex(), LedgerIndex()
    plain.walk_memo = None  # type: ignore[assignment]
    history: list[list[dict[str, Any]]] = []
    for messages, session, records in plan:
        history.append(messages)
        # The same request twice (a retry, the next turn's history), an earlier one again, and each
        # under every session: a place local for one session only is not local for the others.
        # The request grown by a turn, too: its newest message is then history.
        grown = [*messages, {"role": "assistant", "content": "ok"}, {"role": "user", "content": "next"}]
        for request in (messages, messages, grown, history[len(history) // 2]):
            for asking in (session, *SESSIONS):
                got = walk(request, remembering, session=asking, marker="::local")
                assert got == walk(request, plain, session=asking, marker="::local")
        lineage = walk(messages, plain, session=session)
        added = [r for choice, kind in records if (r := _record(lineage, choice, kind, session)) is not None]
        remembering.add(added)
        plain.add(added)
    assert remembering.walk_memo or not any(m for m, _, _ in plan)
