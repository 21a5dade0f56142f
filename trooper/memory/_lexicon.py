"""Word lists and patterns for the extractive SITREP, embedded so nothing is downloaded.

Kept small and English-centric on purpose: they steer salience, they do not decide what is kept on
their own (rarity within the conversation and entity patterns do most of the work, and those are
language-neutral).
"""

from __future__ import annotations

import re
from typing import Final

STOPWORDS: Final = frozenset(
    """
    a about above after again against all almost also although always am among an and another any anyone
    anything anyway are aren't around as ask asked at away back be because been before being below
    between both but by can can't cannot could couldn't did didn't do does doesn't doing don't done down
    during each either else enough even ever every everything few first for from further get gets getting
    give given go goes going gone got had hadn't has hasn't have haven't having he he'd he'll he's her here
    here's hers herself him himself his how how's however i i'd i'll i'm i've if in into is isn't it it's
    its itself just keep kind know last less let let's like likely look looks made make makes many may
    maybe me might mine more most much must mustn't my myself need needs never new next no nor not nothing
    now of off often ok okay on once one only or other others otherwise our ours ourselves out over own
    part per perhaps please put quite rather really right said same say says see seem seems shall shan't
    she she'd she'll she's should shouldn't show since so some something sometimes soon still such sure
    take than thank thanks that that's the their theirs them themselves then there there's these they
    they'd they'll they're they've thing things think this those though through thus to too took try two
    under until up upon us use used uses using very via want wants was wasn't way we we'd we'll we're
    we've well were weren't what what's whatever when when's where where's whether which while who who's
    whom whose why why's will with within without won't work works would wouldn't yeah yes yet you you'd
    you'll you're you've your yours yourself yourselves also just actually basically great good nice
    fine cool sounds hi hello hey sorry again lot lots bit little big small able done seems
    """.split()  # noqa: SIM905 - a word list reads better as text than as 300 quoted strings
)

#: Verbs that open an instruction ("Add retries to…", "Never push to main").
IMPERATIVES: Final = frozenset(
    """
    add allow always append avoid build bump change check clean configure convert copy create debug
    delete deploy disable document don't drop enable ensure explain extract fix follow generate give
    handle ignore implement include install keep limit list log make mark merge migrate move never
    note please prefer prevent print publish push put read refactor reject remember remove rename
    replace report restart restore return review revert rewrite run save send set ship show skip sort
    split start stop store switch test track try update upgrade use validate verify wrap write
    """.split()  # noqa: SIM905 - a word list reads better as text than as 300 quoted strings
)

#: Goals and constraints: modal and requirement language.
CONSTRAINT_RE: Final = re.compile(
    r"\b(?:must(?:n't| not)?|never|always|don't|do not|shouldn't|should not|should|need(?:s)? to|have to|"
    r"has to|required?|requirement|make sure|ensure|avoid|at most|at least|no more than|no later than|"
    r"prefer|constraint|mandatory|forbidden|not allowed|only ever|under no circumstances|goal|deadline|"
    r"i want|i'd like|we want|we need)\b",
    re.IGNORECASE,
)

DECISION_RE: Final = re.compile(
    r"\b(?:we'll|we will|we're going to|let's|let us|decided|decide|decision|go with|going with|"
    r"settled on|agreed|agree to|chose|choose|chosen|opted|switch(?:ed|ing)? to|instead of|rather than|"
    r"the plan is|plan is to|we'll use|we use|will use|approved|sign(?:ed)? off)\b",
    re.IGNORECASE,
)

OPEN_RE: Final = re.compile(
    r"\b(?:todo|fixme|tbd|xxx|open question|unresolved|not yet|still need(?:s)?|remaining|follow[- ]up|"
    r"next step|pending|blocked|to be decided|waiting (?:on|for)|unclear|not sure|revisit|later)\b",
    re.IGNORECASE,
)

#: Error language in tool output; matched against lower-cased text (case-insensitive regexes are slow).
ERROR_RE: Final = re.compile(
    r"(?:\btraceback\b|\berror\b|\bexception\b|(?<!\b0 )\bfailed\b|\bfailure\b|\bfatal\b|\bpanic\b|"
    r"\bdenied\b|\bnot found\b|\bexit (?:code|status) [1-9]|\bsegmentation fault\b|\btimed? ?out\b)",
)

#: Leading capitalised words that do not start a name ("The Redis cluster", "We Decided").
NAME_STOP: Final = frozenset(
    """
    A An And As At But By Can Could Did Do Does For From He Her Here His How I If In Is It Its Let Let's
    My No Not Now Of Oh Ok Okay On Once Or Our Please She So Some That The Their Then There These They
    This Those To Use We What When Where Which While Who Why Will With Would Yes You Your Also After
    Before Because Since Sure Thanks Thank Hi Hello Hey Great Good Nice Dear Just Maybe Only Note See
    Monday Tuesday Wednesday Thursday Friday Saturday Sunday January February March April May June July
    August September October November December Next Last Every Each All Any Both Mr Mrs Ms Dr
    """.split()  # noqa: SIM905 - a word list reads better as text than as 300 quoted strings
)

#: Keys of a tool input that say what the call did, most telling first.
TOOL_ARG_KEYS: Final = (
    "command",
    "cmd",
    "file_path",
    "path",
    "pattern",
    "query",
    "url",
    "sql",
    "name",
    "old_string",
    "prompt",
    "description",
)
