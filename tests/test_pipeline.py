"""Feed → matcher → render → a real SMTP server on loopback, with the ledger as the truth."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from digestd import config as config_mod
from digestd import pipeline
from digestd.models import DeliveryStatus, Status
from digestd.services import Services
from digestd.subscribers import make_input
from tests.conftest import HF_DAYS
from tests.smtp_server import SmtpServer

DAY1 = date(2026, 8, 14)
DAY2 = date(2026, 8, 20)
NOW1 = datetime(2026, 8, 14, 8, 0, tzinfo=UTC)
NOW2 = datetime(2026, 8, 20, 8, 0, tzinfo=UTC)
RESUBMITTED = "2608.13558"  # OmniScientist: listed on both 2026-08-14 and 2026-08-20


@pytest.fixture
async def services(
    write_config: Callable[..., Path], smtp_server: SmtpServer
) -> AsyncIterator[Services]:
    path = write_config(smtp__host=smtp_server.host, smtp__port=smtp_server.port,
                        smtp__security="none")  # fmt: skip
    async with Services.build(config_mod.load(path)) as s:
        yield s


def subscribe(
    services: Services,
    email: str,
    *topics: str,
    status: Status = Status.ACTIVE,
    now: datetime = NOW1 - timedelta(days=1),
    send_time: str = "07:00",
    empty_note: bool = False,
) -> int:
    data = make_input(email, topics=topics, send_time=send_time, empty_note=empty_note)
    sub = services.store.add_subscriber(data, status=status, now=now)
    assert sub.id is not None
    return sub.id


async def test_feed_to_messages_one_per_matching_subscriber(
    services: Services, smtp_server: SmtpServer
) -> None:
    alice = subscribe(services, "Alice@Example.org", "world models")
    bob = subscribe(services, "bob@example.org", "protein folding")  # nothing that day
    subscribe(services, "carol@example.org", "world models", status=Status.UNSUBSCRIBED)

    fetched = await pipeline.fetch(services, DAY1, now=NOW1)
    assert fetched.new == 23 and fetched.errors == []
    summary = await pipeline.send_period(services, DAY1, now=NOW1)

    assert (summary.sent, summary.empty, summary.failed, summary.retry) == (1, 1, 0, 0)
    [msg] = smtp_server.handler.messages
    assert msg.rcpt_tos == ["alice@example.org"]
    assert msg.mail_from == "digest@example.org"
    m = msg.parsed
    assert m.get_content_type() == "multipart/alternative"
    text, html = m.iter_parts()
    assert (text.get_content_type(), html.get_content_type()) == ("text/plain", "text/html")
    assert text.get_content_charset() == html.get_content_charset() == "utf-8"

    row = services.store.delivery(alice, DAY1)
    assert row is not None and row.status == DeliveryStatus.SENT
    assert m["Message-ID"] == row.message_id
    assert m["To"] == "alice@example.org"
    assert m["From"] == "Paper digest <digest@example.org>"
    assert f"{row.paper_count} papers" in m["Subject"] and "Aug 14, 2026" in m["Subject"]
    assert m["List-Id"] == "Paper digest <digest.example.org>"
    assert m["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert m["List-Unsubscribe"].startswith("<https://digest.example.org/unsubscribe/")
    assert m["Date"] is not None
    assert len(msg.data) < 100_000

    body_text, body_html = text.get_content(), html.get_content()
    assert "PlayWorld: Benchmarking World Models with Agent Players" in body_text
    assert "https://arxiv.org/abs/2608.13552" in body_text
    assert 'href="https://arxiv.org/abs/2608.13552"' in body_html
    assert "Title matches “world models”" in body_text
    assert "https://digest.example.org/manage/" in body_html
    assert row.paper_count >= 4
    assert services.store.sent_paper_ids(alice, ["2608.13552", "2608.13049"]) == {
        "2608.13552", "2608.13049",
    }  # fmt: skip
    empty = services.store.delivery(bob, DAY1)
    assert empty is not None and empty.status == DeliveryStatus.EMPTY


async def test_second_send_for_the_same_period_sends_nothing(
    services: Services, smtp_server: SmtpServer
) -> None:
    subscribe(services, "alice@example.org", "world models")
    await pipeline.fetch(services, DAY1, now=NOW1)
    first = await pipeline.send_period(services, DAY1, now=NOW1)
    again = await pipeline.send_period(services, DAY1, now=NOW1 + timedelta(hours=1))
    assert first.sent == 1
    assert again.sent == 0 and again.skipped == 1 and again.not_due == 0
    assert "1 skipped (done already" in str(again)
    assert len(smtp_server.handler.messages) == 1


async def test_a_manual_send_counts_apart_those_it_is_not_a_digest_day_for(
    services: Services, smtp_server: SmtpServer
) -> None:
    subscribe(services, "alice@example.org", "world models")
    weekly = make_input("bob@example.org", topics=["world models"], frequency="weekly",
                        weekly_day=(DAY1.weekday() + 1) % 7)  # fmt: skip
    services.store.add_subscriber(weekly, status=Status.ACTIVE, now=NOW1 - timedelta(days=1))
    await pipeline.fetch(services, DAY1, now=NOW1)

    summary = await pipeline.send_period(services, DAY1, now=NOW1)

    assert (summary.sent, summary.not_due, summary.skipped) == (1, 1, 0)
    assert str(summary).endswith(", 1 not due that day")
    assert [m.rcpt_tos for m in smtp_server.handler.messages] == [["alice@example.org"]]


async def test_a_paper_is_never_sent_twice(
    services: Services, smtp_server: SmtpServer, feed_dir: Path
) -> None:
    alice = subscribe(services, "alice@example.org", "AI scientist", "world models")
    await pipeline.fetch(services, DAY1, now=NOW1)
    await pipeline.send_period(services, DAY1, now=NOW1)
    shutil.copy(HF_DAYS / "2026-08-20.json", feed_dir)  # lists RESUBMITTED again
    fetched = await pipeline.fetch(services, DAY2, now=NOW2)
    assert fetched.new > 0
    await pipeline.send_period(services, DAY2, now=NOW2)

    first, second = smtp_server.handler.messages
    ids1 = {line for line in first.data.decode().split() if "arxiv.org/abs/" in line}
    ids2 = {line for line in second.data.decode().split() if "arxiv.org/abs/" in line}
    assert f"https://arxiv.org/abs/{RESUBMITTED}" in ids1
    assert ids2 and not ids1 & ids2
    assert (
        "Decision-Metric Alignment in Latent World Models"
        in second.parsed.get_body(("plain",)).get_content()
    )  # type: ignore[union-attr]
    assert services.store.sent_paper_ids(alice, [RESUBMITTED]) == {RESUBMITTED}


async def test_temporary_failure_leaves_the_digest_for_retry(
    services: Services, smtp_server: SmtpServer
) -> None:
    alice = subscribe(services, "alice@example.org", "world models")
    await pipeline.fetch(services, DAY1, now=NOW1)
    smtp_server.handler.rcpt_reply = "451 4.3.0 Try again later"
    summary = await pipeline.send_period(services, DAY1, now=NOW1)
    assert summary.retry == 1 and smtp_server.handler.messages == []
    row = services.store.delivery(alice, DAY1)
    assert row is not None and row.status == DeliveryStatus.RETRY
    assert row.reply.startswith("451") and row.attempts == 1
    assert row.next_attempt_at is not None and row.next_attempt_at > NOW1
    assert services.store.sent_paper_ids(alice, ["2608.13552"]) == set()

    # Not before its time; then it goes out with the same Message-ID.
    early = await pipeline.send_period(services, DAY1, now=NOW1 + timedelta(minutes=1))
    assert early.skipped == 1
    smtp_server.handler.rcpt_reply = None
    later = await pipeline.send_period(services, DAY1, now=NOW1 + timedelta(hours=2))
    assert later.sent == 1
    [msg] = smtp_server.handler.messages
    assert msg.parsed["Message-ID"] == row.message_id


async def test_permanent_failure_records_a_bounce(
    services: Services, smtp_server: SmtpServer, write_config: Callable[..., Path]
) -> None:
    alice = subscribe(services, "alice@example.org", "world models")
    await pipeline.fetch(services, DAY1, now=NOW1)
    smtp_server.handler.rcpt_reply = "550 5.1.1 No such user"
    summary = await pipeline.send_period(services, DAY1, now=NOW1)
    assert summary.failed == 1
    row = services.store.delivery(alice, DAY1)
    assert row is not None and row.status == DeliveryStatus.FAILED
    assert row.reply.startswith("550 5.1.1")
    assert services.store.subscriber("alice@example.org").status == Status.BOUNCED
    event = services.store.last_event("bounce")
    assert event is not None and (event.subscriber_id, event.reason) == (alice, row.reply)
    # A bounced subscriber gets nothing more.
    smtp_server.handler.rcpt_reply = None
    assert (await pipeline.send_period(services, DAY2, now=NOW2)).sent == 0


async def test_outbox_transport_writes_eml_and_html(
    write_config: Callable[..., Path], tmp_path: Path
) -> None:
    async with Services.build(config_mod.load(write_config())) as services:
        subscribe(services, "alice@example.org", "world models")
        await pipeline.fetch(services, DAY1, now=NOW1)
        summary = await pipeline.send_period(services, DAY1, now=NOW1)
    assert summary.sent == 1
    [eml] = (tmp_path / "outbox").glob("*.eml")
    html = eml.with_suffix(".html")
    assert b"PlayWorld" in eml.read_bytes()
    assert "<html" in html.read_text(encoding="utf-8")


async def test_the_tick_sends_at_the_local_send_time_and_welcomes_new_confirmations(
    services: Services, smtp_server: SmtpServer
) -> None:
    early = NOW1.replace(hour=5)  # 05:00 UTC on DAY1
    await pipeline.fetch(services, DAY1, now=early - timedelta(hours=1))
    # An operator adds Ada today before her 07:00: nothing for yesterday, today's at 07:00.
    subscribe(services, "ada@example.org", "world models", now=early - timedelta(minutes=30))
    # Bo signed up on the web at 04:00 and confirms at 05:00: a first digest right away.
    bo = subscribe(services, "bo@example.org", "world models", status=Status.PENDING,
                   now=early - timedelta(hours=1))  # fmt: skip
    services.store.change_status(bo, Status.ACTIVE, reason="link", confirmed_at=early)

    first = await pipeline.send_due(services, now=early + timedelta(seconds=30))
    assert first.sent == 1
    assert [m.rcpt_tos for m in smtp_server.handler.messages] == [["bo@example.org"]]
    assert (await pipeline.send_due(services, now=NOW1.replace(hour=6, minute=59))).sent == 0
    at_seven = await pipeline.send_due(services, now=NOW1.replace(hour=7))
    # Bo's digest for today is done; Ada gets hers. Papers already sent to Bo stay sent.
    assert at_seven.sent == 1
    assert smtp_server.handler.messages[-1].rcpt_tos == ["ada@example.org"]
    assert (await pipeline.send_due(services, now=NOW1.replace(hour=9))).sent == 0


async def test_a_digest_without_matches_waits_for_papers_then_is_empty(
    services: Services, smtp_server: SmtpServer, feed_dir: Path
) -> None:
    alice = subscribe(services, "alice@example.org", "latent world models")
    for f in feed_dir.iterdir():
        f.unlink()
    shutil.copy(HF_DAYS / "2026-08-20.json", feed_dir / "2026-08-20.json")
    seven = NOW2.replace(hour=7)
    summary = await pipeline.send_due(services, now=seven)
    assert summary.waiting == 1
    row = services.store.delivery(alice, DAY2)
    assert row is not None and row.status == DeliveryStatus.WAITING
    # The day's papers arrive at 08:00; the next look after that sends them.
    await pipeline.fetch(services, DAY2, now=NOW2)
    later = await pipeline.send_due(services, now=seven + timedelta(minutes=61))
    assert (
        later.sent == 1
        and "Decision-Metric Alignment" in smtp_server.handler.messages[0].data.decode()
    )


async def test_retries_stop_when_the_digest_is_too_old(
    services: Services, smtp_server: SmtpServer
) -> None:
    alice = subscribe(services, "alice@example.org", "world models")
    await pipeline.fetch(services, DAY1, now=NOW1.replace(hour=6))
    smtp_server.handler.rcpt_reply = "421 4.3.2 System shutting down"
    seven = NOW1.replace(hour=7)
    assert (await pipeline.send_due(services, now=seven)).retry == 1
    late = await pipeline.send_due(services, now=seven + timedelta(hours=20, minutes=1))
    assert late.expired == 1
    row = services.store.delivery(alice, DAY1)
    assert row is not None and row.status == DeliveryStatus.EXPIRED
    assert "421" in row.reply
    assert smtp_server.handler.messages == []


async def test_a_subscriber_who_asked_gets_a_short_note_when_nothing_matched(
    services: Services, smtp_server: SmtpServer
) -> None:
    subscribe(services, "bob@example.org", "protein folding", empty_note=True)
    subscribe(services, "cy@example.org", "protein folding")
    await pipeline.fetch(services, DAY1, now=NOW1)
    summary = await pipeline.send_period(services, DAY1, now=NOW1)
    assert (summary.sent, summary.empty) == (1, 1)
    [note] = smtp_server.handler.messages
    assert note.rcpt_tos == ["bob@example.org"]
    assert note.parsed["Subject"] == "Paper digest — nothing new matched on Aug 14, 2026"
    assert "Nothing new matched your topics" in note.parsed.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert note.parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
