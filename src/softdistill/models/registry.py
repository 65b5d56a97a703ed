"""Model registry: exact names, name patterns (``mlp-H``, ``wrn-D-W``) and external sources.

A builder is any callable ``fn(num_classes, in_channels, image_size) -> nn.Module``.  Names of the
form ``source:NAME`` go to :mod:`softdistill.models.external`; other names are looked up exactly,
then among the patterns (by their prefix, e.g. ``"wrn-"``).
"""

from __future__ import annotations

import difflib
import numbers
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from softdistill.models.external import EXTERNAL_FORMS, build_external

__all__ = [
    "Builder",
    "build_model",
    "available_models",
    "register_model",
    "register_pattern",
    "count_parameters",
]

Builder = Callable[[int, int, int], nn.Module]
PatternBuilder = Callable[..., nn.Module]


@dataclass(frozen=True)
class _Pattern:
    form: str  # human-readable form, e.g. "wrn-D-W"
    prefix: str  # names starting with this belong to the pattern, e.g. "wrn-"
    regex: re.Pattern[str]  # integer capture groups, passed positionally to the builder
    builder: PatternBuilder
    examples: tuple[str, ...]


_BUILDERS: dict[str, Builder] = {}
_PATTERNS: list[_Pattern] = []


def register_model(name: str) -> Callable[[Builder], Builder]:
    """Decorator registering ``fn(num_classes, in_channels, image_size) -> nn.Module`` as ``name``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"model name must be a non-empty string, got {name!r}")
    if ":" in name:
        raise ValueError(f"model name {name!r} may not contain ':' (reserved for external sources)")
    if name in _BUILDERS:
        raise ValueError(f"model {name!r} is already registered")
    for pattern in _PATTERNS:
        if pattern.regex.fullmatch(name):
            raise ValueError(f"model name {name!r} is already provided by the pattern {pattern.form!r}")

    def decorator(builder: Builder) -> Builder:
        _BUILDERS[name] = builder
        return builder

    return decorator


def register_pattern(
    form: str, regex: str, examples: tuple[str, ...]
) -> Callable[[PatternBuilder], PatternBuilder]:
    """Decorator registering a family of names such as ``wrn-D-W``.

    ``regex`` must fully match the names and capture integers; the builder is called as
    ``fn(*ints, num_classes, in_channels, image_size)`` and may raise ``ValueError`` for invalid
    values.  ``examples`` are the names listed by :func:`available_models`.
    """
    prefix = form[: form.index("-") + 1]

    compiled = re.compile(regex)
    clashes = [name for name in _BUILDERS if compiled.fullmatch(name)]
    if clashes:
        raise ValueError(f"pattern {form!r} would shadow the registered models {clashes}")

    def decorator(builder: PatternBuilder) -> PatternBuilder:
        _PATTERNS.append(_Pattern(form, prefix, compiled, builder, tuple(examples)))
        return builder

    return decorator


def available_models() -> list[str]:
    """Sorted built-in model names; patterns are represented by their example names."""
    names = set(_BUILDERS)
    for pattern in _PATTERNS:
        names.update(pattern.examples)
    return sorted(names)


def count_parameters(model: nn.Module) -> int:
    """Number of (distinct) parameters of ``model``, trainable or not."""
    return sum(p.numel() for p in model.parameters())


def _check_int(what: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _close_matches(name: str, known: list[str]) -> list[str]:
    """Up to 3 names with a ``difflib`` similarity >= 0.6, ties broken by the longer common prefix."""

    def score(candidate: str) -> tuple[float, int]:
        ratio = difflib.SequenceMatcher(None, name, candidate).ratio()
        return ratio, len(os.path.commonprefix([name, candidate]))

    scores = {candidate: score(candidate) for candidate in known}
    close = [c for c in known if scores[c][0] >= 0.6]
    return sorted(close, key=lambda c: (-scores[c][0], -scores[c][1], c))[:3]


def _unknown_model_message(name: str) -> str:
    known = available_models()
    close = _close_matches(name, known)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    forms = ", ".join(p.form for p in _PATTERNS)
    return (
        f"unknown model {name!r}.{hint} Known models: {', '.join(known)}; "
        f"patterns: {forms}; external: {', '.join(EXTERNAL_FORMS)}."
    )


def build_model(name: str, num_classes: int, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """Build model ``name``: ``B x in_channels x image_size x image_size`` -> ``B x num_classes`` logits.

    Raises ``ValueError`` for an unknown name (with close-match suggestions) or bad sizes, and
    ``ImportError`` when an external model's package is missing.
    """
    num_classes = _check_int("num_classes", num_classes, 2)
    in_channels = _check_int("in_channels", in_channels, 1)
    image_size = _check_int("image_size", image_size, 1)
    if not isinstance(name, str):
        raise ValueError(f"model name must be a string, got {name!r}")
    if ":" in name:
        return build_external(name, num_classes, in_channels, image_size)
    if name in _BUILDERS:
        return _BUILDERS[name](num_classes, in_channels, image_size)
    for pattern in _PATTERNS:
        if name.startswith(pattern.prefix):
            match = pattern.regex.fullmatch(name)
            if match is None:
                raise ValueError(
                    f"model name {name!r} does not match the pattern {pattern.form!r} "
                    f"(e.g. {', '.join(pattern.examples)})"
                )
            return pattern.builder(*(int(g) for g in match.groups()), num_classes, in_channels, image_size)
    raise ValueError(_unknown_model_message(name))
