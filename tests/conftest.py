import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    """The shared test data (../shared/data beside the repository, or $DIFF_DATA)."""
    return Path(os.environ.get("DIFF_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = data_root()
    if not root.is_dir():
        pytest.skip(f"shared data folder {root} is absent (set DIFF_DATA to point at it)")
    return root


@pytest.fixture(autouse=True)
def _few_threads():
    torch.set_num_threads(1)  # small tensors: one thread is faster and deterministic
    yield
