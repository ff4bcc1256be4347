"""The shipped unit file passes systemd's own checks and stays well hardened."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).parent.parent / "systemd" / "digestd.service"
ANALYZE = shutil.which("systemd-analyze")
pytestmark = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")


@pytest.fixture
def unit(tmp_path: Path) -> Path:
    # verify checks that ExecStart exists: point it at this environment's digestd.
    digestd = Path(sys.executable).parent / "digestd"
    text = UNIT.read_text(encoding="utf-8").replace("/opt/digestd/bin/digestd", str(digestd))
    path = tmp_path / "digestd.service"
    path.write_text(text, encoding="utf-8")
    return path


def test_unit_passes_systemd_analyze_verify(unit: Path) -> None:
    r = subprocess.run([str(ANALYZE), "verify", str(unit)], capture_output=True, text=True,
                       check=False, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "digestd.service" not in r.stderr, r.stderr


def test_unit_exposure_is_below_2(unit: Path) -> None:
    r = subprocess.run([str(ANALYZE), "security", "--offline=true", str(unit)],
                       capture_output=True, text=True, check=False, timeout=60)  # fmt: skip
    found = re.search(r"Overall exposure level for digestd.service: (\d+\.\d)", r.stdout)
    assert found, r.stdout + r.stderr
    assert float(found.group(1)) < 2.0


def test_unit_is_a_notify_service_with_watchdog_and_af_unix() -> None:
    text = UNIT.read_text(encoding="utf-8")
    for line in ("Type=notify", "Restart=on-failure", "DynamicUser=yes", "StateDirectory=digestd",
                 "ProtectSystem=strict", "SystemCallFilter=@system-service"):  # fmt: skip
        assert f"\n{line}\n" in text, line
    assert re.search(r"\nWatchdogSec=\d+", text)
    assert "AF_UNIX" in re.search(r"RestrictAddressFamilies=(.*)", text).group(1)  # type: ignore[union-attr]
