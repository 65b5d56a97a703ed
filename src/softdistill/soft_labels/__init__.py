"""Soft-label sources: modules that map a batch to soft labels as B x K logits.

One interface (:class:`~softdistill.soft_labels.base.SoftLabelSource`), one registry: the teacher run
online (``teacher``), its logits cached per view (``cache``), weak-supervision tables (``weak``).
Every module of this package is imported on first use, so a new source touches one file.
"""

from __future__ import annotations

from softdistill.soft_labels.base import (Dependency, SoftLabelSource, SourceConfig, SourceSetup, register_source,
                                      sources)
from softdistill.soft_labels.teacher import CachedTeacher, FrozenTeacher, load_teacher

__all__ = ["SoftLabelSource", "SourceConfig", "SourceSetup", "Dependency", "register_source", "sources", "source_names",
           "source_class", "FrozenTeacher", "CachedTeacher", "load_teacher"]


def source_names() -> list[str]:
    return sources.names()


def source_class(name: str) -> type[SoftLabelSource]:
    return sources.get(name)
