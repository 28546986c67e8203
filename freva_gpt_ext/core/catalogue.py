"""Reading the model catalogue file: every entry checked, every problem placed (file, line, column) with its fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

NO_MODEL_HINT = (
    "No chat model is configured: set FREVAGPT_LITELLM_CONFIG (or c.FrevaGPT.litellm_config) to a model "
    "catalogue, e.g. a copy of examples/litellm_config.yaml, and restart the server."
)
_SHAPE = "model_list:\n  - model_name: my-model\n    litellm_params: {model: openai/<model>, api_base: <url>}"


class CatalogueError(Exception):
    """The model catalogue cannot be used; the message says where and what to fix."""


def read_model_list(path: str | Path) -> list[dict[str, Any]]:
    """The `model_list` entries of a LiteLLM-style catalogue, each with a `model_name` and `litellm_params.model`,
    names unique."""
    file = Path(path).expanduser()
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise CatalogueError(
            f"The model catalogue {file} does not exist: point FREVAGPT_LITELLM_CONFIG (or "
            "c.FrevaGPT.litellm_config) at an existing file, then restart the server."
        ) from err
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise CatalogueError(
            f"The model catalogue {file} cannot be read ({reason}): make it a readable UTF-8 file, then restart "
            "the server."
        ) from err
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        what = ": ".join(str(part) for part in (err.context, err.problem) if part)
        raise CatalogueError(
            f"{_at(file, mark)}: invalid YAML ({what}): fix the syntax there (indentation, a missing ':', "
            "an unclosed bracket or quote), then restart the server."
        ) from err
    except yaml.YAMLError as err:
        raise CatalogueError(f"The model catalogue {file} is not valid YAML ({err}): fix it, then restart.") from err
    finally:
        loader.dispose()
    items_node = _value_node(root, "model_list")
    items = data.get("model_list") if isinstance(data, dict) else None
    if not isinstance(items, list) or not isinstance(items_node, yaml.SequenceNode):
        mark = root.start_mark if root is not None else None
        raise CatalogueError(
            f"{_at(file, mark)}: the file has no `model_list` list of models. It must look like:\n{_SHAPE}"
        )
    seen: dict[str, tuple[int, Any]] = {}
    for number, (item, node) in enumerate(zip(items, items_node.value, strict=True), start=1):
        where = f"{_at(file, node.start_mark)}: entry {number} of model_list"
        if not isinstance(item, dict):
            raise CatalogueError(f"{where} is not a mapping: write each model like\n{_SHAPE}")
        name = item.get("model_name")
        if not name:
            raise CatalogueError(f"{where} has no `model_name`: add `model_name: <the name users pick>`.")
        params = item.get("litellm_params")
        if not isinstance(params, dict) or not params.get("model"):
            raise CatalogueError(
                f"{where} ('{name}') has no `litellm_params.model`: add e.g. `litellm_params: {{model: "
                "openai/<model>, api_base: <url of an OpenAI-compatible server>}`."
            )
        first = seen.get(str(name))
        if first is not None:
            raise CatalogueError(
                f"{where} and entry {first[0]} ({_position(first[1])}) have the same `model_name` '{name}': "
                "model names must be unique; rename or remove one of them."
            )
        seen[str(name)] = (number, node.start_mark)
    return items


def _value_node(root: yaml.Node | None, key: str) -> yaml.Node | None:
    if not isinstance(root, yaml.MappingNode):
        return None
    return next((value for k, value in root.value if getattr(k, "value", None) == key), None)


def _position(mark: Any) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}"


def _at(file: Path, mark: Any) -> str:
    return f"Model catalogue {file}, {_position(mark)}" if mark is not None else f"Model catalogue {file}"
