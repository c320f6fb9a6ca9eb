"""The CLI and the dashboard offer every technique the criteria accept (compilation was missing)."""

from __future__ import annotations

import re
from pathlib import Path

from agents.criteria import TECHNIQUES
from cli.app import TECHNIQUES as CLI_TECHNIQUES

MODEL_VIEW = Path(__file__).resolve().parents[2] / "api" / "ui" / "js" / "views" / "model.js"


def test_cli_techniques_are_the_criteria_techniques() -> None:
    assert tuple(CLI_TECHNIQUES) == tuple(TECHNIQUES)


def test_dashboard_techniques_are_the_criteria_techniques() -> None:
    block = MODEL_VIEW.read_text().split("const TECHNIQUES = [", 1)[1].split("];", 1)[0]
    assert tuple(re.findall(r'\[\s*"([a-z_]+)"', block)) == tuple(TECHNIQUES)
