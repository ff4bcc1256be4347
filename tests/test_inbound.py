"""Mail in through the real LMTP listener, driven by smtplib.LMTP as an MTA would: subscribe by
mail, replies to a digest, the mailto unsubscribe, bounces and complaints from several MTAs; and
the mail that must change nothing (forged senders, auto-replies, loops, 10 MB, broken MIME)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import parseaddr

import pytest

from digestd import pipeline
from digestd.feedback import VOTES
from digestd.models import Status
from tests.inboundtools import Room, parse, room, sample
from tests.smtp_server import Received
from tests.webtools import DAY1

__all__ = ["room"]

ADA = "ada@example.com"


async def digest_for(r: Room, email_address: str = ADA) -> Received:
    """Fetch the feed and send today's digests; the digest ``email_address`` received."""
    now = datetime.now(UTC)
    await pipeline.fetch(r.services, DAY1, now=now - timedelta(minutes=1))
    await pipeline.send_period(r.services, DAY1, now=now)
    [digest] = [m for m in r.sent if m.rcpt_tos == [email_address] and "List-Id" in m.parsed]
    return digest


def fill(digest: Received) -> dict[str, str]:
    """The placeholders of the samples, from a digest as it was sent."""
    d = digest.parsed
    url, mailto = re.findall(r"<([^>]+)>", str(d["List-Unsubscribe"]))
    return {
        "verp": digest.mail_from,
        "subscriber": digest.rcpt_tos[0],
        "message_id": str(d["Message-ID"]),
        "reply_to": parseaddr(str(d["Reply-To"]))[1],
        "unsubscribe_url": url,
        "unsubscribe_mailto": mailto,
        "fbl": "bounces@example.org",
    }


def reply(digest: Received, body: str, *, sender: str = ADA, **headers: str) -> bytes:
    """A plain reply to ``digest``, from ``sender``."""
    msg = EmailMessage()
    msg["From"] = f"Ada Lovelace <{sender}>"
    msg["To"] = str(digest.parsed["Reply-To"])
    msg["Subject"] = f"Re: {digest.parsed['Subject']}"
    msg["Message-ID"] = "<reply.1@example.com>"
    msg["In-Reply-To"] = str(digest.parsed["Message-ID"])
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content(body)
    return msg.as_bytes()


def answers(r: Room) -> list[Received]:
    return [m for m in r.sent if m.parsed["Auto-Submitted"] == "auto-replied"]


# -- the digest carries the addresses ------------------------------------------------------


async def test_digests_carry_a_verp_sender_a_reply_to_and_the_mailto(room: Room) -> None:
    sub = room.add()
    digest = await digest_for(room)
    d = digest.parsed
    store = room.services.store
    assert sub.id is not None
    delivery = store.delivery(sub.id, DAY1)
    assert delivery is not None
    verp = room.addresses.parse(digest.mail_from)
    assert verp is not None and verp.valid and verp.kind == "bounce"
    assert (verp.subscriber_id, verp.delivery_id) == (sub.id, delivery.id)
    reply_to = room.addresses.parse(parseaddr(str(d["Reply-To"]))[1])
    assert reply_to is not None and reply_to.valid and reply_to.delivery_id == delivery.id
    url, mailto = re.findall(r"<([^>]+)>", str(d["List-Unsubscribe"]))
    assert url.startswith("https://digest.example.org/unsubscribe/")
    assert mailto.startswith("mailto:digest+u-") and mailto.endswith("?subject=unsubscribe")
    text = d.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert 'Or reply to this email, one command per line: "more 3"' in text


# -- subscribe by mail ---------------------------------------------------------------------


async def test_subscribe_by_mail_sends_the_confirmation_to_the_from_address(room: Room) -> None:
    msg = EmailMessage()
    msg["From"] = "Grace <grace@example.com>"
    msg["To"] = room.addresses.subscribe
    msg["Subject"] = "subscribe"
    msg.set_content(
        "topic: diffusion language models\ntopic: KV cache\nexclude: medical imaging\n"
        "author: Tri Dao\ntime: 07:30 Europe/Berlin\n\n-- \nGrace\n"
    )
    # The envelope sender may be anything (a forwarder, SRS): the From address is who asks.
    assert await room.deliver_one(
        "srs0=x@relay.example.net", room.addresses.subscribe, msg.as_bytes()
    ) == (250, "2.0.0 Ok")
    sub = room.subscriber("grace@example.com")
    assert (sub.status, sub.send_time, sub.timezone) == (Status.PENDING, "07:30", "Europe/Berlin")
    assert sub.id is not None
    prefs = room.services.store.preferences([sub.id])[sub.id]
    assert prefs["topic"] == ["diffusion language models", "KV cache"]
    assert (prefs["exclude"], prefs["author"]) == (["medical imaging"], ["Tri Dao"])
    [confirmation] = room.sent
    assert confirmation.rcpt_tos == ["grace@example.com"]
    assert confirmation.parsed["Subject"] == "Confirm your subscription to Paper digest"
    # Double opt-in holds: whoever forged the From gains nothing but a mail to its owner.
    again = await room.deliver_one("eve@example.net", room.addresses.subscribe, msg.as_bytes())
    assert again[0] == 250 and len(room.sent) == 1  # one email per address per resend interval


async def test_a_subscribe_request_without_topics_is_not_answered(room: Room) -> None:
    msg = EmailMessage()
    msg["From"] = "grace@example.com"
    msg["To"] = room.addresses.subscribe
    msg.set_content("please subscribe me")
    before = room.dump()
    assert (await room.deliver_one("grace@example.com", room.addresses.subscribe, msg.as_bytes()))[
        0
    ] == 250
    assert room.dump() == before and room.sent == []  # an answer to a stranger is backscatter


# -- replies to a digest ---------------------------------------------------------------------


async def test_a_gmail_reply_votes_adds_a_topic_and_is_answered(room: Room) -> None:
    sub = room.add()
    digest = await digest_for(room)
    values = fill(digest)
    store = room.services.store
    assert sub.id is not None
    delivery = store.delivery(sub.id, DAY1)
    assert delivery is not None and delivery.id is not None
    papers = store.delivery_papers(delivery.id)
    assert len(papers) >= 2

    data = sample("gmail-reply.eml", **values)
    code = await room.deliver_one(ADA, values["reply_to"], data)
    assert code == (250, "2.0.0 Ok")
    votes = {v.paper_id: v.vote for v, _ in store.votes(sub.id)}
    assert votes == {papers[2]: VOTES["more"], papers[1]: VOTES["less"]}
    assert store.preferences([sub.id])[sub.id]["topic"] == ["world models"]  # had it already
    assert room.subscriber(ADA).status == Status.ACTIVE  # the quoted "stop" was not read

    [answer] = answers(room)
    a = answer.parsed
    assert answer.rcpt_tos == [ADA] and answer.mail_from == "bounces@example.org"
    assert str(a["In-Reply-To"]).strip() == parse(data)["Message-ID"]  # threaded under the reply
    assert a["Subject"].startswith("Re: Paper digest")
    assert parseaddr(str(a["Reply-To"]))[1] == values["reply_to"]
    body = a.get_content()
    assert "More papers like 2" in body and "Fewer papers like 1" in body
    assert "Topic “world models” was there already." in body
    assert "Your settings: https://digest.example.org/manage/" in body


async def test_add_and_remove_topics_by_reply(room: Room) -> None:
    sub = room.add()
    digest = await digest_for(room)
    rcpt = fill(digest)["reply_to"]
    body = "add topic robot manipulation\nremove topic world models\nremove topic nothing\n"
    assert (await room.deliver_one(ADA, rcpt, reply(digest, body)))[0] == 250
    assert sub.id is not None
    assert room.services.store.preferences([sub.id])[sub.id]["topic"] == ["robot manipulation"]
    text = answers(room)[0].parsed.get_content()
    assert "Added topic “robot manipulation”." in text
    assert "Removed topic “world models”." in text
    assert "“nothing” is not among your topics." in text


async def test_pause_resume_and_stop_by_reply(room: Room) -> None:
    room.add()
    digest = await digest_for(room)
    values = fill(digest)
    rcpt = values["reply_to"]
    assert (await room.deliver_one(ADA, rcpt, sample("outlook-reply.eml", **values)))[0] == 250
    assert room.subscriber(ADA).status == Status.PAUSED
    assert "Paused" in answers(room)[-1].parsed.get_content()
    await room.deliver_one(ADA, rcpt, reply(digest, "resume"))
    assert room.subscriber(ADA).status == Status.ACTIVE
    await room.deliver_one(ADA, rcpt, reply(digest, "Stop."))
    assert room.subscriber(ADA).status == Status.UNSUBSCRIBED
    assert "You are unsubscribed" in answers(room)[-1].parsed.get_content()
    # Unsubscribed before the next digest is rendered.
    later = datetime.now(UTC) + timedelta(days=3)
    summary = await pipeline.send_period(room.services, DAY1 + timedelta(days=3), now=later)
    assert summary.sent == 0


async def test_unknown_commands_get_the_help(room: Room) -> None:
    room.add()
    digest = await digest_for(room)
    await room.deliver_one(ADA, fill(digest)["reply_to"], reply(digest, "what is this?\n"))
    text = answers(room)[0].parsed.get_content()
    assert "found no command" in text and "more 3" in text and "add topic X" in text
    await room.deliver_one(ADA, fill(digest)["reply_to"], reply(digest, "more three\npause"))
    assert "Not understood: “more three”" in answers(room)[1].parsed.get_content()


async def test_votes_on_numbers_the_digest_did_not_have(room: Room) -> None:
    room.add()
    digest = await digest_for(room)
    await room.deliver_one(ADA, fill(digest)["reply_to"], reply(digest, "more 99"))
    assert "That digest has no paper 99" in answers(room)[0].parsed.get_content()


# -- what must change nothing --------------------------------------------------------------


async def test_a_forged_sender_changes_nothing_and_gets_no_answer(room: Room) -> None:
    room.add()
    digest = await digest_for(room)
    rcpt = fill(digest)["reply_to"]
    before, sent = room.dump(), len(room.sent)
    # Someone who got the digest forwarded, or who forges mail: not the subscriber's From.
    for sender in ("eve@example.net", "ada@example.com.evil.example"):
        assert (await room.deliver_one(sender, rcpt, reply(digest, "stop", sender=sender)))[
            0
        ] == 250
    # A made-up token, and a real one with a changed subscriber id.
    forged = rcpt.replace("+r-", "+r-1")
    assert (await room.deliver_one(ADA, forged, reply(digest, "stop")))[0] == 250
    assert room.dump() == before and len(room.sent) == sent


@pytest.mark.parametrize(
    ("mail_from", "headers"),
    [
        (ADA, {"Auto_Submitted": "auto-replied"}),
        (ADA, {"Precedence": "bulk"}),
        (ADA, {"List_Id": "Papers <papers.lists.example.com>"}),
        ("", {}),  # the null sender: a bounce
        ("MAILER-DAEMON@example.com", {}),
    ],
)
async def test_auto_replies_list_mail_and_bounces_are_never_answered(
    room: Room, mail_from: str, headers: dict[str, str]
) -> None:
    room.add()
    digest = await digest_for(room)
    before, sent = room.dump(), len(room.sent)
    code = await room.deliver_one(
        mail_from, fill(digest)["reply_to"], reply(digest, "stop", **headers)
    )
    assert code[0] == 250 and room.dump() == before and len(room.sent) == sent


async def test_an_out_of_office_to_the_reply_address_changes_nothing(room: Room) -> None:
    room.add()
    digest = await digest_for(room)
    values = fill(digest)
    before, sent = room.dump(), len(room.sent)
    for rcpt in (values["reply_to"], values["verp"]):
        data = sample("vacation-to-verp.eml", **{**values, "verp": rcpt})
        assert (await room.deliver_one(ADA, rcpt, data))[0] == 250
    assert room.dump() == before and len(room.sent) == sent


async def test_no_mail_loop_with_our_own_answers(room: Room) -> None:
    room.add()
    digest = await digest_for(room)
    rcpt = fill(digest)["reply_to"]
    await room.deliver_one(ADA, rcpt, reply(digest, "help"))
    [answer] = answers(room)
    # The answer comes back: to the reply address (a forwarding rule), and as a bounce to
    # its envelope sender. Neither is answered again.
    await room.deliver_one(answer.mail_from, rcpt, answer.data)
    await room.deliver_one("", answer.mail_from, sample("postfix-user-unknown.eml", **fill(digest)))
    assert len(answers(room)) == 1


async def test_answers_are_limited_per_sender_per_hour(room: Room) -> None:
    room.add()
    digest = await digest_for(room)
    rcpt = fill(digest)["reply_to"]
    for _ in range(8):
        assert (await room.deliver_one(ADA, rcpt, reply(digest, "help")))[0] == 250
    assert len(answers(room)) == room.services.config.inbound.answers_per_hour == 5


async def test_a_10_mb_message_is_refused_for_each_recipient(room: Room) -> None:
    room.add()
    digest = await digest_for(room)
    values = fill(digest)
    big = reply(digest, "stop\n" + ("x" * 200 + "\n") * 50_000)
    assert len(big) > 10_000_000
    before = room.dump()
    rcpts = [values["reply_to"], room.addresses.subscribe]
    result = await room.deliver(ADA, rcpts, big)
    assert {code for code, _ in result.values()} == {552} and len(result) == 2
    # Declared with SIZE, it is refused before the data is sent.
    declared = await room.deliver(ADA, rcpts, big, size=True)
    assert {code for code, _ in declared.values()} == {552}
    assert room.dump() == before and room.subscriber(ADA).status == Status.ACTIVE
    # The listener is still fine.
    assert (await room.deliver_one(ADA, values["reply_to"], reply(digest, "pause")))[0] == 250


@pytest.mark.parametrize(
    "data",
    [
        b"\x00\xff\xfe\xfd not mail at all\r\n",
        b"no header here, only text\r\n\r\nstop\r\n",
        b"From: Ada <ada@example.com>\r\nContent-Type: multipart/mixed; boundary=zz\r\n\r\n"
        b"--yy\r\nContent-Type: text/plain\r\n\r\nstop\r\n",  # a boundary that never comes
        b"From: Ada <ada@example.com>\r\nContent-Type: multipart/alternative\r\n\r\nstop\r\n",
        b"From: Ada <ada@example.com>\r\nContent-Type: text/plain; charset=no-such-charset\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n!!!not base64!!!\r\n",
        b"From: =?utf-8?q?=E2=80?= <@@>\r\nSubject: =?bogus?x?y?=\r\n\r\nstop\r\n",
    ],
)
async def test_broken_mime_changes_nothing(room: Room, data: bytes) -> None:
    room.add()
    digest = await digest_for(room)
    before, sent = room.dump(), len(room.sent)
    code, _ = await room.deliver_one(ADA, fill(digest)["reply_to"], data)
    assert code in (250, 550)
    assert room.dump() == before and len(room.sent) == sent
    assert room.subscriber(ADA).status == Status.ACTIVE


async def test_strangers_are_refused_at_rcpt(room: Room) -> None:
    result = await room.deliver(
        ADA,
        ["someone@example.org", "digest@example.com", room.addresses.command],
        b"Subject: x\r\n\r\nhi\r\n",
    )
    assert result["someone@example.org"][0] == 550
    assert result["digest@example.com"][0] == 550
    assert result[room.addresses.command][0] == 250  # from a stranger: accepted, ignored
    assert room.sent == []


# -- List-Unsubscribe mailto ---------------------------------------------------------------


async def test_the_mailto_unsubscribes_on_receipt(room: Room) -> None:
    room.add()
    digest = await digest_for(room)
    mailto = fill(digest)["unsubscribe_mailto"]
    address = mailto.removeprefix("mailto:").split("?")[0]
    sent = len(room.sent)
    # Mailbox providers send it as they like: from the subscriber or another address,
    # automatic or not. The signed token is the proof, as for the one-click POST.
    msg = EmailMessage()
    msg["From"] = "unsubscribe-robot@mail.example.com"
    msg["Subject"] = "unsubscribe"
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content("This is an unsubscribe request.")
    assert (await room.deliver_one("unsubscribe-robot@mail.example.com", address, msg.as_bytes()))[
        0
    ] == 250
    assert room.subscriber(ADA).status == Status.UNSUBSCRIBED
    assert len(room.sent) == sent  # nothing is sent back
    tampered = address.replace("digest+u-", "digest+u-1")
    room.services.store.set_status(ADA, Status.ACTIVE)
    await room.deliver_one(ADA, tampered, msg.as_bytes())
    assert room.subscriber(ADA).status == Status.ACTIVE


# -- bounces by mail -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "status", "kind"),
    [
        ("postfix-user-unknown.eml", Status.BOUNCED, "bounce"),  # 5.1.1: one is enough
        ("exim-dsn.eml", Status.BOUNCED, "bounce"),
        ("exim-legacy.eml", Status.BOUNCED, "bounce"),  # read by flufl.bounce
        ("gmail-no-such-user.eml", Status.BOUNCED, "bounce"),
        ("exchange-online-not-found.eml", Status.BOUNCED, "bounce"),
        ("hotmail-mailbox-full.eml", Status.ACTIVE, "bounce"),  # 5.2.2: one of three
        ("postfix-delayed.eml", Status.ACTIVE, "soft-bounce"),  # only delayed
    ],
)
async def test_bounces_from_several_mtas(room: Room, name: str, status: Status, kind: str) -> None:
    room.add()
    digest = await digest_for(room)
    values = fill(digest)
    data = sample(name, **values)
    for _ in range(2):  # an MTA may deliver the same report twice: it counts once
        assert await room.deliver_one("", values["verp"], data) == (250, "2.0.0 Ok")
    assert room.subscriber(ADA).status == status
    store = room.services.store
    assert store.count_events(kind) == 1
    event = store.last_event(kind)
    assert event is not None and event.reason.startswith("delivery ")


async def test_three_mailbox_full_bounces_mark_the_subscriber_bounced(room: Room) -> None:
    sub = room.add()
    digest = await digest_for(room)
    values = fill(digest)
    assert sub.id is not None
    store = room.services.store
    for day in range(3):
        delivery = store.claim(
            sub.id, DAY1 + timedelta(days=day + 1), owner="t", now=datetime.now(UTC),
            lease=timedelta(minutes=5),
        )  # fmt: skip
        assert delivery is not None and delivery.id is not None
        verp = room.addresses.bounce(sub.id, delivery.id)
        data = sample("hotmail-mailbox-full.eml", **{**values, "verp": verp})
        await room.deliver_one("", verp, data)
    assert room.subscriber(ADA).status == Status.BOUNCED


async def test_bounces_without_a_valid_token_change_nothing(room: Room) -> None:
    sub = room.add()
    digest = await digest_for(room)
    values = fill(digest)
    assert sub.id is not None
    before = room.dump()
    data = sample("postfix-user-unknown.eml", **values)
    forged = room.addresses.bounce(sub.id, 999_999)  # a delivery that does not exist
    for rcpt in (values["verp"].replace("bounces+", "bounces+1"), "bounces@example.org", forged):
        assert (await room.deliver_one("", rcpt, data))[0] == 250
    # A bounce sent to the reply address is no bounce of ours either.
    await room.deliver_one("", values["reply_to"], data)
    assert room.dump() == before


# -- complaints ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["yahoo-arf.eml", "microsoft-jmrp-arf.eml"])
async def test_complaints_unsubscribe_at_once(room: Room, name: str) -> None:
    room.add()
    digest = await digest_for(room)
    values = fill(digest)
    # Feedback loops send to the address registered with them, not to the VERP one; the
    # Microsoft report hides the recipient and the envelope sender: its Reply-To and
    # List-Unsubscribe headers still name the subscriber.
    code = await room.deliver_one(
        "staff@hotmail.com", "bounces@example.org", sample(name, **values)
    )
    assert code == (250, "2.0.0 Ok")
    assert room.subscriber(ADA).status == Status.UNSUBSCRIBED
    event = room.services.store.last_event("complaint")
    assert event is not None and event.reason.startswith("abuse report from ")
    assert not answers(room)


async def test_not_spam_reports_and_reports_about_strangers_change_nothing(room: Room) -> None:
    room.add()
    digest = await digest_for(room)
    values = fill(digest)
    before = room.dump()
    not_spam = sample("yahoo-arf.eml", **values).replace(
        b"Feedback-Type: abuse", b"Feedback-Type: not-spam"
    )
    await room.deliver_one("x@yahoo.com", "bounces@example.org", not_spam)
    # A report about somebody else's mail: none of our tokens in it.
    strangers = {
        **values,
        "verp": "bounces+x@news.example.net",
        "reply_to": "editor@news.example.net",
        "unsubscribe_url": "https://news.example.net/unsubscribe/abc",
        "unsubscribe_mailto": "mailto:leave@news.example.net",
    }
    await room.deliver_one(
        "x@yahoo.com", "bounces@example.org", sample("yahoo-arf.eml", **strangers)
    )
    assert room.dump() == before
