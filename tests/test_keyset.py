"""The ledger index's key set: a set in every answer, however its keys are spread over its parts.

A :class:`~trooper.keyset.KeySet` keeps recent additions in a Python set, merges them into a sorted
array in batches, answers single questions through a filter and a memo of keys found, and batch
questions with binary searches. Every one of those parts can be wrong on its own, so the set is
checked against a plain Python set after every addition, with tiny batch sizes so that a few
additions go through every merge, filter rebuild and memo turnover.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from trooper.keyset import KeySet, as_array

PROPERTY = settings(max_examples=200, deadline=None)


class _Tiny(KeySet):
    """The same set with tiny batches and memo, so that every path runs in a few additions."""

    MERGE_AT: ClassVar[int] = 3
    MERGE_SHARE: ClassVar[int] = 2
    HOT: ClassVar[int] = 2


KEYS = st.one_of(st.integers(0, 40), st.integers(0, 2**64 - 1))


@PROPERTY
@given(st.lists(st.one_of(st.lists(KEYS, max_size=8), KEYS), max_size=12), st.lists(KEYS, max_size=12))
def test_a_key_set_is_a_set(additions: list[list[int] | int], probes: list[int]) -> None:
    keys, model = _Tiny(), set[int]()
    for addition in additions:
        before = keys.version
        if isinstance(addition, int):
            keys.add_one(addition)
            grew = addition not in model
            model.add(addition)
        else:
            keys.add(as_array(addition))
            grew = not set(addition) <= model
            model |= set(addition)
        assert (keys.version > before) is grew
        assert len(keys) == len(model) and bool(keys) is bool(model)
        everything = [*probes, *model]
        assert [probe in keys for probe in everything] == [probe in model for probe in everything]
        assert keys.contains(as_array(everything)).tolist() == [probe in model for probe in everything]
    assert keys.values().tolist() == sorted(model)


def test_many_keys_merge_and_answer_both_ways() -> None:
    rng = np.random.default_rng(7)
    batches = [rng.integers(0, 2**64 - 1, size=9000, dtype=np.uint64) for _ in range(5)]
    keys = KeySet()
    for batch in batches:
        keys.add(batch)
    everything = np.unique(np.concatenate(batches))
    assert len(keys) == len(everything)
    assert np.array_equal(keys.values(), everything)
    assert keys.contains(everything).all()
    absent = np.setdiff1d(rng.integers(0, 2**64 - 1, size=5000, dtype=np.uint64), everything)
    assert not keys.contains(absent).any()
    assert all(int(value) in keys for value in everything[:2000])
    assert not any(int(value) in keys for value in absent[:2000])
    version = keys.version
    keys.add(batches[0])  # nothing new
    keys.add(as_array([]))
    assert keys.version == version
    assert keys.contains(as_array([])).tolist() == []


def test_a_key_costs_about_nine_bytes() -> None:
    keys = KeySet()
    rng = np.random.default_rng(1)
    for _ in range(100):
        keys.add(rng.integers(0, 2**64 - 1, size=10_000, dtype=np.uint64))
    assert keys.nbytes() / len(keys) < 11
