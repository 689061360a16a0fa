"""The TOML writer: everything it writes reads back equal."""

from __future__ import annotations

import math
import tomllib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from codex_supervisor import _toml

scalars = (
    st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text()
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
documents = st.recursive(
    st.dictionaries(st.text(), values, max_size=5),
    lambda inner: st.dictionaries(st.text(), inner | values, max_size=4),
    max_leaves=20,
)


@given(documents)
def test_round_trips_through_tomllib(document: dict[str, Any]) -> None:
    assert tomllib.loads(_toml.dumps(document)) == document


def test_special_floats_and_strings() -> None:
    text = _toml.dumps({"inf": math.inf, "neg": -math.inf, "s": 'a"\\\x7f\n\x00é'})
    back = tomllib.loads(text)
    assert back["inf"] == math.inf
    assert back["neg"] == -math.inf
    assert back["s"] == 'a"\\\x7f\n\x00é'
    assert math.isnan(tomllib.loads(_toml.dumps({"n": math.nan}))["n"])


def test_codex_shaped_config() -> None:
    config = {
        "model": "m",
        "model_providers": {"fake": {"base_url": "http://127.0.0.1:1/v1", "retries": 0}},
        "mcp_servers": {"env-mcp": {"command": "x", "env": {"TOKEN_VAR": "LOOPBACK"}}},
        "features": {"apps": False},
    }
    text = _toml.dumps(config)
    assert "[mcp_servers.env-mcp.env]" in text
    assert tomllib.loads(text) == config


@pytest.mark.parametrize("bad", [{"x": None}, {"x": b"bytes"}, {"x": object()}, {1: "x"}])
def test_unwritable_values_raise_type_error(bad: dict[Any, Any]) -> None:
    with pytest.raises(TypeError):
        _toml.dumps(bad)
