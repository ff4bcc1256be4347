"""A subscriber's written preferences scored against one paper: topics, authors, categories,
exclusions. Feedback and semantic similarity are layered on top by `digestd.matcher`."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from digestd.matching.authors import Name
from digestd.matching.corpus import Corpus, Doc
from digestd.matching.topics import (
    SECOND,
    Topic,
    combine,
    compile_topic,
    evidence,
    holders,
    remembered,
)
from digestd.paper import Paper

#: a topic weaker than this is not worth a word in the explanation
MENTION = 0.1
AUTHOR = 0.95
CATEGORY_ONLY = 0.6
CATEGORY_BOOST = 0.1
#: an excluded subject at least this strong drops the paper; weaker, it lowers it
EXCLUDE_DROP = 0.85  # the phrase in the title, or said again and again
EXCLUDE_LOWER = 0.5
EXCLUDE_FACTOR = 0.8


@dataclass(frozen=True, slots=True)
class Preferences:
    """A profile compiled against a corpus, once per ranking."""

    topics: tuple[Topic, ...]
    exclude: tuple[Topic, ...]
    authors: tuple[tuple[Name, str], ...]
    categories: frozenset[str]
    corpus: Corpus
    #: per topic, the corpus's papers holding a word of it (`holders`): only they can score
    holding: tuple[frozenset[str], ...]
    #: the corpus's papers with an author of a followed last name
    authored: frozenset[str]

    @classmethod
    def compile(
        cls,
        corpus: Corpus,
        topics: Sequence[str],
        exclude: Sequence[str] = (),
        authors: Sequence[str] = (),
        categories: Sequence[str] = (),
    ) -> Preferences:
        compiled = tuple(t for t in (compile_topic(x, corpus) for x in topics) if t.forms)
        names = tuple((Name.of(a), a) for a in authors if Name.of(a).last)
        authored: set[str] = set()
        for name, _ in names:
            authored |= _by_last(corpus).get(name.last, set())
        return cls(
            compiled,
            tuple(t for t in (compile_topic(x, corpus) for x in exclude) if t.forms),
            names,
            frozenset(c.casefold() for c in categories),
            corpus,
            tuple(holders(t, corpus) for t in compiled),
            frozenset(authored),
        )

    def possible(self) -> set[str]:
        """Ids of the corpus's papers that can score above 0 for these preferences: those
        holding a word of a topic, by an author of a followed name, or in a category asked
        for. Every other paper scores 0 (interest() needs one of these to say anything)."""
        corpus = self.corpus
        found: set[str] = set(self.authored)
        for holding in self.holding:
            found |= holding
        if self.categories:
            by_category = _index(
                corpus, "categories", lambda p: (c.casefold() for c in p.categories)
            )
            for category in self.categories:
                found |= by_category.get(category, set())
        return found


def _by_last(corpus: Corpus) -> dict[str, set[str]]:
    return _index(corpus, "authors", lambda p: (Name.of(a).last for a in p.authors))


def _index(
    corpus: Corpus, name: str, keys: Callable[[Paper], Iterable[str]]
) -> dict[str, set[str]]:
    """key → ids of the corpus's papers with that key; built once per corpus."""
    known = corpus.memo.get(("index", name))
    if isinstance(known, dict):
        return known
    index: dict[str, set[str]] = {}
    for pid, doc in corpus.docs.items():
        for key in keys(doc.paper):
            if key:
                index.setdefault(key, set()).add(pid)
    corpus.remember(("index", name), index)
    return index


def interest(doc: Doc, prefs: Preferences) -> tuple[float, list[str], str]:
    """The paper's score in [0, 1] for the topics, authors and categories, the reasons worth
    saying, and the best topic's reason however weak (for a paper with nothing better)."""
    reasons: list[str] = []
    corpus = prefs.corpus
    pid = doc.paper.id
    # In a send every paper is the corpus's own: a topic none of whose words the paper holds
    # reads nothing, and most of a profile's topics are such for most of its papers.
    own = corpus.docs.get(pid) is doc
    hits: list[tuple[float, str]] = []
    for topic, holding in zip(prefs.topics, prefs.holding, strict=True):
        if not own:
            e = evidence(doc, topic, corpus)
        elif pid in holding:
            e = remembered(doc, topic, corpus)
        else:
            continue
        if e.score > 0:
            hits.append((e.score, e.why))
    if len(hits) > 1:
        hits.sort(reverse=True)
    s = combine([h[0] for h in hits])
    reasons += [why for s_, why in hits[:2] if s_ >= MENTION]
    by_followed = prefs.authors and (not own or pid in prefs.authored)
    for author in doc.paper.authors if by_followed else ():
        name = Name.of(author)
        who = next((w for n, w in prefs.authors if n.is_(name)), None)
        if who is not None:
            s = max(s, AUTHOR) + 0.02
            same = " ".join(who.split()).casefold() == " ".join(author.split()).casefold()
            reasons.insert(0, f"by {author}" + ("" if same else f" (you follow {who})"))
            break
    cats = [c for c in doc.paper.categories if c.casefold() in prefs.categories]
    if cats:
        s = max(s, CATEGORY_ONLY) if not prefs.topics else s + CATEGORY_BOOST * (1 - s)
        reasons.append("in " + ", ".join(cats))
    return min(s, 1.0), reasons, hits[0][1] if hits else ""


#: below the least score needed by this much: a score shown rounded to 4 places never passes
ROUNDING = 1e-3


def needed(prefs: Preferences, min_score: float, *, lift: float = 0.0) -> float:
    """The least score for its best topic with which a paper by no followed author may still
    reach ``min_score`` in `interest`. At best the next topic scores as much as the best and
    adds SECOND of the room it leaves (s + SECOND·s·(1 - s), rising in s), a category
    asked for adds CATEGORY_BOOST of what is left, and closeness in meaning (the semantic
    extra) at most ``lift`` of what is left after that; an exclusion only lowers. 0: no
    topics (a category alone scores), or any paper may."""
    if not prefs.topics:
        return 0.0
    target = min_score - ROUNDING
    if lift:
        target = (target - lift) / (1 - lift)
    if prefs.categories:
        target = (target - CATEGORY_BOOST) / (1 - CATEGORY_BOOST)
    if target <= 0:
        return 0.0
    a = SECOND  # solve s + a·s·(1 - s) = target for s in [0, 1]
    return ((1 + a) - math.sqrt((1 + a) ** 2 - 4 * a * min(target, 1.0))) / (2 * a)


def strongest(doc: Doc, prefs: Preferences) -> float:
    """The score of the paper's best topic; ``doc`` must be the corpus's own (the readings
    `interest` takes, remembered: `interest` reads them again for the papers kept)."""
    corpus = prefs.corpus
    pid = doc.paper.id
    best = 0.0
    for topic, holding in zip(prefs.topics, prefs.holding, strict=True):
        if pid in holding:
            s = remembered(doc, topic, corpus).score
            if s > best:
                best = s
    return best


def exclusion(doc: Doc, prefs: Preferences) -> tuple[float, str]:
    """A factor for the score: 0 for a paper mainly about an excluded subject, less than 1
    (with a reason) for one that deals with it in part, 1 for a passing mention or none."""
    factor, why = 1.0, ""
    for topic in prefs.exclude:
        e = evidence(doc, topic, prefs.corpus)
        if e.score >= EXCLUDE_DROP:
            return 0.0, ""
        if e.score >= EXCLUDE_LOWER:
            factor, why = EXCLUDE_FACTOR, f"lowered: mentions excluded “{topic.text}”"
    return factor, why


def score(doc: Doc, prefs: Preferences) -> tuple[float, list[str]]:
    """Interest times exclusion, with the reasons."""
    s, reasons, weak = interest(doc, prefs)
    reasons = reasons or ([weak] if weak else [])
    factor, why = exclusion(doc, prefs)
    if why and s > 0:
        reasons.append(why)
    return s * factor, reasons if factor else []
