"""The adapter contract between the runner and an anomaly-detection method.

The runner knows only this interface: it builds an adapter, loads weights into
`backbone_module()`, feeds normalised training images to `fit` and test images to `predict`.
"""

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from bench.data.loading import TrainData
from bench.errors import ConfigError
from bench.weights.architectures import Architecture


class Phases(Protocol):
    """Progress reporting handed to adapters: a bar for iterations, a spinner for one step."""

    def track(self, batches: Iterable[torch.Tensor], description: str, total: int) -> Iterator[torch.Tensor]: ...

    def step(self, description: str) -> AbstractContextManager[None]: ...


@dataclass(frozen=True)
class Option:
    """A method option settable with `--option key=value`: its type, default and meaning."""

    type: type
    default: Any
    help: str

    def parse(self, key: str, text: str) -> Any:
        """Convert the command-line text of option `key` to this option's type."""
        try:
            if self.type is bool:
                if text.lower() not in {"true", "false", "1", "0"}:
                    raise ValueError(text)
                return text.lower() in {"true", "1"}
            return self.type(text)
        except ValueError:
            raise ConfigError(f"invalid value '{text}' for option {key}; expected {self.type.__name__}") from None


def scores_and_maps(output: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Return image scores (B,) and anomaly maps (B, H, W) from anomalib's InferenceBatch output."""
    return output.pred_score.reshape(-1), output.anomaly_map[:, 0]


class MethodAdapter(ABC):
    """One anomaly-detection method behind the runner's interface.

    Subclasses set `name`, `default_levels` (feature hierarchy levels 1..4) and `options`.
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    default_levels: ClassVar[tuple[int, ...]]
    options: ClassVar[dict[str, Option]] = {}

    def __init__(self, architecture: Architecture, levels: list[int], options: dict[str, Any]) -> None:
        self.check_configuration(architecture, levels)
        self.check_options(options)
        self.architecture = architecture
        self.levels = levels
        self.layer_names = architecture.layer_names(levels)
        self.config = options

    @classmethod
    def resolve_options(cls, given: dict[str, str]) -> dict[str, Any]:
        """Return every option of the method with its default or its given value, type-checked."""
        unknown = sorted(set(given) - set(cls.options))
        if unknown:
            known = ", ".join(sorted(cls.options)) or "none"
            raise ConfigError(f"unknown option '{unknown[0]}' for method {cls.name}; its options: {known}")
        resolved = {key: option.parse(key, given[key]) if key in given else option.default
                    for key, option in cls.options.items()}
        cls.check_options(resolved)
        return resolved

    @classmethod
    def check_options(cls, config: dict[str, Any]) -> None:
        """Raise ConfigError for an option value outside the method's range, e.g. a coreset ratio of 2.

        `resolve_options` calls it, so a grid rejects such a value before its first run starts.
        """

    @abstractmethod
    def backbone_module(self) -> nn.Module:
        """Return the timm feature extractor into which backbone weights are loaded."""

    # Whether `fit` changes the backbone's weights (CutPaste fine-tunes it); stored with the run.
    fine_tunes_backbone: ClassVar[bool] = False

    # Bench backbone names the method accepts; None accepts every registered architecture.
    supported_backbones: ClassVar[tuple[str, ...] | None] = None

    # Hierarchy levels the method's architecture is built for; None accepts any levels.
    fixed_levels: ClassVar[tuple[int, ...] | None] = None

    # Whether `predict` returns real anomaly maps. A method without localisation (PANDA) returns
    # maps filled with its image score, whose pixel metrics mean nothing.
    produces_maps: ClassVar[bool] = True

    @classmethod
    def check_configuration(cls, architecture: Architecture, levels: list[int]) -> None:
        """Raise ConfigError when the method cannot run on `architecture` or on hierarchy `levels`.

        Cheap (builds nothing), so a caller can check a whole grid before the first run starts.
        """
        if cls.supported_backbones is not None and architecture.name not in cls.supported_backbones:
            raise ConfigError(f"method {cls.name} does not support backbone {architecture.name}; "
                              f"supported backbones: {', '.join(cls.supported_backbones)}")
        if cls.fixed_levels is not None and tuple(sorted(levels)) != cls.fixed_levels:
            shown = ",".join(map(str, cls.fixed_levels))
            raise ConfigError(f"method {cls.name} is built for layers {shown}, got {','.join(map(str, sorted(levels)))}; "
                              f"pass --layers {shown} or leave --layers out")

    @abstractmethod
    def fit(self, train: TrainData, phases: Phases) -> None:
        """Fit the method on the training images (all normal)."""

    @abstractmethod
    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Score normalised test images (B, 3, H, W): image scores (B,) and raw anomaly maps (B, H, W)."""
