"""Public pages: subscribe, check your inbox, confirm, unsubscribe (RFC 8058 too), feedback.

GET never changes anything (mail scanners open every link): each link opens a page whose
button POSTs, and the POST carries the link's token as its only credential.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from starlette.responses import RedirectResponse, Response

from digestd.errors import InvalidInput
from digestd.models import Status
from digestd.subscribers import normalise_email
from digestd.subscription import validated
from digestd.web import forms
from digestd.web.context import Web, WebDep, rate_limit
from digestd.web.security import address_key

router = APIRouter(dependencies=[Depends(rate_limit)], include_in_schema=False)
static = APIRouter(include_in_schema=False)


@static.get("/static/site.css")
async def stylesheet(web: WebDep) -> Response:
    return web.views.stylesheet()


@static.get("/static/favicon.svg")
async def favicon(web: WebDep) -> Response:
    return web.views.favicon()


def _form_page(web: Web, values: dict[str, object], *, status: int = 200,
               error: str = "") -> Response:  # fmt: skip
    return web.views.page(
        "home",
        status=status,
        values=values,
        error=error,
        timezones=forms.timezones(),
        days=forms.DAYS,
    )


def _defaults(web: Web) -> dict[str, object]:
    d = web.services.config.digest
    return forms.values(
        {"email": "", "send_time": "07:00", "timezone": "UTC", "frequency": "daily",
         "weekly_day": 0, "max_papers": d.max_papers, "min_score": d.min_score,
         "empty_note": False}
    )  # fmt: skip


@router.get("/")
async def home(web: WebDep) -> Response:
    return _form_page(web, _defaults(web))


@router.post("/subscribe")
async def subscribe(request: Request, web: WebDep) -> Response:
    """Always "check your inbox" for a valid request, known address or not (no enumeration)."""
    web.limits.subscribe_ip.check(web.client(request), "subscribe requests from your network")
    form = await request.form()
    d = web.services.config.digest
    try:
        email = form.get("email")
        if not isinstance(email, str):
            raise InvalidInput("give your email address")
        fields = forms.preferences(form, max_papers=d.max_papers, min_score=d.min_score)
        address = normalise_email(email)
        data = validated(address, fields)
    except InvalidInput as exc:
        return _form_page(web, {**_defaults(web), **forms.submitted(form)}, status=400,
                          error=str(exc))  # fmt: skip
    web.limits.subscribe_address.check(address_key(address), "requests for this address")
    await web.subscriptions.request(data)
    # Post/redirect/get: reloading the answer does not submit the form again.
    return RedirectResponse("/check-your-inbox", status_code=303)


@router.get("/check-your-inbox")
async def inbox(web: WebDep) -> Response:
    days = web.services.config.web.confirm_days
    return web.views.page("inbox", title="Check your inbox", confirm_days=days)


@router.get("/confirm/{token}")
async def confirm_page(token: str, web: WebDep) -> Response:
    sub, _ = web.subscriptions.holder(token, "confirm")
    done = sub.status in (Status.ACTIVE, Status.PAUSED)
    manage = web.subscriptions.links(sub).manage if done else ""
    return web.views.page("confirm", title="Confirm your subscription", token=token,
                          done=done, manage_url=manage)  # fmt: skip


@router.post("/confirm/{token}")
async def confirm(token: str, web: WebDep) -> Response:
    sub, _ = web.subscriptions.confirm(token)
    path = web.subscriptions.links(sub).manage.removeprefix(web.services.config.web.base_url)
    return RedirectResponse(f"{path}?done=confirmed", status_code=303)


@router.get("/unsubscribe/{token}")
async def unsubscribe_page(token: str, web: WebDep) -> Response:
    sub, _ = web.subscriptions.holder(token, "unsubscribe")
    state = "done" if sub.status == Status.UNSUBSCRIBED else "ask"
    return web.views.page("unsubscribe", title="Unsubscribe", token=token, state=state)


@router.post("/unsubscribe/{token}")
async def unsubscribe(request: Request, token: str, web: WebDep) -> Response:
    """The page's button and RFC 8058 one-click (body ``List-Unsubscribe=One-Click``, no
    cookies) alike: the token is the credential; answered 200, never with a redirect."""
    await request.form()  # read, so an oversized body is refused like everywhere else
    sub, _ = web.subscriptions.holder(token, "unsubscribe")
    web.subscriptions.set_status(sub, Status.UNSUBSCRIBED, via="link")
    return web.views.page("unsubscribe", title="You are unsubscribed", token=token, state="done")


@router.post("/unsubscribe/{token}/undo")
async def resubscribe(token: str, web: WebDep) -> Response:
    sub, _ = web.subscriptions.holder(token, "unsubscribe")
    sub = web.subscriptions.set_status(sub, Status.ACTIVE, via="link")
    manage = web.subscriptions.links(sub).manage
    return web.views.page("unsubscribe", title="Welcome back", token=token, state="back",
                          manage_url=manage)  # fmt: skip


@router.get("/feedback/{token}")
async def feedback_page(token: str, web: WebDep) -> Response:
    sub, paper_id, vote, paper = web.subscriptions.feedback_target(token)
    return web.views.page("feedback", title="More or less like this", token=token,
                          paper_id=paper_id, paper=paper, vote=vote, done=False,
                          manage_url=web.subscriptions.links(sub).manage)  # fmt: skip


@router.post("/feedback/{token}")
async def feedback(token: str, web: WebDep) -> Response:
    web.subscriptions.vote(token)
    sub, paper_id, vote, paper = web.subscriptions.feedback_target(token)
    return web.views.page("feedback", title="Thanks, noted", token=token, paper_id=paper_id,
                          paper=paper, vote=vote, done=True,
                          manage_url=web.subscriptions.links(sub).manage)  # fmt: skip
