"""The model catalogue and the streaming LLM clients.

OpenAI-compatible endpoints (a LiteLLM proxy, vLLM, Ollama, llama.cpp, OpenAI) are read on a lean path:
one pooled httpx client, SSE lines parsed as they arrive. Every other model goes through litellm, which is
imported only when such a model is used (its import is slow and it reaches for the internet unless told not to).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from ..redact import host_of, mask_secrets, safe_url
from .catalogue import CatalogueError, read_model_list

LEAN_PREFIXES = ("openai/", "hosted_vllm/")
_ENV_REF = re.compile(r"^os\.environ/(\w+)$")


class LLMError(Exception):
    """The LLM failed; the turn reports it as a `ServerError`."""

    def __init__(self, message: str, status: int | None = None, detail: str = "") -> None:
        super().__init__(message)
        self.status = status
        # The provider's own words, when it answered (what a fallback may read without matching our names).
        self.detail = detail


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """One `model_list` entry of a LiteLLM-style catalogue."""

    name: str
    params: Mapping[str, Any]
    info: Mapping[str, Any] = field(default_factory=dict)
    # Found by asking a server for its models (core.discovery), not listed by an admin: it never gets the
    # server's default key, and it loses its tools when its server refuses them.
    discovered: bool = False

    @property
    def provider_model(self) -> str:
        return str(self.params.get("model", self.name))

    @property
    def is_chat(self) -> bool:
        return self.info.get("mode", "chat") != "embedding"

    @property
    def supports_vision(self) -> bool:
        return bool(self.info.get("supports_vision", False))

    @property
    def supports_tools(self) -> bool:
        return bool(self.info.get("supports_function_calling", True))

    @property
    def prompt_set(self) -> str | None:
        value = self.info.get("prompt_set")
        return str(value) if value else None

    @property
    def streams_lean(self) -> bool:
        """The rule of DESIGN.md: `openai/…` or `hosted_vllm/…` with an `api_base`, unless forced to litellm."""
        if self.info.get("stream_via") == "litellm":
            return False
        return self.provider_model.startswith(LEAN_PREFIXES) and bool(self.params.get("api_base"))

    def param(self, key: str) -> Any:
        """A parameter with `os.environ/NAME` references read from the server's environment."""
        value = self.params.get(key)
        if isinstance(value, str) and (match := _ENV_REF.match(value)):
            return os.environ.get(match.group(1))
        return value


class ModelCatalogue:
    """The chat models in file order; the first is the default unless one is configured."""

    def __init__(self, entries: list[ModelEntry], default: str | None = None) -> None:
        self._all = entries
        self.chat = [e for e in entries if e.is_chat]
        self._by_name = {e.name: e for e in self.chat}
        if default and default not in self._by_name:
            raise CatalogueError(
                f"The default model {default!r} (default_model, FREVAGPT_DEFAULT_MODEL) is not a chat model of "
                f"the catalogue: set it to one of {', '.join(self._by_name) or 'its models'}, or unset it."
            )
        self.default_name = default or (self.chat[0].name if self.chat else None)

    @classmethod
    def load(cls, path: str | Path | None, default: str | None = None) -> ModelCatalogue:
        if not path:
            return cls([], None)
        entries = [
            ModelEntry(
                name=str(item["model_name"]),
                params=dict(item["litellm_params"]),
                info=dict(item.get("model_info") or {}),
            )
            for item in read_model_list(path)
        ]
        return cls(entries, default)

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.chat]

    def get(self, name: str | None) -> ModelEntry | None:
        return self._by_name.get(name or self.default_name or "")

    def offer(self, entries: list[ModelEntry]) -> None:
        """Discovered models join the chat models (after the catalogue's own, names already taken skipped); the
        first becomes the default when there was none."""
        for entry in entries:
            if entry.is_chat and entry.name not in self._by_name:
                self.chat.append(entry)
                self._by_name[entry.name] = entry
        self.default_name = self.default_name or (self.chat[0].name if self.chat else None)

    def without_tools(self, name: str) -> ModelEntry | None:
        """Mark the model `name` as one that takes no tools; the new entry, or None when it had none already."""
        entry = self._by_name.get(name)
        if entry is None or not entry.supports_tools:
            return None
        replaced = replace(entry, info={**entry.info, "supports_function_calling": False})
        self._by_name[name] = replaced
        self.chat = [replaced if e.name == name else e for e in self.chat]
        return replaced

    def env_references(self) -> set[str]:
        """Names of the server's variables the catalogue reads through `os.environ/NAME` (keys, mostly)."""
        names: set[str] = set()

        def walk(value: Any) -> None:
            if isinstance(value, str):
                if match := _ENV_REF.match(value):
                    names.add(match.group(1))
            elif isinstance(value, Mapping):
                for item in value.values():
                    walk(item)
            elif isinstance(value, list):
                for item in value:
                    walk(item)

        for entry in self._all:
            walk(entry.params)
            walk(entry.info)
        return names


@dataclass(slots=True)
class ToolCallDelta:
    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(slots=True)
class Delta:
    """One streamed piece of an answer: text, and/or fragments of tool calls."""

    text: str = ""
    tool_calls: list[ToolCallDelta] = field(default_factory=list)
    finish_reason: str | None = None


def parse_chunk(chunk: Mapping[str, Any]) -> Delta | None:
    """Turn one OpenAI-style stream chunk into a Delta (None when it carries nothing)."""
    choices = chunk.get("choices") or []
    if not choices:
        return None
    choice = choices[0]
    delta = choice.get("delta") or {}
    calls = [
        ToolCallDelta(
            index=int(tc.get("index", 0) or 0),
            id=tc.get("id"),
            name=(tc.get("function") or {}).get("name"),
            arguments=(tc.get("function") or {}).get("arguments") or "",
        )
        for tc in delta.get("tool_calls") or []
    ]
    text = delta.get("content") or ""
    finish = choice.get("finish_reason")
    if not text and not calls and not finish:
        return None
    return Delta(text=text, tool_calls=calls, finish_reason=finish)


def _error_text(body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return body.decode(errors="replace").strip()[:500] or "no details"
    err = data.get("error", data) if isinstance(data, dict) else data
    if isinstance(err, dict):
        return str(err.get("message") or err.get("detail") or err)[:500]
    return str(err)[:500]


class LLMClient:
    """Streams chat completions. Owns one pooled HTTP client for all OpenAI-compatible upstreams."""

    def __init__(
        self,
        *,
        connect_timeout: float,
        read_timeout: float,
        default_api_key: str | None = None,
        log: Any = None,
    ) -> None:
        self.read_timeout = read_timeout
        self._default_api_key = default_api_key
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(connect=connect_timeout, read=read_timeout, write=30.0, pool=30.0),
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
            trust_env=False,  # an HPC node's proxy variables must not reroute a local model endpoint
        )
        self._log = log or logging.getLogger(__name__)
        self._litellm: asyncio.Future[Any] | None = None
        self._openai_clients: dict[tuple[str, str], Any] = {}

    async def aclose(self) -> None:
        await self._http.aclose()

    def _headers(self, model: ModelEntry) -> dict[str, str]:
        # The default key is for the endpoints an admin configured, not for whatever answered a discovery.
        key = model.param("api_key") or (None if model.discovered else self._default_api_key)
        headers = {"Accept": "text/event-stream"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        extra = model.params.get("extra_headers")
        if isinstance(extra, dict):
            headers.update({str(k): str(v) for k, v in extra.items()})
        return headers

    def _body(self, model: ModelEntry, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> dict:
        body: dict[str, Any] = {
            "model": model.provider_model.split("/", 1)[1],
            "messages": messages,
            "stream": True,
        }
        for key in ("temperature", "top_p", "max_tokens", "seed", "stop"):
            if key in model.params:
                body[key] = model.params[key]
        if tools:
            body["tools"] = tools
            body["parallel_tool_calls"] = False
        return body

    async def stream(
        self, model: ModelEntry, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> AsyncIterator[Delta]:
        """The answer as Deltas, on the lean reader or through litellm; failures raise LLMError."""
        source = self._stream_lean if model.streams_lean else self._stream_litellm
        async for delta in source(model, messages, tools or []):
            yield delta

    async def _stream_lean(
        self, model: ModelEntry, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
    ) -> AsyncIterator[Delta]:
        url = endpoint_url(str(model.param("api_base")), "chat/completions")
        body = self._body(model, messages, tools)
        try:
            async with self._http.stream("POST", url, json=body, headers=self._headers(model)) as response:
                if response.status_code >= 400:
                    answer = await response.aread()
                    status = response.status_code
                    raise self._failure(model, url, f"answered HTTP {status}", status, answer, _error_text(answer))
                lines = response.aiter_lines()
                async for line in lines:
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        # Read the body to its end, or the pooled connection is dropped (a new TCP/TLS
                        # handshake per call); a server that lingers after [DONE] only costs the connection.
                        with contextlib.suppress(Exception):
                            await asyncio.wait_for(_drain(lines), 1.0)
                        return
                    try:
                        chunk = json.loads(data)
                    except ValueError as err:
                        raise self._failure(model, url, "sent a malformed stream chunk.", answer=data) from err
                    if isinstance(chunk, dict) and chunk.get("error"):
                        detail = _error_text(data.encode())
                        raise self._failure(model, url, "reported an error", answer=data, detail=detail)
                    delta = parse_chunk(chunk) if isinstance(chunk, dict) else None
                    if delta is not None:
                        yield delta
        except (httpx.ConnectError, httpx.ConnectTimeout) as err:
            raise self._failure(model, url, _unreachable(err)) from err
        except httpx.TimeoutException as err:
            raise self._failure(model, url, f"did not answer within {self.read_timeout:g} s.") from err
        except httpx.HTTPError as err:
            raise self._failure(model, url, f"broke off the connection ({type(err).__name__}: {err}).") from err

    async def _stream_litellm(
        self, model: ModelEntry, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
    ) -> AsyncIterator[Delta]:
        try:
            litellm = await self.load_litellm()
        except ImportError as err:
            raise LLMError(
                f"The model {model.name!r} needs litellm, which is not installed: pip install "
                "'freva_gpt_ext[litellm]' (from a checkout: pip install '.[litellm]'), then restart the server."
            ) from err
        kwargs = {key: model.param(key) for key in model.params if key != "model"}
        if tools:
            kwargs["tools"] = tools
        if model.provider_model.startswith(LEAN_PREFIXES) and kwargs.get("api_base"):
            # litellm caches its own clients at module level; ours belong to this app and its event loop.
            kwargs["client"] = self._openai_client(str(kwargs["api_base"]), kwargs.get("api_key"))
        try:
            response = await litellm.acompletion(
                model=model.provider_model,
                messages=messages,
                stream=True,
                timeout=self.read_timeout,
                num_retries=0,
                **kwargs,
            )
            async for chunk in response:
                delta = _litellm_delta(chunk)
                if delta is not None:
                    yield delta
        except LLMError:
            raise
        except Exception as err:
            endpoint = str(kwargs.get("api_base") or model.provider_model.split("/", 1)[0])
            raise self._litellm_failure(model, endpoint, err) from err

    def _litellm_failure(self, model: ModelEntry, endpoint: str, err: Exception) -> LLMError:
        """litellm's exceptions read as the lean path's: it reports a refused connection as HTTP 500."""
        message = str(getattr(err, "message", "") or err).strip()
        cause = getattr(err, "original_exception", None) or err.__cause__
        if isinstance(err, TimeoutError) or "Timeout" in type(err).__name__:
            return self._failure(model, endpoint, f"did not answer within {self.read_timeout:g} s.")
        if "Connection error" in message:
            if "MidStream" in type(err).__name__ or (cause is not None and "MidStream" in type(cause).__name__):
                return self._failure(model, endpoint, "broke off the connection.")
            return self._failure(model, endpoint, _unreachable(err))
        status = getattr(err, "status_code", None)
        body = getattr(err, "body", None)
        answer = json.dumps(body) if body is not None else message
        # litellm prefixes its own class names: "litellm.X: X: OpenAIException - <the provider's words>"
        text = _error_text(answer.encode()) if body is not None else message.rsplit(" - ", 1)[-1]
        return self._failure(model, endpoint, f"answered HTTP {status}" if status else "failed", status, answer, text)

    def _failure(
        self,
        model: ModelEntry,
        endpoint: str,
        problem: str,
        status: int | None = None,
        answer: Any = None,
        detail: str = "",
    ) -> LLMError:
        """The error a user reads (the model, the endpoint's host, the problem and the provider's `detail`), after
        logging what an admin needs (the endpoint without credentials, the status, the start of the provider's
        answer); keys masked in both."""
        secrets = self._secrets(model)
        parts = [f"LLM failure: model {model.name!r} at {safe_url(endpoint)} {problem}"]
        if status is not None:
            parts.append(f"status {status}")
        if answer:
            raw = answer if isinstance(answer, bytes) else str(answer).encode()
            parts.append("answer: " + mask_secrets(raw[:4096].decode(errors="replace"), secrets)[:300])
        self._log.warning("%s", mask_secrets("; ".join(parts), secrets))
        text = f"The model {model.name!r} ({host_of(endpoint)}) {problem}" + (f": {detail}" if detail else "")
        return LLMError(mask_secrets(text, secrets), status, mask_secrets(detail, secrets))

    def _secrets(self, model: ModelEntry) -> list[str]:
        extra = model.params.get("extra_headers")
        headers = [str(v) for v in extra.values()] if isinstance(extra, dict) else []
        return [str(model.param("api_key") or ""), self._default_api_key or "", *headers]

    async def load_litellm(self) -> Any:
        """litellm, imported once, in a worker thread: seconds of CPU, and it must be told to stay offline."""
        if self._litellm is None:
            self._litellm = asyncio.ensure_future(asyncio.to_thread(_import_litellm))
        return await asyncio.shield(self._litellm)

    def _openai_client(self, api_base: str, api_key: Any) -> Any:
        import openai  # installed with litellm

        key = (api_base, str(api_key or self._default_api_key or "none"))
        client = self._openai_clients.get(key)
        if client is None:
            client = openai.AsyncOpenAI(base_url=api_base, api_key=key[1], http_client=self._http, max_retries=0)
            self._openai_clients[key] = client
        return client

    async def complete(self, model: ModelEntry, messages: list[dict[str, Any]]) -> str:
        """A whole (non-streamed) answer, for short side tasks."""
        parts = [d.text async for d in self.stream(model, messages)]
        return "".join(parts)


def endpoint_url(api_base: str, path: str) -> str:
    """`<api_base>/<path>`, keeping a query of the base (e.g. Azure's `?api-version=`) at the end."""
    parts = urlsplit(api_base)
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/" + path))


def _unreachable(err: Exception) -> str:
    reason = str(err).strip() or type(err).__name__
    return (
        f"cannot be reached ({reason}): check that the server runs and the `api_base` of this model in the "
        "model catalogue."
    )


async def _drain(lines: AsyncIterator[str]) -> None:
    async for _ in lines:
        pass


def _import_litellm() -> Any:
    # The one allowed write to the server's environment (DESIGN.md): without these litellm fetches its cost
    # map and provider data from the internet, which an offline HPC node does not have.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("LITELLM_OFFLINE_MODE", "true")
    import litellm

    litellm.suppress_debug_info = True
    return litellm


def _litellm_delta(chunk: Any) -> Delta | None:
    choices = getattr(chunk, "choices", None) or []
    if not choices:
        return None
    choice = choices[0]
    delta = choice.delta
    calls = [
        ToolCallDelta(
            index=int(tc.index or 0),
            id=tc.id,
            name=tc.function.name if tc.function else None,
            arguments=(tc.function.arguments if tc.function else "") or "",
        )
        for tc in (getattr(delta, "tool_calls", None) or [])
    ]
    text = getattr(delta, "content", None) or ""
    if not text and not calls and not choice.finish_reason:
        return None
    return Delta(text=text, tool_calls=calls, finish_reason=choice.finish_reason)
