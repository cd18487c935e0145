"""Assertions shared by the test modules."""

from __future__ import annotations


def assert_usage_error(result, *fragments: str) -> None:
    """A CLI result that is bad input: exit 2 and exactly one stderr line holding every fragment."""
    assert result.code == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
