"""The README's DNS provider table is the registry's own rendering, never hand-edited."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from renewer.solvers.providers import markdown_table

README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- providers:start -->", "<!-- providers:end -->"
REGENERATE = "regenerate it with `renewer providers` and paste it between the markers"


def readme_section() -> str:
    text = README.read_text()
    assert text.count(START) == 1, f"README.md needs exactly one {START} line"
    assert text.count(END) == 1, f"README.md needs exactly one {END} line"
    section = text.split(START, 1)[1]
    assert END in section, f"{END} must come after {START}"
    return section.split(END, 1)[0]


def test_readme_table_is_the_registry_table() -> None:
    assert readme_section().strip("\n") == markdown_table().strip("\n"), (
        f"the provider table in README.md is stale: {REGENERATE}"
    )


def test_providers_command_prints_the_table() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "renewer", "providers"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip("\n") == markdown_table().strip("\n")
