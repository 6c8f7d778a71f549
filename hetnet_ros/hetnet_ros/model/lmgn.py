"""Local multivariate Gaussian noise (LMGN) for HetNet's denoising student.

Before training, one pass over the training images estimates, for every level and every
position (i, j), the mean mu_ij and covariance Sigma_ij of the teacher's local features,
as PaDiM does. During training, noise drawn from N(mu_ij, Sigma_ij + ridge * I) is added
to the teacher features to build the noisy prototype o'.

C x C covariance matrices per position do not fit in memory for wide teachers: for
WideResNet50 levels 1-3 at 256 px they take 3 GiB in float32 (1 GiB per level). With N
training images, the empirical covariance at a position is X^T X / (N - 1), where the
rows of X (N x C) are the centred features at that position. So X^T z / sqrt(N - 1) with
z ~ N(0, I_N) has exactly that covariance, and only X is stored, in float16:
2 * N * C * H * W bytes per level (see `statistics_bytes`). X stays in the pieces in
which the training batches arrived, because joining them would need a second copy.
"""

import logging
import math
from typing import Iterable, List, Sequence, Tuple

import torch
from torch import Tensor, nn

from hetnet_ros.model.config import NOISE_SIZES, NOISE_TYPES

_LOGGER = logging.getLogger(__name__)

# Upper bound on the float32 elements of one chunk while centring or sampling (64 MiB).
_CHUNK_ELEMENTS = 1 << 24
_FLOAT16_BYTES = 2
_FLOAT32_BYTES = 4
_FLOAT16_MAX = 65504.0


def statistics_bytes(channels: Sequence[int], sizes: Sequence[Tuple[int, int]], num_images: int) -> int:
    """Return the bytes that fitted LMGN statistics occupy.

    Per level: the centred features in float16 (N * C * H * W values) and the mean in
    float32 (C * H * W values). While `LocalGaussianNoise.fit` runs, the current batch
    and its temporaries come on top of this.

    Args:
        channels: C_k of each level.
        sizes: (H_k, W_k) of each level.
        num_images: N, the number of training images.
    """
    if len(channels) != len(sizes):
        raise ValueError(f'got {len(channels)} channel counts but {len(sizes)} sizes')
    total = 0
    for channel_count, (height, width) in zip(channels, sizes):
        values = channel_count * height * width
        total += values * (num_images * _FLOAT16_BYTES + _FLOAT32_BYTES)
    return total


class LocalGaussianNoise(nn.Module):
    """LMGN noise generator for a list of feature levels.

    The statistics are non-persistent buffers: they follow `.to(device)` but are not part
    of the state dict, so `fit` must run again before training resumes from a checkpoint.

    Args:
        noise_type: 'mgd' (per-position multivariate Gaussian), 'randn' (standard normal)
            or 'none' (features returned unchanged).
        scale_max: largest noise factor; how it is used depends on `size`.
        centered: for 'mgd', add xi - mu_ij (True) or xi itself (False).
        ridge: value added to the diagonal of every covariance, as PaDiM does (0.01 there).
        size: how the "random size" of the noise is drawn: 'uniform_scale',
            'fixed_scale' or 'random_region' (see `noise`).
    """

    def __init__(self, noise_type: str = 'mgd', scale_max: float = 1.0, centered: bool = True,
                 ridge: float = 0.01, size: str = 'uniform_scale'):
        super().__init__()
        if noise_type not in NOISE_TYPES:
            raise ValueError(f'noise_type must be one of {NOISE_TYPES}, got {noise_type!r}')
        if size not in NOISE_SIZES:
            raise ValueError(f'size must be one of {NOISE_SIZES}, got {size!r}')
        self.noise_type = noise_type
        self.scale_max = float(scale_max)
        self.centered = centered
        self.ridge = float(ridge)
        self.size = size
        self.num_images = 0
        self.num_levels = 0
        self._piece_counts: List[int] = []  # stored pieces (training batches) per level

    @property
    def is_fitted(self) -> bool:
        """Whether `fit` has stored statistics."""
        return self.num_images > 0

    @property
    def nbytes(self) -> int:
        """Bytes of the fitted statistics, 0 before `fit`; equals `statistics_bytes` for the fitted shapes."""
        total = 0
        for level in range(self.num_levels):
            total += sum(piece.numel() * _FLOAT16_BYTES for piece in self._pieces(level))
            total += self.mean(level).numel() * _FLOAT32_BYTES
        return total

    def mean(self, level: int) -> Tensor:
        """Return the fitted mean of a level (0 = shallowest fitted level), shape (C, H, W)."""
        self._check_fitted()
        return getattr(self, f'mean_{level}')

    def centered_features(self, level: int) -> Tensor:
        """Return a copy of the stored centred features of a level, float16 of shape (H * W, N, C)."""
        return torch.cat(self._pieces(level), dim=1)

    def covariance(self, level: int, row: int, column: int) -> Tensor:
        """Return the sample covariance Sigma_ij at one position, float64 (C, C).

        This is X^T X / (N - 1) of the stored centred features, without the ridge that
        sampling adds.
        """
        height, width = self.mean(level).shape[1:]
        if not (0 <= row < height and 0 <= column < width):
            raise ValueError(f'position ({row}, {column}) is outside the {height} x {width} map of level {level}')
        covariance = None
        for piece in self._pieces(level):
            features = piece[row * width + column].to(torch.float64)
            product = features.T @ features
            covariance = product if covariance is None else covariance + product
        return covariance / (self.num_images - 1)

    @torch.no_grad()
    def fit(self, feature_batches: Iterable[Sequence[Tensor]]) -> None:
        """Estimate the per-position statistics in one pass and replace any earlier fit.

        Each batch is stored as float16 in the (H * W, B, C) layout, shifted by the first
        batch's mean so that float16 keeps the spread and not the offset of the features.
        The mean is accumulated in float64. At the end every stored batch is centred in
        place, so the live tensors peak at `statistics_bytes` plus the temporaries of one
        batch. The process's resident memory can exceed that because the allocator keeps
        freed temporaries.

        Args:
            feature_batches: iterable of per-level lists, each entry (B, C_k, H_k, W_k).

        Raises:
            ValueError: fewer than 2 images, levels whose count or shape changes between
                batches, or features that overflow float16.
        """
        sums: List[Tensor] = []
        shifts: List[Tensor] = []
        stored: List[List[Tensor]] = []
        shapes: List[torch.Size] = []
        count = 0
        for features in feature_batches:
            if not shapes:
                shapes = [feature.shape[1:] for feature in features]
                sums = [torch.zeros(shape, dtype=torch.float64, device=f.device)
                        for shape, f in zip(shapes, features)]
                shifts = [f.to(torch.float32).mean(dim=0) for f in features]
                stored = [[] for _ in features]
            current = [feature.shape[1:] for feature in features]
            if current != shapes:
                raise ValueError(
                    f'feature shapes changed during LMGN fitting: first batch {shapes}, now {current}')
            for level, feature in enumerate(features):
                sums[level] += feature.sum(dim=0, dtype=torch.float64)
                shifted = (feature.to(torch.float32) - shifts[level]).flatten(2).permute(2, 0, 1)
                stored[level].append(shifted.to(torch.float16, memory_format=torch.contiguous_format))
            count += features[0].shape[0]

        if count < 2:
            raise ValueError(
                f'LMGN needs at least 2 training images to estimate a covariance, got {count}')

        self._clear()
        for level, (channels, height, width) in enumerate(shapes):
            mean = (sums[level] / count).to(torch.float32)
            # The stored values are x - shift; subtracting mean - shift centres them.
            offset = (mean - shifts[level]).flatten(1).T.unsqueeze(1)  # (H * W, 1, C)
            for index, piece in enumerate(stored[level]):
                chunk = max(1, _CHUNK_ELEMENTS // (piece.shape[1] * channels))
                for start in range(0, height * width, chunk):
                    block = piece[start:start + chunk].to(torch.float32) - offset[start:start + chunk]
                    if not torch.isfinite(block).all() or block.abs().max() > _FLOAT16_MAX:
                        raise ValueError(
                            f'LMGN level {level} features are not finite or exceed the float16 range '
                            f'(|x - mean| > {_FLOAT16_MAX}); check the teacher and the input normalisation')
                    piece[start:start + chunk] = block.to(torch.float16)
                self.register_buffer(f'centered_{level}_{index}', piece, persistent=False)
            self.register_buffer(f'mean_{level}', mean, persistent=False)
            self._piece_counts.append(len(stored[level]))
        self.num_images = count
        self.num_levels = len(shapes)
        _LOGGER.info('LMGN statistics fitted on %d images (%.1f MiB)', count, self.nbytes / 2**20)

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

        The HetNet paper (Yu et al.) samples "noise of random size xi ~ N(mu_ij, Sigma_ij)"
        and calls the result local noise at different centre positions. It fixes neither
        how the size varies nor whether mu_ij is part of the noise, so both are options:

        - size 'uniform_scale' (default): each image gets one factor s ~ Uniform(0,
          scale_max), shared by all its levels and positions, and its noise is s times
          the drawn sample.
        - size 'fixed_scale': s = scale_max for every image, so only the Gaussian draw
          itself is random.
        - size 'random_region': the noise is scale_max times the sample inside one
          rectangle per image and zero outside. Its height and width fractions are drawn
          from Uniform(0, 1) and its position uniformly within the image. The rectangle
          covers the same image area at every level and at least one position there.

        With centered=True the 'mgd' sample is xi - mu_ij, a zero-mean perturbation along
        the directions in which normal features vary. centered=False adds xi itself, the
        literal reading, which also shifts features by the scaled mu_ij.
        """
        if self.noise_type == 'none':
            return [torch.zeros_like(feature) for feature in features]
        factors = self._size_factors(features)
        if self.noise_type == 'randn':
            return [(factor * torch.randn_like(f)).to(f.dtype) for factor, f in zip(factors, features)]

        self._check_fitted()
        if len(features) != self.num_levels:
            raise ValueError(f'LMGN was fitted on {self.num_levels} levels, got {len(features)}')
        noise = []
        for level, (factor, feature) in enumerate(zip(factors, features)):
            expected = self.mean(level).shape
            if feature.shape[1:] != expected:
                raise ValueError(
                    f'LMGN level {level} was fitted on features of shape {tuple(expected)}, got '
                    f'{tuple(feature.shape[1:])}; refit after changing the teacher or image size')
            sample = self._sample_centered(level, feature.shape[0])
            if not self.centered:
                sample = sample + self.mean(level)
            noise.append((factor * sample).to(feature.dtype))
        return noise

    def forward(self, features: Sequence[Tensor]) -> List[Tensor]:
        """Add noise: list of (B, C_k, H_k, W_k) -> list of noisy features of the same shapes."""
        return [feature + noise for feature, noise in zip(features, self.noise(features))]

    def _size_factors(self, features: Sequence[Tensor]) -> List[Tensor]:
        """Return the noise factor of each level, (B, 1, 1, 1) or (B, 1, H_k, W_k) for regions."""
        batch_size = features[0].shape[0]
        device = features[0].device
        if self.size == 'fixed_scale':
            return [torch.full((batch_size, 1, 1, 1), self.scale_max, device=device) for _ in features]
        if self.size == 'uniform_scale':
            scale = torch.rand(batch_size, 1, 1, 1, device=device) * self.scale_max
            return [scale for _ in features]

        # 'random_region': fractions of the image height and width, (B, 1) each.
        extent = torch.rand(batch_size, 2, device=device)
        start = torch.rand(batch_size, 2, device=device) * (1.0 - extent)
        factors = []
        for feature in features:
            height, width = feature.shape[-2:]
            rows = self._region_axis(start[:, 0:1], extent[:, 0:1], height, device)
            columns = self._region_axis(start[:, 1:2], extent[:, 1:2], width, device)
            inside = rows[:, :, None] & columns[:, None, :]
            factors.append(self.scale_max * inside.unsqueeze(1).to(torch.float32))
        return factors

    @staticmethod
    def _region_axis(start: Tensor, extent: Tensor, length: int, device: torch.device) -> Tensor:
        """Mark the cells of one axis covered by [start, start + extent) (fractions): (B, length) bool."""
        first = torch.clamp((start * length).floor(), max=length - 1)
        last = torch.maximum(first + 1, ((start + extent) * length).ceil())
        cells = torch.arange(length, device=device).view(1, -1)
        return (cells >= first) & (cells < last)

    def _pieces(self, level: int) -> List[Tensor]:
        """Return the stored centred features of a level, float16 (H * W, B_i, C) per training batch."""
        self._check_fitted()
        return [getattr(self, f'centered_{level}_{index}') for index in range(self._piece_counts[level])]

    def _sample_centered(self, level: int, batch_size: int) -> Tensor:
        """Draw xi - mu_ij for a level: (batch_size, C, H, W) float32.

        X^T z over all N images is the sum of X_i^T z_i over the stored pieces, with
        independent standard normal z_i.
        """
        pieces = self._pieces(level)
        positions, _, channels = pieces[0].shape
        height, width = self.mean(level).shape[1:]
        device = pieces[0].device
        out = torch.zeros(positions, batch_size, channels, device=device)
        for piece in pieces:
            count = piece.shape[1]
            chunk = max(1, _CHUNK_ELEMENTS // (count * max(channels, batch_size)))
            for start in range(0, positions, chunk):
                block = piece[start:start + chunk].to(torch.float32)
                weights = torch.randn(block.shape[0], batch_size, count, device=device)
                out[start:start + chunk] += torch.bmm(weights, block)
        out /= math.sqrt(self.num_images - 1)
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
            for index in range(self._piece_counts[level]):
                delattr(self, f'centered_{level}_{index}')
        self._piece_counts = []
        self.num_images = 0
        self.num_levels = 0
