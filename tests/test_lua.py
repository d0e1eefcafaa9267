"""Every Lua script ships as package data with a header naming its KEYS and ARGV."""

from __future__ import annotations

from importlib.resources import files

import pytest

from sidecar.lua import NAMES, STANDALONE, source


@pytest.mark.parametrize("name", NAMES + STANDALONE)
def test_script_has_a_header_with_keys_and_argv(name: str) -> None:
    text = (files("sidecar.lua") / f"{name}.lua").read_text()
    header = text.split("\n\n", 1)[0]
    assert header.startswith(f"-- {name}.lua: ")
    assert "KEYS" in header and "ARGV" in header


def test_scripts_are_prefixed_with_the_shared_library() -> None:
    assert source("deduct").startswith("-- _lib.lua")
    with pytest.raises(KeyError):
        source("nope")
