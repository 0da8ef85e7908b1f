"""Fixtures shared by the trainer tests."""

from __future__ import annotations

import pytest

from kontext_studio.training.dataset import DatasetReport, check_dataset
from kontext_studio.training.synthetic import make_pairs


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> DatasetReport:
    """Ten 128 px before/after pairs of the invert rule, checked."""
    root = make_pairs(tmp_path_factory.mktemp("pairs") / "invert", 10, rule="invert", size=(128, 128))
    return check_dataset(root, min_side=64)
