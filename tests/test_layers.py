"""Imports point down (DESIGN.md): app.py → handlers/ → core/ → tools/, storage/ → variants.py; handlers get the
server as a typed service, never the app; core knows no Tornado or jupyter_server."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "freva_gpt_ext"
# What each floor must not import: of ours (module paths inside the package) and of others.
FORBIDDEN = {
    "handlers": ({"app"}, set()),
    "core": ({"app", "handlers", "auth", "authorizer"}, {"tornado", "jupyter_server"}),
    "tools": ({"app", "handlers", "core", "auth", "authorizer"}, set()),
    "storage": ({"app", "handlers", "core", "tools", "auth", "authorizer"}, set()),
}


def imports(path: Path) -> set[str]:
    """Every module `path` imports (TYPE_CHECKING imports too), ours as paths inside the package."""
    floor = path.relative_to(PACKAGE).parts[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = floor[: len(floor) - node.level + 1]
                module = ".".join((*base, *(node.module.split(".") if node.module else ())))
                names = [module] if node.module else [".".join((*base, a.name)) for a in node.names]
                found.update(f"freva_gpt_ext.{name}".rstrip(".") for name in names)
            elif node.module:
                found.add(node.module)
    return found


@pytest.mark.parametrize("floor", sorted(FORBIDDEN))
def test_imports_point_down(floor: str) -> None:
    ours, others = FORBIDDEN[floor]
    wrong = []
    for path in sorted((PACKAGE / floor).rglob("*.py")):
        for module in imports(path):
            top = module.split(".")
            if (top[0] == "freva_gpt_ext" and len(top) > 1 and top[1] in ours) or top[0] in others:
                wrong.append(f"{path.relative_to(PACKAGE)} imports {module}")
    assert not wrong, wrong
