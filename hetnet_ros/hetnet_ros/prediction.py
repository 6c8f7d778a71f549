"""Per-image pre- and post-processing shared by every detector runtime.

A detector resizes an RGB uint8 image of any size to the square model input and runs a
runtime-specific forward pass on the (1, 3, S, S) float batch. It then resizes the raw
anomaly map back to the input size, normalises map and score with the model's
calibration and finds the anomalous regions. Only the forward pass differs between
runtimes, so `DetectorBase` implements everything else once.

This module imports no PyTorch (only NumPy and OpenCV), so the ONNX Runtime detector
runs without it.
"""

import abc
import dataclasses
import logging
import time
from typing import Optional

import cv2
import numpy as np

from hetnet_ros.calibration import NORMALISED_THRESHOLD, Calibration

logger = logging.getLogger(__name__)

# Numeric precision of a detector's forward pass. 'fp16' and 'bf16' run the networks under
# autocast with that dtype; the anomaly map is computed in float32 in every case.
PRECISION_FP32 = 'fp32'
PRECISION_FP16 = 'fp16'
PRECISION_BF16 = 'bf16'
PRECISIONS = (PRECISION_FP32, PRECISION_FP16, PRECISION_BF16)


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
    """Result of a detector's `predict` for one image."""

    anomaly_map: np.ndarray  # float32 (H, W) at the input size, normalised like pred_score
    pred_score: float  # normalised image score; anomalous at >= 0.5
    raw_score: float  # the model's un-normalised image score
    is_anomalous: bool
    regions: list[Region]  # connected areas of anomaly_map >= 0.5, highest peak first
    inference_time_s: float  # wall time of predict, preprocessing included


class DetectorBase(abc.ABC):
    """A model with its calibration, ready to score single RGB images.

    Subclasses set the attributes below and implement `infer_batch` for one runtime.

    Attributes:
        model_id: id reported with every prediction.
        image_size: side S of the square model input in pixels.
        calibration: threshold and score normalisation of the model.
        metadata: metadata stored with the model (model_id, package_version, created,
            training settings).
        runtime: name of the runtime that runs the forward pass, for example 'torch'.
    """

    threshold = NORMALISED_THRESHOLD
    runtime = ''

    def __init__(self, calibration: Calibration, model_id: str, image_size: int,
                 metadata: Optional[dict] = None):
        self.calibration = calibration
        self.model_id = model_id
        self.image_size = int(image_size)
        self.metadata = metadata or {}

    @abc.abstractmethod
    def infer_batch(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Run the model on a batch and return raw scores.

        Args:
            images: float32 array (N, 3, S, S), RGB in [0, 1].

        Returns:
            (pred_score float32 (N,), anomaly_map float32 (N, S, S)), un-normalised.
        """

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

        raw_scores, raw_maps = self.infer_batch(to_model_input(rgb, self.image_size))
        raw_score = float(raw_scores[0])
        if not (np.isfinite(raw_score) and np.all(np.isfinite(raw_maps))):
            raise RuntimeError(
                f'model {self.model_id} produced NaN or inf scores; the model file may be damaged '
                'or its training diverged, so train it again')

        prediction = postprocess(raw_maps[0], raw_score, (height, width), self.calibration)
        return dataclasses.replace(prediction, inference_time_s=time.perf_counter() - started)

    def warmup(self) -> float:
        """Run one gray image through the model and return the time it took in seconds.

        The first forward pass is slower because runtimes initialise lazily, so warming up
        keeps that delay away from the first real frame.
        """
        gray = np.full((self.image_size, self.image_size, 3), 128, dtype=np.uint8)
        elapsed_s = self.predict(gray).inference_time_s
        logger.debug('warm-up prediction with runtime %s took %.3f s', self.runtime, elapsed_s)
        return elapsed_s


def resize_to_model(rgb: np.ndarray, image_size: int) -> np.ndarray:
    """Resize an (H, W, 3) image to (image_size, image_size, 3) as training does.

    Shrinking uses area averaging (cv2.INTER_AREA), which avoids aliasing; enlarging, and
    shrinking one side while enlarging the other, use bilinear interpolation
    (cv2.INTER_LINEAR).

    NOTE: this repeats `hetnet_ros.data.preprocess.resize_rgb`, which cannot be imported
    without PyTorch; a test checks that both give the same pixels.
    """
    height, width = rgb.shape[:2]
    if height == image_size and width == image_size:
        return rgb
    shrinking = height >= image_size and width >= image_size
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(rgb, (image_size, image_size), interpolation=interpolation)


def to_model_input(rgb: np.ndarray, image_size: int) -> np.ndarray:
    """Convert an (H, W, 3) uint8 RGB image to the model input: float32 (1, 3, S, S) in [0, 1].

    The values equal those of `hetnet_ros.data.preprocess.rgb_to_tensor` after resizing,
    because both divide float32 values by 255 with IEEE rounding.
    """
    resized = resize_to_model(rgb, image_size)
    channels_first = resized.transpose(2, 0, 1).astype(np.float32)
    channels_first /= np.float32(255.0)
    return channels_first[np.newaxis]


def postprocess(
        raw_map: np.ndarray, raw_score: float, input_size: tuple[int, int],
        calibration: Calibration) -> Prediction:
    """Turn one raw model output into a Prediction at the input image size.

    Args:
        raw_map: float32 (S, S) un-normalised anomaly map.
        raw_score: un-normalised image score.
        input_size: (H, W) of the input image in pixels.
        calibration: threshold and score normalisation of the model.

    Returns:
        The prediction, with inference_time_s 0; the caller fills in the time.
    """
    height, width = input_size
    if raw_map.shape != (height, width):
        raw_map = cv2.resize(raw_map, (width, height), interpolation=cv2.INTER_LINEAR)
    anomaly_map = calibration.normalize(raw_map)
    pred_score = calibration.normalize(raw_score)
    is_anomalous = pred_score >= NORMALISED_THRESHOLD
    regions = find_regions(anomaly_map, NORMALISED_THRESHOLD)
    if is_anomalous and not regions:
        # Interpolating the map to the input size can lower its peak below 0.5, most of
        # all when shrinking it. Reporting the peak pixel, with the image score, keeps
        # at least one region in every anomalous verdict.
        y, x = np.unravel_index(int(np.argmax(anomaly_map)), anomaly_map.shape)
        regions = [Region(int(x), int(y), 1, 1, pred_score)]

    return Prediction(
        anomaly_map=anomaly_map, pred_score=pred_score, raw_score=float(raw_score),
        is_anomalous=bool(is_anomalous), regions=regions, inference_time_s=0.0)


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
    # np.maximum.at takes its fast path only when peaks and values share a dtype. With
    # float64 peaks and a float32 1280x720 map it was about 40 times slower (NumPy 2.4).
    values = anomaly_map.ravel()
    if values.dtype not in (np.float32, np.float64):
        values = values.astype(np.float64)
    peaks = np.full(label_count, -np.inf, dtype=values.dtype)
    np.maximum.at(peaks, labels.ravel(), values)
    regions = [
        Region(int(stats[label, cv2.CC_STAT_LEFT]), int(stats[label, cv2.CC_STAT_TOP]),
               int(stats[label, cv2.CC_STAT_WIDTH]), int(stats[label, cv2.CC_STAT_HEIGHT]),
               float(peaks[label]))
        for label in range(1, label_count)
    ]
    regions.sort(key=lambda region: region.peak_score, reverse=True)
    return regions


# Largest accepted difference of a reduced-precision detector to fp32: the anomaly-map
# difference as a fraction of the fp32 map's range, and the pred_score difference in
# normalised score units (threshold 0.5). bf16 with the local teacher kept in fp32 stays
# below 0.01 of the range: 0.13 % on 16 real screw test images with the demo checkpoint,
# 0.9 % with random-weight WideResNet50-2 + Swin-T (OpenVINO 2026.4, AVX-512 bf16 CPU).
MAP_TOLERANCE = 0.02
SCORE_TOLERANCE = 0.01
PROBE_SEED = 0


@dataclasses.dataclass(frozen=True)
class PrecisionCheck:
    """Agreement of a detector with fp32 on probe images."""

    max_map_diff: float  # largest absolute anomaly-map difference, raw units
    map_range: float  # max - min of the fp32 maps, raw units
    max_score_diff: float  # largest pred_score difference, normalised units
    images: int

    @property
    def map_diff_fraction(self) -> float:
        """max_map_diff as a fraction of the fp32 map range."""
        return self.max_map_diff / self.map_range if self.map_range > 0 else float('inf')

    @property
    def passed(self) -> bool:
        """Whether both differences are within MAP_TOLERANCE and SCORE_TOLERANCE."""
        return self.map_diff_fraction <= MAP_TOLERANCE and self.max_score_diff <= SCORE_TOLERANCE

    def describe(self) -> str:
        """Return one sentence with the figures and the tolerances."""
        return (f'max map difference {self.map_diff_fraction:.2%} of the fp32 map range '
                f'(tolerance {MAP_TOLERANCE:.0%}), max pred_score difference '
                f'{self.max_score_diff:.4f} (tolerance {SCORE_TOLERANCE}) on {self.images} '
                'images')


def compare_with_fp32(
        scores: np.ndarray, maps: np.ndarray, reference_scores: np.ndarray,
        reference_maps: np.ndarray, calibration: Calibration) -> PrecisionCheck:
    """Measure how far raw (scores (N,), maps (N, S, S)) are from the fp32 reference outputs."""
    normalized = np.asarray(calibration.normalize(np.asarray(scores, dtype=np.float64)))
    reference_normalized = np.asarray(
        calibration.normalize(np.asarray(reference_scores, dtype=np.float64)))
    return PrecisionCheck(
        max_map_diff=float(np.max(np.abs(maps - reference_maps))),
        map_range=float(reference_maps.max() - reference_maps.min()),
        max_score_diff=float(np.max(np.abs(normalized - reference_normalized))),
        images=len(maps))


def probe_images(image_size: int, count: int = 2) -> np.ndarray:
    """Return `count` fixed textured images, float32 (count, 3, S, S) in [0, 1].

    Smoothed seeded noise around mid-gray: real images are not available at load time,
    and a textured image exercises every feature level, unlike a constant one.
    """
    generator = np.random.default_rng(PROBE_SEED)
    images = []
    for _ in range(count):
        noise = generator.uniform(0.0, 1.0, (image_size, image_size, 3)).astype(np.float32)
        smooth = cv2.GaussianBlur(noise, (0, 0), sigmaX=image_size / 64)
        contrast = (smooth - smooth.mean()) / (smooth.std() + 1e-6)
        images.append(np.clip(0.5 + 0.15 * contrast, 0.0, 1.0).transpose(2, 0, 1))
    return np.ascontiguousarray(np.stack(images), dtype=np.float32)
