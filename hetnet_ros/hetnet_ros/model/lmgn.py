"""Local multivariate Gaussian noise (LMGN) for HetNet's denoising student.

Before training, one pass over the training images estimates, for every level and every
position (i, j), the mean mu_ij and covariance Sigma_ij of the teacher's local features,
as PaDiM does. During training, noise drawn from N(mu_ij, Sigma_ij + ridge * I) is added
to the teacher features to build the noisy prototype o'.

C x C covariance matrices per position do not fit in memory for wide teachers (1024
channels at 16 x 16 positions alone is 1 GiB in float32). With N training images, the
empirical covariance at a position is X^T X / (N - 1), where the rows of X (N x C) are the
centred features at that position. So X^T z / sqrt(N - 1) with z ~ N(0, I_N) has exactly
that covariance, and only X is stored, in float16: 2 * N * C * H * W bytes per level.
"""

import logging
import math
from typing import Iterable, List, Sequence

import torch
from torch import Tensor, nn

from hetnet_ros.model.config import NOISE_TYPES

_LOGGER = logging.getLogger(__name__)

# Upper bound on the float32 elements of one sampling chunk (64 MiB).
_CHUNK_ELEMENTS = 1 << 24


class LocalGaussianNoise(nn.Module):
    """LMGN noise generator for a list of feature levels.

    The statistics are non-persistent buffers: they follow `.to(device)` but are not part
    of the state dict, so `fit` must run again before training resumes from a checkpoint.

    Args:
        noise_type: 'mgd' (per-position multivariate Gaussian), 'randn' (standard normal)
            or 'none' (features returned unchanged).
        scale_max: upper end of the uniform range of the per-image noise factor.
        centered: for 'mgd', add xi - mu_ij (True) or xi itself (False).
        ridge: value added to the diagonal of every covariance, as PaDiM does (0.01 there).
    """

    def __init__(self, noise_type: str = 'mgd', scale_max: float = 1.0, centered: bool = True,
                 ridge: float = 0.01):
        super().__init__()
        if noise_type not in NOISE_TYPES:
            raise ValueError(f'noise_type must be one of {NOISE_TYPES}, got {noise_type!r}')
        self.noise_type = noise_type
        self.scale_max = float(scale_max)
        self.centered = centered
        self.ridge = float(ridge)
        self.num_images = 0
        self.num_levels = 0

    @property
    def is_fitted(self) -> bool:
        """Whether `fit` has stored statistics."""
        return self.num_images > 0

    def mean(self, level: int) -> Tensor:
        """Return the fitted mean of a level (0 = shallowest fitted level), shape (C, H, W)."""
        self._check_fitted()
        return getattr(self, f'mean_{level}')

    def centered_features(self, level: int) -> Tensor:
        """Return the stored centred features of a level, float16 of shape (H * W, N, C)."""
        self._check_fitted()
        return getattr(self, f'centered_{level}')

    @torch.no_grad()
    def fit(self, feature_batches: Iterable[Sequence[Tensor]]) -> None:
        """Estimate the per-position statistics in one pass and replace any earlier fit.

        The mean is accumulated in float64 while the features are stored in float16. At the
        end they are centred and rearranged to (H * W, N, C). While rearranging, the
        float16 features exist twice for a moment.

        Args:
            feature_batches: iterable of per-level lists, each entry (B, C_k, H_k, W_k).

        Raises:
            ValueError: fewer than 2 images, or levels whose count or shape changes between batches.
        """
        sums: List[Tensor] = []
        stored: List[List[Tensor]] = []
        shapes: List[torch.Size] = []
        count = 0
        for features in feature_batches:
            if not shapes:
                shapes = [feature.shape[1:] for feature in features]
                sums = [torch.zeros(shape, dtype=torch.float64, device=f.device)
                        for shape, f in zip(shapes, features)]
                stored = [[] for _ in features]
            current = [feature.shape[1:] for feature in features]
            if current != shapes:
                raise ValueError(
                    f'feature shapes changed during LMGN fitting: first batch {shapes}, now {current}')
            for level, feature in enumerate(features):
                sums[level] += feature.sum(dim=0, dtype=torch.float64)
                stored[level].append(feature.to(torch.float16))
            count += features[0].shape[0]

        if count < 2:
            raise ValueError(
                f'LMGN needs at least 2 training images to estimate a covariance, got {count}')

        self._clear()
        for level, shape in enumerate(shapes):
            channels, height, width = shape
            mean = (sums[level] / count).to(torch.float32)
            raw = torch.cat(stored[level], dim=0)
            stored[level] = []
            raw = raw.permute(2, 3, 0, 1).reshape(height * width, count, channels)
            mean_by_position = mean.permute(1, 2, 0).reshape(height * width, 1, channels)
            chunk = max(1, _CHUNK_ELEMENTS // (count * channels))
            for start in range(0, height * width, chunk):
                block = raw[start:start + chunk].to(torch.float32) - mean_by_position[start:start + chunk]
                raw[start:start + chunk] = block.to(torch.float16)
            if not torch.isfinite(raw).all():
                raise ValueError(
                    f'LMGN level {level} features are not finite or exceed the float16 range '
                    '(|x| > 65504); check the teacher and the input normalisation')
            self.register_buffer(f'mean_{level}', mean, persistent=False)
            self.register_buffer(f'centered_{level}', raw, persistent=False)
        self.num_images = count
        self.num_levels = len(shapes)

        size_mib = sum(self.centered_features(i).numel() * 2 for i in range(self.num_levels)) / 2**20
        _LOGGER.info('LMGN statistics fitted on %d images (%.1f MiB of float16 features)', count, size_mib)

    @torch.no_grad()
    def sample(self, level: int, batch_size: int) -> Tensor:
        """Draw xi ~ N(mu_ij, Sigma_ij + ridge * I) independently at every position.

        Returns:
            (batch_size, C, H, W) float32 samples of the level.
        """
        return self.mean(level) + self._sample_centered(level, batch_size)

    @torch.no_grad()
    def noise(self, features: Sequence[Tensor]) -> List[Tensor]:
        """Draw the noise for one batch: list of (B, C_k, H_k, W_k) -> list of the same shapes.

        Each image gets one factor s ~ Uniform(0, scale_max), shared by all its levels and
        positions, and its noise is s times the drawn sample. The HetNet paper (Yu et al.)
        samples "noise of random size xi ~ N(mu_ij, Sigma_ij)". That fixes neither how the
        size varies nor whether mu_ij is part of the noise. This uniform factor is one reading
        of "random size". With centered=True the added noise is s * (xi - mu_ij), a
        zero-mean perturbation along the directions in which normal features vary.
        centered=False adds s * xi, the literal reading, which also shifts features by s * mu_ij.
        """
        if self.noise_type == 'none':
            return [torch.zeros_like(feature) for feature in features]
        batch_size = features[0].shape[0]
        scale = torch.rand(batch_size, 1, 1, 1, device=features[0].device) * self.scale_max
        if self.noise_type == 'randn':
            return [scale.to(f.dtype) * torch.randn_like(f) for f in features]

        self._check_fitted()
        if len(features) != self.num_levels:
            raise ValueError(f'LMGN was fitted on {self.num_levels} levels, got {len(features)}')
        noise = []
        for level, feature in enumerate(features):
            expected = self.mean(level).shape
            if feature.shape[1:] != expected:
                raise ValueError(
                    f'LMGN level {level} was fitted on features of shape {tuple(expected)}, got '
                    f'{tuple(feature.shape[1:])}; refit after changing the teacher or image size')
            sample = self._sample_centered(level, batch_size)
            if not self.centered:
                sample = sample + self.mean(level)
            noise.append((scale * sample).to(feature.dtype))
        return noise

    def forward(self, features: Sequence[Tensor]) -> List[Tensor]:
        """Add noise: list of (B, C_k, H_k, W_k) -> list of noisy features of the same shapes."""
        return [feature + noise for feature, noise in zip(features, self.noise(features))]

    def _sample_centered(self, level: int, batch_size: int) -> Tensor:
        """Draw xi - mu_ij for a level: (batch_size, C, H, W) float32."""
        centered = self.centered_features(level)
        positions, count, channels = centered.shape
        height, width = self.mean(level).shape[1:]
        out = torch.empty(positions, batch_size, channels, device=centered.device)
        chunk = max(1, _CHUNK_ELEMENTS // (count * max(channels, batch_size)))
        for start in range(0, positions, chunk):
            block = centered[start:start + chunk].to(torch.float32)
            weights = torch.randn(block.shape[0], batch_size, count, device=centered.device)
            out[start:start + chunk] = torch.bmm(weights, block)
        out /= math.sqrt(count - 1)
        out += math.sqrt(self.ridge) * torch.randn_like(out)
        return out.reshape(height, width, batch_size, channels).permute(2, 3, 0, 1).contiguous()

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise RuntimeError(
                "LMGN noise 'mgd' has no statistics; call fit_noise_statistics with the training "
                'images first (the statistics are not saved in checkpoints)')

    def _clear(self) -> None:
        for level in range(self.num_levels):
            delattr(self, f'mean_{level}')
            delattr(self, f'centered_{level}')
        self.num_images = 0
        self.num_levels = 0
