"""Shared test fixtures: the real MVTec AD data beside the repository, when present."""

import os
from pathlib import Path

import pytest

# The shared data folder sits beside the repository checkout; BENCH_SHARED_DATA overrides it.
SHARED_DATA = Path(
    os.environ.get("BENCH_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)
MVTEC_ROOT = SHARED_DATA / "MVTecAD"
VISA_SPLIT_CSV = SHARED_DATA / "VisA" / "split_csv" / "1cls.csv"


@pytest.fixture(scope="session")
def mvtec_root() -> Path:
    """Root of the real MVTec AD copy that holds the complete `bottle` category."""
    if not (MVTEC_ROOT / "bottle" / "train" / "good").is_dir():
        pytest.skip(f"real MVTec AD data not found at {MVTEC_ROOT} (set BENCH_SHARED_DATA)")
    return MVTEC_ROOT


@pytest.fixture(scope="session")
def visa_split_csv() -> Path:
    """The real VisA 1cls split file."""
    if not VISA_SPLIT_CSV.is_file():
        pytest.skip(f"VisA split file not found at {VISA_SPLIT_CSV} (set BENCH_SHARED_DATA)")
    return VISA_SPLIT_CSV
