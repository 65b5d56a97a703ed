"""Progress bars that suit where the output goes.

On a terminal, a tqdm bar redrawn in place.  In a log file or a pipe the redraws would pile up
(every refresh is appended, several a second), so there a bar is a plain line every
:data:`LOG_INTERVAL` seconds (``desc: n/total unit (p%), elapsed, time left``), and no line at all
for work that takes less.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar, Union

from tqdm.auto import tqdm

__all__ = ["progress_bar", "tracked", "ProgressBar", "LogLines", "LOG_INTERVAL", "use_thread_lock"]

LOG_INTERVAL = 60.0  # seconds between two progress lines in a log


def use_thread_lock() -> None:
    """Let this process's bars take a thread lock instead of tqdm's default, a semaphore shared across
    processes: a process that is terminated cannot release it, and Python's resource tracker then
    warns of leaked semaphores when the parent exits."""
    tqdm.set_lock(threading.RLock())


class LogLines:
    """The part of tqdm's interface that softdistill uses, written as a line every ``interval`` seconds."""

    def __init__(self, total: int, desc: str, *, unit: str = "it", initial: int = 0, unit_scale: bool = False,
                 interval: float = LOG_INTERVAL) -> None:
        self.total, self.desc, self.unit, self.unit_scale = total, desc, unit, unit_scale
        self.n = self.initial = initial
        self.interval = interval
        self.postfix = ""
        self.start = self.last = time.monotonic()

    def _count(self, value: float) -> str:
        return tqdm.format_sizeof(value) if self.unit_scale else f"{value:g}"

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last < self.interval:
            return
        self.last = now
        elapsed, done = now - self.start, self.n - self.initial
        line = f"{self.desc}: {self._count(self.n)}/{self._count(self.total)} {self.unit}"
        if self.total:
            line += f" ({100 * self.n / self.total:.0f}%)"
        line += f", {tqdm.format_interval(elapsed)}"
        if done > 0 and self.total:
            line += f", {tqdm.format_interval((self.total - self.n) * elapsed / done)} left"
        if self.postfix:
            line += f"  {self.postfix}"
        print(line, file=sys.stderr, flush=True)

    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, refresh: bool = True, **kwargs: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in {**(ordered_dict or {}), **kwargs}.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s

    @staticmethod
    def write(s: str) -> None:
        tqdm.write(s)

    def close(self) -> None:
        """Nothing to clear: every line written stays, as a log should."""


ProgressBar = Union[tqdm, LogLines]
Item = TypeVar("Item")


def progress_bar(total: int, desc: str, *, quiet: bool = False, unit: str = "it", initial: int = 0,
                 unit_scale: bool = False, leave: bool = True) -> ProgressBar:
    """A bar on standard error: tqdm on a terminal, :class:`LogLines` elsewhere, silent when ``quiet``."""
    if quiet:
        return tqdm(total=total, disable=True)
    if sys.stderr.isatty():
        return tqdm(total=total, desc=desc, unit=unit, initial=initial, unit_scale=unit_scale, leave=leave,
                    dynamic_ncols=True)
    return LogLines(total, desc, unit=unit, initial=initial, unit_scale=unit_scale)


def tracked(items: Iterable[Item], total: int, desc: str, *, quiet: bool = False, unit: str = "it") -> Iterator[Item]:
    """``items`` one by one, with a :func:`progress_bar` of ``total`` of them."""
    bar = progress_bar(total, desc, quiet=quiet, unit=unit)
    try:
        for item in items:
            yield item
            bar.update(1)
    finally:
        bar.close()
