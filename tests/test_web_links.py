"""Signed links: tampered, expired, wrong-purpose, revoked and orphaned tokens change nothing;
and opening any link (GET), as mail scanners do, changes nothing either."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from itsdangerous import TimestampSigner, URLSafeTimedSerializer

from digestd.models import Status
from digestd.subscribers import make_input
from tests.conftest import POSTGRES
from tests.webtools import Site, a_digest, confirmed, link, site, token

__all__ = ["site"]


def tampered(t: str) -> str:
    return t[:-3] + ("AAA" if not t.endswith("AAA") else "BBB")


def forged(site: Site, purpose: str, sub_id: int, version: int, *, age: float) -> str:
    """A token signed with the real key ``age`` seconds ago: an old link from an old email."""

    class Earlier(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time() - age)

    secret = site.services.config.web.secret_key_file.read_bytes().strip()
    s = URLSafeTimedSerializer(secret, salt="digestd-links", signer=Earlier)
    return str(s.dumps([purpose, sub_id, version, ""]))


async def test_tampered_wrong_purpose_and_unknown_tokens_change_nothing(site: Site) -> None:
    manage = await confirmed(site)
    t = token(manage)
    await a_digest(site)
    unsubscribe = link(site.messages[-1].parsed, "unsubscribe")
    before = site.dump()
    cases = [
        ("post", f"/manage/{tampered(t)}", 400, "This link is not valid"),
        ("post", f"/manage/{tampered(t)}/delete", 400, "This link is not valid"),
        ("post", f"/unsubscribe/{t}", 400, "not meant for this page"),  # a manage token
        ("post", f"/manage/{token(unsubscribe)}/unsubscribe", 400, "not meant for this page"),
        ("post", f"/confirm/{token(unsubscribe)}", 400, "not meant for this page"),
        ("post", "/feedback/nonsense", 400, "This link is not valid"),
        ("get", f"/manage/{tampered(t)}", 400, "This link is not valid"),
    ]
    for method, path, status, text in cases:
        r = await site.client.request(method, path, data={"List-Unsubscribe": "One-Click"})
        assert (r.status_code, text in r.text) == (status, True), path
        assert "text/html" in r.headers["content-type"] and "fresh link" in r.text
    assert site.dump() == before


async def test_expired_links_are_refused(site: Site) -> None:
    await site.subscribe("ada@example.org")
    sub = site.services.store.subscriber("ada@example.org")
    assert sub.id is not None
    old = forged(site, "confirm", sub.id, sub.token_version, age=3 * 86400 + 60)
    fresh = forged(site, "confirm", sub.id, sub.token_version, age=3 * 86400 - 60)
    r = await site.client.post(f"/confirm/{old}")
    assert r.status_code == 400 and "This link has expired" in r.text
    assert site.services.store.subscriber("ada@example.org").status == Status.PENDING
    assert (await site.client.post(f"/confirm/{fresh}")).status_code == 303


async def test_revoke_links_invalidates_every_earlier_link(site: Site, tmp_path: Path) -> None:
    manage = await confirmed(site)
    await a_digest(site)
    digest = site.messages[-1].parsed
    old_links = [link(digest, "manage"), link(digest, "unsubscribe"), link(digest, "feedback")]
    cfg = tmp_path / "digestd.toml"  # the file the site was built from
    command = [
        sys.executable,
        "-m",
        "digestd.cli",
        "--config",
        str(cfg),
        "revoke-links",
        "Ada@Example.org",
    ]
    r = await asyncio.to_thread(
        subprocess.run, command, capture_output=True, text=True, check=False
    )
    assert r.returncode == 0, r.stderr
    assert "revoked every link sent to ada@example.org" in r.stdout
    before = site.dump()
    for path in [manage, *old_links]:
        page = await site.client.get(path)
        assert page.status_code == 403 and "no longer valid" in page.text, path
        assert (await site.client.post(path)).status_code == 403
    assert site.dump() == before
    # A subscribe request for the address (after the resend interval) mails a fresh link.
    later = datetime.now(UTC) + timedelta(minutes=16)
    await site.app.state.web.subscriptions.request(
        make_input("ada@example.org", topics=["x"]), now=later
    )
    assert (await site.client.get(link(site.messages[-1].parsed, "manage"))).status_code == 200


async def test_links_of_a_deleted_subscriber_do_not_open_a_new_one(site: Site) -> None:
    manage = await confirmed(site, "ada@example.org")
    ada = site.services.store.subscriber("ada@example.org").id
    r = await site.client.post(manage + "/delete", data={"confirm": "yes"})
    assert r.status_code == 200 and "Your data is deleted" in r.text
    # SQLite hands the freed id to the next subscriber; the old link must not open it.
    await site.subscribe("bo@example.org")
    await site.client.post(link(site.messages[-1].parsed, "confirm"))
    if not POSTGRES:  # PostgreSQL sequences never hand an id out twice
        assert site.services.store.subscriber("bo@example.org").id == ada
    page = await site.client.get(manage)
    assert page.status_code == 403 and "bo@example.org" not in page.text


# -- GET never changes state ------------------------------------------------------------


async def test_opening_links_changes_nothing(site: Site) -> None:
    await site.subscribe("ada@example.org")
    confirm = link(site.messages[-1].parsed, "confirm")
    before = site.dump()
    assert (await site.client.get(confirm)).status_code == 200
    assert site.dump() == before  # still pending
    await site.client.post(confirm)
    await a_digest(site)
    digest = site.messages[-1].parsed
    paths = [link(digest, k) for k in ("manage", "unsubscribe", "feedback")]
    before = site.dump()
    for path in paths:
        for _ in range(3):  # a scanner opening every link, repeatedly
            assert (await site.client.get(path)).status_code == 200
        assert (await site.client.head(path)).status_code in (200, 405)
    assert site.dump() == before
