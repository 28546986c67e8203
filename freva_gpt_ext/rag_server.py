"""`freva-gpt-rag-server`: the retrieval MCP server of `tool_servers/rag` over streamable HTTP or stdio, and
`build_server` for the extension, which runs the same server in-process.

`tool_servers/` is a data folder, not a package of ours: it is found with `data_folder` (inside the installed
package, or in the checkout) and loaded from its files."""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import platformdirs
from mcp.server.mcpserver import MCPServer

from .paths import data_folder

# The name it would have inside an installed wheel, so both installs log under the same names.
_MODULE = "freva_gpt_ext.tool_servers.rag"


def load_rag() -> ModuleType:
    """The `tool_servers/rag` package, loaded once."""
    if _MODULE in sys.modules:
        return sys.modules[_MODULE]
    folder = data_folder("tool_servers") / "rag"
    spec = importlib.util.spec_from_file_location(
        _MODULE, folder / "__init__.py", submodule_search_locations=[str(folder)]
    )
    if spec is None or spec.loader is None:
        raise ImportError(f"Cannot load the retrieval server from {folder}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[_MODULE] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[_MODULE]
        raise
    return module


def default_cache_dir() -> Path:
    """Where the index files live unless told otherwise: the user's cache folder, never the package."""
    return platformdirs.user_cache_path("freva-gpt") / "rag"


def build_server(resources: Sequence[Path] = (), cache_dir: Path | None = None, *, shipped: bool = True) -> MCPServer:
    """The retrieval server over the libraries of the shipped `resources/` (unless `shipped` is False) and of the
    folders in `resources` (a site's own documentation), its index cached in `cache_dir` (default:
    `default_cache_dir()`). It indexes before it returns (reads files, about 10 ms for the shipped corpus from a
    warm cache): call it off the event loop."""
    folders = ([data_folder("resources")] if shipped else []) + list(resources)
    return load_rag().build_server(folders, cache_dir or default_cache_dir())


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="freva-gpt-rag-server",
        description="FrevaGPT's documentation retrieval (get_context_from_resources) as an MCP server.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8050, help="port to listen on (default: %(default)s)")
    parser.add_argument("--path", default="/mcp", help="URL path of the MCP endpoint (default: %(default)s)")
    parser.add_argument("--stdio", action="store_true", help="speak MCP over stdin/stdout instead of HTTP")
    parser.add_argument(
        "--resources",
        action="append",
        type=Path,
        metavar="DIR",
        help="a folder whose sub-folders are documentation libraries, searched besides the documentation shipped "
        "with freva-gpt; repeat for more",
    )
    parser.add_argument("--no-shipped", action="store_true", help="leave out the documentation shipped with freva-gpt")
    parser.add_argument(
        "--cache-dir", type=Path, help=f"where the index files are kept (default: {default_cache_dir()})"
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = parser.parse_args(argv)
    for folder in args.resources or ():
        if not folder.is_dir():
            parser.error(f"--resources {folder}: no such folder")
    if args.no_shipped and not args.resources:
        parser.error("--no-shipped needs at least one --resources folder")
    # stderr in both modes: with --stdio, stdout carries the protocol.
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server = build_server(args.resources or (), args.cache_dir, shipped=not args.no_shipped)
    if args.stdio:
        server.run("stdio")
    else:
        server.run("streamable-http", host=args.host, port=args.port, streamable_http_path=args.path)


if __name__ == "__main__":
    main()
