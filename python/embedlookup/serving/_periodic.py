"""One background loop for the publisher and the replica: call ``fn`` every
``period`` seconds from a daemon thread until stopped; an exception is
handed to ``on_error`` and the loop goes on."""

from __future__ import annotations

import threading


def check_period(period) -> float:
    if isinstance(period, bool) or not isinstance(period, (int, float)) or not period > 0:
        raise ValueError(f"period must be a number of seconds > 0, got {period!r}")
    return float(period)


class Periodic:
    def __init__(self, fn, period: float, name: str, on_error):
        self._stop = threading.Event()
        period = check_period(period)

        def loop():
            while not self._stop.wait(period):
                try:
                    fn()
                except Exception as e:  # noqa: BLE001 - the owner records it; the loop goes on
                    on_error(e)

        self._thread = threading.Thread(target=loop, name=name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stops the loop after its current call."""
        self._stop.set()
        self._thread.join()


class PeriodicOwner:
    """Mixin: one background loop per object, stopped by ``_halt()`` and on
    leaving a ``with`` block."""

    _loop = None

    def _start_loop(self, fn, period, name: str, on_error, busy: str) -> None:
        check_period(period)
        if self._loop is not None:
            raise RuntimeError(busy)
        self._loop = Periodic(fn, period, name, on_error)

    def _halt(self) -> None:
        if self._loop is not None:
            self._loop.stop()
            self._loop = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._halt()
