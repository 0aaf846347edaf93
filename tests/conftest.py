"""Shared fixtures: one real digits CNN, trained and exported once per test session."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class DigitsBundle:
    root: Path  # the signed bundle directory (treat as read-only; copy it to tamper)
    public_key: Path  # the trusted public key
    private_key: Path


@pytest.fixture(scope="session")
def digits_bundle(tmp_path_factory: pytest.TempPathFactory) -> DigitsBundle:
    from edgefleet.cloud.digits import build_digits_bundle

    workdir = tmp_path_factory.mktemp("digits")
    root, public = build_digits_bundle(workdir, epochs=10)
    return DigitsBundle(root, public, public.with_suffix(".key"))


@pytest.fixture
def bundle_copy(digits_bundle: DigitsBundle, tmp_path: Path) -> Path:
    """A private copy of the digits bundle that a test may damage."""
    return Path(shutil.copytree(digits_bundle.root, tmp_path / "bundle"))


@pytest.fixture(scope="session")
def digits_splits():
    from edgefleet.cloud.digits import load_splits

    return load_splits()
