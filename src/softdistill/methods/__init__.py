"""Distillation methods: each one a small composition of a soft-label source and losses.

A method lives in one module of this package and registers itself with :func:`register_method`;
every module here is imported on first use, so a new method touches one file (plus a recipe).
"""

from __future__ import annotations

import importlib
import pkgutil

from softdistill.methods.base import Method, MethodConfig, register_method, registry

__all__ = ["Method", "MethodConfig", "register_method", "method_names", "method_config_class", "method_class"]

_loaded = False


def _load_all() -> None:
    global _loaded
    if not _loaded:
        for info in pkgutil.iter_modules(__path__):
            if info.name != "base":
                importlib.import_module(f"{__name__}.{info.name}")
        _loaded = True


def method_names() -> list[str]:
    _load_all()
    return sorted(registry)


def method_class(name: str) -> type[Method]:
    _load_all()
    if name not in registry:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(sorted(registry))}")
    return registry[name]


def method_config_class(name: str) -> type[MethodConfig]:
    return method_class(name).Config
