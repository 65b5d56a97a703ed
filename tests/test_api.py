"""The public API: ``import softdistill`` exports what a loop of your own needs, lazily (no torch for
``--help``), every export has a docstring with Args, Returns and an Example that runs, and docs/api.md
covers every export."""

import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import softdistill

ROOT = Path(__file__).parents[1]
EXPORTS = sorted(set(softdistill.__all__) - {"__version__"})


def _python(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=os.environ, cwd=ROOT,
                          timeout=300)


def _imported_torch(importtime: str) -> bool:
    return any(line.rsplit("|", 1)[-1].strip() == "torch" for line in importtime.splitlines())


def test_import_and_help_do_not_import_torch():
    bare = _python("-X", "importtime", "-c", "import softdistill; softdistill.__all__; dir(softdistill)")
    assert bare.returncode == 0 and not _imported_torch(bare.stderr)
    helped = _python("-X", "importtime", "-m", "softdistill", "--help")
    assert helped.returncode == 0 and "usage: softdistill" in helped.stdout
    assert not _imported_torch(helped.stderr)
    loaded = _python("-X", "importtime", "-c", "import softdistill; softdistill.kd_loss")
    assert loaded.returncode == 0 and _imported_torch(loaded.stderr)  # the check above can see torch


def test_every_export_resolves_and_dir_lists_it():
    assert set(EXPORTS) <= set(dir(softdistill))
    for name in EXPORTS:
        assert getattr(softdistill, name) is not None, name
    with pytest.raises(AttributeError, match="has no attribute 'kd_los'"):
        softdistill.kd_los  # noqa: B018


def test_every_loss_function_and_module_form_is_exported():
    import softdistill.isotonic as isotonic
    import softdistill.losses as losses

    helpers = {"at_least_float32"}  # a dtype helper, not a loss
    for module in (losses, isotonic):
        public = [name for name in module.__all__ if name not in helpers
                  and (inspect.isfunction(getattr(module, name))
                       or (inspect.isclass(getattr(module, name)) and issubclass(getattr(module, name), torch.nn.Module)))]
        assert sorted(set(public) - set(EXPORTS)) == [], module.__name__


def test_every_loss_function_has_its_module_form():
    """PyTorch's habit: each loss is a function and a module (the module's docstring names its function)."""
    import softdistill.losses as losses

    modules = [getattr(losses, n) for n in losses.__all__ if inspect.isclass(getattr(losses, n))
               and issubclass(getattr(losses, n), torch.nn.Module)]
    formed = {name for module in modules for name in re.findall(r":func:`(\w+)`", module.__doc__ or "")}
    loss_functions = {n for n in losses.__all__ if inspect.isfunction(getattr(losses, n)) and n.endswith("_loss")}
    loss_functions |= {"teacher_student_divergence", "cross_entropy", "mixed_cross_entropy", "soft_cross_entropy",
                       "weighted_soft_cross_entropy", "logit_standardize", "gradient_reversal"}
    assert sorted(loss_functions - formed) == []


def _sections(name: str, value: object) -> list[str]:
    """The sections a docstring needs: Args, Returns and Example for functions; Args and Example for classes,
    and Returns too for those called like functions (loss modules); a docstring only for errors."""
    if inspect.isclass(value) and issubclass(value, Exception):
        return []
    if inspect.isclass(value):
        return ["Args", "Returns", "Example"] if issubclass(value, torch.nn.Module) else ["Args", "Example"]
    return ["Args", "Returns", "Example"]


@pytest.mark.parametrize("name", EXPORTS)
def test_every_export_has_a_docstring_with_args_returns_and_an_example(name):
    value = getattr(softdistill, name)
    doc = inspect.getdoc(value) or ""
    assert doc, f"{name} has no docstring"
    missing = [s for s in _sections(name, value) if not re.search(rf"^\s*{s}\b[^:\n]*:", doc, re.MULTILINE)]
    assert not missing, f"{name}'s docstring lacks {missing}"
    if "Example" in _sections(name, value):
        assert ">>> " in doc, f"{name}'s example has no doctest"


def test_the_examples_run():
    """Every module that holds an exported name, through pytest's doctest runner (in a process of its own:
    some examples register entries)."""
    modules = sorted({inspect.getmodule(getattr(softdistill, name)).__name__ for name in EXPORTS})
    files = [str(ROOT / "src" / (m.replace(".", "/") + ("/__init__.py" if m == "softdistill.methods" else ".py")))
             for m in modules]
    run = _python("-m", "pytest", "--doctest-modules", "-q", "-p", "no:cacheprovider", "--rootdir", str(ROOT / "src"),
                  *files)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]


def test_docs_api_covers_every_export():
    text = (ROOT / "docs" / "api.md").read_text()
    missing = [name for name in EXPORTS if not re.search(rf"\b{re.escape(name)}\b", text)]
    assert not missing, f"docs/api.md does not mention {missing}"
