"""What may be shown of an endpoint or a provider's answer: no credentials, nothing shaped like a key."""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

MASK = "***"
# Names of query parameters that carry credentials (`url_secrets`); a shown URL masks `auth…` ones too
# (MongoDB's `authSource=admin` is no secret, but hiding it costs nothing).
_CREDENTIAL_NAME = re.compile(r"key|token|secret|passw|sig|credential", re.IGNORECASE)
_SECRET_NAME = re.compile(_CREDENTIAL_NAME.pattern + "|auth", re.IGNORECASE)
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
    """`host[:port]` of a URL: what a user may be told of an endpoint (no userinfo, path or query). Never raises,
    also for a malformed port or a MongoDB URI's list of hosts (`h1:27017,h2:27017`)."""
    try:
        netloc = urlsplit(url).netloc
    except ValueError:  # an unclosed IPv6 bracket
        netloc = ""
    return netloc.rpartition("@")[2] or url.split("/", 1)[0].rpartition("@")[2]


def safe_url(url: str) -> str:
    """The URL for the server log: no userinfo, secret-looking query values masked. Never raises."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return host_of(url)
    query = urlencode(
        [(k, MASK if _SECRET_NAME.search(k) else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)],
        safe="*",
    )
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, query, ""))


def url_secrets(url: str) -> list[str]:
    """The credentials a URL carries, as written and decoded: its password and its secret-looking query values
    (`safe_url` leaves them out; this is for masking them in text that may quote the URL, such as an error)."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return []
    found = [password] if password else []
    found += [v for k, v in parse_qsl(parts.query) if v and _CREDENTIAL_NAME.search(k)]
    # A short one would mask unrelated text, and hides nothing anyway.
    return [s for s in {*found, *map(unquote, found)} if len(s) >= 3]
