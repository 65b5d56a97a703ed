"""The one strict base of every typed setting (recipe sections, method and source configs), the
declaration of what a setting means for a run's identity, and readable validation errors.

Every section forbids unknown keys; :func:`describe_errors` turns pydantic's errors into lines with
the dotted key, the closest valid key and the allowed keys.  A field declared with :func:`not_identity`
does not change what a run computes (where the data lies, how many threads, how fast): a run folder
made under another value of it still counts as the same run, and ``inherited`` ones pass from a
recipe to the recipes it depends on.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Sequence
from typing import Any, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError

from softdistill.registry import Registry, UnknownNameError, did_you_mean

__all__ = ["StrictConfig", "not_identity", "not_identity_keys", "identity_dump", "describe_errors",
           "config_differences", "validate_registry_section", "nested_problems"]

#: the pydantic error type of :func:`nested_problems`
NESTED_PROBLEMS = "nested_problems"


class StrictConfig(BaseModel):
    """Base of every typed setting: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def not_identity(default: Any = ..., *, inherited: bool = False, **kwargs: Any) -> Any:
    """A pydantic ``Field`` that is not part of a run's identity (``inherited``: dependencies take it too)."""
    return Field(default, json_schema_extra={"identity": False, "inherited": inherited}, **kwargs)


def _unwrap_model(annotation: Any) -> type[BaseModel] | None:
    """The BaseModel class inside an annotation such as ``X | None`` or ``SerializeAsAny[X]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType) or origin is typing.Annotated:
        for arg in typing.get_args(annotation):
            found = _unwrap_model(arg)
            if found is not None:
                return found
    return None


def not_identity_keys(model: type[BaseModel], *, inherited: bool = False, prefix: str = "") -> list[str]:
    """The dotted keys of ``model`` (and its nested sections) declared with :func:`not_identity`
    (``inherited``: only those that dependencies inherit)."""
    keys = []
    for name, info in model.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if extra.get("identity") is False and (extra.get("inherited") or not inherited):
            keys.append(prefix + name)
        elif (nested := _unwrap_model(info.annotation)) is not None:
            keys += not_identity_keys(nested, inherited=inherited, prefix=f"{prefix}{name}.")
    return keys


def identity_dump(model: BaseModel) -> dict[str, Any]:
    """``model`` as JSON holds it, without the fields declared with :func:`not_identity`, in nested sections
    too (lists of sections included): what a stored identity (a store's labeller) records of a section, so
    that a field added later as not part of the identity leaves earlier identities equal."""
    return _without_non_identity(model, model.model_dump(mode="json"))


def _without_non_identity(model: BaseModel, dumped: dict[str, Any]) -> dict[str, Any]:
    for name, info in type(model).model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if extra.get("identity") is False:
            dumped.pop(name, None)
            continue
        value, held = getattr(model, name), dumped.get(name)
        if isinstance(value, BaseModel) and isinstance(held, dict):
            _without_non_identity(value, held)
        elif isinstance(value, (list, tuple)) and isinstance(held, list):
            for item, item_held in zip(value, held):
                if isinstance(item, BaseModel) and isinstance(item_held, dict):
                    _without_non_identity(item, item_held)
    return dumped


def _model_at(root: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] | None = root
    for part in loc:
        if model is None or not isinstance(part, str) or part not in model.model_fields:
            return None
        model = _unwrap_model(model.model_fields[part].annotation)
    return model


def describe_errors(errors: list[dict[str, Any]], root: type[BaseModel], prefix: tuple[str, ...] = ()) -> list[str]:
    """One line per pydantic error of validating ``root``: the dotted key (under ``prefix``) and what is wrong."""
    lines = []
    for err in errors:
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        dotted = ".".join(str(p) for p in prefix + loc) or "(recipe)"
        if err["type"] == "extra_forbidden":
            parent = _model_at(root, loc[:-1])
            allowed = sorted(k for k, f in parent.model_fields.items() if not f.exclude) if parent else []
            lines.append(f"{dotted}: unknown key{did_you_mean(str(loc[-1]), allowed)} (allowed: {', '.join(allowed)})")
        elif err["type"] == NESTED_PROBLEMS:
            parent = ".".join(str(p) for p in prefix + loc[:-1])
            lines += [f"{parent}.{line}" if parent else line for line in err["ctx"]["lines"]]
        elif err["type"] == "missing":
            lines.append(f"{dotted}: required key is missing")
        else:
            got = err.get("input")
            shown = "" if isinstance(got, dict) else f", got {got!r}"
            lines.append(f"{dotted}: {err['msg'].removeprefix('Value error, ')}{shown}")
    return lines


def config_differences(old: Any, new: Any, ignore: Sequence[str] = (), prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts (keys in ``ignore`` are skipped)."""
    if isinstance(old, dict) and isinstance(new, dict):
        diffs = []
        for key in sorted(set(old) | set(new)):
            if f"{prefix}{key}" not in ignore:
                diffs += config_differences(old.get(key), new.get(key), ignore, f"{prefix}{key}.")
        return diffs
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} -> {new!r}"]


def nested_problems(lines: list[str]) -> PydanticCustomError:
    """The error a field validator raises for the sections nested in its field that it validated itself
    (each a registry section: :func:`validate_registry_section`); ``lines`` start with the key below the
    field's parent, e.g. ``members[1].recipe: ...``, and :func:`describe_errors` reports them as they are,
    under the dotted key of the field's parent."""
    return PydanticCustomError(NESTED_PROBLEMS, "; ".join(lines), {"lines": lines})


def validate_registry_section(raw: Any, where: str, registry: Registry, example: str) -> tuple[Any, list[str]]:
    """A section that names an entry of ``registry`` (by its key, e.g. ``source: teacher``) validated by the
    schema of that entry: (the typed section, []) or (None, the problems, each starting with ``where``, the
    section's dotted key)."""
    key = registry.key
    if not isinstance(raw, dict) or key not in raw:
        return None, [f"{where}: must be a mapping with a '{key}' key, e.g. {example}"]
    try:
        cls = registry.get(raw[key]).Config
    except UnknownNameError as exc:
        return None, [f"{where}.{key}: {exc}"]
    try:
        return cls.model_validate(raw), []
    except ValidationError as exc:
        return None, describe_errors(exc.errors(), cls, (where,))
