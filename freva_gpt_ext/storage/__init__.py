"""Thread persistence: the `ThreadStore` protocol and its embedded backends."""

from .base import StoreError, ThreadInfo, ThreadStore
from .memory import MemoryThreadStore
from .sqlite import SQLiteThreadStore

__all__ = ["MemoryThreadStore", "SQLiteThreadStore", "StoreError", "ThreadInfo", "ThreadStore"]
