"""pyproject.toml in the form that today's setuptools reads without deprecation warnings."""

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # standard library from Python 3.11

PYPROJECT = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())


def test_license_is_an_spdx_expression_without_a_license_classifier():
    project = PYPROJECT["project"]
    assert project["license"] == "Apache-2.0"  # a table ({text = ...}) is deprecated
    assert not [c for c in project.get("classifiers", []) if c.startswith("License ::")]


def test_build_requires_a_setuptools_that_reads_spdx_licenses():
    setuptools = [r for r in PYPROJECT["build-system"]["requires"] if r.startswith("setuptools")]
    assert len(setuptools) == 1
    minimum = re.fullmatch(r"setuptools>=(\d+)(\.\d+)*", setuptools[0])
    assert minimum is not None and int(minimum.group(1)) >= 77, setuptools[0]
