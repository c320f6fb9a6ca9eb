"""Layer selection shared by the quantizers: fnmatch `include` / `exclude` patterns on layer names."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable

from tools.errors import InvalidArgumentError


def matches(name: str, patterns: list[str] | None) -> bool:
    return bool(patterns) and any(fnmatch.fnmatchcase(name, p) for p in patterns or [])


def selected(names: Iterable[str], include: list[str] | None, exclude: list[str] | None) -> bool:
    """Whether a layer known by any of `names` passes include (any name matches) and exclude (none does)."""
    names = list(names)
    if include and not any(matches(n, include) for n in names):
        return False
    return not (exclude and any(matches(n, exclude) for n in names))


def no_layers(
    method: str, types: Iterable[str], include: list[str] | None, exclude: list[str] | None
) -> None:
    raise InvalidArgumentError(
        f"no layer to quantize with {method}: no {'/'.join(sorted(set(types)))} layer matches "
        f"include={include} exclude={exclude}",
    )
