"""Acting on what delivery reports and complaints say: bounces counted like the relay's own
5xx replies, complaints unsubscribing at once. Only a signed token of ours names the
subscriber; a report without one changes nothing."""

from __future__ import annotations

import logging
import re
from datetime import datetime, timedelta

from digestd.errors import NotFound
from digestd.inbound import commands, reports
from digestd.inbound.addresses import Addresses, Recipient
from digestd.models import Status, Subscriber
from digestd.services import Services
from digestd.subscription import Subscriptions
from digestd.tokens import TokenError

log = logging.getLogger(__name__)

#: a report about a delivery older than this is not about anything we still act on
BOUNCE_WINDOW = timedelta(days=30)
_ADDRESS = re.compile(r"[^\s<>@]+@[^\s<>@]+")


def loggable(text: object) -> str:
    """``text`` without addresses: logs carry subscriber ids, never addresses."""
    return _ADDRESS.sub("(address)", str(text))


def record_bounce(
    services: Services, recipient: Recipient, report: reports.Report, now: datetime
) -> None:
    """Count a report sent to a digest's VERP address against its subscriber: failed
    deliveries as bounces (5.1.x with the no-such-user limit), delays as soft bounces."""
    store, limits = services.store, services.config.delivery
    failure = report.worst
    if failure is None:
        log.info("delivery %d: report says delivered or relayed", recipient.delivery_id)
        return
    delivery = store.delivery_by_id(recipient.delivery_id)
    if delivery is None or delivery.subscriber_id != recipient.subscriber_id:
        log.info("delivery %d: bounce for a delivery no longer stored", recipient.delivery_id)
        return
    assert delivery.id is not None
    if now - (delivery.sent_at or delivery.created_at) > BOUNCE_WINDOW:
        log.info("delivery %d: bounce for a delivery too old to count", delivery.id)
        return
    kind = "bounce" if failure.failed else "soft-bounce"
    marker = f"delivery {delivery.id}:"
    if store.has_event(delivery.subscriber_id, kind, marker):  # the same report twice
        log.info("delivery %d: %s already recorded", delivery.id, kind)
        return
    reason = f"{marker} {report.kind} {failure.status or 'no status'} {failure.diagnostic}"
    bounced = store.record_bounce(
        delivery.subscriber_id,
        hard=failure.failed,
        reason=reason.strip()[:1000],
        limit=limits.bounce_limit_no_such_user if failure.no_such_user else limits.bounce_limit,
    )
    log.warning(
        "subscriber %d: %s by mail for delivery %d (%s)%s",
        delivery.subscriber_id, kind, delivery.id, failure.status or report.kind,
        " (now marked bounced)" if bounced else "",
    )  # fmt: skip


def record_complaint(
    services: Services,
    subscriptions: Subscriptions,
    recipient: Recipient,
    report: reports.Report,
) -> None:
    """An abuse report: the subscriber it names is unsubscribed at once, and it is recorded."""
    agent = loggable(report.user_agent or "unknown")
    if report.feedback_type not in reports.COMPLAINTS:
        log.info("%s report (%s) ignored", report.feedback_type or "untyped", agent)
        return
    sub = complainant(services, recipient, report)
    if sub is None:
        log.warning(
            "%s report (%s) names no subscriber of ours; ignored", report.feedback_type, agent
        )
        return
    assert sub.id is not None
    if sub.status in (Status.ACTIVE, Status.PAUSED):
        subscriptions.set_status(sub, Status.UNSUBSCRIBED, via="complaint")
    services.store.record_event(
        "complaint", f"{report.feedback_type} report from {agent}", subscriber_id=sub.id
    )
    log.warning(
        "subscriber %d: %s complaint (%s); unsubscribed", sub.id, report.feedback_type, agent
    )


def complainant(
    services: Services, recipient: Recipient, report: reports.Report
) -> Subscriber | None:
    """The subscriber a complaint is about, from the first signed token it carries: the
    address it was sent to, the envelope sender it reports (VERP), or the reported message's
    Return-Path, Reply-To or List-Unsubscribe (reports often hide the recipient)."""
    found = [recipient] if recipient.valid and recipient.subscriber_id else []
    candidates = [report.original_mail_from]
    if report.original is not None:
        for name in ("Return-Path", "Reply-To", "List-Unsubscribe"):
            candidates.append(commands.header(report.original, name))
    addresses = Addresses.for_config(services.config, services.signer)
    # Only our own links: their tokens are signed, and name the subscriber they were for.
    base = re.escape(services.config.web.base_url)
    unsubscribe_url = re.compile(base + r"/unsubscribe/([A-Za-z0-9_\-.]+)")
    for text in candidates:
        for part in re.split(r"[\s,<>]+", text.replace("mailto:", " ")):
            parsed = addresses.parse(part.split("?")[0]) if "@" in part else None
            if parsed is not None and parsed.valid and parsed.subscriber_id:
                found.append(parsed)
        for token in unsubscribe_url.findall(text):
            try:
                claim = services.signer.load(token, "unsubscribe")
            except TokenError:
                continue
            found.append(Recipient("unsubscribe", claim.subscriber_id, claim.version))
    for candidate in found:
        try:
            return services.store.subscriber_by_id(candidate.subscriber_id)
        except NotFound:
            continue
    return None
