"""The matcher as a pure function: real papers in, ranked matches with reasons out."""

from __future__ import annotations

from dataclasses import replace

import pytest

from digestd.matcher import Profile, match, name_key, rank, select, terms
from digestd.paper import Paper
from digestd.sources import jsonfile
from tests.conftest import HF_DAYS

DAY = jsonfile.load(HF_DAYS / "2026-08-14.json")


def paper(title: str, abstract: str = "", **kw: object) -> Paper:
    return Paper(id=kw.pop("id", "2601.00001"), title=title, abstract=abstract, **kw)  # type: ignore[arg-type]


def test_word_forms_meet() -> None:
    assert terms("Diffusion Language Models") == terms("diffusion language model")
    assert terms("agents acting") == terms("agent act")
    assert terms("studies") == terms("study")


def test_phrase_in_title_beats_abstract_beats_scattered_words() -> None:
    papers = [
        paper("World models for planning", id="2601.00001"),
        paper("Planning", "We learn world models from video.", id="2601.00002"),
        paper("Planning", "The world is big. " + "filler " * 30 + "Two models.", id="2601.00003"),
    ]
    ranked = rank(papers, Profile(topics=("world models",), min_score=0))
    assert [m.paper.id for m in ranked] == ["2601.00001", "2601.00002", "2601.00003"]
    assert ranked[0].why == "Title matches “world models”"
    assert ranked[1].why == "Abstract mentions “world models”"
    assert ranked[2].score < 0.35  # scattered words alone are not sent by default


def test_real_day_world_models() -> None:
    chosen = match(DAY, Profile(topics=("world models",)))
    ids = [m.paper.id for m in chosen]
    assert set(ids[:3]) == {"2608.13049", "2608.13489", "2608.13552"}
    assert all(m.score >= 0.35 and m.why for m in chosen)


def test_nothing_relevant_means_nothing_selected() -> None:
    assert match(DAY, Profile(topics=("protein folding",))) == []
    assert match(DAY, Profile(topics=("the of and",))) == []


def test_followed_author_matches_accents_and_initials() -> None:
    p = paper("Something else entirely", authors=("Jiří Matas", "Ann Smith"))
    for followed in ("Jiri Matas", "J. Matas", "jiří matas"):
        [m] = match([p], Profile(authors=(followed,)))
        assert m.why.startswith("By Jiří Matas") and m.score >= 0.9
    assert match([p], Profile(authors=("Karel Matas",))) == []
    assert name_key("Matas, Jiří") == name_key("Jiri Matas")


def test_categories_alone_and_as_a_boost() -> None:
    lg = paper("A", "about world models", categories=("cs.LG", "stat.ML"), id="2601.00001")
    cv = paper("B", "about world models", categories=("cs.CV",), id="2601.00002")
    only = match([lg, cv], Profile(categories=("cs.LG",)))
    assert [m.paper.id for m in only] == ["2601.00001"] and only[0].why == "In cs.LG"
    both = rank([lg, cv], Profile(topics=("world models",), categories=("cs.LG",)))
    assert both[0].paper.id == "2601.00001" and both[0].score > both[1].score


def test_exclusion_drops_papers_about_it_and_lowers_a_passing_mention() -> None:
    about = paper("Medical imaging with world models", id="2601.00001")
    twice = paper("World models", "medical imaging ... more medical imaging", id="2601.00002")
    once = paper("World models for robots", "unlike medical imaging, robots move", id="2601.00003")
    ranked = rank(
        [about, twice, once], Profile(topics=("world models",), exclude=("medical imaging",))
    )
    assert [m.paper.id for m in ranked] == ["2601.00003"]
    assert ranked[0].score == 0.5 and "excluded “medical imaging”" in ranked[0].why


def test_already_sent_papers_are_never_ranked() -> None:
    ranked = rank(DAY, Profile(topics=("world models",)), sent={"2608.13552"})
    assert "2608.13552" not in {m.paper.id for m in ranked}


@pytest.mark.parametrize(("cap", "floor"), [(1, 0.35), (2, 0.9), (10, 0.99)])
def test_select_applies_cap_and_floor(cap: int, floor: float) -> None:
    profile = Profile(topics=("world models", "video generation"), max_papers=cap, min_score=floor)
    chosen = select(rank(DAY, profile), profile)
    assert len(chosen) <= cap and all(m.score >= floor for m in chosen)


def test_ranking_is_deterministic_and_deduplicates() -> None:
    profile = Profile(topics=("video generation",))
    once = rank(DAY, profile)
    assert rank(list(reversed(DAY)) + DAY, profile) == once


def test_keywords_and_summary_count_as_body_text() -> None:
    p = paper("Untitled", "nothing here", keywords=("KV cache",), summary="")
    [m] = match([p], Profile(topics=("KV cache",)))
    assert m.score == 0.8
    q = replace(p, keywords=(), summary="It compresses the KV cache.")
    assert match([q], Profile(topics=("kv cache",)))[0].score == 0.8
