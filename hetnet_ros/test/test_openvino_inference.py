"""Tests of OpenVinoAnomalyDetector and of the runtime and precision choice, on a real tiny checkpoint and real images."""

import re

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from hetnet_ros import prediction
from hetnet_ros.data.mvtec import read_image
from hetnet_ros.inference import AnomalyDetector
from hetnet_ros.openvino_inference import (
    OpenVinoAnomalyDetector, OpenVinoModelError, _PixelShuffleUpsample,
    _rewrite_transposed_convolutions, cpu_supports_bf16)
from hetnet_ros.prediction import PrecisionCheck, compare_with_fp32, probe_images, to_model_input
from hetnet_ros.runtimes import ModelLoadError, load_detector, select_precision, select_runtime

needs_bf16 = pytest.mark.skipif(
    not cpu_supports_bf16(), reason='OpenVINO finds no native bf16 support on this CPU')


@pytest.fixture(scope='module')
def real_images(screw_root, tiny_checkpoint) -> np.ndarray:
    """Four real screw test images, good and defective, as float32 (4, 3, 64, 64) model input."""
    files = [sorted((screw_root / 'test' / folder).iterdir())[index]
             for folder in ('good', 'scratch_head') for index in (0, 1)]
    return np.concatenate([to_model_input(read_image(file), 64) for file in files])


@pytest.fixture(scope='module')
def torch_detector(tiny_checkpoint) -> AnomalyDetector:
    return AnomalyDetector.from_checkpoint(tiny_checkpoint)


@pytest.fixture(scope='module')
def openvino_fp32(tiny_checkpoint) -> OpenVinoAnomalyDetector:
    return OpenVinoAnomalyDetector.from_checkpoint(tiny_checkpoint, 'fp32', threads=2)


def test_fp32_matches_torch(openvino_fp32, torch_detector, real_images):
    scores, maps = openvino_fp32.infer_batch(real_images)
    torch_scores, torch_maps = torch_detector.infer_batch(real_images)

    assert maps.shape == torch_maps.shape == (4, 64, 64)
    assert maps.dtype == np.float32
    np.testing.assert_allclose(maps, torch_maps, atol=1e-4)
    np.testing.assert_allclose(scores, torch_scores, atol=1e-4)
    np.testing.assert_allclose(scores, maps.max(axis=(1, 2)))


def test_fp32_predict_at_input_size(openvino_fp32, torch_detector, screw_root):
    rgb = cv2.resize(read_image(sorted((screw_root / 'test' / 'scratch_head').iterdir())[0]),
                     (150, 100), interpolation=cv2.INTER_AREA)

    result = openvino_fp32.predict(rgb)
    expected = torch_detector.predict(rgb)

    assert result.anomaly_map.shape == (100, 150)
    assert result.pred_score == pytest.approx(expected.pred_score, abs=1e-4)
    assert result.is_anomalous == expected.is_anomalous
    assert openvino_fp32.runtime == 'openvino'
    assert openvino_fp32.device == 'cpu'


@needs_bf16
def test_bf16_keeps_fp32_level_maps(tiny_checkpoint, openvino_fp32, real_images):
    detector = OpenVinoAnomalyDetector.from_checkpoint(tiny_checkpoint, 'bf16', threads=2)

    _, maps = detector.infer_batch(real_images)
    _, fp32_maps = openvino_fp32.infer_batch(real_images)
    check = detector.check_against_fp32(real_images)

    # bf16 really ran: its maps differ from fp32 by more than float32 rounding.
    assert np.max(np.abs(maps - fp32_maps)) > 1e-5
    assert check.map_diff_fraction <= prediction.MAP_TOLERANCE
    assert check.passed, check.describe()


@pytest.mark.parametrize('bias', [False, True])
def test_pixel_shuffle_matches_transposed_convolution(bias):
    torch.manual_seed(0)
    transposed = nn.ConvTranspose2d(6, 5, kernel_size=2, stride=2, bias=bias)
    x = torch.randn(2, 6, 7, 9)

    rewritten = _PixelShuffleUpsample(transposed)

    with torch.no_grad():
        torch.testing.assert_close(rewritten(x), transposed(x), rtol=0, atol=1e-6)


def test_rewrite_skips_other_transposed_convolutions():
    module = nn.Sequential(
        nn.ConvTranspose2d(4, 4, kernel_size=2, stride=2),
        nn.ConvTranspose2d(4, 4, kernel_size=3, stride=2),
        nn.Sequential(nn.ConvTranspose2d(4, 4, kernel_size=2, stride=2, padding=1)))

    _rewrite_transposed_convolutions(module)

    assert isinstance(module[0], _PixelShuffleUpsample)
    assert isinstance(module[1], nn.ConvTranspose2d)
    assert isinstance(module[2][0], nn.ConvTranspose2d)


def test_rejects_unknown_precision(tiny_checkpoint):
    with pytest.raises(ValueError, match=re.escape("must be one of fp32, bf16, got 'fp16'")):
        OpenVinoAnomalyDetector.from_checkpoint(tiny_checkpoint, 'fp16')


def test_precision_check_tolerances():
    within = PrecisionCheck(max_map_diff=0.01, map_range=1.0, max_score_diff=0.005, images=2)
    map_outside = PrecisionCheck(max_map_diff=0.03, map_range=1.0, max_score_diff=0.0, images=2)
    score_outside = PrecisionCheck(max_map_diff=0.0, map_range=1.0, max_score_diff=0.02, images=2)
    flat_reference = PrecisionCheck(max_map_diff=0.0, map_range=0.0, max_score_diff=0.0, images=2)

    assert within.passed
    assert not map_outside.passed
    assert not score_outside.passed
    assert not flat_reference.passed
    assert '1.00% of the fp32 map range' in within.describe()


def test_compare_with_fp32_figures():
    calibration = prediction.Calibration(threshold=2.0, low=1.0, method='normal_quantile', normal_count=4)
    reference_maps = np.zeros((2, 4, 4), np.float32)
    reference_maps[:, 0, 0] = 2.0
    maps = reference_maps.copy()
    maps[1, 3, 3] = 0.1

    check = compare_with_fp32(np.array([2.1, 2.0]), maps, np.array([2.0, 2.0]), reference_maps, calibration)

    assert check.max_map_diff == pytest.approx(0.1)
    assert check.map_range == pytest.approx(2.0)
    # Normalised scores: 0.5 + 0.5 * (raw - threshold) / (threshold - low).
    assert check.max_score_diff == pytest.approx(0.05)
    assert check.images == 2


def test_probe_images_fixed_and_textured():
    first = probe_images(64)
    second = probe_images(64)

    assert first.shape == (2, 3, 64, 64)
    assert first.dtype == np.float32
    np.testing.assert_array_equal(first, second)
    assert first.min() >= 0.0
    assert first.max() <= 1.0
    assert first.std() > 0.05


def test_auto_picks_openvino_on_cpu(tiny_checkpoint):
    detector, reason = load_detector(tiny_checkpoint, device='cpu', threads=2)

    assert isinstance(detector, OpenVinoAnomalyDetector)
    assert reason.startswith(f'runtime openvino on cpu in {detector.precision}')
    assert 'fastest CPU runtime measured with hetnet-bench' in reason
    if cpu_supports_bf16():
        assert detector.precision == 'bf16'
        assert 'bf16 against fp32: max map difference' in reason
    else:
        assert detector.precision == 'fp32'


@needs_bf16
def test_auto_falls_back_to_fp32(tiny_checkpoint, monkeypatch):
    # With a zero tolerance every bf16 difference fails the check.
    monkeypatch.setattr(prediction, 'MAP_TOLERANCE', 0.0)

    detector, reason = load_detector(tiny_checkpoint, device='cpu', threads=2)

    assert detector.precision == 'fp32'
    assert 'outside the tolerance, so it falls back to fp32' in reason


@needs_bf16
def test_explicit_bf16_kept_outside_tolerance(tiny_checkpoint, monkeypatch):
    monkeypatch.setattr(prediction, 'MAP_TOLERANCE', 0.0)

    detector, reason = load_detector(tiny_checkpoint, 'openvino', 'cpu', 'bf16', threads=2)

    assert detector.precision == 'bf16'
    assert "precision 'bf16' requested" in reason
    assert 'falls back' not in reason


def test_auto_falls_back_to_torch_on_conversion_failure(tiny_checkpoint, monkeypatch):
    def fail(*args, **kwargs):
        raise OpenVinoModelError('conversion failed in this test')
    monkeypatch.setattr(OpenVinoAnomalyDetector, '_compile', staticmethod(fail))

    detector, reason = load_detector(tiny_checkpoint, device='cpu')

    assert isinstance(detector, AnomalyDetector)
    assert reason.startswith('runtime torch on cpu in fp32')
    assert "falls back to PyTorch because OpenVINO failed: conversion failed in this test" in reason


def test_explicit_openvino_raises_conversion_failure(tiny_checkpoint, monkeypatch):
    def fail(*args, **kwargs):
        raise OpenVinoModelError('conversion failed in this test')
    monkeypatch.setattr(OpenVinoAnomalyDetector, '_compile', staticmethod(fail))

    with pytest.raises(ModelLoadError, match='conversion failed in this test'):
        load_detector(tiny_checkpoint, 'openvino', 'cpu')


@pytest.mark.parametrize('path, runtime, device, fragment', [
    ('model.onnx', 'openvino', 'cpu', "runtime 'openvino' converts checkpoints, not ONNX files"),
    ('model.pt', 'openvino', 'cuda', "runtime 'openvino' runs on the CPU only"),
    ('model.pt', 'onnxruntime', 'cpu', "or set runtime to 'torch', 'openvino' or 'auto'"),
    ('model.pt', 'tensorrt', 'cpu', 'runtime must be one of auto, torch, onnxruntime, openvino'),
])
def test_select_runtime_rejects(path, runtime, device, fragment):
    with pytest.raises(ValueError, match=re.escape(fragment)):
        select_runtime(path, runtime, device)


def test_select_precision_choices():
    assert select_precision('torch', 'cuda')[0] == 'fp16'
    assert select_precision('torch', 'cpu')[0] == 'fp32'
    assert select_precision('onnxruntime', 'cpu')[0] == 'fp32'
    assert select_precision('torch', 'cpu', 'bf16') == ('bf16', "precision 'bf16' requested")
    with pytest.raises(ValueError, match="runtime 'onnxruntime' runs exports in fp32 only"):
        select_precision('onnxruntime', 'cpu', 'bf16')
    with pytest.raises(ValueError, match=re.escape("precision must be one of auto, fp32, fp16, bf16, got 'int8'")):
        select_precision('torch', 'cpu', 'int8')
