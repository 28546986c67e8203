"""One turn of the assistant: an async generator of variants, knowing nothing of HTTP or storage."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..tools.base import Tool, ToolContext, openai_function
from ..variants import (
    ASSISTANT,
    CODE,
    CODE_ERROR,
    CODE_OUTPUT,
    CODE_PREFIX,
    CODE_SUFFIX,
    CODE_TOOL_NAME,
    IMAGE,
    SERVER_ERROR,
    TOOL_CALL,
    TOOL_OUTPUT,
    Variant,
    canonical_code,
    escape_code,
    hint,
    with_figures,
)
from .code_arguments import CodeArguments
from .llm import Delta, LLMClient, LLMError, ModelEntry
from .prompts import PromptLibrary, build_messages


@dataclass(slots=True)
class TurnInput:
    thread_id: str
    owner: str
    model: ModelEntry
    user_input: str
    history: list[Variant]
    ctx: ToolContext
    # Tool-call ids already used in the thread: providers reuse ids like `call_1` across turns.
    used_ids: set[str] = field(default_factory=set)
    # The summary of the user's notebook kernel's variables (told to the LLM, never stored), and the notebook
    # cell the question is about.
    kernel_variables: str | None = None
    cell_context: Mapping[str, Any] | None = None


@dataclass(slots=True)
class _Call:
    index: int
    id: str = ""
    name: str = ""
    arguments: str = ""
    first: bool = False
    live: bool = False  # its Code fragments were streamed while the LLM produced them
    closed: bool = False  # its Code suffix was streamed
    code: CodeArguments = field(default_factory=CodeArguments)
    _read: int = 0  # how much of `arguments` the code reader has seen

    @property
    def is_code(self) -> bool:
        return self.name == CODE_TOOL_NAME

    def read_code(self) -> str:
        """The code characters that arrived since the last call."""
        new, self._read = self.arguments[self._read :], len(self.arguments)
        return self.code.feed(new)

    def wire_arguments(self) -> str:
        """The arguments as stored and sent back to the LLM: a code call's in the canonical form."""
        return canonical_code(self.code.text) if self.is_code else self.arguments


# Ids go to every client as they are: never anything a parser could take for more than a name.
_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def unique_id(raw: str | None, used: set[str], fallback: int) -> str:
    base = _ID_UNSAFE.sub("_", raw or "")[:64] or f"call_{fallback}"
    candidate, n = base, 1
    while candidate in used:
        n += 1
        candidate = f"{base}_{n}"
    used.add(candidate)
    return candidate


class Orchestrator:
    def __init__(
        self,
        llm: LLMClient,
        prompts: PromptLibrary,
        tools: Mapping[str, Tool],
        *,
        max_tool_rounds: int,
        tool_result_chars: int,
        packages: Callable[[ToolContext], Awaitable[Mapping[str, str] | None]] | None = None,
        tools_refused: Callable[[ModelEntry], None] | None = None,
    ) -> None:
        self.llm = llm
        self.prompts = prompts
        self.tools = tools
        # What the turn's kernel has, if known (never waits for it): the prompt names only those packages.
        self.packages = packages
        self.max_tool_rounds = max_tool_rounds
        self.tool_result_chars = tool_result_chars
        # Told when a discovered model's server refused tools (its later turns then send none).
        self.tools_refused = tools_refused

    async def run(self, turn: TurnInput) -> AsyncIterator[Variant]:
        model = turn.model
        prompt_set = self.prompts.load(self.prompts.name_for(model.name, model.prompt_set))
        packages = await self.packages(turn.ctx) if self.packages is not None else None
        # The history is converted once per turn; tool rounds only append to it.
        messages = build_messages(
            prompt_set,
            turn.history,
            turn.user_input,
            vision=model.supports_vision,
            packages=packages,
            kernel_variables=turn.kernel_variables,
            cell_context=turn.cell_context,
        )
        # The tools known now serve the whole turn: MCP servers may come and go meanwhile.
        tools = dict(self.tools)
        specs = [openai_function(t) for t in tools.values()] if model.supports_tools else []
        for round_no in range(self.max_tool_rounds + 1):
            if round_no:
                yield hint(status="thinking")
            calls: dict[int, _Call] = {}
            text: list[str] = []
            live: _Call | None = None
            # Text that comes once a call has begun waits for the calls' results: a call's Code and its output
            # stay together, on the wire, in the store and in the history the LLM is sent again.
            late: list[str] = []
            async for delta in self._answer(model, messages, specs):
                if delta.text:
                    text.append(delta.text)
                    if calls:
                        late.append(delta.text)
                    else:
                        yield Variant(ASSISTANT, delta.text, model=model.name)
                for part in delta.tool_calls:
                    call = calls.get(part.index)
                    if call is None:
                        call = calls[part.index] = _Call(part.index, first=not calls)
                        call.id = unique_id(part.id, turn.used_ids, len(turn.used_ids) + 1)
                    # Some servers repeat name and id in every chunk: the first ones count.
                    if part.name and not call.name:
                        call.name = part.name
                    call.arguments += part.arguments
                    # Only the answer's first call streams live; later ones wait for its output.
                    if live is None and call.first and call.is_code:
                        live = call
                        call.live = True
                        yield Variant(CODE, CODE_PREFIX, id=call.id)
                    if call is live and not call.closed:
                        for v in self._stream_code(call):
                            yield v
            if live is not None and not live.closed:
                live.closed = True
                yield Variant(CODE, CODE_SUFFIX, id=live.id)
            if not calls:
                return
            ordered = [calls[i] for i in sorted(calls)]
            messages.append(
                {
                    "role": "assistant",
                    "content": "".join(text) or None,
                    "tool_calls": [
                        {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.wire_arguments()}}
                        for c in ordered
                    ],
                }
            )
            for call in ordered:
                result: list[str] = []
                images: list[str] = []
                async for v in self._run_call(call, turn.ctx, tools):
                    if v.variant in (CODE_OUTPUT, TOOL_OUTPUT, CODE_ERROR) and isinstance(v.content, str):
                        result.append(v.content)
                    elif v.variant == IMAGE and isinstance(v.content, str):
                        images.append(v.content)
                    yield v
                content = "\n".join(p for p in result if p)
                if len(content) > self.tool_result_chars:
                    content = content[: self.tool_result_chars] + "\n[output truncated]"
                content = with_figures(content, len(images))
                messages.append({"role": "tool", "tool_call_id": call.id, "content": content})
                if images and model.supports_vision:
                    # Tool messages carry text only: the plots follow as the user's images.
                    parts: list[dict[str, Any]] = [{"type": "text", "text": f"Images made by call {call.id}:"}]
                    parts += [
                        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{b64}"}} for b64 in images
                    ]
                    messages.append({"role": "user", "content": parts})
            for piece in late:
                yield Variant(ASSISTANT, piece, model=model.name)
        yield Variant(
            SERVER_ERROR,
            f"The assistant used tools {self.max_tool_rounds} times in a row without answering; "
            "stopped here. Ask again or narrow the request.",
        )

    async def _answer(
        self, model: ModelEntry, messages: list[dict[str, Any]], specs: list[dict[str, Any]]
    ) -> AsyncIterator[Delta]:
        """The LLM's answer. A discovered model whose server refuses tools before answering (Ollama's "does not
        support tools", llama.cpp without --jinja, vLLM without --enable-auto-tool-choice) is asked again at once
        without them; `specs` is emptied, so the rest of the turn sends none either."""
        answered = False
        try:
            async for delta in self.llm.stream(model, messages, specs):
                answered = True
                yield delta
            return
        except LLMError as err:
            retry = bool(specs) and model.discovered and "tool" in err.detail.lower() and self.tools_refused is not None
            if answered or not retry:
                raise
        assert self.tools_refused is not None
        self.tools_refused(model)
        specs.clear()
        async for delta in self.llm.stream(model, messages, specs):
            yield delta

    @staticmethod
    def _stream_code(call: _Call) -> list[Variant]:
        code = call.read_code()
        out = [Variant(CODE, escape_code(code), id=call.id)] if code else []
        if call.code.complete:
            # The code is whole: its run closes now, whatever other keys the arguments still bring.
            call.closed = True
            out.append(Variant(CODE, CODE_SUFFIX, id=call.id))
        return out

    async def _run_call(self, call: _Call, ctx: ToolContext, tools: Mapping[str, Tool]) -> AsyncIterator[Variant]:
        if call.is_code:
            if not call.live:
                # Held back until now: the same canonical run, prefix and suffix on lines of their own.
                call.read_code()
                yield Variant(CODE, CODE_PREFIX, id=call.id)
                if call.code.text:
                    yield Variant(CODE, escape_code(call.code.text), id=call.id)
                yield Variant(CODE, CODE_SUFFIX, id=call.id)
        else:
            yield Variant(TOOL_CALL, call.arguments, id=call.id, tool_name=call.name)
        tool = tools.get(call.name)
        failure = None
        arguments: dict[str, Any] = {}
        if tool is None:
            failure = f"Unknown tool {call.name!r}."
        else:
            try:
                parsed = json.loads(call.arguments or "{}")
            except ValueError:
                parsed = None
            if not isinstance(parsed, dict):
                failure = "The tool arguments are not a JSON object."
            elif not call.is_code:
                arguments = parsed
            elif call.code.code is None:
                failure = "The call had no code."
            else:
                # What runs is exactly what was shown; other keys the LLM added are dropped.
                arguments = {"code": call.code.code}
        if failure is None and tool is not None:
            yield hint(status="executing" if call.is_code else "searching")
            answered = False
            try:
                async for v in tool.run(call.id, arguments, ctx):
                    answered = answered or v.variant in (CODE_OUTPUT, TOOL_OUTPUT)
                    yield v
                if answered:
                    return
                failure = "The tool gave no result."
            except Exception as err:
                # A broken tool fails its call, not the turn: the LLM reads the error and may try otherwise.
                failure = f"The tool {call.name!r} failed: {type(err).__name__}: {err}"
                if answered:
                    if call.is_code:
                        yield Variant(CODE_ERROR, failure, id=call.id)
                    return
        if call.is_code:
            yield Variant(CODE_OUTPUT, "", id=call.id)
            yield Variant(CODE_ERROR, failure, id=call.id)
        else:
            yield Variant(TOOL_OUTPUT, failure, id=call.id, tool_name=call.name)
