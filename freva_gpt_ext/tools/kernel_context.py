"""What the user's notebook kernel holds, as context for the LLM: a compact summary of its namespace.

A turn that runs in the user's Python kernel first asks it, silently (no output, no history, the execution counter
untouched) and within a small time budget, for a summary of its variables, biggest first: numpy arrays (shape,
dtype), pandas frames and series (columns, dtypes, length), xarray datasets and arrays (dims, coordinates with their
ranges, data variables with only `units`, `long_name` and `standard_name`), plain numbers with their value, and of
everything else its name and type. Modules, functions, classes and private names are left out.

The kernel is the user's and may hold anything: the introspection (`INTROSPECTION`, fixed, ours) never calls
`repr`, `len` or a property of an object it does not know, and reads types without running code of theirs (a
class's own `__name__` and `__module__`, not what a metaclass might make of them). Values are sent only for numbers;
a string (an API key, a password) is `name: str`.
"""

from __future__ import annotations

import ast
import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from .kernel_client import KernelConnection, KernelGone, maybe_await
from .kernel_pool import KernelFailure, KernelPool

# Runs in the user's kernel, in a namespace of its own that holds `namespace` (the kernel's globals) and `limit`;
# leaves its answer, a JSON text {"summary", "variables"}, in `result`. Compatible with Python 3.7 and later.
INTROSPECTION = r'''
import json
import sys
import types

_type_name = type.__dict__["__name__"].__get__
_type_qualname = type.__dict__["__qualname__"].__get__
_type_module = type.__dict__["__module__"].__get__
_CODE = (
    types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType, types.BuiltinMethodType, type
)
_ATTRIBUTES = ("units", "long_name", "standard_name")
_MAX_ITEMS = 40


def _short(text, limit=80):
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _type_text(cls):
    module, name = _type_module(cls), _type_qualname(cls)
    module = module if type(module) is str else "?"
    name = name if type(name) is str else _type_name(cls)
    if module == "builtins":
        return name
    top = module.split(".")[0]
    return (top if top in ("numpy", "pandas", "xarray") else module) + "." + name


def _number(value):
    """The text of a number whose type is known to print itself safely; None for anything else."""
    cls = type(value)
    np = sys.modules.get("numpy")
    # numpy's own scalar types only: a subclass could override `item`.
    if np is not None and _type_module(cls) == "numpy" and issubclass(cls, (np.number, np.bool_)):
        value = value.item()
        cls = type(value)
    if cls is bool:
        return repr(value)
    if cls is int:
        return repr(value) if -10**30 < value < 10**30 else "a %d-bit integer" % value.bit_length()
    if cls in (float, complex):
        return repr(value)
    return None


def _scalar(value):
    """A coordinate bound as text: a number or an ISO date; None for anything else."""
    text = _number(value)
    if text is not None:
        return text
    cls = type(value)
    np, pd = sys.modules.get("numpy"), sys.modules.get("pandas")
    if np is not None and cls is np.datetime64:
        return str(np.datetime_as_string(value))
    if pd is not None and cls is pd.Timestamp:
        return value.isoformat()
    module = _type_module(cls)
    if type(module) is str and (module.startswith("cftime") or module == "datetime") and _type_name(cls) in (
        "datetime", "date", "DatetimeGregorian", "DatetimeNoLeap", "DatetimeAllLeap", "Datetime360Day",
        "DatetimeJulian", "DatetimeProlepticGregorian",
    ):
        return value.isoformat()
    return None


def _label(value):
    """A dimension, variable or column name: text, a number, or a tuple of them."""
    cls = type(value)
    if cls is str:
        return _short(value)
    if cls is tuple:
        return "(" + ", ".join(_label(v) for v in value[:8]) + ")"
    text = _number(value)
    return text if text is not None else "<" + _type_text(cls) + ">"


def _listed(items, what):
    items = list(items)
    shown = items[:_MAX_ITEMS]
    if len(items) > len(shown):
        shown.append("\u2026 %d more %s" % (len(items) - len(shown), what))
    return shown


def _dtype(dtype):
    """A dtype as text when numpy or pandas writes it; a type name for anyone else's (their `__str__` is code)."""
    module = _type_module(type(dtype))
    if type(module) is str and module.split(".")[0] in ("numpy", "pandas"):
        return _short(str(dtype))
    return "<" + _type_text(type(dtype)) + ">"


def _dims(obj):
    return "(" + ", ".join(_label(d) for d in obj.dims) + ")"


def _attributes(var):
    attrs = var.attrs
    found = []
    for key in _ATTRIBUTES:
        value = attrs.get(key) if type(attrs) is dict else None
        if type(value) is str:
            found.append("%s: %s" % (key, _short(value)))
    return (" [" + "; ".join(found) + "]") if found else ""


def _coordinates(obj):
    try:
        indexes = dict(obj.indexes)
    except Exception:
        indexes = {}
    lines = []
    for name, coord in obj.coords.items():
        line = "  coordinate %s %s" % (_label(name), _dims(coord))
        index = indexes.get(name)
        try:
            # Ranges of numbers, dates and cftime dates only: comparing other objects runs their code.
            ranged = index is not None and (index.dtype.kind in "iufmM" or _type_name(type(index)) == "CFTimeIndex")
            if ranged and len(index):
                low, high = _scalar(index.min()), _scalar(index.max())
                if low is not None and high is not None:
                    line += ": %s .. %s" % (low, high)
        except Exception:
            pass
        lines.append(line)
    return _listed(lines, "coordinates")


def _describe(name, value, cls):
    """(size in bytes for the order, text) of a variable."""
    np, pd, xr = sys.modules.get("numpy"), sys.modules.get("pandas"), sys.modules.get("xarray")
    if np is not None and cls is np.ndarray:
        shape = "(" + ", ".join(str(int(n)) for n in value.shape) + ")"
        return int(value.nbytes), "%s: numpy.ndarray shape %s dtype %s" % (name, shape, _dtype(value.dtype))
    if pd is not None and cls is pd.DataFrame:
        columns = _listed(("%s %s" % (_label(c), _dtype(t)) for c, t in value.dtypes.items()), "columns")
        size = int(value.memory_usage(index=True, deep=False).sum())
        return size, "%s: pandas.DataFrame %d rows; columns: %s" % (name, value.shape[0], ", ".join(columns))
    if pd is not None and cls is pd.Series:
        size = int(value.memory_usage(index=True, deep=False))
        return size, "%s: pandas.Series %d rows dtype %s" % (name, value.shape[0], _dtype(value.dtype))
    if xr is not None and cls is xr.Dataset:
        sizes = ", ".join("%s: %d" % (_label(d), int(n)) for d, n in value.sizes.items())
        lines = ["%s: xarray.Dataset dims {%s}" % (name, sizes)] + _coordinates(value)
        lines += _listed(
            (
                "  variable %s %s %s%s" % (_label(k), _dims(v), _dtype(v.dtype), _attributes(v))
                for k, v in value.data_vars.items()
            ),
            "data variables",
        )
        return int(value.nbytes), "\n".join(lines)
    if xr is not None and cls is xr.DataArray:
        title = "" if value.name is None else " " + _label(value.name)
        shape = "(" + ", ".join(str(int(n)) for n in value.shape) + ")"
        head = "%s: xarray.DataArray%s %s shape %s %s%s" % (
            name, title, _dims(value), shape, _dtype(value.dtype), _attributes(value)
        )
        return int(value.nbytes), "\n".join([head] + _coordinates(value))
    number = _number(value)
    if number is not None:
        return 8, "%s: %s = %s" % (name, _type_text(cls), number)
    return -1, "%s: %s" % (name, _type_text(cls))


def _summary(namespace, limit):
    hidden = {}
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    if shell is not None and type(getattr(shell, "user_ns_hidden", None)) is dict:
        hidden = shell.user_ns_hidden
    entries = []
    for name, value in list(namespace.items()):
        if type(name) is not str or name.startswith("_") or (name in hidden and hidden[name] is value):
            continue
        cls = type(value)
        if issubclass(cls, _CODE):
            continue
        try:
            size, text = _describe(name, value, cls)
        except Exception:
            size, text = -1, "%s: %s" % (name, _type_text(cls))
        entries.append((-size, name, text))
    entries.sort(key=lambda e: (e[0], e[1]))
    lines, names, used = [], [], 0
    room = limit - 60  # for the line that says how many were left out
    for _, name, text in entries:
        if used + len(text) + 1 > room:
            continue
        lines.append(text)
        names.append(name)
        used += len(text) + 1
    if len(names) < len(entries):
        lines.append("(%d more variables not shown)" % (len(entries) - len(names)))
    return json.dumps({"summary": "\n".join(lines)[:limit], "variables": names})


result = _summary(namespace, limit)
'''

# The expression the kernel evaluates (as a `user_expressions` entry of a silent request): the introspection in a
# namespace of its own, so nothing of it is left in the user's.
_EXPRESSION = (
    "(lambda scope: (__import__('builtins').exec({source}, scope), scope['result'])[1])"
    "({{'namespace': globals(), 'limit': {limit}, '__name__': '__freva_gpt_kernel_context__'}})"
)
# Most variable names taken from a kernel's answer (the summary's own limit bounds them already).
MAX_NAMES = 1000
MAX_NAME_CHARS = 200

OK = "ok"
OFF = "off"
BUSY = "busy"
TIMEOUT = "timeout"
NOT_PYTHON = "not_python"
UNAVAILABLE = "unavailable"


@dataclass(frozen=True, slots=True)
class KernelSummary:
    """What a kernel's namespace looks like to the LLM, and why there is none (`state` other than "ok")."""

    state: str
    spec: str | None
    language: str | None
    summary: str = ""
    variables: tuple[str, ...] = ()


def expression(limit: int) -> str:
    return _EXPRESSION.format(source=repr(INTROSPECTION), limit=int(limit))


class KernelContext:
    """Summaries of the users' notebook kernels, through the code interpreter's connections to them."""

    def __init__(
        self, pool: KernelPool, *, enabled: bool, timeout: float, limit: int, log: logging.Logger | None = None
    ) -> None:
        self.pool = pool
        self.enabled = enabled
        self.timeout = timeout
        self.limit = limit
        self.log = log or logging.getLogger(__name__)
        self._connecting: set[asyncio.Future[KernelConnection]] = set()

    def spec_of(self, kernel_id: str) -> str | None:
        """The kernel spec name of a running kernel (None when it is gone)."""
        try:
            return getattr(self.pool.km.get_kernel(kernel_id), "kernel_name", None) or None
        except KeyError:
            return None

    async def summary(self, kernel_id: str) -> KernelSummary:
        """The summary of the kernel's namespace, taken within `timeout` seconds, or why there is none: the
        context is off, the kernel is busy (never waited for), it did not answer in time, it is no Python kernel,
        or it could not give one."""
        deadline = time.monotonic() + self.timeout
        try:
            kernel = self.pool.km.get_kernel(kernel_id)
        except KeyError:
            return KernelSummary(UNAVAILABLE, None, None)
        spec = self.spec_of(kernel_id)
        language = await _spec_language(kernel)
        if not self.enabled:
            return KernelSummary(OFF, spec, language)
        if getattr(kernel, "execution_state", None) == "busy":
            return KernelSummary(BUSY, spec, language)
        connecting = asyncio.ensure_future(self.pool.connection_to(kernel_id))
        try:
            # Shielded: a connection that is not ready in time is finished all the same, for the turn's code.
            conn = await asyncio.wait_for(asyncio.shield(connecting), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            self._connecting.add(connecting)
            connecting.add_done_callback(self._connected)
            return KernelSummary(TIMEOUT, spec, language)
        except KernelFailure as err:
            self.log.info("No context from kernel %s: %s", kernel_id, err)
            return KernelSummary(UNAVAILABLE, spec, language)
        language = conn.language or language
        if language != "python":
            return KernelSummary(NOT_PYTHON, spec, language)
        if conn.lock.locked() or conn.server_busy():
            return KernelSummary(BUSY, spec, language)
        try:
            async with conn.lock:
                msg_id = conn.evaluate({"context": expression(self.limit)})
                reply = await conn.reply(msg_id, deadline)
        except KernelGone as err:
            self.log.info("No context from kernel %s: %s", kernel_id, err)
            return KernelSummary(UNAVAILABLE, spec, language)
        if reply is None:
            # Its answer, whenever it comes, is skipped by the next reader of the connection's replies.
            return KernelSummary(TIMEOUT, spec, language)
        found = self._read(reply)
        if found is None:
            self.log.info("Kernel %s gave no readable context.", kernel_id)
            return KernelSummary(UNAVAILABLE, spec, language)
        summary, variables = found
        return KernelSummary(OK, spec, language, summary, variables)

    def _read(self, reply: dict[str, Any]) -> tuple[str, tuple[str, ...]] | None:
        """(summary, variable names) from the execute reply; None when it holds none (the kernel is the user's:
        its answer is checked, never trusted)."""
        content = reply.get("content") or {}
        value = (content.get("user_expressions") or {}).get("context") or {}
        text = (value.get("data") or {}).get("text/plain") if value.get("status") == "ok" else None
        # The answer's text is the repr of a JSON string: a little longer than the summary it holds.
        if not isinstance(text, str) or len(text) > 8 * self.limit + 100_000:
            return None
        try:
            answer = json.loads(ast.literal_eval(text))
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            return None
        if not isinstance(answer, dict):
            return None
        summary, names = answer.get("summary"), answer.get("variables")
        if not isinstance(summary, str) or not isinstance(names, list):
            return None
        variables = tuple(n[:MAX_NAME_CHARS] for n in names[:MAX_NAMES] if isinstance(n, str))
        return summary[: self.limit], variables

    def _connected(self, connecting: asyncio.Future[KernelConnection]) -> None:
        self._connecting.discard(connecting)
        if not connecting.cancelled() and connecting.exception() is not None:
            self.log.debug("The connection to a notebook kernel failed: %s", connecting.exception())


async def _spec_language(kernel: Any) -> str | None:
    """The language its kernel spec declares (None when the spec is gone)."""
    try:
        spec = await maybe_await(kernel.kernel_spec)
    except Exception:
        return None
    language = getattr(spec, "language", None)
    return str(language) if language else None
