"""The Grafana dashboard (and the alert rules) only query metrics renewer exports.

Every PromQL expression is parsed by promtool (as a recording rule, after substituting
Grafana's variables), then its metric names are checked against ``METRIC_NAMES``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from renewer.metrics import METRIC_NAMES

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "grafana" / "renewer-dashboard.json"
RULES = ROOT / "prometheus" / "renewer-alerts.yml"

GRAFANA_VARIABLES = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
    "$gateway": ".*",
}
KEYWORDS = {
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
}
SUFFIXES = ("_bucket", "_sum", "_count", "_total")
PROMETHEUS_OWN = {"up"}  # scrape health, only in the RenewerDown rule


def exported(name: str) -> bool:
    """True for an exported family or one of its histogram/counter sample names."""
    return name in METRIC_NAMES or any(
        name.endswith(suffix) and name.removesuffix(suffix) in METRIC_NAMES for suffix in SUFFIXES
    )


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions or keywords."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\boffset\s+-?\w+", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"(?<![\w:])\d+(?:\.\d*)?(?:[eE][+-]?\d+)?", " ", text)
    return {
        match.group(0)
        for match in re.finditer(r"[A-Za-z_:][\w:]*(?!\w*\s*\()", text)
        if match.group(0).lower() not in KEYWORDS
    }


def walk_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from walk_panels(panel.get("panels", []))


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def dashboard_exprs() -> list[str]:
    exprs = [
        target["expr"]
        for panel in walk_panels(dashboard()["panels"])
        for target in panel.get("targets", [])
    ]
    assert exprs, "no queries found in the dashboard"
    return exprs


def substituted(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
    return expr


def rule_exprs() -> list[str]:
    text = RULES.read_text()
    return [
        match.group(1)
        for match in re.finditer(r"^ {8}expr: (?:\|\n)?((?:.+\n)+?)(?= {8}\w)", text, re.M)
    ]


def test_metric_name_extraction() -> None:
    expr = (
        'sum by (le) (rate(foo_seconds_bucket{a="b",c=~"x|y"}[5m])) * on (x) group_left (y) bar'
        " > 0.5 and time() - baz offset 5m or vector(1e3) unless qux:recorded"
    )
    assert metric_names(expr) == {"foo_seconds_bucket", "bar", "baz", "qux:recorded"}


def test_exported_accepts_suffix_forms_only_of_known_families() -> None:
    assert exported("renewer_scan_duration_seconds_bucket")
    assert exported("renewer_renewals_total")
    assert not exported("renewer_renewals")
    assert not exported("renewer_certificate_expiry_days")


def test_dashboard_queries_parse(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool not found: apt-get install prometheus"
    rules = tmp_path / "dashboard-rules.yml"
    rules.write_text(
        json.dumps(
            {
                "groups": [
                    {
                        "name": "dashboard",
                        "rules": [
                            {"record": f"dashboard:query_{i}", "expr": substituted(expr)}
                            for i, expr in enumerate(dashboard_exprs())
                        ],
                    }
                ]
            }
        )
    )
    result = subprocess.run(
        [promtool, "check", "rules", str(rules)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("expr", dashboard_exprs())
def test_dashboard_uses_exported_metrics(expr: str) -> None:
    names = metric_names(substituted(expr))
    assert names, f"no metric in {expr!r}"
    assert {name for name in names if not exported(name)} == set()


def test_gateway_variable_uses_exported_metric() -> None:
    (variable,) = [v for v in dashboard()["templating"]["list"] if v["name"] == "gateway"]
    match = re.fullmatch(r"label_values\((\w+), gateway\)", variable["definition"])
    assert match
    assert exported(match.group(1))


def test_dashboard_covers_the_essentials() -> None:
    titles = {panel["title"] for panel in walk_panels(dashboard()["panels"])}
    assert {
        "Expiry timeline (time left)",
        "Upcoming renewals",
        "Failures by reason",
        "Scans by result",
    } <= titles
    used = set().union(*(metric_names(substituted(e)) for e in dashboard_exprs()))
    for name in (
        "renewer_certificate_not_after_timestamp_seconds",
        "renewer_certificate_renewal_timestamp_seconds",
        "renewer_renewal_failures_total",
        "renewer_scan_last_success_timestamp_seconds",
    ):
        assert name in used


def test_alert_rules_use_exported_metrics() -> None:
    exprs = rule_exprs()
    assert len(exprs) == 9
    used = set().union(*(metric_names(expr) for expr in exprs))
    assert {name for name in used if not exported(name)} == PROMETHEUS_OWN
