"""The web front in a real browser: the real daemon (``digestd run``) on a loopback port, driven
by Playwright with Debian's Chromium through subscribe → confirmation email → confirm → manage
→ change topics → digest → feedback → unsubscribe. Screenshots of every page at desktop and
phone width, light and dark, go to ``$DIGESTD_TEST_ARTIFACTS`` (default ``test-artifacts/``)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest

from digestd import config as config_mod
from digestd.store import Store
from tests.smtp_server import ThreadedSmtpServer

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (apt chromium)"
)
ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("DIGESTD_TEST_ARTIFACTS") or ROOT / "test-artifacts") / "browser"
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
VIEWS = {"desktop": (1280, 900), "phone": (390, 844)}
BACKGROUND = {"light": "rgb(238, 240, 243)", "dark": "rgb(13, 17, 23)"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Daemon:
    base: str
    config: Path
    db: Path
    log: Path

    def cli(self, *args: str) -> str:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DIGESTD_")}
        r = subprocess.run([sys.executable, "-m", "digestd.cli", "--config", str(self.config),
                            *args], capture_output=True, text=True, env=env, cwd=self.config.parent,
                           timeout=120, check=False)  # fmt: skip
        assert r.returncode == 0, r.stderr
        return r.stdout

    def status(self, email: str) -> str:
        store = Store(config_mod.load(self.config).database_url)
        try:
            return str(store.subscriber(email).status)
        finally:
            store.close()


@pytest.fixture
def daemon(
    write_config: Callable[..., Path], smtp_server_thread: ThreadedSmtpServer, tmp_path: Path
) -> Iterator[Daemon]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    # One tick at start-up and then none for an hour: the test sends with `digestd send`.
    config = write_config(smtp__host=smtp_server_thread.host, smtp__port=smtp_server_thread.port,
                          smtp__security="none", web__host="127.0.0.1", web__port=port,
                          web__base_url=base, schedule__tick_seconds=3600)  # fmt: skip
    d = Daemon(base, config, tmp_path / "digestd.db", tmp_path / "daemon.log")
    assert "23 new" in d.cli("fetch")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGESTD_")}
    with d.log.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "digestd.cli", "--config", str(config),
                                 "-v", "run"], stdout=log, stderr=subprocess.STDOUT, env=env,
                                cwd=tmp_path)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, d.log.read_text()
            assert time.monotonic() < deadline, "daemon did not start:\n" + d.log.read_text()
            time.sleep(0.1)
        yield d
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, d.log.read_text()


def body(msg: EmailMessage, kind: str) -> str:
    part = msg.get_body((kind,))
    assert part is not None
    return str(part.get_content())  # type: ignore[attr-defined]


def first_link(msg: EmailMessage, base: str, kind: str) -> str:
    found = re.findall(re.escape(base) + rf"/{kind}/[^\s<>\"']+", body(msg, "plain"))
    assert found, kind
    return str(found[0])


def test_the_journey_in_a_real_browser(
    daemon: Daemon, smtp_server_thread: ThreadedSmtpServer
) -> None:
    from playwright.sync_api import Page, expect, sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []

    def shoot(page: Page, name: str) -> None:
        """Screenshots at both widths in both schemes; the stylesheet must have loaded."""
        for scheme in ("light", "dark"):
            page.emulate_media(color_scheme=scheme)  # type: ignore[arg-type]
            for view, (width, height) in VIEWS.items():
                page.set_viewport_size({"width": width, "height": height})
                page.screenshot(path=ARTIFACTS / f"{name}-{view}-{scheme}.png", full_page=True)
                if page.url.startswith(daemon.base):
                    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
                    assert background == BACKGROUND[scheme], (name, scheme)
                fits = page.evaluate("document.documentElement.scrollWidth <= innerWidth + 1")
                assert fits, f"{name} scrolls sideways at {view} width"
        page.emulate_media(color_scheme="light")
        page.set_viewport_size({"width": 1280, "height": 900})

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                    args=LAUNCH_ARGS)  # fmt: skip
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        # Emails are shown in a page of their own (about:blank), as a mail client shows them:
        # not under our site's Content-Security-Policy, which forbids their inline styles.
        mailbox = browser.new_page(viewport={"width": 1280, "height": 900})

        # Subscribe.
        page.goto(daemon.base + "/")
        expect(page.get_by_role("heading", name="Subscribe")).to_be_visible()
        expect(page.get_by_label("Email address")).to_be_visible()
        expect(page.get_by_label("Topics")).to_be_visible()
        shoot(page, "01-home")
        page.get_by_label("Email address").fill("ada@example.org")
        page.get_by_label("Topics").fill("world models\nagents")
        page.get_by_text("More options").click()
        page.get_by_label("Time zone").fill("Europe/Berlin")
        page.get_by_label("Weekdays").check()
        shoot(page, "02-home-filled")
        page.get_by_role("button", name="Subscribe").click()
        expect(page.get_by_role("heading", name="Check your inbox")).to_be_visible()
        shoot(page, "03-check-your-inbox")

        # The confirmation email, as a mail client would show it.
        [confirmation] = smtp_server_thread.wait_for(1)
        mail = confirmation.parsed
        assert mail["Subject"] == "Confirm your subscription to Paper digest"
        mailbox.set_content(body(mail, "html"))
        expect(mailbox.get_by_role("link", name="Confirm subscription")).to_be_visible()
        shoot(mailbox, "04-confirmation-email")

        # Confirm: a page with a button; the button confirms.
        page.goto(first_link(mail, daemon.base, "confirm"))
        assert daemon.status("ada@example.org") == "pending"
        shoot(page, "05-confirm")
        page.get_by_role("button", name="Confirm subscription").click()
        expect(page.get_by_role("heading", name="Your subscription")).to_be_visible()
        expect(page.get_by_text("Your subscription is confirmed")).to_be_visible()
        assert daemon.status("ada@example.org") == "active"
        preview = page.locator("#preview")
        expect(preview.get_by_text("Title matches “world models”").first).to_be_visible()
        shoot(page, "06-manage")

        # Change topics; the preview follows.
        page.get_by_label("Topics").fill("video generation")
        page.get_by_label("Papers per digest, at most").fill("4")
        page.get_by_role("button", name="Save changes").click()
        expect(page.get_by_text("Your preferences are saved")).to_be_visible()
        expect(preview.get_by_text("“video generation”").first).to_be_visible()
        expect(preview.get_by_text("“world models”")).to_have_count(0)
        shoot(page, "07-manage-saved")

        # The next digest follows the new topics: a weekday's, as Ada asked (on a Saturday
        # or Sunday in Berlin, Friday's; today's would not be due).
        day = datetime.now(ZoneInfo("Europe/Berlin")).date()
        while day.weekday() >= 5:
            day -= timedelta(days=1)
        assert "1 sent" in daemon.cli("send", "--no-fetch", "--period", day.isoformat())
        digest = smtp_server_thread.wait_for(2)[1].parsed
        assert "video generation" in body(digest, "plain")
        mailbox.set_content(body(digest, "html"))
        expect(mailbox.get_by_text("4 papers picked for you")).to_be_visible()
        expect(mailbox.get_by_role("link", name="More like this").first).to_be_visible()
        expect(mailbox.get_by_role("link", name="Unsubscribe")).to_be_visible()
        shoot(mailbox, "08-digest")

        # "More like this": a page, then the vote.
        page.goto(
            mailbox.get_by_role("link", name="More like this").first.get_attribute("href") or ""
        )
        expect(page.get_by_role("heading", name="More like this?")).to_be_visible()
        shoot(page, "09-feedback")
        page.get_by_role("button", name="Yes, more like this").click()
        expect(page.get_by_role("heading", name="Thanks, noted")).to_be_visible()
        shoot(page, "10-feedback-done")
        page.get_by_role("link", name="your settings").click()
        expect(page.locator("#feedback").get_by_role("button", name="Undo")).to_be_visible()
        shoot(page, "11-manage-with-vote")

        # Unsubscribe from the digest's link: a page, then the button.
        page.goto(first_link(digest, daemon.base, "unsubscribe"))
        expect(page.get_by_role("heading", name="Unsubscribe?")).to_be_visible()
        assert daemon.status("ada@example.org") == "active"
        shoot(page, "12-unsubscribe")
        page.get_by_role("button", name="Unsubscribe").click()
        expect(page.get_by_role("heading", name="You are unsubscribed")).to_be_visible()
        assert daemon.status("ada@example.org") == "unsubscribed"
        shoot(page, "13-unsubscribed")

        # A tampered link: a clear error page.
        page.goto(daemon.base + "/manage/not-a-real-token")
        expect(page.get_by_role("heading", name="This link is not valid")).to_be_visible()
        shoot(page, "14-error")
        browser.close()

    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
    assert "0 sent" in daemon.cli("send", "--no-fetch", "--period", tomorrow)
    assert len(smtp_server_thread.handler.messages) == 2
    # The error page's 400 is logged by Chromium as a failed resource; nothing else may be.
    assert [p for p in problems if "400" not in p] == []
