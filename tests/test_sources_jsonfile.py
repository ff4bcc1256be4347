"""Daily Papers JSON read from a file or a folder of days, and the json Source."""

from __future__ import annotations

import shutil
from datetime import date
from pathlib import Path

import pytest

from digestd.errors import FeedError
from digestd.sources import JsonSource, build_source, hf_daily, jsonfile

DAYS = Path(__file__).parent / "data" / "hf-daily-papers"
# the archive lists 2608.13558 on both days: 2 upvotes and no code link on the 14th, 54 and a
# GitHub repository on the 20th
FIRST, SECOND, SHARED = "2026-08-14", "2026-08-20", "2608.13558"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    for day in (FIRST, SECOND):
        shutil.copy(DAYS / f"{day}.json", tmp_path / f"{day}.json")
    return tmp_path


def test_one_file_gives_its_papers_marked_as_json() -> None:
    papers = jsonfile.load(DAYS / "2025-03-17.json")
    expected = hf_daily.parse((DAYS / "2025-03-17.json").read_bytes())
    assert [p.id for p in papers] == [p.id for p in expected]
    assert {p.source for p in papers} == {"json"}
    assert papers[2].project_url == "https://sites.google.com/view/adc-robot"


def test_folder_with_the_days_file_reads_only_that_file(folder: Path) -> None:
    papers = jsonfile.load(folder, day=date(2026, 8, 20))
    assert [p.id for p in papers] == [p.id for p in jsonfile.load(folder / f"{SECOND}.json")]
    assert len(papers) == 15


def test_folder_without_the_days_file_reads_all_files_in_name_order(folder: Path) -> None:
    papers = jsonfile.load(folder, day=date(2026, 8, 21))
    assert papers == jsonfile.load(folder)
    assert papers[0].id == hf_daily.parse((folder / f"{FIRST}.json").read_bytes())[0].id


def test_a_paper_on_two_days_is_kept_once_as_the_first_file_has_it(folder: Path) -> None:
    papers = jsonfile.load(folder)
    assert len(papers) == 23 + 15 - 1
    [shared] = [p for p in papers if p.id == SHARED]
    assert (shared.upvotes, shared.code_url) == (2, "")


def test_files_that_are_not_json_files_are_ignored(folder: Path) -> None:
    (folder / "notes.txt").write_text("not a feed")
    (folder / "old.json").mkdir()
    assert len(jsonfile.load(folder)) == 37


def test_empty_folder_gives_no_papers(tmp_path: Path) -> None:
    assert jsonfile.load(tmp_path, day=date(2026, 8, 20)) == []


def test_missing_path_is_a_feed_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.json"
    with pytest.raises(FeedError) as caught:
        jsonfile.load(missing)
    assert str(caught.value) == f"json: {missing} does not exist"


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ((DAYS / FIRST).with_suffix(".json").read_bytes()[:9000], "not valid JSON ("),
        (b"{}", "expected a JSON array of entries, got dict"),
    ],
    ids=["truncated", "object"],
)
def test_bad_file_in_a_folder_is_a_feed_error_naming_the_file(
    folder: Path, content: bytes, reason: str
) -> None:
    bad = folder / "2026-08-17.json"
    bad.write_bytes(content)
    with pytest.raises(FeedError) as caught:
        jsonfile.load(folder)
    assert str(caught.value).startswith(f"json: {bad}: {reason}")
    assert "\n" not in str(caught.value)


def test_unreadable_file_is_a_feed_error_naming_it(tmp_path: Path) -> None:
    locked = tmp_path / "2026-08-14.json"
    locked.write_bytes(b"[]")
    locked.chmod(0)
    try:
        if locked.stat().st_uid == 0 and _readable(locked):
            pytest.skip("running as root: permissions do not stop reads")
        with pytest.raises(FeedError) as caught:
            jsonfile.load(locked)
        assert str(caught.value) == f"json: cannot read {locked}: Permission denied"
    finally:
        locked.chmod(0o600)


def test_path_the_system_cannot_look_up_is_a_feed_error_naming_it(tmp_path: Path) -> None:
    too_long = tmp_path / ("x" * 300 + ".json")
    with pytest.raises(FeedError) as caught:
        jsonfile.load(too_long)
    assert str(caught.value) == f"json: cannot read {too_long}: File name too long"


def _readable(path: Path) -> bool:
    try:
        path.read_bytes()
    except OSError:
        return False
    return True


async def test_json_source_reads_the_asked_day(folder: Path) -> None:
    source = build_source("json", client=None, path=folder)
    assert isinstance(source, JsonSource) and source.name == "json"
    papers = await source.fetch(date(2026, 8, 14))
    assert len(papers) == 23
    assert next(p for p in papers if p.id == SHARED).upvotes == 2


def test_json_source_needs_a_path() -> None:
    with pytest.raises(ValueError, match="needs a path"):
        build_source("json", client=None)
