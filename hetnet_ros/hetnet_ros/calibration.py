"""Decision threshold and score normalisation of a trained model.

The model's raw scores have no fixed scale, so a calibration maps them linearly onto
[0, 1] such that the decision threshold becomes 0.5:

    normalised = clip(0.5 + 0.5 * (raw - threshold) / (threshold - low), 0, 1)

`low`, the lowest raw value seen on the normal calibration images (over all pixels of
their anomaly maps when given), maps to 0, and threshold + (threshold - low) maps to 1.
The same map applies to the image score and to every pixel of the anomaly map, so the
normalised image score is still the maximum of the normalised map. An image or pixel is
anomalous when its normalised score is at least 0.5, that is when raw >= threshold.
"""

import dataclasses
import math
import sys
from typing import Optional, Sequence

import numpy as np

from hetnet_ros.metrics import f1_optimal_threshold

NORMALISED_THRESHOLD = 0.5

METHOD_NORMAL_QUANTILE = 'normal_quantile'
METHOD_F1_OPTIMAL = 'f1_optimal'

DEFAULT_QUANTILE = 0.99
# The threshold sits this fraction of the normal spread (quantile minus median) above the
# quantile. With n held-out normal images the 0.99 quantile is close to their maximum.
# A new normal image exceeds the maximum of n others with probability 1 / (n + 1), so a
# small margin keeps the decision off the edge of what calibration has seen. The value
# 0.1 is a judgement call, not a measured optimum. Pass 0 to use the plain quantile.
DEFAULT_MARGIN = 0.1
# Smallest distance between the threshold and `low`, relative to max(1, |threshold|); it
# keeps the normalisation finite when all calibration scores are equal.
RELATIVE_MIN_STEP = 1e-6


@dataclasses.dataclass(frozen=True)
class Calibration:
    """Raw decision threshold and the linear map of raw scores onto [0, 1]."""

    threshold: float  # raw score that normalises to 0.5
    low: float  # raw score that normalises to 0; always below threshold
    method: str  # METHOD_NORMAL_QUANTILE or METHOD_F1_OPTIMAL
    normal_count: int  # normal images used
    anomalous_count: int = 0  # defective images used (F1-optimal method only)
    quantile: Optional[float] = None  # normal-score quantile (normal-quantile method only)
    margin: Optional[float] = None  # fraction of the normal spread added (normal-quantile method only)
    f1: Optional[float] = None  # image-level F1 at the threshold (F1-optimal method only)
    normal_score_max: Optional[float] = None  # highest raw image score of the normal images

    def __post_init__(self):
        if not (math.isfinite(self.threshold) and math.isfinite(self.low)):
            raise ValueError(
                f'calibration values must be finite, got threshold={self.threshold}, low={self.low}')
        if not self.low < self.threshold:
            raise ValueError(f'calibration low={self.low} must be below threshold={self.threshold}')

    @property
    def scale(self) -> float:
        """Raw score distance that corresponds to 0.5 in normalised units."""
        return self.threshold - self.low

    def normalize(self, raw):
        """Normalise raw scores; the result has the input's type (float, numpy array or tensor).

        Arrays keep their shape; numpy arrays come back as float32.
        """
        # A tensor can only exist once PyTorch is imported, so looking it up in sys.modules
        # keeps this module importable without PyTorch (the ONNX Runtime path).
        torch = sys.modules.get('torch')
        if torch is not None and isinstance(raw, torch.Tensor):
            return torch.clamp(0.5 + 0.5 * (raw - self.threshold) / self.scale, 0.0, 1.0)
        if isinstance(raw, np.ndarray):
            values = 0.5 + 0.5 * (raw.astype(np.float64) - self.threshold) / self.scale
            return np.clip(values, 0.0, 1.0).astype(np.float32)
        return float(min(1.0, max(0.0, 0.5 + 0.5 * (float(raw) - self.threshold) / self.scale)))

    def to_dict(self) -> dict:
        """Plain-Python form, stored in checkpoints and reports."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> 'Calibration':
        """Rebuild from `to_dict` output; unknown keys raise ValueError."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f'unknown calibration fields {unknown}; known fields: {sorted(known)}')
        return cls(**values)


def calibrate(
        normal_scores: Sequence[float] | np.ndarray,
        anomalous_scores: Optional[Sequence[float] | np.ndarray] = None,
        normal_map_min: Optional[float] = None,
        quantile: float = DEFAULT_QUANTILE,
        margin: float = DEFAULT_MARGIN) -> Calibration:
    """Choose the decision threshold from calibration scores.

    With normal images only, the threshold is the `quantile` of their raw image scores
    plus `margin` times (quantile - median), and always at least a tiny step above the
    quantile, so that images scoring exactly the quantile count as normal. When all
    normal scores are equal, the threshold is therefore that value plus the tiny step.

    With defective images as well, the threshold is the F1-optimal one over both sets
    (see `hetnet_ros.metrics.f1_optimal_threshold`); `quantile` and `margin` are unused.

    Args:
        normal_scores: (N,) raw image scores of normal images not used for training.
        anomalous_scores: (M,) raw image scores of labelled defective images, or None.
        normal_map_min: lowest raw pixel value of the normal images' anomaly maps; it
            becomes `low`. None uses the lowest normal image score.
        quantile: quantile of the normal scores, in (0, 1].
        margin: fraction of the normal spread added to the quantile, >= 0.

    Raises:
        ValueError: no normal scores, non-finite scores, or an option out of range.
    """
    normal = _as_scores(normal_scores, 'normal_scores')
    if normal.size == 0:
        raise ValueError(
            'calibration needs the scores of at least one normal image; hold out normal '
            'training images for calibration')
    anomalous = np.empty(0)
    if anomalous_scores is not None:
        anomalous = _as_scores(anomalous_scores, 'anomalous_scores')
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f'quantile must be in (0, 1], got {quantile}')
    if margin < 0.0 or not math.isfinite(margin):
        raise ValueError(f'margin must be a finite number >= 0, got {margin}')

    if anomalous.size:
        labels = np.concatenate([np.zeros(normal.size, dtype=int), np.ones(anomalous.size, dtype=int)])
        threshold, f1 = f1_optimal_threshold(labels, np.concatenate([normal, anomalous]))
        method_fields = {'method': METHOD_F1_OPTIMAL, 'anomalous_count': int(anomalous.size), 'f1': f1}
    else:
        quantile_value = float(np.quantile(normal, quantile))
        spread = quantile_value - float(np.median(normal))
        threshold = quantile_value + max(margin * spread, _min_step(quantile_value))
        method_fields = {
            'method': METHOD_NORMAL_QUANTILE, 'quantile': float(quantile), 'margin': float(margin)}

    low = float(normal.min()) if normal_map_min is None else min(float(normal_map_min), float(normal.min()))
    low = min(low, threshold - _min_step(threshold))
    return Calibration(
        threshold=float(threshold), low=float(low), normal_count=int(normal.size),
        normal_score_max=float(normal.max()), **method_fields)


def _min_step(value: float) -> float:
    return RELATIVE_MIN_STEP * max(1.0, abs(value))


def _as_scores(values, name: str) -> np.ndarray:
    scores = np.asarray(values, dtype=np.float64).ravel()
    if not np.all(np.isfinite(scores)):
        raise ValueError(f'{name} contain NaN or inf values; check the model output')
    return scores
