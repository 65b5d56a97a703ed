"""The one plug-in mechanism: a :class:`Registry` of named entries, for methods, soft-label sources,
models, datasets and recipe kinds alike.

An entry is registered by a decorator in the module that defines it; every module of the registry's
package is imported on the first look-up, so a new entry is one module.  A plugin module from
outside the package registers the same way (a recipe names it under ``plugins:``).  A name that is
not registered is an :class:`UnknownNameError` that suggests the closest names.
"""

from __future__ import annotations

import difflib
import importlib
import os
import pkgutil
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Generic, TypeVar

__all__ = ["Registry", "UnknownNameError", "closest_names", "did_you_mean"]

T = TypeVar("T")


class UnknownNameError(ValueError):
    """A name that no entry of a registry has; the message suggests the closest ones."""


def closest_names(name: str, known: list[str], n: int = 3) -> list[str]:
    """Up to ``n`` of ``known`` that ``name`` may have meant, best first: abbreviations (``name`` spelt
    with the candidate's letters in order, from its first, e.g. 'fmnist' -> 'fashion-mnist'), then
    candidates with a ``difflib`` similarity of at least 0.6 (ties: the longer common prefix)."""
    name = str(name)

    def abbreviates(candidate: str) -> bool:
        rest = iter(candidate)
        return bool(name) and candidate[:1] == name[:1] and len(name) < len(candidate) and all(c in rest for c in name)

    def score(candidate: str) -> tuple[float, int]:
        return difflib.SequenceMatcher(None, name, candidate).ratio(), len(os.path.commonprefix([name, candidate]))

    abbreviations = sorted((c for c in known if abbreviates(c)), key=lambda c: (-score(c)[0], c))
    similar = sorted((c for c in known if score(c)[0] >= 0.6 and c not in abbreviations),
                     key=lambda c: (-score(c)[0], -score(c)[1], c))
    return (abbreviations + similar)[:n]


def did_you_mean(name: str, known: list[str]) -> str:
    """``"; did you mean 'a' or 'b'?"`` for the :func:`closest_names` of ``name``, or ``""``."""
    close = closest_names(name, known)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


@dataclass(frozen=True)
class _Pattern:
    """A family of names such as ``wrn-D-W``: ``regex`` captures integers, passed first to ``entry``."""

    form: str
    regex: re.Pattern[str]
    entry: Callable[..., Any]
    examples: tuple[str, ...]


class Registry(Generic[T]):
    """Named entries of one kind (``what``, e.g. "method"), from the modules of ``package``.

    ``key`` names the field of an entry class's ``Config`` whose default is the entry's name (a method's
    ``name``, a soft-label source's ``source``); without it, :meth:`register` is given the name.
    """

    def __init__(self, what: str, package: str | None = None, key: str | None = None) -> None:
        self.what, self.package, self.key = what, package, key
        self.entries: dict[str, T] = {}
        self.patterns: list[_Pattern] = []
        self._loaded = package is None

    def register(self, entry: Any = None, *, name: str | None = None) -> Any:
        """Register ``entry`` (a class decorator when the registry has a ``key``); called as
        ``register("NAME")`` (or with ``name=``), a decorator that registers what it decorates under that
        name.  A name that is malformed or taken by another entry is a ValueError saying which.

        ``softdistill.register_method``, ``register_source`` and ``register_model`` are this method of the
        registries of methods, soft-label sources and models.

        Args:
            entry: what to register (a method or source class, whose ``Config`` gives the name), or the name.
            name: the name, when the entry does not carry it.

        Returns:
            ``entry`` itself, or a decorator that registers and returns what it decorates.

        Example:
            >>> shapes = Registry("shape")
            >>> @shapes.register("square")
            ... def square(side):
            ...     return side * side
            >>> shapes.get("square")(3)
            9
            >>> shapes.get("sqare")
            Traceback (most recent call last):
            ...
            softdistill.registry.UnknownNameError: unknown shape 'sqare'; did you mean 'square'? (known: square)
        """
        if isinstance(entry, str):
            entry, name = None, entry
        if entry is None:
            self._check_name(name, None)
            return partial(self._add, name=name)
        return self._add(entry, name)

    def _check_name(self, name: Any, entry: Any) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.what} name must be a non-empty string, got {name!r}")
        if ":" in name:
            raise ValueError(f"{self.what} name {name!r} may not contain ':' (reserved for external sources)")
        other = self.entries.get(name)
        if other is not None and other is not entry:
            raise ValueError(f"{self.what} {name!r} is already registered (by {_qualified(other)})")
        if pattern := next((p for p in self.patterns if p.regex.fullmatch(name)), None):
            raise ValueError(f"{self.what} name {name!r} is already provided by the pattern {pattern.form!r}")

    def _add(self, entry: T, name: str | None = None) -> T:
        if name is None:
            if self.key is None:
                raise TypeError(f"register a {self.what} with its name: @register('NAME')")
            name = entry.Config.model_fields[self.key].default  # type: ignore[attr-defined]
        self._check_name(name, entry)
        self.entries[name] = entry  # type: ignore[index]
        return entry

    def register_pattern(self, form: str, regex: str, examples: tuple[str, ...]) -> Callable[[Callable], Callable]:
        """Decorator: a family of names (``form`` such as ``wrn-D-W``) whose ``regex`` captures integers; the
        entry of a matching name is the decorated callable with those integers bound first.  ``examples``
        are listed among :meth:`names`."""
        compiled = re.compile(regex)
        if clashes := [name for name in self.entries if compiled.fullmatch(name)]:
            raise ValueError(f"pattern {form!r} would shadow the registered {self.what}s {clashes}")

        def decorator(entry: Callable) -> Callable:
            self.patterns.append(_Pattern(form, compiled, entry, tuple(examples)))
            return entry

        return decorator

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            package = importlib.import_module(self.package)  # type: ignore[arg-type]
            for info in pkgutil.iter_modules(package.__path__):
                importlib.import_module(f"{self.package}.{info.name}")

    def names(self) -> list[str]:
        """Every registered name (and each pattern's examples), sorted."""
        self._load()
        return sorted({*self.entries, *(e for p in self.patterns for e in p.examples)})

    def __contains__(self, name: object) -> bool:
        try:
            self.get(name)
        except UnknownNameError:
            return False
        return True

    def get(self, name: Any) -> T:
        """The entry registered as ``name`` (a pattern's entry with its integers bound); an
        :class:`UnknownNameError` with the closest names otherwise."""
        self._load()
        if isinstance(name, str):
            if name in self.entries:
                return self.entries[name]
            for pattern in self.patterns:
                if match := pattern.regex.fullmatch(name):
                    return partial(pattern.entry, *(int(g) for g in match.groups()))  # type: ignore[return-value]
        raise UnknownNameError(self.unknown(name))

    def unknown(self, name: Any) -> str:
        """The message for a name that is not registered: the pattern it starts like, or the closest
        names, then every name."""
        known = self.names()
        for p in self.patterns:
            if isinstance(name, str) and name.startswith(p.form[:p.form.index("-") + 1]):
                return f"{self.what} name {name!r} does not match the pattern {p.form!r} (e.g. {', '.join(p.examples)})"
        forms = f"; patterns: {', '.join(p.form for p in self.patterns)}" if self.patterns else ""
        return f"unknown {self.what} {name!r}{did_you_mean(str(name), known)} (known: {', '.join(known)}{forms})"


def _qualified(entry: Any) -> str:
    return f"{getattr(entry, '__module__', '?')}.{getattr(entry, '__qualname__', entry)}"
