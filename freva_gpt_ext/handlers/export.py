"""`exportthread`: a thread as a notebook, downloaded or written into the server's files."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

import nbformat
from jupyter_core.utils import ensure_async
from tornado import web

from ..core.notebook_export import (
    DEFAULT_KERNEL,
    NOTEBOOK_MIME,
    SUFFIX,
    ExportedThread,
    build_notebook,
    content_disposition,
    notebook_filename,
    thread_kernel,
)
from ..variants import history_with_interruptions
from .base import ApiError, ChatbotHandler


async def off_loop(method: Callable[..., Any], *args: Any) -> Any:
    """A contents or kernel-spec manager's method, whichever kind the server configured: an async one awaited, a
    sync one (file I/O) run in a thread so that it never holds the event loop."""
    if inspect.iscoroutinefunction(method):
        return await method(*args)
    return await ensure_async(await asyncio.to_thread(method, *args))


class ExportThreadHandler(ChatbotHandler):
    route_name = "exportthread"

    @property
    def auth_action(self) -> str:
        # A download reads; writing a file into the user's folders changes them (and needs XSRF from a cookie).
        return "write" if self.request.method == "POST" and self.params().get("path") is not None else "read"

    async def handle(self) -> None:
        thread_id = self.thread_param()
        show_tools = self.bool_param("show_tools", True)
        path = self.target_path()
        if path is not None and not await ensure_async(
            self.authorizer.is_authorized(self, self.current_user, "write", "contents")
        ):
            # The file lands among the user's files: whoever may not write those may only download.
            raise ApiError(403, "You may not write files on this server: download the notebook instead.")
        overwrite = self.bool_param("overwrite", False)
        store = await self.store_for()
        info = await self.readable_thread(store, thread_id)
        variants = history_with_interruptions(await store.read(thread_id))
        thread = ExportedThread(
            thread_id=thread_id,
            topic=info.topic,
            date=info.listing()["date"],
            kernelspec=await self.kernelspec(thread_kernel(variants, self.thread_kernel_spec())),
            freva_config=self.service.freva_config(self.request.headers),
        )
        # Off the loop: a thread with many figures makes a notebook of many megabytes to build and validate.
        notebook = await asyncio.to_thread(build_notebook, variants, thread, show_tools=show_tools)
        if path is None:
            text = await asyncio.to_thread(nbformat.writes, notebook)
            self.set_header("Content-Disposition", content_disposition(notebook_filename(info.topic)))
            self.finish(text, set_content_type=NOTEBOOK_MIME)
            return
        self.reply({"path": await self.save_notebook(notebook, path, overwrite=overwrite)})

    def target_path(self) -> str | None:
        """The `path` to write to (a POST's), checked as far as it can be before the contents manager sees it."""
        path = self.str_param("path")
        if path is None:
            return None
        if self.request.method != "POST":
            raise ApiError(422, "The parameter 'path' is accepted only in a POST (a GET downloads the notebook).")
        if self.service.standalone:
            raise ApiError(
                422, "Writing the notebook into a folder is not available on this server: download it instead."
            )
        api_path = path.lstrip("/")  # the contents API's paths have no leading slash
        name = api_path.rpartition("/")[2]
        if not name.endswith(SUFFIX) or name == SUFFIX:
            raise ApiError(422, f"The parameter 'path' must name a notebook file ending in '{SUFFIX}'.")
        if any(part in ("", ".", "..") for part in api_path.split("/")):
            raise ApiError(422, "The parameter 'path' must be a path inside the server's root folder.")
        return api_path

    async def save_notebook(self, notebook: nbformat.NotebookNode, path: str, *, overwrite: bool) -> str:
        """Save through the server's contents manager (its root, its rules on hidden files); the saved path."""
        cm = self.contents_manager
        parent = path.rpartition("/")[0]
        try:
            if parent and not await off_loop(cm.dir_exists, parent):
                raise ApiError(404, f"The folder '{parent}' does not exist.", "Folder not found")
            if await off_loop(cm.dir_exists, path):
                raise ApiError(409, f"'{path}' is a folder.", "Path exists")
            if not overwrite and await off_loop(cm.file_exists, path):
                raise ApiError(409, f"'{path}' exists; send overwrite=true to replace it.", "File exists")
            model = await off_loop(cm.save, {"type": "notebook", "format": "json", "content": notebook}, path)
        except ApiError:
            raise
        except web.HTTPError as err:
            # The contents manager's own refusal (outside the root, a hidden file, permissions), with its reason.
            detail = err.log_message or err.reason or "The notebook could not be saved."
            raise ApiError(err.status_code, detail) from err
        return str(model["path"])

    def thread_kernel_spec(self) -> str:
        """The spec of this server's per-thread kernels: the configured `kernel_spec`, else the server's default."""
        kernels = self.service.kernels
        configured = kernels.kernel_name if kernels is not None else None
        return configured or getattr(self.kernel_manager, "default_kernel_name", None) or DEFAULT_KERNEL

    async def kernelspec(self, name: str) -> dict[str, str]:
        """The kernel spec as notebook metadata; a spec this server lacks keeps its name (the notebook names what
        the thread ran in)."""
        try:
            spec = await off_loop(self.kernel_spec_manager.get_kernel_spec, name)
        except Exception:  # jupyter_client's NoSuchKernel, or a gateway's error
            return {"name": name, "display_name": name}
        found = {"name": name, "display_name": spec.display_name or name}
        return {**found, "language": spec.language} if spec.language else found
