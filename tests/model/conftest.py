"""Fixtures for model tests (helpers live in model_helpers.py)."""

import pytest

from pointcopy.presets import build_tiny_processor, tiny_model


@pytest.fixture(scope="session")
def processor():
    return build_tiny_processor()


@pytest.fixture
def model():
    return tiny_model(seed=0)
