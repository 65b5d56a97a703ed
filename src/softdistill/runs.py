"""Run-folder rules, in one place: what a folder holds, when it may be started, resumed or reused.

A run folder ``OUTPUT_DIR/NAME/seedSEED`` is ``new`` (nothing to resume), ``partial`` (a
``last.pt`` to resume from) or ``finished`` (``summary.json`` written).  A new run refuses a
folder that holds one; a resume needs ``last.pt`` and the same recipe, and continues a run whose
``summary.json`` is missing (a ``last.pt`` of the final epoch, killed before the end, is finished).  A
finished run is reused only when its recipe is the same (settings declared outside a run's identity
aside, such as the data folder or thread count, which do not change what a run computes:
:func:`softdistill.schema.not_identity`).

One process at a time works on a run folder: :func:`lock_run_folder` holds ``RUN_DIR/.lock``
(:mod:`softdistill.locking`: an ``flock`` that ends with its process, even after ``kill -9``), and
a second process is refused with a message naming the holder.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import yaml

from softdistill.atomic import ensure_folder, write_text_atomic  # re-exported: the run folder's text files
from softdistill.checkpoint import CheckpointError, load_checkpoint
from softdistill.engine.recorder import RunStateError
from softdistill.locking import LockHeldError, describe_holder, hold_lock
from softdistill.schema import config_differences, not_identity_keys

__all__ = ["RunStateError", "RunInterrupted", "interruption", "LOCK_NAME", "write_text_atomic",
           "resume_checkpoint", "refuse_existing_run", "check_outside_package", "run_dir_state",
           "recipe_differences", "check_same_recipe", "lock_run_folder"]

LOCK_NAME = ".lock"


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) stopped a run: ``kept`` says what its folder keeps, ``resume`` whether ``--resume``
    continues it (else the same command, started again, does)."""

    def __init__(self, kept: str, resume: bool) -> None:
        super().__init__(kept)
        self.kept = kept
        self.resume = resume


@contextlib.contextmanager
def interruption(describe: Callable[[], RunInterrupted]) -> Iterator[None]:
    """Turn Ctrl-C inside the block into ``describe()``; one raised deeper inside (a dependency's run,
    already described) passes as it is."""
    try:
        yield
    except RunInterrupted:
        raise
    except KeyboardInterrupt:
        raise describe() from None


def run_dir_state(run_dir: str | os.PathLike) -> str:
    """``finished``, ``partial`` (a checkpoint to resume) or ``new``."""
    run_dir = Path(run_dir)
    if (run_dir / "summary.json").exists():
        return "finished"
    return "partial" if (run_dir / "last.pt").exists() else "new"


def _saved_config(run_dir: Path) -> Any:
    """The recipe a run folder records: its config.yaml, else its last.pt's; None when neither is readable."""
    try:
        return yaml.safe_load((run_dir / "config.yaml").read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        pass
    try:
        return load_checkpoint(run_dir / "last.pt")["config"]
    except (CheckpointError, KeyError):
        return None


def refuse_existing_run(run_dir: Path, config_check: Callable[[Any], list[str]]) -> None:
    """Refuse to start a new run in a folder that holds one, saying whether another process works on it,
    whether it is finished, whether its recipe differs (and how) and what to do; nothing for a folder with
    no run."""
    state = run_dir_state(run_dir)
    if state == "new":
        return
    with lock_run_folder(run_dir):  # a run under way in another process: that is what to say first
        pass
    saved = _saved_config(run_dir)
    diffs = ["(its config.yaml and last.pt are unreadable)"] if saved is None else config_check(saved)
    kind = "a finished" if state == "finished" else "an unfinished"
    elsewhere = "choose another output folder (-o output_dir=FOLDER) or name (-o name=NAME)"
    if diffs:
        raise RunStateError(f"{run_dir} holds {kind} run of another version of this recipe:\n  " + "\n  ".join(diffs)
                            + f"\nTo keep both, {elsewhere}; to replace it, delete {run_dir}. (--resume continues a "
                            "run only with the recipe it was started with.)")
    if state == "finished":
        raise RunStateError(f"{run_dir} holds a finished run of this recipe (summary.json): nothing to train. To "
                            f"train it again, {elsewhere}, or delete {run_dir}.")
    raise RunStateError(f"{run_dir} holds an unfinished run of this recipe: continue it with --resume, or start over "
                        f"elsewhere ({elsewhere}) or after deleting {run_dir}.")


def resume_checkpoint(run_dir: Path, resume: bool, config_check: Callable[[Any], list[str]],
                      map_location: torch.device | str = "cpu") -> dict[str, Any] | None:
    """The ``last.pt`` payload a run continues from, or None for a new run (see the module docstring)."""
    last = run_dir / "last.pt"
    if not resume:
        refuse_existing_run(run_dir, config_check)
        return None
    if not last.exists():
        raise RunStateError(f"nothing to resume: no checkpoint {last}; start the run without --resume")
    state = load_checkpoint(last, map_location=map_location)
    diffs = config_check(state.get("config"))
    if diffs:
        raise RunStateError(f"cannot resume {run_dir}: the recipe changed since the checkpoint:\n  " + "\n  ".join(diffs))
    if (run_dir / "summary.json").exists():
        raise RunStateError(f"{run_dir} has already finished (summary.json written); nothing to resume")
    return state


def check_outside_package(folder: str | os.PathLike, what: str = "the run folder") -> None:
    """Refuse to write ``folder`` inside the installed softdistill package, where a relative output
    folder lands when a command runs from the package's recipes folder."""
    package = Path(__file__).resolve().parent
    if Path(folder).resolve().is_relative_to(package):
        raise RunStateError(f"{what} {Path(folder).resolve()} would be written inside the softdistill package "
                            f"({package}): a relative output folder is read from the current folder ({Path.cwd()}), "
                            "while the paths inside a recipe are read from the recipe's folder. Run the command from "
                            "your project folder (the repository's root, say), or give an output folder outside the "
                            "package: -o output_dir=FOLDER (compare and quickstart: --output FOLDER).")


def recipe_differences(saved: Any, recipe: Any) -> list[str]:
    """What changed between a saved config and a recipe object, ignoring the settings outside a run's identity.

    The saved config is read through today's schema first (``type(recipe).from_dict``), so a key
    added to the schema since then counts as unchanged when the recipe leaves it at its default.
    """
    try:
        saved = type(recipe).from_dict(saved).to_dict()
    except ValueError:
        pass  # a key was removed from the schema since: compare the raw dicts
    return config_differences(saved, recipe.to_dict(), not_identity_keys(type(recipe)))


def check_same_recipe(recipe: Any) -> None:
    """Refuse to reuse a run folder that another version of the recipe produced (stale results)."""
    path = recipe.run_dir / "config.yaml"
    if not path.is_file():
        return
    try:
        saved = yaml.safe_load(path.read_text())
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise RunStateError(f"{path} is not a readable copy of a recipe ({' '.join(str(exc).split())}): restore it, or "
                            f"delete {recipe.run_dir} to run it again") from None
    diffs = recipe_differences(saved, recipe)
    if diffs:
        raise RunStateError(f"{recipe.run_dir} was produced by a different version of {recipe.noun} {recipe.name!r}:\n  "
                            + "\n  ".join(diffs) + "\nDelete that folder or choose another output_dir to rerun it.")


@contextlib.contextmanager
def lock_run_folder(run_dir: str | os.PathLike) -> Iterator[None]:
    """Hold the run folder's lock (:func:`softdistill.locking.hold_lock`) while the block runs;
    :class:`RunStateError` naming the holder when another process holds it."""
    run_dir = Path(run_dir)
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(hold_lock(ensure_folder(run_dir) / LOCK_NAME))
        except LockHeldError as exc:
            raise RunStateError(f"{run_dir} is in use by another process ({describe_holder(exc.holder)}); one process "
                                "at a time works on a run folder. Wait for it to end or stop it (its lock ends with it, "
                                "even after kill -9).") from None
        yield
