"""Tests of threshold calibration and score normalisation."""

import numpy as np
import pytest
import torch

from hetnet_ros.calibration import (
    METHOD_F1_OPTIMAL, METHOD_NORMAL_QUANTILE, Calibration, calibrate)


def test_normal_only_quantile_with_margin():
    normal = np.arange(101, dtype=float)  # quantile 0.99 = 99, median = 50
    calibration = calibrate(normal, quantile=0.99, margin=0.1)
    assert calibration.method == METHOD_NORMAL_QUANTILE
    assert calibration.threshold == pytest.approx(99 + 0.1 * 49)
    assert calibration.low == 0.0
    assert calibration.normal_count == 101
    assert calibration.normal_score_max == 100.0


def test_zero_margin_stays_above_quantile():
    calibration = calibrate([1.0, 2.0, 3.0], quantile=1.0, margin=0.0)
    assert calibration.threshold > 3.0, 'a score equal to the quantile must count as normal'
    assert calibration.threshold == pytest.approx(3.0)
    assert calibration.normalize(3.0) < 0.5


def test_threshold_maps_to_half():
    calibration = calibrate(np.linspace(0.2, 0.6, 20), normal_map_min=0.05)
    assert calibration.normalize(calibration.threshold) == pytest.approx(0.5)
    assert calibration.normalize(calibration.low) == pytest.approx(0.0)
    assert calibration.normalize(calibration.threshold + calibration.scale) == pytest.approx(1.0)
    assert calibration.normalize(-100.0) == 0.0
    assert calibration.normalize(100.0) == 1.0


def test_normalize_same_for_scores_arrays_and_tensors():
    calibration = calibrate([0.1, 0.2, 0.3, 0.4])
    raw = np.array([[0.0, 0.15], [0.35, 0.9]])
    as_array = calibration.normalize(raw)
    assert as_array.dtype == np.float32
    assert as_array.shape == raw.shape
    as_tensor = calibration.normalize(torch.tensor(raw))
    as_floats = [calibration.normalize(value) for value in raw.ravel()]
    assert np.allclose(as_array.ravel(), as_floats, atol=1e-6)
    assert np.allclose(as_tensor.numpy().ravel(), as_floats, atol=1e-6)
    assert np.all(np.diff(as_floats) >= 0), 'normalisation must be monotonic'


def test_normal_map_min_sets_low():
    calibration = calibrate([0.5, 0.6], normal_map_min=0.1)
    assert calibration.low == pytest.approx(0.1)
    # Pixel values between low and the image scores keep their order below 0.5.
    assert 0.0 < calibration.normalize(0.3) < calibration.normalize(0.5) < 0.5


def test_constant_normal_scores():
    calibration = calibrate([0.7, 0.7, 0.7])
    assert calibration.threshold > 0.7
    assert calibration.normalize(0.7) == 0.0, 'the calibration images themselves must be normal'
    assert calibration.normalize(0.71) == 1.0
    assert np.isfinite(calibration.scale)
    assert calibration.scale > 0


def test_f1_optimal_with_defects():
    normal = [0.1, 0.2, 0.3, 0.45]
    anomalous = [0.4, 0.8, 0.9]
    calibration = calibrate(normal, anomalous)
    assert calibration.method == METHOD_F1_OPTIMAL
    assert calibration.threshold == pytest.approx(0.4)  # F1 6/7: one false positive
    assert calibration.f1 == pytest.approx(6 / 7)
    assert calibration.anomalous_count == 3
    assert calibration.quantile is None
    assert calibration.normalize(0.4) == pytest.approx(0.5)


def test_f1_optimal_with_constant_scores():
    calibration = calibrate([0.5, 0.5], [0.5])
    assert calibration.threshold == pytest.approx(0.5)
    assert calibration.low < calibration.threshold
    assert calibration.normalize(0.5) == pytest.approx(0.5), 'every image sits at the threshold'


def test_only_defective_rejected():
    with pytest.raises(ValueError, match='at least one normal image'):
        calibrate([], [0.5, 0.9])


@pytest.mark.parametrize('kwargs, fragment', [
    ({'normal_scores': [0.1, np.nan]}, 'NaN'),
    ({'normal_scores': [0.1], 'quantile': 0.0}, 'quantile'),
    ({'normal_scores': [0.1], 'margin': -1.0}, 'margin'),
])
def test_invalid_arguments(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        calibrate(**kwargs)


def test_dict_round_trip():
    calibration = calibrate([0.1, 0.3], [0.9])
    restored = Calibration.from_dict(calibration.to_dict())
    assert restored == calibration
    with pytest.raises(ValueError, match='unknown calibration fields'):
        Calibration.from_dict({**calibration.to_dict(), 'extra': 1})


def test_low_must_be_below_threshold():
    with pytest.raises(ValueError, match='below threshold'):
        Calibration(threshold=1.0, low=1.0, method=METHOD_NORMAL_QUANTILE, normal_count=1)


def test_single_normal_image():
    calibration = calibrate([0.3])
    assert calibration.method == METHOD_NORMAL_QUANTILE
    assert calibration.threshold > 0.3, 'the one calibration image must count as normal'
    assert calibration.threshold == pytest.approx(0.3, abs=1e-5), 'no spread, so only the minimum step is added'
    assert calibration.normalize(0.3) < 0.5


def test_empty_defect_list_means_normal_only():
    assert calibrate([0.3, 0.5], []) == calibrate([0.3, 0.5]), 'no defect scores must fall back to the quantile'


def test_defects_scoring_below_normals():
    # An inverted model: the best F1 flags every image, so the threshold is the lowest
    # defect score and every normal image counts as defective.
    calibration = calibrate([0.8, 0.9], [0.1, 0.2])
    assert calibration.method == METHOD_F1_OPTIMAL
    assert calibration.threshold == pytest.approx(0.1)
    assert calibration.f1 == pytest.approx(2 / 3)
    assert calibration.low < calibration.threshold
    assert calibration.normalize(0.8) == 1.0, 'normal images above the threshold normalise to 1'


def test_constant_scores_with_defects():
    calibration = calibrate([0.5], [0.5, 0.5])
    assert calibration.threshold == pytest.approx(0.5)
    assert calibration.f1 == pytest.approx(0.8), 'every image is flagged: 2 true and 1 false positive'
    assert calibration.normalize(0.5) == pytest.approx(0.5)


def test_non_finite_defect_scores_rejected():
    with pytest.raises(ValueError, match='anomalous_scores contain NaN'):
        calibrate([0.3, 0.5], [np.inf])
