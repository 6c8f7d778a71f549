"""Run a trained HetNet on single images: `AnomalyDetector`.

The detector takes RGB uint8 images of any size, resizes them to the model input size
exactly as training did, and returns an anomaly map at the input size together with the
image verdict. Scores are normalised by the checkpoint's calibration, so 0.5 is always
the decision threshold.
"""

import dataclasses
import logging
import pathlib
import time
from typing import Optional

import cv2
import numpy as np
import torch

from hetnet_ros.calibration import NORMALISED_THRESHOLD, Calibration
from hetnet_ros.checkpoint import load_checkpoint
from hetnet_ros.data.preprocess import resize_rgb, rgb_to_tensor
from hetnet_ros.model import HetNet

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Region:
    """Bounding box of one connected anomalous area, in input image pixels."""

    x: int
    y: int
    width: int
    height: int
    peak_score: float  # highest normalised score inside the area


@dataclasses.dataclass(frozen=True)
class Prediction:
    """Result of `AnomalyDetector.predict` for one image."""

    anomaly_map: np.ndarray  # float32 (H, W) at the input size, normalised like pred_score
    pred_score: float  # normalised image score; anomalous at >= 0.5
    raw_score: float  # the model's un-normalised image score
    is_anomalous: bool
    regions: list[Region]  # connected areas of anomaly_map >= 0.5, highest peak first
    inference_time_s: float  # wall time of predict, preprocessing included


def infer_raw(
        model: HetNet, images: torch.Tensor, device: torch.device | str) -> tuple[np.ndarray, np.ndarray]:
    """Run the model in eval mode on a batch and return raw scores.

    Args:
        model: a HetNet in eval mode.
        images: float tensor (N, 3, S, S), RGB in [0, 1].
        device: device of the model.

    Returns:
        (pred_score float32 (N,), anomaly_map float32 (N, S, S)), un-normalised.
    """
    with torch.inference_mode():
        output = model(images.to(device))
    scores = output.pred_score.float().cpu().numpy().reshape(-1)
    maps = output.anomaly_map.float().cpu().numpy()[:, 0]
    return scores, maps


class AnomalyDetector:
    """A loaded model with its calibration, ready to score single RGB images."""

    threshold = NORMALISED_THRESHOLD

    def __init__(
            self, model: HetNet, calibration: Calibration, model_id: str,
            device: torch.device | str = 'cpu', metadata: Optional[dict] = None):
        """Wrap a model; prefer `from_checkpoint`.

        Args:
            model: a trained HetNet; it is moved to `device` and put in eval mode.
            calibration: threshold and score normalisation for this model.
            model_id: id reported with every prediction.
            device: torch device to run on.
            metadata: checkpoint metadata, kept for reference.
        """
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.calibration = calibration
        self.model_id = model_id
        self.metadata = metadata or {}
        self.image_size = int(model.config.image_size)

    @classmethod
    def from_checkpoint(
            cls, path: pathlib.Path | str, device: torch.device | str = 'cpu') -> 'AnomalyDetector':
        """Load a checkpoint written by hetnet-train.

        Raises:
            CheckpointError: the file is missing, corrupt or incompatible.
        """
        loaded = load_checkpoint(path, device)
        return cls(loaded.model, loaded.calibration, loaded.metadata['model_id'], device, loaded.metadata)

    @property
    def raw_threshold(self) -> float:
        """The decision threshold in raw model score units."""
        return self.calibration.threshold

    def predict(self, rgb: np.ndarray) -> Prediction:
        """Score one image.

        Args:
            rgb: uint8 array (H, W, 3) in RGB order, any size.

        Raises:
            ValueError: the array is not a non-empty RGB uint8 image; the message names the
                value and how to convert it.
            RuntimeError: the model output is not finite.
        """
        started = time.perf_counter()
        validate_rgb(rgb)
        height, width = rgb.shape[:2]

        batch = rgb_to_tensor(resize_rgb(rgb, self.image_size)).unsqueeze(0)
        raw_scores, raw_maps = infer_raw(self.model, batch, self.device)
        raw_score = float(raw_scores[0])
        if not (np.isfinite(raw_score) and np.all(np.isfinite(raw_maps))):
            raise RuntimeError(
                f'model {self.model_id} produced NaN or inf scores; the checkpoint may be damaged '
                'or its training diverged, so train it again')

        raw_map = raw_maps[0]
        if raw_map.shape != (height, width):
            raw_map = cv2.resize(raw_map, (width, height), interpolation=cv2.INTER_LINEAR)
        anomaly_map = self.calibration.normalize(raw_map)
        pred_score = self.calibration.normalize(raw_score)
        is_anomalous = pred_score >= self.threshold
        regions = find_regions(anomaly_map, self.threshold)
        if is_anomalous and not regions:
            # Interpolating the map to the input size can lower its peak below 0.5, most of
            # all when shrinking it. Reporting the peak pixel, with the image score, keeps
            # at least one region in every anomalous verdict.
            y, x = np.unravel_index(int(np.argmax(anomaly_map)), anomaly_map.shape)
            regions = [Region(int(x), int(y), 1, 1, pred_score)]

        return Prediction(
            anomaly_map=anomaly_map, pred_score=pred_score, raw_score=raw_score,
            is_anomalous=bool(is_anomalous), regions=regions,
            inference_time_s=time.perf_counter() - started)

    def warmup(self) -> float:
        """Run one gray image through the model and return the time it took in seconds.

        The first forward pass is slower because PyTorch initialises lazily, so warming up
        keeps that delay away from the first real frame.
        """
        gray = np.full((self.image_size, self.image_size, 3), 128, dtype=np.uint8)
        elapsed_s = self.predict(gray).inference_time_s
        logger.debug('warm-up prediction took %.3f s', elapsed_s)
        return elapsed_s


def validate_rgb(rgb: np.ndarray) -> None:
    """Raise ValueError unless `rgb` is a non-empty uint8 array of shape (H, W, 3)."""
    if not isinstance(rgb, np.ndarray):
        raise ValueError(
            f'image must be a numpy array, got {type(rgb).__name__}; convert it with numpy.asarray')
    if rgb.dtype != np.uint8:
        if np.issubdtype(rgb.dtype, np.floating) and not np.all(np.isfinite(rgb)):
            raise ValueError(
                f'image of dtype {rgb.dtype} contains NaN or inf values; replace them and convert to '
                'uint8 with hetnet_ros.data.preprocess.to_rgb_uint8')
        raise ValueError(
            f'image dtype is {rgb.dtype}, expected uint8; convert it with '
            'hetnet_ros.data.preprocess.to_rgb_uint8')
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(
            f'image shape is {rgb.shape}, expected (H, W, 3) RGB; convert grayscale or RGBA images '
            'with hetnet_ros.data.preprocess.to_rgb_uint8')
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ValueError(f'image is empty (shape {rgb.shape}); check the camera frame size')


def find_regions(anomaly_map: np.ndarray, threshold: float = NORMALISED_THRESHOLD) -> list[Region]:
    """Find the 8-connected areas where the map is at least `threshold`, highest peak first."""
    binary = (anomaly_map >= threshold).astype(np.uint8)
    if not binary.any():
        return []
    label_count, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    peaks = np.full(label_count, -np.inf)
    np.maximum.at(peaks, labels.ravel(), anomaly_map.ravel())
    regions = [
        Region(int(stats[label, cv2.CC_STAT_LEFT]), int(stats[label, cv2.CC_STAT_TOP]),
               int(stats[label, cv2.CC_STAT_WIDTH]), int(stats[label, cv2.CC_STAT_HEIGHT]),
               float(peaks[label]))
        for label in range(1, label_count)
    ]
    regions.sort(key=lambda region: region.peak_score, reverse=True)
    return regions
