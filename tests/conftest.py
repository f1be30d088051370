"""Shared test fixtures: the real MVTec AD data beside the repository, when present, and the
test PostgreSQL server that `make test` starts."""

import os
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from bench.schema.db import engine_url

# An accidental hub download must fail at once instead of retrying for a minute; set before any
# test imports huggingface_hub, which reads it at import time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# The shared data folder sits beside the repository checkout; BENCH_SHARED_DATA overrides it.
SHARED_DATA = Path(
    os.environ.get("BENCH_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)
MVTEC_ROOT = SHARED_DATA / "MVTecAD"
VISA_SPLIT_CSV = SHARED_DATA / "VisA" / "split_csv" / "1cls.csv"

POSTGRES_URL = os.environ.get("BENCH_TEST_POSTGRES_URL")
NO_POSTGRES = "BENCH_TEST_POSTGRES_URL is not set; `make test` starts a PostgreSQL server and sets it"


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


def make_bottle_subset(mvtec_root: Path, out: Path, n_train: int = 12, n_per_defect: int = 3) -> Path:
    """Link a small real subset of `bottle` into `out/bottle` in the MVTec layout; return `out`."""
    source = mvtec_root / "bottle"
    target = out / "bottle"
    (target / "train" / "good").mkdir(parents=True)
    for image in sorted((source / "train" / "good").glob("*.png"))[:n_train]:
        (target / "train" / "good" / image.name).symlink_to(image)
    for defect in ("good", "broken_large", "contamination"):
        (target / "test" / defect).mkdir(parents=True)
        for image in sorted((source / "test" / defect).glob("*.png"))[:n_per_defect]:
            (target / "test" / defect / image.name).symlink_to(image)
            if defect != "good":
                mask = source / "ground_truth" / defect / f"{image.stem}_mask.png"
                (target / "ground_truth" / defect).mkdir(parents=True, exist_ok=True)
                (target / "ground_truth" / defect / mask.name).symlink_to(mask)
    return out


@pytest.fixture
def bottle_subset(mvtec_root: Path, tmp_path: Path) -> Path:
    """A dataset root in tmp_path with 12 training and 9 test images of the real `bottle`."""
    return make_bottle_subset(mvtec_root, tmp_path / "mvtec")


@pytest.fixture
def postgres_url():
    """A new database on the test PostgreSQL server, dropped after the test."""
    if not POSTGRES_URL:
        pytest.skip(NO_POSTGRES)
    name = f"bench_{uuid.uuid4().hex[:12]}"
    admin = create_engine(engine_url(POSTGRES_URL), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    yield make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    admin.dispose()
