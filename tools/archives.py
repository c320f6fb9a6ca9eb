"""Safe extraction of a model directory packed as `.zip`, `.tar`, `.tar.gz` / `.tgz`.

An archive is data from a stranger: every member is checked before a byte of it is written, and the
bytes written are counted again while they are written.

- Names: no absolute paths (`/x`, `C:x`), no `..`, no NUL; backslashes count as separators (a Windows
  tool's `..\\x` is a traversal too). Exact duplicates (after normalisation) are refused, so a later
  member can never replace one already checked; names that differ only in case are two files.
- Types: regular files and directories only. Symbolic links, hard links, devices, FIFOs and sparse
  tar members are refused, as are encrypted zip members.
- Caps: the member count and the total unpacked size are checked against the sizes the archive
  declares before anything is written (a zip's central directory up front; a tar's headers one by
  one, each before its data is read, so a 10 GB member of a 1 KB .tar.gz is refused without being
  inflated), and the bytes actually written are counted against the same cap while extracting.
- A single top-level folder (people zip `my-model/`) is stripped; macOS `__MACOSX/` resource forks
  are skipped.
- Files are created fresh (`O_EXCL`, never following a link) with modes 0644 / 0755, whatever the
  archive says. On any refusal or error everything written so far is removed.

Errors: `UnsafeModelError` (traversal, links, devices, caps exceeded, duplicates) and
`InvalidModelError` (corrupt or truncated archives), each naming the member.
"""

from __future__ import annotations

import gzip
import os
import shutil
import stat
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO
from zlib import error as zlib_error

from tools.errors import InvalidModelError, UnsafeModelError

ARCHIVE_EXTENSIONS = (".zip", ".tar", ".tar.gz", ".tgz")
DEFAULT_MAX_MEMBERS = 10_000
DEFAULT_MAX_UNPACKED_BYTES = 60 * 1024**3
_CHUNK = 1 << 20
_MAX_NAME = 4096
_MAX_PART = 255
_SKIPPED_TOP = "__MACOSX"


@dataclass(frozen=True)
class ArchiveLimits:
    """Caps on what one archive may unpack to (the service passes its settings)."""

    max_members: int = DEFAULT_MAX_MEMBERS
    max_unpacked_bytes: int = DEFAULT_MAX_UNPACKED_BYTES


@dataclass
class ExtractedArchive:
    """What an extraction wrote under `root`."""

    root: Path
    files: list[str] = field(default_factory=list)  # relative paths, in archive order
    unpacked_bytes: int = 0
    members: int = 0
    stripped_prefix: str | None = None


def archive_extension(filename: str) -> str | None:
    """The archive extension of a file name (`.tar.gz` as one), or None when it is not an archive."""
    lower = filename.lower()
    for ext in (".tar.gz", ".tgz", ".tar", ".zip"):
        if lower.endswith(ext):
            return ext
    return None


def is_archive_extension(extension: str) -> bool:
    return extension.lower() in ARCHIVE_EXTENSIONS


def extract_archive(
    path: Path, destination: Path, *, extension: str, limits: ArchiveLimits | None = None
) -> ExtractedArchive:
    """Extract the archive at `path` into `destination` (created here; it must not exist yet).

    Raises UnsafeModelError / InvalidModelError naming the member; then nothing is left at
    `destination`.
    """
    limits = limits or ArchiveLimits()
    ext = extension.lower()
    if ext not in ARCHIVE_EXTENSIONS:
        raise InvalidModelError(
            f"'{ext}' is not an archive extension; use one of {', '.join(ARCHIVE_EXTENSIONS)}"
        )
    destination = Path(destination)
    destination.mkdir(parents=True, exist_ok=False)
    try:
        if ext == ".zip":
            return _extract_zip(Path(path), destination, limits)
        return _extract_tar(Path(path), destination, limits, gzipped=ext != ".tar")
    except BaseException:
        shutil.rmtree(destination, ignore_errors=True)
        raise


# ---------------------------------------------------------------------------------------------
# member checks shared by both formats


@dataclass
class _Member:
    """One member to extract: its normalised relative path, kind and declared size."""

    name: str  # as in the archive, for messages
    parts: tuple[str, ...]  # normalised path components
    is_dir: bool
    size: int


def normalise_member_name(raw: str) -> tuple[str, ...]:
    """The path components of a member name; UnsafeModelError for anything that leaves the root."""
    if not raw or "\x00" in raw:
        raise UnsafeModelError(f"archive member {raw!r} has an empty name or a NUL character")
    if len(raw) > _MAX_NAME:
        raise UnsafeModelError(
            f"archive member '{raw[:80]}...' has a name longer than {_MAX_NAME} characters"
        )
    name = raw.replace("\\", "/")
    if name.startswith("/") or (len(name) >= 2 and name[1] == ":" and name[0].isalpha()):
        raise UnsafeModelError(f"archive member '{raw}' has an absolute path; members must be relative")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise UnsafeModelError(f"archive member '{raw}' climbs out of the archive with '..'")
    if any(len(p) > _MAX_PART for p in parts):
        raise UnsafeModelError(
            f"archive member '{raw[:80]}' has a path component over {_MAX_PART} characters"
        )
    return parts


class _Plan:
    """The members to write, checked as a whole: count, declared size, duplicates, file/folder clashes."""

    def __init__(self, limits: ArchiveLimits) -> None:
        self.limits = limits
        self.members: list[_Member] = []
        self.seen = 0
        self.declared = 0
        self._files: set[tuple[str, ...]] = set()
        self._dirs: set[tuple[str, ...]] = set()

    def add(self, raw: str, *, is_dir: bool, size: int) -> _Member | None:
        self.seen += 1
        if self.seen > self.limits.max_members:
            raise UnsafeModelError(
                f"the archive holds more than {self.limits.max_members} members (at '{raw}'); "
                "that is over the limit on members per archive"
            )
        parts = normalise_member_name(raw)
        if not parts or parts[0] == _SKIPPED_TOP:
            return None  # the archive's root itself, or a macOS resource fork
        if size < 0:
            raise InvalidModelError(f"archive member '{raw}' declares a negative size")
        self.declared += size
        if self.declared > self.limits.max_unpacked_bytes:
            raise UnsafeModelError(
                f"the archive unpacks to more than {_gib(self.limits.max_unpacked_bytes)} (declared sizes, "
                f"at member '{raw}'); that is over the limit on unpacked size",
            )
        if is_dir:
            if parts in self._files:
                raise UnsafeModelError(f"archive member '{raw}' is both a file and a folder")
            if parts in self._dirs:
                return None  # a folder named twice creates nothing new
        else:
            if parts in self._files:
                raise UnsafeModelError(f"archive member '{raw}' appears twice; duplicate names are refused")
            if parts in self._dirs:
                raise UnsafeModelError(f"archive member '{raw}' is both a file and a folder")
        for i in range(1, len(parts)):
            if parts[:i] in self._files:
                raise UnsafeModelError(
                    f"archive member '{raw}' lies under '{'/'.join(parts[:i])}', which is a file"
                )
            self._dirs.add(parts[:i])
        (self._dirs if is_dir else self._files).add(parts)
        member = _Member(raw, parts, is_dir, size)
        self.members.append(member)
        return member

    def common_prefix(self) -> str | None:
        """The single top-level folder every member lies in, if there is one."""
        tops = {m.parts[0] for m in self.members}
        if len(tops) != 1:
            return None
        top = next(iter(tops))
        if (top,) in self._files or not any(len(m.parts) > 1 for m in self.members):
            return None
        return top


class _Budget:
    """Bytes actually written, against the cap; checked on every chunk."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.written = 0

    def spend(self, n: int, member: str) -> None:
        self.written += n
        if self.written > self.cap:
            raise UnsafeModelError(
                f"the archive unpacks to more than {_gib(self.cap)} (bytes written, at member '{member}'); "
                "its headers understate its size, and extraction was stopped at the limit",
            )


def copy_member(source: IO[bytes], target: IO[bytes], budget: _Budget, member: str, declared: int) -> int:
    """Copy one member's bytes, counting them; more than `declared` is refused, like the cap."""
    copied = 0
    while True:
        chunk = source.read(_CHUNK)
        if not chunk:
            return copied
        copied += len(chunk)
        if copied > declared:
            raise UnsafeModelError(
                f"archive member '{member}' unpacks to more than the {declared} bytes its header declares"
            )
        budget.spend(len(chunk), member)
        target.write(chunk)


class _Writer:
    """Creates the planned folders and files under `destination`, counting the bytes written."""

    def __init__(self, plan: _Plan, destination: Path) -> None:
        self.plan = plan
        self.destination = destination
        self.prefix = plan.common_prefix()
        self.budget = _Budget(plan.limits.max_unpacked_bytes)
        self.result = ExtractedArchive(destination, stripped_prefix=self.prefix)

    def _target(self, member: _Member) -> Path | None:
        parts = member.parts[1:] if self.prefix is not None else member.parts
        return self.destination.joinpath(*parts) if parts else None

    def folder(self, member: _Member) -> None:
        target = self._target(member)
        if target is not None:
            target.mkdir(mode=0o755, parents=True, exist_ok=True)

    def file(self, member: _Member, source: IO[bytes]) -> None:
        target = self._target(member)
        if target is None:
            return
        target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        with os.fdopen(os.open(target, flags, 0o644), "wb") as out:
            written = copy_member(source, out, self.budget, member.name, member.size)
        if written != member.size:
            raise InvalidModelError(
                f"archive member '{member.name}' holds {written} bytes but its header declares "
                f"{member.size}: the archive is truncated or corrupt"
            )
        self.result.files.append(target.relative_to(self.destination).as_posix())

    def finish(self) -> ExtractedArchive:
        self.result.unpacked_bytes = self.budget.written
        self.result.members = self.plan.seen
        return self.result


def _gib(n: int) -> str:
    return f"{n / 1024**3:.3g} GiB" if n >= 1024**3 else f"{n} bytes"


# ---------------------------------------------------------------------------------------------
# zip


def _zip_kind(info: zipfile.ZipInfo) -> str:
    """'file', 'dir', or the refused kind of a zip member (from its Unix mode when it has one)."""
    mode = info.external_attr >> 16
    if mode and (info.create_system == 3 or stat.S_IFMT(mode)):
        fmt = stat.S_IFMT(mode)
        if stat.S_ISLNK(mode):
            return "symbolic link"
        if fmt and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            return "device, FIFO or socket"
    return "dir" if info.is_dir() else "file"


def _extract_zip(path: Path, destination: Path, limits: ArchiveLimits) -> ExtractedArchive:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InvalidModelError(f"the .zip archive is corrupt or truncated: {exc}") from exc
    with archive:
        infos = archive.infolist()
        if len(infos) > limits.max_members:
            raise UnsafeModelError(
                f"the archive holds {len(infos)} members; the limit is {limits.max_members}"
            )
        plan = _Plan(limits)
        planned: list[tuple[_Member, zipfile.ZipInfo]] = []
        for info in infos:
            kind = _zip_kind(info)
            if kind not in ("file", "dir"):
                raise UnsafeModelError(
                    f"archive member '{info.filename}' is a {kind}; only files and folders are accepted"
                )
            if info.flag_bits & 0x1:
                raise InvalidModelError(
                    f"archive member '{info.filename}' is encrypted; upload an unencrypted archive"
                )
            member = plan.add(
                info.filename, is_dir=kind == "dir", size=0 if kind == "dir" else info.file_size
            )
            if member is not None:
                planned.append((member, info))
        writer = _Writer(plan, destination)
        try:
            for member, info in planned:
                if member.is_dir:
                    writer.folder(member)
                    continue
                with archive.open(info) as source:
                    writer.file(member, source)
        except (zipfile.BadZipFile, EOFError, NotImplementedError, zlib_error) as exc:
            raise InvalidModelError(f"the .zip archive is corrupt or truncated: {exc}") from exc
        except RuntimeError as exc:  # zipfile's "password required" and similar
            raise InvalidModelError(f"the .zip archive could not be read: {exc}") from exc
        return writer.finish()


# ---------------------------------------------------------------------------------------------
# tar


def _tar_kind(info: tarfile.TarInfo) -> str:
    if info.isdir():
        return "dir"
    if info.issym():
        return "symbolic link"
    if info.islnk():
        return "hard link"
    if info.ischr() or info.isblk():
        return "device"
    if info.isfifo():
        return "FIFO"
    if info.issparse():
        return "sparse file"
    if info.isreg():
        return "file"
    return f"special member (type {info.type!r})"


def _extract_tar(path: Path, destination: Path, limits: ArchiveLimits, *, gzipped: bool) -> ExtractedArchive:
    # Stream mode ("r|"): headers and data are read front to back, never seeking (a gzip stream cannot
    # seek back without inflating it again from the start).
    mode = "r|gz" if gzipped else "r|"
    kind = ".tar.gz" if gzipped else ".tar"
    plan = _Plan(limits)
    planned: list[_Member | None] = []  # per header, in order: the member to write or None (skipped)
    try:
        # Pass 1: headers only, each checked before the data behind it is skipped (and, for .tar.gz,
        # inflated), so a member declared over the cap is refused before its bytes are read.
        with tarfile.open(path, mode) as archive:
            while (info := archive.next()) is not None:
                member_kind = _tar_kind(info)
                if member_kind not in ("file", "dir"):
                    raise UnsafeModelError(
                        f"archive member '{info.name}' is a {member_kind}; "
                        "only files and folders are accepted"
                    )
                planned.append(
                    plan.add(
                        info.name, is_dir=member_kind == "dir", size=info.size if member_kind == "file" else 0
                    )
                )
                archive.members.clear()  # stream mode needs no index; keep memory flat
        # Pass 2: the same headers again, with their data.
        writer = _Writer(plan, destination)
        with tarfile.open(path, mode) as archive:
            index = 0
            while (info := archive.next()) is not None:
                if index >= len(planned):
                    raise InvalidModelError(f"the {kind} archive changed while it was read")
                member = planned[index]
                index += 1
                archive.members.clear()
                if member is None:
                    continue
                if info.name != member.name:
                    raise InvalidModelError(
                        f"the {kind} archive changed while it was read (at '{info.name}')"
                    )
                if member.is_dir:
                    writer.folder(member)
                    continue
                source = archive.extractfile(info)
                if source is None:
                    raise InvalidModelError(f"archive member '{member.name}' changed while it was read")
                writer.file(member, source)
        return writer.finish()
    except (tarfile.TarError, EOFError, zlib_error, gzip.BadGzipFile) as exc:
        raise InvalidModelError(f"the {kind} archive is corrupt or truncated: {exc}") from exc
