"""Run configurations: one fully specified run, and its stable hash."""

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.errors import ConfigError

RESIZE_POLICY = "stretch"

# Pixel metrics at the native resolution of the test images instead of a fixed size.
ORIGINAL = 0


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run's result.

    `levels` are feature hierarchy levels (1..4), `image_size` the square model input in pixels,
    `eval_size` the square size at which pixel metrics are computed (ORIGINAL for the images' own
    resolution), `method_options` every option of the method with defaults filled in.
    """

    method: str
    backbone: str
    weights: str
    dataset: str
    root: str
    category: str
    levels: tuple[int, ...]
    image_size: int = 256
    eval_size: int = 256
    seed: int = 0
    method_options: dict[str, Any] = field(default_factory=dict)
    # Few-shot: this many training images drawn with `seed`; None uses all of train/good.
    train_shots: int | None = None

    @property
    def layers(self) -> str:
        """The hierarchy levels as stored in the database, e.g. "1,2,3"."""
        return ",".join(str(level) for level in self.levels)

    def describe(self) -> str:
        """Return a one-line label for progress output."""
        shots = f" | {self.train_shots}-shot" if self.train_shots else ""
        return (f"{self.method} | {self.weights}/{self.backbone} | {self.dataset}/{self.category} | "
                f"layers {self.layers} | {self.image_size}px | seed {self.seed}{shots}")

    def to_dict(self, weights_identity: str) -> dict[str, Any]:
        """Return the configuration with the weights' content identity, as stored in `runs.config`."""
        values = asdict(self)
        values["levels"] = list(self.levels)
        values["weights_identity"] = weights_identity
        # Images of any aspect ratio are stretched to image_size x image_size (see ImageDataset).
        values["resize_policy"] = RESIZE_POLICY
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "RunConfig":
        """Rebuild a configuration from its stored `runs.config` JSON (the inverse of `to_dict`).

        Raises ConfigError when the stored resize policy differs from this version's, because
        running it now would not reproduce the planned configuration.
        """
        values = dict(values)
        values.pop("weights_identity", None)
        policy = values.pop("resize_policy", RESIZE_POLICY)
        if policy != RESIZE_POLICY:
            raise ConfigError(f"the run was planned with resize policy '{policy}', but this bench uses "
                              f"'{RESIZE_POLICY}'; plan the grid again with this version")
        values["levels"] = tuple(values["levels"])
        return cls(**values)

    def hash(self, weights_identity: str) -> str:
        """Return the SHA-256 of the canonical JSON of the configuration.

        The weights enter by content (file hash or source tag), so re-registering the same file
        under the same name keeps the hash, and a retrained checkpoint changes it.
        """
        canonical = json.dumps(self.to_dict(weights_identity), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()
