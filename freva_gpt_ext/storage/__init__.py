"""Thread persistence: the `ThreadStore` protocol, its embedded backends and the MongoDB one."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import StoreError, ThreadInfo, ThreadStore
from .memory import MemoryThreadStore
from .sqlite import SQLiteThreadStore

if TYPE_CHECKING:
    from .mongo import MongoThreadStore

__all__ = ["MemoryThreadStore", "MongoThreadStore", "SQLiteThreadStore", "StoreError", "ThreadInfo", "ThreadStore"]


def __getattr__(name: str) -> Any:
    # pymongo takes a quarter of a second to import: only a server that uses MongoDB pays for it.
    if name == "MongoThreadStore":
        from .mongo import MongoThreadStore

        return MongoThreadStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
