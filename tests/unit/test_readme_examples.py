"""Every TOML example in the README is a config that `lkbridge check` accepts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lkbridge.cli.check import check_config_file

ROOT = Path(__file__).resolve().parents[2]
BLOCKS = re.findall(r"```toml\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def test_the_readme_has_toml_examples() -> None:
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_config_example_checks(index: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIVEKIT_API_SECRET", "x" * 32)
    monkeypatch.setenv("TOKEN_ENDPOINT_AUTH", "Bearer abc")
    path = tmp_path / "config.toml"
    path.write_text(BLOCKS[index])
    ok, text = check_config_file(path)
    assert ok, text
