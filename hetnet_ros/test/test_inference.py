"""Tests of AnomalyDetector with a real tiny checkpoint and real images."""

import copy

import cv2
import numpy as np
import pytest
import torch

from hetnet_ros.calibration import Calibration
from hetnet_ros.data.mvtec import read_image
from hetnet_ros.inference import AnomalyDetector, Prediction, Region, find_regions


@pytest.fixture(scope='module')
def detector(tiny_checkpoint) -> AnomalyDetector:
    return AnomalyDetector.from_checkpoint(tiny_checkpoint)


@pytest.fixture(scope='module')
def screw_image(screw_root) -> np.ndarray:
    """A real 1024 x 1024 defective screw image, shrunk to 300 x 200 to keep the test fast."""
    rgb = read_image(sorted((screw_root / 'test' / 'scratch_head').iterdir())[0])
    return cv2.resize(rgb, (300, 200), interpolation=cv2.INTER_AREA)


def test_detector_attributes(detector, tiny_checkpoint):
    assert detector.model_id.startswith('hetnet-')
    assert detector.image_size == 64
    assert detector.threshold == 0.5
    assert detector.raw_threshold == detector.calibration.threshold


def test_predict_map_has_input_size(detector, screw_image):
    prediction = detector.predict(screw_image)
    assert isinstance(prediction, Prediction)
    assert prediction.anomaly_map.shape == (200, 300)
    assert prediction.anomaly_map.dtype == np.float32
    assert prediction.anomaly_map.min() >= 0.0
    assert prediction.anomaly_map.max() <= 1.0
    assert 0.0 <= prediction.pred_score <= 1.0
    assert prediction.inference_time_s > 0.0


def test_predict_normalises_like_calibration(detector, screw_image):
    prediction = detector.predict(screw_image)
    assert prediction.pred_score == pytest.approx(detector.calibration.normalize(prediction.raw_score))
    assert prediction.is_anomalous == (prediction.pred_score >= 0.5)
    # Bilinear resizing never exceeds the largest value, so the map peak is at most the score.
    assert prediction.anomaly_map.max() <= prediction.pred_score + 1e-6


def test_predict_is_deterministic(detector, screw_image):
    first = detector.predict(screw_image)
    second = detector.predict(screw_image)
    assert first.raw_score == second.raw_score
    assert np.array_equal(first.anomaly_map, second.anomaly_map)


def test_regions_follow_threshold(detector, screw_image):
    # A calibration with a very low threshold makes every image anomalous, so the regions
    # of the real map can be checked.
    low_threshold = Calibration(threshold=1e-6, low=0.0, method='normal_quantile', normal_count=1)
    strict = AnomalyDetector(detector.model, low_threshold, detector.model_id)
    prediction = strict.predict(screw_image)
    assert prediction.is_anomalous
    assert prediction.regions, 'an anomalous image must have at least one region'
    for region in prediction.regions:
        patch = prediction.anomaly_map[region.y:region.y + region.height, region.x:region.x + region.width]
        assert patch.max() == pytest.approx(region.peak_score)
        assert region.peak_score >= 0.5
    peaks = [region.peak_score for region in prediction.regions]
    assert peaks == sorted(peaks, reverse=True), 'regions must be ordered by peak score'


def test_small_input_anomalous_has_region(detector):
    low_threshold = Calibration(threshold=1e-6, low=0.0, method='normal_quantile', normal_count=1)
    strict = AnomalyDetector(detector.model, low_threshold, detector.model_id)
    prediction = strict.predict(np.full((3, 5, 3), 90, dtype=np.uint8))
    assert prediction.anomaly_map.shape == (3, 5)
    assert prediction.is_anomalous
    assert len(prediction.regions) >= 1


def test_non_finite_model_output_raises(detector):
    broken = AnomalyDetector(copy.deepcopy(detector.model), detector.calibration, detector.model_id)
    with torch.no_grad():
        next(broken.model.decoder.parameters()).fill_(float('nan'))
    with pytest.raises(RuntimeError, match='NaN or inf'):
        broken.predict(np.zeros((16, 16, 3), np.uint8))


def test_find_regions_hand_made_map():
    anomaly_map = np.zeros((6, 8), dtype=np.float32)
    anomaly_map[1:3, 1:3] = 0.6
    anomaly_map[4, 6] = 0.9
    anomaly_map[5, 7] = 0.7  # diagonal neighbour of (4, 6): same region
    regions = find_regions(anomaly_map)
    assert regions == [Region(6, 4, 2, 2, pytest.approx(0.9)), Region(1, 1, 2, 2, pytest.approx(0.6))]
    assert find_regions(np.zeros((4, 4), np.float32)) == []


def test_warmup_returns_time(detector):
    assert detector.warmup() > 0.0


@pytest.mark.parametrize('image, fragment', [
    (np.zeros((8, 8, 3), np.float32), 'dtype is float32, expected uint8'),
    (np.full((8, 8, 3), np.nan, np.float32), 'NaN'),
    (np.zeros((8, 8), np.uint8), r'shape is \(8, 8\), expected \(H, W, 3\)'),
    (np.zeros((8, 8, 4), np.uint8), 'RGBA'),
    (np.zeros((0, 8, 3), np.uint8), 'empty'),
    ([[0, 0, 0]], 'numpy array'),
])
def test_predict_rejects_bad_input(detector, image, fragment):
    with pytest.raises(ValueError, match=fragment):
        detector.predict(image)
