"""Feedback as a learned component: votes from digest links move the next digest's ranking."""

from __future__ import annotations

import shutil
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from digestd import feedback, pipeline
from digestd.matcher import Profile, match, rank
from digestd.matching.similar import PULL, PUSH
from digestd.models import Status
from digestd.paper import Paper
from digestd.sources import jsonfile
from digestd.subscribers import make_input
from digestd.tokens import TokenError
from tests.conftest import HF_DAYS
from tests.webtools import DAY1, Site, links, site, text_of

__all__ = ["site"]
DAY1_PAPERS = {p.id: p for p in jsonfile.load(HF_DAYS / "2026-08-14.json")}
DAY2_PAPERS = jsonfile.load(HF_DAYS / "2026-08-20.json")
SPATIAL_MEMORY = "2608.12743"  # "Spatial Memory Agent: Experience-Grounded Procedure Memory…"
ZETTA = "2608.16590"  # "Zetta ζ: An Efficient Closed-Loop Embodied Harness…", 6 days later
TOPICS = ("world models", "agents")


def ids(matches: list[object]) -> list[str]:
    return [m.paper.id for m in matches]  # type: ignore[attr-defined]


def test_a_liked_paper_pulls_similar_ones_up_and_in() -> None:
    # A subscriber who lowered their minimum score to 0.2: Zetta, an embodied agent harness,
    # barely touches "LLM agents" by its words, but is like the agent paper they liked.
    base = Profile(topics=("LLM agents",), min_score=0.2)
    liked = replace(base, liked=(DAY1_PAPERS[SPATIAL_MEMORY],))
    before = {m.paper.id: m for m in rank(DAY2_PAPERS, base)}
    assert ZETTA not in ids(match(DAY2_PAPERS, base))
    chosen = match(DAY2_PAPERS, liked)
    [zetta] = [m for m in chosen if m.paper.id == ZETTA]
    liked_why = "Similar to “Spatial Memory Agent: Experience-Grounded Procedure Memory…”"
    assert zetta.why == f"{liked_why}, which you liked"
    # pulled up by a share of PULL, by how close (a cosine of 0.17 of 0.06..0.30)
    assert before[ZETTA].score < 0.1
    assert before[ZETTA].score + 0.15 < zetta.score < before[ZETTA].score + PULL


def test_a_disliked_paper_pushes_similar_ones_down() -> None:
    base = rank(DAY2_PAPERS, Profile(topics=TOPICS))
    disliked = rank(DAY2_PAPERS, Profile(topics=TOPICS, disliked=(DAY1_PAPERS[SPATIAL_MEMORY],)))
    before = {m.paper.id: m for m in base}
    after = {m.paper.id: m for m in disliked}
    # down by a share of PUSH, by how close (a cosine of 0.17 of 0.06..0.30)
    assert after[ZETTA].score < before[ZETTA].score * (1 - PUSH * 0.4)
    assert ids(disliked).index(ZETTA) >= ids(base).index(ZETTA)  # never up (may already be last)
    assert "lowered: similar to “Spatial Memory Agent" in after[ZETTA].why
    # Papers unlike the disliked one keep their scores.
    assert after["2608.18746"].score == before["2608.18746"].score


def test_no_votes_no_change_and_no_paper_is_similar_to_itself() -> None:
    papers = list(DAY1_PAPERS.values())
    assert rank(papers, Profile(topics=TOPICS, liked=(), disliked=())) == rank(
        papers, Profile(topics=TOPICS)
    )
    me = DAY1_PAPERS[SPATIAL_MEMORY]
    [m] = [m for m in rank(papers, Profile(topics=TOPICS, liked=(me,))) if m.paper.id == me.id]
    assert "you liked" not in m.why


def test_feedback_tokens_bind_paper_and_vote() -> None:
    assert feedback.parse_extra(feedback.token_extra("2608.12743", -1)) == ("2608.12743", -1)
    assert feedback.parse_extra("hep-th/9901001 more") == ("hep-th/9901001", 1)
    for bad in ("", "2608.12743", "2608.12743 lots", "x more", "2608.12743v2 more"):
        with pytest.raises(TokenError):
            feedback.parse_extra(bad)


async def test_a_vote_from_the_email_changes_the_next_digest(site: Site, feed_dir: Path) -> None:
    store = site.services.store
    for name in ("ada", "bo"):  # same topics; only Ada will vote
        store.add_subscriber(make_input(f"{name}@example.org", topics=TOPICS), status=Status.ACTIVE)
    t1 = datetime.now(UTC)
    await pipeline.fetch(site.services, DAY1, now=t1)
    assert (await pipeline.send_period(site.services, DAY1, now=t1)).sent == 2
    ada_digest = next(m.parsed for m in site.messages if m.rcpt_tos == ["ada@example.org"])
    text = text_of(ada_digest)
    assert "Spatial Memory Agent" in text and "More like this:" in text

    # Each paper has a pair of links; find the pair of the Spatial Memory paper.
    votes = links(ada_digest, "feedback")
    target = {}
    for path in votes:
        sub, paper_id, vote, paper = site.app.state.web.subscriptions.feedback_target(
            path.split("/")[2]
        )
        target[(paper_id, vote)] = path
    more = target[(SPATIAL_MEMORY, 1)]
    page = await site.client.get(more)  # a page first; nothing recorded yet
    assert "More like this?" in page.text and "Spatial Memory Agent" in page.text
    assert store.votes(sub.id or 0) == []
    done = await site.client.post(more)
    assert done.status_code == 200 and "rank higher" in done.text
    [(vote_row, paper)] = store.votes(sub.id or 0)
    assert (vote_row.paper_id, vote_row.vote) == (SPATIAL_MEMORY, 1)
    assert isinstance(paper, Paper)

    # The next day's digests: Ada's puts the paper like the one she liked first.
    shutil.copy(HF_DAYS / "2026-08-20.json", feed_dir)
    t2 = t1 + timedelta(hours=1)
    await pipeline.fetch(site.services, DAY1 + timedelta(days=6), now=t2)
    await pipeline.send_period(site.services, DAY1 + timedelta(days=6), now=t2)
    second = {m.rcpt_tos[0]: text_of(m.parsed) for m in site.messages[2:]}
    ada, bo = second["ada@example.org"], second["bo@example.org"]
    zetta = "Zetta ζ: An Efficient Closed-Loop Embodied Harness"
    assert ada.index(zetta) < ada.index("Co-RL")
    assert bo.index(zetta) > bo.index("Co-RL")
    assert "which you liked" in ada and "which you liked" not in bo

    # The manage page lists the vote; undo takes it back.
    manage = links(ada_digest, "manage")[0]
    page = await site.client.get(manage)
    section = page.text.split('id="feedback"')[1].split("</section>")[0]
    assert "Spatial Memory Agent" in section and 'name="paper" value="2608.12743"' in section
    r = await site.client.post(manage + "/votes/undo", data={"paper": SPATIAL_MEMORY})
    assert r.status_code == 303 and store.votes(sub.id or 0) == []
