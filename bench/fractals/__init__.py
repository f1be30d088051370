"""IFS fractal data: samplers, a numba renderer, the published recipes and a torch Dataset.

Typical use:

    systems = sample_sigma_systems(1000, seed=0)
    dataset = FractalDataset(systems, recipe="single", classes=1000, per_class=1000, size=256, seed=0)
    image, target = dataset[0]          # float32 (3, 256, 256) in [0, 1], int class
"""

import importlib

# Public name -> submodule. Submodules load on first use, because recipes and render import
# torch and numba, which would slow every `bench` command that needs neither.
_EXPORTS = {
    "ExportResult": "export", "export_images": "export",
    "RECIPES": "catalog", "FractalDataset": "recipes", "FractalImages": "recipes", "RecipeSpec": "recipes",
    "make_recipe": "recipes",
    "RenderConfig": "render", "image_seed": "render", "render_batch": "render",
    "render_composite_image": "render", "render_coverage": "render", "render_density": "render",
    "render_image": "render",
    "SystemSet": "systems", "load_systems": "systems", "sample_fractaldb_systems": "systems",
    "sample_sigma_systems": "systems", "save_systems": "systems",
}

__all__ = [
    "RECIPES",
    "ExportResult",
    "FractalDataset",
    "FractalImages",
    "RecipeSpec",
    "RenderConfig",
    "SystemSet",
    "export_images",
    "image_seed",
    "load_systems",
    "make_recipe",
    "render_batch",
    "render_composite_image",
    "render_coverage",
    "render_density",
    "render_image",
    "sample_fractaldb_systems",
    "sample_sigma_systems",
    "save_systems",
]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'bench.fractals' has no attribute {name!r}")
    return getattr(importlib.import_module(f"bench.fractals.{_EXPORTS[name]}"), name)
