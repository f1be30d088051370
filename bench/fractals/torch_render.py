"""Render IFS fractals with torch, many chains per system, so a GPU can draw its own training data.

The chaos game runs `chains` independent chains per system for `points / chains` steps after a
burn-in, all systems of a batch at once: each step draws one map per chain from the systems'
probabilities (|det A_i|, as on the CPU), applies it, and stores the points. The window is the
bounding box of each system's points, and pixel counts are accumulated with scatter_add_. The
result matches the CPU renderer in distribution, not bit for bit.
"""

from __future__ import annotations

import math

import torch

from bench.fractals.systems import SystemSet


def pack_systems(systems: SystemSet, indices: list[int], device: torch.device | str = "cpu"):
    """Return (matrices, translations, cumulative) for the systems at `indices`, padded to N_max maps.

    matrices: (B, N_max, 2, 2), translations: (B, N_max, 2), cumulative: (B, N_max) cumulative map
    probabilities proportional to |det A_i|; padded maps have probability 0.
    """
    n_max = max(int(systems.offsets[i + 1] - systems.offsets[i]) for i in indices)
    batch = len(indices)
    maps = torch.zeros(batch, n_max, 2, 3, dtype=torch.float64)
    weights = torch.zeros(batch, n_max, dtype=torch.float64)
    for row, index in enumerate(indices):
        system = torch.from_numpy(systems.system(index))
        n = system.shape[0]
        maps[row, :n] = system
        det = system[:, 0, 0] * system[:, 1, 1] - system[:, 0, 1] * system[:, 1, 0]
        weights[row, :n] = det.abs() if float(det.abs().sum()) > 0 else torch.ones(n, dtype=torch.float64)
    cumulative = torch.cumsum(weights / weights.sum(dim=1, keepdim=True), dim=1)
    # Guard the top against rounding so searchsorted never runs past the last real map.
    cumulative[:, -1] = 1.0
    maps = maps.to(device=device, dtype=torch.float32)
    return maps[..., :2], maps[..., 2], cumulative.to(device=device, dtype=torch.float32)


def fixed_points(matrices: torch.Tensor, translations: torch.Tensor) -> torch.Tensor:
    """Return the fixed point of each batch row's first map, shape (B, 2) (origin when singular)."""
    a = torch.eye(2, device=matrices.device) - matrices[:, 0]
    det = a[:, 0, 0] * a[:, 1, 1] - a[:, 0, 1] * a[:, 1, 0]
    b = translations[:, 0]
    x = (a[:, 1, 1] * b[:, 0] - a[:, 0, 1] * b[:, 1]) / det
    y = (a[:, 0, 0] * b[:, 1] - a[:, 1, 0] * b[:, 0]) / det
    point = torch.stack([x, y], dim=1)
    return torch.where((det.abs() > 1e-12)[:, None], point, torch.zeros_like(point))


def chaos_game_torch(
    matrices: torch.Tensor,
    translations: torch.Tensor,
    cumulative: torch.Tensor,
    points: int,
    chains: int = 1024,
    burn_in: int = 20,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Run the chaos game for a batch of systems; returns points of shape (B, steps * chains, 2).

    Every chain starts at the fixed point of w_1 and discards `burn_in` steps; steps =
    ceil(points / chains). A `generator` must live on the tensors' device.
    """
    batch, n_max = cumulative.shape
    device = matrices.device
    steps = math.ceil(points / chains)
    state = fixed_points(matrices, translations)[:, None, :].expand(batch, chains, 2).contiguous()
    rows = torch.arange(batch, device=device)[:, None].expand(batch, chains)
    trace = torch.empty(batch, steps, chains, 2, dtype=state.dtype, device=device)
    for step in range(-burn_in, steps):
        draws = torch.rand(batch, chains, device=device, generator=generator)
        choice = torch.searchsorted(cumulative, draws, right=True).clamp_(max=n_max - 1)
        a = matrices[rows, choice]
        b = translations[rows, choice]
        state = torch.einsum("bcij,bcj->bci", a, state) + b
        if step >= 0:
            trace[:, step] = state
    return trace.reshape(batch, steps * chains, 2)


def density_torch(trace: torch.Tensor, size: int) -> torch.Tensor:
    """Bin points (B, P, 2) into per-pixel counts (B, size, size) over each row's bounding box.

    Column j contains x in [x_min + j / scale, x_min + (j + 1) / scale) with
    scale = (size - 1) / extent, as on the CPU. Rows are binned from y the same way.
    """
    batch = trace.shape[0]
    low = trace.amin(dim=1, keepdim=True)
    high = trace.amax(dim=1, keepdim=True)
    extent = torch.where(high > low, high - low, torch.ones_like(high))
    pixel = ((trace - low) * ((size - 1) / extent)).floor().long().clamp_(0, size - 1)
    flat = pixel[..., 1] * size + pixel[..., 0] + torch.arange(batch, device=trace.device)[:, None] * size * size
    counts = torch.zeros(batch * size * size, dtype=torch.int32, device=trace.device)
    counts.scatter_add_(0, flat.reshape(-1), torch.ones_like(flat.reshape(-1), dtype=torch.int32))
    return counts.reshape(batch, size, size)


def render_density_torch(
    systems: SystemSet,
    indices: list[int],
    size: int = 256,
    points: int = 100_000,
    chains: int = 1024,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Return int32 point counts (B, size, size) of the systems at `indices`, window = bounding box."""
    matrices, translations, cumulative = pack_systems(systems, indices, device)
    trace = chaos_game_torch(matrices, translations, cumulative, points, chains, generator=generator)
    return density_torch(trace, size)


def hsv_to_rgb_torch(hue: torch.Tensor, saturation: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Convert HSV tensors of equal shape (values in [0, 1]) to RGB with a new last axis of 3."""
    channels = []
    for offset in (5.0, 3.0, 1.0):
        k = torch.remainder(offset + hue * 6.0, 6.0)
        ramp = torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0)
        channels.append(value - value * saturation * ramp)
    return torch.stack(channels, dim=-1)


def colour_density_torch(
    density: torch.Tensor,
    saturation: tuple[float, float] = (0.3, 1.0),
    value: tuple[float, float] = (0.5, 1.0),
    flips: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Colour counts (B, S, S) by hue = (density / max + U(0, 1)) mod 1 on black; returns (B, 3, S, S).

    Saturation and value are drawn per image from the given ranges, as on the CPU; with flips each
    image is transposed and flipped at random. The plasma background, stamp and blur of the CPU
    pipeline are not applied here.
    """
    batch = density.shape[0]
    device = density.device

    def draw(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(batch, 1, 1, device=device, generator=generator)

    level = density.float() / density.flatten(1).amax(dim=1).clamp(min=1)[:, None, None]
    hue = torch.remainder(level + draw(0.0, 1.0), 1.0)
    rgb = hsv_to_rgb_torch(hue, draw(*saturation).expand_as(hue), draw(*value).expand_as(hue))
    rgb = rgb * (density > 0)[..., None]
    images = rgb.permute(0, 3, 1, 2).contiguous()
    if flips:
        # Same order as the CPU pipeline: transpose, then flip rows, then flip columns.
        choices = (torch.rand(batch, 3, device=device, generator=generator) < 0.5)[:, :, None, None, None]
        images = torch.where(choices[:, 0], images.transpose(2, 3), images)
        images = torch.where(choices[:, 1], images.flip(2), images)
        images = torch.where(choices[:, 2], images.flip(3), images)
    return images
