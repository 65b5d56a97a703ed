"""A registry of named plug-in classes (methods, soft-label sources), loaded on first use.

Each class carries a pydantic ``Config`` whose ``key`` field (``name`` for methods, ``source``
for sources) defaults to the name recipes use.  Every module of the registry's package is
imported on first look-up, so a new method or source is one module; a plugin module from outside
the package registers the same way.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

__all__ = ["Registry"]


class Registry:
    """``what`` names the entries in messages (e.g. "method"); ``package`` is loaded on first use."""

    def __init__(self, what: str, key: str, package: str) -> None:
        self.what, self.key, self.package = what, key, package
        self.entries: dict[str, type] = {}
        self._loaded = False

    def register(self, cls: type) -> type:
        """Class decorator: make ``cls`` reachable under its ``Config``'s ``key`` default; a name
        registered by another class is an error naming both."""
        name = cls.Config.model_fields[self.key].default
        if not isinstance(name, str):
            raise TypeError(f"{cls.__name__}.Config.{self.key} needs a default (the {self.what}'s recipe name)")
        other = self.entries.get(name)
        if other is not None and other is not cls:
            raise ValueError(f"{self.what} name {name!r} is registered twice: by {other.__module__}.{other.__qualname__} "
                             f"and by {cls.__module__}.{cls.__qualname__}")
        self.entries[name] = cls
        return cls

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            package = importlib.import_module(self.package)
            for info in pkgutil.iter_modules(package.__path__):
                importlib.import_module(f"{self.package}.{info.name}")

    def names(self) -> list[str]:
        self._load()
        return sorted(self.entries)

    def get(self, name: Any) -> type:
        self._load()
        if name not in self.entries:
            raise ValueError(f"unknown {self.what} {name!r}; known: {', '.join(sorted(self.entries))}")
        return self.entries[name]
