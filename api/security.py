"""Passwords (argon2 via pwdlib), the JWT secret, and access tokens (pyjwt, HS256 only)."""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

from state.settings import Settings

log = logging.getLogger("robopt.security")

ALGORITHM = "HS256"
REQUIRED_CLAIMS = ["exp", "iat", "nbf", "jti", "sub", "role"]
LEEWAY_S = 10
SECRET_FILENAME = ".jwt_secret"
DEFAULT_ADMIN_PASSWORD = "admin"  # the spec's example; development only, with a warning at every start
MIN_SECRET_LENGTH = 32
MIN_PRODUCTION_PASSWORD_LENGTH = 12
# Values that appear in tutorials and .env templates; never acceptable in production.
WEAK_VALUES = {
    "",
    "admin",
    "password",
    "changeme",
    "change-me",
    "secret",
    "secret-key",
    "your-secret-key",
    "your-secret-key-here",
    "jwt-secret",
    "development",
    "test",
}

_hasher = PasswordHash((Argon2Hasher(),))  # argon2id with pwdlib's recommended (OWASP) parameters
_dummy_hash: str | None = None


def configure_password_hashing(*, time_cost: int, memory_cost: int, parallelism: int) -> None:
    """Change the argon2 parameters of new hashes (the test suite uses cheap ones to stay fast).

    Existing hashes keep verifying: argon2 hashes carry their own parameters.
    """
    global _hasher, _dummy_hash
    _hasher = PasswordHash(
        (Argon2Hasher(time_cost=time_cost, memory_cost=memory_cost, parallelism=parallelism),)
    )
    _dummy_hash = None


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password: str, hashed: str | None) -> bool:
    global _dummy_hash
    if hashed is None:
        # Unknown user: verify against a throwaway hash so both paths cost the same time.
        if _dummy_hash is None:
            _dummy_hash = _hasher.hash(secrets.token_urlsafe(16))
        _hasher.verify(password, _dummy_hash)
        return False
    try:
        return _hasher.verify(password, hashed)
    except Exception:  # a malformed hash in the database is a failed login, not a 500
        return False


class InsecureConfigurationError(RuntimeError):
    """Production settings that would leave the service open (default secret or admin password)."""


def check_production_settings(settings: Settings) -> None:
    if settings.environment != "production":
        return
    problems: list[str] = []
    secret = settings.jwt_secret_key
    if not secret:
        problems.append("JWT_SECRET_KEY is not set")
    elif secret.lower() in WEAK_VALUES or len(secret) < MIN_SECRET_LENGTH:
        problems.append(f"JWT_SECRET_KEY is a default or shorter than {MIN_SECRET_LENGTH} characters")
    password = settings.admin_password
    if not password:
        problems.append("ADMIN_PASSWORD is not set")
    elif password.lower() in WEAK_VALUES or len(password) < MIN_PRODUCTION_PASSWORD_LENGTH:
        problems.append(
            f"ADMIN_PASSWORD is a default or shorter than {MIN_PRODUCTION_PASSWORD_LENGTH} characters"
        )
    if problems:
        raise InsecureConfigurationError(
            "refusing to start in production: " + "; ".join(problems) + ". Set them in the environment."
        )


def load_or_create_secret(settings: Settings) -> str:
    """JWT_SECRET_KEY from the environment, else a random secret generated once into DATA_DIR (0600)."""
    if settings.jwt_secret_key:
        return settings.jwt_secret_key
    path = Path(settings.data_dir) / SECRET_FILENAME
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        secret = path.read_text().strip()
        if len(secret) >= MIN_SECRET_LENGTH:
            if path.stat().st_mode & 0o077:
                os.chmod(path, 0o600)
            return secret
        raise InsecureConfigurationError(
            f"{path} holds a secret that is too short; delete it to regenerate"
        ) from None
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(48))
    log.info("generated a new JWT secret at %s", path)
    return path.read_text().strip()


@dataclass(frozen=True)
class TokenClaims:
    sub: str
    role: str
    jti: str
    expires_at: datetime  # aware UTC


class InvalidTokenError(Exception):
    """Any token that must not authenticate: malformed, forged, expired, wrong algorithm, missing claims."""


def create_access_token(secret: str, user_id: str, role: str, expire_minutes: int) -> tuple[str, int]:
    now = datetime.now(UTC)
    expires_in = expire_minutes * 60
    claims = {
        "sub": user_id,
        "role": role,
        "jti": secrets.token_hex(16),
        "iat": now,
        "nbf": now,
        "exp": now + timedelta(seconds=expires_in),
    }
    return jwt.encode(claims, secret, algorithm=ALGORITHM), expires_in


def decode_access_token(secret: str, token: str) -> TokenClaims:
    try:
        payload = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],  # allow-list: "none" and every other algorithm are refused
            leeway=LEEWAY_S,
            options={"require": REQUIRED_CLAIMS, "verify_signature": True},
        )
    except jwt.PyJWTError as exc:
        raise InvalidTokenError(str(exc)) from exc
    sub, role, jti = payload.get("sub"), payload.get("role"), payload.get("jti")
    if not all(isinstance(v, str) and v for v in (sub, role, jti)):
        raise InvalidTokenError("claims sub, role and jti must be non-empty strings")
    expires_at = datetime.fromtimestamp(int(payload["exp"]), UTC)
    return TokenClaims(sub=sub, role=role, jti=jti, expires_at=expires_at)
