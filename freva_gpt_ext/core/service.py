"""The chatbot service: what the route handlers need of the server, typed, and the set-up of a turn.

The app wires one `ChatService` and hands it to the handlers in the Tornado settings (`settings[SETTINGS_KEY]`),
as jupyter_server extensions pass their objects; handlers never reach into the app. A turn is set up here: its
thread (API.md's fork rule, over both stores), the kernel it may use, its tool context and its input.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ..storage.base import ThreadStore
from ..tools.base import Tool, ToolContext
from ..tools.kernel_context import OFF, UNAVAILABLE, KernelContext, KernelSummary
from ..tools.kernel_pool import freva_config_file
from ..variants import Variant
from .catalogue import NO_MODEL_HINT
from .conversations import Conversations, ThreadBusy, Turn
from .discovery import ModelDiscovery
from .llm import ModelCatalogue, ModelEntry
from .orchestrator import Orchestrator, TurnInput
from .turns import thread_for

if TYPE_CHECKING:  # stores.py raises `Refused`, defined here
    from .stores import ThreadStores

SETTINGS_KEY = "freva_gpt_service"
MEMORY_SCOPE = "memory"


class Refused(Exception):
    """A request the service turns down, with the HTTP status API.md gives it and a short reason phrase."""

    def __init__(self, status: int, detail: str, reason: str | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.reason = status, detail, reason


class KernelOwners(Protocol):
    def kernel_owner(self, kernel_id: str) -> str | None:
        """The owner of a per-thread kernel; None for any other kernel."""


@dataclass(frozen=True, slots=True)
class TurnRequest:
    """A validated `streamresponse` request."""

    owner: str
    user_input: str
    model: ModelEntry
    thread_id: str | None = None
    store_thread: bool = True
    show_tools: bool = False
    kernel_id: str | None = None
    notebook_path: str | None = None
    # Request headers for tools, only from a trusted proxy.
    headers: Mapping[str, str] = field(default_factory=dict)
    replay_forked_code: bool = False
    # The Freva bearer token that authenticated a standalone request (see ToolContext.bearer_token).
    bearer_token: str | None = field(default=None, repr=False)
    # Tell the LLM what the notebook kernel holds (see tools.kernel_context).
    kernel_context: bool = True
    # The notebook cell the question is about: {"source", "outputs", "notebook_path"}.
    cell_context: dict[str, str] | None = None


@dataclass(kw_only=True, slots=True)
class ChatService:
    catalogue: ModelCatalogue
    catalogue_problem: str | None
    stores: ThreadStores
    memory_store: ThreadStore
    orchestrator: Orchestrator
    conversations: Conversations
    tools: Mapping[str, Tool]
    kernel_manager: Any
    session_manager: Any
    kernels: KernelOwners | None
    # The summaries of notebook kernels; None without the built-in code interpreter (whose connections it uses).
    kernel_context: KernelContext | None
    # The `owner` setting; and whose server this is (its notebook kernels are theirs).
    owner: str
    server_owner: str
    # Serving freva-rest bearer users alone (`jupyter freva-gpt`): they have no notebook kernels.
    standalone: bool
    thread_sharing: bool
    max_input_chars: int
    trust_proxy_headers: bool
    name_thread: Callable[[str], Awaitable[str]]
    # The `evaluation_system_config_file` setting (per-thread kernels get it, or a trusted proxy's header).
    evaluation_system_config_file: str = ""
    # Finds models without a catalogue; None when a catalogue is configured or discovery is off.
    discovery: ModelDiscovery | None = None

    def no_model_detail(self) -> str:
        """Why there is no model to choose: the broken configuration, what discovery saw, or how to add one."""
        if self.catalogue_problem:
            return self.catalogue_problem
        return self.discovery.detail() if self.discovery is not None else NO_MODEL_HINT

    async def store_for(self, headers: Mapping[str, str]) -> ThreadStore:
        """The persistent thread store serving a request with these headers (the vault's, when the proxy is
        trusted and no store is configured). `Refused` (503, 502) when there is none."""
        return await self.stores.store_for(headers)

    def freva_config(self, headers: Mapping[str, str]) -> str:
        """The Freva configuration file of a request with these headers: a trusted proxy's, else the configured
        one ("" when none is set)."""
        return freva_config_file(headers if self.trust_proxy_headers else {}, self.evaluation_system_config_file)

    # -- kernels ------------------------------------------------------------------------------------------
    async def kernel_choice(self, owner: str, kernel_id: str | None, notebook_path: str | None) -> str | None:
        """The notebook kernel a turn asks for, if any: only the caller's own (404 for any other, as for an
        unknown one); none at all standalone."""
        if not (kernel_id or notebook_path):
            return None
        if self.standalone:
            raise Refused(
                422, "The parameters 'kernel_id' and 'notebook_path' are not available on this server.", "Not available"
            )
        if kernel_id:
            found = kernel_id if kernel_id in self.kernel_manager else None
            missing = f"No running kernel has the id '{kernel_id}'."
        else:
            sessions = await self.session_manager.list_sessions()
            found = next(
                (str(s["kernel"]["id"]) for s in sessions if s.get("path") == notebook_path and s.get("kernel")), None
            )
            missing = f"The notebook '{notebook_path}' has no running kernel."
        if found is None or self.kernel_owner(found) != owner:
            raise Refused(404, missing, "Kernel not found")
        return found

    def kernel_owner(self, kernel_id: str) -> str:
        """A per-thread kernel is its thread's owner's; every other kernel of the server is the server owner's."""
        thread_owner = self.kernels.kernel_owner(kernel_id) if self.kernels is not None else None
        return thread_owner or self.server_owner

    async def kernel_summary(self, kernel_id: str) -> KernelSummary:
        """What a turn in this kernel (one `kernel_choice` allowed) would tell the LLM of its variables."""
        context = self.kernel_context
        if context is None:
            return KernelSummary(OFF, None, None)
        try:
            return await context.summary(kernel_id)
        except Exception:  # the context is a help: a kernel that fails it never fails the turn
            context.log.exception("The summary of kernel %s failed", kernel_id)
            return KernelSummary(UNAVAILABLE, context.spec_of(kernel_id), None)

    async def _turn_kernel(self, request: TurnRequest) -> tuple[dict[str, Any] | None, str | None]:
        """For a turn in a kernel the request names: what its `User` variant records of that kernel
        (`Variant.kernel`: a per-thread kernel of ours is "thread", any other "notebook"), and the summary of the
        kernel's variables the LLM is told (unless the request or the server switched it off)."""
        context, kernel_id = self.kernel_context, request.kernel_id
        if context is None or kernel_id is None:
            return None, None
        kind = "thread" if self.kernels is not None and self.kernels.kernel_owner(kernel_id) else "notebook"
        if not request.kernel_context:
            return {"kind": kind, "spec": context.spec_of(kernel_id), "variables": []}, None
        found = await self.kernel_summary(kernel_id)
        return {"kind": kind, "spec": found.spec, "variables": list(found.variables)}, found.summary or None

    # -- turns --------------------------------------------------------------------------------------------
    async def start_turn(self, request: TurnRequest, store: ThreadStore) -> Turn:
        """Start the turn in its thread of `store` (the request's persistent store) or of the memory store."""
        memory = self.memory_store
        target = store if request.store_thread else memory
        owner, model = request.owner, request.model
        if request.store_thread and request.thread_id is not None:
            await self._check_size(store, request.thread_id, owner)
        thread_id, fork_from = await thread_for(
            target, request.thread_id, owner, persistent=store, memory=memory, sharing=self.thread_sharing
        )
        replay_from = 0 if request.replay_forked_code or fork_from is None else fork_from
        kernel, kernel_variables = await self._turn_kernel(request)

        def produce(history: list[Variant]) -> AsyncIterator[Variant]:
            ctx = ToolContext(
                thread_id=thread_id,
                owner=owner,
                scope=self.stores.scope_of(store) if request.store_thread else MEMORY_SCOPE,
                vision=model.supports_vision,
                kernel_id=request.kernel_id,
                notebook_path=request.notebook_path,
                headers=request.headers,
                bearer_token=request.bearer_token,
                history=history,
                replay_from=replay_from,
            )
            turn_input = TurnInput(
                thread_id=thread_id,
                owner=owner,
                model=model,
                user_input=request.user_input,
                history=history,
                ctx=ctx,
                used_ids={v.id for v in history if v.id},
                kernel_variables=kernel_variables,
                cell_context=request.cell_context,
            )
            return self.orchestrator.run(turn_input)

        try:
            return await self.conversations.start(
                store=target,
                thread_id=thread_id,
                owner=owner,
                model_name=model.name,
                user_input=request.user_input,
                show_tools=request.show_tools,
                produce=produce,
                name_thread=self.name_thread if request.store_thread else None,
                cell_context=request.cell_context,
                kernel=kernel,
            )
        except ThreadBusy as err:
            raise Refused(409, "This thread is already streaming an answer.", "Thread is busy") from err

    async def _check_size(self, store: ThreadStore, thread_id: str, owner: str) -> None:
        """Refuse a turn on a thread the store cannot hold more of; a fork from an earlier message goes on.
        Another user's such thread too: continuing it would fork all of it, just as large (with sharing off it
        is not there for the caller, and a new thread starts)."""
        limit = store.max_thread_bytes
        if limit is None:
            return
        info = await store.info(thread_id)
        if info is None or (info.user_id != owner and not self.thread_sharing):
            return
        if info.size is not None and info.size > limit:
            raise Refused(
                413,
                f"Thread too long: fork it. It holds about {info.size / 2**20:.1f} MiB, more than the "
                f"{limit / 2**20:g} MiB a thread may hold; fork it from an earlier message (editthread) to go on.",
                "Thread too long: fork it",
            )

    async def stop(self, owner: str, thread_id: str, store: ThreadStore) -> None:
        """Stop the caller's running turn on `thread_id`. A memory-only thread and a stored one may share an id:
        the caller's own is stopped, never another user's."""
        mine = []
        for candidate in (self.memory_store, store):
            info = await candidate.info(thread_id)
            if info is not None and info.user_id == owner:
                mine.append(candidate)
        if not mine:
            stored = await store.info(thread_id)
            if stored is not None and self.thread_sharing:
                raise Refused(403, "This thread belongs to another user.")
            # Unknown, hidden (sharing off), or another user's memory-only thread: nothing reveals it.
            raise Refused(404, "Thread not found.")
        for candidate in mine:
            if await self.conversations.stop(thread_id, candidate):
                return
        raise Refused(404, "No answer is being generated on this thread.", "Not streaming")

    async def close_thread(self, thread_id: str, store: ThreadStore) -> None:
        """Release what tools hold for a thread deleted from `store`."""
        scope = self.stores.scope_of(store)
        for tool in self.tools.values():
            await tool.close_thread(thread_id, scope)
