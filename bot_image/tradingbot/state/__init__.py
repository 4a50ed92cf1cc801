"""Versioned bot state (SPEC §11): the document, its codec and its stores."""

from tradingbot.state.model import (
    Fill,
    OpenOrder,
    Position,
    StateCheckpoint,
    StateCorruptError,
    StateTooLargeError,
    Stats,
    decode_state,
    encode_state,
)
from tradingbot.state.stores import (
    ConfigMapStateStore,
    FileStateStore,
    MemoryStateStore,
    RestoreResult,
    StateConflictError,
    StateStore,
    StateWriteError,
    choose_restore,
)

__all__ = [
    "ConfigMapStateStore",
    "FileStateStore",
    "Fill",
    "MemoryStateStore",
    "OpenOrder",
    "Position",
    "RestoreResult",
    "StateCheckpoint",
    "StateConflictError",
    "StateCorruptError",
    "StateStore",
    "StateTooLargeError",
    "StateWriteError",
    "Stats",
    "choose_restore",
    "decode_state",
    "encode_state",
]
