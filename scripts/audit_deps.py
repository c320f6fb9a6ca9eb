"""Audit requirements.lock with pip-audit; exit 1 on a known vulnerability that has a fixed release.

A vulnerability without a fix is printed, not fatal (nothing to bump to). pip-audit needs a
vulnerability service (PyPI's JSON API, or OSV with AUDIT_SERVICE=osv). When the service answers for
no package at all (an index mirror without per-release JSON, no route to OSV), the audit says so
plainly; it fails then only with AUDIT_REQUIRE_SERVICE=1, so that CI without that service still runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def decide(report: dict[str, Any], require_service: bool) -> tuple[int, list[str]]:
    """The exit code and the lines to print for one pip-audit JSON report."""
    deps = report.get("dependencies", [])
    audited = [d for d in deps if "skip_reason" not in d]
    lines, fixable = [], 0
    for dep in audited:
        for vuln in dep.get("vulns", []):
            fixes = vuln.get("fix_versions") or []
            fixable += bool(fixes)
            verdict = f"fixed in {', '.join(fixes)}: bump it" if fixes else "no fixed release yet"
            lines.append(f"{dep['name']} {dep['version']}: {vuln['id']} ({verdict})")
    lines.append(f"audited {len(audited)} of {len(deps)} locked packages; {fixable} fixable vulnerabilities")
    if fixable:
        return 1, lines
    if deps and not audited:
        lines.append("NOT AUDITED: the vulnerability service answered for no package")
        return (2 if require_service else 0), lines
    return 0, lines


def main() -> None:
    service = os.environ.get("AUDIT_SERVICE", "pypi")
    cmd = [
        sys.executable, "-m", "pip_audit", "-r", str(ROOT / "requirements.lock"),
        "--no-deps", "--disable-pip", "-s", service, "-f", "json",
        "--progress-spinner", "off", "--timeout", "20",
    ]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True)
    try:
        report = json.loads(run.stdout)
    except json.JSONDecodeError:
        sys.exit(f"pip-audit gave no report (exit {run.returncode}):\n{run.stderr[-2000:]}")
    code, lines = decide(report, os.environ.get("AUDIT_REQUIRE_SERVICE") == "1")
    print("\n".join(lines))
    sys.exit(code)


if __name__ == "__main__":
    main()
