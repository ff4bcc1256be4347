"""The JSON API: the pages' operations and rules, token-authenticated, errors as JSON."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from digestd import pipeline
from digestd.models import Status
from digestd.subscribers import make_input
from tests.webtools import DAY1, Site, link, links, site, token

__all__ = ["site"]


def bearer(t: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {t}"}


async def api_subscribe(site: Site, email: str = "ada@example.org", **fields: object) -> str:
    """Subscribe and confirm through the API; the manage token."""
    body = {"email": email, "topics": ["world models"], **fields}
    r = await site.client.post("/api/v1/subscribe", json=body)
    assert r.status_code == 202, r.text
    message = "check your inbox: the email there has a link to confirm"
    assert r.json() == {"status": "check-your-inbox", "message": message}
    confirm = token(link(site.messages[-1].parsed, "confirm"))
    r = await site.client.post("/api/v1/confirm", headers=bearer(confirm))
    assert r.status_code == 200 and r.json()["status"] == "active"
    return str(r.json()["manage_token"])


async def test_openapi_lists_every_operation(site: Site) -> None:
    schema = (await site.client.get("/openapi.json")).json()
    paths = schema["paths"]
    expected = {
        ("/api/v1/subscribe", "post"),
        ("/api/v1/confirm", "post"),
        ("/api/v1/subscription", "get"),
        ("/api/v1/subscription", "patch"),
        ("/api/v1/subscription", "delete"),
        ("/api/v1/subscription/preview", "get"),
        ("/api/v1/subscription/pause", "post"),
        ("/api/v1/subscription/resume", "post"),
        ("/api/v1/subscription/unsubscribe", "post"),
        ("/api/v1/feedback", "post"),
        ("/api/v1/subscription/votes/{paper_id}", "delete"),
    }
    assert {(p, m) for p, ops in paths.items() for m in ops} == expected
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert "Error" in schema["components"]["schemas"]
    assert not any(p.startswith(("/manage", "/confirm", "/subscribe")) for p in paths)
    assert (await site.client.get("/docs")).status_code == 404  # no CDN-loaded Swagger UI


async def test_manage_through_the_api(site: Site) -> None:
    manage = await api_subscribe(site, timezone="Asia/Tokyo", max_papers=4)
    got = (await site.client.get("/api/v1/subscription", headers=bearer(manage))).json()
    assert got["email"] == "ada@example.org" and got["status"] == "active"
    assert (got["topics"], got["timezone"], got["max_papers"]) == (
        ["world models"],
        "Asia/Tokyo",
        4,
    )
    assert got["schedule"] == "daily at 07:00 (Asia/Tokyo)" and got["votes"] == []

    r = await site.client.patch(
        "/api/v1/subscription",
        headers=bearer(manage),
        json={"topics": ["video generation"], "frequency": "weekly", "weekly_day": "friday"},
    )
    assert r.status_code == 200
    changed = r.json()
    assert changed["topics"] == ["video generation"] and changed["weekly_day"] == 4
    assert changed["timezone"] == "Asia/Tokyo"  # left out: kept

    await pipeline.fetch(site.services, DAY1, now=datetime.now(UTC))
    preview = await site.client.get("/api/v1/subscription/preview", headers=bearer(manage))
    body = preview.json()
    assert body["considered"] == 23 and body["papers"]
    assert all("video generation" in p["why"] for p in body["papers"])

    paused = await site.client.post("/api/v1/subscription/pause", headers=bearer(manage))
    assert paused.json()["status"] == "paused"
    resumed = await site.client.post("/api/v1/subscription/resume", headers=bearer(manage))
    assert resumed.json()["status"] == "active"


async def test_feedback_and_its_undo_through_the_api(site: Site) -> None:
    manage = await api_subscribe(site)
    now = datetime.now(UTC)
    await pipeline.fetch(site.services, DAY1, now=now)
    await pipeline.send_period(site.services, DAY1, now=now)
    paths = links(site.messages[-1].parsed, "feedback")
    r = await site.client.post("/api/v1/feedback", headers=bearer(token(paths[1])))
    assert r.status_code == 200
    vote = r.json()
    assert vote["vote"] == "less"
    got = (await site.client.get("/api/v1/subscription", headers=bearer(manage))).json()
    assert [(v["paper_id"], v["vote"]) for v in got["votes"]] == [(vote["paper_id"], "less")]
    assert got["votes"][0]["title"]
    undo = await site.client.delete(
        f"/api/v1/subscription/votes/{vote['paper_id']}", headers=bearer(manage)
    )
    assert undo.json() == {"status": "removed"}
    again = await site.client.delete(
        f"/api/v1/subscription/votes/{vote['paper_id']}", headers=bearer(manage)
    )
    assert again.status_code == 404 and again.json()["error"] == "not_found"


async def test_unsubscribe_and_delete_through_the_api(site: Site) -> None:
    manage = await api_subscribe(site)
    await pipeline.fetch(site.services, DAY1, now=datetime.now(UTC))
    await pipeline.send_period(site.services, DAY1, now=datetime.now(UTC))
    unsubscribe = token(link(site.messages[-1].parsed, "unsubscribe"))
    r = await site.client.post("/api/v1/subscription/unsubscribe", headers=bearer(unsubscribe))
    assert r.json() == {"status": "unsubscribed"}
    # An unsubscribe token (it sits in a mail header) cannot read the subscription.
    r = await site.client.get("/api/v1/subscription", headers=bearer(unsubscribe))
    assert r.status_code == 400 and r.json()["error"] == "invalid_link"
    r = await site.client.delete("/api/v1/subscription", headers=bearer(manage))
    assert r.json() == {"status": "deleted"}
    r = await site.client.get("/api/v1/subscription", headers=bearer(manage))
    assert r.status_code == 403 and r.json()["error"] == "revoked_link"
    assert site.services.store.count_events("deleted") == 1


async def test_the_api_answers_the_same_for_known_addresses(site: Site) -> None:
    site.services.store.add_subscriber(
        make_input("old@example.org", topics=["x"]), status=Status.ACTIVE
    )
    answers = []
    for address in ("old@example.org", "new@example.org"):
        r = await site.client.post("/api/v1/subscribe", json={"email": address, "topics": ["y"]})
        answers.append((r.status_code, r.json()))
    assert answers[0] == answers[1] and answers[0][0] == 202
    subjects = [m.parsed["Subject"] for m in site.messages]
    assert subjects == [
        "Your Paper digest subscription",
        "Confirm your subscription to Paper digest",
    ]
    assert site.services.store.subscriber("old@example.org").status == Status.ACTIVE


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"email": "a@b.org\r\nBcc: x@y.org", "topics": ["x"]}, 422, "must be one line"),
        ({"email": "nobody", "topics": ["x"]}, 422, "invalid email address"),
        (
            {"email": "a@b.org", "topics": ["x"], "timezone": "Nowhere/Land"},
            422,
            "unknown time zone",
        ),
        (
            {"email": "a@b.org", "topics": [f"t{i}" for i in range(10_000)]},
            413,
            "request body larger",
        ),
        (
            {"email": "a@b.org", "topics": [f"t{i}" for i in range(2_000)]},
            422,
            "at most 20 values for topic",
        ),
        ({"email": "a@b.org", "topics": ["x"], "admin": True}, 422, "admin: Extra inputs"),
        ({"email": "a@b.org", "topics": "x" * 2_000_000}, 413, "request body larger"),
        ({"email": "a@b.org", "topics": ["x"], "frequency": "hourly"}, 422, "frequency"),
    ],
)
async def test_invalid_requests_get_json_errors(
    site: Site, body: dict[str, object], status: int, message: str
) -> None:
    before = site.dump()
    r = await site.client.post("/api/v1/subscribe", json=body)
    assert r.status_code == status and r.headers["content-type"] == "application/json"
    assert message in r.json()["message"] and r.json()["error"]
    assert site.dump() == before and site.messages == []


async def test_tokens_are_checked(site: Site) -> None:
    manage = await api_subscribe(site)
    r = await site.client.get("/api/v1/subscription")
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert "Authorization: Bearer" in r.json()["message"]
    r = await site.client.get(
        "/api/v1/subscription",
        headers=bearer(manage[:-3] + ("AAA" if not manage.endswith("AAA") else "BBB")),
    )
    assert r.status_code == 400 and r.json() == {
        "error": "invalid_link",
        "message": "this link is not valid",
    }
    r = await site.client.post("/api/v1/confirm", headers=bearer(manage))
    assert r.status_code == 400 and "not meant for this page" in r.json()["message"]
    r = await site.client.post("/api/v1/feedback", headers=bearer(manage))
    assert r.status_code == 400
