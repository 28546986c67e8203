"""Thread topics: a provisional one cut from the first message, then a short title written by the topic model."""

from __future__ import annotations

import re

from .llm import LLMClient, ModelEntry

TOPIC_CHARS = 80
_INSTRUCTION = (
    "You name conversations between climate researchers and an assistant. Reply with a title of at most "
    "eight words for the conversation that starts with the user's message below. Reply with the title only: "
    "no quotes, no punctuation at the end."
)


def provisional_topic(text: str, limit: int = 60) -> str:
    """The start of the first user message, cut at a word boundary."""
    flat = " ".join(text.split())
    if len(flat) <= limit:
        return flat or "New conversation"
    cut = flat[:limit].rsplit(" ", 1)[0] or flat[:limit]
    return cut + "…"


def is_meaningful(text: str) -> bool:
    """Worth a title: a greeting or a single word is not."""
    return len(re.findall(r"\w+", text)) >= 3


def clean_title(raw: str) -> str:
    line = next((ln for ln in raw.strip().splitlines() if ln.strip()), "")
    line = re.sub(r"^(title\s*:\s*)|[#*`]", "", line.strip(), flags=re.IGNORECASE).strip(
        " \"'\u201c\u201d\u2018\u2019."
    )
    line = " ".join(line.split())
    if len(line) > TOPIC_CHARS:
        line = line[:TOPIC_CHARS].rsplit(" ", 1)[0] + "…"
    return line


async def summarise(llm: LLMClient, model: ModelEntry, text: str) -> str:
    """A short title for a conversation starting with `text` ("" when the model gives none)."""
    messages = [{"role": "system", "content": _INSTRUCTION}, {"role": "user", "content": text[:4000]}]
    return clean_title(await llm.complete(model, messages))
