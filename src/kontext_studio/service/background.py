"""One protocol for the service's background threads (job worker, reaper, webhook sender, training runner),
and one loop they share, so starting, waking, stopping and health checks behave the same in all of them.

The app's lifespan starts the container's background services in order and stops them in reverse.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

logger = logging.getLogger("kontext_studio.background")


@dataclass(frozen=True)
class Health:
    """What a background service reports: its name, whether its thread runs, and its last error."""

    name: str
    running: bool
    last_error: str | None = None


@runtime_checkable
class BackgroundService(Protocol):
    """Something the service runs beside the HTTP handlers."""

    name: str

    def start(self) -> None:
        """Start (a second call while running does nothing)."""

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the current unit of work and wait up to ``timeout`` seconds."""

    def health(self) -> Health:
        """Whether it runs, and the last error it logged."""


class PollingLoop:
    """A daemon thread that calls ``tick()`` until stopped: again at once when the tick did work, else after
    ``interval`` seconds or as soon as ``wake()`` is called.

    Subclasses implement ``tick`` (return True when it did work) and may override ``on_start``.

    Args:
        name: the thread name (also the health report's name).
        interval: idle wait between ticks, in seconds.
        wait_first: wait one interval before the first tick (periodic passes such as the reaper's).
    """

    name: str = "kontext-loop"

    def __init__(self, name: str, interval: float, *, wait_first: bool = False):
        self.name = name
        self.interval = interval
        self.wait_first = wait_first
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_error: str | None = None

    # -- what subclasses provide ------------------------------------------------------------------------
    def tick(self) -> bool:  # pragma: no cover - always overridden
        """One unit of work; True when there may be more to do at once."""
        raise NotImplementedError

    def on_start(self) -> None:
        """Called on the starting thread before the loop runs (e.g. re-queue interrupted work)."""

    def on_stop(self) -> None:
        """Called after the stop was requested, before joining the thread."""

    # -- the shared lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Start the thread (a second call while running does nothing)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self.on_start()
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the current tick and wait up to ``timeout`` seconds for the thread."""
        self._stop.set()
        self._wake.set()
        self.on_stop()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def wake(self) -> None:
        """Tick now instead of at the end of the idle wait."""
        self._wake.set()

    @property
    def running(self) -> bool:
        """Whether the thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def stopping(self) -> bool:
        """Whether a stop was requested (long ticks check it to end early)."""
        return self._stop.is_set()

    def health(self) -> Health:
        """Whether the thread runs, and the last error a tick raised."""
        return Health(self.name, self.running, self._last_error)

    def _loop(self) -> None:
        if self.wait_first:
            self._stop.wait(self.interval)
        while not self._stop.is_set():
            self._wake.clear()  # before the tick: a wake during it triggers the next tick at once
            try:
                worked = self.tick()
                self._last_error = None
            except Exception as exc:  # the loop must outlive one bad tick; the tick's own work recorded it
                logger.exception("%s: tick failed; retrying in %.1f s", self.name, self.interval)
                self._last_error = f"{exc.__class__.__name__}: {exc}"
                worked = False
            if not worked and not self._stop.is_set():
                self._wake.wait(self.interval)
