"""Anomaly-detection methods, one adapter per method, looked up by name.

Adapters load on first use: each one imports torch, timm and anomalib, which takes seconds, and
most `bench` commands need none or one of them. `METHODS` (name -> adapter class) imports all.
"""

import importlib
from typing import TYPE_CHECKING

from bench.errors import ConfigError

if TYPE_CHECKING:
    from bench.methods.base import MethodAdapter

# Method name -> (module, adapter class).
_ADAPTERS = {
    "padim": ("bench.methods.padim", "Padim"),
    "patchcore": ("bench.methods.patchcore", "Patchcore"),
    "fastflow": ("bench.methods.fastflow", "Fastflow"),
    "cflow": ("bench.methods.cflow", "Cflow"),
    "reverse_distillation": ("bench.methods.reverse_distillation", "ReverseDistillation"),
    "stfpm": ("bench.methods.stfpm", "Stfpm"),
    "cutpaste": ("bench.methods.cutpaste", "Cutpaste"),
    "panda": ("bench.methods.panda", "Panda"),
}

METHOD_NAMES = tuple(_ADAPTERS)


def get_method(name: str) -> "type[MethodAdapter]":
    """Import and return the adapter class of method `name`.

    An unknown name raises ConfigError that lists the known ones.
    """
    if name not in _ADAPTERS:
        raise ConfigError(f"unknown method '{name}'; available methods: {', '.join(sorted(_ADAPTERS))}")
    module, adapter = _ADAPTERS[name]
    return getattr(importlib.import_module(module), adapter)


def __getattr__(name: str):
    if name == "METHODS":
        return {method: get_method(method) for method in METHOD_NAMES}
    if name == "MethodAdapter":
        from bench.methods.base import MethodAdapter

        return MethodAdapter
    raise AttributeError(f"module 'bench.methods' has no attribute {name!r}")
