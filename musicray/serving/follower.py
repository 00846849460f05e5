"""Following LATEST pointers: a served state that is swapped whole, in one assignment, when they move.

A replica holds one immutable state object. ``Follower`` re-reads the pointers every few seconds;
when they change it loads a complete new state beside the old one and then replaces the reference
in one assignment. A request reads the reference once and uses only that object, so requests in
flight finish on the old state and no request ever sees half of each.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

log = logging.getLogger("musicray.serving")

DEFAULT_POLL_SECONDS = 30.0

State = TypeVar("State")


class Follower(Generic[State]):
    """Holds the served state and swaps it atomically when the pointers it follows change.

    ``read_pointers()`` returns a small comparable value (ids); ``load(pointers)`` builds a
    complete state for it. A failed load keeps the old state and is retried at the next poll.
    """

    def __init__(self, name: str, read_pointers: Callable[[], Any], load: Callable[[Any], State],
                 poll_seconds: float = DEFAULT_POLL_SECONDS):
        self.name, self.read_pointers, self.load = name, read_pointers, load
        self.poll_seconds = poll_seconds
        self.pointers = read_pointers()
        self.state: State = load(self.pointers)
        self.loaded_at = time.time()
        self.swaps = 0
        self.last_error: str | None = None
        self._reload = threading.Lock()  # the poller and reconfigure() never load at once
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name=f"{name}-follower", daemon=True)
        self._thread.start()

    def refresh(self) -> bool:
        """Load and swap in a new state if the pointers moved; returns whether it swapped."""
        with self._reload:
            pointers = self.read_pointers()
            if pointers == self.pointers:
                return False
            state = self.load(pointers)  # fully built before anyone can see it
            self.state, self.pointers = state, pointers  # requests read .state once: old or new
            self.loaded_at, self.swaps = time.time(), self.swaps + 1
            log.info("%s now serves %s", self.name, pointers)
            return True

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.refresh()
                self.last_error = None
            except Exception as error:  # keep serving the old state; say why in /healthz
                self.last_error = f"{type(error).__name__}: {error}"
                log.warning("%s keeps serving %s: the new state did not load: %s", self.name, self.pointers,
                            self.last_error)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def close(self) -> None:
        self._stop.set()
