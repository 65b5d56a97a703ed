"""The worked examples of examples/ run, and each finds its student from a store equal to the student from
the online teacher (CI installs the lightning extra)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parents[1] / "examples"


def run_example(name: str) -> str:
    done = subprocess.run([sys.executable, str(EXAMPLES / name)], capture_output=True, text=True, env=os.environ,
                          timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_the_hugging_face_style_loop_trains_from_a_store_what_it_trains_from_the_teacher():
    assert "kd: student from the store == student from the online teacher" in run_example("hf_style_loop.py")


def test_the_lightning_student_trains_from_a_store_what_it_trains_from_the_teacher():
    pytest.importorskip("lightning")
    out = run_example("lightning_store.py")
    for method in ("kd", "wsl", "ida"):
        assert f"{method}: student from the store == student from the online teacher" in out
