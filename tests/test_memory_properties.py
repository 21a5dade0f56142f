"""Hypothesis properties of compaction: for any conversation and any budget.

- the local request fits the usable budget (by the estimator), or :class:`BudgetTooSmall` is raised —
  and then only because the Anchor and the current turn cannot fit even truncated;
- the Anchor turns and the current prompt are present, verbatim or visibly truncated (marker);
- ``tool_use``/``tool_result`` pairs are intact;
- the Tail holds the current turn, and the two turns before it are never summarised away;
- the result is deterministic, and the cache never changes it (cold == warm, any history order);
- every SITREP entry is a span of one message of the conversation by its speaker, its words in the
  order they had there, allowing only the documented light compression (dropped filler words).
"""

from __future__ import annotations

import json
import re
from typing import Any

import hypothesis.strategies as st
from hypothesis import HealthCheck, given, settings

from trooper.memory import (
    MARKER_PREFIX,
    Budget,
    BudgetTooSmall,
    CalibratedEstimator,
    CompactionCache,
    compact,
    is_prompt,
    message_text,
    segment,
    truncate_text,
)
from trooper.memory._lexicon import FILLER_WORDS, LEADING_WORDS
from trooper.memory.extract import UnitKind
from trooper.memory.sitrep import ACK_TEXT, SitrepEntry

Message = dict[str, Any]
EST = CalibratedEstimator()
SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SAMPLE = (
    "deploy the service never push main always test database replica latency budget decided use Redis "
    "instead Kafka ticket OPS-1234 host db-1.acme.internal v1.2.3 2025-03-14 420 ms Maria Delgado TODO "
    "https://acme.io/runbook src/app/main.py $1,200 we'll let's must"
)
WORDS = SAMPLE.split()

prose = st.lists(st.sampled_from(WORDS), min_size=1, max_size=40).map(lambda w: " ".join(w) + ".")
code = st.builds(
    lambda name, n: f"```python\ndef {name}(x):\n    return x * {n}  # [{n}]\n```",
    st.sampled_from(["handler", "apply_discount", "sync_now"]),
    st.integers(0, 10_000),
)
json_text = st.dictionaries(st.sampled_from(["id", "name", "items", "ok"]), st.integers() | st.text(max_size=20)).map(
    str
)
unicode = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=200)
any_text = st.one_of(prose, code, json_text, unicode, prose.map(lambda t: t * 30))


IMAGE = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}


@st.composite
def prompt(draw: st.DrawFn, image_odds: int = 10) -> Message:
    text = draw(any_text)
    if draw(st.booleans()):
        return {"role": "user", "content": text}
    content: list[dict[str, Any]] = [{"type": "text", "text": text}]
    if draw(st.integers(0, image_odds - 1)) == 0:
        content.append(IMAGE)
    if draw(st.booleans()):
        content[-1] = {**content[-1], "cache_control": {"type": "ephemeral"}}
    return {"role": "user", "content": content}


@st.composite
def conversation(draw: st.DrawFn, image_odds: int = 10) -> list[Message]:
    """A valid history: turns of prompt, tool loops (with thinking, errors) and answers; one prompt in
    ``image_odds`` carries an image, and so does one tool result in ``image_odds``."""
    n_turns = draw(st.integers(1, 9))
    msgs: list[Message] = []
    tool_id = 0
    for t in range(n_turns):
        last = t == n_turns - 1
        msgs.append(draw(prompt(image_odds)))
        for _ in range(draw(st.integers(0, 3))):
            blocks: list[dict[str, Any]] = []
            if draw(st.booleans()):
                blocks.append({"type": "thinking", "thinking": draw(prose), "signature": "sig" * 10})
            if draw(st.booleans()):
                blocks.append({"type": "text", "text": draw(any_text)})
            ids = []
            for _ in range(draw(st.integers(1, 3))):
                tool_id += 1
                ids.append(f"toolu_{tool_id:06d}")
                blocks.append({"type": "tool_use", "id": ids[-1], "name": "Bash", "input": {"command": draw(any_text)}})
            msgs.append({"role": "assistant", "content": blocks})
            results: list[dict[str, Any]] = []
            for tid in ids:
                result: dict[str, Any] = {"type": "tool_result", "tool_use_id": tid, "content": draw(any_text)}
                if draw(st.integers(0, 4)) == 0:
                    result["is_error"] = True
                if draw(st.integers(0, image_odds - 1)) == 0:
                    result["content"] = [{"type": "text", "text": result["content"]}, IMAGE]
                results.append(result)
            if draw(st.integers(0, 5)) == 0:
                results.append({"type": "text", "text": "(user interrupted) " + draw(prose)})
            msgs.append({"role": "user", "content": results})
        if not last and (msgs[-1]["role"] == "user" or draw(st.booleans())):
            answer: Any = draw(any_text)
            if draw(st.booleans()):
                thinking = {"type": "thinking", "thinking": draw(prose), "signature": "s"}
                answer = [thinking, {"type": "text", "text": answer}]
            msgs.append({"role": "assistant", "content": answer})
    return msgs


@st.composite
def cases(draw: st.DrawFn, image_odds: int = 10) -> tuple[list[Message], Budget]:
    """A conversation and a budget: mostly a fraction of its size (so every policy branch is hit),
    sometimes any small absolute window."""
    msgs = draw(conversation(image_odds))
    reserved = draw(st.integers(0, 800))
    regime = draw(st.integers(0, 4))
    if regime == 0:
        context = draw(st.integers(0, 3000))
    elif regime == 1:
        # Just above what the Anchor and the current turn need: the boundary every layer must respect.
        turns = segment(msgs)
        kept = [*turns[: min(2, len(turns) - 1)], turns[-1]]
        needed = sum(EST.count_message(m) for t in kept for m in t.messages)
        context = int(needed * draw(st.floats(0.9, 1.6))) + reserved
    else:
        total = sum(EST.count_message(m) for m in msgs)
        context = int(total * draw(st.floats(0.05, 1.2))) + reserved + draw(st.integers(0, 400))
    budget = Budget(
        context_tokens=context,
        reserved_output=reserved,
        anchor_share=draw(st.sampled_from([0.0, 0.1, 0.25, 0.5])),
        tail_share=draw(st.sampled_from([0.0, 0.25, 0.4])),
        tail_cap=draw(st.sampled_from([0.3, 0.5, 0.8])),
        slack_share=draw(st.sampled_from([0.0, 1 / 16, 0.2])),
    )
    return msgs, budget


systems = st.one_of(st.none(), prose, st.just([{"type": "text", "text": "You are careful."}]))
tools = st.one_of(st.none(), st.just([{"name": "Bash", "input_schema": {"type": "object"}}]))


def _minimum(msgs: list[Message]) -> int:
    """Generous bound on what the Anchor and current turn need in their smallest truncated forms."""
    turns = segment(msgs)
    keep = [*turns[: min(2, len(turns) - 1)], turns[-1]]
    per_message = 40  # framing, ids and a marker
    newest = 0
    last = turns[-1]
    if len(last.messages) > 1:
        # The current turn keeps its newest exchange (the model answers those tool results).
        tail = last.messages[-2:]
        newest = sum(EST.count_message(m) for m in tail if m["role"] == "assistant") // 8 + 200
        newest += 60 * sum(len(m["content"]) for m in tail if isinstance(m["content"], list))
    # Images cannot be truncated: every one the kept turns hold costs what the estimator says.
    images = sum(
        EST.count_block(block)
        for kept in keep
        for m in kept.messages
        if isinstance(m["content"], list)
        for block in m["content"]
        if block.get("type") == "image"
    )
    return per_message * 3 * len(keep) + newest + images


def _pairs_intact(messages: list[Message]) -> None:
    for i, m in enumerate(messages):
        content = m["content"] if isinstance(m["content"], list) else []
        if m["role"] == "assistant":
            uses = {b["id"] for b in content if b.get("type") == "tool_use"}
            if uses:
                assert i + 1 < len(messages), "a tool_use must be answered"
                nxt = messages[i + 1]["content"]
                got = {b["tool_use_id"] for b in nxt if isinstance(nxt, list) and b.get("type") == "tool_result"}
                assert got == uses
        else:
            results = {b["tool_use_id"] for b in content if b.get("type") == "tool_result"}
            if results:
                prev = messages[i - 1]["content"] if i else []
                ids = {b["id"] for b in prev if isinstance(prev, list) and b.get("type") == "tool_use"}
                assert results <= ids


def _present(original: Message, candidates: list[Message]) -> bool:
    """``original`` is there verbatim, or a user message stands for it with a truncation marker."""
    return original in candidates or any(m["role"] == "user" and MARKER_PREFIX in message_text(m) for m in candidates)


@SETTINGS
@given(cases(), systems, tools)
def test_fits_keeps_anchor_and_prompt_and_pairs(
    case: tuple[list[Message], Budget], system: Any, tool_defs: Any
) -> None:
    _check_fits(case, system, tool_defs)


@SETTINGS
@given(cases(image_odds=2), systems, tools)
def test_fits_with_images_everywhere(case: tuple[list[Message], Budget], system: Any, tool_defs: Any) -> None:
    """Turns with images are large and cannot shrink by cutting text: what may fit as a share of the
    budget may not fit beside the Anchor."""
    _check_fits(case, system, tool_defs)


def _check_fits(case: tuple[list[Message], Budget], system: Any, tool_defs: Any) -> None:
    msgs, budget = case
    usable = budget.usable(EST.count_system(system), EST.count_tools(tool_defs))
    try:
        result = compact(msgs, budget=budget, system=system, tools=tool_defs, estimator=EST)
    except BudgetTooSmall:
        assert usable < _minimum(msgs)
        return
    out = result.messages
    # Fits, and the accounting is exact, with the preamble as sent (reduced only to make room).
    total = sum(EST.count_message(m) for m in out) + EST.count_system(result.system) + EST.count_tools(result.tools)
    if not result.reductions:
        assert result.system == system and result.tools == (list(tool_defs) if tool_defs else None)
    assert total == result.layers["total"] <= budget.context_tokens - budget.reserved_output
    assert result.num_ctx == budget.context_tokens
    # Valid messages.
    assert all(m["role"] in ("user", "assistant") and m["content"] for m in out)
    _pairs_intact(out)
    turns = segment(msgs)
    if not result.compacted:
        assert out == msgs
        return
    # Anchor turns and the current prompt are present (verbatim or visibly truncated).
    anchor_prompts = [t.messages[0] for t in turns[: min(2, len(turns) - 1)] if t.has_prompt]
    current = turns[-1]
    prompts_out = [m for m in out if is_prompt(m) and ACK_TEXT not in message_text(m)]
    for p in anchor_prompts:
        assert _present(p, prompts_out)
    if current.has_prompt:
        last_prompt = [m for m in out if is_prompt(m)][-1]
        assert last_prompt == current.messages[0] or MARKER_PREFIX in message_text(last_prompt)
    # Without truncation, the Anchor is a verbatim prefix and the current turn a verbatim suffix.
    if not result.truncated:
        n_anchor = sum(len(t.messages) for t in turns[: min(2, len(turns) - 1)])
        assert out[:n_anchor] == msgs[:n_anchor]
        assert out[len(out) - len(current.messages) :] == list(current.messages)
    # The layers account for every turn exactly once.
    src = result.sources
    covered = sorted(src["anchor"] + src["sitrep"] + src["tail"] + src["dropped"])
    assert covered == list(range(1, len(turns) + 1))
    if result.sitrep is not None:
        assert all(e.turn in src["sitrep"] for e in result.sitrep.entries)
    # The current turn is in the Tail, and the two before it are never summarised away.
    n = len(turns)
    assert n in src["tail"]
    assert not {n - 2, n - 1} & set(src["sitrep"])
    if not result.truncated and not src["dropped"] and n >= 5:
        assert {n - 2, n - 1} <= set(src["tail"])


@SETTINGS
@given(cases(), st.lists(st.integers(0, 12), max_size=4))
def test_deterministic_and_cache_invisible(case: tuple[list[Message], Budget], cuts: list[int]) -> None:
    """Any sequence of requests through one cache (growing, shrinking, regenerated) equals cold runs."""
    msgs, budget = case

    def run(history: list[Message], cache: CompactionCache | None) -> Any:
        try:
            return compact(history, budget=budget, estimator=EST, cache=cache)
        except BudgetTooSmall as exc:
            return ("too small", exc.usable, exc.needed)

    cold = run(msgs, None)
    assert run(msgs, None) == cold
    cache = CompactionCache()
    for cut in cuts:
        history = msgs[: max(1, len(msgs) - cut)]
        assert run(history, cache) == run(history, None)
    assert run(msgs, cache) == cold
    assert run(msgs, cache) == cold


@SETTINGS
@given(any_text, st.integers(0, 400))
def test_truncate_text_fits_or_cannot_save(text: str, limit: int) -> None:
    out = truncate_text(text, limit, EST)
    if out != text:
        assert MARKER_PREFIX in out
        assert EST.count(out) <= limit or out.startswith(MARKER_PREFIX)
        assert EST.count(out) < EST.count(text)


# ------------------------------------------------------------------------- SITREP entries are spans

WORD = re.compile(r"\w+")
DROPPABLE = FILLER_WORDS | LEADING_WORDS
NAMES = ("Kevin", "Paola", "Fahim Khan", "elise")
_CHAT = (
    "we booked the flights to Lisbon for March and I love pasta with ham and peas but my exam is tomorrow "
    "the dashboard responds in 250ms after caching and Maria owns checkout since 2021 yesterday last Friday "
    "a week ago I finished the migration we still need to fix the retry loop let's go with Postgres"
)
CHAT_WORDS = tuple(_CHAT.split())
FILLERS = tuple(sorted(FILLER_WORDS))
OPENERS = ("Oh, ", "Well, ", "Haha ", "Hey! ", "So ", "")


@st.composite
def chat_sentence(draw: st.DrawFn) -> str:
    words = draw(st.lists(st.sampled_from((*CHAT_WORDS, *FILLERS)), min_size=2, max_size=30))
    end = draw(st.sampled_from([".", "!", "?", ""]))
    return draw(st.sampled_from(OPENERS)) + " ".join(words) + end


@st.composite
def chat_message(draw: st.DrawFn, role: str) -> Message:
    sentences = draw(st.lists(chat_sentence(), min_size=1, max_size=3))
    if draw(st.booleans()):  # a chat log relayed as one message, maybe opening a session
        lines = []
        for i, sentence in enumerate(sentences):
            stamp = f"[{draw(st.integers(1, 28)):02d}.01.2024, 20:00:00] " if i == 0 and draw(st.booleans()) else ""
            lines.append(f"{stamp}{draw(st.sampled_from(NAMES))}: {sentence}")
        return {"role": role, "content": "\n".join(lines)}
    return {"role": role, "content": " ".join(sentences)}


@st.composite
def chat(draw: st.DrawFn) -> list[Message]:
    msgs: list[Message] = []
    for n in range(draw(st.integers(4, 10))):
        msgs.append(draw(chat_message("user")))
        if draw(st.integers(0, 5)) == 0:
            command = " ".join(draw(st.lists(st.sampled_from(CHAT_WORDS), min_size=1, max_size=6)))
            use = {"type": "tool_use", "id": f"toolu_{n}", "name": "Bash", "input": {"command": command}}
            output = "\n".join(draw(st.lists(chat_sentence(), min_size=1, max_size=3)))
            result = {"type": "tool_result", "tool_use_id": f"toolu_{n}", "content": output}
            msgs += [{"role": "assistant", "content": [use]}, {"role": "user", "content": [result]}]
        msgs.append(draw(chat_message("assistant")))
    msgs.append({"role": "user", "content": "What now?"})
    return msgs


def light_compression_of(entry: str, source: str) -> bool:
    """Whether ``entry``'s words appear in ``source`` in order and contiguously, except for dropped
    filler words (:data:`FILLER_WORDS`, :data:`LEADING_WORDS`): the only compression allowed."""
    want, have = WORD.findall(entry.lower()), WORD.findall(source.lower())
    if not want:
        return False
    for start in range(len(have)):
        i, j = 0, start
        while i < len(want) and j < len(have):
            if have[j] == want[i]:
                i, j = i + 1, j + 1
            elif have[j] in DROPPABLE and i > 0:
                j += 1
            else:
                break
        if i == len(want):
            return True
    return False


def _source_texts(message: Message, entry: SitrepEntry) -> list[str]:
    """The texts of ``message`` an entry of this kind may be a span of, as its speaker said them."""
    blocks = (
        message["content"] if isinstance(message["content"], list) else [{"type": "text", "text": message["content"]}]
    )
    if entry.kind is UnitKind.TOOL:
        return [json.dumps(b.get("input"), ensure_ascii=False) for b in blocks if b.get("type") == "tool_use"]
    if entry.kind is UnitKind.OUTPUT:
        return [str(b.get("content")) for b in blocks if b.get("type") == "tool_result"]
    lines = [line for b in blocks if b.get("type") == "text" for line in str(b["text"]).split("\n")]
    if entry.speaker != entry.role:  # a name: the span lies in one of that speaker's lines
        lines = [line for line in lines if re.match(rf"\s*(\[[^\]]*\]\s*)?{re.escape(entry.speaker)}:", line)]
    return lines


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chat(), st.floats(0.1, 0.9))
def test_every_sitrep_entry_is_a_lightly_compressed_span_of_its_speakers_message(
    msgs: list[Message], share: float
) -> None:
    total = sum(EST.count_message(m) for m in msgs)
    try:
        result = compact(msgs, budget=Budget(max(200, int(total * share)), 0), estimator=EST)
    except BudgetTooSmall:
        return
    if result.sitrep is None:
        return
    for entry in result.sitrep.entries:
        message = msgs[entry.message]
        assert message["role"] == entry.role
        sources = _source_texts(message, entry)
        assert any(light_compression_of(entry.text, text) for text in sources), (entry, sources)
        if entry.outcome:
            results = [
                str(b.get("content")) for b in msgs[entry.message + 1]["content"] if b.get("type") == "tool_result"
            ]
            assert any(light_compression_of(entry.outcome, text) for text in results)
        assert entry.line in result.sitrep.text or entry.text in result.sitrep.text
