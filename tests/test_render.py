"""Tests for digestd.render over real Daily Papers responses bundled in digestd/sample."""

from __future__ import annotations

import binascii
import dataclasses
import email
import email.policy
import json
import logging
import random
import re
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

import digestd
from digestd import render
from digestd.errors import ConfigError, InvalidInput
from digestd.matcher import Match
from digestd.paper import Paper
from digestd.render import (
    TEMPLATES_DIR,
    DigestInput,
    Renderer,
    _prepare,
    css_inliner,
    email_environment,
)

SAMPLE_DIR = Path(digestd.__file__).parent / "sample"
# Signed tokens make real links long (about 90 characters of token).
TOKEN = "eyJzIjo0MiwicCI6InVuc3ViIn0.ZsXQ3A.kP9fJ2mQx7vT1bN8cL4wR6yH0dG5sA3eU-iO2zK"
UNSUBSCRIBE = f"https://digest.example.org/unsubscribe/{TOKEN}"
MAILTO = "mailto:unsubscribe+k3y@digest.example.org?subject=unsubscribe"


def _paper(entry: dict[str, Any]) -> Paper:
    p = entry["paper"]
    return Paper(
        id=p["id"],
        title=p["title"],
        abstract=p.get("summary", ""),
        authors=tuple(a["name"] for a in p.get("authors", [])),
        summary=p.get("ai_summary", ""),
        keywords=tuple(p.get("ai_keywords", [])),
        code_url=p.get("githubRepo", ""),
        project_url=p.get("projectPage", ""),
        upvotes=p.get("upvotes", 0),
        source="hf-daily-papers",
    )


def _load_sample() -> list[Paper]:
    papers: dict[str, Paper] = {}  # the same paper can appear on two days
    for path in sorted(SAMPLE_DIR.glob("*.json")):
        for entry in json.loads(path.read_text(encoding="utf-8")):
            papers.setdefault(entry["paper"]["id"], _paper(entry))
    return list(papers.values())


SAMPLE = _load_sample()


def _match(paper: Paper) -> Match:
    return Match(paper, 0.8, f'Title matches "agents"; by {paper.authors[0]}', ("topic",))


def _input(papers: list[Paper], **changes: Any) -> DigestInput:
    d = DigestInput(
        to="reader@example.com",
        sender="Paper digest <digest@example.org>",
        period=date(2026, 8, 21),
        matches=[_match(p) for p in papers],
        message_id="<20260821.s42.a1b2c3@digest.example.org>",
        list_id="Paper digest <digest.example.org>",
        manage_url="https://digest.example.org/manage?t=m4n4g3",
        unsubscribe_url=UNSUBSCRIBE,
        date=datetime(2026, 8, 21, 7, 30, tzinfo=UTC),
    )
    return dataclasses.replace(d, **changes)


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return Renderer()


def _roundtrip(msg: EmailMessage) -> EmailMessage:
    parsed = email.message_from_bytes(msg.as_bytes(), policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def _bodies(msg: EmailMessage) -> tuple[str, str]:
    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    text, html = (p.get_content() for p in parts)
    assert isinstance(text, str) and isinstance(html, str)
    return text.replace("\r\n", "\n"), html.replace("\r\n", "\n")  # the wire has CRLF


def _with_abstract(text: str, **changes: Any) -> Paper:
    # summary="" so the abstract is what the digest shows
    return dataclasses.replace(SAMPLE[0], abstract=text, summary="", **changes)


def test_sample_is_real_data() -> None:
    assert len(SAMPLE) >= 25
    assert TEMPLATES_DIR.is_dir()


def test_multipart_alternative_text_first(renderer: Renderer) -> None:
    msg = _roundtrip(renderer.render(_input(SAMPLE[:3])))
    assert msg.get_content_type() == "multipart/alternative"
    assert all(p.get_content_charset() == "utf-8" for p in msg.iter_parts())
    text, html = _bodies(msg)
    assert text.startswith("Paper digest — August 21, 2026\n3 papers picked for you\n")
    assert html.lstrip().lower().startswith("<!doctype html>")


def test_headers_exactly_as_specified(renderer: Renderer) -> None:
    raw = renderer.render(_input(SAMPLE[:3], unsubscribe_mailto=MAILTO)).as_bytes()
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["From"] == "Paper digest <digest@example.org>"
    assert msg["To"] == "reader@example.com"
    assert msg["Subject"] == "Paper digest — 3 papers for Aug 21, 2026"
    assert msg["Date"] == "Fri, 21 Aug 2026 07:30:00 +0000"
    assert msg["Message-ID"] == "<20260821.s42.a1b2c3@digest.example.org>"
    assert msg["List-Id"] == "Paper digest <digest.example.org>"
    assert msg["List-Unsubscribe"] == f"<{UNSUBSCRIBE}>, <{MAILTO}>"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert msg["MIME-Version"] == "1.0"
    assert raw.count(b"\n") == raw.count(b"\r\n")  # CRLF throughout
    assert raw.count(b"MIME-Version") == 1
    # Written as is, not RFC 2047-encoded, however long the signed URL
    assert f"\r\nList-Unsubscribe: <{UNSUBSCRIBE}>,\r\n <{MAILTO}>\r\n".encode() in raw


def test_the_wire_bytes_are_the_message_and_keep_list_unsubscribe_whole(
    renderer: Renderer,
) -> None:
    # Digests go out as render_bytes(), never re-flattened by another generator (aiosmtplib's
    # policy.default would RFC 2047-encode a long List-Unsubscribe).
    d = _input(SAMPLE[:2])
    raw = renderer.render_bytes(d)
    assert f"\r\nList-Unsubscribe: <{UNSUBSCRIBE}>\r\n".encode() in raw
    assert raw.isascii() and raw.count(b"\n") == raw.count(b"\r\n")
    assert max(len(line) for line in raw.split(b"\r\n") if b"unsubscribe/" not in line) <= 78
    wire = email.message_from_bytes(raw, policy=email.policy.default)
    msg = renderer.render(d)
    for name in ("From", "To", "Subject", "Date", "Message-ID", "List-Id", "List-Unsubscribe"):
        assert wire[name] == msg[name]
    parts = renderer.render_parts(d)
    for kind, text in (("plain", parts.text), ("html", parts.html)):
        body = wire.get_body((kind,))
        assert body is not None
        assert body.get_content().replace("\r\n", "\n") == text.rstrip("\n") + "\n"


@pytest.mark.parametrize(("mailto", "expected"), [("", f"<{UNSUBSCRIBE}>"), (MAILTO, None)])
def test_list_unsubscribe_with_and_without_mailto(
    renderer: Renderer, mailto: str, expected: str | None
) -> None:
    msg = _roundtrip(renderer.render(_input(SAMPLE[:2], unsubscribe_mailto=mailto)))
    assert msg["List-Unsubscribe"] == (expected or f"<{UNSUBSCRIBE}>, <{MAILTO}>")
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


@pytest.mark.parametrize(
    ("count", "subject"),
    [
        (1, "Paper digest — 1 paper for Aug 21, 2026"),
        (2, "Paper digest — 2 papers for Aug 21, 2026"),
        (25, "Paper digest — 25 papers for Aug 21, 2026"),
    ],
)
def test_subject_singular_and_plural(renderer: Renderer, count: int, subject: str) -> None:
    msg = _roundtrip(renderer.render(_input(SAMPLE[:count])))
    assert msg["Subject"] == subject
    text, _ = _bodies(msg)
    assert f"{count} paper{'' if count == 1 else 's'} picked for you" in text


def test_date_defaults_to_now_and_must_be_aware(renderer: Renderer) -> None:
    msg = _roundtrip(renderer.render(_input(SAMPLE[:1], date=None)))
    assert abs(msg["Date"].datetime - datetime.now(UTC)) < timedelta(minutes=1)
    cet = datetime(2026, 8, 21, 8, 0, tzinfo=timezone(timedelta(hours=2)))
    assert _roundtrip(renderer.render(_input(SAMPLE[:1], date=cet)))["Date"].datetime == cet
    with pytest.raises(InvalidInput, match="timezone"):
        renderer.render(_input(SAMPLE[:1], date=datetime(2026, 8, 21, 7, 0)))


def test_links_numbers_and_why_per_paper(renderer: Renderer) -> None:
    papers = SAMPLE[:10]
    assert any(p.code_url for p in papers) and any(p.project_url for p in papers)
    text, html = _bodies(_roundtrip(renderer.render(_input(papers))))
    for number, p in enumerate(papers, 1):
        urls = [p.abs_url, p.pdf_url, p.hf_url, p.code_url, p.project_url]
        for url in filter(None, urls):
            assert f'href="{url}"' in html
            assert re.search(rf"^    \S[^\n]*: +{re.escape(url)}$", text, re.MULTILINE)
        assert re.search(rf"^{number:2d}\. ", text, re.MULTILINE)
        assert f">{number}.</span>" in html
        assert f'Why: Title matches "agents"; by {p.authors[0]}' in " ".join(text.split())
        assert f'Title matches "agents"; by {p.authors[0]}' in html
    assert html.count(">Code</a>") == sum(1 for p in papers if p.code_url)
    assert html.count(">Project page</a>") == sum(1 for p in papers if p.project_url)
    assert "Manage your topics" in text and "Manage your topics</a>" in html
    assert f"Unsubscribe:        {UNSUBSCRIBE}" in text and f'href="{UNSUBSCRIBE}"' in html
    assert "reader@example.com is subscribed to Paper digest" in " ".join(html.split())


def test_feedback_links_only_when_given(renderer: Renderer) -> None:
    p = SAMPLE[0]
    more, less = "https://digest.example.org/more/x1", "https://digest.example.org/less/x1"
    d = _input([p, SAMPLE[1]], feedback_urls={p.id: (more, less)})
    text, html = _bodies(_roundtrip(renderer.render(d)))
    assert f'href="{more}"' in html and f'href="{less}"' in html
    assert html.count("More like this</a>") == 1
    assert more in text and less in text


def test_feed_markup_escaped_in_html_literal_in_text(renderer: Renderer) -> None:
    abstract = r"We train with <think> tags </answer> <EOS> \textbf{Ours} costs $60 & more."
    text, html = _bodies(_roundtrip(renderer.render(_input([_with_abstract(abstract)]))))
    assert "&lt;think&gt; tags &lt;/answer&gt; &lt;EOS&gt; \\textbf{Ours}" in html
    assert "costs $60 &amp; more." in html
    assert "<think>" not in html and "<EOS>" not in html
    assert abstract in " ".join(text.split())


@pytest.mark.parametrize("marker", ["</think>", "<|im_end|>", r"\textbf{", " & "])
def test_real_abstract_quirks_escaped(renderer: Renderer, marker: str) -> None:
    paper = next(p for p in SAMPLE if marker in p.abstract)
    # Start the excerpt shortly before the marker so it survives the 300-character trim.
    start = paper.abstract.rfind(" ", 0, max(paper.abstract.index(marker) - 60, 1)) + 1
    d = _input([_with_abstract(paper.abstract[start:])])
    text, html = _bodies(_roundtrip(renderer.render(d)))
    escaped = marker.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    assert escaped in html
    assert marker in " ".join(text.split())
    if "<" in marker:
        assert marker not in html


def test_real_title_with_dollar_shown_as_is(renderer: Renderer) -> None:
    paper = next(p for p in SAMPLE if "$60 GPUs" in p.title)
    text, html = _bodies(_roundtrip(renderer.render(_input([paper]))))
    assert f">{paper.title}</a>" in html
    assert paper.title in " ".join(text.split())


def test_script_title_escaped(renderer: Renderer) -> None:
    paper = dataclasses.replace(SAMPLE[0], title="<script>alert(1)</script> Attention & Co")
    text, html = _bodies(_roundtrip(renderer.render(_input([paper]))))
    assert "&lt;script&gt;alert(1)&lt;/script&gt; Attention &amp; Co" in html
    assert "<script" not in html.lower()
    assert "<script>alert(1)</script> Attention & Co" in text


@pytest.mark.parametrize(
    "bad",
    ["javascript:alert(1)", "JavaScript:alert(document.cookie)", "data:text/html,<b>x</b>",
     "//evil.example/x", "vbscript:msgbox", "https://evil.example/\"onmouseover=alert(1)"],
)  # fmt: skip
def test_unsafe_feed_urls_never_become_links(renderer: Renderer, bad: str) -> None:
    paper = dataclasses.replace(SAMPLE[0], code_url=bad, project_url=bad)
    text, html = _bodies(_roundtrip(renderer.render(_input([paper]))))
    hrefs = re.findall(r'href="([^"]*)"', html)
    assert hrefs and all(h.startswith("https://") for h in hrefs)
    assert ">Code</a>" not in html and ">Project page</a>" not in html
    assert bad not in text and "Code:" not in text


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("to", "reader@example.com\r\nBcc: victim@example.net"),
        ("to", "reader@example.com\nBcc: victim@example.net"),
        ("to", "reader@example.com\x00"),
        ("to", "not-an-address"),
        ("to", "reader@example.com, other@example.net"),
        ("sender", "Paper digest <digest@example.org>\r\nBcc: x@example.net"),
        ("sender", "Paper digest"),
        ("unsubscribe_url", "https://digest.example.org/u\r\nBcc: victim@example.net"),
        ("unsubscribe_url", "javascript:alert(1)"),
        ("unsubscribe_url", "https://digest.example.org/u>, <https://evil.example"),
        ("unsubscribe_url", "https://digest.example.org/ü"),
        ("unsubscribe_mailto", "https://digest.example.org/u"),
        ("unsubscribe_mailto", "mailto:u@digest.example.org\r\nBcc: x@example.net"),
        ("manage_url", "ftp://digest.example.org/manage"),
        ("message_id", "<a@digest.example.org>\r\nBcc: x@example.net"),
        ("message_id", "no-brackets@digest.example.org"),
        ("message_id", "<20260821.ü@digest.example.org>"),
        ("list_id", "Paper digest <digest.example.org>\nBcc: x@example.net"),
        ("list_id", "Paper digest"),
        ("list_id", "Paper digest <dïgest.example.org>"),
        ("site_name", "Paper digest\r\nBcc: x@example.net"),
    ],
)
def test_bad_header_input_raises(renderer: Renderer, field: str, value: str) -> None:
    d = _input(SAMPLE[:1], **{field: value})
    with pytest.raises(InvalidInput, match=field):
        renderer.render(d)
    for part in (renderer.render_html, renderer.render_text):
        with pytest.raises(ValueError, match=field):  # InvalidInput is a ValueError
            part(d)


@pytest.mark.parametrize("use_summary", [True, False])
def test_25_papers_stay_under_100_kb(renderer: Renderer, use_summary: bool) -> None:
    # Longest abstracts first; without the AI summary each shows a 300-character excerpt.
    papers = sorted(SAMPLE, key=lambda p: len(p.abstract), reverse=True)[:25]
    if not use_summary:
        papers = [dataclasses.replace(p, summary="") for p in papers]
    base = "https://digest.example.org/feedback"
    feedback = {
        p.id: (f"{base}/more/{p.id}/{TOKEN}", f"{base}/less/{p.id}/{TOKEN}") for p in papers
    }
    msg = renderer.render(_input(papers, feedback_urls=feedback, unsubscribe_mailto=MAILTO))
    raw = msg.as_bytes()
    assert len(raw) < 100_000
    _, html = _bodies(_roundtrip(msg))
    assert len(html.encode()) < 100_000  # Gmail clips past ~102 KB, hiding the unsubscribe link


def test_abstract_trimmed_at_word_boundary(renderer: Renderer) -> None:
    paper = max(SAMPLE, key=lambda p: len(p.abstract))
    d = _input([dataclasses.replace(paper, summary="")])
    _, html = _bodies(_roundtrip(renderer.render(d)))
    blurb = re.search(r'<p class="blurb"[^>]*>([^<]*)</p>', html)
    assert blurb is not None
    shown = blurb.group(1)
    assert shown.endswith("…") and len(shown) <= 301
    assert paper.abstract.startswith(shown[:-1]) and shown[-2] != " "
    assert paper.abstract[len(shown) - 1] in " ,.;:"  # the cut fell between words


def test_ai_summary_preferred_over_abstract(renderer: Renderer) -> None:
    paper = next(p for p in SAMPLE if p.summary)
    text, html = _bodies(_roundtrip(renderer.render(_input([paper]))))
    assert paper.summary in " ".join(text.split())
    assert paper.abstract[:80] not in html


def test_authors_shortened() -> None:
    many = next(p for p in SAMPLE if len(p.authors) > 10)
    few = dataclasses.replace(many, authors=many.authors[:4])
    text = Renderer().render_text(_input([many, few]))
    first3 = ", ".join(many.authors[:3])
    assert f"{first3} and {len(many.authors) - 3} more" in text
    assert ", ".join(many.authors[:4]) in text


def test_text_part_wrapped_urls_whole(renderer: Renderer) -> None:
    text = renderer.render_text(_input(SAMPLE[:25]))
    for line in text.splitlines():
        if "://" not in line:
            assert len(line) <= 76, line
    for p in SAMPLE[:25]:
        assert re.search(rf"^ +PDF: +{re.escape(p.pdf_url)}$", text, re.MULTILINE)


def test_html_is_email_safe(renderer: Renderer) -> None:
    html = renderer.render_html(_input(SAMPLE[:3]))
    assert '<html lang="en"' in html
    assert '<meta name="color-scheme" content="light dark">' in html
    assert '<meta name="supported-color-schemes" content="light dark">' in html
    assert "@media (prefers-color-scheme: dark)" in html and "@media (max-width" in html
    body = re.search(r"<body[^>]*>", html)
    assert body is not None and "background-color:" in body.group(0)
    assert "max-width:640px" in html
    preheader = re.search(r'<div class="preheader" style="([^"]*)">([^<]*)</div>', html)
    assert preheader is not None and "display:none" in preheader.group(1)
    assert SAMPLE[0].title[:40] in preheader.group(2)
    # Only media queries remain in <style>; everything else was inlined.
    style = re.search(r"<style>(.*?)</style>", html, re.DOTALL)
    assert style is not None
    assert re.sub(r"@media[^{]*\{(?:[^{}]*\{[^}]*\})*\s*\}", "", style.group(1)).strip() == ""


def test_empty_digest_renders(renderer: Renderer) -> None:
    text, html = _bodies(_roundtrip(renderer.render(_input([]))))
    # An empty digest is the opt-in "nothing matched" note.
    assert "Nothing new matched your topics" in text and "No papers today." in html
    assert "picked for you" not in text


def test_override_dir_replaces_templates_by_name(tmp_path: Path) -> None:
    (tmp_path / "digest.txt").write_text("Custom: {{ count }} for {{ recipient }}\n")
    (tmp_path / "_paper.html").write_text("<p class=custom>{{ item.title }}</p>\n")
    r = Renderer(tmp_path)
    d = _input(SAMPLE[:2])
    assert r.render_text(d) == "Custom: 2 for reader@example.com\n"
    html = r.render_html(d)
    assert html.count('<p class="custom">') == 2 and "Manage your topics" in html


def test_override_with_bad_template_or_dir_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        Renderer(tmp_path / "missing")
    (tmp_path / "digest.txt").write_text("{% for x in %}\n")
    with pytest.raises(ConfigError, match=r"digest\.txt:1"):
        Renderer(tmp_path)


# Pre-rendering (blocks and frames inlined once, values filled in per digest) must give what
# recipients got from the full render: Jinja renders digest.html, css_inline the whole document.

WHYS = [
    'Title matches "agents"; by Kai Chen',
    "<script>alert('x')</script> & \"quotes\" <b>bold</b> &amp; &lt;",
    "",
    "Odd characters: \x01 \x7f \x80 \ufeff \u2014 😀 > < &",
    "Matches 'diffusion' > \"transformers\"",
]


def _full_render(d: DigestInput, template_dir: Path | None = None) -> tuple[str, str]:
    env = email_environment(template_dir)
    context = _prepare(d)[1]
    html = css_inliner().inline(env.get_template("digest.html").render(context))
    return env.get_template("digest.txt").render(context), str(html)


def _varied_inputs() -> Iterator[DigestInput]:
    """Digests of 0-25 real papers, each at many positions across them, with every shape of
    item (why line or not; both, one or no feedback links; links dropped) and frame."""
    odd = dataclasses.replace(SAMPLE[5], code_url="javascript:alert(1)", project_url="")
    papers = [odd, *SAMPLE[:40]]
    base = "https://digest.example.org/feedback"
    for n in range(26):
        start = 7 * n % len(papers)
        chosen = (papers[start:] + papers[:start])[:n]
        feedback = {}
        for i, p in enumerate(chosen):
            more, less = f"{base}/more/{p.id}?t={n}&a=1", f"{base}/less/{p.id}/{TOKEN}"
            feedback[p.id] = [(more, less), (more, ""), ("", less), ("", "")][(i + n) % 4]
            if (i + n) % 5 == 4:
                del feedback[p.id]
        yield _input(
            [],
            to="Reader O'Neil <reader@example.com>" if n % 3 else "reader@example.com",
            matches=[Match(p, 0.5, WHYS[(i * 3 + n) % len(WHYS)]) for i, p in enumerate(chosen)],
            feedback_urls=feedback,
            reply_to="Paper digest <reply+7.x@digest.example.org>" if n % 2 else "",
            unsubscribe_mailto=MAILTO if n % 4 == 1 else "",
            site_name='Papers & <more> "quoted"' if n % 5 == 2 else "Paper digest",
            manage_url=f"https://digest.example.org/manage?t={n}&x=\u00e9",
        )
    # The inliner's HTML parser drops a NUL: a digest with one is not pre-rendered.
    yield _input(SAMPLE[:3], matches=[Match(p, 0.5, f"NUL \x00 {p.id}") for p in SAMPLE[:3]])


def test_prerendered_digests_equal_full_renders(monkeypatch: pytest.MonkeyPatch) -> None:
    renderer = Renderer()
    assert renderer._pre is not None  # the stock templates fit
    full_renders = []
    full_html = renderer._full_html

    def counted(context: dict[str, Any]) -> str:
        full_renders.append(context)
        return full_html(context)

    monkeypatch.setattr(renderer, "_full_html", counted)
    inputs = list(_varied_inputs())
    for d in inputs + inputs[::-1]:  # the second pass reuses every block and frame
        text, html = _full_render(d)
        parts = renderer.render_parts(d)
        assert parts.html == html
        assert parts.text == text
        wire = email.message_from_bytes(renderer.render_bytes(d), policy=email.policy.default)
        for kind, expected in (("plain", text), ("html", html)):
            body = wire.get_body((kind,))
            assert body is not None
            assert body.get_content().replace("\r\n", "\n") == expected.rstrip("\n") + "\n"
    assert renderer._pre is not None
    assert {c["items"][0].why[:5] for c in full_renders} == {"NUL \x00"}  # and no other


FITTING_PAPER = """<div class="paper"><b>#{{ item.number }}</b> {{ item.title }}
{% if item.why %}<i title="Why: {{ item.why }}">{{ item.why }}</i>{% endif %}
{% for link in item.links + item.feedback %}<a href="{{ link.url }}">{{ link.label }}</a>
{% endfor %}</div>
"""


def test_paper_override_is_prerendered_and_shown(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "_paper.html").write_text(FITTING_PAPER)
    renderer = Renderer(tmp_path)
    for d in _varied_inputs():
        html = _full_render(d, tmp_path)[1]
        assert renderer.render_html(d) == html
        assert html.count('<div class="paper">') == len(d.matches)
    assert renderer._pre is not None
    assert "pre-rendering" not in caplog.text


def _style_rule(rule: str) -> str:
    return (TEMPLATES_DIR / "digest.html").read_text().replace("</style>", f"{rule}\n</style>")


@pytest.mark.parametrize(
    ("name", "source"),
    [
        ("_paper.html", "<p>{{ item.why|upper }} {{ item.title }}</p>"),
        ("_paper.html", "<p>{% if item.number == 1 %}Top pick: {% endif %}{{ item.title }}</p>"),
        ("_paper.html", "<p>{{ item.number ~ '.' }} {{ item.title }}</p>"),
        ("_paper.html", "<p>{{ item.why|safe }}</p>"),
        ("_paper.html", "<p>{{ item.title }}</p><p>{{ item.why|length }}</p>"),
        ("digest.html", _style_rule("tr:nth-child(even) > .item { background-color: #fafafa; }")),
        ("digest.html", _style_rule("a[href^='https://digest'] { color: red; }")),
        ("digest.html", "<p>{{ items|length }} papers</p>{% for item in items %}{{ item.title }}"
         "{% include '_paper.html' %}{% endfor %}"),
        ("digest.html", "<table>{% for item in items %}<tr><td>{{ loop.index }}</td><td>"
         "{% include '_paper.html' %}</td></tr>{% endfor %}</table>"),
        ("digest.html", "<table>{% for item in items %}<tr><td>{{ item.title }}</td><td>"
         "{% include '_paper.html' %}</td></tr>{% endfor %}</table>"),
    ],
)  # fmt: skip
def test_overrides_that_do_not_fit_prerendering_are_rendered_in_full(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, name: str, source: str
) -> None:
    (tmp_path / name).write_text(source)
    renderer = Renderer(tmp_path)
    with caplog.at_level(logging.WARNING, logger="digestd.render"):
        for d in _varied_inputs():
            assert renderer.render_html(d) == _full_render(d, tmp_path)[1]
    assert renderer._pre is None
    assert "does not fit pre-rendering" in caplog.text


def test_override_found_unfit_while_sending_falls_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Fits every sample checked at the first digest; not a digest with a paper on "Zeta".
    (tmp_path / "_paper.html").write_text(
        '<p>{% if item.title.startswith("Zeta") %}{{ item.why|upper }}{% endif %}'
        "{{ item.title }} {{ item.why }}</p>"
    )
    renderer = Renderer(tmp_path)
    d = _input(SAMPLE[:3])
    assert renderer.render_html(d) == _full_render(d, tmp_path)[1]
    assert renderer._pre is not None
    zeta = _input([SAMPLE[0], dataclasses.replace(SAMPLE[1], title="Zeta functions")])
    with caplog.at_level(logging.WARNING, logger="digestd.render"):
        assert renderer.render_html(zeta) == _full_render(zeta, tmp_path)[1]
    assert renderer._pre is None and "does not fit pre-rendering" in caplog.text
    assert renderer.render_html(d) == _full_render(d, tmp_path)[1]


def _reference_qp(body: str) -> bytes:
    body = body.replace("\r\n", "\n").replace("\r", "\n")
    if not body.endswith("\n"):
        body += "\n"
    encoded = binascii.b2a_qp(body.encode(), quotetabs=False, istext=True, header=False)
    return encoded.replace(b"\n", b"\r\n")


def test_quoted_printable_line_by_line_is_the_whole_body_but_for_leading_dots() -> None:
    rng = random.Random(7)
    chars = "ab =.\t\n\r\xe9\u2014<>\x00"
    bodies = ["", "\n", ".", ".\n", "a" * 75 + "=", "a" * 76 + " ", "a" * 300 + " \nb", "x\r\ny\r"]
    bodies += [".a", "a" * 75 + ".org", "a" * 74 + "=.b", "a" * 75 + "." * 200, "a" * 75 + ".\xe9"]
    bodies += ["a" * 73 + "\xe9" + "." * 80 + " ", "." * 76 + "\n." + "=" * 30 + "."]
    bodies += ["".join(rng.choice(chars) for _ in range(rng.randint(0, 400))) for _ in range(3000)]
    parts = Renderer().render_parts(_input(SAMPLE[:25], reply_to="r@example.org"))
    bodies += [parts.text, parts.html]
    dotted = 0
    for body in bodies + bodies:  # the second time from the cache
        encoded, reference = render._qp(body), _reference_qp(body)
        lines = encoded.split(b"\r\n")
        # Where QP would start a line with a dot (SMTP doubles it), that line is broken again
        # with the dot as =2E; it still decodes to the body, in lines of at most 76.
        assert not any(line.startswith(b".") for line in lines), repr(body)
        # (b2a_qp itself writes 78 where it escapes a space ending a long line)
        longest = max(76, *map(len, reference.split(b"\r\n")))
        assert max(map(len, lines)) <= longest and encoded.endswith(b"\r\n")
        assert _decoded(encoded) == _decoded(reference), repr(body)
        if encoded != reference:
            dotted += 1
            assert any(line.startswith(b".") for line in reference.split(b"\r\n"))
    assert dotted > 100


def _decoded(qp: bytes) -> bytes:
    return binascii.a2b_qp(qp.replace(b"\r\n", b"\n"))


def test_wire_bytes_need_nothing_done_for_smtp() -> None:
    renderer = Renderer()
    escaped = 0
    for n in range(1, 80):  # QP breaks a line before a dot for some of these addresses
        d = _input(SAMPLE[: 1 + n % 7], to=f"{'r' * n}@example.org", reply_to="r@example.org")
        wire = renderer.render_bytes(d)
        assert isinstance(wire, render.Wire)
        assert not wire.startswith(b".") and b"\n." not in wire and wire.endswith(b"\r\n")
        assert wire.count(b"\n") == wire.count(b"\r\n") == wire.count(b"\r")
        escaped += b"=2E" in wire
    assert escaped


PLAIN_ADDRESSES = [
    "reader@example.com", "Paper digest <digest@example.org>", "O'Neil Jr <o'neil@x.example>",
    "a.b+c@d-e.example.org", "#!$%&'*+/=^_`{|}~-@example.org", "Name <a@b>", "x@localhost",
]  # fmt: skip
OTHER_ADDRESSES = [
    '"Quoted, Name" <q@example.org>', "Name  <two-spaces@example.org>", " lead@example.org",
    "=?utf-8?q?abc?=@example.org", "Ünïcode <u@example.org>", "a..b@example.org",
    "(comment) c@example.org", "J. Doe <j@example.org>", "a@b.c, d@e.f", "not-an-address",
]  # fmt: skip


def test_address_shortcut_reads_addresses_as_the_stdlib_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def read(value: str) -> tuple[str, ...] | str:
        try:
            a = render._address("to", value)
        except InvalidInput as exc:
            return str(exc)
        return a.display_name, a.username, a.domain, str(a)

    assert all(render._PLAIN_ADDRESS.fullmatch(a) for a in PLAIN_ADDRESSES)
    assert not any(render._PLAIN_ADDRESS.fullmatch(a) for a in OTHER_ADDRESSES)
    fast = [read(a) for a in PLAIN_ADDRESSES]
    monkeypatch.setattr(render, "_PLAIN_ADDRESS", re.compile("(?!)"))
    assert fast == [read(a) for a in PLAIN_ADDRESSES]


def test_url_shortcut_accepts_only_what_urlsplit_accepts(monkeypatch: pytest.MonkeyPatch) -> None:
    urls = [
        UNSUBSCRIBE, "https://arxiv.org/abs/2608.14391", "http://x.org", "https://x.org/?a=1&b=ü#f",
        "https://x.org#frag", " https://x.org/p ", "https://x.org:8080/p", "HTTPS://X.ORG/",
        "https://[::1/", "https://", "https:///p", "javascript:alert(1)", "ftp://x.org/",
        "https://x.org/a b", 'https://x.org/"', "https://ex\uff0fample.org/", "//x.org/p",
    ]  # fmt: skip
    fast = [render._safe_url(u) for u in urls]
    monkeypatch.setattr(render, "_PLAIN_URL", re.compile("(?!)"))
    assert fast == [render._safe_url(u) for u in urls]


def test_header_folding_shortcuts_fold_as_the_stdlib_does() -> None:
    rng = random.Random(11)
    atext = "abcxyz0189!#$%&'*+/=^_`{|}~-"
    values: list[tuple[str, str | render.Address]] = []
    for length in range(1, 130):
        local = "".join(rng.choice(atext + "..") for _ in range(length)).strip(".") or "a"
        local = re.sub(r"\.+", ".", local)
        for display in ("", "Paper digest", "A much longer display name than most sites have"):
            values.append(("Reply-To", render._address("reply_to", f"{display} <{local}@x.org>")))
            values.append(("To", render._address("to", f"{local}@example.org")))
        mailto = f"mailto:u+{local[:40]}@x.org?subject=unsubscribe"
        values.append(("List-Unsubscribe", f"<https://x.org/u/{'t' * length}>, <{mailto}>"))
    for name, value in values:
        text = str(value)
        for utf8 in (False, True):
            if len(name) + 2 + len(text) <= 78:  # short ASCII is written as it is
                expected = f"{name}: {text}\r\n"
            else:
                expected = render._folded.__wrapped__(name, text, utf8)
            assert render._header(name, value, utf8) == expected
