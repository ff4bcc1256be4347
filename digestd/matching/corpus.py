"""What the matcher knows of the stored papers: term rarity and the acronyms papers define.

A `Corpus` is a value: built once from the stored papers (by the pipeline, once per run; by
`digestd rank` from the files it is given) and passed to the pure `rank`. It holds document
frequencies of stems, the acronyms that abstracts define ("vision-language-action (VLA)"),
which words are written in capitals (so a subscriber's "rag" is read as RAG), and the
analysed form of each paper, the one-time work a new paper needs.
"""

from __future__ import annotations

import functools
import itertools
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from digestd.matching.text import ACRONYM_PLURAL, STOP, Field, fold, stem, tokens
from digestd.paper import Paper

#: "(VLA)", "(MoE)", "(RLVR)", "(3DGS)", "(KV cache)": an acronym in parentheses
_PAREN = re.compile(r"\(([^()]{1,40})\)")
_ACRONYM = re.compile(r"^(?=.*[A-Z].*[A-Z0-9])[A-Za-z0-9][A-Za-z0-9-]{0,11}$")
PREFIX = 5
#: the most distinctive stems of a paper are enough to compare it with others
VECTOR_TERMS = 60
#: a corpus this small (or none) still ranks; rarity then comes mostly from the papers given
_MIN_DOCS = 1
#: entries of Corpus.memo before it starts over (~200 bytes each)
MEMO_LIMIT = 300_000
#: a compound in at least this share of the papers holding one of its words (and in this
#: many) is that word's usual use, not the word (`Corpus.bound`)
BOUND_SHARE = 0.6
BOUND_MIN = 3


def content_words(stems: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(s for s in stems if s)


@dataclass(frozen=True, slots=True)
class Doc:
    """A paper analysed for matching: its fields, its vocabulary and the acronyms it defines."""

    paper: Paper
    title: Field
    abstract: Field
    extra: Field  # the feed's AI summary and keywords
    vocabulary: frozenset[str]
    #: acronym stem -> long forms (tuples of content stems) this paper defines for it
    defines: tuple[tuple[str, tuple[str, ...]], ...]
    #: stems this paper writes in capitals
    capitals: frozenset[str]
    lowercase: frozenset[str]
    #: content stems and how often they occur, the title counting twice
    counts: Mapping[str, int]


#: sentences about where the code is, not what the paper is about ("Code is available at ...")
_BOILERPLATE = re.compile(
    r"https?://|github\.com|huggingface\.co|\b(?:code|codes|source code|project page|demo)\b"
    r".{0,80}\b(?:available|release[sd]?|open[- ]?sourced?|public)",
    re.IGNORECASE | re.DOTALL,
)
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9])")


def subject_text(abstract: str) -> str:
    """The abstract without its code-and-data availability sentences."""
    kept = [s for s in _SENTENCE.split(abstract) if not _BOILERPLATE.search(s)]
    return " ".join(kept)


@functools.lru_cache(maxsize=8192)
def analyse(paper: Paper) -> Doc:
    """The one-time work a paper needs; cached, as a daemon meets the same papers every run."""
    title = Field([paper.title])
    abstract = Field([subject_text(paper.abstract)])
    extra = Field([paper.summary, *paper.keywords] if paper.summary else list(paper.keywords))
    vocab = frozenset(title.index) | frozenset(abstract.index) | frozenset(extra.index)
    caps: set[str] = set()
    lower: set[str] = set()
    for text in (paper.title, paper.abstract):
        for t in tokens(text):
            (caps if t.caps else lower).add(t.stem)
    counts: Counter[str] = Counter()
    for f, times in ((title, 2), (abstract, 1), (extra, 1)):
        for s, positions in f.index.items():
            counts[s] += times * len(positions)
    return Doc(
        paper,
        title,
        abstract,
        extra,
        vocab,
        tuple(definitions(f"{paper.title}. {paper.abstract}")),
        frozenset(caps),
        frozenset(lower - caps),
        dict(counts),
    )


def definitions(text: str) -> list[tuple[str, tuple[str, ...]]]:
    """Acronyms defined in ``text`` as "long form (ACR)", with their long forms stemmed.

    The long form is found as Schwartz and Hearst do (2003): the shortest run of words
    before the parenthesis whose letters spell the acronym in order, starting a word.
    """
    found = []
    for m in _PAREN.finditer(text):
        inside = m.group(1).split()
        if not inside or not _ACRONYM.match(inside[0]):
            continue
        plural = ACRONYM_PLURAL.match(inside[0])
        short = plural.group(1) if plural else inside[0]
        before = text[: m.start()].rstrip()
        rest = [w.casefold() for w in inside[1:]]
        if rest:  # "key-value cache (KV cache)": the shared tail is not part of the acronym
            tail = before.split()[-len(rest) :]
            if [w.casefold() for w in tail] != rest:
                continue
            before = before[: before.casefold().rfind(tail[0].casefold())].rstrip()
        words = before.split()[-(len(short) + 5) :]
        long_form = _long_form(short, " ".join(words))
        if long_form is None:
            continue
        # stop words stay, as "": "mixture-of-experts" is not "mixture experts"
        stems = tuple("" if t.stem in STOP else t.stem for t in tokens(long_form))
        content = content_words(stems)
        acronym = stem(fold(short))
        if 2 <= len(content) <= 2 * len(short) + 1 and acronym not in content and stems[0]:
            found.append((acronym, stems))
    return found


def _long_form(short: str, text: str) -> str | None:
    letters = [c.casefold() for c in short if c.isalnum()]
    if not letters or not short[0].isalnum():
        return None
    s, i = len(letters) - 1, len(text) - 1
    low = text.casefold()
    while s >= 0:
        c = letters[s]
        while i >= 0 and (low[i] != c or (s == 0 and i > 0 and low[i - 1].isalnum())):
            i -= 1
        if i < 0:
            return None
        i -= 1
        s -= 1
    return text[i + 1 :].strip(" -,;:") or None


@dataclass(frozen=True)
class Corpus:
    """Statistics of the stored papers (see the module docstring)."""

    size: int = 0
    df: Mapping[str, int] = field(default_factory=dict)
    #: acronym stem -> long form -> how many papers define it so
    acronyms: Mapping[str, Mapping[tuple[str, ...], int]] = field(default_factory=dict)
    #: stem -> (papers writing it in capitals, papers writing it in lower case only)
    case: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    docs: Mapping[str, Doc] = field(default_factory=dict, compare=False, repr=False)
    #: first letters of a stem -> the stems that start so (for variants of a topic's words)
    prefixes: Mapping[str, tuple[str, ...]] = field(default_factory=dict, compare=False, repr=False)
    #: stem -> ids of the papers holding it
    postings: Mapping[str, tuple[str, ...]] = field(default_factory=dict, compare=False, repr=False)
    #: results worked out once per corpus (a paper's vector, a topic's context); pure caching
    memo: dict[object, object] = field(default_factory=dict, compare=False, repr=False)
    #: paper id -> its sentence embedding (numpy unit vector), with the semantic extra
    #: (`digestd.matching.semantic`); empty without it
    meanings: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    #: stem -> the hyphenated compounds it is a part of ("world" -> "realworld", ...)
    compounds: Mapping[str, tuple[str, ...]] = field(
        default_factory=dict, compare=False, repr=False
    )

    @classmethod
    def of(cls, papers: Iterable[Paper | Doc], meanings: Mapping[str, Any] | None = None) -> Corpus:
        df: Counter[str] = Counter()
        acronyms: dict[str, Counter[tuple[str, ...]]] = {}
        caps: Counter[str] = Counter()
        lower: Counter[str] = Counter()
        docs: dict[str, Doc] = {}
        compounds: dict[str, set[str]] = {}
        for item in papers:
            doc = item if isinstance(item, Doc) else analyse(item)
            if doc.paper.id in docs:
                continue
            docs[doc.paper.id] = doc
            for f in (doc.title, doc.abstract, doc.extra):
                for joined, first, last in f.compounds():
                    compounds.setdefault(first, set()).add(joined)
                    compounds.setdefault(last, set()).add(joined)
            df.update(doc.vocabulary)
            caps.update(doc.capitals)
            lower.update(doc.lowercase)
            for short, long_form in set(doc.defines):
                acronyms.setdefault(short, Counter())[long_form] += 1
        case = {s: (caps[s], lower[s]) for s in caps.keys() | lower.keys()}
        prefixes: dict[str, list[str]] = {}
        for s in df:
            if len(s) >= PREFIX:
                prefixes.setdefault(s[:PREFIX], []).append(s)
        postings: dict[str, list[str]] = {}
        for pid, doc in docs.items():
            for s in doc.vocabulary:
                postings.setdefault(s, []).append(pid)
        return cls(
            len(docs),
            dict(df),
            {k: dict(v) for k, v in acronyms.items()},
            case,
            docs,
            {k: tuple(sorted(v)) for k, v in prefixes.items()},
            {k: tuple(v) for k, v in postings.items()},
            meanings={k: v for k, v in (meanings or {}).items() if k in docs},
            compounds={k: tuple(sorted(v)) for k, v in compounds.items()},
        )

    def vector(self, doc: Doc) -> Mapping[str, float]:
        """The paper as a unit-length tf-idf vector of its most distinctive stems."""
        key = ("vector", doc.paper.id)
        known = self.memo.get(key)
        if isinstance(known, dict) and doc.paper.id in self.docs:
            return known
        v = {s: (1 + math.log(c)) * self.idf(s) for s, c in doc.counts.items() if len(s) > 1}
        top = dict(sorted(v.items(), key=lambda kv: -kv[1])[:VECTOR_TERMS])
        norm = math.sqrt(sum(x * x for x in top.values())) or 1.0
        out = {s: x / norm for s, x in top.items()}
        if doc.paper.id in self.docs:
            self.remember(key, out)
        return out

    def remember(self, key: object, value: object) -> None:
        """Keep ``value`` in the memo, which stays bounded: past MEMO_LIMIT entries the
        older half goes (a million subscribers can bring hundreds of thousands of distinct
        topics; those worked out first go first)."""
        if len(self.memo) >= MEMO_LIMIT:
            for old in list(itertools.islice(self.memo, MEMO_LIMIT // 2)):
                del self.memo[old]
        self.memo[key] = value

    def prefixed(self, prefix: str) -> tuple[str, ...]:
        return self.prefixes.get(prefix[:PREFIX], ())

    def doc(self, paper: Paper) -> Doc:
        """The paper analysed: from the corpus when it holds it, else analysed now."""
        known = self.docs.get(paper.id)
        # identity first: in a send the papers are the corpus's own, and a dataclass's ==
        # compares every field
        if known is not None and (known.paper is paper or known.paper == paper):
            return known
        return analyse(paper)

    def idf(self, stem_: str) -> float:
        """Rarity of a stem: BM25's idf, high for a stem no stored paper has."""
        n = max(self.size, _MIN_DOCS)
        d = self.df.get(stem_, 0)
        return math.log(1 + (n - d + 0.5) / (d + 0.5))

    def bound(self, stem_: str) -> tuple[str, ...]:
        """The hyphenated compounds that hold most of the papers' uses of a word, where it
        is not the word on its own: "real-world" for "world", "open-source" for "source".
        A compound holding fewer ("multi-agent" for "agent") is one use of the word."""
        least = max(BOUND_MIN, BOUND_SHARE * self.df.get(stem_, 0))
        return tuple(c for c in self.compounds.get(stem_, ()) if self.df.get(c, 0) >= least)

    def is_acronym(self, stem_: str, written_caps: bool) -> bool:
        """Whether a subscriber's word is an acronym: written so, or papers write it so."""
        if stem_ not in self.acronyms:
            return False
        if written_caps:
            return True
        upper, lower = self.case.get(stem_, (0, 0))
        return upper > 0 and upper >= 4 * lower

    def long_forms(self, acronym: str, limit: int = 3) -> list[tuple[str, ...]]:
        forms = self.acronyms.get(acronym, {})
        return [f for f, _ in sorted(forms.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]]

    def acronym_for(self, words: tuple[str, ...]) -> list[str]:
        """Acronyms papers define for exactly these (stemmed content) words."""
        known = self.memo.get(("acronyms by words",))
        if isinstance(known, dict):
            return sorted(known.get(words, ()))
        # built once per corpus: every topic of a send asks, for each run of its words
        by_words: dict[tuple[str, ...], set[str]] = {}
        for a, forms in self.acronyms.items():
            for f in forms:
                by_words.setdefault(content_words(f), set()).add(a)
        self.remember(("acronyms by words",), by_words)
        return sorted(by_words.get(words, ()))
