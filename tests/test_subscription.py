"""Subscription operations over a real store and SMTP server: resend interval, deletion that
leaves only a count, the manage page's controls, and a relay that is down."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from digestd import pipeline
from digestd.models import Status
from digestd.notices import Notice, Notices
from digestd.subscribers import make_input
from tests.webtools import DAY1, Site, link, site, text_of

__all__ = ["site"]
T0 = datetime(2026, 9, 1, 12, 0, tzinfo=UTC)


def owners(site: Site, table: str) -> list[int | None]:
    """The subscriber_id of every row of ``table``."""
    with site.services.store.engine.connect() as conn:
        query = f"SELECT subscriber_id FROM {table}"  # noqa: S608 - fixed table names
        return [r[0] for r in conn.exec_driver_sql(query)]


async def test_resend_interval_per_address(site: Site) -> None:
    subs = site.app.state.web.subscriptions
    data = make_input("ada@example.org", topics=["world models"])
    assert await subs.request(data, now=T0) == "confirm"
    assert await subs.request(data, now=T0 + timedelta(minutes=14)) == "throttled"
    assert await subs.request(data, now=T0 + timedelta(minutes=15)) == "confirm"
    other = make_input("bo@example.org", topics=["x"])
    assert await subs.request(other, now=T0 + timedelta(minutes=15)) == "confirm"
    assert [m.rcpt_tos for m in site.messages] == [["ada@example.org"]] * 2 + [["bo@example.org"]]


async def test_an_unsubscribed_address_must_confirm_again(site: Site) -> None:
    sub = site.services.store.add_subscriber(
        make_input("ada@example.org", topics=["old topic"]), status=Status.ACTIVE
    )
    assert sub.id is not None
    site.services.store.change_status(sub.id, Status.UNSUBSCRIBED, reason="t", confirmed_at=None)
    r = await site.subscribe("ada@example.org", topics="new topic")
    assert r.status_code == 303
    [msg] = site.messages
    assert msg.parsed["Subject"] == "Confirm your subscription to Paper digest"
    assert "new topic" in text_of(msg.parsed)
    assert site.services.store.subscriber("ada@example.org").status == Status.UNSUBSCRIBED
    await site.client.post(link(msg.parsed, "confirm"))
    assert site.services.store.subscriber("ada@example.org").status == Status.ACTIVE
    assert site.services.store.preferences([sub.id])[sub.id]["topic"] == ["new topic"]


async def test_delete_my_data_leaves_only_an_anonymous_count(site: Site) -> None:
    await site.subscribe("ada@example.org")
    await site.subscribe("bo@example.org")
    manage = ""
    for msg in site.messages:
        r = await site.client.post(link(msg.parsed, "confirm"))
        if msg.rcpt_tos == ["ada@example.org"]:
            manage = r.headers["location"].split("?")[0]
    now = datetime.now(UTC)
    await pipeline.fetch(site.services, DAY1, now=now)
    await pipeline.send_period(site.services, DAY1, now=now)
    ada_digest = next(
        m
        for m in site.messages
        if m.rcpt_tos == ["ada@example.org"] and "Confirm" not in m.parsed["Subject"]
    )
    await site.client.post(link(ada_digest.parsed, "feedback"))
    ada = site.services.store.subscriber("ada@example.org").id
    for table in ("preferences", "deliveries", "sent_papers", "feedback", "events"):
        assert ada in owners(site, table), table

    # Without the tick box nothing happens.
    refused = await site.client.post(manage + "/delete")
    assert refused.status_code == 400 and "Tick the box" in refused.text
    assert site.services.store.find_subscriber("ada@example.org") is not None

    r = await site.client.post(manage + "/delete", data={"confirm": "yes"})
    assert r.status_code == 200 and "Your data is deleted" in r.text
    assert site.services.store.find_subscriber("ada@example.org") is None
    dump = site.dump()
    assert "ada@example.org" not in dump
    for table in ("preferences", "deliveries", "sent_papers", "feedback"):
        assert ada not in owners(site, table), table
    assert ada not in owners(site, "events") and None in owners(site, "events")
    assert site.services.store.count_events("deleted") == 1
    # Bo is untouched.
    assert site.services.store.subscriber("bo@example.org").status == Status.ACTIVE
    assert (await site.client.get(manage)).status_code == 403


async def test_pause_resume_and_unsubscribe_from_the_manage_page(site: Site) -> None:
    await site.subscribe("ada@example.org")
    manage = (
        (await site.client.post(link(site.messages[0].parsed, "confirm")))
        .headers["location"]
        .split("?")[0]
    )
    for action, status, note in [
        ("pause", Status.PAUSED, "Paused: no digests until you resume."),
        ("resume", Status.ACTIVE, "Resumed"),
        ("unsubscribe", Status.UNSUBSCRIBED, "You are unsubscribed"),
        ("resume", Status.ACTIVE, "Resumed"),
    ]:
        r = await site.client.post(f"{manage}/{action}")
        assert r.status_code == 303
        assert site.services.store.subscriber("ada@example.org").status == status
        page = await site.client.get(r.headers["location"])
        assert note in page.text
    # A paused subscriber gets no digest.
    await site.client.post(f"{manage}/pause")
    now = datetime.now(UTC)
    await pipeline.fetch(site.services, DAY1, now=now)
    assert (await pipeline.send_period(site.services, DAY1, now=now)).sent == 0


async def test_a_relay_outage_is_said_and_the_next_try_sends(site: Site) -> None:
    site.smtp.handler.rcpt_reply = "451 4.3.0 Try again later"
    r = await site.subscribe("ada@example.org")
    assert r.status_code == 503 and "try again in a few minutes" in r.text
    assert r.headers["retry-after"] == "300"
    site.smtp.handler.rcpt_reply = None
    r = await site.subscribe("ada@example.org")  # not held back by the resend interval
    assert r.status_code == 303 and len(site.messages) == 1


def test_notices_keep_typed_text_out_of_the_headers() -> None:
    notices = Notices(sender="Paper digest <digest@example.org>", site_name="Paper digest")
    msg = notices.render(
        Notice(
            kind="confirm",
            to="ada@example.org",
            action_url="https://x.org/confirm/t",
            topics=["Subject: spoofed\r\nBcc: victim@example.org"],
            schedule="daily",
            expires_days=3,
        ),
        now=T0,
    )
    raw = bytes(msg)
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert b"spoofed" not in head and b"victim" not in head
    assert msg["Subject"] == "Confirm your subscription to Paper digest"
    assert msg["Message-ID"].endswith("@example.org>") and msg["Date"]
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]


async def test_unconfirmed_requests_are_forgotten_once_their_link_expired(site: Site) -> None:
    subs = site.app.state.web.subscriptions
    await subs.request(make_input("late@example.org", topics=["x"]), now=T0)
    await subs.request(make_input("recent@example.org", topics=["x"]), now=T0 + timedelta(days=2))
    await site.client.post(link(site.messages[0].parsed, "confirm"))
    assert site.services.store.subscriber("late@example.org").status == Status.ACTIVE
    await subs.request(make_input("never@example.org", topics=["x"]), now=T0)
    assert subs.purge_unconfirmed(now=T0 + timedelta(days=3, minutes=1)) == 1
    store = site.services.store
    assert store.find_subscriber("never@example.org") is None
    assert store.find_subscriber("recent@example.org") is not None  # its link still works
    assert store.find_subscriber("late@example.org") is not None  # confirmed: kept
    assert store.count_events("deleted") == 1
