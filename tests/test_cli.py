"""The shared key=value argument parser of the small CLIs."""

from __future__ import annotations

import pytest

from birdflow.cli import parse_key_values
from birdflow.errors import ConfigError


def test_parses_known_keys_and_ignores_a_leading_plus():
    assert parse_key_values(["run=out/x", "+n= 5 "], {"run", "n"}) == {"run": "out/x", "n": "5"}


@pytest.mark.parametrize("arg", ["run", "colour=red"])
def test_bad_argument_is_named_with_the_usage(arg):
    with pytest.raises(ConfigError, match=rf"argument '{arg}' not understood.*\['n', 'run'\]; usage: x"):
        parse_key_values([arg], {"run", "n"}, "usage: x")
