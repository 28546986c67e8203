"""The `FrevaGPT` ExtensionApp: configuration, wiring and lifecycle; `jupyter freva-gpt` runs it standalone."""

from __future__ import annotations

import asyncio
import json
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from jupyter_core.paths import jupyter_data_dir
from jupyter_server.extension.application import ExtensionApp
from traitlets import Bool, Dict, Float, Int, List, TraitError, TraitType, Unicode, default, validate
from traitlets.config import Config

from . import __version__
from .auth import BearerValidator, FrevaRestIdentityProvider, server_owner
from .authorizer import ChatbotOnlyAuthorizer
from .core.catalogue import NO_MODEL_HINT
from .core.conversations import Conversations, TurnSettings
from .core.discovery import ModelDiscovery, SocketOwners, default_endpoints, single_user
from .core.llm import CatalogueError, LLMClient, ModelCatalogue
from .core.orchestrator import Orchestrator
from .core.prompts import PromptLibrary
from .core.service import SETTINGS_KEY, ChatService
from .core.stores import VAULT_HEADER, ThreadStores, VaultResolver
from .core.topics import summarise
from .handlers import handlers
from .hardening import make_undumpable
from .paths import data_folder
from .storage import MemoryThreadStore, SQLiteThreadStore
from .tools.base import Tool, ToolContext
from .tools.kernel import KernelTool
from .tools.kernel_context import KernelContext
from .tools.kernel_probe import KernelProbes
from .tools.mcp import McpTools
from .tools.mcp_config import McpConfigError, parse_mcp_servers
from .tools.registry import ToolRegistry, load_tools

if TYPE_CHECKING:
    from mcp.server.mcpserver import MCPServer

    from .storage.mongo import MongoThreadStore

ENV_PREFIX = "FREVAGPT_"
# Names deployments used before this extension existed (the upstream backend's, for its container environments).
ENV_ALIASES = {
    "litellm_config": ("LITELLM_CONFIG",),
    "mongodb_uri": ("FREVAGPT_MONGODB_URI_DEV", "FREVAGPT_MONGO_DB_URI"),
    "mongodb_database_name": ("FREVAGPT_MONGO_DB_DATABASE_NAME",),
    "mongodb_collection_name": ("FREVAGPT_MONGO_DB_COLLECTION_NAME",),
}
# Settings in seconds: those that must be above 0 (a 0 would make a tight loop or fail everything) and those
# for which 0 means never or off.
_POSITIVE = (
    "llm_connect_timeout",
    "llm_read_timeout",
    "execution_timeout",
    "heartbeat_interval",
    "lease_ttl",
    "stop_poll_interval",
    "store_busy_timeout",
    "mcp_refresh_interval",
    "kernel_context_timeout",
    "model_discovery_interval",
    "model_discovery_timeout",
)
_NON_NEGATIVE = (
    "kernel_idle_timeout",
    "tool_stop_grace",
    "token_cache_ttl",
    "token_negative_cache_ttl",
    "vault_cache_ttl",
)
# About 11 days: SQLite takes its busy timeout in milliseconds as a C int (more silently means none).
MAX_SECONDS = 1_000_000
_CONFIGURED = "FrevaGPT.{name} of the Jupyter configuration (a config file or the command line)"


class FrevaGPT(ExtensionApp):
    """FrevaGPT chatbot API under `<base_url>api/chatbot/`.

    Every option may also be given as the environment variable `FREVAGPT_<OPTION IN CAPITALS>`
    (e.g. `FREVAGPT_LITELLM_CONFIG`); a value set in a Jupyter config file wins over the environment.
    """

    name = "freva_gpt"
    extension_url = "/lab"
    load_other_extensions = True
    description = __doc__
    version = __version__  # `jupyter freva-gpt --version`
    _wired = False  # initialize_settings ran to its end

    def __init__(self, **kwargs: Any) -> None:
        # Settings refused while the configuration was read, by name: where the value came from and why.
        self._invalid: dict[str, str] = {}
        # Settings taken from the environment, by name: the variable that gave the value.
        self._from_env: dict[str, str] = {}
        super().__init__(**kwargs)

    # -- models -------------------------------------------------------------------------------------------
    litellm_config = Unicode(
        "",
        help="Path of the LiteLLM-style model catalogue YAML (`model_list`). Also $LITELLM_CONFIG.",
    ).tag(config=True)
    default_model = Unicode(
        "", help="Name of the default chat model; empty: the first chat model of the catalogue."
    ).tag(config=True)
    topic_model = Unicode(
        "", help="Model that summarises a thread's first message into its topic; empty: the default model."
    ).tag(config=True)
    openai_api_key = Unicode(
        "", help="API key sent to OpenAI-compatible endpoints whose catalogue entry has no `api_key`."
    ).tag(config=True)
    model_discovery = List(
        Unicode(),
        help="Without a model catalogue (litellm_config), ask these OpenAI-compatible servers (base URLs such as "
        "http://127.0.0.1:11434/v1) for `GET <url>/models` and offer the chat models they list. Default: Ollama, "
        "llama.cpp's server and vLLM on 127.0.0.1 (ports 11434, 8080, 8000), but none under JupyterHub "
        "($JUPYTERHUB_USER) or standalone. A loopback server is used only when it runs as the server's own user or "
        "a system account (FREVAGPT_MODEL_DISCOVERY: a JSON list; [] turns discovery off).",
    ).tag(config=True)
    model_discovery_interval = Float(
        30.0,
        help="Seconds between two rounds of model discovery while it found no model (a round starts when a client "
        "asks for the models); once models are found, nobody is asked again until the server restarts.",
    ).tag(config=True)
    model_discovery_timeout = Float(
        2.0, help="Seconds a server of model_discovery may take to list its models; a slower one counts as none."
    ).tag(config=True)
    llm_connect_timeout = Float(10.0, help="Seconds to wait for a connection to an LLM endpoint.").tag(config=True)
    llm_read_timeout = Float(
        120.0, help="Seconds an LLM may stay silent within a stream before the turn fails with an error."
    ).tag(config=True)
    max_tool_rounds = Int(12, min=0, help="Most tool rounds (LLM calls that ask for tools) in one turn.").tag(
        config=True
    )
    tools = List(
        Unicode(),
        default_value=[],
        help="Extra tools offered to the LLM: import strings `package.module:factory` of a Tool class or a "
        "function returning a Tool, called without arguments (FREVAGPT_TOOLS: a JSON list).",
    ).tag(config=True)
    tool_result_chars = Int(
        20000, min=1000, help="Most characters of one tool result that are sent back to the LLM (the rest is cut)."
    ).tag(config=True)

    # -- MCP servers and retrieval ------------------------------------------------------------------------
    mcp_servers = List(
        Dict(),
        default_value=[],
        help="MCP servers whose tools the LLM may use, in order: objects {name, url} (streamable HTTP) or {name, "
        "command, args, env} (stdio; the process gets the kernels' allow-listed environment plus `env`), each "
        "optionally with `timeout` (seconds per call, default 30); HTTP servers with `headers` and `forward_token` "
        "(true: each call carries the Freva bearer token of the standalone request it serves); stdio servers with "
        "`per_user` (true: one process per user). A tool keeps its name unless an earlier one has it; then it is "
        "`<server>__<tool>` (FREVAGPT_MCP_SERVERS: a JSON list).",
    ).tag(config=True)
    mcp_refresh_interval = Float(
        60.0,
        help="Seconds between two listings of an MCP server's tools; a server that does not answer is tried again "
        "sooner (from 1 s, doubling up to this).",
    ).tag(config=True)
    rag = Bool(
        True,
        help="Offer the built-in documentation retrieval (`get_context_from_resources` over the shipped resources/ "
        "libraries and `rag_resources`), run in-process; a server of `mcp_servers` that provides that tool takes "
        "its place.",
    ).tag(config=True)
    rag_resources = List(
        Unicode(),
        default_value=[],
        help="Folders of your own documentation for the built-in retrieval, each sub-folder one library, besides "
        "the shipped ones (FREVAGPT_RAG_RESOURCES: a JSON list).",
    ).tag(config=True)

    # -- code interpreter ---------------------------------------------------------------------------------
    code_interpreter = Bool(
        True,
        help="Offer the built-in `code_interpreter` tool: Python in a Jupyter kernel (the notebook's kernel "
        "named by the request, else one kernel per thread). A tool of `tools` with that name replaces it.",
    ).tag(config=True)
    kernel_spec = Unicode(
        "", help="Kernel spec of the per-thread kernels; empty: the server's default kernel (usually python3)."
    ).tag(config=True)
    execution_timeout = Float(
        600.0,
        help="Seconds one code_interpreter call may run before it is interrupted (the turn goes on with an "
        "error for that call).",
    ).tag(config=True)
    kernel_idle_timeout = Float(
        3600.0,
        help="Seconds a per-thread kernel may stay unused before it is shut down (its code is replayed when the "
        "thread is used again, see `replay_code`); 0: never. Notebook kernels are never shut down.",
    ).tag(config=True)
    replay_code = Bool(
        True,
        help="When a thread's per-thread kernel is gone (server restart, idle shutdown, culled, died), run the "
        "thread's earlier successful code in its new kernel before the turn's code (stops at the first failure).",
    ).tag(config=True)
    kernel_context = Bool(
        True,
        help="When a turn runs in the user's notebook kernel (a Python one), tell the LLM what that kernel holds: "
        "a summary of its variables (names, types, shapes, dims, coordinate ranges; no values but numbers), "
        "taken silently right before the turn; never stored. A request's `kernel_context=false` skips it too.",
    ).tag(config=True)
    kernel_context_timeout = Float(
        0.3,
        help="Seconds the summary of a notebook kernel's variables may take; a busy kernel, or one slower than "
        "this, gives none (the turn goes on without it).",
    ).tag(config=True)
    kernel_context_chars = Int(
        4000, min=100, help="Longest summary of a notebook kernel's variables, in characters (biggest first)."
    ).tag(config=True)
    evaluation_system_config_file = Unicode(
        "",
        help="Freva configuration file given to per-thread kernels as $EVALUATION_SYSTEM_CONFIG_FILE; a "
        "`freva-config` or `X-Freva-Config-Path` header wins when `trust_proxy_headers` is on.",
    ).tag(config=True)
    kernel_env = List(
        Unicode(),
        default_value=[],
        help="Names of the server's environment variables that per-thread kernels get besides the built-in "
        "allow-list (PATH, HOME, locale, PYTHON*, CONDA_*, PROJ_*, ...); `NAME*` matches a prefix. Never passed, "
        "even when listed: FREVAGPT_*, JPY_*, names containing TOKEN, SECRET, KEY or PASSWORD, and the "
        "variables the model catalogue reads through `os.environ/...` (FREVAGPT_KERNEL_ENV: a JSON list).",
    ).tag(config=True)
    kernel_probe = Bool(
        True,
        help="Find out which optional packages (numpy, xarray, matplotlib, cartopy, freva_client, ...) the kernels "
        "have, once per kernel spec in a short-lived kernel of its own, in the background from the server's start "
        "(a notebook kernel's spec on its first use); the system prompt names only those, and none until the "
        "probe has answered. Off, and on a kernel gateway (not probed yet): the prompt never names them.",
    ).tag(config=True)

    # -- prompts ------------------------------------------------------------------------------------------
    prompt_library = Unicode(
        "",
        help="Folder of your own prompt sets (`<set>/starting_prompt.txt`, ...), searched before the built-in library.",
    ).tag(config=True)
    prompt_set = Unicode("baseline", help="Prompt set used by models that name none.").tag(config=True)
    prompt_sets = Dict(
        default_value={},
        help="Prompt set per model name, e.g. {'gpt-4o': 'baseline'}; wins over a model's `model_info.prompt_set`.",
    ).tag(config=True)

    # -- storage and files --------------------------------------------------------------------------------
    data_dir = Unicode(
        "", help="Folder of the embedded thread database and server-private state; empty: <Jupyter data dir>/freva_gpt."
    ).tag(config=True)
    kernel_root = Unicode(
        "", help="Folder of the per-thread kernel working folders; empty: <Jupyter root dir>/freva-gpt."
    ).tag(config=True)
    gateway_kernel_root = Unicode(
        "",
        help="With a kernel gateway (--GatewayClient.url): the working directory of per-thread kernels on the "
        "gateway's hosts, sent as KERNEL_WORKING_DIR (Enterprise Gateway honours it with EG_MIRROR_WORKING_DIRS; "
        "it must exist there). Empty: the gateway's own choice (kernel_root is the server's and may not exist there).",
    ).tag(config=True)
    memory_threads = Int(
        1000, min=1, help="Most threads kept in memory for `store_thread=false` (least recently used are dropped)."
    ).tag(config=True)
    memory_bytes = Int(
        256 * 1024 * 1024,
        min=1024 * 1024,
        help="Most bytes of content (text, plots) kept in memory for `store_thread=false`; least recently used "
        "threads are dropped beyond it, and a write that would make a single thread larger fails its turn.",
    ).tag(config=True)
    store_busy_timeout = Float(
        30.0,
        help="Seconds a write to the thread database waits for a lock held by another process (another server "
        "or a backup) before it fails; a turn that cannot store its answer then ends with an error.",
    ).tag(config=True)
    mongodb_uri = Unicode(
        "",
        help="Keep threads in MongoDB at this URI (mongodb:// or mongodb+srv://), shared by every replica, instead "
        "of the embedded SQLite store. Empty with trust_proxy_headers: the MongoDB that the proxy's "
        "X-Freva-Vault-URL names, per request. Also $FREVAGPT_MONGO_DB_URI and $FREVAGPT_MONGODB_URI_DEV (the "
        "upstream backend's names).",
    ).tag(config=True)
    mongodb_database_name = Unicode(
        "chatbot",
        help="MongoDB database of the threads (the upstream backend's default). Also $FREVAGPT_MONGO_DB_DATABASE_NAME.",
    ).tag(config=True)
    mongodb_collection_name = Unicode(
        "threads",
        help="MongoDB collection of the threads (the upstream backend's default); feedback goes to `userfeedback`. "
        "Also $FREVAGPT_MONGO_DB_COLLECTION_NAME.",
    ).tag(config=True)
    mongodb_write_concern = Unicode(
        "1",
        help="MongoDB write concern of every write: a number of members (1 or more) or a tag such as `majority`. "
        "A line of a stream is sent once its write is acknowledged this way.",
    ).tag(config=True)
    mongodb_image_threshold = Int(
        256 * 1024,
        min=1024,
        max=8 * 1024 * 1024,
        help="Images larger than this many bytes go to GridFS instead of into the thread's document (MongoDB "
        "refuses documents over 16 MB).",
    ).tag(config=True)
    vault_cache_ttl = Float(
        300.0,
        help="Seconds the MongoDB URI that a vault (X-Freva-Vault-URL) gave out is remembered; 0: asked on every "
        "request.",
    ).tag(config=True)

    # -- threads and turns --------------------------------------------------------------------------------
    thread_sharing = Bool(
        True,
        help="Let anyone who knows a thread id read and fork it. Off: another user's thread id is answered "
        "like an unknown one on every route.",
    ).tag(config=True)
    max_input_chars = Int(100_000, min=1, help="Longest accepted user input, in characters (413 beyond).").tag(
        config=True
    )
    heartbeat_interval = Float(
        5.0, help="Longest silence on a stream, in seconds, before a keep-alive line is sent."
    ).tag(config=True)
    lease_ttl = Float(
        30.0,
        help="Seconds a streaming thread's lease lives without renewal: a crashed server blocks its threads "
        "for at most this long.",
    ).tag(config=True)
    stop_poll_interval = Float(
        0.25, help="Seconds between checks of a running turn for a stop requested by another server process."
    ).tag(config=True)
    tool_stop_grace = Float(
        10.0,
        help="Seconds a tool may take to end after a stop (or a failure) before the turn reports it and ends "
        "without it.",
    ).tag(config=True)

    # -- identity -----------------------------------------------------------------------------------------
    owner = Unicode(
        "",
        help="Owner name of threads when Jupyter's own token/password login names no real user; empty: the "
        "operating-system user. Ignored when $JUPYTERHUB_USER is set.",
    ).tag(config=True)
    rest_url = Unicode("", help="freva-rest base URL used to validate bearer tokens (standalone mode).").tag(
        config=True
    )
    trust_proxy_headers = Bool(
        False,
        help="Honour X-Freva-Rest-URL, X-Freva-Vault-URL and similar headers set by a trusted reverse proxy (the "
        "Freva nginx). Without mongodb_uri, threads are then kept in the MongoDB the vault names, and requests "
        "without X-Freva-Vault-URL find no thread store (503). Never enable this when clients reach the server "
        "directly.",
    ).tag(config=True)
    token_cache_ttl = Float(300.0, help="Seconds a validated bearer token is remembered.").tag(config=True)
    token_negative_cache_ttl = Float(
        30.0, help="Seconds a token refused by freva-rest (401) is remembered as invalid; 0: never."
    ).tag(config=True)
    dev = Bool(
        False, help="Standalone development mode: requests without a token act as `dev_user`. Never in production."
    ).tag(config=True)
    dev_user = Unicode("dev", help="User name of the development identity.").tag(config=True)

    # -- bounds -------------------------------------------------------------------------------------------
    @validate(*_POSITIVE, *_NON_NEGATIVE)
    def _bounded_seconds(self, proposal: Any) -> float:
        name, value = proposal.trait.name, proposal.value
        if not math.isfinite(value) or value < 0 or (value == 0 and name in _POSITIVE) or value > MAX_SECONDS:
            bound = "greater than 0" if name in _POSITIVE else "0 or more"
            raise TraitError(f"FrevaGPT.{name} must be {bound} and at most {MAX_SECONDS} (seconds), not {value!r}.")
        return value

    @validate("mcp_servers")
    def _valid_mcp_servers(self, proposal: Any) -> list[dict[str, Any]]:
        try:
            parse_mcp_servers(proposal.value)
        except McpConfigError as err:
            raise TraitError(str(err)) from err
        return proposal.value

    @validate("model_discovery")
    def _valid_model_discovery(self, proposal: Any) -> list[str]:
        for url in proposal.value:
            try:
                parts = urlsplit(url)
                valid = parts.scheme in ("http", "https") and bool(parts.hostname)
                parts.port  # noqa: B018 - raises for a port that is no number
            except ValueError:
                valid = False
            if not valid:
                raise TraitError(
                    f"FrevaGPT.model_discovery takes base URLs such as 'http://127.0.0.1:11434/v1', not {url!r}."
                )
        return list(proposal.value)

    @validate("mongodb_write_concern")
    def _valid_write_concern(self, proposal: Any) -> str:
        value = str(proposal.value).strip()
        numeric = value.lstrip("+-").isdigit()
        if not value or (numeric and int(value) < 1):
            # w=0 would send lines of a stream before MongoDB has them.
            raise TraitError(
                "FrevaGPT.mongodb_write_concern must be a number of members, 1 or more, or a tag such as "
                f"'majority', not {proposal.value!r}."
            )
        return str(int(value)) if numeric else value

    def update_config(self, config: Config) -> None:
        """As traitlets does, except that a bad value costs only itself: traitlets would undo every FrevaGPT
        value of `config` (data_dir and all), and jupyter_server drop the extension. Bad values keep their
        defaults and are reported by `configuration_problem`."""
        try:
            super().update_config(config)
        except (TraitError, ValueError):
            for name, value in self._find_my_config(config).items():
                try:
                    super().update_config(Config({type(self).__name__: {name: value}}))
                except (TraitError, ValueError) as err:
                    self._invalid[name] = f"{_CONFIGURED.format(name=name)}: {err}"

    def configuration_problem(self) -> str | None:
        """What is wrong with the settings (each refused value kept its default), or None."""
        problems = list(self._invalid.values())
        if self.lease_ttl <= 2 * self.stop_poll_interval:
            # The lease is renewed from the stop poll, a third of its life before it ends.
            problems.append(
                f"FrevaGPT.lease_ttl ({self.lease_ttl:g} s, {self._source('lease_ttl')}) must be more than twice "
                f"stop_poll_interval ({self.stop_poll_interval:g} s, {self._source('stop_poll_interval')}), or "
                "leases expire under running turns."
            )
        return "; ".join(p.rstrip(".") for p in problems) or None

    def _source(self, name: str) -> str:
        """Where the value of setting `name` comes from, as a user would look for it."""
        if name in self.config.get(type(self).__name__, {}):
            return _CONFIGURED.format(name=name)
        var = self._from_env.get(name)
        return f"${var}" if var else "the default"

    # -- defaults from the environment --------------------------------------------------------------------
    @default("data_dir")
    def _default_data_dir(self) -> str:
        return str(Path(jupyter_data_dir()) / "freva_gpt")

    @default("model_discovery")
    def _default_model_discovery(self) -> list[str]:
        return default_endpoints(os.environ, self.standalone)

    @default("kernel_root")
    def _default_kernel_root(self) -> str:
        root = getattr(self.serverapp, "root_dir", None) or os.getcwd()
        return str(Path(root) / "freva-gpt")

    def _apply_environment(self) -> None:
        """Each trait's default from FREVAGPT_<NAME>; explicit Jupyter config wins."""
        configured = set(self.config.get(type(self).__name__, {}))
        for name, trait in self.class_traits(config=True).items():
            if name in configured or name in self._invalid or name in self._standard_traits:
                continue
            for var in (ENV_PREFIX + name.upper(), *ENV_ALIASES.get(name, ())):
                raw = os.environ.get(var)
                if raw is None:
                    continue
                try:
                    setattr(self, name, _from_env(trait, raw))
                except Exception as err:
                    self._invalid[name] = f"${var} is not a valid value for {name}: {err}"
                else:
                    self._from_env[name] = var
                break

    @property
    def _standard_traits(self) -> set[str]:
        return set(ExtensionApp.class_traits(config=True))

    # -- wiring -------------------------------------------------------------------------------------------
    def load_catalogue(self) -> tuple[ModelCatalogue, str | None]:
        """The configured catalogue, or an empty one and what is wrong with it (the server and the doctor)."""
        try:
            catalogue = ModelCatalogue.load(self.litellm_config or None, self.default_model or None)
            if self.topic_model and catalogue.get(self.topic_model) is None:
                raise CatalogueError(
                    f"The topic model {self.topic_model!r} (topic_model, FREVAGPT_TOPIC_MODEL) is not a chat model "
                    f"of the catalogue: set it to one of {', '.join(catalogue.names) or 'its models'}, or unset it."
                )
        except CatalogueError as err:
            return ModelCatalogue([]), str(err)
        return catalogue, None

    def initialize_settings(self) -> None:
        # Set first: whatever fails later, start and stop find a catalogue.
        self.catalogue, self.catalogue_problem = ModelCatalogue([]), None
        self._apply_environment()
        problem = self.configuration_problem()
        if problem is None:
            # A broken catalogue leaves the API up without models: ping, availablechatbots and streamresponse
            # say why.
            self.catalogue, self.catalogue_problem = self.load_catalogue()
        elif self.standalone:
            # The chatbot API is all this server is for: it does not run with other values than configured.
            self.log.critical("FrevaGPT configuration error: %s", problem)
            raise SystemExit(f"FrevaGPT configuration error: {problem}")
        else:
            # Inside Jupyter the user's JupyterLab runs on; the chatbot is degraded as for a broken catalogue.
            self.catalogue_problem = f"FrevaGPT configuration error: {problem}. Fix it and restart the server."
        self.discovery: ModelDiscovery | None = None
        if not self.catalogue_problem and not self.litellm_config and self.model_discovery:
            owners = SocketOwners(single_user=single_user(os.environ, self.standalone))
            self.discovery = ModelDiscovery(
                self.model_discovery,
                self.catalogue,
                owners=owners,
                timeout=self.model_discovery_timeout,
                interval=self.model_discovery_interval,
                log=self.log,
            )
        if self.catalogue_problem:
            self.log.error("FrevaGPT runs without models: %s", self.catalogue_problem)
        elif self.discovery is not None:
            self.log.info(
                "FrevaGPT has no model catalogue: asking %s for models (model_discovery, from %s)",
                ", ".join(self.discovery.endpoints),
                self._source("model_discovery"),
            )
        elif not self.catalogue.names:
            self.log.warning("%s", NO_MODEL_HINT)
        else:
            self.log.info(
                "FrevaGPT models: %s (default %s)", ", ".join(self.catalogue.names), self.catalogue.default_name
            )
        libraries = [Path(self.prompt_library).expanduser()] if self.prompt_library else []
        libraries.append(data_folder("prompt_library"))
        self.prompts = PromptLibrary(libraries, self.prompt_set, dict(self.prompt_sets))
        data = Path(self.data_dir).expanduser()
        data.mkdir(parents=True, exist_ok=True)
        self.stores = self._thread_stores(data)
        self.memory_store = MemoryThreadStore(max_threads=self.memory_threads, max_bytes=self.memory_bytes)
        self.llm = LLMClient(
            connect_timeout=self.llm_connect_timeout,
            read_timeout=self.llm_read_timeout,
            default_api_key=self.openai_api_key or None,
            log=self.log,
        )
        tools = self._build_tools()
        self.mcp_tools = McpTools(
            parse_mcp_servers(self.mcp_servers),
            reserved=tools,
            builtin=self.builtin_rag_server if self.rag else None,
            refresh_interval=self.mcp_refresh_interval,
            log=self.log,
        )
        self.tool_registry = ToolRegistry(tools, lambda: self.mcp_tools.offered)
        kernel_tool = self.tool_registry.get(KernelTool.name)
        self.kernel_probes: KernelProbes | None = None
        # The probe starts its kernel here, with jupyter_client: on a kernel gateway it would probe the wrong host.
        if self.kernel_probe and isinstance(kernel_tool, KernelTool) and not kernel_tool.pool.gateway:
            self.kernel_probes = KernelProbes(
                self.serverapp.kernel_spec_manager, env=kernel_tool.environment(), log=self.log
            )
        self.orchestrator = Orchestrator(
            self.llm,
            self.prompts,
            self.tool_registry,
            max_tool_rounds=self.max_tool_rounds,
            tool_result_chars=self.tool_result_chars,
            packages=self._kernel_packages if self.kernel_probes is not None else None,
            tools_refused=self.discovery.without_tools if self.discovery is not None else None,
        )
        self.conversations = Conversations(
            TurnSettings(
                heartbeat_interval=self.heartbeat_interval,
                lease_ttl=self.lease_ttl,
                stop_poll_interval=self.stop_poll_interval,
                tool_stop_grace=self.tool_stop_grace,
            ),
            self.log,
        )
        self.bearer: BearerValidator | None = None
        provider = getattr(self.serverapp, "identity_provider", None)
        if isinstance(provider, FrevaRestIdentityProvider):
            if not isinstance(self.serverapp.authorizer, ChatbotOnlyAuthorizer):
                # Anyone with a Freva account would get the server's files and kernels.
                raise ValueError(f"The freva-rest bearer identity serves the chatbot API alone: {AUTHORIZER_FIX}.")
            self._harden()
            self.bearer = BearerValidator(
                rest_url=self.rest_url,
                trust_proxy_headers=self.trust_proxy_headers,
                ttl=self.token_cache_ttl,
                negative_ttl=self.token_negative_cache_ttl,
                timeout=self.llm_connect_timeout,
            )
            provider.validator = self.bearer
            provider.dev_user = self.dev_user if self.dev else None
        elif self.dev:
            self.log.warning("FrevaGPT `dev` only applies to the standalone server (`jupyter freva-gpt`).")
        # The handlers' one way to the server (they never import this module).
        self.settings[SETTINGS_KEY] = self._service()
        self._wired = True

    def _thread_stores(self, data: Path) -> ThreadStores:
        """The configured MongoDB; else, behind a trusted proxy, the MongoDB its vault names per request; else the
        embedded SQLite store in `data`."""
        if self.mongodb_uri:
            store = self.mongodb_store(self.mongodb_uri)
            # Said at start-up, so that a deployment whose variable was not read does not run on SQLite unnoticed.
            self.log.info(
                "FrevaGPT %s: threads in MongoDB at %s, database %r, collection %r (the URI from %s)",
                __version__,
                store.shown_uri,
                self.mongodb_database_name,
                self.mongodb_collection_name,
                self._source("mongodb_uri"),
            )
            return ThreadStores(mongodb=store, log=self.log)
        if self.trust_proxy_headers:
            self.log.info(
                "FrevaGPT %s: threads in the MongoDB that the proxy's %s names (database %r, collection %r); "
                "requests without it find no thread store (503). Set mongodb_uri to use one MongoDB for all.",
                __version__,
                VAULT_HEADER,
                self.mongodb_database_name,
                self.mongodb_collection_name,
            )
            vault = VaultResolver(ttl=self.vault_cache_ttl, timeout=self.llm_connect_timeout)
            return ThreadStores(vault=vault, open_mongodb=self.mongodb_store, log=self.log)
        database = data / "threads.sqlite3"
        self.log.info("FrevaGPT %s: threads in %s (embedded SQLite)", __version__, database)
        return ThreadStores(embedded=SQLiteThreadStore(database, busy_timeout=self.store_busy_timeout), log=self.log)

    def mongodb_store(self, uri: str) -> MongoThreadStore:
        """A store on the MongoDB at `uri` with the configured database, collection and limits (no I/O yet)."""
        # Here, not at the top: a server on the embedded store never pays for importing pymongo.
        from .storage.mongo import MongoThreadStore

        concern = self.mongodb_write_concern
        return MongoThreadStore(
            uri,
            self.mongodb_database_name,
            self.mongodb_collection_name,
            write_concern=int(concern) if concern.isdigit() else concern,
            image_threshold=self.mongodb_image_threshold,
            log=self.log,
        )

    def _service(self) -> ChatService:
        kernel_tool = self.tool_registry.get(KernelTool.name)
        return ChatService(
            catalogue=self.catalogue,
            catalogue_problem=self.catalogue_problem,
            stores=self.stores,
            memory_store=self.memory_store,
            orchestrator=self.orchestrator,
            conversations=self.conversations,
            tools=self.tool_registry,
            kernel_manager=self.serverapp.kernel_manager,
            session_manager=self.serverapp.session_manager,
            kernels=kernel_tool if isinstance(kernel_tool, KernelTool) else None,
            kernel_context=KernelContext(
                kernel_tool.pool,
                enabled=self.kernel_context,
                timeout=self.kernel_context_timeout,
                limit=self.kernel_context_chars,
                log=self.log,
            )
            if isinstance(kernel_tool, KernelTool)
            else None,
            owner=self.owner,
            server_owner=server_owner(self.owner),
            standalone=self.standalone,
            thread_sharing=self.thread_sharing,
            max_input_chars=self.max_input_chars,
            trust_proxy_headers=self.trust_proxy_headers,
            name_thread=self.name_thread,
            evaluation_system_config_file=self.evaluation_system_config_file,
            discovery=self.discovery,
        )

    @property
    def standalone(self) -> bool:
        """Serving the chatbot API alone to freva-rest bearer users (`jupyter freva-gpt`)."""
        return isinstance(getattr(self.serverapp, "identity_provider", None), FrevaRestIdentityProvider)

    def _harden(self) -> None:
        """Standalone, every user's code runs under the server's account: keep it out of the server itself."""
        problem = make_undumpable()
        if problem:
            self.log.warning("FrevaGPT could not make the server non-dumpable (%s): kernels may read its keys", problem)
        else:
            self.log.info("FrevaGPT made the server non-dumpable: its environment is out of the kernels' reach.")
        self.log.warning(
            "FrevaGPT standalone: the kernels of all users run under this server's account. The server's "
            "environment is out of their reach, but code of one user can still read other users' kernel folders "
            "(kernel_root), the thread database (data_dir) and the kernels' connection files; only a kernel "
            "gateway that starts kernels per user separates them."
        )

    def builtin_rag_server(self) -> MCPServer:
        """The built-in retrieval server (indexes before it returns: McpTools calls it off the event loop)."""
        # Here, not at the top: bm25s and numpy load when the retrieval starts, not with the extension.
        from .rag_server import build_server

        folders = [Path(folder).expanduser() for folder in self.rag_resources]
        return build_server(folders, Path(self.data_dir).expanduser() / "rag-index")

    def _build_tools(self) -> dict[str, Tool]:
        """The kernel tool first (the LLM sees the tools in this order), then the configured ones."""
        configured = load_tools(self.tools)
        registry: dict[str, Tool] = {}
        if self.code_interpreter and KernelTool.name not in configured:
            kernel_manager = self.serverapp.kernel_manager
            registry[KernelTool.name] = KernelTool(
                kernel_manager,
                session_manager=self.serverapp.session_manager,
                kernel_root=self.kernel_root,
                kernel_name=self.kernel_spec or kernel_manager.default_kernel_name,
                execution_timeout=self.execution_timeout,
                idle_timeout=self.kernel_idle_timeout,
                replay=self.replay_code,
                evaluation_system_config_file=self.evaluation_system_config_file,
                kernel_env=self.kernel_env,
                withheld_env=self.catalogue.env_references(),
                folder_per_user=self.standalone,
                gateway_kernel_root=self.gateway_kernel_root,
                # Cut in the middle to fit what the LLM receives, with room for the call's error line.
                max_output_chars=max(1000, self.tool_result_chars - 1000),
                log=self.log,
            )
        elif KernelTool.name in configured:
            self.log.info("The configured tool %r replaces the built-in code interpreter.", KernelTool.name)
        registry.update(configured)
        return registry

    async def _kernel_packages(self, ctx: ToolContext) -> dict[str, str] | None:
        """What the kernel of a turn has, once its spec is probed (the probe starts on the first ask)."""
        kernel_tool = self.tool_registry[KernelTool.name]
        spec = await kernel_tool.kernel_spec_of(ctx)
        return self.kernel_probes.packages(spec) if spec and self.kernel_probes is not None else None

    async def _start_jupyter_server_extension(self, serverapp: Any) -> None:
        if not self._wired:
            return  # start-up failed (jupyter_server logged why); nothing to start
        self.stores.start()
        if self.discovery is not None:
            self.discovery.start()  # in the background: the server already answers without those models
        # In the background: the server answers (and turns run, without those tools) before any MCP server does.
        self.mcp_tools.start()
        kernel_tool = self.tool_registry.get(KernelTool.name)
        if self.kernel_probes is not None and isinstance(kernel_tool, KernelTool) and kernel_tool.kernel_name:
            self.kernel_probes.packages(kernel_tool.kernel_name)
        # Import litellm now, while nobody streams, if a model needs it: its import holds the interpreter for
        # seconds and would stall live streams if it happened during the first such turn.
        if any(not model.streams_lean for model in self.catalogue.chat):
            self._litellm_import = asyncio.ensure_future(self.llm.load_litellm())
            self._litellm_import.add_done_callback(self._litellm_loaded)

    def _litellm_loaded(self, future: asyncio.Future[Any]) -> None:
        if future.cancelled():
            return
        if future.exception() is not None:
            self.log.warning("litellm could not be imported: %s", future.exception())
        else:
            self.log.info("litellm is ready for the models that need it.")

    def initialize_handlers(self) -> None:
        self.handlers.extend(handlers())

    async def name_thread(self, text: str) -> str:
        """A title for a thread that starts with `text`, by the topic model."""
        model = self.catalogue.get(self.topic_model or None)
        if model is None:
            return ""
        return await summarise(self.llm, model, text)

    async def stop_extension(self) -> None:
        # After a failed start-up only part of this exists; and if this raised, jupyter_server would never stop
        # its event loop (the server would hang on SIGTERM and Ctrl-C).
        parts = [
            getattr(self, "conversations", None),
            *getattr(self, "tool_registry", {}).values(),
            getattr(self, "mcp_tools", None),
            getattr(self, "kernel_probes", None),
            getattr(self, "discovery", None),
            getattr(self, "llm", None),
            getattr(self, "bearer", None),
            getattr(self, "memory_store", None),
            getattr(self, "stores", None),
        ]
        for part in parts:
            if part is None:
                continue
            try:
                await part.aclose()
            except Exception:
                self.log.exception("FrevaGPT: closing %s failed", type(part).__name__)


def _from_env(trait: TraitType, raw: str) -> Any:
    if isinstance(trait, Dict | List):
        value = json.loads(raw)
        if not isinstance(value, dict if isinstance(trait, Dict) else list):
            raise ValueError(f"expected a JSON {'object' if isinstance(trait, Dict) else 'list'}")
        return value
    return trait.from_string(raw)


# `jupyter freva-gpt`: the chatbot API alone, authenticated by freva-rest bearer tokens, as the Freva web
# frontend and climateclaw-client expect it behind the Freva nginx.
STANDALONE_ARGS = (
    "--ServerApp.identity_provider_class=freva_gpt_ext.auth.FrevaRestIdentityProvider",
    # Bearer users are Freva users, not the server's owner: the chatbot API and nothing else.
    "--ServerApp.authorizer_class=freva_gpt_ext.authorizer.ChatbotOnlyAuthorizer",
    "--ServerApp.open_browser=False",
    # The extension's own default URL wins over the server's; there is no JupyterLab here.
    "--FrevaGPT.default_url=/api/chatbot/docs",
)


AUTHORIZER_FIX = "set ServerApp.authorizer_class=freva_gpt_ext.authorizer.ChatbotOnlyAuthorizer (or a subclass of it)"


def standalone_argv(args: list[str]) -> list[str]:
    """The command line of `jupyter freva-gpt ARGS`: the presets, then `args`."""
    given = {arg.split("=", 1)[0] for arg in args}
    # traitlets refuses an option given twice: the user's choice replaces the preset.
    return [*(arg for arg in STANDALONE_ARGS if arg.split("=", 1)[0] not in given), *args]


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["doctor"]:
        from .doctor import main as doctor  # it imports this module

        sys.exit(doctor(args[1:]))
    if args[:1] == ["threads"]:
        from .threads_cli import main as threads  # it imports this module

        sys.exit(threads(args[1:]))
    # Only this extension: the API server needs no JupyterLab.
    FrevaGPT.load_other_extensions = False
    FrevaGPT.launch_instance(argv=standalone_argv(args))
