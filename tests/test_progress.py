"""Progress output: a tqdm bar on a terminal, a line a minute in a log, nothing when quiet."""

import io
import sys

from tqdm.auto import tqdm

from softdistill.runtime import progress
from softdistill.runtime.progress import LogLines, progress_bar, tracked


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_bar_in_a_log_is_one_line_per_interval(capsys, monkeypatch):
    clock = iter([0.0, 10.0, 70.0, 80.0, 140.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    bar = LogLines(100, "epoch 1/3", unit="step", interval=60.0)  # starts at t = 0
    bar.set_postfix({"loss": "0.5"}, refresh=False)
    bar.update(10)  # t = 10: too soon
    bar.update(40)  # t = 70: 50 steps in 70 s, 50 left: 70 s more
    bar.update(10)  # t = 80: too soon after the last line
    bar.update(40)  # t = 140
    bar.close()
    assert capsys.readouterr().err.splitlines() == ["epoch 1/3: 50/100 step (50%), 01:10, 01:10 left  loss=0.5",
                                                    "epoch 1/3: 100/100 step (100%), 02:20, 00:00 left  loss=0.5"]


def test_the_bar_suits_the_stream(monkeypatch, capsys):
    assert isinstance(progress_bar(5, "x"), LogLines)  # captured stderr: not a terminal
    quiet = progress_bar(5, "x", quiet=True)
    assert isinstance(quiet, tqdm) and quiet.disable
    monkeypatch.setattr(sys, "stderr", Terminal())
    bar = progress_bar(5, "x")
    assert isinstance(bar, tqdm) and not bar.disable
    bar.close()


def test_tracked_gives_every_item_and_counts_them(monkeypatch):
    counted = []
    monkeypatch.setattr(LogLines, "update", lambda self, n=1: counted.append(n))
    assert list(tracked(iter("abc"), 3, "letters")) == ["a", "b", "c"] and counted == [1, 1, 1]
