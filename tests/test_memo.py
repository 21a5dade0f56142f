"""The size-bounded memo: always the computed value, never more than its budget, keeps what is in use."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from trooper._memo import Memo

BUDGET = 2000


def _weight(memo: Memo[str, str]) -> int:
    entries = {**memo._old, **memo._young}
    return sum(len(key) + Memo.OVERHEAD for key in entries)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(min_size=0, max_size=300), max_size=120))
def test_values_are_computed_ones_and_the_budget_holds(keys: list[str]) -> None:
    calls: list[str] = []

    def compute(key: str) -> str:
        calls.append(key)
        return key[::-1]

    memo: Memo[str, str] = Memo(compute, budget=BUDGET, weigh=len)
    for key in keys:
        assert memo(key) == key[::-1]
        assert _weight(memo) <= BUDGET
    assert len(memo) <= len(set(keys))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=20), min_size=1, max_size=200), st.integers(1, 8))
def test_what_every_round_uses_is_computed_once(churn: list[str], rounds: int) -> None:
    """A conversation's history, looked up on every request among other traffic, stays remembered."""
    history = [f"history-{number}" for number in range(5)]
    computed: list[str] = []

    def compute(key: str) -> int:
        computed.append(key)
        return len(key)

    memo: Memo[str, int] = Memo(compute, budget=BUDGET, weigh=len)
    for _ in range(rounds):
        for key in history:
            memo(key)
        for key in churn[:5]:  # other conversations in between: with the history, under half the budget
            memo(f"other-{key}")
    assert sorted(key for key in computed if key.startswith("history-")) == sorted(history)


def test_an_entry_larger_than_half_the_budget_is_not_kept() -> None:
    computed: list[str] = []
    memo: Memo[str, str] = Memo(lambda key: computed.append(key) or key, budget=BUDGET, weigh=len)
    big = "x" * BUDGET
    assert memo(big) == big and memo(big) == big
    assert computed == [big, big] and len(memo) == 0
    memo("small")
    memo.clear()
    assert len(memo) == 0
