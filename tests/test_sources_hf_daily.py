"""Daily Papers parsing on recorded API days, and the fetcher against a recorded response."""

from __future__ import annotations

import json
import logging
from datetime import UTC, date, datetime
from pathlib import Path

import httpx
import pytest

from digestd import __version__
from digestd.errors import FeedError
from digestd.paper import Paper
from digestd.sources import HfDailySource, Source, build_source, hf_daily

DAYS = Path(__file__).parent / "data" / "hf-daily-papers"
# one day per archive format: raw API bytes, re-indented by 4, re-indented by 2 and filtered
RAW_COMPACT, INDENT4, INDENT2 = "2024-03-19", "2024-11-13", "2025-03-17"


def day_bytes(day: str) -> bytes:
    return (DAYS / f"{day}.json").read_bytes()


def by_id(day: str) -> dict[str, Paper]:
    return {p.id: p for p in hf_daily.parse(day_bytes(day))}


@pytest.mark.parametrize("path", sorted(DAYS.glob("*.json")), ids=lambda p: p.stem)
def test_every_recorded_day_parses_one_paper_per_entry_with_folded_text(path: Path) -> None:
    papers = hf_daily.parse(path.read_bytes())

    assert len(papers) == len(json.loads(path.read_bytes()))
    for paper in papers:
        assert paper.source == "hf-daily-papers"
        for text in (paper.title, paper.abstract, paper.summary):
            assert "\n" not in text and "  " not in text and text == text.strip()
        assert paper.published is not None and paper.published.utcoffset() is not None


def test_raw_compact_day_reads_ids_authors_time_and_upvotes() -> None:
    papers = hf_daily.parse(day_bytes(RAW_COMPACT))
    assert [p.id for p in papers[:3]] == ["2403.12015", "2403.10704", "2403.11901"]
    paper = by_id(RAW_COMPACT)["2403.10615"]
    assert paper.title == "LightIt: Illumination Modeling and Control for Diffusion Models"
    assert paper.published == datetime(2024, 3, 15, 18, 26, 33, tzinfo=UTC)
    assert paper.upvotes == 9
    assert (paper.summary, paper.keywords, paper.code_url, paper.project_url) == ("", (), "", "")


def test_hidden_authors_are_left_out() -> None:
    # the entry lists five authors; "Peter Kocsis" has hidden: true
    assert by_id(RAW_COMPACT)["2403.10615"].authors == (
        "Julien Philip",
        "Kalyan Sunkavalli",
        "Matthias Nießner",
        "Yannick Hold-Geoffroy",
    )


def test_non_ascii_author_names_stay_intact() -> None:
    authors = by_id(RAW_COMPACT)["2403.11901"].authors
    assert "Aurélie Lozano" in authors
    # the API itself splits "Jiří Navrátil" into two author objects; kept as given
    assert authors[9:11] == ("Jiří", "Navrátil")


def test_hard_wrapped_titles_and_abstracts_are_folded() -> None:
    assert by_id(RAW_COMPACT)["2403.12034"].title == (
        "VFusion3D: Learning Scalable 3D Generative Models from Video Diffusion Models"
    )
    assert by_id(INDENT4)["2411.08017"].title == (
        "Wavelet Latent Diffusion (Wala): Billion-Parameter 3D Generative Model"
        " with Compact Wavelet Encodings"
    )


def test_latex_stays_literal_text() -> None:
    abstract = by_id(INDENT4)["2411.05197"].abstract
    assert (
        "In this paper we introduce \\textbf{hardware and software platform inference (HSPI)} --"
        in abstract
    )


def test_angle_brackets_and_dollars_stay_literal_text() -> None:
    papers = by_id("2025-04-11")
    assert (
        papers["2504.07128"].title == "DeepSeek-R1 Thoughtology: Let's <think> about LLM Reasoning"
    )
    assert "a large-scale training set of 90$ synthetic data" in papers["2504.04974"].abstract
    assert "for under $3, reaching" in by_id("2026-08-14")["2608.13560"].abstract


def test_project_page_with_a_leading_space_is_stripped() -> None:
    paper = by_id(INDENT2)["2503.11646"]
    assert paper.project_url == "https://sites.google.com/view/adc-robot"
    assert paper.code_url == ""
    assert by_id(INDENT2)["2503.10772"].code_url == "https://github.com/bytedance/1d-tokenizer/"


def test_ai_summary_and_keywords_are_read_when_present() -> None:
    paper = by_id("2026-08-20")["2608.14229"]
    assert paper.summary == (
        "AdaPop adapts gradient pressure by fact popularity and automates forget-retain balance"
        " to reduce leakage of unlearned content."
    )
    assert paper.keywords[:3] == (
        "AdaPop",
        "local token confidence",
        "per-fact popularity-dependent exponent",
    )
    assert len(paper.keywords) == 6


def test_the_three_file_formats_give_the_same_papers() -> None:
    doc = json.loads(day_bytes(RAW_COMPACT))
    compact = hf_daily.parse(day_bytes(RAW_COMPACT))
    for indent in (2, 4):
        again = json.dumps(doc, ensure_ascii=False, indent=indent).encode()
        assert hf_daily.parse(again) == compact


def test_entry_without_id_or_title_is_skipped_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    doc = json.loads(day_bytes(INDENT2))
    del doc[0]["paper"]["title"]
    del doc[1]["paper"]["id"]
    doc[2] = "not an entry"
    with caplog.at_level(logging.WARNING, logger="digestd.sources.hf_daily"):
        papers = hf_daily.parse(json.dumps(doc).encode())
    assert len(papers) == len(doc) - 3
    assert [r.getMessage() for r in caplog.records] == [
        "hf-daily-papers: skipping entry 0: no paper id or title",
        "hf-daily-papers: skipping entry 1: no paper id or title",
        "hf-daily-papers: skipping entry 2: no paper object",
    ]


def test_links_that_are_not_http_are_dropped() -> None:
    doc = json.loads(day_bytes(INDENT2))
    doc[0]["paper"]["githubRepo"] = "javascript:alert(1)"
    doc[0]["paper"]["projectPage"] = "sites.google.com/view/x"
    paper = hf_daily.parse(json.dumps(doc).encode())[0]
    assert (paper.code_url, paper.project_url) == ("", "")


def test_a_paper_listed_twice_in_one_document_is_kept_once() -> None:
    doc = json.loads(day_bytes(INDENT2))
    twice = hf_daily.parse(json.dumps([*doc, doc[0]]).encode())
    assert [p.id for p in twice] == [p.id for p in hf_daily.parse(day_bytes(INDENT2))]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (day_bytes(INDENT2)[:5000], "not valid JSON"),
        (b"{}", "expected a JSON array of entries, got dict"),
        (b'"2025-03-17"', "expected a JSON array of entries, got str"),
        (bytes(range(256)) * 4, "not valid JSON"),
        (b"<!DOCTYPE html><html><body>502 Bad Gateway</body></html>", "not valid JSON"),
        (b"", "not valid JSON"),
    ],
    ids=["truncated", "object", "string", "random-bytes", "html-page", "empty"],
)
def test_broken_documents_raise_a_one_line_feed_error(data: bytes, reason: str) -> None:
    with pytest.raises(FeedError) as caught:
        hf_daily.parse(data)
    assert str(caught.value).startswith(f"hf-daily-papers: {reason}")
    assert "\n" not in str(caught.value)


def recorded(
    requests: list[httpx.Request], status: int = 200, body: bytes = b""
) -> httpx.AsyncClient:
    def answer(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(status, content=body)

    return httpx.AsyncClient(transport=httpx.MockTransport(answer))


async def test_fetch_asks_for_the_day_and_parses_the_answer() -> None:
    requests: list[httpx.Request] = []
    async with recorded(requests, body=day_bytes(INDENT2)) as client:
        papers = await hf_daily.fetch(client, date(2025, 3, 17))

    assert papers == hf_daily.parse(day_bytes(INDENT2))
    [request] = requests
    assert str(request.url) == "https://huggingface.co/api/daily_papers?date=2025-03-17"
    assert request.headers["User-Agent"] == f"digestd/{__version__}"
    # a client built without a timeout still gets one per request
    assert request.extensions["timeout"] == {
        "connect": 10.0,
        "read": 30.0,
        "write": 30.0,
        "pool": 30.0,
    }


@pytest.mark.parametrize("status", [404, 500, 503])
async def test_fetch_turns_an_error_status_into_feed_error(status: int) -> None:
    async with recorded([], status=status, body=b"<html>oops</html>") as client:
        with pytest.raises(FeedError) as caught:
            await hf_daily.fetch(client, date(2025, 3, 17))
    assert str(caught.value) == (
        f"hf-daily-papers: HTTP {status} from https://huggingface.co/api/daily_papers?date=2025-03-17"
    )


@pytest.mark.parametrize(
    ("error", "reason"),
    [(httpx.ReadTimeout, "timed out fetching"), (httpx.ConnectError, "cannot fetch")],
)
async def test_fetch_turns_transport_failures_into_feed_error(
    error: type[httpx.TransportError], reason: str
) -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise error("boom", request=request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(fail)) as client:
        with pytest.raises(FeedError) as caught:
            await hf_daily.fetch(client, date(2025, 3, 17), base_url="https://hf.test/")
    url = "https://hf.test/api/daily_papers?date=2025-03-17"
    assert str(caught.value).startswith(f"hf-daily-papers: {reason} {url}")


async def test_fetch_error_does_not_show_credentials_of_the_base_url() -> None:
    async with recorded([], status=401) as client:
        with pytest.raises(FeedError) as caught:
            await hf_daily.fetch(client, date(2025, 3, 17), base_url="https://me:s3cret@hf.test")
    assert "s3cret" not in str(caught.value)
    assert "HTTP 401 from https://hf.test/api/daily_papers?date=2025-03-17" in str(caught.value)


async def test_fetch_with_an_invalid_base_url_is_a_feed_error() -> None:
    async with recorded([]) as client:
        with pytest.raises(FeedError) as caught:
            await hf_daily.fetch(client, date(2025, 3, 17), base_url="https://[::1")
    assert str(caught.value) == "hf-daily-papers: invalid URL (Invalid port: ':1')"


async def test_fetch_follows_a_redirect() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.scheme == "http":
            return httpx.Response(
                301, headers={"Location": str(request.url.copy_with(scheme="https"))}
            )
        return httpx.Response(200, content=day_bytes(RAW_COMPACT))

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
        papers = await hf_daily.fetch(client, date(2024, 3, 19), base_url="http://hf.test")
    assert len(papers) == 13


async def test_hf_daily_source_fetches_the_asked_day() -> None:
    requests: list[httpx.Request] = []
    async with recorded(requests, body=day_bytes(RAW_COMPACT)) as client:
        source: Source = build_source("hf-daily-papers", client=client, base_url="https://hf.test")
        assert isinstance(source, HfDailySource) and source.name == "hf-daily-papers"
        papers = await source.fetch(date(2024, 3, 19))
    assert len(papers) == 13
    assert requests[0].url.params["date"] == "2024-03-19"


def test_build_source_rejects_an_unknown_type_or_a_missing_client() -> None:
    with pytest.raises(ValueError, match="unknown source type 'rss'"):
        build_source("rss", client=None)
    with pytest.raises(ValueError, match="needs an HTTP client"):
        build_source("hf-daily-papers", client=None)
