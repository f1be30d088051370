"""Grids of runs: the axes and fixed options, their validation, expansion and planning.

`bench run` builds a GridSpec from its options and `bench sweep` from a TOML grid file; both
expand it with the same code, so a grid means the same thing in either form.
"""

import difflib
import itertools
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from bench.errors import ConfigError
from bench.runners.config import ORIGINAL, RunConfig

# Axes of a grid in the order of expansion; every combination of their values is one run.
AXES = ("method", "backbone", "weights", "category", "layers", "seed")
DEFAULT_BACKBONE = "wide_resnet50_2"


@dataclass(frozen=True)
class GridSpec:
    """A grid as the user wrote it: axis values as lists, fixed options as scalars.

    `layers` None means each method's own default levels. `eval_size` is "" for the image size,
    "original" or a size in pixels. `options` are `key=value` or `method.key=value` texts.
    `source` names where the grid came from, for error messages.
    """

    method: list[str]
    weights: list[str]
    root: Path
    category: list[str]
    backbone: list[str] = field(default_factory=lambda: [DEFAULT_BACKBONE])
    dataset: str = "mvtec"
    layers: list[str] | None = None
    seed: list[int] = field(default_factory=lambda: [0])
    image_size: int = 256
    eval_size: str = ""
    options: list[str] = field(default_factory=list)
    train_shots: int | None = None
    batch_size: int = 8
    save_maps: bool = True
    source: str = "command line"

    @property
    def from_file(self) -> bool:
        """Whether the grid came from a grid file, so that error messages name its keys instead of options."""
        return self.source != "command line"


@dataclass(frozen=True)
class PlannedRun:
    """A configuration with its resolved weights and hash, ready to become a `runs` row."""

    config: RunConfig
    config_hash: str
    weights_identity: str
    weights_id: int | None
    fine_tunes_backbone: bool

    def pending_row(self) -> dict[str, Any]:
        """Return the column values of the row that queues this run."""
        config = self.config
        return {
            "config_hash": self.config_hash,
            "config": config.to_dict(self.weights_identity),
            "method": config.method,
            "method_options": config.method_options,
            "backbone": config.backbone,
            "weights_name": config.weights,
            "weights_id": self.weights_id,
            "dataset": config.dataset,
            "root": config.root,
            "category": config.category,
            "layers": config.layers,
            "image_size": config.image_size,
            "seed": config.seed,
            "train_shots": config.train_shots,
            "backbone_fine_tuned": self.fine_tunes_backbone,
            "status": "pending",
            "versions": {},
            "attempts": 0,
        }


def parse_method_options(texts: list[str], methods: list[str], grid_file: str | None = None) -> dict[str, dict[str, object]]:
    """Split `key=value` and `method.key=value` texts into resolved options per method.

    `grid_file` is the grid file the texts came from, so that errors name its tables instead of --option.
    """
    from bench.methods import get_method

    given: dict[str, dict[str, str]] = {method: {} for method in methods}
    for text in texts:
        key, separator, value = text.partition("=")
        if not separator or not key:
            raise ConfigError(f"invalid --option '{text}'; write key=value or method.key=value, e.g. coreset_ratio=0.01")
        scope, dot, name = key.rpartition(".")
        if dot:
            if scope not in given:
                if grid_file:
                    raise ConfigError(f"{grid_file}: table [options.{scope}] names method '{scope}', which is not in "
                                      f"key 'method' ({', '.join(methods)})")
                raise ConfigError(f"--option '{text}' names method '{scope}', which is not among --method {', '.join(methods)}")
            given[scope][name] = value
            continue
        targets = [method for method in methods if name in get_method(method).options]
        if not targets:
            where = f"{grid_file}: table [options]: " if grid_file else ""
            raise ConfigError(f"{where}unknown option '{name}' for {', '.join(methods)}; see `bench methods show NAME`")
        for method in targets:
            given[method][name] = value
    return {method: get_method(method).resolve_options(options) for method, options in given.items()}


def _eval_size(spec: GridSpec) -> int:
    text = str(spec.eval_size) if spec.eval_size is not None else ""
    if text == "":
        return spec.image_size
    if text == "original":
        return ORIGINAL
    if text.isdigit() and int(text) >= 16:
        return int(text)
    raise ConfigError(f"invalid evaluation size '{text}'; pass a size in pixels (>= 16) or 'original'")


def expand(spec: GridSpec) -> list[RunConfig]:
    """Validate every axis and fixed option of `spec` and return its configurations in grid order.

    Datasets are loaded (and so validated) here, before any database is opened, so a typo never
    costs a half-finished grid. Repeated axis values count once.
    """
    try:
        return _expand(spec)
    except ConfigError as error:
        # Errors from shared validation code get the file's path too, so every problem in a grid file names it.
        if spec.from_file and not str(error).startswith(spec.source):
            raise ConfigError(f"{spec.source}: {error}") from None
        raise


def _expand(spec: GridSpec) -> list[RunConfig]:
    from bench.data import list_dataset_categories, load_dataset
    from bench.methods import get_method
    from bench.weights.architectures import get_architecture, parse_levels

    if spec.image_size < 32:
        raise ConfigError(f"invalid image size {spec.image_size}; pass at least 32 pixels")
    if spec.batch_size < 1:
        raise ConfigError(f"invalid batch size {spec.batch_size}; pass at least 1")
    if spec.train_shots is not None and spec.train_shots < 1:
        raise ConfigError(f"invalid train shots {spec.train_shots}; pass at least 1 or leave it unset")

    methods = list(dict.fromkeys(spec.method))
    backbones = list(dict.fromkeys(spec.backbone))
    weights = list(dict.fromkeys(spec.weights))
    seeds = list(dict.fromkeys(spec.seed))
    for name in methods:
        get_method(name)
    for name in backbones:
        get_architecture(name)
    options = parse_method_options(spec.options, methods, spec.source if spec.from_file else None)
    evaluation = _eval_size(spec)
    label = "value in key 'layers'" if spec.from_file else "--layers"
    level_sets = [tuple(parse_levels(text, label)) for text in dict.fromkeys(spec.layers)] if spec.layers else None
    # A backbone or level set that a method cannot take fails here, before any run is queued.
    for method_name in methods:
        method = get_method(method_name)
        for backbone_name in backbones:
            for levels in level_sets or [tuple(method.default_levels)]:
                method.check_configuration(get_architecture(backbone_name), list(levels))

    root = Path(spec.root).expanduser().resolve()
    categories: list[str] = []
    for name in spec.category:
        categories += list_dataset_categories(spec.dataset, root) if name == "all" else [name]
    categories = list(dict.fromkeys(categories))
    if not categories:
        raise ConfigError(f"no categories found in {root}; check the dataset root")
    for name in categories:
        loaded = load_dataset(spec.dataset, root, name)
        if spec.train_shots is not None and spec.train_shots > len(loaded.train):
            raise ConfigError(f"invalid train shots {spec.train_shots}; {name} has {len(loaded.train)} training images, "
                              f"so pass 1 to {len(loaded.train)}")

    configs = []
    for method_name, backbone_name, weights_name, category_name in itertools.product(
        methods, backbones, weights, categories
    ):
        for levels in level_sets or [tuple(get_method(method_name).default_levels)]:
            for seed in seeds:
                configs.append(RunConfig(
                    method=method_name, backbone=backbone_name, weights=weights_name, dataset=spec.dataset,
                    root=str(root), category=category_name, levels=levels, image_size=spec.image_size,
                    eval_size=evaluation, seed=seed, method_options=options[method_name],
                    train_shots=spec.train_shots,
                ))

    # Level sets such as "1,2" and "2,1" parse to the same configuration; keep the first.
    unique: dict[str, RunConfig] = {}
    for config in configs:
        unique.setdefault(json.dumps(config.to_dict(""), sort_keys=True), config)
    return list(unique.values())


def plan(session: Session, configs: list[RunConfig], fetch_hub_weights: bool = True) -> list[PlannedRun]:
    """Resolve the weights of every configuration and compute its hash.

    Weights are resolved once per (name, backbone). Hub weights are fetched now when
    `fetch_hub_weights`, so that an offline machine fails before the grid starts.
    """
    from bench.methods import get_method
    from bench.weights.loading import backbone_state_dict
    from bench.weights.registry import resolve_weights

    resolved = {}
    for config in configs:
        key = (config.weights, config.backbone)
        if key not in resolved:
            record = resolve_weights(session, config.weights, config.backbone)
            if fetch_hub_weights and record.source.startswith("timm:"):
                backbone_state_dict(record)
            resolved[key] = record

    planned = []
    for config in configs:
        record = resolved[(config.weights, config.backbone)]
        planned.append(PlannedRun(
            config=config,
            config_hash=config.hash(record.identity),
            weights_identity=record.identity,
            weights_id=record.id,
            fine_tunes_backbone=get_method(config.method).fine_tunes_backbone,
        ))
    return planned


# Grid file keys: axes take a list (or one scalar value), fixed options a scalar.
_AXIS_KEYS = {"method": str, "backbone": str, "weights": str, "category": str, "layers": str, "seed": int}
_SCALAR_KEYS = {"dataset": str, "root": str, "image_size": int, "eval_size": (str, int),
                "train_shots": int, "batch_size": int, "save_maps": bool}
_REQUIRED_KEYS = ("method", "weights", "root", "category")
_TABLE_KEYS = ("options",)


def _type_name(value: Any) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "a boolean", list: "a list", dict: "a table"}
    return names.get(type(value), type(value).__name__)


def _is_type(value: Any, expected: type | tuple[type, ...]) -> bool:
    # TOML booleans are Python ints too; an integer key must not accept true/false.
    if isinstance(value, bool):
        return expected is bool or (isinstance(expected, tuple) and bool in expected)
    return isinstance(value, expected)


def _axis_values(path: Path, key: str, value: Any) -> list:
    expected = _AXIS_KEYS[key]
    values = value if isinstance(value, list) else [value]
    if not values:
        raise ConfigError(f"{path}: key '{key}' is an empty list; give at least one value")
    parsed = []
    for item in values:
        if key == "layers" and isinstance(item, list) and all(_is_type(level, int) for level in item):
            # layers = [[1, 2], [2, 3]] is the same as layers = ["1,2", "2,3"].
            item = ",".join(str(level) for level in item)
        if key == "layers" and _is_type(item, int):
            item = str(item)
        if not _is_type(item, expected):
            expected_items = "strings" if expected is str else "integers"
            raise ConfigError(f"{path}: key '{key}' must be a list of {expected_items}, but it contains "
                              f"{_type_name(item)} ({item!r})")
        parsed.append(item)
    return parsed


def _option_texts(path: Path, table: Any) -> list[str]:
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: 'options' must be a table such as [options] or [options.patchcore], not {_type_name(table)}")
    texts = []
    for key, value in table.items():
        if isinstance(value, dict):
            texts += [f"{key}.{text}" for text in _option_texts(path, value)]
            continue
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif not isinstance(value, (str, int, float)):
            raise ConfigError(f"{path}: option '{key}' must be a string, number or boolean, not {_type_name(value)}")
        texts.append(f"{key}={value}")
    return texts


def load_grid_file(path: Path) -> GridSpec:
    """Read and type-check a TOML grid file; a relative `root` is taken from the file's folder.

    Every problem raises ConfigError naming the file and the key.
    """
    path = Path(path).expanduser()
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"grid file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read grid file {path}: {error}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: invalid TOML: {error}") from None

    known = [*_AXIS_KEYS, *_SCALAR_KEYS, *_TABLE_KEYS]
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise ConfigError(f"{path}: unknown key '{key}'; {hint}valid keys: {', '.join(known)}")
    for key in _REQUIRED_KEYS:
        if key not in data:
            raise ConfigError(f"{path}: missing key '{key}' (required: {', '.join(_REQUIRED_KEYS)})")

    values: dict[str, Any] = {}
    for key in _AXIS_KEYS:
        if key in data:
            values[key] = _axis_values(path, key, data[key])
    for key, expected in _SCALAR_KEYS.items():
        if key not in data:
            continue
        value = data[key]
        if isinstance(value, list):
            raise ConfigError(f"{path}: key '{key}' must be a single value, not a list; only {', '.join(_AXIS_KEYS)} are axes")
        if not _is_type(value, expected):
            expected_text = "a string or an integer" if isinstance(expected, tuple) else _type_name(expected())
            raise ConfigError(f"{path}: key '{key}' must be {expected_text}, not {_type_name(value)} ({value!r})")
        values[key] = value
    if "options" in data:
        values["options"] = _option_texts(path, data["options"])

    root = Path(values.pop("root")).expanduser()
    if not root.is_absolute():
        root = path.resolve().parent / root
    if "eval_size" in values:
        values["eval_size"] = str(values["eval_size"])
    return GridSpec(root=root, source=str(path), **values)
