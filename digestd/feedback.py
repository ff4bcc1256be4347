"""Feedback from the email: "more / less like this" links, and votes turned into a profile."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from digestd.matcher import Match
from digestd.paper import Paper, normalise_arxiv_id
from digestd.store import Store
from digestd.tokens import Signer, TokenError

#: how a vote is named in links and the API, and stored (Feedback.vote)
VOTES: Mapping[str, int] = {"more": 1, "less": -1}
#: the newest votes of each kind the matcher compares papers with; older ones fade out, so an
#: old taste does not weigh forever and ranking stays cheap
MATCHER_VOTES = 20


def vote_name(vote: int) -> str:
    return "more" if vote > 0 else "less"


def token_extra(paper_id: str, vote: int) -> str:
    """What a feedback link binds besides the subscriber: the paper and the vote."""
    return f"{paper_id} {vote_name(vote)}"


def parse_extra(extra: str) -> tuple[str, int]:
    """(paper id, vote) from a feedback token; TokenError when it holds anything else."""
    paper_id, _, name = extra.partition(" ")
    try:
        if normalise_arxiv_id(paper_id) != paper_id:
            raise ValueError(paper_id)
    except ValueError:
        raise TokenError("this link is not valid") from None
    if name not in VOTES:
        raise TokenError("this link is not valid")
    return paper_id, VOTES[name]


def urls(
    signer: Signer, base_url: str, subscriber_id: int, version: int, matches: Iterable[Match]
) -> dict[str, tuple[str, str]]:
    """paper id → (more-like-this URL, less-like-this URL) for every paper of a digest."""
    out = {}
    for m in matches:
        more, less = (
            signer.make("feedback", subscriber_id, version, token_extra(m.paper.id, vote))
            for vote in (1, -1)
        )
        out[m.paper.id] = (f"{base_url}/feedback/{more}", f"{base_url}/feedback/{less}")
    return out


def voted_papers(store: Store, subscriber_id: int) -> tuple[tuple[Paper, ...], tuple[Paper, ...]]:
    """(liked, disliked) papers for the matcher, newest first; votes on papers no longer
    stored are skipped (there is nothing left to compare with)."""
    return split_votes((paper, vote.vote) for vote, paper in store.votes(subscriber_id))


def split_votes(
    votes: Iterable[tuple[Paper | None, int]],
) -> tuple[tuple[Paper, ...], tuple[Paper, ...]]:
    """(liked, disliked) from (paper, vote) newest first: the MATCHER_VOTES newest of each."""
    liked: list[Paper] = []
    disliked: list[Paper] = []
    for paper, vote in votes:
        if paper is None:
            continue
        bucket = liked if vote > 0 else disliked
        if len(bucket) < MATCHER_VOTES:
            bucket.append(paper)
    return tuple(liked), tuple(disliked)
