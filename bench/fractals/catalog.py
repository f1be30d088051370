"""Names and default sizes of the fractal dataset recipes, importable without torch or numba."""

RECIPES = ("single", "multi-system", "ofdb", "multi-instance")

# Per-recipe defaults: images per class (ofdb renders one fixed instance per class).
DEFAULT_PER_CLASS = {"single": 1000, "multi-system": 1000, "ofdb": 1, "multi-instance": 1000}
DEFAULT_CLASSES = 1000
