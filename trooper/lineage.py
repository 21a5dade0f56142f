"""Provenance by position: where in a conversation's lineage each re-sent message stands.

Clients are stateless and re-send the whole history, so Trooper cannot ask "was this message
local?" of the message itself — a local reply comes back shortened (an interrupted stream), with
smart quotes, edited, or split into other blocks. What does not change is *where* it stands: after
the same earlier messages. A conversation's lineage is a chain of 64-bit keys, one step per message,
each derived from the previous key and the message's identity (its folded text without whitespace,
its tool-call ids; never the session id, so the chain survives new sessions, restarts and other
instances).

* A **user message** is identified by its content: a user re-sends what they typed, so the message
  and each of its blocks are keyed by (chain before it, identity). A local prompt is recognised
  wherever it is re-sent at that position: whole, also when its text was split or merged into other
  blocks, or block by block, also when a client merged it with the next prompt.
* An **assistant message** is identified by its position alone: the key (chain before it) marks a
  local reply whatever the client re-sends there — a prefix, an edit, a re-formatting. After a local
  reply the chain continues from that position, not from the reply's content, so what follows is
  recognised too.
* A tool result answering a local tool call is local by the call's id, wherever it stands.

Client context is not part of a message's identity: ``role: "system"`` messages, ``<system-reminder>``
segments and thinking blocks change between requests and carry no user words.

A conversation whose opening is short (a "yes", a "hi") could share its first keys with an unrelated
conversation that opened the same way. Keys recorded while the lineage is shorter than
:data:`DISTINCT_PREFIX` characters, and not marked local by the prompt marker, are therefore bound to
the session that recorded them (:func:`scoped`); longer lineages are unique enough on their own.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Iterator, Mapping, Sequence
from typing import Any, Final, Literal, Protocol

import attrs

from trooper._memo import Memo
from trooper.text import (
    after_leading_reminders,
    blob_digest,
    block_blobs,
    context_only,
    identity,
    reminders,
    strip_reminders,
)
from trooper.wire.messages import block_type, content_blocks, last_user_message, tool_result_id, tool_use_id

#: Characters of message identity after which a lineage is unique enough to be trusted across sessions.
DISTINCT_PREFIX: Final = 64

Class = Literal["local", "seen", "unseen", "new"]

#: Prefix of the identity under which a whole user message is recorded (beside its blocks).
MESSAGE: Final = "\x00m"


_MASK: Final = (1 << 64) - 1


def _text_value(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


#: Identities recur on every request of a conversation: their digests are remembered.
_text_values = Memo(_text_value, budget=4 << 20, weigh=len)


def key(*parts: int | str) -> int:
    """A 64-bit key over parts (ints are keys already, strings are tags or identities), in order.

    Strings are digested once (blake2b) and remembered; the parts are then chained with the
    splitmix64 finaliser, a bijection, so a walk through a long history costs a few integer
    operations per message rather than a cryptographic hash each. Keys need to be stable across
    processes and unlikely to collide, not secret.
    """
    value = 0x6A09E667F3BCC908
    for part in parts:
        value = (value + (part if isinstance(part, int) else _text_values(part)) + 0x9E3779B97F4A7C15) & _MASK
        value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK
        value ^= value >> 31
    return value


ROOT: Final = key("trooper-lineage-v1")


def scoped(value: int, session: str) -> int:
    """``value`` bound to one session: how a short lineage's keys are recorded."""
    return key(value, "@", session)


def reply_key(before: int) -> int:
    """The key of an assistant message standing after ``before``."""
    return key(before, "R")


def prompt_key(before: int, block_identity: str) -> int:
    """The key of one user block standing after ``before``."""
    return key(before, "P", block_identity)


def seen_key(before: int, message_identity: str) -> int:
    """The key of a message the cloud has received at this position."""
    return key(before, "S", message_identity)


def context_key(anchor: int, tag: str, text_identity: str) -> int:
    """The key of one piece of client context at a point of the lineage (``protect_client_context``)."""
    return key(anchor, "X", tag, text_identity)


def tool_key(tool_use_id: str) -> int:
    """The key of a tool call id (ids are unique: no position needed)."""
    return key("T", tool_use_id)


_tool_keys = Memo(tool_key, budget=1 << 20, weigh=len)


def _text_identity(text: str) -> str:
    return identity(strip_reminders(text))


text_identity = Memo(_text_identity, budget=4 << 20, weigh=len)


def block_identity(block: Any) -> str | None:
    """A block's part of its message's identity; None for what is not (context, thinking, nothing)."""
    if isinstance(block, str):
        return text_identity(block) or None
    kind = block_type(block)
    if kind == "text":
        return text_identity(str(block.get("text", ""))) or None
    if kind in ("thinking", "redacted_thinking") or kind is None:
        return None
    used = tool_use_id(block)
    if used is not None:
        return "\x00u" + used
    answered = tool_result_id(block)
    if answered is not None:
        return "\x00r" + answered
    blobs = list(block_blobs(block))
    if blobs:
        return "\x00b" + blobs[0]
    if kind in ("search_result", "document"):
        return "\x00d" + blob_digest(*(str(v) for v in (block.get("title"), block.get("source"))))
    return "\x00o" + str(kind)


def message_identity(blocks: Sequence[Any]) -> tuple[str, int]:
    """A message's identity and its weight (characters of text it adds to the lineage).

    Consecutive text blocks are joined first, so a client that splits or merges text blocks does
    not change the message.
    """
    return _identity_of([block_identity(block) for block in blocks])


def _identity_of(parts: Sequence[str | None]) -> tuple[str, int]:
    joined: list[str] = []
    text = ""
    weight = 0
    for part in parts:
        if part is None:
            continue
        if part.startswith("\x00"):
            if text:
                joined.append(text)
                text = ""
            joined.append(part)
        else:
            text += part
            weight += len(part)
    if text:
        joined.append(text)
    return "\x00\x00".join(joined), weight


@attrs.frozen
class _Keys:
    """Every key of one message at one point of a lineage (see :func:`_keys_of`)."""

    reply: int
    after_local: int
    seen: int
    after: int


def _keys(place: tuple[int, str, str]) -> _Keys:
    before, tag, ident = place
    reply = reply_key(before)
    return _Keys(reply, key(reply, "L"), seen_key(before, ident), key(before, tag, ident))


#: A conversation's history comes back with every request: the keys of each message at its place
#: are remembered, so a walk costs a dictionary lookup per message instead of a few hashes.
_keys_of = Memo(_keys, budget=8 << 20, weigh=lambda place: len(place[2]))
_prompt_keys: Memo[tuple[int, str], int] = Memo(
    lambda place: prompt_key(*place), budget=4 << 20, weigh=lambda place: len(place[1])
)


class Provenance(Protocol):
    """What the walk asks of the ledger's index."""

    def local_reply(self, value: int, session: str) -> bool: ...

    def local_prompt(self, value: int, session: str) -> bool: ...

    def local_tool(self, tool_use_id: str) -> bool: ...

    def seen(self, value: int) -> bool: ...

    def seen_reply(self, value: int) -> bool: ...

    @property
    def sightings(self) -> bool:
        """Whether the cloud was ever recorded receiving anything (if not, nothing is ``seen``)."""
        ...


@attrs.define
class Step:
    """One message of a request, placed in its lineage."""

    index: int
    role: str
    #: The chain keys before and after this message.
    before: int
    after: int
    #: Characters of message identity in the lineage up to and including this message.
    weight: int
    identity: str
    cls: Class
    #: Blocks (by index in the message) that are local; for a local assistant message, all of them.
    local_blocks: frozenset[int]
    #: Blocks that are client context only (a text block that is nothing but reminders).
    context_blocks: frozenset[int]
    #: A local prompt that carried the marker stands at or before this message.
    marked: bool

    @property
    def fully_local(self) -> bool:
        return self.cls == "local"


@attrs.frozen
class Lineage:
    """A request placed in its conversation's lineage."""

    steps: tuple[Step, ...]
    #: The chain key after the last message (where the reply will stand), and its weight.
    end: int
    end_weight: int
    end_marked: bool
    #: Index of the last user message: everything from here on is the request's new content.
    new_start: int
    #: The chain key after the first turn message (anchor of the system prompt's context key).
    first: int

    def step(self, index: int) -> Step | None:
        for step in self.steps:
            if step.index == index:
                return step
        return None

    def by_index(self) -> dict[int, Step]:
        return {step.index: step for step in self.steps}

    @property
    def reply_before(self) -> int:
        """The chain key the reply to this request stands after (a trailing prefill is continued)."""
        last = self.steps[-1] if self.steps else None
        if last is not None and last.role == "assistant" and last.index > self.new_start:
            return last.before
        return self.end


def _starts_with(text: str, marker: str) -> bool:
    if not marker:
        return False
    rest = after_leading_reminders(text)[1].lstrip()
    return rest.startswith(marker)


def walk(messages: Sequence[Mapping[str, Any]], index: Provenance, *, session: str, marker: str = "") -> Lineage:
    """Place every message of a request in its lineage and classify it against the ledger.

    ``local``: it stands where a local turn's message stood (an assistant message), or every block
    it has stands where a local prompt's block stood or answers a local tool call (a user message).
    ``seen``: the cloud received it at this position before. ``new``: it is part of the request's
    new content (the last user message and what follows). ``unseen``: none of these — history the
    cloud has not received, which content matching must vet.
    """
    new_start = last_user_message(messages)
    if new_start is None:
        new_start = len(messages)
    chain = ROOT
    weight = 0
    marked = False
    first: int | None = None
    steps: list[Step] = []
    sightings = index.sightings
    # Verdicts on messages that were not local, remembered by the index while no local record has
    # come since (see :class:`~trooper.ledger.LedgerIndex`): a conversation's history is walked again
    # with every request, and almost all of it is the cloud's own.
    memo: dict[Hashable, tuple[int, int, Class, int]] | None = getattr(index, "walk_memo", None)
    local_generation: int = getattr(index, "local_generation", 0)
    seen_generation: int = getattr(index, "seen_generation", 0)
    for position, message in enumerate(messages):
        role = str(message.get("role"))
        if role not in ("user", "assistant"):
            continue
        blocks = content_blocks(message)
        parts = [block_identity(block) for block in blocks]
        ident, added = _identity_of(parts)
        weight += added
        before = chain
        tag = "A" if role == "assistant" else "U"
        context = (
            frozenset(number for number, block in enumerate(blocks) if context_only(block))
            if role == "user"
            else frozenset()
        )
        local: set[int] = set()
        cls: Class
        place = (session, before, tag, ident, position < new_start, context)
        known = memo.get(place) if memo is not None else None
        if known is not None and known[0] == local_generation:
            # Not local then, and no local record since: not local now. Seen stays seen; unseen is
            # asked again once the cloud has been seen receiving more.
            cls, chain = known[2], known[3]
            if cls == "unseen" and known[1] != seen_generation:
                cls = "seen" if _seen(role, _keys_of((before, tag, ident)), index, sightings) else "unseen"
                memo[place] = (local_generation, seen_generation, cls, chain)  # type: ignore[index]
        else:
            keys = _keys_of((before, tag, ident))
            if role == "assistant":
                if index.local_reply(keys.reply, session):
                    local = set(range(len(blocks)))
                    cls = "local"
                    chain = keys.after_local
                else:
                    local = {n for n, part in enumerate(parts) if _local_tool_part(part, index)}
                    cls = "seen" if _seen(role, keys, index, sightings) else "unseen"
                    chain = keys.after
            else:
                counted = 0
                # The message as a whole stands where a local prompt stood (its text may have been
                # split or merged into other blocks since), or, failing that, block by block.
                whole = index.local_prompt(_prompt_keys((before, MESSAGE + ident)), session)
                for number, (block, part) in enumerate(zip(blocks, parts, strict=True)):
                    if number in context or part is None:
                        continue
                    counted += 1
                    # In the new message only a text block is recognised by position: that is a local
                    # prompt re-sent merged with the next one (Claude Code after an interrupt). An image
                    # or a document there is new content, for the egress guard to judge.
                    by_position = position < new_start or block_type(block) in ("text", None)
                    if (
                        whole
                        or _local_tool_part(part, index)
                        or (by_position and index.local_prompt(_prompt_keys((before, part)), session))
                    ):
                        local.add(number)
                        if isinstance(block, Mapping) and block.get("type") == "text":
                            marked = marked or _starts_with(str(block.get("text", "")), marker)
                if counted and len(local) == counted:
                    cls = "local"
                else:
                    cls = "seen" if _seen(role, keys, index, sightings) else "unseen"
                chain = keys.after
            if memo is not None and not local and cls != "local":
                if len(memo) >= WALK_MEMO:
                    memo.clear()
                memo[place] = (local_generation, seen_generation, cls, chain)
        if cls != "local" and position >= new_start:
            cls = "new"
        steps.append(Step(position, role, before, chain, weight, ident, cls, frozenset(local), context, marked))
        if first is None:
            first = chain
    return Lineage(tuple(steps), chain, weight, marked, new_start, first if first is not None else ROOT)


#: Messages whose verdicts an index remembers at most (then it starts again).
WALK_MEMO: Final = 8192


def _seen(role: str, keys: _Keys, index: Provenance, sightings: bool) -> bool:
    """Whether the cloud was seen receiving this message at this place (an assistant message also
    where a reply of any text stood)."""
    return sightings and ((role == "assistant" and index.seen_reply(keys.reply)) or index.seen(keys.seen))


def _local_tool_part(part: str | None, index: Provenance) -> bool:
    """Whether a block identity (see :func:`block_identity`) is a local tool call or its result."""
    return part is not None and part[:2] in ("\x00u", "\x00r") and index.local_tool(part[2:])


def tool_key_of(tool_use_id: str) -> int:
    """:func:`tool_key`, remembered (the same ids come back with every request of a tool loop)."""
    return _tool_keys(tool_use_id)


def strong(weight: int, marked: bool) -> bool:
    """Whether keys recorded at this point of a lineage hold across sessions (see the module docstring)."""
    return marked or weight >= DISTINCT_PREFIX


def context_items(
    body: Mapping[str, Any], messages: Sequence[Mapping[str, Any]], lineage: Lineage
) -> Iterator[tuple[str, int, str, str]]:
    """The client context of a request: ``(path, key anchor, tag, text)`` for each piece.

    Each piece is anchored at a point of the lineage that its conversation's own words decide, so
    that the same context in another conversation has another key: the system prompt after the
    first turn message; a ``system`` message where it stands; a ``<system-reminder>`` segment after
    the message that carries it (whose identity leaves reminders out).
    """
    system = body.get("system")
    if isinstance(system, str) and system.strip():
        yield "system", lineage.first, "Y", system
    elif isinstance(system, list):
        for number, block in enumerate(system):
            if isinstance(block, Mapping) and str(block.get("text", "")).strip():
                yield f"system.{number}", lineage.first, "Y", str(block.get("text", ""))
    steps = lineage.by_index()
    anchor = ROOT
    for position, message in enumerate(messages):
        step = steps.get(position)
        if step is not None:
            for number, block in enumerate(content_blocks(message)):
                if block_type(block) == "text" or isinstance(block, str):
                    text = block if isinstance(block, str) else str(block.get("text", ""))
                    for segment in reminders(text):
                        yield f"messages.{position}.content.{number}", step.after, "M", segment
            anchor = step.after
            continue
        for number, block in enumerate(content_blocks(message)):
            text = block if isinstance(block, str) else str(block.get("text", "")) if isinstance(block, Mapping) else ""
            if text.strip():
                yield f"messages.{position}.content.{number}", anchor, "S", text


__all__ = [
    "DISTINCT_PREFIX",
    "ROOT",
    "Lineage",
    "Provenance",
    "Step",
    "block_identity",
    "context_items",
    "context_key",
    "key",
    "message_identity",
    "prompt_key",
    "reply_key",
    "scoped",
    "seen_key",
    "strong",
    "text_identity",
    "tool_key",
    "walk",
]
