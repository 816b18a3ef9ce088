"""Failed-login counters behind an interface (in-process now; Redis can follow)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol


@dataclass(slots=True)
class AttemptState:
    """Failures counted in the current window, and any lock."""

    failures: int = 0
    window_started: float = 0.0
    locked_until: float = 0.0


class LoginAttemptStore(Protocol):
    """Where failure counters live; shared by all processes when it is Redis."""

    async def get(self, key: str, now: float) -> AttemptState:
        """The state of `key` (a fresh state when unknown or expired)."""
        ...

    async def add_failure(self, key: str, now: float, window: float) -> int:
        """Count one failure; return the failures in the current window."""
        ...

    async def lock(self, key: str, until: float) -> None:
        """Refuse `key` until the given time."""
        ...

    async def reset(self, key: str) -> None:
        """Forget `key` (after a successful login)."""
        ...


class InMemoryLoginAttemptStore:
    """Per-process counters with a fixed window per key; bounded in size."""

    def __init__(self, max_keys: int = 100_000) -> None:
        """Create an empty store holding at most about `max_keys` keys."""
        self._states: dict[str, AttemptState] = {}
        self._max_keys = max_keys
        self._lock = asyncio.Lock()

    async def get(self, key: str, now: float) -> AttemptState:
        """The state of `key`; unknown keys have no failures and no lock."""
        state = self._states.get(key)
        if state is None:
            return AttemptState()
        return AttemptState(state.failures, state.window_started, state.locked_until)

    async def add_failure(self, key: str, now: float, window: float) -> int:
        """Count one failure in a window that starts at the first failure."""
        async with self._lock:
            state = self._states.get(key)
            if state is None:
                self._prune(now, window)
                state = self._states[key] = AttemptState(window_started=now)
            elif now - state.window_started > window:
                state.failures = 0
                state.window_started = now
            state.failures += 1
            return state.failures

    async def lock(self, key: str, until: float) -> None:
        """Lock `key` until `until`."""
        async with self._lock:
            state = self._states.setdefault(key, AttemptState(window_started=until))
            state.locked_until = max(state.locked_until, until)

    async def reset(self, key: str) -> None:
        """Forget `key`."""
        async with self._lock:
            self._states.pop(key, None)

    def _prune(self, now: float, window: float) -> None:
        if len(self._states) < self._max_keys:
            return
        stale = [
            key
            for key, state in self._states.items()
            if now - state.window_started > window and state.locked_until <= now
        ]
        for key in stale:
            del self._states[key]
