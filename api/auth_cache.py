"""The authenticated read path's cache: a token's decoded claims and its user, for AUTH_CACHE_TTL_S.

Every authenticated request used to decode the JWT and query the user and the revocation list. Here
a token seen before costs a dictionary lookup. What keeps that correct:

- Logout (`revoke_token`) and any change of a user (`invalidate_user`: disable, role, password) drop
  the entries at once in this process, and publish the same invalidation on the event bus
  (state/event_bus.py), so every other replica drops them as soon as the message arrives
  (PostgreSQL NOTIFY or Redis: milliseconds). Invalidations are published after the change is
  committed, so a replica that re-reads finds the new state.
- A lookup that was already in flight when an invalidation arrived does not cache its (possibly
  stale) answer: each invalidation bumps a generation, and a result is kept only if the generation
  did not move while it was read.
- Entries live at most AUTH_CACHE_TTL_S, and never past the token's own expiry: the bound for a
  replica that misses a message (no cross-process bus configured, or the bus reconnecting, which
  also clears the cache).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from api.security import LEEWAY_S, TokenClaims
from state.event_bus import AUTH_CHANNEL
from state.users import User

MAX_ENTRIES = 10_000

Publish = Callable[[str, str], Awaitable[None]]


@dataclass(frozen=True)
class CachedAuth:
    claims: TokenClaims
    user: User  # detached snapshot; handlers read it, never add it to a database session
    valid_until: float  # time.monotonic() deadline (TTL)
    expires_at: float  # the token's exp (epoch seconds) plus the decoder's leeway


class AuthCache:
    def __init__(self, ttl_s: float, publish: Publish | None = None, max_entries: int = MAX_ENTRIES) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._publish = publish
        self._by_token: dict[str, CachedAuth] = {}
        self._tokens_of_user: dict[str, set[str]] = {}
        self._token_of_jti: dict[str, str] = {}
        self.generation = 0

    @property
    def enabled(self) -> bool:
        return self.ttl_s > 0

    def set_publisher(self, publish: Publish | None) -> None:
        self._publish = publish

    def get(self, token: str) -> CachedAuth | None:
        entry = self._by_token.get(token)
        if entry is None:
            return None
        if time.monotonic() >= entry.valid_until or time.time() >= entry.expires_at:
            self._drop_token(token)
            return None
        return entry

    def put(self, token: str, claims: TokenClaims, user: User, generation: int) -> None:
        """Cache a successful lookup read while `generation` was current (else it may be stale)."""
        if not self.enabled or generation != self.generation:
            return
        if len(self._by_token) >= self.max_entries:
            self.clear()  # crude but bounded; a full cache is refilled by the next requests
        self._by_token[token] = CachedAuth(
            claims=claims,
            user=user,
            valid_until=time.monotonic() + self.ttl_s,
            expires_at=claims.expires_at.timestamp() + LEEWAY_S,
        )
        self._tokens_of_user.setdefault(claims.sub, set()).add(token)
        self._token_of_jti[claims.jti] = token

    # ---- invalidation: local now, then everywhere through the bus

    async def revoke_token(self, jti: str) -> None:
        self.drop_jti(jti)
        await self._announce(f"jti:{jti}")

    async def invalidate_user(self, user_id: str) -> None:
        self.drop_user(user_id)
        await self._announce(f"user:{user_id}")

    def on_message(self, payload: str) -> None:
        """A message from the bus (this replica's own included: dropping twice is harmless)."""
        kind, _, value = payload.partition(":")
        if kind == "jti":
            self.drop_jti(value)
        elif kind == "user":
            self.drop_user(value)
        else:
            self.clear()

    def drop_jti(self, jti: str) -> None:
        self.generation += 1
        token = self._token_of_jti.get(jti)
        if token is not None:
            self._drop_token(token)

    def drop_user(self, user_id: str) -> None:
        self.generation += 1
        for token in list(self._tokens_of_user.get(user_id, ())):
            self._drop_token(token)

    def clear(self) -> None:
        self.generation += 1
        self._by_token.clear()
        self._tokens_of_user.clear()
        self._token_of_jti.clear()

    def _drop_token(self, token: str) -> None:
        entry = self._by_token.pop(token, None)
        if entry is None:
            return
        self._token_of_jti.pop(entry.claims.jti, None)
        tokens = self._tokens_of_user.get(entry.claims.sub)
        if tokens is not None:
            tokens.discard(token)
            if not tokens:
                self._tokens_of_user.pop(entry.claims.sub, None)

    async def _announce(self, payload: str) -> None:
        if self._publish is not None:
            await self._publish(AUTH_CHANNEL, payload)

    def __len__(self) -> int:
        return len(self._by_token)
