"""The layer rule import-linter cannot see: livekit.rtc (not livekit.api) only in session and transports."""

from __future__ import annotations

import ast
from pathlib import Path

import lkbridge

PACKAGE = Path(lkbridge.__file__).parent
RTC_ALLOWED = ("session", "transports")


def rtc_imports(path: Path) -> list[int]:
    """Line numbers of the imports of livekit.rtc in one file."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            if any(a.name == "livekit.rtc" or a.name.startswith("livekit.rtc.") for a in node.names):
                lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            if node.module == "livekit" and any(a.name == "rtc" for a in node.names):
                lines.append(node.lineno)
            elif node.module == "livekit.rtc" or node.module.startswith("livekit.rtc."):
                lines.append(node.lineno)
    return lines


def test_livekit_rtc_only_in_session_and_transports() -> None:
    offenders = [
        f"{path.relative_to(PACKAGE.parent)}:{line}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.relative_to(PACKAGE).parts[0] not in RTC_ALLOWED
        for line in rtc_imports(path)
    ]
    assert offenders == []


def test_the_check_sees_an_rtc_import(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("from livekit import api\nfrom livekit import rtc\nimport livekit.rtc as r\n")
    assert rtc_imports(source) == [2, 3]
