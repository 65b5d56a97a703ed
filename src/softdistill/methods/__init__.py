"""Distillation methods: each one a small composition of a soft-label source and losses.

A method lives in one module of this package and registers itself with :func:`register_method`;
every module here is imported on first use, so a new method touches one file (plus a recipe).
"""

from __future__ import annotations

from softdistill.methods.base import Method, MethodConfig, methods, register_method

__all__ = ["Method", "MethodConfig", "register_method", "methods", "method_names", "method_class"]


def method_names() -> list[str]:
    return methods.names()


def method_class(name: str) -> type[Method]:
    return methods.get(name)
