"""Archives of model directories: hostile ones refused with nothing left on disk, good ones unpacked."""

from __future__ import annotations

import gzip
import io
import os
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from tools.archives import (
    ArchiveLimits,
    _Budget,
    archive_extension,
    copy_member,
    extract_archive,
    normalise_member_name,
)
from tools.errors import InvalidModelError, UnsafeModelError

GIB = 1024**3


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _tar(path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]], *, gz: bool = False) -> Path:
    with tarfile.open(path, "w:gz" if gz else "w") as tf:
        for m in members:
            if isinstance(m, tarfile.TarInfo):
                tf.addfile(m)
            else:
                info = tarfile.TarInfo(m[0])
                info.size = len(m[1])
                tf.addfile(info, io.BytesIO(m[1]))
    return path


def _refused(path: Path, dest: Path, ext: str, error: type[Exception], match: str, **limits: int) -> None:
    """Extraction is refused with `error` naming the problem, and nothing is left behind."""
    before = sorted(dest.parent.iterdir())
    with pytest.raises(error, match=match):
        extract_archive(path, dest, extension=ext, limits=ArchiveLimits(**limits) if limits else None)
    assert not dest.exists()
    assert sorted(dest.parent.iterdir()) == before


@pytest.fixture
def out(tmp_path: Path) -> Path:
    (tmp_path / "store").mkdir()
    return tmp_path / "store" / "model"


# ---------------------------------------------------------------------------------------------
# names


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("../evil.txt", r"'\.\./evil\.txt' climbs out"),
        ("model/../../evil.txt", "climbs out"),
        ("..\\..\\evil.txt", "climbs out"),  # a Windows tool's separators
        ("/etc/cron.d/evil", "absolute path"),
        ("C:\\Windows\\evil.dll", "absolute path"),
        ("a\x00b", "NUL"),
    ],
)
def test_member_names_that_leave_the_root_are_refused(name: str, match: str) -> None:
    with pytest.raises(UnsafeModelError, match=match):
        normalise_member_name(name)


def test_member_names_are_normalised() -> None:
    assert normalise_member_name("./my-model//config.json") == ("my-model", "config.json")
    assert normalise_member_name("my-model\\weights\\a.bin") == ("my-model", "weights", "a.bin")


@pytest.mark.parametrize("ext", [".zip", ".tar", ".tar.gz"])
@pytest.mark.parametrize("name", ["../evil.txt", "/tmp/evil.txt", "ok/../../evil.txt"])
def test_traversal_and_absolute_paths_are_refused(tmp_path: Path, out: Path, ext: str, name: str) -> None:
    members = {"model/config.json": b"{}", name: b"pwned"}
    path = tmp_path / f"a{ext}"
    if ext == ".zip":
        _zip(path, members)
    else:
        _tar(path, list(members.items()), gz=ext == ".tar.gz")
    _refused(path, out, ext, UnsafeModelError, "climbs out|absolute path")
    assert not (tmp_path / "evil.txt").exists()


# ---------------------------------------------------------------------------------------------
# links, devices, FIFOs


def test_zip_symlink_member_is_refused(tmp_path: Path, out: Path) -> None:
    path = tmp_path / "link.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("model/config.json", b"{}")
        link = zipfile.ZipInfo("model/model.safetensors")
        link.create_system = 3  # Unix: the mode bits in external_attr are read
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
    _refused(path, out, ".zip", UnsafeModelError, "'model/model.safetensors' is a symbolic link")


@pytest.mark.parametrize(
    ("kind", "what"),
    [
        (tarfile.SYMTYPE, "symbolic link"),
        (tarfile.LNKTYPE, "hard link"),
        (tarfile.CHRTYPE, "device"),
        (tarfile.BLKTYPE, "device"),
        (tarfile.FIFOTYPE, "FIFO"),
    ],
)
@pytest.mark.parametrize("gz", [False, True])
def test_tar_links_devices_and_fifos_are_refused(
    tmp_path: Path, out: Path, kind: bytes, what: str, gz: bool
) -> None:
    special = tarfile.TarInfo("model/model.safetensors")
    special.type = kind
    special.linkname = "/etc/passwd"
    path = _tar(tmp_path / ("a.tar.gz" if gz else "a.tar"), [("model/config.json", b"{}"), special], gz=gz)
    _refused(
        path, out, ".tar.gz" if gz else ".tar", UnsafeModelError, f"'model/model.safetensors' is a {what}"
    )


def test_a_refused_member_after_good_ones_leaves_nothing(tmp_path: Path, out: Path) -> None:
    link = tarfile.TarInfo("model/zz-link")
    link.type = tarfile.SYMTYPE
    link.linkname = "../../.."
    path = _tar(tmp_path / "a.tar", [("model/config.json", b"{}"), ("model/w.bin", b"x" * 5000), link])
    _refused(path, out, ".tar", UnsafeModelError, "symbolic link")


# ---------------------------------------------------------------------------------------------
# duplicates


def test_duplicate_zip_members_are_refused(tmp_path: Path, out: Path) -> None:
    path = tmp_path / "dup.zip"
    with pytest.warns(UserWarning, match="Duplicate name"), zipfile.ZipFile(path, "w") as zf:
        zf.writestr("model/config.json", b'{"model_type": "bert"}')
        zf.writestr("model/config.json", b'{"auto_map": {}}')
    _refused(path, out, ".zip", UnsafeModelError, "'model/config.json' appears twice")


def test_names_equal_after_normalisation_are_duplicates(tmp_path: Path, out: Path) -> None:
    path = _tar(tmp_path / "dup.tar", [("model/config.json", b"{}"), ("model//./config.json", b"{}")])
    _refused(path, out, ".tar", UnsafeModelError, "appears twice")


def test_a_file_and_a_folder_of_one_name_are_refused(tmp_path: Path, out: Path) -> None:
    path = _zip(tmp_path / "clash.zip", {"model/weights": b"x", "model/weights/a.bin": b"y"})
    _refused(path, out, ".zip", UnsafeModelError, "lies under 'model/weights', which is a file")


def test_names_differing_in_case_are_two_files(tmp_path: Path, out: Path) -> None:
    path = _zip(tmp_path / "case.zip", {"m/README.md": b"upper", "m/readme.md": b"lower"})
    result = extract_archive(path, out, extension=".zip")
    assert sorted(result.files) == ["README.md", "readme.md"]
    assert (out / "readme.md").read_bytes() == b"lower"


# ---------------------------------------------------------------------------------------------
# caps: members, declared size, bytes written


@pytest.mark.parametrize("ext", [".zip", ".tar.gz"])
def test_too_many_members_are_refused(tmp_path: Path, out: Path, ext: str) -> None:
    members = {f"model/file{i}.json": b"{}" for i in range(6)}
    path = tmp_path / f"many{ext}"
    if ext == ".zip":
        _zip(path, members)
    else:
        _tar(path, list(members.items()), gz=True)
    _refused(path, out, ext, UnsafeModelError, "more than 5 members|6 members; the limit is 5", max_members=5)
    assert extract_archive(path, out, extension=ext, limits=ArchiveLimits(max_members=6)).members == 6


def _zip_bomb(path: Path) -> Path:
    """1 KB on disk whose central directory declares 10 GiB: one real MiB of zeros (deflated to about
    a kilobyte), its uncompressed size rewritten before the directory is written (a zip64 entry)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr("model/config.json", b"{}")
        zf.writestr("model/model.safetensors", b"\0" * (1 << 20))
        zf.infolist()[1].file_size = 10 * GIB
    return path


def test_zip_bomb_declaring_10_gib_is_refused_before_writing(tmp_path: Path, out: Path) -> None:
    bomb = _zip_bomb(tmp_path / "bomb.zip")
    assert bomb.stat().st_size < 2048
    assert zipfile.ZipFile(bomb).infolist()[1].file_size == 10 * GIB
    _refused(
        bomb,
        out,
        ".zip",
        UnsafeModelError,
        r"more than 1 GiB \(declared sizes, at member 'model/model\.safetensors'\)",
        max_unpacked_bytes=GIB,
    )


def test_zip_whose_headers_understate_is_refused_with_nothing_left(tmp_path: Path, out: Path) -> None:
    """The other way round: headers that declare 1000 bytes for a member that inflates to a MiB.
    Nothing beyond the declared bytes is ever written, and the member is refused."""
    path = tmp_path / "liar.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("model/model.safetensors", b"\0" * (1 << 20))
        zf.infolist()[0].file_size = 1000
    _refused(path, out, ".zip", InvalidModelError, "corrupt or truncated", max_unpacked_bytes=64 * 1024)


def test_tar_gz_member_declared_over_the_cap_is_refused_before_it_is_inflated(
    tmp_path: Path, out: Path
) -> None:
    """A 10 GiB member in a .tar.gz of about a kilobyte: its header is read, its data never."""
    info = tarfile.TarInfo("model/model.safetensors")
    info.size = 10 * GIB
    raw = tarfile.TarInfo("model/config.json")
    raw.size = 2
    body = (
        raw.tobuf(tarfile.PAX_FORMAT)
        + b"{}".ljust(512, b"\0")
        + info.tobuf(tarfile.PAX_FORMAT)
        + b"\0" * (1 << 20)
    )
    path = tmp_path / "bomb.tar.gz"
    path.write_bytes(gzip.compress(body, compresslevel=9))
    assert path.stat().st_size < 4096
    _refused(
        path,
        out,
        ".tar.gz",
        UnsafeModelError,
        "declared sizes, at member 'model/model.safetensors'",
        max_unpacked_bytes=GIB,
    )


def test_bytes_written_are_counted_against_the_cap(tmp_path: Path) -> None:
    """The cap while writing, on a stream longer than anything declared: stops at the cap."""

    class Zeros(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, b: bytearray) -> int:  # type: ignore[override]
            b[:] = bytes(len(b))
            return len(b)

    target = tmp_path / "sink"
    with open(target, "wb") as fh, pytest.raises(UnsafeModelError, match="bytes written, at member 'm'"):
        copy_member(io.BufferedReader(Zeros()), fh, _Budget(3 << 20), "m", declared=10 * GIB)
    assert target.stat().st_size <= 3 << 20
    with (
        open(target, "wb") as fh,
        pytest.raises(UnsafeModelError, match="more than the 1000 bytes its header"),
    ):
        copy_member(io.BytesIO(b"\0" * 5000), fh, _Budget(GIB), "m", declared=1000)


# ---------------------------------------------------------------------------------------------
# corrupt archives


@pytest.mark.parametrize("ext", [".zip", ".tar", ".tar.gz"])
def test_truncated_archives_are_invalid_and_leave_nothing(tmp_path: Path, out: Path, ext: str) -> None:
    data = os.urandom(200_000)  # incompressible, so the cut lands inside the member's data
    path = tmp_path / f"full{ext}"
    if ext == ".zip":
        _zip(path, {"model/config.json": b"{}", "model/model.safetensors": data})
    else:
        _tar(path, [("model/config.json", b"{}"), ("model/model.safetensors", data)], gz=ext == ".tar.gz")
    cut = tmp_path / f"cut{ext}"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    _refused(cut, out, ext, InvalidModelError, "corrupt or truncated")


def test_encrypted_zip_members_are_refused(tmp_path: Path, out: Path) -> None:
    path = tmp_path / "enc.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("model/config.json", b"not really encrypted")
        zf.infolist()[0].flag_bits |= 0x1  # the central directory says so
    _refused(path, out, ".zip", InvalidModelError, "'model/config.json' is encrypted")


# ---------------------------------------------------------------------------------------------
# good archives


@pytest.mark.parametrize("ext", [".zip", ".tar", ".tar.gz", ".tgz"])
def test_a_model_folder_is_unpacked_with_its_top_folder_stripped(tmp_path: Path, out: Path, ext: str) -> None:
    members = {
        "my-model/": b"",
        "my-model/config.json": b'{"model_type": "bert"}',
        "my-model/model.safetensors": b"w" * 3000,
        "my-model/tokenizer/vocab.txt": b"[PAD]\n",
    }
    path = tmp_path / f"m{ext}"
    if ext == ".zip":
        _zip(path, {**members, "__MACOSX/my-model/._config.json": b"junk"})
    else:
        folder = tarfile.TarInfo("my-model")
        folder.type = tarfile.DIRTYPE
        _tar(path, [folder, *((k, v) for k, v in members.items() if not k.endswith("/"))], gz=ext != ".tar")
    result = extract_archive(path, out, extension=ext)
    assert result.stripped_prefix == "my-model"
    assert sorted(result.files) == ["config.json", "model.safetensors", "tokenizer/vocab.txt"]
    assert result.unpacked_bytes == sum(len(v) for v in members.values())
    assert (out / "model.safetensors").read_bytes() == b"w" * 3000
    assert not (out / "__MACOSX").exists()
    mode = stat.S_IMODE((out / "config.json").stat().st_mode)
    assert mode & 0o111 == 0  # never executable, whatever the archive said


def test_files_at_the_top_are_kept_where_they_are(tmp_path: Path, out: Path) -> None:
    path = _zip(tmp_path / "flat.zip", {"config.json": b"{}", "weights/a.bin": b"a"})
    result = extract_archive(path, out, extension=".zip")
    assert result.stripped_prefix is None
    assert sorted(result.files) == ["config.json", "weights/a.bin"]


def test_destination_must_be_new(tmp_path: Path, out: Path) -> None:
    out.mkdir()
    path = _zip(tmp_path / "a.zip", {"config.json": b"{}"})
    with pytest.raises(FileExistsError):
        extract_archive(path, out, extension=".zip")
    assert out.is_dir()  # someone else's folder is left alone


@pytest.mark.parametrize(
    ("name", "ext"),
    [
        ("m.zip", ".zip"),
        ("M.TAR.GZ", ".tar.gz"),
        ("m.tgz", ".tgz"),
        ("m.tar", ".tar"),
        ("m.gz", None),
        ("m.onnx", None),
    ],
)
def test_archive_extension(name: str, ext: str | None) -> None:
    assert archive_extension(name) == ext
