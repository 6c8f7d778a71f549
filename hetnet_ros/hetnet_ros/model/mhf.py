"""Multi-scale hybrid fusion (MHF): brings every level to the deepest level's size and concatenates."""

from typing import List, Sequence

import torch
from torch import Tensor, nn

from hetnet_ros.model.blocks import ConvBNReLU


class MultiScaleHybridFusion(nn.Module):
    """Fuse per-level features into the prototype feature o.

    Every level except the deepest is downsampled by stride-2 3x3 ConvBNReLU steps until
    it reaches the deepest level's size. Each step from level j to j + 1 outputs C_{j+1}
    channels, following the teacher's channel progression as reverse distillation
    (RD4AD) does. With levels 1-3 that is two steps for level 1 and one for level 2.
    The results are concatenated with the deepest level.

    Args:
        channels: C_k of each level, shallow to deep, for example (256, 512, 1024).

    Shapes:
        input: list of (N, C_k, H_k, W_k) with H_{k+1} = H_k / 2.
        output: (N, K * C_K, H_K, W_K) for K levels.
    """

    def __init__(self, channels: Sequence[int]):
        super().__init__()
        self.channels = tuple(channels)
        deepest = len(self.channels) - 1
        self.downsample = nn.ModuleList(
            nn.Sequential(*[
                ConvBNReLU(self.channels[j], self.channels[j + 1], kernel_size=3, stride=2)
                for j in range(level, deepest)
            ])
            for level in range(deepest + 1)
        )
        self.out_channels = len(self.channels) * self.channels[-1]

    def forward(self, features: List[Tensor]) -> Tensor:
        """Fuse levels: list of (N, C_k, H_k, W_k) -> (N, K * C_K, H_K, W_K)."""
        if len(features) != len(self.channels):
            raise ValueError(f'expected {len(self.channels)} feature levels, got {len(features)}')
        return torch.cat([down(feature) for down, feature in zip(self.downsample, features)], dim=1)
