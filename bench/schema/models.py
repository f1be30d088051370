"""SQLAlchemy models of the results database: weights, runs and their metrics.

Every table and column is described in `docs/schema.md`; keep the two in step.
"""

from datetime import datetime

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.sql.expression import false
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    pass


class Weights(Base):
    """A named set of backbone weights: where they came from and how inputs must be normalised."""

    __tablename__ = "weights"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), index=True)
    arch: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(256))
    path: Mapped[str | None] = mapped_column(Text)
    sha256: Mapped[str | None] = mapped_column(String(64))
    mean: Mapped[list[float]] = mapped_column(JSON)
    std: Mapped[list[float]] = mapped_column(JSON)
    meta: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime)


class Run(Base):
    """One run of one method on one category with one configuration, keyed by `config_hash`."""

    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    config_hash: Mapped[str] = mapped_column(String(64), unique=True)
    config: Mapped[dict] = mapped_column(JSON)

    method: Mapped[str] = mapped_column(String(64), index=True)
    method_options: Mapped[dict] = mapped_column(JSON)
    backbone: Mapped[str] = mapped_column(String(64))
    weights_name: Mapped[str] = mapped_column(String(128))
    weights_id: Mapped[int | None] = mapped_column(ForeignKey("weights.id"))
    dataset: Mapped[str] = mapped_column(String(64), index=True)
    root: Mapped[str] = mapped_column(Text)
    category: Mapped[str] = mapped_column(String(128))
    layers: Mapped[str] = mapped_column(String(32))
    image_size: Mapped[int] = mapped_column(Integer)
    seed: Mapped[int] = mapped_column(Integer)
    # Number of training images used (few-shot); NULL means all of train/good.
    train_shots: Mapped[int | None] = mapped_column(Integer)
    # Whether the method changed the backbone's weights while fitting (CutPaste does).
    backbone_fine_tuned: Mapped[bool] = mapped_column(Boolean, server_default=false())

    status: Mapped[str] = mapped_column(String(16), index=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime)
    wall_time_s: Mapped[float | None] = mapped_column(Float)
    peak_memory_mb: Mapped[float | None] = mapped_column(Float)
    host: Mapped[str | None] = mapped_column(String(256))
    versions: Mapped[dict] = mapped_column(JSON, default=dict)
    git_revision: Mapped[str | None] = mapped_column(String(64))
    log_path: Mapped[str | None] = mapped_column(Text)
    # float16 anomaly maps at the evaluation resolution, with the test image paths (.npz).
    maps_path: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    # The worker that holds a running row and when it last reported, so dead workers can be detected.
    pid: Mapped[int | None] = mapped_column(Integer)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime)
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")

    metrics: Mapped[list["Metric"]] = relationship(
        back_populates="run", cascade="all, delete-orphan", passive_deletes=True
    )


class Metric(Base):
    """One metric of one run; `value` is NULL when the metric is undefined, with the reason."""

    __tablename__ = "metrics"
    __table_args__ = (UniqueConstraint("run_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    value: Mapped[float | None] = mapped_column(Float)
    null_reason: Mapped[str | None] = mapped_column(Text)
    resolution: Mapped[str | None] = mapped_column(String(32))

    run: Mapped[Run] = relationship(back_populates="metrics")
