"""Prompt sets and the conversion of a thread into the chat messages an LLM receives."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from ..tools.kernel_probe import NATURAL_EARTH
from ..variants import (
    ASSISTANT,
    CODE,
    CODE_ERROR,
    CODE_OUTPUT,
    CODE_TOOL_NAME,
    IMAGE,
    TOOL_CALL,
    TOOL_OUTPUT,
    USER,
    Variant,
    from_stored,
    history_with_interruptions,
    with_figures,
)


@dataclass(frozen=True, slots=True)
class PromptSet:
    name: str
    starting: str
    summary: str
    examples: tuple[Variant, ...]
    # `kernel/<name>.txt`: how to use a package, sent only when the kernel has it.
    kernel_notes: Mapping[str, str]


class PromptLibrary:
    """Folders of prompt sets (`<set>/starting_prompt.txt`, `summary_prompt.txt`, optional `examples.jsonl` and
    `kernel/<package>.txt`).

    A set is taken from the first folder that has it: a configured library first, then the built-in one.
    """

    def __init__(self, roots: list[Path], default_set: str, per_model: dict[str, str] | None = None) -> None:
        self.roots = tuple(roots)
        self.default_set = default_set
        self.per_model = dict(per_model or {})
        self.load(default_set)  # fail at start-up, not in the first turn

    def name_for(self, model_name: str, model_prompt_set: str | None) -> str:
        return self.per_model.get(model_name) or model_prompt_set or self.default_set

    def load(self, name: str) -> PromptSet:
        return _load_set(self.roots, name)


@cache
def _load_set(roots: tuple[Path, ...], name: str) -> PromptSet:
    folder = next((r / name for r in roots if (r / name / "starting_prompt.txt").is_file()), None)
    if folder is None:
        where = ", ".join(str(r) for r in roots)
        raise FileNotFoundError(f"No prompt set {name!r} (a folder with starting_prompt.txt) in {where}.")
    summary_file = folder / "summary_prompt.txt"
    examples_file = folder / "examples.jsonl"
    examples: list[Variant] = []
    if examples_file.is_file():
        for line in examples_file.read_text(encoding="utf-8").splitlines():
            if line.strip():
                examples.append(from_stored(json.loads(line)))
    notes = {f.stem: f.read_text(encoding="utf-8").strip() for f in sorted(folder.glob("kernel/*.txt"))}
    return PromptSet(
        name=name,
        starting=(folder / "starting_prompt.txt").read_text(encoding="utf-8").strip(),
        summary=summary_file.read_text(encoding="utf-8").strip() if summary_file.is_file() else "",
        examples=tuple(examples),
        kernel_notes=notes,
    )


KERNEL_UNKNOWN = (
    "THE KERNEL'S PACKAGES\nWhich optional packages the kernel has is not known yet: before you rely on a package "
    "beyond the standard library, check it with `importlib.util.find_spec(name)`."
)


def kernel_section(prompt_set: PromptSet, packages: Mapping[str, str] | None) -> str:
    """What the system prompt says about the kernel's packages: only those it has, nothing before the probe."""
    if packages is None:
        return KERNEL_UNKNOWN
    names = [name for name in packages if name != NATURAL_EARTH]
    listed = []
    for name in names:
        entry = f"{name} {packages[name]}"
        if name == "cartopy":
            has_data = NATURAL_EARTH in packages
            entry += " (with Natural Earth data offline)" if has_data else " (without Natural Earth data offline)"
        listed.append(entry)
    have = ", ".join(listed) if listed else "none of the usual scientific packages"
    parts = [
        f"THE KERNEL'S PACKAGES\nBesides the standard library, the kernel has: {have}. Other packages may be "
        "missing: check one with `importlib.util.find_spec(name)` before you rely on it."
    ]
    parts += [prompt_set.kernel_notes[name] for name in names if name in prompt_set.kernel_notes]
    return "\n\n".join(parts)


KERNEL_VARIABLES = (
    "THE NOTEBOOK'S VARIABLES\nThe user's notebook kernel, where your code runs, holds these variables right now "
    "(names, types, shapes, dimensions, coordinate ranges and a few attributes; no values but numbers). When the "
    "question is about them, use them by name in your code, without loading the data again:\n"
)


def fenced(text: str) -> str:
    """`text` as a Markdown code block whose fence no run of backticks inside it can close."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}\n{text}\n{fence}"


def user_text(text: str, cell_context: Mapping[str, Any] | None) -> str:
    """A user message as the LLM reads it: the question, then the notebook cell it was asked about, if any."""
    if not cell_context:
        return text
    where = cell_context.get("notebook_path") or "the notebook"
    parts = [text] if text else []
    parts.append(f"The question is about this cell of {where}:\n{fenced(str(cell_context.get('source') or ''))}")
    if cell_context.get("outputs"):
        parts.append(f"Its output:\n{fenced(str(cell_context['outputs']))}")
    return "\n\n".join(parts)


def build_messages(
    prompt_set: PromptSet,
    history: list[Variant],
    user_input: str,
    *,
    vision: bool,
    packages: Mapping[str, str] | None = None,
    kernel_variables: str | None = None,
    cell_context: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """System prompts, few-shot examples, the thread so far and the new user message, in that order.

    `packages`: what the kernel has ({import name: version}, see tools.kernel_probe); None while unknown.
    `kernel_variables`: the summary of the user's kernel's namespace (tools.kernel_context), told to the LLM
    right before the message; `cell_context`: the notebook cell the message is about.
    """
    starting = f"{prompt_set.starting}\n\n{kernel_section(prompt_set, packages)}"
    messages: list[dict[str, Any]] = [{"role": "system", "content": starting}]
    messages.extend(to_messages(list(prompt_set.examples), vision=False))
    if prompt_set.summary:
        messages.append({"role": "system", "content": prompt_set.summary})
    messages.extend(to_messages(history, vision=vision))
    if kernel_variables:
        messages.append({"role": "system", "content": KERNEL_VARIABLES + kernel_variables})
    messages.append({"role": "user", "content": user_text(user_input, cell_context)})
    return messages


def to_messages(variants: list[Variant], *, vision: bool) -> list[dict[str, Any]]:
    """Stored variants as OpenAI chat messages; the tool results carry their errors."""
    messages: list[dict[str, Any]] = []
    results: dict[str, dict[str, Any]] = {}
    for v in history_with_interruptions(variants):
        if v.variant == USER:
            messages.append({"role": "user", "content": user_text(str(v.content), v.cell_context)})
        elif v.variant == ASSISTANT:
            messages.append({"role": "assistant", "content": str(v.content)})
        elif v.variant in (CODE, TOOL_CALL):
            call = {
                "id": v.id or "",
                "type": "function",
                "function": {
                    "name": CODE_TOOL_NAME if v.variant == CODE else (v.tool_name or "tool"),
                    "arguments": str(v.content),
                },
            }
            last = messages[-1] if messages else None
            # Text and the tool call it led to came from one LLM answer: send them as one message.
            if last and last["role"] == "assistant" and not last.get("tool_calls") and v.id not in results:
                last["tool_calls"] = [call]
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif v.variant in (CODE_OUTPUT, TOOL_OUTPUT):
            result = {"role": "tool", "tool_call_id": v.id or "", "content": str(v.content)}
            results[v.id or ""] = result
            messages.append(result)
        elif v.variant == CODE_ERROR and (v.id or "") in results:
            result = results[v.id or ""]
            result["content"] = f"{result['content']}\n{v.content}".lstrip("\n")
        elif v.variant == IMAGE:
            # `<call id>_<n>`: the call's result tells the LLM a figure was shown.
            result = results.get((v.id or "").rpartition("_")[0])
            if result is not None:
                result["content"] = with_figures(result["content"], 1)
            if not vision:
                continue
            url = f"data:image/png;base64,{v.content}"
            messages.append({"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]})
    return messages
