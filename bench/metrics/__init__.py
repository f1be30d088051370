"""Anomaly-detection metrics computed from raw image scores and raw anomaly maps.

Every threshold metric sweeps all distinct scores from one sort, so a 67 M-pixel test set
takes seconds. An undefined metric raises UndefinedMetricError, which compute_metrics turns
into a MetricValue with value None and the reason.
"""

from bench.metrics.pro import aupro
from bench.metrics.curves import auroc, f1_max
from bench.metrics.summary import METRIC_NAMES, MetricValue, compute_metrics
from bench.metrics.validation import UndefinedMetricError

__all__ = [
    "METRIC_NAMES",
    "MetricValue",
    "UndefinedMetricError",
    "aupro",
    "auroc",
    "compute_metrics",
    "f1_max",
]
