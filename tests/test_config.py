"""Config: defaults, file values, environment overrides and precise errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from digestd import config as config_mod
from digestd.config import BUNDLED_PAPERS, load
from digestd.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "digestd.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_no_file_is_the_embedded_default() -> None:
    cfg = load(None, environ={})
    assert cfg.database_url == "sqlite:///var/digestd.db"
    assert cfg.smtp.host == "" and cfg.outbox == Path("var/outbox")
    assert (cfg.web.host, cfg.web.port) == ("127.0.0.1", 8080)
    assert [(s.type, s.path) for s in cfg.sources] == [("json", BUNDLED_PAPERS)]
    assert any(BUNDLED_PAPERS.glob("*.json"))


def test_file_then_environment(tmp_path: Path) -> None:
    path = write(tmp_path, '[smtp]\nhost = "relay.example.org"\nport = 465\nsecurity = "tls"\n')
    cfg = load(path, environ={"DIGESTD_SMTP_PORT": "2465", "DIGESTD_SMTP_PASSWORD": "s3cret"})
    assert cfg.smtp.host == "relay.example.org" and cfg.smtp.security == "tls"
    assert cfg.smtp.port == 2465 and cfg.smtp.password == "s3cret"
    assert cfg.origins["smtp.port"] == "env DIGESTD_SMTP_PORT"
    assert cfg.origins["smtp.host"] == f"file {path}"
    assert "s3cret" not in repr(cfg)


def test_password_file_and_its_errors(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("from-file\n", encoding="utf-8")
    path = write(tmp_path, f'[smtp]\npassword_file = "{secret}"\n')
    assert load(path, environ={}).smtp.password == "from-file"
    # The environment wins over the file, so a container can inject it.
    assert load(path, environ={"DIGESTD_SMTP_PASSWORD": "env"}).smtp.password == "env"
    missing = write(tmp_path, f'[smtp]\npassword_file = "{tmp_path / "nope"}"\n')
    with pytest.raises(ConfigError, match=r"\[smtp\] password_file .*nope: cannot read"):
        load(missing, environ={})


def test_sources_are_checked(tmp_path: Path) -> None:
    ok = write(
        tmp_path,
        '[[sources]]\ntype = "arxiv-rss"\ncategories = ["cs.LG", "stat.ML"]\n'
        '[[sources]]\ntype = "hf-daily-papers"\nurl = "http://127.0.0.1:9/"\n',
    )
    cfg = load(ok, environ={})
    assert [s.type for s in cfg.sources] == ["arxiv-rss", "hf-daily-papers"]
    assert cfg.sources[0].categories == ("cs.LG", "stat.ML")
    assert cfg.sources[1].url == "http://127.0.0.1:9"
    for body, message in [
        ('[[sources]]\ntype = "json"\n', "path is required"),
        ('[[sources]]\ntype = "arxiv-api"\ncategories = ["cs LG"]\n', "not an arXiv category"),
        ('[[sources]]\ntype = "json"\npath = "x"\nfolder = "y"\n', "unknown key 'folder'"),
        ("sources = 3\n", "[[sources]] must be"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            load(write(tmp_path, body), environ={})


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('[smtp]\nfrom = "not an address"\n', "[smtp] from must be an address"),
        ('[smtp]\nhost = "a\\r\\nb"\n', "[smtp] host must be one line"),
        ('[database]\nurl = "mysql://x"\n', "[database] url must be a sqlite"),
        ("[digest]\nmin_score = 2\n", "[digest] min_score must be a number from 0 to 1"),
        ('[digest]\nunsubscribe_mailto = "https://x"\n', "[digest] unsubscribe_mailto"),
        ("[smtp]\nvalidate_certs = 1\n", "[smtp] validate_certs must be true or false"),
        ('smtp = "x"\n', "[smtp] must be a table"),
    ],
)
def test_bad_values_name_file_table_and_key(tmp_path: Path, body: str, message: str) -> None:
    path = write(tmp_path, body)
    with pytest.raises(ConfigError) as info:
        load(path, environ={})
    assert str(info.value).startswith(str(path)) and message in str(info.value)
    assert "\n" not in str(info.value)


def test_every_option_has_help_and_a_valid_default() -> None:
    for opt in config_mod.SCHEMA:
        assert opt.help, opt.name
        assert opt.parse(opt.default) is not None
