"""The systemd unit: verify offline against a staged root, and gate its hardening score."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "renewer.service"
HOST_UNITS = Path("/lib/systemd/system")
THRESHOLD = "20"  # tenths of the displayed exposure level: 2.0


def systemd_analyze(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("systemd-analyze")
    assert binary, "systemd-analyze not found: apt-get install systemd"
    return subprocess.run(
        [binary, *args], capture_output=True, text=True, timeout=120, check=False, cwd="/"
    )


def exec_paths(unit_text: str) -> list[str]:
    """Absolute executables of ExecStart=/ExecReload=/... (prefixes like '-' or '+' dropped)."""
    return [
        match.group(1)
        for match in re.finditer(r"^Exec\w+=[-+!@:]*(/\S+)", unit_text, flags=re.MULTILINE)
    ]


@pytest.fixture
def staged_root(tmp_path: Path) -> Path:
    """A root with the unit, the host's system units and stand-ins for every executable."""
    root = tmp_path / "root"
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(UNIT, root / "etc/systemd/system" / UNIT.name)
    shutil.copytree(HOST_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    for path in exec_paths(UNIT.read_text()):
        stand_in = root / path.lstrip("/")
        stand_in.parent.mkdir(parents=True, exist_ok=True)
        stand_in.write_text("#!/bin/sh\n")
        stand_in.chmod(0o755)
    return root


def test_exec_paths_are_found() -> None:
    assert exec_paths(UNIT.read_text()) == ["/opt/renewer/bin/renewer", "/bin/kill"]


def test_unit_verifies_cleanly(staged_root: Path) -> None:
    result = systemd_analyze("verify", "--man=no", f"--root={staged_root}", UNIT.name)
    assert (result.returncode, result.stderr) == (0, "")


def test_verify_catches_missing_executable(staged_root: Path) -> None:
    (staged_root / "opt/renewer/bin/renewer").unlink()
    result = systemd_analyze("verify", "--man=no", f"--root={staged_root}", UNIT.name)
    assert result.returncode != 0
    assert "/opt/renewer/bin/renewer is not executable" in result.stderr


def test_verify_reports_misspelt_key(staged_root: Path) -> None:
    unit = staged_root / "etc/systemd/system" / UNIT.name
    unit.write_text(unit.read_text().replace("ProtectSystem=", "ProtectSytem="))
    result = systemd_analyze("verify", "--man=no", f"--root={staged_root}", UNIT.name)
    assert "Unknown key 'ProtectSytem'" in result.stderr


def test_essential_settings() -> None:
    settings = dict(
        line.split("=", 1) for line in UNIT.read_text().splitlines() if re.match(r"^\w+=", line)
    )
    assert settings["Type"] == "notify"
    assert settings["NotifyAccess"] == "main"
    assert settings["RestartPreventExitStatus"] == "2"
    assert settings["StateDirectory"] == "renewer"
    assert settings["DynamicUser"] == "yes"
    assert settings["ExecStart"].endswith("--config /etc/renewer/config.toml run")
    assert settings["ExecReload"] == "/bin/kill -HUP $MAINPID"


def exposure(unit: Path) -> tuple[int, float]:
    result = systemd_analyze("security", "--offline=yes", f"--threshold={THRESHOLD}", str(unit))
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d)", result.stdout)
    assert match, result.stdout + result.stderr
    return result.returncode, float(match.group(1))


def test_hardening_passes_threshold() -> None:
    returncode, level = exposure(UNIT)
    assert returncode == 0
    assert level <= 2.0


def test_dropping_hardening_fails_threshold(tmp_path: Path) -> None:
    text = UNIT.read_text()
    start, end = text.index("CapabilityBoundingSet="), text.index("[Install]")
    weakened = tmp_path / UNIT.name
    weakened.write_text(text[:start] + text[end:])
    returncode, level = exposure(weakened)
    assert returncode != 0
    assert level > 2.0
