"""The matcher as a pure function: real papers in, ranked matches with reasons out."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from random import Random

import pytest

from digestd.matcher import Corpus, Profile, match, name_key, rank, select, terms
from digestd.matching.corpus import definitions, subject_text
from digestd.matching.topics import FEATURES, compile_topic, evidence, holders
from digestd.paper import Paper
from digestd.sources import jsonfile
from tests.conftest import HF_DAYS

RELEVANCE = Path(__file__).resolve().parent.parent / "bench" / "relevance"

DAY = jsonfile.load(HF_DAYS / "2026-08-14.json")


def paper(title: str, abstract: str = "", **kw: object) -> Paper:
    return Paper(id=kw.pop("id", "2601.00001"), title=title, abstract=abstract, **kw)  # type: ignore[arg-type]


def test_word_forms_meet() -> None:
    assert terms("Diffusion Language Models") == terms("diffusion language model")
    assert terms("agents acting") == terms("agent act")
    assert terms("studies") == terms("study")
    assert terms("LLMs") == terms("LLM")  # an acronym's plural


def test_phrase_in_title_beats_abstract_beats_scattered_words() -> None:
    papers = [
        paper("World models for planning", id="2601.00001"),
        paper("Planning", "We learn world models from video.", id="2601.00002"),
        paper("Planning", "The world is big. " + "filler " * 30 + "Two models.", id="2601.00003"),
    ]
    ranked = rank(papers, Profile(topics=("world models",), min_score=0))
    assert [m.paper.id for m in ranked][:2] == ["2601.00001", "2601.00002"]
    assert ranked[0].why == "Title matches “world models”"
    assert ranked[1].why == "Abstract mentions “world models”"
    scattered = [m for m in ranked if m.paper.id == "2601.00003"]
    assert not scattered or scattered[0].score < 0.35  # scattered words are not sent


def test_real_day_world_models() -> None:
    chosen = match(DAY, Profile(topics=("world models",)))
    ids = [m.paper.id for m in chosen]
    assert {"2608.13049", "2608.13489", "2608.13552"} <= set(ids[:4])
    assert all(m.score >= 0.35 and m.why for m in chosen)


def test_nothing_relevant_means_nothing_selected() -> None:
    assert match(DAY, Profile(topics=("protein folding",))) == []
    assert match(DAY, Profile(topics=("the of and",))) == []


def test_followed_author_matches_accents_and_initials() -> None:
    p = paper("Something else entirely", authors=("Jiří Matas", "Ann Smith"))
    for followed in ("Jiri Matas", "J. Matas", "jiří matas", "Matas, Jiří"):
        [m] = match([p], Profile(authors=(followed,)))
        assert m.why.startswith("By Jiří Matas") and m.score >= 0.9
    assert match([p], Profile(authors=("Karel Matas",))) == []
    assert name_key("Matas, Jiří") == name_key("Jiri Matas")


def test_two_full_first_names_must_agree() -> None:
    p = paper("Something", authors=("Shuo Yan",))
    assert match([p], Profile(authors=("Shuicheng Yan",))) == []
    assert match([p], Profile(authors=("S. Yan",)))  # an initial cannot tell them apart
    assert match([paper("x", authors=("Xiao-Yang Liu",))], Profile(authors=("Xiaoyang Liu",)))


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
    profile = Profile(topics=("world models",), exclude=("medical imaging",))
    ranked = rank([about, twice, once], profile)
    assert [m.paper.id for m in ranked] == ["2601.00003"]
    assert ranked[0].score >= 0.35 and "excluded “medical imaging”" in ranked[0].why
    without = rank([once], Profile(topics=("world models",)))[0]
    assert ranked[0].score < without.score


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
    corpus = Corpus.of(DAY)
    assert rank(DAY, profile, corpus=corpus) == rank(DAY, profile, corpus=corpus)


def test_keywords_and_summary_count_as_body_text() -> None:
    p = paper("Untitled", "nothing here", keywords=("KV cache",), summary="")
    [m] = match([p], Profile(topics=("KV cache",)))
    assert m.score >= 0.5 and m.why == "Keywords mention “KV cache”"
    q = replace(p, keywords=(), summary="It compresses the KV cache.")
    assert match([q], Profile(topics=("kv cache",)))[0].score >= 0.5


# --- what the corpus teaches: acronyms and their long forms, learned, not listed by hand

DEFINES = paper(
    "Robots that listen",
    "We train a vision-language-action (VLA) model and compare 3D Gaussian Splatting (3DGS) "
    "with a Mixture-of-Experts (MoE) and retrieval-augmented generation (RAG).",
    id="2601.00009",
)


def test_acronyms_are_learned_from_the_papers_that_define_them() -> None:
    assert definitions(DEFINES.abstract) == [
        ("vla", ("vision", "languag", "action")),
        ("3dgs", ("3d", "gaussian", "splat")),
        ("moe", ("mixtur", "", "expert")),
        ("rag", ("retriev", "augment", "generat")),
    ]
    assert definitions("offloads the key-value cache (KV cache) to CPU") == [
        ("kv", ("key", "valu"))
    ]
    assert definitions("as reported (Table 2) and (GPT-4o)") == []


def test_an_acronym_finds_its_long_form_and_back() -> None:
    spelled = paper("A Vision-Language-Action Model for Folding", "Cloth.", id="2601.00001")
    short = paper("Faster 3DGS", "Rendering.", id="2601.00002")
    corpus = Corpus.of([DEFINES, spelled, short])
    [m] = match([spelled], Profile(topics=("VLA",)), corpus=corpus)
    assert m.why == "Title matches “VLA” as “Vision-Language-Action”"
    [m] = match([short], Profile(topics=("3D Gaussian splatting",)), corpus=corpus)
    assert m.why == "Title matches “3D Gaussian splatting” as “3DGS”"
    # A subscriber's lower-case "rag" is RAG: papers write it in capitals.
    rag = paper("Retrieval-Augmented Generation for Law", "Cases.", id="2601.00003")
    assert match([rag], Profile(topics=("rag",)), corpus=Corpus.of([DEFINES, rag]))
    # Without a paper defining it, "VLA" is just three letters.
    assert match([spelled], Profile(topics=("VLA",)), corpus=Corpus.of([spelled])) == []


def test_partial_matches_count_acronyms_and_long_forms_as_the_words() -> None:
    """A paper that says "RL" and "large language models" has the words of "reinforcement
    learning for LLM reasoning" as much as one that spells them the topic's way."""
    defines = paper(
        "Definitions",
        "Reinforcement learning (RL) for large language models (LLMs).",
        id="2601.00009",
    )
    spelled = paper(
        "Better policies",
        "We apply reinforcement learning to an LLM and improve its reasoning on puzzles.",
        id="2601.00001",
    )
    own_words = paper(
        "Better policies",
        "We apply RL to a large language model and improve its reasoning on puzzles.",
        id="2601.00002",
    )
    topic = "reinforcement learning for LLM reasoning"
    corpus = Corpus.of([defines, spelled, own_words])
    coverage = FEATURES.index("abstract_coverage")
    readings = [
        evidence(corpus.doc(p), compile_topic(topic, corpus), corpus).features
        for p in (spelled, own_words)
    ]
    assert readings[0][coverage] == readings[1][coverage] == 0.5  # each word once: half
    [m] = rank([own_words], Profile(topics=(topic,)), corpus=corpus)
    assert "“RL”" in m.why and "“large language model”" in m.why
    # Without a paper defining them, "RL" is two letters and "LLM" is not spelled out.
    alone = Corpus.of([own_words])
    reading = evidence(alone.doc(own_words), compile_topic(topic, alone), alone).features
    assert reading[coverage] < readings[1][coverage]


def test_a_topic_read_as_one_word_needs_more_than_one_mention_of_it() -> None:
    """A topic of "tool use" reads as "tool" ("use" says nothing): a title about tools is
    the topic, an abstract saying "tools" once in passing is not (recorded days of the
    judged collection, where it sent such papers to the "LLM agents, tool use" subscriber)."""
    days = RELEVANCE / "data"
    papers = [*jsonfile.load(days / "2024-06-26.json"), *jsonfile.load(days / "2025-02-19.json")]
    corpus = Corpus.of(papers)
    sent = {m.paper.id for m in match(papers, Profile(topics=("tool use",)), corpus=corpus)}
    assert sent == {"2502.11271"}  # OctoTools: ... with Extensible Tools ...
    in_passing = {p.id: p for p in papers}["2406.16678"]  # Segment Any Text
    assert "tools" in in_passing.abstract
    # A topic written as the one word means it: a mention is the topic.
    [m] = match([in_passing], Profile(topics=("tools",)), corpus=corpus)
    assert m.score >= 0.6


def test_a_word_papers_mostly_write_inside_a_compound_is_not_read_there() -> None:
    """Most papers with "world" have it only in "real-world": a paper about real-world
    conversations is not about "world models", as it was (0.57, sent). A topic naming the
    compound's other part still reads it."""
    papers = [p for day in sorted((RELEVANCE / "data").glob("*.json")) for p in jsonfile.load(day)]
    corpus = Corpus.of(papers)
    assert "realworld" in corpus.bound("world")
    assert "multiag" not in corpus.bound("agent")  # one use of "agent" among others
    by_id = {p.id: p for p in papers}
    real_world = by_id["2606.15641"]  # "... In-Context Learning for Real-World B2B ..."
    about = by_id["2606.18375"]  # "PAIWorld: A 3D-Consistent World Foundation Model ..."
    world_models = Profile(topics=("world models",))
    sent = match([real_world, about], world_models, corpus=corpus)
    assert [m.paper.id for m in sent] == [about.id]
    # it had no other word of the topic: now nothing of it is read at all
    assert rank([real_world], replace(world_models, min_score=0), corpus=corpus) == []
    [m] = match([real_world], Profile(topics=("real-world",)), corpus=corpus)
    assert m.why == "Title matches “real-world”"


def test_a_paper_defining_the_acronym_otherwise_is_not_taken_for_it() -> None:
    asr = "automatic speech recognition (ASR) systems"
    attack = paper(
        "Jailbreaks", "The attack success rate (ASR) is 90%. ASR rises.", id="2601.00002"
    )
    corpus = Corpus.of([paper("x", asr, id="2601.00001"), attack])
    assert match([attack], Profile(topics=("automatic speech recognition",)), corpus=corpus) == []


def test_phrases_keep_their_stop_words_and_skip_boilerplate() -> None:
    videos = paper("Depth for Videos with Diffusion Priors", "Depth.", id="2601.00001")
    assert not match([videos], Profile(topics=("video diffusion",)))
    rewards = paper("Learning from Verifiable Rewards", "RL.", id="2601.00002")
    assert match([rewards], Profile(topics=("learning with verifiable rewards",)))
    text = "We segment cells. Code is available at https://github.com/x/y."
    assert subject_text(text) == "We segment cells."
    code = paper("Cell segmentation", text, id="2601.00003")
    assert not match([code], Profile(topics=("code generation",)))


def test_close_word_forms_from_the_corpus() -> None:
    molecules = paper("Generating molecules", "A generative model of molecules.", id="2601.00001")
    other = paper("Molecular generation", "Molecular graphs.", id="2601.00002")
    corpus = Corpus.of([molecules, other])
    ranked = rank([molecules], Profile(topics=("molecular generation",)), corpus=corpus)
    assert ranked and ranked[0].score >= 0.35


def test_a_passing_partial_match_says_which_words_met() -> None:
    p = paper(
        "Safety alignment for vision-language models",
        "Unsafe outputs of VLMs under attack; safety guard models. Safety benchmarks.",
    )
    # "LLM" is a word most stored papers have: "safety" carries the phrase
    [m] = rank([p], Profile(topics=("LLM safety",)), corpus=Corpus.of([*DAY, p]))
    assert "“Safety”" in m.why and "“LLM safety”" in m.why


def test_reading_only_papers_that_can_score_changes_nothing() -> None:
    # rank() reads only the papers holding a word of a topic, by a followed author or in a
    # category asked for (the send path's speed). Copies of the papers that differ from the
    # corpus's (here in their source) are always read in full: both must agree to the digit.
    papers = [p for f in sorted(HF_DAYS.glob("*.json")) for p in jsonfile.load(f)]
    # Daily Papers carry no arXiv categories; give them some, as arXiv feeds do.
    papers = [
        replace(p, categories=(("cs.CL",), ("cs.CV", "cs.LG"))[i % 2]) for i, p in enumerate(papers)
    ]
    copies = [replace(p, source=p.source + "-copy") for p in papers]
    corpus = Corpus.of(papers)
    words = sorted({k for p in papers for k in p.keywords})
    authors = sorted({a for p in papers for a in p.authors})
    profiles = [Profile((w,)) for w in words[::7]] + [
        Profile(("world models", "VLA")),
        Profile(("diffusion language models",), exclude=("benchmark",)),
        Profile(("RAG", "KV cache"), authors=tuple(authors[::40])),
        Profile((), authors=tuple(authors[5::25])),
        Profile(("reinforcement learning",), categories=("cs.cl",)),
        Profile((), categories=("cs.LG",)),
    ]
    compared = 0
    for profile in profiles:
        fast = rank(papers, profile, corpus=corpus)
        full = rank(copies, profile, corpus=corpus)
        assert [(m.paper.id, m.score, m.why) for m in fast] == [
            (m.paper.id, m.score, m.why) for m in full
        ], profile
        compared += len(full)
    assert compared > 100  # the profiles do match papers
    # A send remembers readings only for papers holding a word of the topic (the others
    # read nothing whatever the topic): a third of what it remembered before, at a million.
    remembered = [k for k in corpus.memo if isinstance(k, tuple) and k[0] == "evidence"]
    assert remembered
    assert all(k[2] in holders(compile_topic(k[1], corpus), corpus) for k in remembered)


def test_the_c_stemmer_stems_as_the_pure_python_one() -> None:
    """snowballstemmer hands its work to PyStemmer's C (a dependency, ~18 times faster) when
    it is installed; a digest must not change with that. Every word of the recorded days."""
    import re

    import Stemmer
    from snowballstemmer.english_stemmer import EnglishStemmer

    from digestd.matching import text

    assert isinstance(text._STEMMER, Stemmer.Stemmer)
    words: set[str] = set()
    for day in sorted(HF_DAYS.glob("*.json")):
        words.update(w.lower() for w in re.findall(r"[^\W_]+", day.read_text(encoding="utf-8")))
    assert len(words) > 5000
    pure = EnglishStemmer()
    differ = [w for w in sorted(words) if text._STEMMER.stemWord(w) != pure.stemWord(w)]
    assert differ == []


def test_a_compound_is_one_mention_and_the_why_line_the_same_in_every_process() -> None:
    # "Skill-based" holds the topic's stem "skill" and the compound stem "skillbas", a
    # variant of it: one mention, quoted as the topic's word, whatever a set's order is.
    papers = [
        paper("Skill-Native agents", "Skill-based learning. Agents learn skills.", id="2601.00001"),
        paper("Skill-based planning", "Planning with tools.", id="2601.00002"),
    ]
    corpus = Corpus.of(papers)
    [(form, _)] = compile_topic("skills", corpus).forms
    assert {"skill", "skillbas", "skillnat"} <= form[0]  # compounds are variants of the word
    abstract = corpus.docs["2601.00001"].abstract
    assert [abstract.quote(s) for s in abstract.phrases(form)] == ["Skill", "skills"]
    ranked = rank(papers, Profile(topics=("skills",), min_score=0), corpus=corpus)
    assert [m.why for m in ranked] == ["Title matches “skills” as “Skill”"] * 2

    script = (
        "from tests.test_matcher import paper; from digestd.matcher import Profile, rank\n"
        "ps = [paper('Skill-Native agents', 'Skill-based learning. Agents learn skills.',"
        " id='2601.00001'), paper('SKILL-KD: skill distillation', 'SKILL-KD and Skill-based"
        " skills.', id='2601.00002')]\n"
        "print([(m.paper.id, m.score, m.why) for m in rank(ps, Profile(topics=('skills',),"
        " min_score=0))])\n"
    )
    outputs = set()
    for seed in range(6):  # set iteration order follows the hash seed
        env = {**os.environ, "PYTHONHASHSEED": str(seed)}
        run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                             text=True, check=True, cwd=Path(__file__).parent.parent)  # fmt: skip
        outputs.add(run.stdout)
    assert len(outputs) == 1


@pytest.mark.parametrize("min_score", [0.05, 0.2, 0.35, 0.5, 0.8])
def test_matching_for_a_send_picks_what_ranking_then_selecting_picks(min_score: float) -> None:
    # A send matches with `match`, which passes over papers whose best topic is too weak to
    # reach the minimum score whatever else they meet; previews rank everything. Both must
    # pick the same papers, worded the same, whatever the profile holds.
    papers = categorised(p for day in sorted(HF_DAYS.glob("*.json")) for p in jsonfile.load(day))
    check_send_picks_as_ranked(papers, Corpus.of(papers), min_score, random.Random(20261128), 150)


def categorised(papers: Iterable[Paper]) -> list[Paper]:
    """Daily Papers carry no arXiv categories; some, as arXiv feeds give them."""
    return [
        replace(p, categories=("cs.CL",) if i % 3 == 0 else ("cs.CV", "cs.LG"))
        for i, p in enumerate(papers)
    ]


def check_send_picks_as_ranked(
    papers: list[Paper], corpus: Corpus, min_score: float, rng: Random, n: int
) -> None:
    """`match` (a send) picks what `select(rank(...))` (a preview) picks, for ``n`` random
    profiles of the papers' keywords, exclusions, authors and categories."""
    keywords = sorted({k for p in papers for k in p.keywords})
    for i in range(n):
        profile = Profile(
            topics=tuple(rng.sample(keywords, rng.randint(1, 4))),
            exclude=tuple(rng.sample(keywords, 1)) if i % 5 == 0 else (),
            authors=(rng.choice(rng.choice(papers).authors),) if i % 4 == 0 else (),
            categories=("cs.CL",) if i % 3 == 0 else (),
            min_score=min_score,
        )
        ranked = rank(papers, profile, corpus=corpus)
        assert match(papers, profile, corpus=corpus) == select(ranked, profile), profile
