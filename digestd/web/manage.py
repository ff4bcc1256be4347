"""The manage page behind the signed link in every digest: preferences, preview, pause and
resume, unsubscribe, "delete my data", and the feedback votes with undo."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import RedirectResponse, Response

from digestd import pipeline
from digestd.errors import InvalidInput
from digestd.models import Status, Subscriber
from digestd.paper import normalise_arxiv_id
from digestd.subscription import schedule_label
from digestd.web import forms
from digestd.web.context import Web, WebDep, rate_limit

router = APIRouter(prefix="/manage/{token}", dependencies=[Depends(rate_limit)],
                   include_in_schema=False)  # fmt: skip

#: ?done= keys → the note shown at the top; nothing from the URL is shown as such
NOTES = {
    "confirmed": "Your subscription is confirmed. A first digest follows shortly when recent "
    "papers match; after that, digests come at your send time.",
    "saved": "Your preferences are saved. The next digest follows them.",
    "paused": "Paused: no digests until you resume.",
    "resumed": "Resumed: digests come again from the next send time.",
    "unsubscribed": "You are unsubscribed and will receive no more digests.",
    "vote-removed": "Vote removed.",
}


def _holder(web: Web, token: str) -> Subscriber:
    return web.subscriptions.holder(token, "manage")[0]


def _page(
    web: Web,
    token: str,
    sub: Subscriber,
    *,
    values: Mapping[str, Any] | None = None,
    status: int = 200,
    error: str = "",
    note: str = "",
    delete_error: str = "",
) -> Response:
    matches, considered = pipeline.preview_profile(web.services, sub)
    return web.views.page(
        "manage",
        status=status,
        title="Your subscription",
        token=token,
        sub=sub,
        values=values if values is not None else forms.values(web.subscriptions.settings(sub)),
        error=error,
        note=NOTES.get(note, ""),
        delete_error=delete_error,
        matches=matches,
        considered=considered,
        votes=web.subscriptions.votes(sub),
        schedule=schedule_label(sub),
        timezones=forms.timezones(),
        days=forms.DAYS,
    )


def _back(token: str, done: str, anchor: str = "") -> Response:
    return RedirectResponse(f"/manage/{token}?done={done}{anchor}", status_code=303)


@router.get("")
async def manage(token: str, request: Request, web: WebDep) -> Response:
    sub = _holder(web, token)
    return _page(web, token, sub, note=request.query_params.get("done", ""))


@router.post("")
async def save(token: str, request: Request, web: WebDep) -> Response:
    sub = _holder(web, token)
    form = await request.form()
    try:
        fields = forms.preferences(form, max_papers=sub.max_papers, min_score=sub.min_score)
        web.subscriptions.update(sub, fields)
    except InvalidInput as exc:
        # Shown again as typed; fields the request left out keep their stored values.
        values = {**forms.values(web.subscriptions.settings(sub)), **forms.submitted(form)}
        return _page(web, token, sub, values=values, status=400, error=str(exc))
    return _back(token, "saved")


@router.post("/pause")
async def pause(token: str, web: WebDep) -> Response:
    web.subscriptions.set_status(_holder(web, token), Status.PAUSED, via="manage page")
    return _back(token, "paused", "#status")


@router.post("/resume")
async def resume(token: str, web: WebDep) -> Response:
    web.subscriptions.set_status(_holder(web, token), Status.ACTIVE, via="manage page")
    return _back(token, "resumed", "#status")


@router.post("/unsubscribe")
async def unsubscribe(token: str, web: WebDep) -> Response:
    web.subscriptions.set_status(_holder(web, token), Status.UNSUBSCRIBED, via="manage page")
    return _back(token, "unsubscribed", "#status")


@router.post("/delete")
async def delete(token: str, request: Request, web: WebDep) -> Response:
    sub = _holder(web, token)
    form = await request.form()
    if form.get("confirm") != "yes":
        return _page(web, token, sub, status=400,
                     delete_error="Tick the box to confirm that everything should go.")  # fmt: skip
    web.subscriptions.delete(sub, via="manage page")
    return web.views.page("deleted", title="Your data is deleted")


@router.post("/votes/undo")
async def undo_vote(token: str, request: Request, web: WebDep) -> Response:
    sub = _holder(web, token)
    paper = (await request.form()).get("paper")
    try:
        paper_id = normalise_arxiv_id(paper if isinstance(paper, str) else "")
    except ValueError:
        raise InvalidInput("not a paper id") from None
    web.subscriptions.undo_vote(sub, paper_id)
    return _back(token, "vote-removed", "#feedback")
