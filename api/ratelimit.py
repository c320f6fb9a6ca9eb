"""Login rate limiting: attempts per (client address, username) in a sliding window.

An attempt is reserved atomically *before* the (slow) password check and counts against the limit
while it is in flight: a failed check keeps it as a failure, a successful login clears the key, and
an attempt that never got an answer (an error before the check) is released. So concurrent guesses
cannot all pass the check before the first failure is recorded: at most `max_failures` wrong
guesses per window are ever verified. A success clears the key's recorded failures, but not the
attempts still in flight (a concurrent flood of guesses cannot hide behind one right password).

In-process state: one API process per machine is the deployment this limiter serves; behind several
workers each enforces its own window (a shared store is the scale-out answer, see ARCHITECTURE.md).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass

MAX_KEYS = 100_000


@dataclass(frozen=True)
class Reservation:
    """One reserved attempt: `stamp` sits in the key's window until released or it ages out."""

    key: tuple[str, str]
    stamp: float


class LoginRateLimiter:
    def __init__(self, max_failures: int, window_s: float) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        # Failures and in-flight attempts per key (their reservation times, oldest first).
        self._attempts: dict[tuple[str, str], deque[float]] = {}
        self._in_flight: dict[tuple[str, str], list[float]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _key(client: str, username: str) -> tuple[str, str]:
        return (client, username.lower())

    def _prune(self, key: tuple[str, str], now: float) -> deque[float]:
        q = self._attempts.setdefault(key, deque())
        while q and now - q[0] >= self.window_s:
            q.popleft()
        return q

    def reserve(self, client: str, username: str) -> Reservation | int:
        """Reserve one attempt, or return the seconds to wait (the limit is reached).

        Check and reservation happen under one lock: the reservation counts at once, before the
        password is verified.
        """
        now = time.monotonic()
        key = self._key(client, username)
        with self._lock:
            q = self._prune(key, now)
            if len(q) >= self.max_failures:
                return max(1, math.ceil(self.window_s - (now - q[0])))
            q.append(now)
            self._in_flight.setdefault(key, []).append(now)
            # Bound memory under a spray of usernames: forget the stalest keys.
            if len(self._attempts) > MAX_KEYS:
                for stale in list(self._attempts)[: len(self._attempts) // 2]:
                    if stale != key and stale not in self._in_flight:
                        self._attempts.pop(stale, None)
        return Reservation(key, now)

    def _settle(self, reservation: Reservation) -> None:
        flying = self._in_flight.get(reservation.key)
        if flying is not None:
            try:
                flying.remove(reservation.stamp)
            except ValueError:
                pass
            if not flying:
                self._in_flight.pop(reservation.key, None)

    def fail(self, reservation: Reservation) -> None:
        """The attempt failed: it stays in the window as a failure."""
        with self._lock:
            self._settle(reservation)

    def succeed(self, reservation: Reservation) -> None:
        """The attempt logged in: forget the key's failures, keep the other attempts in flight."""
        with self._lock:
            self._settle(reservation)
            flying = self._in_flight.get(reservation.key)
            if flying:
                self._attempts[reservation.key] = deque(flying)
            else:
                self._attempts.pop(reservation.key, None)

    def release(self, reservation: Reservation) -> None:
        """Give back an attempt that was neither a failure nor a success (an error before the answer)."""
        with self._lock:
            self._settle(reservation)
            q = self._attempts.get(reservation.key)
            if q is None:
                return
            try:
                q.remove(reservation.stamp)
            except ValueError:
                pass
            if not q:
                self._attempts.pop(reservation.key, None)

    def retry_after(self, client: str, username: str) -> int | None:
        """Seconds to wait if this client may not try this username now, else None (reserves nothing)."""
        now = time.monotonic()
        key = self._key(client, username)
        with self._lock:
            q = self._prune(key, now)
            if len(q) >= self.max_failures:
                return max(1, math.ceil(self.window_s - (now - q[0])))
            if not q:
                self._attempts.pop(key, None)
        return None

    def reset(self, client: str, username: str) -> None:
        """Forget everything about this key (administrative reset)."""
        with self._lock:
            key = self._key(client, username)
            self._attempts.pop(key, None)
            self._in_flight.pop(key, None)
