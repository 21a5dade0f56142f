"""Word lists and patterns for the extractive SITREP, embedded so nothing is downloaded.

Kept small and English-centric on purpose: they steer salience, they do not decide what is kept on
their own. Rarity within the conversation does most of the work, and it is language-neutral; these
lists only say which words carry nothing (function words, phatic talk), which words a light
compression may drop, and which cues mark a plan, a decision or a finished piece of work.
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
    fine cool sounds hi hello hey sorry again lot lots bit little big small able done seems till
    """.split()  # noqa: SIM905 - a word list reads better as text than as 300 quoted strings
)

#: Phatic talk: greetings, thanks, acknowledgements, enthusiasm. A line made only of these (and of
#: stop words) says nothing a later turn needs, however often it occurs.
PHATIC: Final = frozenset(
    """
    hiya yo thx welcome yep yup nope awesome amazing wonderful fantastic lovely fun glad happy hope hoping
    wow haha hahaha lol lmao omg oh ah aw aww hmm um uh bye goodbye night morning evening afternoon day
    today doing well sound definitely absolutely totally indeed agree true exactly appreciate care talk
    chat meet later certainly
    """.split()  # noqa: SIM905 - a word list reads better as text than as quoted strings
)

#: Words a light compression drops: intensifiers and fillers that change no fact a line states.
#: Hedges that do change it ("maybe", "I think") are kept.
FILLER_WORDS: Final = frozenset(
    "really very actually basically totally definitely absolutely literally honestly truly quite just".split()  # noqa: SIM905
)
#: Interjections a line may open with ("Oh ", "Haha "); dropped there.
INTERJECTIONS: Final = frozenset("oh wow haha hahaha hmm um uh hey hi hello".split())  # noqa: SIM905
#: Discourse markers a line may open with; dropped only when punctuation sets them apart ("Well, ",
#: "So, "), since without it they may be part of what is said ("So far", "Well done", "Sure enough").
DISCOURSE_MARKERS: Final = frozenset("well so yeah yes ok okay anyway alright sure".split())  # noqa: SIM905
#: Every word a line's opening may lose.
LEADING_WORDS: Final = INTERJECTIONS | DISCOURSE_MARKERS

#: Decisions, constraints and plans: lines that say what was settled or what must hold.
DECISION_RE: Final = re.compile(
    r"\b(?:we'll|we will|we're going to|let's|decided|decide|decision|go with|going with|settled on|agreed|"
    r"chose|choose|chosen|opted|switch(?:ed|ing)? to|instead of|rather than|the plan is|plan is to|"
    r"approved|sign(?:ed)? off|must(?:n't| not)?|never|always|don't|do not|make sure|at most|at least|"
    r"no more than|no later than|deadline|required|mandatory|not allowed|forbidden|prefer)\b",
    re.IGNORECASE,
)

#: Work or plans still open when they were mentioned.
OPEN_RE: Final = re.compile(
    r"\b(?:todo|fixme|tbd|open question|unresolved|not yet|still need(?:s)? to|still have to|next step|"
    r"pending|blocked|to be decided|waiting (?:on|for)|revisit|follow[- ]up|i need to|we need to|"
    r"i have to|we have to|i'll|i will|we'll|we will|going to|plan(?:ning)? to|i'm planning|"
    r"want to|hoping to)\b",
    re.IGNORECASE,
)

#: Work reported finished.
DONE_RE: Final = re.compile(
    r"\b(?:done|finished|completed|fixed|merged|deployed|shipped|resolved|implemented|released|closed|"
    r"passed|passing|works now|is working|landed|published|set up|finalized|finalised|launched)\b",
    re.IGNORECASE,
)

#: Error language in tool output ("ImportError" included); matched against lower-cased text
#: (case-insensitive regexes are slow).
ERROR_RE: Final = re.compile(
    r"(?:\btraceback\b|error\b|exception\b|(?<!\b0 )\bfailed\b|\bfailure\b|\bfatal\b|\bpanic\b|"
    r"\bdenied\b|\bnot found\b|\bexit (?:code|status) [1-9]|\bsegmentation fault\b|\btimed? ?out\b)",
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
