"""Retrieval over documentation libraries as an MCP server (`get_context_from_resources`), with BM25: offline,
no model, no database. Started by `freva-gpt-rag-server`, or in-process by the extension through
`freva_gpt_ext.rag_server.build_server`."""

from .index import ResourceIndex
from .server import build_server

__all__ = ["ResourceIndex", "build_server"]
