"""IFS fractal data: samplers, a numba renderer, the published recipes and a torch Dataset.

Typical use:

    systems = sample_sigma_systems(1000, seed=0)
    dataset = FractalDataset(systems, recipe="single", classes=1000, per_class=1000, size=256, seed=0)
    image, target = dataset[0]          # float32 (3, 256, 256) in [0, 1], int class
"""

from bench.fractals.export import ExportResult, export_images
from bench.fractals.recipes import RECIPES, FractalDataset, FractalImages, RecipeSpec, make_recipe
from bench.fractals.render import (
    RenderConfig,
    image_seed,
    render_batch,
    render_composite_image,
    render_coverage,
    render_density,
    render_image,
)
from bench.fractals.systems import (
    SystemSet,
    load_systems,
    sample_fractaldb_systems,
    sample_sigma_systems,
    save_systems,
)

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
