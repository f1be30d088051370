"""bench: anomaly-detection benchmarks over fractal, ImageNet and random backbone weights."""

__version__ = "0.1.0"
