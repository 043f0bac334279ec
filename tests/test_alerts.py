"""The alerting rules: promtool accepts them, their unit tests pass, and the tests bite."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

PROMETHEUS_DIR = Path(__file__).resolve().parent.parent / "prometheus"
RULES = PROMETHEUS_DIR / "renewer-alerts.yml"
RULE_TESTS = PROMETHEUS_DIR / "renewer-alerts.test.yml"


def promtool(*args: str, cwd: Path = PROMETHEUS_DIR) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "promtool not found: apt-get install prometheus"
    return subprocess.run(
        [binary, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def test_rules_are_valid() -> None:
    result = promtool("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 9 rules found" in result.stdout


def test_rule_unit_tests_pass() -> None:
    result = promtool("test", "rules", RULE_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr


BACKSTOP = """clamp_max(0.1 * (renewer_certificate_not_after_timestamp_seconds
                               - renewer_certificate_not_before_timestamp_seconds), 7 * 86400)"""
WARNING_FRACTION = """0.2 * (renewer_certificate_not_after_timestamp_seconds
                     - renewer_certificate_not_before_timestamp_seconds)"""


@pytest.mark.parametrize(
    ("original", "broken", "failing_alert"),
    [
        # Fixed day thresholds page for a healthy 6-day certificate.
        (BACKSTOP, "7 * 86400", "RenewerCertificateExpiringCritical"),
        (WARNING_FRACTION, "21 * 86400", "RenewerCertificateExpiringSoon"),
        # Overdue as soon as the planned time passes: fires before the tested point.
        ("< 0.7 * (", "< 1.0 * (", "RenewerRenewalOverdue"),
        (
            "consecutive_renewal_failures >= 3",
            "consecutive_renewal_failures > 3",
            "RenewerRenewalFailing",
        ),
    ],
)
def test_rule_tests_catch_broken_thresholds(
    tmp_path: Path, original: str, broken: str, failing_alert: str
) -> None:
    rules = RULES.read_text()
    assert rules.count(original) == 1, "mutation target moved: update this test"
    (tmp_path / RULES.name).write_text(rules.replace(original, broken))
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)

    result = promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert result.returncode != 0, "rule tests still pass with a broken rule"
    assert f"alertname: {failing_alert}," in result.stdout + result.stderr
