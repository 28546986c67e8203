"""A thread as a runnable Jupyter notebook (nbformat 4), for `exportthread`.

Questions and answers become Markdown cells, each `code_interpreter` call a code cell with its stored output as
Jupyter outputs (text, figures, the error), numbered in order; calls of other tools (documentation searches)
become collapsed Markdown. The kernel's output is stored as one text (stdout, stderr, results and tracebacks in
the order a notebook shows them): an IPython traceback in it becomes the cell's `error` output, so that the cell
carries the `raises-exception` tag that lets the notebook run to its end as the conversation did.
"""

from __future__ import annotations

import html
import json
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import nbformat
from nbformat import v4

from ..variants import (
    ASSISTANT,
    CODE,
    CODE_ERROR,
    CODE_OUTPUT,
    IMAGE,
    TOOL_CALL,
    TOOL_OUTPUT,
    USER,
    Variant,
)

NOTEBOOK_MIME = "application/x-ipynb+json"
DEFAULT_KERNEL = "python3"
LOAD_DATA = "# load your data here"
FAILED_TAG = "raises-exception"  # nbclient and nbval let such a cell raise and run on
FILENAME_CHARS = 100
SUFFIX = ".ipynb"
UNTITLED = "FrevaGPT conversation"

# IPython's traceback of an exception raised while running (a rule of dashes, then the exception's name) ...
_RUNTIME = re.compile(r"^-{75}\n(?P<ename>[\w.]+) +Traceback \(most recent call last\)$", re.MULTILINE)
# ... and of code that did not compile (IPython's form, or plain Python's), which ends with the exception.
_COMPILE = re.compile(r"^(?:  Cell In\[\d+\], line \d+|  File .+|Traceback \(most recent call last\):)$", re.MULTILINE)
_LAST_EXCEPTION = re.compile(r"^(?P<ename>[A-Za-z_][\w.]*(?:Error|Exception|Interrupt|Exit))(?:: (?P<evalue>.*))?$")
# What no file name may hold on common systems; controls and line breaks become spaces.
_UNSAFE_NAME = re.compile(r'[\\/:*?"<>|]')


@dataclass(frozen=True, slots=True)
class ExportedThread:
    """What a notebook records about its thread besides the variants."""

    thread_id: str
    topic: str
    date: str  # the thread's last activity, ISO-8601 UTC
    # The kernel spec as notebook metadata: {"name", "display_name", "language"}.
    kernelspec: dict[str, str]
    freva_config: str = ""


@dataclass(slots=True)
class _Call:
    """One tool call and what it produced; rendered once the thread is read (its images come last)."""

    variant: str
    arguments: str
    tool_name: str | None
    output: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)


def thread_kernel(variants: list[Variant], default: str = DEFAULT_KERNEL) -> str:
    """The kernel spec the thread's code last ran in, as its `User` variants recorded it (a turn in a kernel the
    request named); else `default`, the spec of the thread's own kernels."""
    for v in reversed(variants):
        spec = (v.kernel or {}).get("spec") if v.variant == USER else None
        if isinstance(spec, str) and spec:
            return spec
    return default


def notebook_filename(topic: str) -> str:
    """A file name for the thread's notebook: its topic on one line, without characters file systems refuse,
    at most FILENAME_CHARS characters with the suffix."""
    flat = "".join(" " if unicodedata.category(c)[0] in "CZ" else c for c in topic)
    stem = " ".join(_UNSAFE_NAME.sub(" ", flat).split()).lstrip(". ")
    stem = stem[: FILENAME_CHARS - len(SUFFIX)].rstrip(". ")
    return (stem or UNTITLED) + SUFFIX


def content_disposition(filename: str) -> str:
    """RFC 6266: an ASCII `filename` for old clients, the exact name UTF-8 encoded in `filename*`."""
    decomposed = unicodedata.normalize("NFKD", filename.removesuffix(SUFFIX))
    ascii_stem = " ".join(decomposed.encode("ascii", "ignore").decode("ascii").split())
    ascii_stem = "".join(c for c in ascii_stem if c.isprintable() and c not in '"\\').strip(". ")
    fallback = (ascii_stem or UNTITLED) + SUFFIX
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


def build_notebook(variants: list[Variant], thread: ExportedThread, *, show_tools: bool) -> nbformat.NotebookNode:
    """The thread (its variants as `getthread` reads them) as an nbformat 4 notebook; calls of tools other than
    code only with `show_tools`."""
    items: list[str | _Call] = []  # Markdown text, or a call
    calls: dict[str, _Call] = {}
    last_call: _Call | None = None
    language = thread.kernelspec.get("language") or "python"
    for v in variants:
        if v.variant == USER:
            items.append(_question(v, language))
        elif v.variant == ASSISTANT and str(v.content).strip():
            items.append(str(v.content))
        elif v.variant in (CODE, TOOL_CALL) and (v.variant == CODE or show_tools):
            last_call = calls[v.id or ""] = _Call(v.variant, str(v.content), v.tool_name)
            items.append(last_call)
        elif v.variant in (CODE_OUTPUT, TOOL_OUTPUT) and (v.id or "") in calls:
            calls[v.id or ""].output.append(str(v.content))
        elif v.variant == CODE_ERROR and (v.id or "") in calls:
            calls[v.id or ""].errors.append(str(v.content))
        elif v.variant == IMAGE and isinstance(v.content, str) and (show_tools or not v.tools_only):
            # `<call id>_<n>`; an image without one (legacy) belongs to the call before it.
            owner = calls.get((v.id or "").rpartition("_")[0], last_call)
            if owner is not None:
                owner.images.append(v.content)

    cells: list[nbformat.NotebookNode] = [v4.new_markdown_cell(_introduction(variants, thread))]
    if _kernel_variables(variants):
        cells.append(v4.new_code_cell(LOAD_DATA))
    count = 0
    for item in items:
        if isinstance(item, str):
            cells.append(v4.new_markdown_cell(item))
        elif item.variant == CODE:
            count += 1
            cells.append(_code_cell(item, count))
        else:
            cells.append(_tool_cell(item))
    for n, cell in enumerate(cells):
        # Stable ids: the same thread exports to the same file.
        cell["id"] = f"freva-gpt-{n}"

    models = list(dict.fromkeys(v.model for v in variants if v.variant == ASSISTANT and v.model))
    about: dict[str, Any] = {"thread_id": thread.thread_id, "topic": thread.topic, "date": thread.date}
    about["models"] = models
    if thread.freva_config:
        about["freva_config"] = thread.freva_config
    metadata = {"kernelspec": thread.kernelspec, "language_info": {"name": language}, "freva_gpt": about}
    return v4.new_notebook(cells=cells, metadata=metadata)


# -- cells ----------------------------------------------------------------------------------------------------
def _introduction(variants: list[Variant], thread: ExportedThread) -> str:
    topic = " ".join(thread.topic.split()) or UNTITLED
    parts = [
        f"# {topic}",
        f"Exported from the FrevaGPT conversation `{thread.thread_id}` (last active {thread.date}). The code in "
        "this notebook was written by an AI assistant: check it before you rely on its results.",
    ]
    names = _kernel_variables(variants)
    if names:
        listed = ", ".join(_code_span(name) for name in names)
        parts.append(
            f"The conversation ran in your notebook's kernel and relied on these variables from it: {listed}. "
            "Create them in the next cell (load your data there) before you run the rest."
        )
    return "\n\n".join(parts)


def _kernel_variables(variants: list[Variant]) -> list[str]:
    """The names of the notebook kernel's variables the thread's questions were sent with, first seen first."""
    names: dict[str, None] = {}
    for v in variants:
        kernel = v.kernel if v.variant == USER else None
        if kernel and kernel.get("kind") == "notebook":
            names.update((str(name), None) for name in kernel.get("variables") or ())
    return list(names)


def _question(v: Variant, language: str) -> str:
    text = str(v.content)
    quoted = "\n".join(f"> {line}".rstrip() for line in text.splitlines()) if text.strip() else "> *(no text)*"
    parts = ["**Question**", quoted]
    cell = v.cell_context or {}
    source = cell.get("source")
    if isinstance(source, str) and source.strip():
        where = cell.get("notebook_path")
        named = isinstance(where, str) and where
        parts.append(f"About this cell of {_code_span(where)}:" if named else "About this cell:")
        parts.append(_fenced(source, language))
    return "\n\n".join(parts)


def _code_cell(call: _Call, count: int) -> nbformat.NotebookNode:
    outputs: list[nbformat.NotebookNode] = []
    errors: list[nbformat.NotebookNode] = []
    for text in call.output:
        printed, error = _split_traceback(text)
        if printed:
            outputs.append(v4.new_output("stream", name="stdout", text=printed))
        if error is not None:
            errors.append(error)
    outputs += [v4.new_output("display_data", data={"image/png": png}) for png in call.images]
    # A failure of the call as a whole (timeout, the kernel died, stopped) after the code's own.
    errors += [v4.new_output("error", ename="CodeError", evalue=text, traceback=[text]) for text in call.errors]
    cell = v4.new_code_cell(_code_of(call.arguments), execution_count=count, outputs=outputs + errors)
    if errors:
        cell.metadata["tags"] = [FAILED_TAG]
    return cell


def _tool_cell(call: _Call) -> nbformat.NotebookNode:
    """A collapsed Markdown block: the tool, its arguments and what it returned (the sources it found)."""
    try:
        arguments = json.dumps(json.loads(call.arguments), indent=2, ensure_ascii=False)
    except ValueError:
        arguments = call.arguments
    name = call.tool_name or "tool"
    parts = [
        f"<details>\n<summary>Tool call: {html.escape(name)}</summary>",
        "**Arguments**",
        _fenced(arguments, "json"),
    ]
    if call.output or call.errors:
        parts += ["**Result**", _fenced("\n".join([*call.output, *call.errors]), "text")]
    attachments = {f"image-{n}.png": {"image/png": png} for n, png in enumerate(call.images)}
    parts += [f"![{key}](attachment:{key})" for key in attachments]
    parts.append("</details>")
    cell = v4.new_markdown_cell("\n\n".join(parts))
    if attachments:
        cell["attachments"] = attachments
    return cell


def _code_of(arguments: str) -> str:
    """The `code` of a stored `{"code": ...}` arguments text; the text itself when it holds none."""
    try:
        parsed = json.loads(arguments)
    except ValueError:
        return arguments
    code = parsed.get("code") if isinstance(parsed, dict) else None
    return code if isinstance(code, str) else arguments


def _split_traceback(text: str) -> tuple[str, nbformat.NotebookNode | None]:
    """(what the code printed before it failed, the `error` output) of a stored output; no error without a
    traceback of IPython's (or Python's) own form that ends with the exception."""
    runtime = _RUNTIME.search(text)
    start = runtime.start() if runtime else None
    if start is None and (compiled := _COMPILE.search(text)):
        start = compiled.start()
    if start is None:
        return text, None
    lines = text[start:].rstrip("\n").split("\n")
    if runtime:
        ename = runtime.group("ename")
        # The last line that names the exception (its message may go on over the lines after it).
        at = next((i for i in range(len(lines) - 1, 1, -1) if _names(lines[i], ename)), None)
        if at is None:
            return text, None
        evalue = "\n".join(lines[at:]).partition(":")[2].strip()
    else:
        last = _LAST_EXCEPTION.match(lines[-1])
        if last is None:
            return text, None
        ename, evalue = last.group("ename"), last.group("evalue") or ""
    return text[:start], v4.new_output("error", ename=ename, evalue=evalue, traceback=lines)


def _names(line: str, ename: str) -> bool:
    """Whether `line` is an exception's last line, `<ename>: <message>` (the name may be module-qualified)."""
    head = line.partition(":")[0]
    return " " not in head and (head == ename or head.endswith("." + ename))


def _fenced(text: str, info: str) -> str:
    """`text` as a fenced code block whose fence no run of backticks inside it can close."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{info}\n{text.rstrip(chr(10))}\n{fence}"


def _code_span(text: str) -> str:
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    ticks = "`" * (longest + 1)
    padded = f" {text} " if text.startswith("`") or text.endswith("`") else text
    return f"{ticks}{padded}{ticks}"
