"""Random small affine distortions of digit images, one drawn for each image, so the prior sees new code grids."""
import math

import torch
import torch.nn.functional as F
from torch import Tensor

MAX_DEGREES = 10.0  # rotation, either way
MAX_SCALE = 0.1  # zoom in or out by up to 10%
MAX_SHIFT_PIXELS = 2.0  # each way, of a 28-pixel image


def distort(images: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """uint8 images (B, H, W) -> the same images, each rotated, scaled and shifted by its own uniform random draw
    within the bounds above, resampled bilinearly (what falls outside the image is black)."""
    count, height, width = images.shape
    draws = torch.rand(count, 4, generator=generator, device="cpu").to(images.device) * 2 - 1  # (B, 4) in [-1, 1)
    angle = draws[:, 0] * math.radians(MAX_DEGREES)
    scale = 1 + draws[:, 1] * MAX_SCALE
    # affine_grid maps output to input coordinates in [-1, 1]: a shift of s pixels is 2 s / size.
    shift = draws[:, 2:] * MAX_SHIFT_PIXELS * 2 / torch.tensor([width, height], device=images.device)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, [count, 1, height, width], align_corners=False)  # (B, H, W, 2)
    resampled = F.grid_sample(images[:, None].float(), grid, mode="bilinear", padding_mode="zeros",
                              align_corners=False)  # (B, 1, H, W)
    return resampled[:, 0].round().clamp(0, 255).to(torch.uint8)
