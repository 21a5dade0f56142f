"""Session dates and relative dates, for grouping the SITREP by day and resolving "yesterday".

Why: a chat transcript says *when* once per session (a header such as ``[29.12.2023, 22:42:04]``)
and then speaks relatively ("yesterday", "last Friday", "a week ago"). A SITREP line lifted out of
its session loses that anchor, so the SITREP groups its lines under their session's date and writes
a relative expression out against it. Dates are rendered in one unambiguous long form
("Friday 5 January 2024"): ``05.01.2024`` reads as May 1st to half the world, and the weekday is what
"last Friday" needs.

Pure date arithmetic on values found in the text; nothing here reads a clock.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Iterator
from typing import Final, NamedTuple

__all__ = [
    "SessionDate",
    "find_date",
    "find_session_date",
    "long_form",
    "relative_spans",
    "resolve",
]

_MONTHS: Final = (
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
)
_MONTH_NUMBER: Final = {name[:3]: number for number, name in enumerate(_MONTHS, 1)}
_WEEKDAYS: Final = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_MONTH_RE: Final = (
    r"(jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|sept?(?:ember)?|"
    r"oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)"
)


def _month(name: str) -> int:
    return _MONTH_NUMBER[name.lower()[:3]]


def _slashed(m: re.Match[str]) -> tuple[int, int, int]:
    first, second = int(m[1]), int(m[2])
    # Month first (the US order) unless the first number cannot be a month.
    return (int(m[3]), second, first) if first > 12 else (int(m[3]), first, second)


#: Date spellings, tried in order: ISO, day.month.year (dots are day-first wherever they are used),
#: slashes, "9 June, 2023", "June 9, 2023" / "March-15-2024".
_FORMATS: Final[tuple[tuple[re.Pattern[str], Callable[[re.Match[str]], tuple[int, int, int]]], ...]] = (
    (re.compile(r"\b(\d{4})-(\d{1,2})-(\d{1,2})\b"), lambda m: (int(m[1]), int(m[2]), int(m[3]))),
    (re.compile(r"\b(\d{1,2})\.(\d{1,2})\.(\d{4})\b"), lambda m: (int(m[3]), int(m[2]), int(m[1]))),
    (re.compile(r"\b(\d{1,2})/(\d{1,2})/(\d{4})\b"), _slashed),
    (
        re.compile(r"\b(\d{1,2})(?:st|nd|rd|th)?\s+" + _MONTH_RE + r"\.?,?\s+(\d{4})\b", re.IGNORECASE),
        lambda m: (int(m[3]), _month(m[2]), int(m[1])),
    ),
    (
        re.compile(_MONTH_RE + r"\.?[\s-]+(\d{1,2})(?:st|nd|rd|th)?,?[\s-]+(\d{4})\b", re.IGNORECASE),
        lambda m: (int(m[3]), _month(m[1]), int(m[2])),
    ),
)


class SessionDate(NamedTuple):
    """The date a session was held on, and how the conversation spelled it."""

    day: dt.date
    spelling: str

    def heading(self) -> str:
        """The conversation's own spelling, then the unambiguous long form (``01.01.2024 (Monday 1
        January 2024)``): the first is what the participants saw and may quote, the second what a
        reader needs to tell ``01.02`` from ``02.01`` and to count back to "last Friday"."""
        written = long_form(self.day)
        if _spelled_out(self.spelling) == _spelled_out(written):
            return written
        return f"{self.spelling} ({written})"


def _spelled_out(text: str) -> list[str]:
    return [w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in _WEEKDAYS]


def find_session_date(text: str) -> SessionDate | None:
    """The first calendar date spelled in ``text`` (with a year) and its spelling, or ``None``."""
    for pattern, fields in _FORMATS:
        for m in pattern.finditer(text):
            try:
                return SessionDate(dt.date(*fields(m)), m.group(0))
            except ValueError:
                continue
    return None


def find_date(text: str) -> dt.date | None:
    """The first calendar date spelled in ``text`` (with a year), or ``None``."""
    found = find_session_date(text)
    return found.day if found is not None else None


def long_form(day: dt.date) -> str:
    """``Friday 5 January 2024``: unambiguous in every locale, and it names the weekday."""
    return f"{_WEEKDAYS[day.weekday()].capitalize()} {day.day} {_MONTHS[day.month - 1].capitalize()} {day.year}"


_COUNTS: Final = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7}
_COUNT_RE: Final = r"(?P<n>\d{1,2}|a|an|one|two|three|four|five|six|seven|a couple of|a few)"
_WEEKDAY_RE: Final = "monday|tuesday|wednesday|thursday|friday|saturday|sunday"
#: Expressions that name a day relative to the day they were said on. "Today" and "tonight" are not
#: here: they are the session's own date, which the SITREP's group heading already says.
_RELATIVE_RE: Final = re.compile(
    r"\b(?:(?P<yesterday>yesterday|last night)|(?P<tomorrow>tomorrow)"
    rf"|(?P<ago>{_COUNT_RE} (?P<unit>days?|weeks?) ago)"
    rf"|(?P<last>(?:last|this past) (?P<before>{_WEEKDAY_RE}))"
    rf"|(?P<next>(?:next|this coming|coming) (?P<after>{_WEEKDAY_RE}))"
    r"|(?P<lastweek>last week)|(?P<nextweek>next week))\b",
    re.IGNORECASE,
)


def relative_spans(text: str) -> Iterator[re.Match[str]]:
    """Every relative-date expression in ``text``."""
    return _RELATIVE_RE.finditer(text)


def resolve(expression: str, said_on: dt.date) -> dt.date | None:
    """The day ``expression`` (one of :func:`relative_spans`) names, said on ``said_on``."""
    m = _RELATIVE_RE.fullmatch(expression)
    if m is None:
        return None
    g = m.groupdict()
    if g["yesterday"]:
        return said_on - dt.timedelta(days=1)
    if g["tomorrow"]:
        return said_on + dt.timedelta(days=1)
    if g["ago"]:
        count = g["n"].lower()
        number = int(count) if count.isdigit() else _COUNTS.get(count, 2 if "couple" in count else 3)
        days = number * (7 if g["unit"].lower().startswith("week") else 1)
        return said_on - dt.timedelta(days=days)
    if g["last"]:
        back = (said_on.weekday() - _WEEKDAYS.index(g["before"].lower())) % 7 or 7
        return said_on - dt.timedelta(days=back)
    if g["next"]:
        ahead = (_WEEKDAYS.index(g["after"].lower()) - said_on.weekday()) % 7 or 7
        return said_on + dt.timedelta(days=ahead)
    if g["lastweek"]:
        return said_on - dt.timedelta(days=7)
    return said_on + dt.timedelta(days=7)  # next week
