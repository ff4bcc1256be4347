"""Mail both ways through a real Postfix (a private instance, see tests/postfix.py): the real
daemon sends its digests through Postfix, and Postfix hands the replies, subscribe requests and
its own bounces to digestd's LMTP listener by the README's transport lines."""

from __future__ import annotations

import os
import smtplib
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from email.utils import parseaddr
from pathlib import Path

import pytest

from digestd import config as config_mod
from digestd.models import Status, Subscriber
from digestd.store import Store
from tests.postfix import Postfix, private_postfix
from tests.smtp_server import Received, ThreadedSmtpServer
from tests.test_daemon import Daemon, free_port, subscribe, wait_until

DOMAIN = "example.org"  # the digest mail domain: [smtp] from is digest@example.org
ADA = "ada@example.com"


class Setup:
    """Postfix between the world and a running ``digestd run``, in both directions."""

    def __init__(
        self, postfix: Postfix, daemon: Daemon, sink: ThreadedSmtpServer, store: Store
    ) -> None:
        self.postfix, self.daemon, self.sink, self.store = postfix, daemon, sink, store

    def start(self) -> None:
        """Start the daemon; return once its LMTP listener answers, as Postfix will need it."""
        self.daemon.start()
        host, _, port = self.postfix.lmtp.rpartition(":")

        def listening() -> bool:
            try:
                with smtplib.LMTP(host, int(port), timeout=2) as client:
                    return client.ehlo("mx.digestd.test")[0] == 250
            except OSError:
                return False

        wait_until(listening, what="the LMTP listener")

    def mail(self, mail_from: str, rcpt: str, msg: EmailMessage) -> None:
        """Send ``msg`` to Postfix as the internet would: to the MX port."""
        with smtplib.SMTP("127.0.0.1", self.postfix.mx_port, timeout=10) as client:
            client.send_message(msg, mail_from, [rcpt])

    def arrived(self, check: Callable[[Received], bool], what: str) -> Received:
        """The first message the sink (the world behind Postfix) got that passes ``check``."""
        found: list[Received] = []

        def seen() -> bool:
            found[:] = [m for m in self.sink.handler.messages if check(m)]
            return bool(found)

        wait_until(seen, timeout=30, what=what)
        return found[0]

    def subscriber(self, email_address: str) -> Subscriber:
        return self.store.subscriber(email_address)

    def status_becomes(self, email_address: str, status: Status) -> None:
        wait_until(
            lambda: self.subscriber(email_address).status == status,
            timeout=30, what=f"{email_address} to be {status.value}",
        )  # fmt: skip


@pytest.fixture
def setup(
    write_config: Callable[..., Path], smtp_server_thread: ThreadedSmtpServer, tmp_path: Path
) -> Iterator[Setup]:
    lmtp = f"127.0.0.1:{free_port()}"
    sink = smtp_server_thread
    with private_postfix(DOMAIN, lmtp, (sink.host, sink.port)) as postfix:
        port = free_port()
        config = write_config(
            web__port=port, smtp__host="127.0.0.1", smtp__port=postfix.submit_port,
            smtp__security="none", schedule__tick_seconds=1, schedule__wait_minutes=0,
            inbound__enabled=True, inbound__listen=lmtp,
        )  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DIGESTD_", "NOTIFY"))}
        daemon = Daemon(config, port, tmp_path / "daemon.log", env)
        store = Store.open(config_mod.load(config).database_url)
        try:
            yield Setup(postfix, daemon, sink, store)
            assert daemon.stop() == 0
        finally:
            daemon.kill()
            store.close()
            # Shown by pytest only when the test failed: what each side saw.
            print(f"--- Postfix log ({postfix.maillog})\n{postfix.log()}")
            if daemon.log.exists():
                print(f"--- daemon log\n{daemon.log.read_text()}")


def is_digest_to(address: str) -> Callable[[Received], bool]:
    return lambda m: m.rcpt_tos == [address] and "List-Id" in m.parsed


def is_answer_to(address: str, text: str) -> Callable[[Received], bool]:
    def check(m: Received) -> bool:
        if m.rcpt_tos != [address] or m.parsed["Auto-Submitted"] != "auto-replied":
            return False
        return text in m.parsed.get_content()

    return check


def reply(digest: Received, body: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = f"Ada Lovelace <{ADA}>"
    msg["To"] = str(digest.parsed["Reply-To"])
    msg["Subject"] = f"Re: {digest.parsed['Subject']}"
    msg["In-Reply-To"] = str(digest.parsed["Message-ID"])
    msg.set_content(body)
    return msg


def test_replies_and_subscribe_requests_go_through_postfix_both_ways(setup: Setup) -> None:
    subscribe(setup.daemon.config, ADA)
    setup.start()

    # Out: the digest reaches the world through Postfix, with the VERP sender and Reply-To.
    digest = setup.arrived(is_digest_to(ADA), "the digest, relayed by Postfix")
    assert "by mx.digestd.test (Postfix)" in str(digest.parsed["Received"])
    assert digest.mail_from.startswith("bounces+") and digest.mail_from.endswith(f"@{DOMAIN}")
    reply_to = parseaddr(str(digest.parsed["Reply-To"]))[1]
    assert reply_to.startswith("digest+r-") and reply_to.endswith(f"@{DOMAIN}")

    # In: Postfix hands the replies to the LMTP listener; the answers go back out through it.
    setup.mail(ADA, reply_to, reply(digest, "pause"))
    setup.status_becomes(ADA, Status.PAUSED)
    paused = setup.arrived(is_answer_to(ADA, "Paused"), "the answer to pause")
    assert paused.mail_from == f"bounces@{DOMAIN}"
    assert "by mx.digestd.test (Postfix)" in str(paused.parsed["Received"])
    setup.mail(ADA, reply_to, reply(digest, "stop"))
    setup.status_becomes(ADA, Status.UNSUBSCRIBED)
    setup.arrived(is_answer_to(ADA, "You are unsubscribed"), "the answer to stop")

    # A subscribe request by mail: a pending subscriber, and the confirmation goes out.
    request = EmailMessage()
    request["From"] = "Grace <grace@example.com>"
    request["To"] = f"digest+subscribe@{DOMAIN}"
    request["Subject"] = "subscribe"
    request.set_content("topic: world models\ntime: 07:30 Europe/Berlin\n")
    setup.mail("grace@example.com", f"digest+subscribe@{DOMAIN}", request)
    confirmation = setup.arrived(
        lambda m: m.rcpt_tos == ["grace@example.com"], "the confirmation, relayed by Postfix"
    )
    assert confirmation.parsed["Subject"] == "Confirm your subscription to Paper digest"
    assert setup.subscriber("grace@example.com").status == Status.PENDING

    # The README's recipient map: Postfix itself refuses what digestd would not take, and the
    # MX port relays for nobody.
    with smtplib.SMTP("127.0.0.1", setup.postfix.mx_port, timeout=10) as client:
        client.mail("eve@example.net")
        code, text = client.rcpt(f"someone@{DOMAIN}")
        assert code == 550 and b"relay recipient table" in text
        assert client.rcpt("someone@example.net")[0] == 554  # relay access denied
    log = setup.postfix.log()
    assert "status=sent" in log
    assert "status=bounced" not in log and "status=deferred" not in log  # nothing went astray


def test_a_postfix_bounce_to_the_verp_address_marks_the_subscriber_bounced(
    setup: Setup,
) -> None:
    # The world refuses the address; Postfix has accepted the digest already, so it sends its
    # own delivery-status notification to the VERP sender: by transport to digestd.
    setup.sink.handler.rcpt_replies[ADA] = "550 5.1.1 <ada@example.com>: User unknown"
    subscribe(setup.daemon.config, ADA)
    setup.start()
    setup.status_becomes(ADA, Status.BOUNCED)
    # Postfix's own account (its log lines travel through postlogd, so they may lag a little).
    wait_until(
        lambda: all(line in setup.postfix.log() for line in (
            f"to=<{ADA}>", "status=bounced", "sender non-delivery notification",
        )),
        timeout=10, what="Postfix to log the bounce and its notification",
    )  # fmt: skip
    event = setup.store.last_event("bounce")
    assert event is not None and "5.1.1" in event.reason
    assert setup.sink.handler.messages == []  # the notification went to digestd, not out
