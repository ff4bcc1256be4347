"""Pure scoring and explanation: (papers, profile, history, corpus) → ranked matches.

No I/O, no clock. The parts live in `digestd.matching`: words and phrases (`text`), what the
stored papers teach (`corpus`: term rarity, acronyms papers define), how much a paper is about
a topic (`topics`), authors (`authors`), the written preferences together (`lexical`),
feedback votes (`similar`) and, with the optional extra, closeness in meaning (`semantic`).
This module puts them together behind `rank` / `select` / `match`.
Scores are calibrated probabilities that a paper is relevant, so one threshold
(`DEFAULT_MIN_SCORE`) serves every subscriber: a day with nothing for them sends nothing.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from digestd.matching.authors import name_key
from digestd.matching.corpus import Corpus
from digestd.matching.lexical import (
    ROUNDING,
    Preferences,
    exclusion,
    interest,
    needed,
    strongest,
)
from digestd.matching.semantic import LIFT, SAY_BELOW, nearness
from digestd.matching.similar import PULL, PUSH, Space, closest, short, voted
from digestd.matching.text import terms
from digestd.paper import Paper

__all__ = [
    "DEFAULT_MAX_PAPERS",
    "DEFAULT_MIN_SCORE",
    "Corpus",
    "Match",
    "Profile",
    "match",
    "name_key",
    "rank",
    "select",
    "terms",
]

DEFAULT_MAX_PAPERS = 10
DEFAULT_MIN_SCORE = 0.35


@dataclass(frozen=True, slots=True)
class Profile:
    """What one subscriber asked for."""

    topics: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    authors: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    max_papers: int = DEFAULT_MAX_PAPERS
    min_score: float = DEFAULT_MIN_SCORE
    #: papers the subscriber voted "more like this" / "less like this" on, newest first
    liked: tuple[Paper, ...] = ()
    disliked: tuple[Paper, ...] = ()


@dataclass(frozen=True, slots=True)
class Match:
    """A paper chosen for a profile, its score in [0, 1] and why it was chosen."""

    paper: Paper
    score: float
    #: one short human sentence, e.g. 'Title matches "diffusion language models"; by Jane Doe'
    why: str
    reasons: tuple[str, ...] = ()


def rank(
    papers: Sequence[Paper],
    profile: Profile,
    *,
    sent: Collection[str] = (),
    corpus: Corpus | None = None,
) -> list[Match]:
    """Every paper not in ``sent`` with a score above 0, best first (ties by id).

    ``corpus`` carries what the stored papers teach (term rarity, acronyms) and their
    one-time analysis; without it, the given papers are the whole corpus.
    """
    return [_match(*scored) for scored in _scored(papers, profile, sent, corpus)]


#: (exact score, score shown: rounded, paper, reasons), as `_scored` finds them
_Scored = tuple[float, float, Paper, list[str]]


def _scored(
    papers: Sequence[Paper],
    profile: Profile,
    sent: Collection[str],
    corpus: Corpus | None,
    *,
    selecting: bool = False,
) -> list[_Scored]:
    """Every paper scoring above 0, best first; ``selecting``: without those that cannot
    reach the profile's min_score (`select` would drop them)."""
    candidates = [p for p in {p.id: p for p in papers}.values() if p.id not in sent]
    if corpus is None:
        corpus = Corpus.of(candidates)
    prefs = Preferences.compile(
        corpus, profile.topics, profile.exclude, profile.authors, profile.categories
    )
    # With the semantic extra, any paper may be lifted for being close in meaning to the
    # papers about a topic, but by no more than LIFT: where that cannot reach the minimum
    # score (a send with the default threshold), only papers with words of a topic can.
    meaning = bool(corpus.meanings) and bool(prefs.topics)
    lifted_alone = meaning and (not selecting or profile.min_score - ROUNDING <= LIFT)
    if not (profile.liked or profile.disliked or lifted_alone):
        # Read just the papers that can score: those holding a word of a topic, by a followed
        # author or in a category asked for. A send ranks a day's papers for every
        # subscriber and most papers share nothing with a given profile, so this is most of
        # the work saved; the result is the same as reading all. (Votes pull in papers like
        # the ones voted on, whatever their words: then every paper is read.)
        possible = prefs.possible()
        candidates = [p for p in candidates if p.id in possible or _outside(p, corpus)]
    docs = [corpus.doc(p) for p in candidates]
    liked, disliked = [], []
    if profile.liked or profile.disliked:
        space = Space.of(docs)
        liked = voted([corpus.doc(p) for p in profile.liked], space)
        disliked = voted([corpus.doc(p) for p in profile.disliked], space)
    # Selecting (a send): a paper whose best topic is too weak to reach the minimum score
    # whatever else it meets is passed over after one look at its readings. Most of a
    # profile's papers are such (they hold a common word of a topic), and scoring each in
    # full was most of a send's matching.
    need = (
        needed(prefs, profile.min_score, lift=LIFT if meaning else 0.0)
        if selecting and not (liked or disliked)
        else 0.0
    )
    out: list[_Scored] = []
    for paper, doc in zip(candidates, docs, strict=True):
        if (
            need
            and paper.id not in prefs.authored
            and corpus.docs.get(paper.id) is doc
            and strongest(doc, prefs) < need
        ):
            continue
        score, reasons, weak = interest(doc, prefs)
        if meaning:
            closeness, why = nearness(doc, prefs.topics, corpus)
            if closeness > 0:
                if why and (score < SAY_BELOW or not reasons):
                    reasons.append(why)
                score += LIFT * closeness * (1 - score)
        if liked or disliked:
            vector = space.vector(doc)
            pull, near = closest(vector, paper.id, liked)
            if near is not None:
                score += PULL * pull
                reasons.append(f"similar to “{short(near.title)}”, which you liked")
            push, near = closest(vector, paper.id, disliked)
            if near is not None and score > 0:
                score *= 1 - PUSH * push
                reasons.append(f"lowered: similar to “{short(near.title)}” (you asked for less)")
        if prefs.exclude and score > 0:
            factor, why = exclusion(doc, prefs)
            score *= factor
            if why:
                reasons.append(why)
        exact = min(score, 1.0)
        shown = round(exact, 4)
        if shown > 0 and not reasons and weak:  # listed (low) for --min-score 0, never sent
            reasons.append(weak)
        if shown > 0 and reasons:
            out.append((exact, shown, paper, reasons))
    # Ordered by the exact score, shown rounded: rounding first made ties of papers that
    # differ in the fifth decimal, broken by id (development nDCG@10 0.870 -> 0.879).
    out.sort(key=lambda s: (-s[0], s[2].id))
    return out


def _match(_exact: float, shown: float, paper: Paper, reasons: list[str]) -> Match:
    why = "; ".join(reasons)
    return Match(paper, shown, why[:1].upper() + why[1:], tuple(reasons))


def _outside(paper: Paper, corpus: Corpus) -> bool:
    """The corpus does not hold this paper as given (its postings do not speak for it)."""
    doc = corpus.docs.get(paper.id)
    # identity first: in a send the papers are the corpus's own, and a dataclass's == compares
    # every field
    return doc is None or (doc.paper is not paper and doc.paper != paper)


def select(ranked: Sequence[Match], profile: Profile) -> list[Match]:
    """What the subscriber receives: at or above their minimum score, at most max_papers."""
    return [m for m in ranked if m.score >= profile.min_score][: profile.max_papers]


def match(
    papers: Sequence[Paper],
    profile: Profile,
    *,
    sent: Collection[str] = (),
    corpus: Corpus | None = None,
) -> list[Match]:
    """``select(rank(...))``, the same papers worded the same, found a send's way: it ranks
    every subscriber's papers and keeps a few, so papers that cannot reach the minimum score
    are passed over unscored and only the papers selected are worded."""
    chosen: list[Match] = []
    for scored in _scored(papers, profile, sent, corpus, selecting=True):
        if len(chosen) >= profile.max_papers or scored[1] < profile.min_score:
            break
        chosen.append(_match(*scored))
    return chosen
