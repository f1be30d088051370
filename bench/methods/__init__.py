"""Anomaly-detection methods, one adapter per method, looked up by name."""

from bench.errors import ConfigError
from bench.methods.base import MethodAdapter
from bench.methods.cflow import Cflow
from bench.methods.cutpaste import Cutpaste
from bench.methods.fastflow import Fastflow
from bench.methods.padim import Padim
from bench.methods.panda import Panda
from bench.methods.patchcore import Patchcore
from bench.methods.reverse_distillation import ReverseDistillation
from bench.methods.stfpm import Stfpm

METHODS: dict[str, type[MethodAdapter]] = {
    adapter.name: adapter
    for adapter in (Padim, Patchcore, Fastflow, Cflow, ReverseDistillation, Stfpm, Cutpaste, Panda)
}


def get_method(name: str) -> type[MethodAdapter]:
    """Look up a method adapter by name; an unknown name raises ConfigError listing the known ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(f"unknown method '{name}'; available methods: {', '.join(sorted(METHODS))}") from None
