"""lkbridge's public names: one table in lkbridge/__init__.py; the typed re-exports must match it."""

from __future__ import annotations

import ast
from pathlib import Path

import lkbridge


def type_checking_imports() -> dict[str, str]:
    """name -> module of the `from m import X as X` lines under `if TYPE_CHECKING:`."""
    tree = ast.parse(Path(lkbridge.__file__).read_text())
    found: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for item in node.body:
                assert isinstance(item, ast.ImportFrom) and item.module is not None
                for alias in item.names:
                    assert alias.asname == alias.name, f"{alias.name}: import it `as` itself"
                    found[alias.name] = item.module
    return found


def test_typed_re_exports_match_the_table() -> None:
    assert type_checking_imports() == lkbridge._EXPORTS


def test_all_is_the_table_and_the_version() -> None:
    assert sorted(lkbridge.__all__) == sorted([*lkbridge._EXPORTS, "__version__"])
