"""The environment of a per-thread kernel: an allow-list of the server's variables, never its secrets.

The kernel runs code the LLM wrote, possibly steered by someone else's shared thread: it gets what Python,
conda, locale and the geo libraries need, and nothing that could carry a credential, whatever an admin lists.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

# A trailing `*` matches any name with that prefix.
ALLOWED = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "LANG",
    "LC_*",
    "TZ",
    "TMPDIR",
    "LD_LIBRARY_PATH",
    "PYTHON*",
    "CONDA_*",
    "VIRTUAL_ENV",
    "PROJ_*",
    "GDAL_DATA",
    "ESMFMKFILE",
    "CARTOPY_DATA_DIR",
    "JUPYTER_CONFIG_DIR",
    "JUPYTER_DATA_DIR",
    "JUPYTER_PATH",
    "JUPYTER_RUNTIME_DIR",
    "THREAD_ID",
    "EVALUATION_SYSTEM_CONFIG_FILE",
)
# JupyterHub puts the user's hub token into JPY_API_TOKEN; FREVAGPT_* configures the server, keys included.
FORBIDDEN_PREFIXES = ("FREVAGPT_", "JPY_")
FORBIDDEN_PARTS = ("TOKEN", "SECRET", "KEY", "PASSWORD")


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(name.startswith(p[:-1]) if p.endswith("*") else name == p for p in patterns)


def forbidden(name: str, withheld: Collection[str] = ()) -> bool:
    """Whether `name` may never reach a kernel: a server setting, a credential, or `withheld` (e.g. the
    variables the model catalogue reads its keys from)."""
    upper = name.upper()
    return name in withheld or upper.startswith(FORBIDDEN_PREFIXES) or any(p in upper for p in FORBIDDEN_PARTS)


def kernel_environment(
    source: Mapping[str, str], *, extra: Iterable[str] = (), withheld: Collection[str] = ()
) -> dict[str, str]:
    """The variables of `source` a kernel gets: the allow-list plus `extra` (names or `PREFIX*`), minus every
    forbidden name — even one the lists name."""
    allowed = (*ALLOWED, *extra)
    return {k: v for k, v in source.items() if _matches(k, allowed) and not forbidden(k, withheld)}
