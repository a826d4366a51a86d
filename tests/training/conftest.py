"""Fixtures for the training-environment tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from ichseg.preprocess import InputSpec


@pytest.fixture(autouse=True)
def seeded_weights() -> None:
    """Keras' initial weights (and TensorFlow's own randomness) fixed for every test, so that
    tolerances checked on a freshly built model hold on every run, not on most."""
    import tensorflow as tf

    tf.keras.utils.set_random_seed(0)


@pytest.fixture(scope="session")
def tiny_training_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic training set at 64 px (train and val rows), saved as .npz."""
    from training.training_set import _Rows, add_synthetic

    rows = _Rows()
    add_synthetic(rows, 40, InputSpec(size=64), seed=5, val_fraction=0.25)
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    rows.build().save(path)
    return path
