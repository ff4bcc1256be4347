"""arXiv RSS and API parsing on recorded feeds, and both fetchers against recorded responses."""

from __future__ import annotations

import logging
import re
from datetime import UTC, date, datetime
from pathlib import Path

import httpx
import pytest

from digestd import __version__
from digestd.errors import FeedError
from digestd.paper import Paper
from digestd.sources import ArxivApiSource, ArxivRssSource, arxiv_api, arxiv_rss, build_source

DATA = Path(__file__).parent / "data" / "arxiv"
COMBINED = "rss_cs.LG+cs.AI+cs.CL+stat.ML_2026-09-24_trimmed.xml"
SUNDAY = "rss_cs_2026-03-29_sunday-empty.xml"
LEGACY = "api_2020-09-04_id_list-1601.00001_legacy-format.xml"
NEW = "api_2026-04-30_cat-cs.LG-OR-cat-cs.AI_max20_new-format.xml"
NICOTINE = "api_2026-07-17_all-nicotine_max10_new-format.xml"


def rss(name: str) -> bytes:
    return (DATA / "rss" / name).read_bytes()


def api(name: str) -> bytes:
    return (DATA / "api" / name).read_bytes()


def rss_by_id(name: str) -> dict[str, Paper]:
    return {p.id: p for p in arxiv_rss.parse(rss(name), include_replacements=True)}


def api_by_id(name: str) -> dict[str, Paper]:
    return {p.id: p for p in arxiv_api.parse(api(name))}


def assert_folded(papers: list[Paper]) -> None:
    for paper in papers:
        for text in (paper.title, paper.abstract, *paper.authors):
            assert text and "\n" not in text and "  " not in text and text == text.strip()


# --- RSS -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "ids"),
    [
        ("rss_cs.AI_2026-04-27_trimmed.xml", ["2604.21935", "2604.21936", "2604.21937"]),
        ("rss_cs.CL_2026-04-27_trimmed.xml", ["2604.22002", "2604.22027", "2604.22038"]),
        ("rss_cs.LG_2026-04-27_trimmed.xml", ["2604.21952", "2604.21953", "2604.21956"]),
        (COMBINED, ["2609.26811", "2609.26820", "2205.06398"]),
        (SUNDAY, []),
    ],
)
def test_every_rss_recording_parses_to_versionless_ids(name: str, ids: list[str]) -> None:
    papers = arxiv_rss.parse(rss(name))
    assert [p.id for p in papers] == ids
    assert_folded(papers)
    assert all(p.source == "arxiv-rss" for p in papers)


def test_empty_sunday_channel_is_no_papers_and_no_error() -> None:
    assert arxiv_rss.parse(rss(SUNDAY)) == []


def test_replacements_are_skipped_by_default_and_kept_on_request() -> None:
    default = arxiv_rss.parse(rss(COMBINED))
    every = arxiv_rss.parse(rss(COMBINED), include_replacements=True)
    assert [p.extra["announce_type"] for p in default] == ["new", "new", "cross"]
    assert [p.id for p in every] == [p.id for p in default] + ["2009.13987"]
    assert every[-1].extra["announce_type"] == "replace"


def test_rss_announce_type_is_read_from_the_description_when_the_element_is_missing() -> None:
    data = rss(COMBINED).replace(b"<arxiv:announce_type>replace</arxiv:announce_type>", b"")
    assert [p.id for p in arxiv_rss.parse(data)] == ["2609.26811", "2609.26820", "2205.06398"]
    assert arxiv_rss.parse(data, include_replacements=True)[-1].extra["announce_type"] == "replace"


def test_rss_description_without_the_arxiv_header_is_all_abstract() -> None:
    data = rss(COMBINED).replace(
        b"arXiv:2609.26811v1 Announce Type: new \nAbstract: Local learning",
        b"Local learning (Abstract: see below)",
    )
    paper = arxiv_rss.parse(data)[0]
    assert paper.abstract.startswith("Local learning (Abstract: see below) trains each layer")


def test_rss_abstract_is_the_text_after_the_abstract_marker() -> None:
    paper = rss_by_id(COMBINED)["2609.26811"]
    assert paper.abstract.startswith("Local learning trains each layer with its own auxiliary loss")
    assert paper.abstract.endswith("concentrates precisely where normalization is absent.")
    assert paper.title == "The Drift Contract: Spectral Updates for Depth-Robust Local Learning"
    assert paper.published == datetime(2026, 9, 24, 4, 0, tzinfo=UTC)


def test_rss_cross_listing_keeps_all_categories_primary_first_and_its_doi() -> None:
    paper = rss_by_id(COMBINED)["2205.06398"]
    assert paper.categories == ("stat.ME", "stat.AP", "stat.ML")
    assert paper.authors == ("Pritam Dey", "Zhengwu Zhang", "David B. Dunson")
    assert paper.extra == {"announce_type": "cross", "doi": "10.1093/bioinformatics/btac431"}
    lg = rss_by_id("rss_cs.LG_2026-04-27_trimmed.xml")["2604.21952"]
    assert lg.categories == ("cs.LG", "cs.AI", "cs.AR", "cs.NE", "cs.RO")


def test_rss_xml_entity_is_decoded_exactly_once() -> None:
    abstract = rss_by_id("rss_cs.LG_2026-04-27_trimmed.xml")["2604.21952"].abstract
    assert "visual resolution & stride, and graph-level operator fusion" in abstract
    assert "&amp;" not in abstract


def test_rss_latex_stays_literal_text() -> None:
    abstract = rss_by_id("rss_cs.AI_2026-04-27_trimmed.xml")["2604.21936"].abstract
    assert "Two requirements therefore become central: \\textbf{adaptabil" in abstract


def test_rss_escaped_markup_stays_literal_text_and_is_not_sanitised() -> None:
    # feedparser's default HTML sanitiser would drop "<think>" and cut "$x<y$" short
    data = rss(COMBINED).replace(
        b"Abstract: Local learning trains",
        b"Abstract: Local &lt;think&gt; learning $x&lt;y$ &lt;b&gt;trains&lt;/b&gt; &amp;amp;",
    )
    data = data.replace(
        b"<title>The Drift Contract:", b"<title>Let's &lt;think&gt; &amp; the Contract:"
    )
    paper = arxiv_rss.parse(data)[0]
    assert paper.abstract.startswith("Local <think> learning $x<y$ <b>trains</b> &amp; each layer")
    assert paper.title.startswith("Let's <think> & the Contract:")


def test_rss_creator_string_is_split_into_authors() -> None:
    ai = rss_by_id("rss_cs.AI_2026-04-27_trimmed.xml")["2604.21936"]
    assert len(ai.authors) == 18
    assert (ai.authors[0], ai.authors[-1]) == ("Lianrui Zuo", "Bennett A. Landman")
    # the recording has a double space before the one-word name
    cl = rss_by_id("rss_cs.CL_2026-04-27_trimmed.xml")["2604.22002"]
    assert cl.authors == ("Anamta Khan", "Ratna Kandala", "Deepti", "Sheza Munir", "Joyojeet Pal")


@pytest.mark.parametrize(
    "creator",
    [
        b"Naser Mansour, Sidahmed Benabderrahmane and Ameer Rahwan",
        b"Naser Mansour, Sidahmed Benabderrahmane, and Ameer Rahwan",
    ],
)
def test_rss_creator_with_a_final_and_is_split(creator: bytes) -> None:
    data = rss(COMBINED).replace(b"Naser Mansour, Sidahmed Benabderrahmane, Ameer Rahwan", creator)
    assert rss_by_id_from(data)["2609.26820"].authors == (
        "Naser Mansour",
        "Sidahmed Benabderrahmane",
        "Ameer Rahwan",
    )


def rss_by_id_from(data: bytes) -> dict[str, Paper]:
    return {p.id: p for p in arxiv_rss.parse(data)}


def test_rss_item_without_title_is_skipped_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    data = rss(COMBINED).replace(b"<title>Signal2Symbol:", b"<ignored>Signal2Symbol:", 1)
    data = re.sub(rb"(<ignored>[^<]*)</title>", rb"\1</ignored>", data)
    with caplog.at_level(logging.WARNING, logger="digestd.sources.arxiv_rss"):
        papers = arxiv_rss.parse(data)
    assert [p.id for p in papers] == ["2609.26811", "2205.06398"]
    assert [r.getMessage() for r in caplog.records] == ["arxiv-rss: skipping item 1: no title"]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (rss(COMBINED)[:4000], "not a well-formed feed"),
        (rss(COMBINED)[:-30], "not a well-formed feed"),
        (
            b"<!DOCTYPE html><html><head><title>503</title></head><body>down</body></html>",
            "expected an RSS feed, found no feed",
        ),
        (b"{}", "not a well-formed feed"),
        (bytes(range(256)) * 4, "not a well-formed feed"),
        (b"", "expected an RSS feed, found no feed"),
        (api(NEW), "expected an RSS feed, found feed type atom10"),
    ],
    ids=["truncated", "cut-before-end", "html-page", "json", "random-bytes", "empty", "atom"],
)
def test_rss_broken_documents_raise_a_one_line_feed_error(data: bytes, reason: str) -> None:
    with pytest.raises(FeedError) as caught:
        arxiv_rss.parse(data)
    assert str(caught.value).startswith(f"arxiv-rss: {reason}")
    assert "\n" not in str(caught.value)


# --- API -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "count"),
    [
        (LEGACY, 1),
        ("api_2025-10-17_cat-cs.RO-AND-neural_max2_legacy-format.xml", 2),
        (NEW, 20),
        (NICOTINE, 10),
    ],
)
def test_every_api_recording_parses(name: str, count: int) -> None:
    papers = arxiv_api.parse(api(name))
    assert len(papers) == count
    assert_folded(papers)
    assert all(p.source == "arxiv-api" and p.categories and p.published for p in papers)


def test_api_legacy_format_hard_wraps_are_folded_and_tex_kept() -> None:
    paper = api_by_id(LEGACY)["1601.00001"]
    assert paper.title == (
        "Inelastic effects in molecular transport junctions: The probe technique at high bias"
    )
    assert paper.abstract.startswith(
        'We extend the Landauer-B\\"uttiker probe formalism for conductances to the high bias'
    )
    assert "fundamentally distinct $I$-$V$ characteristics at high biases" in paper.abstract
    assert paper.abstract.endswith("molecular electronic transport far-from-equilibrium.")
    assert paper.authors == ("Michael Kilgour", "Dvira Segal")
    assert paper.categories == ("cond-mat.mes-hall",)
    assert paper.published == datetime(2015, 12, 26, 21, 19, 45, tzinfo=UTC)
    assert paper.extra == {
        "doi": "10.1063/1.4944470",
        "journal_ref": "J. Chem. Phys. 144, 124107 (2016)",
    }


def test_api_new_format_reads_categories_comment_and_literal_text() -> None:
    papers = api_by_id(NEW)
    assert papers["2604.26932"].categories == ("math.OC", "cs.LG")
    assert papers["2604.26951"].extra == {
        "comment": "15 pages, 3 figures. Code: https://github.com/PKU-YuanGroup/TIDE"
    }
    ln_ln = next(p for p in papers.values() if p.title.startswith("A Note on How to Remove"))
    assert ln_ln.title == "A Note on How to Remove the $\\ln\\ln T$ Term from the Squint Bound"
    assert "In Orabona and Pál [2016]" in ln_ln.abstract
    assert "(p < 0.0001 for segmentation" in papers["2604.26869"].abstract


def test_api_primary_category_leads_even_when_listed_later() -> None:
    data = api(NEW).replace(
        b'<arxiv:primary_category term="cs.CL"/>', b'<arxiv:primary_category term="cs.LG"/>', 1
    )
    assert arxiv_api.parse(data)[0].categories == ("cs.LG", "cs.CL", "cs.AI")


def test_api_old_style_ids_and_non_ascii_authors() -> None:
    papers = api_by_id(NICOTINE)
    assert "q-bio/0509018" in papers
    assert any("Karine Guimarães" in p.authors for p in papers.values())
    assert papers["1509.01687"].categories == ("cond-mat.mes-hall", "physics.comp-ph")


API_ERROR = b"""<?xml version="1.0" encoding="UTF-8"?>
<feed xmlns="http://www.w3.org/2005/Atom">
  <title type="html">ArXiv Query: search_query=&amp;id_list=1234.12345</title>
  <id>http://arxiv.org/api/kvuntZ8c9a4Eq5CF7KY03nMug+Q</id>
  <updated>2024-01-01T00:00:00-05:00</updated>
  <entry>
    <id>http://arxiv.org/api/errors#incorrect_id_format_for_1234.12345</id>
    <title>Error</title>
    <summary>incorrect id format for 1234.12345</summary>
    <updated>2024-01-01T00:00:00-05:00</updated>
    <author><name>arXiv api core</name></author>
  </entry>
</feed>
"""


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (API_ERROR, "the API reported an error: incorrect id format for 1234.12345"),
        (api(NEW)[: len(api(NEW)) // 2], "not a well-formed feed"),
        (rss(COMBINED), "expected an Atom feed, found feed type rss20"),
        (b"<html><body>Rate exceeded.</body></html>", "expected an Atom feed, found no feed"),
        (bytes(range(256)) * 4, "not a well-formed feed"),
    ],
    ids=["api-error-entry", "truncated", "rss", "html-page", "random-bytes"],
)
def test_api_broken_documents_raise_a_one_line_feed_error(data: bytes, reason: str) -> None:
    with pytest.raises(FeedError) as caught:
        arxiv_api.parse(data)
    assert str(caught.value).startswith(f"arxiv-api: {reason}")
    assert "\n" not in str(caught.value)


def test_api_empty_result_is_no_papers() -> None:
    empty = re.sub(rb"<entry>.*</entry>", b"", api(NEW), flags=re.DOTALL)
    assert arxiv_api.parse(empty) == []


# --- fetchers --------------------------------------------------------------------------------


def serving(requests: list[httpx.Request], body: bytes, status: int = 200) -> httpx.AsyncClient:
    def answer(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(status, content=body)

    return httpx.AsyncClient(transport=httpx.MockTransport(answer))


async def test_rss_fetch_joins_categories_with_plus() -> None:
    requests: list[httpx.Request] = []
    async with serving(requests, rss(COMBINED)) as client:
        papers = await arxiv_rss.fetch(client, ["cs.LG", "cs.AI", "cs.CL", "stat.ML"])
    assert [p.id for p in papers] == ["2609.26811", "2609.26820", "2205.06398"]
    [request] = requests
    assert str(request.url) == "https://rss.arxiv.org/rss/cs.LG+cs.AI+cs.CL+stat.ML"
    assert request.headers["User-Agent"] == f"digestd/{__version__}"


async def test_api_fetch_sends_the_query_parameters() -> None:
    requests: list[httpx.Request] = []
    async with serving(requests, api(NEW)) as client:
        papers = await arxiv_api.fetch(client, ["cs.LG", "cs.AI"], max_results=20)
    assert len(papers) == 20
    [request] = requests
    assert (request.url.host, request.url.path) == ("export.arxiv.org", "/api/query")
    assert dict(request.url.params) == {
        "search_query": "cat:cs.LG OR cat:cs.AI",
        "sortBy": "submittedDate",
        "sortOrder": "descending",
        "max_results": "20",
    }


@pytest.mark.parametrize("status", [404, 500])
async def test_arxiv_fetchers_turn_error_status_into_feed_error(status: int) -> None:
    async with serving([], b"Service Unavailable", status) as client:
        with pytest.raises(FeedError) as rss_error:
            await arxiv_rss.fetch(client, ["cs.LG"])
        with pytest.raises(FeedError) as api_error:
            await arxiv_api.fetch(client, ["cs.LG"], max_results=5)
    assert str(rss_error.value) == f"arxiv-rss: HTTP {status} from https://rss.arxiv.org/rss/cs.LG"
    assert str(api_error.value) == (
        f"arxiv-api: HTTP {status} from https://export.arxiv.org/api/query?search_query=cat%3Acs.LG"
        "&sortBy=submittedDate&sortOrder=descending&max_results=5"
    )


async def test_arxiv_fetchers_turn_a_timeout_into_feed_error() -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("read timed out", request=request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(slow)) as client:
        with pytest.raises(FeedError) as rss_error:
            await arxiv_rss.fetch(client, ["cs.LG"])
        with pytest.raises(FeedError) as api_error:
            await arxiv_api.fetch(client, ["cs.LG"])
    assert str(rss_error.value) == "arxiv-rss: timed out fetching https://rss.arxiv.org/rss/cs.LG"
    assert str(api_error.value).startswith(
        "arxiv-api: timed out fetching https://export.arxiv.org/"
    )


@pytest.mark.parametrize(
    "categories",
    [[], ["cs.LG/../../admin"], ["cs.LG?x=1"], ["cs LG"], ["CS.lg"], ["cs.LG", ""]],
)
async def test_junk_categories_are_refused_before_any_request(categories: list[str]) -> None:
    requests: list[httpx.Request] = []
    async with serving(requests, rss(COMBINED)) as client:
        with pytest.raises(ValueError):
            await arxiv_rss.fetch(client, categories)
        with pytest.raises(ValueError):
            await arxiv_api.fetch(client, categories)
    assert requests == []


@pytest.mark.parametrize(
    "category", ["cs.LG", "stat.ML", "math", "q-bio.NC", "cond-mat.mes-hall", "hep-th"]
)
def test_real_category_names_are_accepted(category: str) -> None:
    assert arxiv_rss.check_categories([category]) == (category,)


async def test_api_fetch_refuses_an_out_of_range_max_results() -> None:
    async with serving([], api(NEW)) as client:
        with pytest.raises(ValueError, match="max_results"):
            await arxiv_api.fetch(client, ["cs.LG"], max_results=0)


async def test_arxiv_sources_built_by_type_fetch_their_feeds() -> None:
    requests: list[httpx.Request] = []
    async with serving(requests, rss(SUNDAY)) as client:
        source = build_source("arxiv-rss", client=client, categories=["cs"])
        assert isinstance(source, ArxivRssSource) and source.name == "arxiv-rss"
        assert await source.fetch(date(2026, 3, 29)) == []
    async with serving(requests, api(LEGACY)) as client:
        source = build_source(
            "arxiv-api",
            client=client,
            categories=["cond-mat.mes-hall"],
            base_url="https://api.test",
        )
        assert isinstance(source, ArxivApiSource) and source.name == "arxiv-api"
        assert [p.id for p in await source.fetch(date(2020, 9, 4))] == ["1601.00001"]
    assert [str(r.url.copy_with(query=None)) for r in requests] == [
        "https://rss.arxiv.org/rss/cs",
        "https://api.test/api/query",
    ]


async def test_arxiv_source_without_categories_is_refused_when_built() -> None:
    async with httpx.AsyncClient() as client:
        for type_ in ("arxiv-rss", "arxiv-api"):
            with pytest.raises(ValueError, match="at least one arXiv category"):
                build_source(type_, client=client, categories=[])
