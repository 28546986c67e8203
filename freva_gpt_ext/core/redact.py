"""What may be shown of an endpoint or a provider's answer: no credentials, nothing shaped like a key."""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"
_SECRET_NAME = re.compile(r"key|token|secret|passw|auth|sig|credential", re.IGNORECASE)
_SECRET_PATTERNS = (
    # `Authorization: Bearer <token>`, `Basic <credentials>`
    re.compile(r"(?i)\b((?:bearer|basic)\s+)[^\s\"',;]+"),
    # `"api_key": "…"`, `token=…`, `password: …`
    re.compile(r"(?i)([\"']?[\w-]*(?:key|token|secret|passw(?:or)?d)[\w-]*[\"']?\s*[:=]\s*[\"']?)[^\s\"'&,;}]+"),
    # Provider keys: sk-…, sk-ant-…, AIza…, hf_…, ghp_…, JWTs
    re.compile(r"\b(?:sk|pk|rk)-[\w-]{8,}|\bAIza[\w-]{20,}|\b(?:hf|ghp|gho|xox[abp])_[\w-]{10,}"),
    re.compile(r"\beyJ[\w-]+\.[\w-]+\.[\w-]+"),
    # Any long run of letters and digits mixed, as random keys are.
    re.compile(r"(?<![\w-])(?=[\w-]*\d)(?=[\w-]*[A-Za-z])[\w-]{24,}"),
)


def mask_secrets(text: str, known: Iterable[str | None] = ()) -> str:
    """`text` with the `known` secrets and anything shaped like a key replaced by ***."""
    for secret in known:
        if secret and len(secret) >= 6:
            text = text.replace(secret, MASK)
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) + MASK) if m.groups() and m.group(1) else MASK, text)
    return text


def host_of(url: str) -> str:
    """`host[:port]` of a URL: what a user may be told of an endpoint (no userinfo, path or query)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{parts.port}" if parts.port else host or url.split("/", 1)[0]


def safe_url(url: str) -> str:
    """The URL for the server log: no userinfo, secret-looking query values masked."""
    parts = urlsplit(url)
    netloc = host_of(url) if parts.hostname else parts.netloc
    query = urlencode(
        [(k, MASK if _SECRET_NAME.search(k) else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)],
        safe="*",
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))
