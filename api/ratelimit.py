"""Login rate limiting: failed attempts per (client address, username) in a sliding window.

In-process state: one API process per machine is the deployment this limiter serves; behind several
workers each enforces its own window (a shared store is the scale-out answer, see ARCHITECTURE.md).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque


class LoginRateLimiter:
    def __init__(self, max_failures: int, window_s: float) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self._failures: dict[tuple[str, str], deque[float]] = {}
        self._lock = threading.Lock()

    def _prune(self, key: tuple[str, str], now: float) -> deque[float]:
        q = self._failures.setdefault(key, deque())
        while q and now - q[0] >= self.window_s:
            q.popleft()
        return q

    def retry_after(self, client: str, username: str) -> int | None:
        """Seconds to wait if this client may not try this username now, else None."""
        now = time.monotonic()
        key = (client, username.lower())
        with self._lock:
            q = self._prune(key, now)
            if len(q) >= self.max_failures:
                return max(1, math.ceil(self.window_s - (now - q[0])))
            if not q:
                self._failures.pop(key, None)
        return None

    def record_failure(self, client: str, username: str) -> None:
        now = time.monotonic()
        key = (client, username.lower())
        with self._lock:
            self._prune(key, now).append(now)
            # Bound memory under a spray of usernames: forget the stalest keys.
            if len(self._failures) > 100_000:
                for stale in list(self._failures)[: len(self._failures) // 2]:
                    self._failures.pop(stale, None)

    def reset(self, client: str, username: str) -> None:
        with self._lock:
            self._failures.pop((client, username.lower()), None)
