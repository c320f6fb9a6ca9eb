"""Where the client keeps its tokens: one per server, in the user's config directory, mode 0600.

`$XDG_CONFIG_HOME/robopt/credentials.json` on Linux (platformdirs: `~/.config/robopt/` when
XDG_CONFIG_HOME is unset), the platform's own config directory elsewhere. The file is only ever
written through a temporary file created with mode 0600 and renamed over it, so a token is never
readable by others, not even for a moment.
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from platformdirs import user_config_dir
from pydantic import BaseModel, Field, ValidationError

DEFAULT_URL = "http://localhost:8000"
FILE_NAME = "credentials.json"


class SavedLogin(BaseModel):
    token: str
    username: str
    role: str = "user"
    expires_at: datetime | None = None


class Credentials(BaseModel):
    default_url: str | None = None
    servers: dict[str, SavedLogin] = Field(default_factory=dict)


def config_dir() -> Path:
    return Path(user_config_dir("robopt", appauthor=False))


def credentials_path() -> Path:
    return config_dir() / FILE_NAME


def normalize_url(url: str) -> str:
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = f"http://{url}"
    return url


def load() -> Credentials:
    path = credentials_path()
    try:
        return Credentials.model_validate(json.loads(path.read_text()))
    except FileNotFoundError:
        return Credentials()
    except (OSError, ValueError, ValidationError):
        # A damaged file only loses its logins: the next `robopt login` rewrites it.
        return Credentials()


def save(credentials: Credentials) -> Path:
    path = credentials_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=".credentials-", dir=path.parent)  # mkstemp creates it 0600
    try:
        with os.fdopen(fd, "w") as f:
            f.write(credentials.model_dump_json(indent=2))
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def remember(url: str, token: str, username: str, role: str, expires_in_s: int | None) -> Path:
    creds = load()
    expires = datetime.now(UTC) + timedelta(seconds=expires_in_s) if expires_in_s else None
    creds.servers[url] = SavedLogin(token=token, username=username, role=role, expires_at=expires)
    creds.default_url = url
    return save(creds)


def forget(url: str) -> bool:
    creds = load()
    if url not in creds.servers:
        return False
    del creds.servers[url]
    save(creds)
    return True


def saved_login(url: str) -> SavedLogin | None:
    return load().servers.get(url)


def resolve_url(given: str | None) -> str:
    """--base-url / ROBOPT_URL, else the server of the last login, else localhost:8000."""
    if given:
        return normalize_url(given)
    return load().default_url or DEFAULT_URL


def as_json(value: Any) -> str:
    return json.dumps(value, indent=2, default=str)
