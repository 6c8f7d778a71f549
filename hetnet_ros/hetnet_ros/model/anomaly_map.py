"""Anomaly map from per-level cosine distances, and the Gaussian smoothing it uses."""

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hetnet_ros.model.loss import cosine_distance_map


def gaussian_kernel1d(sigma: float) -> Tensor:
    """Return the normalised 1-D Gaussian kernel of size 2 * ceil(4 * sigma) + 1, shape (K,).

    The kernel sums to 1, so smoothing preserves a constant map.
    """
    if sigma <= 0:
        raise ValueError(f'sigma must be > 0, got {sigma}')
    radius = math.ceil(4 * sigma)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return (kernel / kernel.sum()).to(torch.float32)


class GaussianBlur2d(nn.Module):
    """Separable Gaussian smoothing of single-channel maps: (N, 1, H, W) -> (N, 1, H, W).

    Reflect padding keeps the size and avoids darkening the border. The kernel is a fixed
    buffer and the operations are pad and conv2d, so the module exports to ONNX.
    sigma = 0 returns the input unchanged.

    Args:
        sigma: standard deviation in pixels; the map must be larger than ceil(4 * sigma).
    """

    def __init__(self, sigma: float = 4.0):
        super().__init__()
        self.sigma = float(sigma)
        kernel = gaussian_kernel1d(sigma) if sigma > 0 else torch.ones(1)
        self.radius = (kernel.numel() - 1) // 2
        self.register_buffer('kernel_vertical', kernel.view(1, 1, -1, 1), persistent=False)
        self.register_buffer('kernel_horizontal', kernel.view(1, 1, 1, -1), persistent=False)

    def forward(self, maps: Tensor) -> Tensor:
        """Smooth (N, 1, H, W) maps."""
        if self.radius == 0:
            return maps
        r = self.radius
        padded = F.pad(maps, (r, r, r, r), mode='reflect')
        smoothed = F.conv2d(padded, self.kernel_vertical.to(maps.dtype))
        return F.conv2d(smoothed, self.kernel_horizontal.to(maps.dtype))


class AnomalyMapGenerator(nn.Module):
    """Per-level cosine distances, upsampled, summed and smoothed into one anomaly map.

    For each level k, 1 - cos(teacher_k, student_k) along channels is bilinearly
    upsampled to the input size. The sum over levels is then Gaussian-smoothed.

    Args:
        image_size: side S in pixels of the output map.
        sigma: Gaussian standard deviation in pixels (4 in the HetNet paper).
    """

    def __init__(self, image_size: int, sigma: float = 4.0):
        super().__init__()
        self.image_size = image_size
        self.blur = GaussianBlur2d(sigma)

    def forward(self, teacher_levels: Sequence[Tensor], student_levels: Sequence[Tensor]) -> Tensor:
        """Compute the anomaly map: lists of (N, C_k, H_k, W_k) -> (N, 1, S, S)."""
        size = (self.image_size, self.image_size)
        anomaly_map = None
        for teacher, student in zip(teacher_levels, student_levels):
            level_map = cosine_distance_map(teacher, student).unsqueeze(1)
            level_map = F.interpolate(level_map, size=size, mode='bilinear', align_corners=False)
            anomaly_map = level_map if anomaly_map is None else anomaly_map + level_map
        if anomaly_map is None:
            raise ValueError('need at least one feature level')
        return self.blur(anomaly_map)
