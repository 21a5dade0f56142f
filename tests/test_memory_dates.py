"""Memory: session dates and relative dates, as the SITREP groups and writes them."""

from __future__ import annotations

import datetime as dt

import pytest

from trooper.memory._dates import SessionDate, find_date, find_session_date, long_form, relative_spans, resolve


def test_dates_are_found_in_common_spellings_and_written_out() -> None:
    assert find_date("[29.12.2023, 22:42:04]") == dt.date(2023, 12, 29)
    assert find_date("7:55 pm on 9 June, 2023") == dt.date(2023, 6, 9)
    assert find_date("March-15-2024") == dt.date(2024, 3, 15)
    assert find_date("2024-02-30 or 2024-03-01") == dt.date(2024, 3, 1)  # impossible dates are skipped
    assert find_date("12/31/2023") == find_date("31/12/2023") == dt.date(2023, 12, 31)
    assert find_date("no date in 2023") is None
    assert long_form(dt.date(2024, 1, 5)) == "Friday 5 January 2024"


@pytest.mark.parametrize(
    ("expression", "day"),
    [
        ("yesterday", 9),
        ("last night", 9),
        ("tomorrow", 11),
        ("a week ago", 3),
        ("3 days ago", 7),
        ("a couple of days ago", 8),
        ("last Friday", 5),
        ("next Monday", 15),
        ("last week", 3),
        ("next week", 17),
    ],
)
def test_relative_dates_resolve_against_the_session_date(expression: str, day: int) -> None:
    said_on = dt.date(2024, 1, 10)  # a Wednesday
    assert [m.group(0) for m in relative_spans(f"so {expression}, we met")] == [expression]
    assert resolve(expression, said_on) == dt.date(2024, 1, day)
    assert resolve("someday", said_on) is None


def test_a_session_heading_keeps_the_conversations_spelling_and_adds_the_long_form() -> None:
    assert find_session_date("[10.01.2024, 21:44:26]") == SessionDate(dt.date(2024, 1, 10), "10.01.2024")
    assert find_session_date("[sometime]") is None
    assert SessionDate(dt.date(2024, 1, 10), "10.01.2024").heading() == "10.01.2024 (Wednesday 10 January 2024)"
    assert SessionDate(dt.date(2024, 1, 5), "5 January 2024").heading() == "Friday 5 January 2024"
