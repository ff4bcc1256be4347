"""How strongly a paper is about one topic phrase, and the words of the paper that show it.

A topic is compiled once per ranking into *forms*: the phrase as written (each word with its
stem and the corpus's close variants: "molecular" also finds "molecule") and the phrase with
its acronyms swapped for the long forms papers define, or long forms for acronyms ("VLA" finds
"vision-language-action", "3D Gaussian splatting" finds "3DGS"). A paper is read for a topic
field by field (title, abstract, the feed's AI summary and keywords): the exact phrase and how
often, all its words close together, or some of its words weighted by their rarity. These
readings are combined by a logistic model into the probability that the paper is about the
topic, so that one threshold means the same for every topic and subscriber. The weights were
fitted on the judged development split of bench/relevance (`bench/relevance/fit.py`); the
held-out split shows they carry over.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from digestd.matching.corpus import Corpus, Doc, content_words
from digestd.matching.text import STOP, Field, Span, tokens

Form = tuple[frozenset[str], ...]

FEATURES = (
    "title_phrase",  # the phrase (or a form of it) in the title
    "title_words",  # all its words in the title, not as the phrase
    "abstract_phrase",  # mentions of the phrase in the abstract, 0..1 for 0..3+
    "abstract_near",  # all words within a few words of each other
    "abstract_words",  # all words, further apart
    "extra_phrase",  # the phrase in the AI summary or keywords
    "extra_words",
    "title_coverage",  # share of the phrase's rarity (idf) present in the title
    "abstract_coverage",  # same in the abstract, each word counted by how often it appears
    "extra_coverage",
    "context",  # likeness to the corpus papers clearly about the topic, minus its own words
)
#: fitted by bench/relevance/fit.py on the development split (see the module docstring),
#: before partial matches counted acronyms and long forms (`Word`). Refitted with them, the
#: weights ranked worse on the development split (nDCG@10 0.879 -> 0.869, digest F1 0.72 ->
#: 0.71), so these stay; with them, the acronyms raise development F1 0.71 -> 0.72.
WEIGHTS = (1.38, -0.45, 2.25, 0.20, -0.18, 1.32, 1.60, 1.70, 5.73, 0.85, 1.61)
BIAS = -5.31

FLOOR_TITLE = 0.95
FLOOR_REPEATED = 0.9
FLOOR_MENTION = 0.6
_VARIANT_EXTRA = 3  # "molecul" ~ "molecular", "clinic" ~ "clinician": a few letters more
_VARIANT_MIN = 5
_MAX_FORMS = 8
_MENTIONS = 3  # abstract mentions beyond this add nothing
_SEEDS = 2  # papers clearly about a topic needed before its context means anything
CONTEXT_TERMS = 40


@dataclass(frozen=True, slots=True)
class Word:
    """One content word of a topic as partial matches read it: its stems, and the corpus's
    acronyms and long forms that say it too. "RL" counts for each of "reinforcement
    learning"; "large language models" counts for "LLM"."""

    stems: frozenset[str]
    weight: float
    long_forms: tuple[Form, ...] = ()


@dataclass(frozen=True, slots=True)
class Topic:
    text: str
    forms: tuple[tuple[Form, str], ...]  # (form, "" when as written else the acronym swapped)
    #: the written form's words and their rarity, for partial matches; each word with the
    #: other spellings that count for it (`Word`)
    weights: tuple[Word, ...]
    #: acronym swaps, for papers that define the acronym otherwise
    swaps: tuple[tuple[str, tuple[str, ...]], ...]
    #: written as several words of which one says the subject ("tool use" reads as "tool"):
    #: the one word mentioned once in passing is not the phrase
    loose: bool = False
    #: stem -> compounds where it is not read as the word (`Corpus.bound`)
    bound: tuple[tuple[str, frozenset[str]], ...] = ()


def _variants(stem_: str, corpus: Corpus) -> frozenset[str]:
    out = {stem_}
    if len(stem_) >= _VARIANT_MIN:
        for other in corpus.prefixed(stem_):
            short, long_ = sorted((stem_, other), key=len)
            if long_.startswith(short) and len(long_) - len(short) <= _VARIANT_EXTRA:
                out.add(other)
    return frozenset(out)


def compile_topic(text: str, corpus: Corpus) -> Topic:
    """``text`` compiled against ``corpus``; once per corpus (a send has many subscribers
    sharing topics)."""
    key = ("topic", text)
    known = corpus.memo.get(key)
    if isinstance(known, Topic):
        return known
    topic = _compile(text, corpus)
    corpus.remember(key, topic)
    return topic


def _form(stems: Sequence[str]) -> Form:
    """A long form as a phrase to find ("" stands for any stop word)."""
    return tuple(frozenset({s}) if s else frozenset() for s in stems)


def _compile(text: str, corpus: Corpus) -> Topic:
    toks = [t for t in tokens(text) if t.stem]
    written = len(toks)
    while toks and toks[0].stem in STOP:
        toks.pop(0)
    while toks and toks[-1].stem in STOP:
        toks.pop()
    # a stop word in a phrase stands for any stop word: "learning with/from rewards"
    elems = [frozenset() if t.stem in STOP else _variants(t.stem, corpus) for t in toks]
    content = [(i, t) for i, t in enumerate(toks) if t.stem not in STOP]
    forms: list[tuple[Form, str]] = [(tuple(elems), "")] if content else []
    swaps: list[tuple[str, tuple[str, ...]]] = []
    spelled: dict[int, list[Form]] = {}  # a written acronym -> its long forms
    for i, tok in content:
        if corpus.is_acronym(tok.stem, tok.caps):
            for long_form in corpus.long_forms(tok.stem):
                long_elems = _form(long_form)
                spelled.setdefault(i, []).append(long_elems)
                forms.append((tuple(elems[:i]) + long_elems + tuple(elems[i + 1 :]), tok.stem))
                swaps.append((tok.stem, content_words(long_form)))
    stems = tuple(t.stem for _, t in content)
    said: dict[int, set[str]] = {}  # content word -> acronyms of a stretch holding it
    for a in range(len(content)):
        for b in range(a + 2, len(content) + 1):
            for acronym in corpus.acronym_for(stems[a:b]):
                i, j = content[a][0], content[b - 1][0] + 1
                swapped = (frozenset({acronym}),)
                forms.append((tuple(elems[:i]) + swapped + tuple(elems[j:]), acronym))
                swaps.append((acronym, stems[a:b]))
                for k in range(a, b):
                    said.setdefault(k, set()).add(acronym)
    weights = tuple(
        Word(elems[i] | said.get(k, set()), corpus.idf(t.stem), tuple(spelled.get(i, ())))
        for k, (i, t) in enumerate(content)
    )
    loose = len(content) == 1 and written > 1
    topic = Topic(text, tuple(forms[:_MAX_FORMS]), weights, tuple(swaps), loose)
    return replace(topic, bound=_bound(topic, corpus))


def _bound(topic: Topic, corpus: Corpus) -> tuple[tuple[str, frozenset[str]], ...]:
    """The topic's stems that papers mostly use inside a compound, with those compounds;
    not one whose other part is the topic's too ("real-world" for "real-world robotics")."""
    own = _own(topic)
    out = []
    for s_ in sorted(own):
        compounds = frozenset(
            c
            for c in corpus.bound(s_)
            if c not in own and not any(c in corpus.compounds.get(o, ()) for o in own - {s_})
        )
        if compounds:
            out.append((s_, compounds))
    return tuple(out)


def _fields(doc: Doc, topic: Topic) -> tuple[Field, Field, Field]:
    """The paper's title, abstract and extra as ``topic`` reads them (`Topic.bound`)."""
    if not topic.bound:
        return doc.title, doc.abstract, doc.extra
    parts = dict(topic.bound)
    return doc.title.without(parts), doc.abstract.without(parts), doc.extra.without(parts)


@dataclass(frozen=True, slots=True)
class Evidence:
    score: float
    why: str = ""
    features: tuple[float, ...] = ()


def _quoted(text: str) -> str:
    return f"“{' '.join(text.split())}”"


def _conflicts(doc: Doc, topic: Topic, swapped: str) -> bool:
    """The paper defines the swapped acronym as something else ("ASR: attack success rate")."""
    if not swapped:
        return False
    own = {content_words(long_form) for a, long_form in doc.defines if a == swapped}
    ours = {long_form for a, long_form in topic.swaps if a == swapped}
    return bool(own) and not own & ours


@dataclass(slots=True)
class _Best:
    """The strongest wording found so far, for the explanation."""

    rank: int = 99
    why: str = ""

    def offer(self, rank: int, why: str) -> None:
        if rank < self.rank:
            self.rank, self.why = rank, why


def _as(wording: str, topic: Topic) -> str:
    """' as “Vision-Language-Action”' when the paper words the topic its own way."""
    same = " ".join(wording.casefold().split()) == " ".join(topic.text.casefold().split())
    return "" if same else f" as {_quoted(wording)}"


def _coverage(f: Field, topic: Topic, counted: bool) -> tuple[float, list[Span]]:
    """Share of the topic's rarity present in ``f`` (words counted by mentions, saturating)."""
    total = sum(w.weight for w in topic.weights)
    got = 0.0
    seen: list[Span] = []
    index = f.index
    for word in topic.weights:
        mentions, first = 0, None
        for s in word.stems:
            if positions := index.get(s):
                mentions += len(positions)
                at = min(positions)
                if first is None or at < first.start:
                    first = Span(at, at + 1)
        for long_form in word.long_forms:
            if f.holds(long_form) and (spans := f.phrases(long_form)):
                mentions += len(spans)
                if first is None or spans[0].start < first.start:
                    first = spans[0]
        if first is not None:
            got += word.weight * (1 - 0.5**mentions if counted else 1.0)
            seen.append(first)
    return (got / total if total else 0.0), seen


def _phrase_readings(doc: Doc, topic: Topic) -> list[float]:
    """The phrase readings of `features` alone (no coverage, no wording): what `context`
    needs of every stored paper holding a topic's words."""
    x = [0.0] * len(FEATURES)
    _read_phrases(doc, topic, x, None, _fields(doc, topic))
    return x


def _read_phrases(
    doc: Doc,
    topic: Topic,
    x: list[float],
    best: _Best | None,
    fields: tuple[Field, Field, Field],
) -> None:
    """Fill the phrase readings (x[0:7]) and, given ``best``, offer it the wordings found;
    a wording is only written out when it would beat what ``best`` has."""
    quote = _quoted(topic.text) if best is not None else ""
    title, abstract, extra = fields
    for form, swapped in topic.forms:
        if _conflicts(doc, topic, swapped):
            continue
        # The title and the keywords: the phrase, or all its words (one reading each).
        for f, at, ranks, said in (
            (title, 0, (0, 3), ("title matches", "title has the words of")),
            (extra, 5, (2, 6), ("keywords mention", "keywords have the words of")),
        ):
            spans, span = _read(f, form)
            if spans:
                x[at] = 1.0
                if best is not None and best.rank > ranks[0]:
                    best.offer(ranks[0], f"{said[0]} {quote}" + _as(f.quote(spans[0]), topic))
            elif span is not None:
                x[at + 1] = 1.0
                if best is not None:
                    best.offer(ranks[1], f"{said[1]} {quote}")
        # The abstract: how often the phrase, or how close together its words.
        window = max(8, 2 * len(form) + 2)
        spans, span = _read(abstract, form)
        if spans:
            x[2] = max(x[2], min(len(spans), _MENTIONS) / _MENTIONS)
            if best is not None and best.rank > 1:
                times = f" ({len(spans)} times)" if len(spans) > 1 else ""
                wording = _as(abstract.quote(spans[0]), topic)
                best.offer(1, f"abstract mentions {quote}{times}{wording}")
        elif span is not None:
            if span.end - span.start <= window:
                x[3] = 1.0
                if best is not None:
                    best.offer(4, f"abstract has the words of {quote} close together")
            else:
                x[4] = 1.0
                if best is not None:
                    best.offer(5, f"abstract has the words of {quote}")


def _read(f: Field, form: Form) -> tuple[list[Span], Span | None]:
    """Where ``f`` has the phrase ``form``, or else the shortest stretch with all its words;
    a field missing one of its words (most, for most forms) has neither, found out at once."""
    if not f.holds(form):
        return [], None
    spans = f.phrases(form)
    return spans, None if spans else f.window(form)


def features(doc: Doc, topic: Topic) -> tuple[tuple[float, ...], str]:
    """The readings of ``doc`` for ``topic`` (see FEATURES) and the best wording found."""
    x = [0.0] * len(FEATURES)
    best = _Best()
    quote = _quoted(topic.text)
    fields = _fields(doc, topic)
    _read_phrases(doc, topic, x, best, fields)
    title, abstract, extra = fields
    shown: list[str] = []
    for i, (f, counted) in enumerate(((title, False), (abstract, True),
                                      (extra, False))):  # fmt: skip
        x[7 + i], seen = _coverage(f, topic, counted)
        if best.rank == 99 and f is not extra:  # the words are the wording of last resort
            for span in seen:
                word = f.quote(span)
                if word.casefold() not in (w.casefold() for w in shown):
                    shown.append(word)
    if shown and best.rank == 99:
        strongest = sorted(shown, key=len, reverse=True)[:3]
        best.offer(7, f"mentions {', '.join(_quoted(w) for w in strongest)} from {quote}")
    return tuple(x), best.why


def _own(topic: Topic) -> frozenset[str]:
    """Every stem a reading of ``topic`` looks for: its forms' and its words' (`Word`)."""
    words: set[str] = set()
    for form, _ in topic.forms:
        for alternatives in form:
            words |= alternatives
    for word in topic.weights:
        words |= word.stems
        for long_form in word.long_forms:
            for alternatives in long_form:
                words |= alternatives
    return frozenset(words)


def holders(topic: Topic, corpus: Corpus) -> frozenset[str]:
    """Ids of the corpus's papers holding a word of ``topic`` in any field: every reading
    (phrase, words, coverage) needs one, so no other paper can score above 0 for it."""
    key = ("holders", topic.text)
    known = corpus.memo.get(key)
    if isinstance(known, frozenset):
        return known
    found = frozenset(pid for s_ in _own(topic) for pid in corpus.postings.get(s_, ()))
    corpus.remember(key, found)
    return found


def context(topic: Topic, corpus: Corpus) -> Mapping[str, float]:
    """What else the stored papers that are clearly about ``topic`` talk about: the mean of
    their vectors without the topic's own words (pseudo-relevance feedback, Rocchio)."""
    key = ("context", topic.text)
    known = corpus.memo.get(key)
    if isinstance(known, dict):
        return known
    candidates: set[str] = set()
    for form, _ in topic.forms:
        postings = [
            {pid for s in alternatives for pid in corpus.postings.get(s, ())}
            for alternatives in form
            if alternatives
        ]
        if postings:
            candidates |= min(postings, key=len)
    strong, weak = [], []
    for pid in sorted(candidates):
        doc = corpus.docs[pid]
        x = _phrase_readings(doc, topic)
        if x[0] or x[2] >= 2 / _MENTIONS or (x[5] and x[2]):
            strong.append(doc)
        elif x[1] or x[2] or x[3] or x[5]:
            weak.append(doc)
    seeds = strong if len(strong) >= _SEEDS else strong + weak
    out: dict[str, float] = {}
    if len(seeds) >= _SEEDS:
        own = _own(topic)
        # words many seeds share, not one seed's names: how many seeds hold a stem, by rarity
        shared: dict[str, int] = {}
        for doc in seeds:
            for s_ in corpus.vector(doc):
                if s_ not in own:
                    shared[s_] = shared.get(s_, 0) + 1
        floor = 2 if len(seeds) >= 3 else 1
        weights = {s_: n / len(seeds) * corpus.idf(s_) for s_, n in shared.items() if n >= floor}
        top = sorted(weights.items(), key=lambda kv: (-kv[1], kv[0]))[:CONTEXT_TERMS]
        norm = math.sqrt(sum(w * w for _, w in top)) or 1.0
        out = {s_: w / norm for s_, w in top}
    corpus.remember(key, out)
    return out


def evidence(doc: Doc, topic: Topic, corpus: Corpus | None = None) -> Evidence:
    """How likely ``doc`` is about ``topic`` (0..1), and why, in the paper's words.

    Worked out once per (topic, paper) of a corpus: in a send, every subscriber who shares
    a topic reads the day's papers for it, and this is most of the matcher's time.
    """
    if corpus is None or corpus.docs.get(doc.paper.id) is not doc:
        return _evidence(doc, topic, corpus)
    if doc.paper.id not in holders(topic, corpus):
        # Most (topic, paper) pairs a send asks about: a profile's papers are those holding
        # a word of any of its topics. Not remembered: two thirds of the memo were these.
        return NOTHING
    return remembered(doc, topic, corpus)


def remembered(doc: Doc, topic: Topic, corpus: Corpus, *, keep: bool = True) -> Evidence:
    """`evidence` for a paper the caller knows is the corpus's own and holds a word of
    ``topic`` (`holders`); worked out, if need be, and kept unless not ``keep`` (the
    semantic extra reads every stored paper for a topic once, most never asked again)."""
    key = ("evidence", topic.text, doc.paper.id)
    known = corpus.memo.get(key)
    if isinstance(known, Evidence):
        return known
    if isinstance(known, tuple):  # worked out by another process (see `portable`)
        found = Evidence(*known)
        corpus.memo[key] = found
        return found
    found = _evidence(doc, topic, corpus)
    if keep:
        corpus.remember(key, found)
    return found


def portable(items: Iterable[tuple[object, object]]) -> list[tuple[object, object]]:
    """Memo entries as they are handed to another process (`pipeline.handed_corpus`, a send
    process's readings: `pipeline.new_readings`).

    Evidence goes as a plain (score, why) tuple, which pickles three times and unpickles six
    times faster than the dataclass (28,000 of them for 1,500 topics); `remembered` makes it
    evidence again where it is used. Its features stay behind: only the bench's fitting reads
    them, never a send, and as a dozen float objects each they made up most of what the
    readings took in every process they were handed to. The papers holding a topic's words
    (`holders`) stay behind too: a few lookups to find again, and their ids would arrive as
    new strings. Unpickled in each send process, what stayed behind cost 15 MB in each.
    """
    out: list[tuple[object, object]] = []
    for key, value in items:
        if isinstance(value, Evidence):
            out.append((key, (value.score, value.why)))
        elif not (isinstance(key, tuple) and key[:1] == ("holders",)):
            out.append((key, value))
    return out


#: a paper holding no word of the topic: no reading can find anything
NOTHING = Evidence(0.0, "", (0.0,) * len(FEATURES))


def _evidence(doc: Doc, topic: Topic, corpus: Corpus | None) -> Evidence:
    x, why = features(doc, topic)
    if not any(x):
        return NOTHING
    if corpus is not None:
        ctx = context(topic, corpus)
        if ctx:
            v = corpus.vector(doc)
            x = (*x[:-1], sum(w * v.get(s, 0.0) for s, w in ctx.items()))
    z = BIAS + sum(w * v for w, v in zip(WEIGHTS, x, strict=True))
    return Evidence(round(max(1 / (1 + math.exp(-z)), _floor(x, topic.loose)), 4), why, x)


def _floor(x: Sequence[float], loose: bool = False) -> float:
    """What the phrase alone guarantees, whatever else the paper holds. On the judged
    development split, every paper with a topic's phrase in its title was relevant (32 of
    32), 42 of 43 with two or more mentions in the abstract, 24 of 36 with one. A ``loose``
    topic's one word mentioned once is no such sign: "tool use" sent eight papers saying
    "tools" once in passing, none relevant, and no relevant paper was sent for it alone."""
    if x[0]:
        return FLOOR_TITLE
    if x[2] >= 2 / _MENTIONS:
        return FLOOR_REPEATED
    if (x[2] or x[5]) and not loose:
        return FLOOR_MENTION
    return 0.0


#: what the second topic a paper meets adds, as a share of the room the best one leaves
SECOND = 0.25


def combine(scores: Sequence[float]) -> float:
    """Several topics met: the best, plus a little for the next (interests meeting)."""
    ordered = sorted(scores, reverse=True)
    if not ordered:
        return 0.0
    s = ordered[0]
    if len(ordered) > 1:
        s += SECOND * ordered[1] * (1 - s)
    return s
