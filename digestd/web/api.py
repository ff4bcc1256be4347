"""The JSON API under /api/v1: the pages' operations and rules, authenticated by the tokens of
our links sent as ``Authorization: Bearer <token>``; errors as ``{"error", "message"}``."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from digestd import feedback, pipeline
from digestd.models import Status, Subscriber
from digestd.paper import normalise_arxiv_id
from digestd.subscribers import normalise_email
from digestd.subscription import schedule_label, validated
from digestd.tokens import TokenError
from digestd.web.context import Web, WebDep, rate_limit
from digestd.web.security import address_key


class Error(BaseModel):
    error: str = Field(description="machine-readable code, e.g. invalid_link, rate_limited")
    message: str = Field(description="what went wrong, for a person")


_ERRORS: dict[int | str, dict[str, Any]] = {
    s: {"model": Error} for s in (400, 401, 403, 413, 422, 429, 503)
}
router = APIRouter(prefix="/api/v1", tags=["subscription"], responses=_ERRORS,
                   dependencies=[Depends(rate_limit)])  # fmt: skip
_bearer = HTTPBearer(
    auto_error=False,
    description="The token of a link from one of our emails (the part after /confirm/, "
    "/manage/, /unsubscribe/ or /feedback/); each token works only for its own purpose.",
)


class Preferences(BaseModel):
    model_config = ConfigDict(extra="forbid")

    topics: list[str] = Field(default=[], description="free phrases, at most 20")
    exclude: list[str] = Field(default=[], description="phrases to leave out")
    authors: list[str] = Field(default=[], description="authors to follow")
    categories: list[str] = Field(default=[], description="arXiv categories such as cs.LG")
    send_time: str = Field(default="07:00", description="local time, HH:MM")
    timezone: str = Field(default="UTC", description="IANA name such as Europe/Berlin")
    frequency: Literal["daily", "weekdays", "weekly"] = "daily"
    weekly_day: int | str = Field(default=0, description="weekly: 0 = Monday, or a day name")
    max_papers: int | None = Field(default=None, description="1 to 30; default from config")
    min_score: float | None = Field(default=None, description="0 to 1; default from config")
    empty_note: bool = Field(default=False, description="a short note on days with no match")


class SubscribeRequest(Preferences):
    email: str


class PreferencesPatch(BaseModel):
    """Only the fields given change; the others keep their values."""

    model_config = ConfigDict(extra="forbid")

    topics: list[str] | None = None
    exclude: list[str] | None = None
    authors: list[str] | None = None
    categories: list[str] | None = None
    send_time: str | None = None
    timezone: str | None = None
    frequency: Literal["daily", "weekdays", "weekly"] | None = None
    weekly_day: int | str | None = None
    max_papers: int | None = None
    min_score: float | None = None
    empty_note: bool | None = None


class Accepted(BaseModel):
    status: Literal["check-your-inbox"] = "check-your-inbox"
    message: str


class Vote(BaseModel):
    paper_id: str
    vote: Literal["more", "less"]
    title: str | None = None
    created_at: datetime | None = None


class Subscription(BaseModel):
    email: str
    status: str
    schedule: str
    topics: list[str]
    exclude: list[str]
    authors: list[str]
    categories: list[str]
    send_time: str
    timezone: str
    frequency: str
    weekly_day: int
    max_papers: int
    min_score: float
    empty_note: bool
    votes: list[Vote]


class Confirmed(BaseModel):
    status: str
    manage_token: str = Field(description="bearer token for the /subscription endpoints")


class StatusOnly(BaseModel):
    status: str


class PreviewPaper(BaseModel):
    id: str
    title: str
    url: str
    score: float
    why: str


class Preview(BaseModel):
    considered: int = Field(description="recent papers looked at")
    papers: list[PreviewPaper]


def _token(creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> str:
    if creds is None:
        raise HTTPException(401, "send the token of one of our links as "
                            "'Authorization: Bearer <token>'",
                            headers={"WWW-Authenticate": "Bearer"})  # fmt: skip
    return creds.credentials


Token = Annotated[str, Depends(_token)]


def _manager(token: Token, web: WebDep) -> Subscriber:
    return web.subscriptions.holder(token, "manage")[0]


Manager = Annotated[Subscriber, Depends(_manager)]


def _subscription(web: Web, sub: Subscriber) -> Subscription:
    votes = [
        Vote(paper_id=f.paper_id, vote=feedback.vote_name(f.vote),
             title=p.title if p else None, created_at=f.created_at)
        for f, p in web.subscriptions.votes(sub)
    ]  # fmt: skip
    s = web.subscriptions.settings(sub)
    return Subscription(email=sub.email, status=sub.status, schedule=schedule_label(sub),
                        votes=votes, **s)  # fmt: skip


@router.post("/subscribe", status_code=202, response_model=Accepted)
async def subscribe(body: SubscribeRequest, request: Request,
                    web: WebDep) -> Accepted:  # fmt: skip
    """Subscribe with double opt-in. The answer is the same whether the address is new,
    pending or already subscribed (a subscriber gets a "manage" email instead)."""
    web.limits.subscribe_ip.check(web.client(request), "subscribe requests from your network")
    d = web.services.config.digest
    fields = body.model_dump(exclude={"email"})
    fields["max_papers"] = d.max_papers if body.max_papers is None else body.max_papers
    fields["min_score"] = d.min_score if body.min_score is None else body.min_score
    address = normalise_email(body.email)
    data = validated(address, fields)
    web.limits.subscribe_address.check(address_key(address), "requests for this address")
    await web.subscriptions.request(data)
    return Accepted(message="check your inbox: the email there has a link to confirm")


@router.post("/confirm", response_model=Confirmed)
async def confirm(token: Token, web: WebDep) -> Confirmed:
    """Confirm a subscription with the token of the confirmation link."""
    sub, _ = web.subscriptions.confirm(token)
    assert sub.id is not None
    manage = web.services.signer.make("manage", sub.id, sub.token_version)
    return Confirmed(status=sub.status, manage_token=manage)


@router.get("/subscription", response_model=Subscription)
async def read(sub: Manager, web: WebDep) -> Subscription:
    """The subscription of a manage token: status, preferences and feedback votes."""
    return _subscription(web, sub)


@router.patch("/subscription", response_model=Subscription)
async def update(body: PreferencesPatch, sub: Manager,
                 web: WebDep) -> Subscription:  # fmt: skip
    """Change preferences; fields left out keep their values."""
    fields = {**web.subscriptions.settings(sub), **body.model_dump(exclude_unset=True)}
    fields = {k: v for k, v in fields.items() if v is not None}
    return _subscription(web, web.subscriptions.update(sub, fields))


@router.get("/subscription/preview", response_model=Preview)
async def preview(sub: Manager, web: WebDep) -> Preview:
    """Which of the recent papers this profile picks, with the reasons."""
    matches, considered = pipeline.preview_profile(web.services, sub)
    papers = [PreviewPaper(id=m.paper.id, title=m.paper.title, url=m.paper.abs_url,
                           score=m.score, why=m.why) for m in matches]  # fmt: skip
    return Preview(considered=considered, papers=papers)


@router.post("/subscription/pause", response_model=Subscription)
async def pause(sub: Manager, web: WebDep) -> Subscription:
    return _subscription(web, web.subscriptions.set_status(sub, Status.PAUSED, via="api"))


@router.post("/subscription/resume", response_model=Subscription)
async def resume(sub: Manager, web: WebDep) -> Subscription:
    return _subscription(web, web.subscriptions.set_status(sub, Status.ACTIVE, via="api"))


@router.post("/subscription/unsubscribe", response_model=StatusOnly)
async def unsubscribe(token: Token, web: WebDep) -> StatusOnly:
    """Unsubscribe with an unsubscribe or a manage token."""
    try:
        sub, _ = web.subscriptions.holder(token, "unsubscribe")
    except TokenError:
        sub, _ = web.subscriptions.holder(token, "manage")
    sub = web.subscriptions.set_status(sub, Status.UNSUBSCRIBED, via="api")
    return StatusOnly(status=sub.status)


@router.delete("/subscription", response_model=StatusOnly)
async def delete(sub: Manager, web: WebDep) -> StatusOnly:
    """Delete the subscriber and everything about them; only an anonymous count stays."""
    web.subscriptions.delete(sub, via="api")
    return StatusOnly(status="deleted")


@router.post("/feedback", response_model=Vote)
async def vote(token: Token, web: WebDep) -> Vote:
    """Record the vote bound in a feedback link's token ("more" or "less like this")."""
    _, paper_id, value = web.subscriptions.vote(token)
    return Vote(paper_id=paper_id, vote=feedback.vote_name(value))


@router.delete("/subscription/votes/{paper_id:path}", response_model=StatusOnly)
async def undo_vote(paper_id: str, sub: Manager,
                    web: WebDep) -> StatusOnly:  # fmt: skip
    """Take a feedback vote back."""
    try:
        pid = normalise_arxiv_id(paper_id)
    except ValueError:
        raise HTTPException(404, "no vote for this paper") from None
    if not web.subscriptions.undo_vote(sub, pid):
        raise HTTPException(404, "no vote for this paper")
    return StatusOnly(status="removed")
