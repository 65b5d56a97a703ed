"""Distillation methods: each one a small composition of a soft-label source and losses.

A method lives in one module of this package and registers itself with :func:`register_method`;
every module here is imported on first use, so a new method touches one file (plus a recipe).
"""

from __future__ import annotations

from softdistill.methods.base import Method, MethodConfig, register_method, registry

__all__ = ["Method", "MethodConfig", "register_method", "method_names", "method_config_class", "method_class"]


def method_names() -> list[str]:
    return registry.names()


def method_class(name: str) -> type[Method]:
    return registry.get(name)


def method_config_class(name: str) -> type[MethodConfig]:
    return method_class(name).Config
