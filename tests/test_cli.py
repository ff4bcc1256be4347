"""The digestd command as operators run it: a real process, real files, a real SMTP server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import HF_DAYS, dump_database
from tests.smtp_server import ThreadedSmtpServer

Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def digestd(tmp_path: Path) -> Run:
    def run(*args: str, config: Path | None = None, env: dict[str, str] | None = None,
            input: str | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("DIGESTD_")}
        full_env.update(env or {})
        cmd = [sys.executable, "-m", "digestd.cli"]
        if config is not None:
            cmd += ["--config", str(config)]
        return subprocess.run(
            [*cmd, *args], capture_output=True, text=True, cwd=tmp_path, env=full_env,
            input=input, timeout=120, check=False,
        )  # fmt: skip

    return run


def test_subscribe_list_unsubscribe(digestd: Run, write_config: Callable[..., Path]) -> None:
    cfg = write_config()
    r = digestd("subscribe", "Ada@Example.ORG", "--topic", "world models", "--author",
                "Yann LeCun", "--tz", "Europe/Berlin", "--at", "06:30", config=cfg)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "subscribed ada@example.org" in r.stdout
    r = digestd("list", config=cfg)
    assert r.stdout.splitlines() == ["ada@example.org\tactive\tworld models; author: Yann LeCun"]
    assert digestd("unsubscribe", "ada@example.org", config=cfg).returncode == 0
    assert "\tunsubscribed\t" in digestd("list", config=cfg).stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["not-an-address", "--topic", "x"], "invalid email address"),
        (["a@example.org"], "at least one topic"),
        (["a@example.org", "--topic", "x", "--tz", "Mars/Base"], "unknown time zone"),
        (["a@example.org", "--topic", "x", "--at", "25:00"], "send time"),
        (["a@example.org", "--category", "not a category"], "category"),
    ],
)
def test_bad_subscriber_input_is_refused_and_changes_nothing(
    digestd: Run, write_config: Callable[..., Path], database_url: str, args: list[str],
    message: str,
) -> None:  # fmt: skip
    cfg = write_config()
    assert digestd("subscribe", "first@example.org", "--topic", "x", config=cfg).returncode == 0
    before = dump_database(database_url)
    r = digestd("subscribe", *args, config=cfg)
    assert r.returncode != 0
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "Traceback" not in r.stderr
    assert dump_database(database_url) == before


def test_duplicate_subscription_is_refused(digestd: Run, write_config: Callable[..., Path]) -> None:
    cfg = write_config()
    assert digestd("subscribe", "a@example.org", "--topic", "x", config=cfg).returncode == 0
    r = digestd("subscribe", "A@example.org", "--topic", "y", config=cfg)
    assert r.returncode != 0 and "already subscribed" in r.stderr


def test_import_reports_refused_lines_and_imports_the_rest(
    digestd: Run, write_config: Callable[..., Path], tmp_path: Path
) -> None:
    lines = [
        {"email": "one@example.org", "topics": ["world models"], "timezone": "Asia/Tokyo"},
        {"email": "bad address", "topics": ["x"]},
        "{not json",
        {"email": "two@example.org", "topics": ["x"], "frequency": "hourly"},
        {"email": "three@example.org", "authors": ["Jiří Matas"], "frequency": "weekly"},
        {"email": "four@example.org", "topics": ["x"], "colour": "blue"},
        {"email": "one@example.org", "topics": ["again"]},
    ]
    file = tmp_path / "subs.jsonl"
    file.write_text(
        "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n",
        encoding="utf-8",
    )
    r = digestd("import", str(file), config=write_config())
    assert r.returncode == 1
    assert "imported 2, refused 5" in r.stdout
    errors = r.stderr.splitlines()
    assert [e.split(":")[0] for e in errors] == ["line 2", "line 3", "line 4", "line 6", "line 7"]
    assert "invalid email address" in errors[0]
    assert "not JSON" in errors[1]
    assert "frequency" in errors[2]
    assert "colour" in errors[3]
    assert "already subscribed" in errors[4]
    listed = digestd("list", config=write_config()).stdout
    assert "one@example.org" in listed and "three@example.org" in listed
    assert "two@example.org" not in listed


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[smtp]\nhots = 'x'\n", "[smtp] unknown key 'hots'"),
        ("[smtp]\nport = 'abc'\n", "[smtp] port must be a whole number"),
        ("[smtp]\nsecurity = 'ssl'\n", "[smtp] security must be one of none, starttls, tls"),
        ("[web]\nbase_url = 'ftp://x'\n", "[web] base_url must be a URL"),
        ("[databse]\nurl = 'x'\n", "unknown table [databse]"),
        ("[smtp\n", "not valid TOML"),
        ("[[sources]]\ntype = 'rss'\n", "[[sources]] #1 type must be one of"),
        ("[[sources]]\ntype = 'arxiv-rss'\n", "categories is required"),
    ],
)
def test_bad_config_stops_with_one_line_naming_file_table_and_key(
    digestd: Run, tmp_path: Path, toml: str, message: str
) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(f"[database]\nurl = 'sqlite:///{tmp_path}/db.sqlite'\n" + toml
                   if not toml.startswith("[database") else toml, encoding="utf-8")  # fmt: skip
    r = digestd("list", config=cfg)
    assert r.returncode == 2
    [line] = r.stderr.strip().splitlines()
    assert str(cfg) in line and message in line
    assert not (tmp_path / "db.sqlite").exists()


def test_bad_environment_override_names_the_variable(digestd: Run, tmp_path: Path) -> None:
    r = digestd("check-config", env={"DIGESTD_SMTP_PORT": "seventy"})
    assert r.returncode == 2
    assert "DIGESTD_SMTP_PORT" in r.stderr and "[smtp] port" in r.stderr


def test_check_config_shows_origins_and_redacts_secrets(
    digestd: Run, write_config: Callable[..., Path], tmp_path: Path
) -> None:
    cfg = write_config(smtp__port=2525)
    r = digestd("check-config", config=cfg,
                env={"DIGESTD_SMTP_PASSWORD": "hunter2", "DIGESTD_SMTP_HOST": "relay.example.org",
                     "DIGESTD_DATABASE_URL": "postgresql+psycopg://u:pw@db/digest"})  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "hunter2" not in r.stdout and ":pw@" not in r.stdout
    lines = {line.split()[0]: line for line in r.stdout.splitlines()}
    assert "(set, redacted)" in lines["smtp.password"]
    assert "env DIGESTD_SMTP_HOST" in lines["smtp.host"]
    assert f"file {cfg}" in lines["smtp.port"] and "2525" in lines["smtp.port"]
    assert "(default)" in lines["smtp.security"]
    assert "u:***@db" in lines["database.url"]


def test_no_config_is_the_embedded_default(digestd: Run, tmp_path: Path) -> None:
    r = digestd("check-config")
    assert r.returncode == 0
    assert "sqlite:///var/digestd.db" in r.stdout and "var/outbox" in r.stdout
    assert "http://127.0.0.1:8080" in r.stdout and "digestd/sample" in r.stdout


def test_example_config_is_valid_and_documents_every_key(digestd: Run, tmp_path: Path) -> None:
    shipped = Path(__file__).parent.parent / "config" / "digestd.example.toml"
    assert digestd("example-config").stdout == shipped.read_text(encoding="utf-8")
    from digestd import config as config_mod

    loaded = config_mod.load(shipped, environ={})
    assert loaded.sources[0].type == "hf-daily-papers"
    text = shipped.read_text(encoding="utf-8")
    for opt in config_mod.SCHEMA:
        if not opt.secret:
            assert f"\n{opt.key} = " in text, opt.name


def test_broken_feed_file_is_an_error_and_stores_nothing(
    digestd: Run, write_config: Callable[..., Path], database_url: str, feed_dir: Path
) -> None:
    cfg = write_config()
    assert digestd("fetch", "--date", "2026-08-14", config=cfg).returncode == 0
    before = dump_database(database_url)
    (feed_dir / "2026-08-17.json").write_text('[{"paper": {"id": "2608.1', encoding="utf-8")
    r = digestd("fetch", "--date", "2026-08-17", config=cfg)
    assert r.returncode != 0
    assert "2026-08-17.json" in r.stderr and "Traceback" not in r.stderr
    assert dump_database(database_url) == before


def test_rank_prints_what_a_subscriber_would_receive(digestd: Run) -> None:
    day = str(HF_DAYS / "2026-08-14.json")
    r = digestd("rank", "--papers", day, "--topic", "world models", "--json")
    assert r.returncode == 0, r.stderr
    ranked = json.loads(r.stdout)
    assert ranked and {"id", "title", "score", "why"} <= ranked[0].keys()
    assert [x["score"] for x in ranked] == sorted((x["score"] for x in ranked), reverse=True)
    assert all(x["score"] >= 0.35 for x in ranked)
    assert ranked[0]["id"] in {"2608.13049", "2608.13489", "2608.13552"}
    r = digestd("rank", "--papers", day, "--topic", "world models", "--min-score", "0",
                "--limit", "100", "--json")  # fmt: skip
    assert len(json.loads(r.stdout)) == 23
    r = digestd("rank", "--papers", day, "--topic", "world models", "--limit", "2")
    assert r.stdout.count("\n 1. ") + r.stdout.startswith(" 1. ") == 1
    assert " 3. " not in r.stdout
    r = digestd("rank", "--papers", str(HF_DAYS / "missing.json"), "--topic", "x")
    assert r.returncode != 0 and "missing.json" in r.stderr


def test_send_and_preview_through_a_real_relay(
    digestd: Run, write_config: Callable[..., Path], tmp_path: Path,
    smtp_server_thread: ThreadedSmtpServer,
) -> None:  # fmt: skip
    cfg = write_config(smtp__host=smtp_server_thread.host, smtp__port=smtp_server_thread.port,
                       smtp__security="none")  # fmt: skip
    assert digestd("subscribe", "a@example.org", "--topic", "world models",
                   config=cfg).returncode == 0  # fmt: skip
    assert digestd("subscribe", "b@example.org", "--topic", "protein folding",
                   config=cfg).returncode == 0  # fmt: skip
    assert digestd("fetch", "--date", "2026-08-14", config=cfg).returncode == 0

    r = digestd("preview", "a@example.org", "--output", str(tmp_path / "p.eml"), config=cfg)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "p.eml").exists() and (tmp_path / "p.html").exists()
    assert smtp_server_thread.handler.messages == []

    r = digestd("send", "--period", "2026-08-14", config=cfg)
    assert r.returncode == 0, r.stderr
    assert "1 sent, 1 with nothing to send" in r.stdout
    [msg] = smtp_server_thread.wait_for(1)
    assert msg.rcpt_tos == ["a@example.org"]
    r = digestd("send", "--period", "2026-08-14", config=cfg)
    assert "0 sent" in r.stdout
    assert len(smtp_server_thread.handler.messages) == 1


def test_send_exits_non_zero_when_the_relay_defers(
    digestd: Run, write_config: Callable[..., Path], smtp_server_thread: ThreadedSmtpServer
) -> None:
    cfg = write_config(smtp__host=smtp_server_thread.host, smtp__port=smtp_server_thread.port,
                       smtp__security="none")  # fmt: skip
    digestd("subscribe", "a@example.org", "--topic", "world models", config=cfg)
    smtp_server_thread.handler.rcpt_reply = "451 4.7.1 Greylisted"
    r = digestd("send", "--period", "2026-08-14", config=cfg)
    assert r.returncode == 1 and "1 to retry" in r.stdout


def test_demo_writes_a_digest_to_open(digestd: Run, tmp_path: Path) -> None:
    r = digestd("demo")
    assert r.returncode == 0, r.stderr
    assert "Open it in a browser: file://" in r.stdout
    uri = r.stdout.split("Open it in a browser: ")[1].split()[0]
    html = Path(uri.removeprefix("file://"))
    assert html.exists() and html.parent == tmp_path / "var" / "outbox"
    assert "papers" in html.read_text(encoding="utf-8")
    again = digestd("demo")
    assert again.returncode == 0 and uri in again.stdout
    assert len(list((tmp_path / "var" / "outbox").glob("*.eml"))) == 1
