"""The dependency lock and the audit: every dependency pinned exactly, no CUDA build pulled, the
lock covering pyproject.toml, and the audit's verdict on pip-audit reports (fixable -> fail)."""

from __future__ import annotations

import re
import sys
import tomllib

from tests.conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "scripts"))
from audit_deps import decide  # noqa: E402

LOCK = REPO_ROOT / "requirements.lock"
_PIN = re.compile(r"^([A-Za-z0-9._-]+)==([A-Za-z0-9.+!_-]+)$")


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _lock() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        match = _PIN.match(line)
        assert match, f"not an exact pin: {line!r}"
        pins[_normalize(match[1])] = match[2]
    return pins


def test_lock_pins_everything_pyproject_needs_and_nothing_cuda() -> None:
    pins = _lock()
    assert len(pins) > 50
    assert not [n for n in pins if n.startswith(("nvidia-", "triton", "cuda-"))]
    assert "torch" not in pins  # installed first, from local disk, as the CPU build
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    missing = []
    for requirement in wanted:
        name = _normalize(re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0])
        if name == "torch":
            continue
        if name not in pins:
            missing.append(name)
        exact = re.search(r"==([^,;\s]+)", requirement)
        if exact and name in pins:
            assert pins[name] == exact[1], f"{name}: pyproject pins {exact[1]}, the lock {pins[name]}"
    assert not missing, f"run `make lock`: the lock lacks {missing}"


def test_install_uses_the_lock() -> None:
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert "$(STAMP): pyproject.toml requirements.lock" in makefile
    install = makefile.split("$(STAMP):", 1)[1].split("\n\n", 1)[0]
    assert (
        install.index("torch==2.13.0") < install.index("-r requirements.lock") < install.index("--no-deps -e")
    )
    assert "make audit" in (REPO_ROOT / ".ci" / "run").read_text()


def _dep(name: str, version: str, *vulns: dict) -> dict:
    return {"name": name, "version": version, "vulns": list(vulns)}


def test_audit_fails_only_on_a_vulnerability_with_a_fixed_release() -> None:
    fixable = {"id": "GHSA-xxxx", "fix_versions": ["2.0.1"], "aliases": [], "description": ""}
    unfixed = {"id": "PYSEC-yyyy", "fix_versions": [], "aliases": [], "description": ""}
    code, lines = decide({"dependencies": [_dep("a", "2.0.0", fixable), _dep("b", "1.0")]}, False)
    assert code == 1 and "a 2.0.0: GHSA-xxxx (fixed in 2.0.1: bump it)" in lines
    code, lines = decide({"dependencies": [_dep("a", "1.0", unfixed), _dep("b", "1.0")]}, True)
    assert code == 0 and "no fixed release yet" in lines[0]
    skipped = {"dependencies": [{"name": "a", "version": "1", "skip_reason": "Dependency not found on PyPI"}]}
    assert decide(skipped, False)[0] == 0 and "NOT AUDITED" in decide(skipped, False)[1][-1]
    assert decide(skipped, True)[0] == 2
    assert decide({"dependencies": [_dep("a", "1.0")]}, True) == (
        0,
        ["audited 1 of 1 locked packages; 0 fixable vulnerabilities"],
    )
