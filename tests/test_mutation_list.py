"""Every deliberate breakage of tests/mutation_check.py still applies to the current source: each
replaced text occurs exactly once, changes the file, and names test paths that exist."""

from __future__ import annotations

import shutil

import pytest
from mutation_check import MUTATIONS, ROOT, apply


@pytest.mark.parametrize("mutation", MUTATIONS, ids=lambda m: m.name)
def test_mutation_applies_once(mutation, tmp_path):
    target = tmp_path / mutation.path
    target.parent.mkdir(parents=True)
    shutil.copy(ROOT / mutation.path, target)
    original = apply(mutation, tmp_path)
    assert target.read_text() != original
    assert original == (ROOT / mutation.path).read_text()
    for test in mutation.tests:
        assert (ROOT / test).exists(), f"{mutation.name} names {test}, which does not exist"


def test_mutation_names_are_unique():
    names = [m.name for m in MUTATIONS]
    assert len(names) == len(set(names))
