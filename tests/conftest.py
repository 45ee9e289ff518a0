"""Shared fixtures: small synthetic CVAT exports, generated once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from kpnb.synthetic import generate


@pytest.fixture(scope="session")
def synthetic_export(tmp_path_factory) -> Path:
    """A 40-image skeleton-layout export (folder) with seed 0."""
    return generate(tmp_path_factory.mktemp("syn") / "skeleton", n_images=40, seed=0)


@pytest.fixture(scope="session")
def points_export(tmp_path_factory) -> Path:
    """A 12-image points-layout export (folder) with seed 0."""
    return generate(tmp_path_factory.mktemp("syn") / "points", 12, 0, layout="points")
