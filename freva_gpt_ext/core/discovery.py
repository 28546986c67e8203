"""Chat models without a catalogue: the OpenAI-compatible servers of `model_discovery` are asked `GET <base>/models`.

By default, on a machine of one user, the usual local servers are asked (Ollama, llama.cpp's server, vLLM). A
loopback port says nothing about whose process answers: on a shared node another user's process bound there would
read the prompts and could steer the code that runs in this user's kernel. So a loopback endpoint is used only when
its listening socket belongs to the server's own OS user or to a system account (`SocketOwners`), checked again
before each turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from ..redact import host_of, safe_url
from .llm import ModelCatalogue, ModelEntry, endpoint_url

DEFAULT_ENDPOINTS = (
    "http://127.0.0.1:11434/v1",  # Ollama
    "http://127.0.0.1:8080/v1",  # llama.cpp's server
    "http://127.0.0.1:8000/v1",  # vLLM
)
# shadow-utils' default when /etc/login.defs does not say (Debian, Fedora, SUSE, Arch agree).
DEFAULT_UID_MIN = 1000
LOGIN_DEFS = Path("/etc/login.defs")
PROC_NET = Path("/proc/net")
_LISTEN = "0A"  # TCP_LISTEN in the `st` column
WHY = "another login user could read your prompts"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def default_endpoints(environ: Mapping[str, str], standalone: bool) -> list[str]:
    """The servers asked when `model_discovery` is not set: the usual local ones, only on a machine of one user."""
    return list(DEFAULT_ENDPOINTS) if single_user(environ, standalone) else []


def single_user(environ: Mapping[str, str], standalone: bool) -> bool:
    """Neither a JupyterHub user server nor the standalone API, which serve users who share the machine."""
    return not standalone and "JUPYTERHUB_USER" not in environ


# -- who listens on a port ----------------------------------------------------------------------------------
def parse_uid_min(text: str) -> int:
    """UID_MIN of a login.defs text (the last one counts, as for shadow-utils); the default when it names none."""
    found = DEFAULT_UID_MIN
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) >= 2 and words[0] == "UID_MIN":
            for base in (0, 10):  # 0x3E8 as shadow-utils reads it, and 01000 as Python's base 0 refuses it
                try:
                    found = int(words[1], base)
                    break
                except ValueError:
                    continue
    return found


def read_uid_min(path: Path = LOGIN_DEFS) -> int:
    try:
        return parse_uid_min(path.read_text(errors="replace"))
    except OSError:
        return DEFAULT_UID_MIN


@dataclass(frozen=True, slots=True)
class Listener:
    """A listening TCP socket of /proc/net/tcp or tcp6."""

    address: IPAddress
    port: int
    uid: int


def parse_proc_net(text: str, byteorder: str = sys.byteorder) -> list[Listener]:
    """The listening sockets of a /proc/net/tcp or /proc/net/tcp6 text (other states and odd lines skipped)."""
    found = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8 or fields[3] != _LISTEN:
            continue
        address, _, port = fields[1].partition(":")
        try:
            found.append(Listener(_address(address, byteorder), int(port, 16), int(fields[7])))
        except ValueError:
            continue
    return found


def _address(text: str, byteorder: str) -> IPAddress:
    raw = bytes.fromhex(text)
    if len(raw) not in (4, 16):
        raise ValueError(f"not an address: {text}")
    # The kernel prints each 32-bit word of the address as a number in the host's byte order.
    words = (raw[i : i + 4] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(b"".join(word[::-1] if byteorder == "little" else word for word in words))


def _reached_from_loopback(address: IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback or address.is_unspecified


def port_owners(port: int, proc_net: Path = PROC_NET) -> set[int] | None:
    """The uids of the sockets listening on `port` that a loopback client reaches (loopback or wildcard address);
    None when there is no /proc/net to read (macOS)."""
    owners: set[int] = set()
    read = False
    for name in ("tcp", "tcp6"):
        try:
            text = (proc_net / name).read_text(errors="replace")
        except OSError:
            continue  # tcp6 is missing where IPv6 is off
        read = True
        owners.update(s.uid for s in parse_proc_net(text) if s.port == port and _reached_from_loopback(s.address))
    return owners if read else None


def is_loopback(host: str) -> bool:
    """A host name or address that reaches this machine (0.0.0.0 too: Linux connects it to the loopback)."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return _reached_from_loopback(ipaddress.ip_address(host))
    except ValueError:
        return False


def owner_name(uid: int) -> str:
    try:
        import pwd

        return f"user {pwd.getpwuid(uid).pw_name!r}"
    except (ImportError, KeyError):
        return f"uid {uid}"


@dataclass(frozen=True, slots=True)
class Refusal:
    """A loopback endpoint that is not used: another login user's socket (`uid`), or no way to check (None)."""

    endpoint: str  # host:port
    uid: int | None

    @property
    def owner(self) -> str:
        return owner_name(self.uid) if self.uid is not None else "an unknown user"

    def sentence(self) -> str:
        if self.uid is None:
            return f"Not used: the model server at {self.endpoint} (its owner cannot be checked here)."
        return f"Not used: the model server at {self.endpoint} runs as {self.owner} ({WHY})."


class SocketOwners:
    """Who may serve a loopback model endpoint: the server's own OS user or a system account (uid below UID_MIN).

    Blocking (it reads /proc): call it off the event loop.
    """

    def __init__(
        self,
        *,
        single_user: bool,
        own_uid: int | None = None,
        uid_min: int | None = None,
        proc_net: Path = PROC_NET,
    ) -> None:
        self.single_user = single_user
        getuid = getattr(os, "getuid", None)
        self.own_uid = own_uid if own_uid is not None else (getuid() if getuid is not None else None)
        self.uid_min = uid_min if uid_min is not None else read_uid_min()
        self.proc_net = proc_net

    def refusal(self, url: str) -> Refusal | None:
        """Why the endpoint at `url` must not be used, or None. Endpoints off the loopback are an admin's choice."""
        try:
            parts = urlsplit(url)
            host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            return None  # it cannot be asked either
        if not is_loopback(host):
            return None
        owners = port_owners(port, self.proc_net)
        if owners is None:
            # Without /proc/net nothing tells who listens: trusted only where no other user works.
            return None if self.single_user else Refusal(host_of(url), None)
        foreign = sorted(uid for uid in owners if uid != self.own_uid and uid >= self.uid_min)
        return Refusal(host_of(url), foreign[0]) if foreign else None


# -- the rounds ---------------------------------------------------------------------------------------------
class ModelDiscovery:
    """Asks the endpoints for their models in the background and offers the chat models found in `catalogue`.

    One round at the server's start, another at most every `interval` seconds when a client asks for the models
    (`poke`) while none is known. Never awaited by a request.
    """

    def __init__(
        self,
        endpoints: list[str],
        catalogue: ModelCatalogue,
        *,
        owners: SocketOwners,
        timeout: float,
        interval: float,
        log: logging.Logger | Any = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.endpoints = list(dict.fromkeys(endpoints))
        self.catalogue = catalogue
        self.owners = owners
        self.timeout = timeout
        self.interval = interval
        self.log = log or logging.getLogger(__name__)
        self._clock = clock
        self._http: httpx.AsyncClient | None = None
        self._round: asyncio.Future[None] | None = None
        self._finished: float | None = None  # when the last round ended
        self.rounds = 0
        # What the last round saw of each endpoint that gave no model: refused, or nothing found.
        self.refused: dict[str, Refusal] = {}
        self.empty: list[str] = []
        self._warned: set[tuple[str, int | None]] = set()

    @property
    def running(self) -> bool:
        return self._round is not None and not self._round.done()

    def start(self) -> None:
        """The first round (the server already listens: nothing waits for it)."""
        if self.endpoints and not self.running:
            self._begin()

    def poke(self) -> None:
        """A client asked for the models: start a round if none is known, none runs and the interval has passed."""
        if not self.endpoints or self.catalogue.names or self.running:
            return
        if self._finished is not None and self._clock() - self._finished < self.interval:
            return
        self._begin()

    def _begin(self) -> None:
        if self._http is None:
            self._http = httpx.AsyncClient(
                timeout=httpx.Timeout(self.timeout),
                trust_env=False,  # an HPC node's proxy variables must not reroute a local endpoint
            )
        self._round = asyncio.ensure_future(self._ask_all())

    async def settled(self, timeout: float) -> None:
        """Wait (at most `timeout` seconds) for the running round, if any; for `doctor`, never for a request."""
        if self._round is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._round), timeout)

    async def _ask_all(self) -> None:
        try:
            answers = await asyncio.gather(*(self._ask(url) for url in self.endpoints))
            self.refused = {url: a for url, a in zip(self.endpoints, answers, strict=True) if isinstance(a, Refusal)}
            listed = [(url, a) for url, a in zip(self.endpoints, answers, strict=True) if isinstance(a, list)]
            self.empty = [url for url, ids in listed if not ids]
            entries = _entries(listed)
            if entries and not self.catalogue.names:
                self.catalogue.offer(entries)
                # Once models are known nobody asks again until the server restarts: a list that changed under
                # a user mid-conversation would confuse more than a model server that went away (its turns
                # fail with a clear error, and a new owner of its port is caught before each turn).
                self.log.info(
                    "FrevaGPT found models without a catalogue: %s (default %s)",
                    ", ".join(f"{e.name} at {safe_url(str(e.params['api_base']))}" for e in entries),
                    self.catalogue.default_name,
                )
        except Exception:
            self.log.exception("FrevaGPT model discovery failed")
        finally:
            self.rounds += 1
            self._finished = self._clock()

    async def _ask(self, url: str) -> Refusal | list[str]:
        """The chat model ids `url` lists (none when it does not answer), or why it is not asked."""
        refusal = await asyncio.to_thread(self.owners.refusal, url)
        if refusal is not None:
            self._warn(url, refusal)
            return refusal
        assert self._http is not None
        try:
            response = await self._http.get(endpoint_url(url, "models"))
            if response.status_code >= 400:
                self.log.debug("Model discovery: %s answered %s", safe_url(url), response.status_code)
                return []
            data = response.json().get("data")
            ids = [str(m["id"]) for m in data if isinstance(m, dict) and m.get("id")]
        except (httpx.HTTPError, ValueError, AttributeError, TypeError) as err:
            self.log.debug("Model discovery: %s gave no models (%s)", safe_url(url), type(err).__name__)
            return []
        # Embedding models list beside chat models (Ollama's nomic-embed-text) and cannot chat.
        return list(dict.fromkeys(i for i in ids if "embed" not in i.lower()))

    def _warn(self, url: str, refusal: Refusal) -> None:
        if (url, refusal.uid) in self._warned:
            return
        self._warned.add((url, refusal.uid))
        if refusal.uid is None:
            self.log.warning(
                "FrevaGPT does not use the model server at %s: there is no /proc/net to tell who runs it, and "
                "other users may work on this machine.",
                safe_url(url),
            )
        else:
            self.log.warning(
                "FrevaGPT does not use the model server at %s: it runs as %s, another login user, whose process "
                "could read the prompts and steer the code run in this user's kernels.",
                safe_url(url),
                refusal.owner,
            )

    async def refusal_for(self, model: ModelEntry) -> str | None:
        """Before a turn: why a discovered model must not be used now (its port changed hands), or None."""
        if not model.discovered:
            return None
        url = str(model.params.get("api_base") or "")
        refusal = await asyncio.to_thread(self.owners.refusal, url)
        if refusal is None:
            return None
        self._warn(url, refusal)
        return (
            f"The model {model.name!r} is not used now: {refusal.sentence().removeprefix('Not used: ')} "
            "Start your own model server there, or configure a model catalogue, and reload."
        )

    def without_tools(self, model: ModelEntry) -> None:
        """The model's server refused tools: its later turns get none (the orchestrator retried without)."""
        if self.catalogue.without_tools(model.name) is not None:
            self.log.warning(
                "FrevaGPT: the model %r at %s does not take tools; it is used without them from now on "
                "(no code interpreter for it).",
                model.name,
                safe_url(str(model.params.get("api_base") or "")),
            )

    def detail(self) -> str:
        """What discovery saw, for a client with no model to choose: refusals first."""
        parts = [r.sentence() for r in self.refused.values()]
        if self._finished is None:
            asked = ", ".join(host_of(url) for url in self.endpoints)
            parts.append(f"No model configured; looking for model servers at {asked}.")
        else:
            missing = ", ".join(host_of(url) for url in self.endpoints if url not in self.refused)
            parts.append(f"No model configured; none found at {missing}." if missing else "No model configured.")
        return " ".join(parts)

    async def aclose(self) -> None:
        if self._round is not None and not self._round.done():
            self._round.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._round
        if self._http is not None:
            await self._http.aclose()
            self._http = None


def _entries(listed: list[tuple[str, list[str]]]) -> list[ModelEntry]:
    """Catalogue entries of the ids found, streamed on the lean path; an id that two endpoints list is named
    `host:port/<id>` for both."""
    counts = Counter(model_id for _, ids in listed for model_id in ids)
    entries: dict[str, ModelEntry] = {}
    for url, ids in listed:
        for model_id in ids:
            name = f"{host_of(url)}/{model_id}" if counts[model_id] > 1 else model_id
            params = {"model": f"openai/{model_id}", "api_base": url}
            entries.setdefault(name, ModelEntry(name, params, {}, discovered=True))
    return list(entries.values())
