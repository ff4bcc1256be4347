"""The web front end to end: subscribe → confirmation email → confirm → manage → the next digest
follows the new topics → one-click unsubscribe → no digest; the same answer for every address."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from digestd import pipeline
from digestd.models import Status
from digestd.subscribers import make_input
from tests.smtp_server import Received
from tests.webtools import BASE, DAY1, Site, html_of, link, links, site, text_of

__all__ = ["site"]


def status_of(site: Site, email: str) -> str:
    return site.services.store.subscriber(email).status


async def confirm_via_email(site: Site, msg: Received) -> str:
    """Open the confirmation link, press its button; the manage page's path."""
    path = link(msg.parsed, "confirm")
    page = await site.client.get(path)
    assert page.status_code == 200
    assert f'action="{path}"' in page.text and "Confirm subscription" in page.text
    done = await site.client.post(path)
    assert done.status_code == 303
    location = done.headers["location"]
    assert location.startswith("/manage/") and location.endswith("?done=confirmed")
    return location.split("?")[0]


async def test_the_whole_journey(site: Site) -> None:
    home = await site.client.get("/")
    assert home.status_code == 200
    for field in (
        "email",
        "topics",
        "exclude",
        "authors",
        "categories",
        "send_time",
        "timezone",
        "weekly_day",
        "max_papers",
    ):
        assert f'<label for="{field}">' in home.text and f'id="{field}"' in home.text

    answer = await site.subscribe(
        "Ada@Example.org", topics="protein folding\nsea ice", timezone="Europe/Berlin"
    )
    assert (answer.status_code, answer.headers["location"]) == (303, "/check-your-inbox")
    inbox = await site.client.get("/check-your-inbox")
    assert "Check your inbox" in inbox.text and "within 3 days" in inbox.text

    [msg] = site.messages
    m = msg.parsed
    assert msg.rcpt_tos == ["ada@example.org"] and m["To"] == "ada@example.org"
    assert m["Subject"] == "Confirm your subscription to Paper digest"
    assert m["Auto-Submitted"] == "auto-generated" and m["List-Unsubscribe"] is None
    assert m.get_content_type() == "multipart/alternative"
    assert "Topics: protein folding · sea ice" in text_of(m)
    assert "daily at 07:00 (Europe/Berlin)" in text_of(m)
    assert status_of(site, "ada@example.org") == Status.PENDING

    # Pending: no digest, whatever papers there are.
    now = datetime.now(UTC)
    await pipeline.fetch(site.services, DAY1, now=now - timedelta(minutes=5))
    assert (await pipeline.send_period(site.services, DAY1, now=now)).sent == 0

    manage = await confirm_via_email(site, msg)
    assert status_of(site, "ada@example.org") == Status.ACTIVE
    page = await site.client.get(manage + "?done=confirmed")
    assert "Your subscription is confirmed" in page.text and "ada@example.org" in page.text
    assert "protein folding\nsea ice</textarea>" in page.text
    assert "None of the 23 papers of the last days matches" in page.text

    saved = await site.client.post(
        manage,
        data={
            "topics": "world models",
            "exclude": "",
            "authors": "",
            "categories": "cs.LG, cs.RO",
            "frequency": "weekdays",
            "weekly_day": "0",
            "send_time": "06:30",
            "timezone": "Europe/Berlin",
            "max_papers": "3",
            "min_score": "0.4",
            "empty_note": "yes",
        },
    )
    assert saved.status_code == 303 and saved.headers["location"] == manage + "?done=saved"
    page = await site.client.get(saved.headers["location"])
    assert "Your preferences are saved" in page.text
    preview = page.text.split('id="preview"')[1].split("</section>")[0]
    assert "PlayWorld: Benchmarking World Models with Agent Players" in preview
    assert "Title matches “world models”" in preview
    sub = site.services.store.subscriber("ada@example.org")
    assert (sub.frequency, sub.send_time, sub.max_papers, sub.min_score, sub.empty_note) == (
        "weekdays",
        "06:30",
        3,
        0.4,
        True,
    )
    assert 'name="empty_note" value="yes" checked' in page.text

    # The next digest follows the new topics (DAY1 is a Friday: a weekday).
    later = datetime.now(UTC)
    assert (await pipeline.send_period(site.services, DAY1, now=later)).sent == 1
    digest = site.messages[-1].parsed
    assert digest["To"] == "ada@example.org"
    assert "Title matches “world models”" in text_of(digest) and "3 papers" in digest["Subject"]
    assert len(links(digest, "feedback")) == 6  # more and less for each of 3 papers
    assert links(digest, "manage") and links(digest, "unsubscribe")

    # RFC 8058 one-click, as a mailbox provider sends it: no cookies, no redirect.
    one_click = digest["List-Unsubscribe"].strip("<>").removeprefix(BASE)
    assert one_click == link(digest, "unsubscribe")
    before = site.dump()
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    r = await site.client.post(one_click, content=b"List-Unsubscribe=One-Click", headers=form)
    assert r.status_code == 200 and "location" not in r.headers
    assert "You are unsubscribed" in r.text
    assert status_of(site, "ada@example.org") == Status.UNSUBSCRIBED
    assert site.dump() != before
    assert "set-cookie" not in r.headers

    # Unsubscribed before the next digest is rendered: nothing more is sent.
    sent = len(site.messages)
    next_day = DAY1 + timedelta(days=3)
    summary = await pipeline.send_period(site.services, next_day, now=later + timedelta(days=3))
    assert summary.sent == 0 and len(site.messages) == sent


async def test_known_and_unknown_addresses_get_the_same_answer(site: Site) -> None:
    site.services.store.add_subscriber(
        make_input("old@example.org", topics=["x"]), status=Status.ACTIVE
    )
    new = await site.subscribe("new@example.org")
    known = await site.subscribe("old@example.org")
    assert (new.status_code, new.headers["location"]) == (
        known.status_code,
        known.headers["location"],
    )
    assert new.text == known.text
    by_rcpt = {m.rcpt_tos[0]: m.parsed for m in site.messages}
    assert by_rcpt["new@example.org"]["Subject"] == "Confirm your subscription to Paper digest"
    manage_mail = by_rcpt["old@example.org"]
    assert manage_mail["Subject"] == "Your Paper digest subscription"
    assert "nothing has changed" in text_of(manage_mail)
    assert links(manage_mail, "manage") and links(manage_mail, "unsubscribe")
    assert not links(manage_mail, "confirm")
    # Nothing about the known subscriber changed.
    assert site.services.store.preferences([1])[1]["topic"] == ["x"]


async def test_resubmitting_resends_at_most_once_per_interval(site: Site) -> None:
    await site.subscribe("ada@example.org", topics="first topic")
    again = await site.subscribe("ada@example.org", topics="second topic")
    assert again.status_code == 303 and len(site.messages) == 1
    # The newest request's preferences are the pending ones (nothing is sent until confirmed).
    sub = site.services.store.subscriber("ada@example.org")
    assert sub.status == Status.PENDING
    assert site.services.store.preferences([sub.id or 0])[sub.id or 0]["topic"] == ["second topic"]
    # Once the interval has passed, the confirmation goes out again, with the new topics.
    now = datetime.now(UTC) + timedelta(minutes=16)
    outcome = await site.app.state.web.subscriptions.request(
        make_input("ada@example.org", topics=["third topic"]), now=now
    )
    assert outcome == "confirm" and len(site.messages) == 2
    assert "third topic" in text_of(site.messages[1].parsed)
    # The first link still works: both name the same subscriber.
    await site.client.post(link(site.messages[0].parsed, "confirm"))
    assert status_of(site, "ada@example.org") == Status.ACTIVE


async def test_topics_are_escaped_in_the_email_and_on_the_pages(site: Site) -> None:
    evil = '<script>alert("xyzzy")</script> & "quotes"'
    await site.subscribe("ada@example.org", topics=evil)
    [msg] = site.messages
    html = html_of(msg.parsed)
    assert "<script>" not in html and '&lt;script&gt;alert("xyzzy")&lt;/script&gt; &amp;' in html
    assert evil in text_of(msg.parsed)
    for name, value in msg.parsed.items():
        assert "xyzzy" not in value, name  # nothing typed reaches a header
    manage = await confirm_via_email(site, msg)
    page = await site.client.get(manage)
    assert "<script>" not in page.text and "&lt;script&gt;" in page.text


async def test_pages_work_without_scripts_or_inline_styles(site: Site) -> None:
    await site.subscribe("ada@example.org")
    manage = await confirm_via_email(site, site.messages[0])
    for path in ("/", "/check-your-inbox", manage, link(site.messages[0].parsed, "confirm")):
        page = await site.client.get(path)
        assert page.status_code == 200
        assert "<script" not in page.text and not re.search(r"\sstyle=", page.text)
        assert '<meta name="viewport"' in page.text and 'content="light dark"' in page.text
        assert re.search(r'<link rel="stylesheet" href="/static/site.css\?v=\w+">', page.text)
    css = await site.client.get("/static/site.css")
    assert css.headers["content-type"].startswith("text/css")
    assert "prefers-color-scheme: dark" in css.text and "max-width: 560px" in css.text


async def test_a_refused_change_is_shown_again_and_changes_nothing(site: Site) -> None:
    await site.subscribe("ada@example.org")
    manage = await confirm_via_email(site, site.messages[0])
    before = site.dump()
    r = await site.client.post(manage, data={"topics": "", "timezone": "Mars/Base"})
    assert r.status_code == 400 and "Mars/Base" in r.text
    assert "Give at least one topic, author or category." in r.text
    r = await site.client.post(manage, data={"max_papers": "500", "topics": "x"})
    assert r.status_code == 400 and "Max papers: a whole number from 1 to 30." in r.text
    assert site.dump() == before
