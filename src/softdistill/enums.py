"""The allowed values of the settings' choices that the command line lists too, declared once.

Each is a ``Literal`` type that the typed settings use and a tuple of its values for messages and
the command line; this module imports nothing heavy, so ``softdistill --help`` lists them without
loading torch.
"""

from __future__ import annotations

from typing import Literal, get_args

__all__ = ["Loader", "OnCorrupt", "Mix", "Replay", "LOADERS", "ON_CORRUPT", "MIX_KINDS", "REPLAYS"]

Loader = Literal["memory", "stream", "auto"]
OnCorrupt = Literal["fail", "skip"]
Mix = Literal["none", "mixup", "cutmix"]
Replay = Literal["cycle", "random"]

LOADERS: tuple[str, ...] = get_args(Loader)
ON_CORRUPT: tuple[str, ...] = get_args(OnCorrupt)
MIX_KINDS: tuple[str, ...] = get_args(Mix)
REPLAYS: tuple[str, ...] = get_args(Replay)
