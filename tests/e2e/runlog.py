"""The e2e run's summary: timings, scores and notes, printed at the end of the pytest run."""

from __future__ import annotations

import time
from typing import Any, Dict

RUN: Dict[str, Any] = {"t0": None, "timings": {}, "scores": {}, "notes": [], "artifacts": None, "total": None}


def record(section: str, key: str, value: Any) -> None:
    """Put a number into the run summary (printed at the end and written to summary.json)."""
    RUN[section][key] = value


class Timer:
    def __init__(self, name: str):
        self.name = name

    def __enter__(self) -> "Timer":
        self.t0 = time.monotonic()
        return self

    def __exit__(self, *exc: Any) -> None:
        RUN["timings"][self.name] = round(time.monotonic() - self.t0, 1)


def wait_until(fn, timeout: float, poll: float = 1.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")
