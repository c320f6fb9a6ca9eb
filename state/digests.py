"""Content digests of a model on disk: a file's SHA-256, or one over a directory's files.

A directory's digest covers each regular file's path relative to the directory (POSIX form, sorted)
and its contents, so a renamed, added, removed or edited file changes it. Symlinks are refused: an
imported directory must not reach outside itself.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from state.artifacts import sha256_file

BLOCK = 1 << 20


class DigestError(ValueError):
    pass


def tree_files(root: Path) -> list[Path]:
    """The regular files under `root`, sorted by relative path; a symlink or special file is an error."""
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in (*dirnames, *filenames):
            path = Path(dirpath) / name
            if path.is_symlink():
                raise DigestError(f"{path.relative_to(root)} is a symbolic link")
        for name in filenames:
            path = Path(dirpath) / name
            if not path.is_file():
                raise DigestError(f"{path.relative_to(root)} is not a regular file")
            files.append(path)
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def sha256_tree(root: Path) -> str:
    digest = hashlib.sha256()
    for path in tree_files(root):
        rel = path.relative_to(root).as_posix().encode()
        digest.update(len(rel).to_bytes(8, "big") + rel + path.stat().st_size.to_bytes(8, "big"))
        with open(path, "rb") as f:
            while block := f.read(BLOCK):
                digest.update(block)
    return digest.hexdigest()


def content_digest(path: Path) -> str:
    """SHA-256 of a file, or the tree digest of a directory."""
    path = Path(path)
    if path.is_dir():
        return sha256_tree(path)
    return sha256_file(path)


def content_size(path: Path) -> int:
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in tree_files(path))
    return path.stat().st_size
