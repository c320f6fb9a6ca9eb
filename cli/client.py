"""The REST API over httpx: bearer token, the API's error body as an exception, uploads and
downloads with progress callbacks, and a session's event stream that reconnects with Last-Event-ID."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import httpx

Progress = Callable[[int, int], None]  # (bytes so far, total)

# Uploads are checked (and models probed) before the server answers: allow it minutes.
TIMEOUT = httpx.Timeout(30.0, read=600.0, write=600.0)
# The stream sends a keep-alive every SSE_PING_S (15 s by default); silence for longer is a dead link.
STREAM_TIMEOUT = httpx.Timeout(30.0, read=90.0)
RECONNECTS = 20


class ApiClientError(Exception):
    """An answer in the API's `{"error", "message", "details"}` shape (or a transport failure)."""

    def __init__(self, status: int, error: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.details = details

    def __str__(self) -> str:
        if self.details in (None, "", [], {}):
            return self.message
        extra = self.details if isinstance(self.details, str) else json.dumps(self.details)
        return f"{self.message} ({extra})"


def error_from(response: httpx.Response) -> ApiClientError:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "message" in body:
        return ApiClientError(
            response.status_code,
            str(body.get("error", "http_error")),
            str(body["message"]),
            body.get("details"),
        )
    text = response.text.strip()[:500] if response.text else response.reason_phrase
    return ApiClientError(response.status_code, "http_error", f"HTTP {response.status_code}: {text}")


class _CountingReader:
    """A file whose reads report progress (httpx streams multipart files by reading them in chunks)."""

    def __init__(self, f: IO[bytes], total: int, progress: Progress) -> None:
        self._f = f
        self._total = total
        self._progress = progress
        self._done = 0

    def read(self, size: int = -1) -> bytes:
        chunk = self._f.read(size)
        self._done += len(chunk)
        self._progress(self._done, self._total)
        return chunk

    def seek(self, offset: int, whence: int = 0) -> int:
        position = self._f.seek(offset, whence)
        self._done = position
        return position

    def __getattr__(self, name: str) -> Any:  # fileno, tell, name: what httpx asks for the length
        return getattr(self._f, name)


class Client:
    def __init__(self, base_url: str, token: str | None = None) -> None:
        self.base_url = base_url
        self.token = token
        self._http = httpx.Client(base_url=base_url, timeout=TIMEOUT)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return {**headers, **(extra or {})}

    def _unreachable(self, exc: httpx.HTTPError) -> ApiClientError:
        return ApiClientError(
            0, "network_error", f"Cannot reach {self.base_url}", f"{type(exc).__name__}: {exc}"
        )

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(
                method, path, headers=self._headers(kwargs.pop("headers", None)), **kwargs
            )
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from exc
        if response.is_error:
            raise error_from(response)
        if "json" in response.headers.get("content-type", ""):
            return response.json()
        return response.text

    # ---- auth

    def login(self, username: str, password: str) -> dict[str, Any]:
        body = self.request("POST", "/auth/login", json={"username": username, "password": password})
        self.token = body["access_token"]
        return dict(body)

    def me(self) -> dict[str, Any]:
        return dict(self.request("GET", "/auth/me"))

    def logout(self) -> None:
        self.request("POST", "/auth/logout")

    # ---- models

    def upload_model(
        self, path: Path, fields: dict[str, str], progress: Progress | None = None
    ) -> dict[str, Any]:
        total = path.stat().st_size
        with open(path, "rb") as f:
            reader: Any = _CountingReader(f, total, progress) if progress else f
            files = {"file": (path.name, reader, "application/octet-stream")}
            return dict(self.request("POST", "/models/upload", files=files, data=fields))

    def download(
        self,
        path: str,
        destination: Path | None,
        force: bool,
        progress: Progress | None = None,
        params: dict[str, str] | None = None,
    ) -> tuple[Path, str | None]:
        """Stream a file to `destination` (a directory or a file; None: the server's name here).

        Returns where it went and the runtime the server says the file needs (X-Model-Runtime).
        """
        try:
            with self._http.stream("GET", path, headers=self._headers(), params=params) as response:
                if response.is_error:
                    response.read()
                    raise error_from(response)
                name = _filename(response.headers.get("content-disposition")) or Path(path).parent.name
                target = destination or Path(name)
                if target.is_dir():
                    target = target / name
                if target.exists() and not force:
                    raise ApiClientError(0, "file_exists", f"{target} exists", "pass --force to overwrite it")
                total = int(response.headers.get("content-length") or 0)
                digest = hashlib.sha256()
                partial = target.with_name(f".{target.name}.part")
                done = 0
                try:
                    with open(partial, "wb") as out:
                        for chunk in response.iter_bytes(1 << 20):
                            out.write(chunk)
                            digest.update(chunk)
                            done += len(chunk)
                            if progress:
                                progress(done, total)
                    # A .tar is built while it is sent: a digest the server gives is of a file inside it.
                    tar = response.headers.get("content-type", "").startswith("application/x-tar")
                    expected = None if tar else response.headers.get("x-content-sha256")
                    if expected and expected != digest.hexdigest():
                        raise ApiClientError(
                            0,
                            "checksum_mismatch",
                            "The download does not match the server's SHA-256",
                            expected,
                        )
                    partial.replace(target)
                finally:
                    partial.unlink(missing_ok=True)
                return target, response.headers.get("x-model-runtime")
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from exc

    # ---- session events

    def events(self, session_id: str, after: int = 0) -> Iterator[tuple[int, str, dict[str, Any]]]:
        """(seq, type, data) of a session's events until its `end`, reconnecting after drops."""
        last = after
        failures = 0
        while True:
            headers = {"Accept": "text/event-stream"}
            if last:
                headers["Last-Event-ID"] = str(last)
            ended = False
            problem: ApiClientError | None = None
            try:
                with self._http.stream(
                    "GET",
                    f"/sessions/{session_id}/events",
                    headers=self._headers(headers),
                    timeout=STREAM_TIMEOUT,
                ) as response:
                    if response.is_error:
                        response.read()
                        problem = error_from(response)
                        if response.status_code < 500:  # not found, not allowed: retrying cannot help
                            raise problem
                    else:
                        failures = 0
                        for seq, kind, data in parse_sse(response.iter_lines()):
                            if seq <= last:
                                continue
                            last = seq
                            yield seq, kind, data
                            ended = ended or kind == "end"
            except httpx.HTTPError as exc:
                problem = self._unreachable(exc)
            if ended:
                return
            # A dropped link, a restarting server or one closing early: pick up after `last`.
            failures += 1
            if failures > RECONNECTS:
                raise problem or ApiClientError(
                    0, "stream_closed", "The event stream keeps closing before the session ends"
                )
            time.sleep(min(15.0, 0.5 * 2**failures))


def parse_sse(lines: Iterator[str]) -> Iterator[tuple[int, str, dict[str, Any]]]:
    data: list[str] = []
    kind = "message"
    seq = 0
    for line in lines:
        if line == "":
            if data:
                try:
                    payload = json.loads("\n".join(data))
                except ValueError:
                    payload = {"text": "\n".join(data)}
                yield seq, kind, payload if isinstance(payload, dict) else {"value": payload}
            data, kind = [], "message"
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            data.append(value)
        elif name == "event":
            kind = value
        elif name == "id":
            try:
                seq = int(value)
            except ValueError:
                pass


def _filename(disposition: str | None) -> str | None:
    if not disposition:
        return None
    from email.message import Message

    message = Message()
    message["content-disposition"] = disposition
    name = message.get_filename()
    # Only a plain file name, never a path the server (or a proxy) might have slipped in.
    return Path(name).name if name else None
