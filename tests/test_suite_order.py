"""The suite's file order (tests/conftest.py): every file LONGEST_FIRST names exists, once."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import LONGEST_FIRST


def test_longest_first_names_each_existing_test_file_once():
    tests = Path(__file__).resolve().parent
    assert [name for name in LONGEST_FIRST if not (tests / name).is_file()] == []
    assert len(set(LONGEST_FIRST)) == len(LONGEST_FIRST)
