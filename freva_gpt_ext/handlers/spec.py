"""The one description of the chatbot routes: `help`, `docs` and `openapi.json` are generated from it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PREFIX = "/api/chatbot/"


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    type: str  # "string" | "integer" | "boolean" | "object" (JSON-encoded in a query)
    description: str
    required: bool = False


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    summary: str
    params: tuple[Param, ...] = field(default_factory=tuple)
    answer: str = "application/json"
    authenticated: bool = True
    # What the authorizer is asked for (jupyter_server's actions), whatever the HTTP method: `read`, `write`
    # (changes something) or `execute` (may run code). Every route but `read` needs XSRF from cookie sessions.
    # The default fails closed: a route that forgets to say it only reads is treated as a change.
    action: str = "write"


THREAD = Param("thread_id", "string", "Thread id (`[A-Za-z0-9_-]{1,64}`).", required=True)
PAGING = (
    Param("num_threads", "integer", "Page size (default 20); above 100 counts as 100."),
    Param("page", "integer", "0-based page number (default 0)."),
)
SHOW_TOOLS = Param("show_tools", "boolean", "Include ToolCall/ToolOutput variants (default false).")

ROUTES: tuple[Route, ...] = (
    Route(
        "ping",
        'Liveness check: `{status: "ok", version}`, or `{status: "degraded", version, detail}` when the model '
        "catalogue cannot be used (`detail` says where and what to fix). Needs no authentication.",
        authenticated=False,
        action="read",
    ),
    Route(
        "help", "Help on every route, or on one.", (Param("endpoint", "string", "Name of one route."),), action="read"
    ),
    Route("docs", "Human-readable documentation of this API.", answer="text/markdown", action="read"),
    Route("openapi.json", "The OpenAPI 3 document of this API.", action="read"),
    Route(
        "availablechatbots",
        "Names of the chat models in catalogue order; the first is the default. An empty list comes with the "
        "reason (a broken or missing catalogue) in the header `X-FrevaGPT-Detail` (one line, at most 200 characters).",
        action="read",
    ),
    Route("newthread", "A fresh, unguessable thread id (nothing is recorded).", action="read"),
    Route(
        "streamresponse",
        "Ask the assistant. Answers an NDJSON stream: one `{variant, content}` object per line, first a "
        "`ServerHint` with the thread id and model, last a `StreamEnd`.",
        (
            Param("input", "string", "The user's message (may be empty).", required=True),
            Param(
                "thread_id",
                "string",
                "Thread to continue; empty or missing starts a new one; another user's thread is forked.",
            ),
            Param("chatbot", "string", "Model name from `availablechatbots` (empty: the default)."),
            Param("store_thread", "boolean", "Store the thread (default true); false keeps it in memory only."),
            SHOW_TOOLS,
            Param("kernel_id", "string", "Run code in this Jupyter kernel (Jupyter only)."),
            Param("notebook_path", "string", "Run code in the kernel of this notebook (Jupyter only)."),
            Param(
                "kernel_context",
                "boolean",
                "With `kernel_id` / `notebook_path` of a Python kernel: tell the assistant what the kernel holds, "
                "a summary of its variables as `kernelcontext` shows it (default true).",
            ),
            Param(
                "cell_context",
                "object",
                "The notebook cell the question is about: `{source, outputs, notebook_path}` (strings; `source` "
                "required), JSON-encoded in a query. Counts towards the input's length limit.",
            ),
            Param(
                "replay_forked_code",
                "boolean",
                "When a fresh kernel replays the thread's earlier code, include code that came with a fork of "
                "another user's thread (default false: only your own runs; a `not_replayed` hint counts the rest).",
            ),
        ),
        answer="application/x-ndjson",
        action="execute",
    ),
    Route("stop", "Stop the thread's running answer.", (THREAD,)),
    Route(
        "kernelcontext",
        "What a turn in your notebook kernel would tell the assistant of its variables (names, types, shapes, "
        "dims, coordinate ranges; no values but numbers; of attributes only units, long_name, standard_name): "
        "`{kernel_id, spec, language, summary, variables, state}`, `state` saying why the summary is empty "
        "(`off`, `busy`, `timeout`, `not_python`, `unavailable`). Another user's or an unknown kernel: 404.",
        (Param("kernel_id", "string", "The kernel (Jupyter only).", required=True),),
        # It runs code (silently) in the kernel.
        action="execute",
    ),
    Route("getthread", "The stored variants of a thread.", (THREAD, SHOW_TOOLS), action="read"),
    Route(
        "exportthread",
        "A thread as a runnable Jupyter notebook (nbformat 4): questions and answers as Markdown, the code with "
        "its outputs, other tool calls as collapsed Markdown. Downloaded (`Content-Disposition: attachment`), or "
        "with `path` (POST only) written into the server's files: `{path}`; 409 when the file exists, 404 when "
        "its folder does not, 422 on a server without files (standalone). Readable as `getthread`.",
        (
            THREAD,
            Param("show_tools", "boolean", "Include the calls of tools other than code (default true)."),
            Param("path", "string", "POST only: where to write the notebook (`.ipynb`), relative to the root."),
            Param("overwrite", "boolean", "POST only: replace an existing file at `path` (default false)."),
        ),
        answer="application/x-ipynb+json",
        # A download reads; the handler asks for `write` when a POST names a `path`.
        action="read",
    ),
    Route(
        "getuserthreads", "The caller's threads, newest activity first: `[[threads], total]`.", PAGING, action="read"
    ),
    Route(
        "searchthreads",
        "The caller's threads whose topic or messages contain `query` (any case): `[[threads], total]`.",
        (Param("query", "string", "Text to look for.", required=True), *PAGING),
        action="read",
    ),
    Route(
        "setthreadtopic",
        "Rename a thread.",
        (THREAD, Param("topic", "string", "The new topic.", required=True)),
    ),
    Route("deletethread", "Delete a thread, its feedback and its kernel (files stay).", (THREAD,)),
    Route(
        "editthread",
        "Fork a thread before one of its user messages: `{new_thread_id, history}`.",
        (
            Param("source_thread_id", "string", "The thread to fork.", required=True),
            Param("user_index", "integer", "0-based index among the thread's User messages.", required=True),
            SHOW_TOOLS,
        ),
    ),
    Route(
        "userfeedback",
        "Rate an answer: `up`, `down`, free text, or `remove`.",
        (
            THREAD,
            Param("feedback_index", "integer", "0-based index among Assistant and Code messages.", required=True),
            Param("feedback", "string", "`up`, `down`, free text, or `remove`.", required=True),
        ),
    ),
)

BY_NAME = {r.name: r for r in ROUTES}


def help_text(route: Route) -> str:
    text = route.summary
    if route.params:
        parts = [f"`{p.name}`{' (required)' if p.required else ''}: {p.description}" for p in route.params]
        text += " Parameters: " + "; ".join(parts)
    return text + " GET with query parameters or POST with a JSON body."


def docs_markdown(version: str) -> str:
    lines = [
        f"# FrevaGPT chatbot API {version}",
        "",
        "Every route answers GET (query parameters) and POST (a JSON object body with the same fields).",
        'Errors are JSON `{"detail": "..."}`.',
        "",
    ]
    for route in ROUTES:
        lines += [f"## `{PREFIX}{route.name}`", "", route.summary, ""]
        for p in route.params:
            lines.append(f"- `{p.name}` ({p.type}{', required' if p.required else ''}): {p.description}")
        lines += ["", f"Answer: `{route.answer}`.", ""]
    return "\n".join(lines)


def openapi(version: str) -> dict[str, Any]:
    error = {
        "description": "Error",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    paths: dict[str, Any] = {}
    for route in ROUTES:
        params = [
            {
                "name": p.name,
                "in": "query",
                "required": p.required,
                "description": p.description,
                # An object travels in a query as JSON text.
                **(
                    {"content": {"application/json": {"schema": {"type": "object"}}}}
                    if p.type == "object"
                    else {"schema": {"type": p.type}}
                ),
            }
            for p in route.params
        ]
        body_schema = {
            "type": "object",
            "properties": {p.name: {"type": p.type, "description": p.description} for p in route.params},
        }
        ok = {"description": "Success", "content": {route.answer: {}}}
        responses = {"200": ok, "default": error}
        get_op: dict[str, Any] = {
            "summary": route.summary,
            "operationId": f"get_{route.name.replace('.', '_')}",
            "parameters": params,
            "responses": responses,
        }
        post_op: dict[str, Any] = {
            "summary": route.summary,
            "operationId": f"post_{route.name.replace('.', '_')}",
            "parameters": [{**p, "required": False} for p in params],
            "requestBody": {"required": False, "content": {"application/json": {"schema": body_schema}}},
            "responses": responses,
        }
        if not route.authenticated:
            get_op["security"] = post_op["security"] = []
        paths[PREFIX + route.name] = {"get": get_op, "post": post_op}
    return {
        "openapi": "3.0.3",
        "info": {"title": "FrevaGPT chatbot API", "version": version},
        "paths": paths,
        "components": {
            "schemas": {"Error": {"type": "object", "properties": {"detail": {"type": "string"}}}},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }
