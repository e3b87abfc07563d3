"""Point sampling for the mask losses and the matcher (PointRend helpers, spec §3.2–3.3).

Points are continuous coordinates in [0, 1]² written as (x, y): (0, 0) is the top-left corner of the
top-left pixel and (1, 1) the bottom-right corner of the bottom-right pixel. Features are read with
``grid_sample(2p − 1, bilinear, align_corners=False)``, the convention of detectron2's ``point_sample``
(D: projects/PointRend/point_rend/point_features.py:18-40), so a mask at 1/4 resolution and a target at full
resolution sampled at the same points look at the same place of the image. Out-of-range samples read zeros.

Random draws take an optional ``torch.Generator`` so that a loss evaluation can be replayed exactly. The
points are drawn on the generator's device and moved to the data's device; with no generator they are drawn
on the data's device with the global RNG (the official behaviour).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


def rand_points(
    batch: int,
    num_points: int,
    *,
    device: torch.device | str,
    dtype: torch.dtype = torch.float32,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Uniform random (x, y) points in [0, 1)². Returns (batch, num_points, 2)."""
    if generator is None:
        return torch.rand(batch, num_points, 2, device=device, dtype=dtype)
    points = torch.rand(batch, num_points, 2, generator=generator, device=generator.device, dtype=dtype)
    return points.to(device)


def point_sample(input: Tensor, point_coords: Tensor) -> Tensor:
    """Bilinearly sample ``input`` at normalised points.

    Args:
        input: (N, C, H, W) feature map.
        point_coords: (N, P, 2) points in [0, 1]² as (x, y), or (N, Hg, Wg, 2) for a grid of points.

    Returns:
        (N, C, P) for (N, P, 2) points, (N, C, Hg, Wg) for a grid.
    """
    if point_coords.dim() == 3:
        grid = point_coords.unsqueeze(2).to(input.dtype)  # (N, P, 1, 2)
        out = F.grid_sample(input, 2.0 * grid - 1.0, mode="bilinear", align_corners=False)  # (N, C, P, 1)
        return out.squeeze(3)  # (N, C, P)
    if point_coords.dim() == 4:
        grid = point_coords.to(input.dtype)
        return F.grid_sample(input, 2.0 * grid - 1.0, mode="bilinear", align_corners=False)
    raise ValueError(
        f"point_coords must be (N, P, 2) or (N, Hg, Wg, 2), got shape {tuple(point_coords.shape)}"
    )


def calculate_uncertainty(logits: Tensor) -> Tensor:
    """Uncertainty of a binary mask logit: −|logit| (highest where the logit is closest to 0).

    Args:
        logits: (N, 1, ...) class-agnostic mask logits.

    Returns:
        Tensor of the same shape.
    """
    if logits.shape[1] != 1:
        raise ValueError(f"expected class-agnostic logits with one channel, got shape {tuple(logits.shape)}")
    return -torch.abs(logits)


def get_uncertain_point_coords_with_randomness(
    coarse_logits: Tensor,
    uncertainty_func: Callable[[Tensor], Tensor],
    num_points: int,
    oversample_ratio: float = 3,
    importance_sample_ratio: float = 0.75,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """PointRend importance sampling (detectron2 semantics, spec §3.3).

    1. Draw ``int(num_points · oversample_ratio)`` uniform points per mask.
    2. Score them with ``uncertainty_func`` applied to the bilinearly sampled logits.
    3. Keep the ``int(importance_sample_ratio · num_points)`` most uncertain ones (``torch.topk``).
    4. Append ``num_points`` minus that many fresh uniform points.

    Uncertainty is computed on the sampled logits, not on the map: interpolating the logits first and taking
    −|·| afterwards differs from sampling −|logits| where the sign changes between pixels.

    Args:
        coarse_logits: (N, 1, H, W) mask logits (or (N, C, H, W) when ``uncertainty_func`` reduces C to 1).
        uncertainty_func: maps sampled logits (N, C, P) to uncertainties (N, 1, P).
        num_points: points to return per mask.
        oversample_ratio: ≥ 1.
        importance_sample_ratio: in [0, 1].
        generator: optional RNG for both random draws.

    Returns:
        (N, num_points, 2) points in [0, 1]² as (x, y), on ``coarse_logits.device``.
    """
    if oversample_ratio < 1:
        raise ValueError(f"oversample_ratio must be >= 1, got {oversample_ratio}")
    if not 0 <= importance_sample_ratio <= 1:
        raise ValueError(f"importance_sample_ratio must be in [0, 1], got {importance_sample_ratio}")
    num_masks = coarse_logits.shape[0]
    device = coarse_logits.device
    num_sampled = int(num_points * oversample_ratio)
    point_coords = rand_points(num_masks, num_sampled, device=device, generator=generator)  # (N, P·r, 2)
    point_logits = point_sample(coarse_logits, point_coords)  # (N, C, P·r)
    point_uncertainties = uncertainty_func(point_logits)  # (N, 1, P·r)
    num_uncertain = int(importance_sample_ratio * num_points)
    num_random = num_points - num_uncertain
    idx = torch.topk(point_uncertainties[:, 0, :], k=num_uncertain, dim=1).indices  # (N, P_u)
    point_coords = torch.gather(point_coords, 1, idx.unsqueeze(-1).expand(-1, -1, 2))  # (N, P_u, 2)
    if num_random > 0:
        fresh = rand_points(num_masks, num_random, device=device, generator=generator)  # (N, P_r, 2)
        point_coords = torch.cat([point_coords, fresh], dim=1)  # (N, num_points, 2)
    return point_coords
