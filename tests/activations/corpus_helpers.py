"""Shared by the documents and packing tests: both promise one-line errors."""

from __future__ import annotations

import pytest

from saescope.errors import SaescopeError


def one_line_error(excinfo: pytest.ExceptionInfo[SaescopeError], *words: str) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and message
    for word in words:
        assert word in message, message
    return message
