"""Shared test helpers."""

import socket

import pytest

from softdistill.engine.optim import LRSchedule
from softdistill.engine.trainer import Trainer
from softdistill.experiments import quickstart
from softdistill.runner import run_recipe


@pytest.fixture(scope="session")
def tiny_quickstart(tmp_path_factory):
    """The output folder of ``softdistill quickstart --tiny --seeds 2`` (digits), trained once per session."""
    out = tmp_path_factory.mktemp("quickstart") / "qs"
    quickstart(tiny=True, seeds=2, output_dir=out, quiet=True)
    return out


@pytest.fixture
def run_until_interrupted(monkeypatch):
    """``run(recipe, epoch)``: train ``recipe`` and interrupt it (KeyboardInterrupt) as epoch ``epoch`` starts."""

    def run(recipe, epoch: int) -> None:
        original = Trainer.train_epoch

        def crash(self):
            if self.epoch == epoch:
                raise KeyboardInterrupt
            return original(self)

        with monkeypatch.context() as patch:
            patch.setattr(Trainer, "train_epoch", crash)
            with pytest.raises(KeyboardInterrupt):
                run_recipe(recipe, quiet=True)

    return run


@pytest.fixture
def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for a local process group)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def run_until_step(monkeypatch):
    """``run(recipe, step)``: train ``recipe`` and interrupt it (KeyboardInterrupt) as its global
    optimiser step ``step`` (0-based, counted over epochs) begins."""

    def run(recipe, step: int) -> None:
        original = LRSchedule.lr_at

        def crash(self, at):
            if at == step:
                raise KeyboardInterrupt
            return original(self, at)

        with monkeypatch.context() as patch:
            patch.setattr(LRSchedule, "lr_at", crash)
            with pytest.raises(KeyboardInterrupt):
                run_recipe(recipe, quiet=True)

    return run
