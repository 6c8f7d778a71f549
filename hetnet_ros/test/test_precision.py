"""Tests of reduced-precision inference (fp16 and bf16 autocast) with a real tiny checkpoint."""

import numpy as np
import pytest
import torch

from hetnet_ros import inference
from hetnet_ros.checkpoint import load_checkpoint
from hetnet_ros.data.mvtec import read_image
from hetnet_ros.inference import AnomalyDetector, autocast_dtype, infer_raw
from hetnet_ros.prediction import PRECISIONS, to_model_input

# One real 1024 x 1024 screw test image of each kind; the detectors resize them to 64 px.
SCREW_IMAGES = ('good/000.png', 'manipulated_front/000.png', 'scratch_head/000.png',
                'scratch_neck/000.png', 'thread_side/000.png', 'thread_top/000.png')
# Largest accepted bf16 - fp32 anomaly-map difference, as a fraction of the fp32 map range
# (max - min over the images). bf16 keeps 8 significant bits, a relative rounding error of
# up to 0.4 % per operation, and the errors of the teacher and student layers add up.
# On the tiny checkpoint the measured maximum was 0.34 % of the range (torch 2.14.1, oneDNN
# on an AVX512 CPU). 2 % leaves room for other CPUs and kernels but still catches a map
# computed in bf16, which differed by 2.9 %. The tolerance holds for this ResNet-18
# teacher only: bf16 changes the EfficientNet-Lite0 teacher's features far more.
MAP_TOLERANCE_OF_RANGE = 0.02

BF16_REASON = inference.cpu_bf16_unavailable_reason()
needs_cpu_bf16 = pytest.mark.skipif(bool(BF16_REASON), reason=f'bf16 on the CPU: {BF16_REASON}')


@pytest.fixture(scope='module')
def screw_batch(screw_root) -> np.ndarray:
    """The real screw test images as model input, float32 (6, 3, 64, 64) in [0, 1]."""
    return np.concatenate(
        [to_model_input(read_image(screw_root / 'test' / name), 64) for name in SCREW_IMAGES])


@pytest.fixture(scope='module')
def fp32_detector(tiny_checkpoint) -> AnomalyDetector:
    return AnomalyDetector.from_checkpoint(tiny_checkpoint)


@pytest.fixture(scope='module')
def bf16_detector(tiny_checkpoint) -> AnomalyDetector:
    if BF16_REASON:
        pytest.skip(f'bf16 on the CPU: {BF16_REASON}')
    return AnomalyDetector.from_checkpoint(tiny_checkpoint, precision='bf16')


def test_precisions_constant():
    assert PRECISIONS == ('fp32', 'fp16', 'bf16')


def test_fp32_is_default(fp32_detector, screw_batch):
    scores, maps = fp32_detector.infer_batch(screw_batch)
    expected_scores, expected_maps = infer_raw(fp32_detector.model, torch.from_numpy(screw_batch), 'cpu')

    assert fp32_detector.precision == 'fp32'
    assert np.array_equal(scores, expected_scores)
    assert np.array_equal(maps, expected_maps)


@needs_cpu_bf16
def test_bf16_maps_close_to_fp32(fp32_detector, bf16_detector, screw_batch):
    fp32_scores, fp32_maps = fp32_detector.infer_batch(screw_batch)
    bf16_scores, bf16_maps = bf16_detector.infer_batch(screw_batch)
    map_range = float(fp32_maps.max() - fp32_maps.min())
    map_diff = float(np.abs(bf16_maps - fp32_maps).max())
    score_diff = float(np.abs(bf16_scores - fp32_scores).max())

    assert map_range > 0.0
    assert map_diff <= MAP_TOLERANCE_OF_RANGE * map_range, (
        f'bf16 map differs by {map_diff:.3g}, {map_diff / map_range:.2%} of the fp32 range {map_range:.3g}')
    assert score_diff <= MAP_TOLERANCE_OF_RANGE * map_range
    # bf16 must actually change the numbers; identical maps mean autocast did not run.
    assert map_diff > 0.0
    print(f'bf16 - fp32: max map diff {map_diff:.4g} ({map_diff / map_range:.3%} of range {map_range:.4g}), '
          f'max score diff {score_diff:.4g}')


@needs_cpu_bf16
def test_bf16_outputs_float32_numpy(bf16_detector, screw_batch):
    scores, maps = bf16_detector.infer_batch(screw_batch)

    assert isinstance(scores, np.ndarray)
    assert isinstance(maps, np.ndarray)
    assert scores.dtype == np.float32
    assert maps.dtype == np.float32
    assert scores.shape == (len(SCREW_IMAGES),)
    assert maps.shape == (len(SCREW_IMAGES), 64, 64)
    assert np.all(np.isfinite(maps))


@needs_cpu_bf16
def test_bf16_predict_on_real_image(fp32_detector, bf16_detector, screw_root):
    rgb = read_image(screw_root / 'test' / 'scratch_head' / '000.png')
    fp32_prediction = fp32_detector.predict(rgb)
    bf16_prediction = bf16_detector.predict(rgb)
    _, fp32_maps = fp32_detector.infer_batch(to_model_input(rgb, 64))
    map_range = float(fp32_maps.max() - fp32_maps.min())

    assert bf16_prediction.anomaly_map.dtype == np.float32
    assert bf16_prediction.anomaly_map.shape == rgb.shape[:2]
    assert abs(bf16_prediction.raw_score - fp32_prediction.raw_score) <= MAP_TOLERANCE_OF_RANGE * map_range


@needs_cpu_bf16
def test_from_checkpoint_passes_bf16(bf16_detector):
    stem = bf16_detector.model.cnn_teacher.extractor.conv1

    assert bf16_detector.precision == 'bf16'
    assert stem.weight.is_contiguous(memory_format=torch.channels_last)


def test_from_checkpoint_checks_precision_first(tmp_path):
    missing = tmp_path / 'missing.pt'

    # A ValueError, not a CheckpointError: the precision is checked before the file is read.
    with pytest.raises(ValueError, match="'fp16'"):
        AnomalyDetector.from_checkpoint(missing, precision='fp16')
    with pytest.raises(ValueError, match="'fp64'"):
        AnomalyDetector.from_checkpoint(missing, precision='fp64')


def test_local_teacher_and_map_float32_under_autocast(tiny_checkpoint, screw_batch):
    model = load_checkpoint(tiny_checkpoint).model.eval()
    images = torch.from_numpy(screw_batch)

    with torch.inference_mode(), torch.autocast('cpu', dtype=torch.bfloat16):
        output = model(images)
        teacher = model.extract_teacher_features(images)
        student = model.decode(model.fuse(teacher.local, teacher.global_))
    with torch.inference_mode():
        expected = model.anomaly_map_generator(
            [level.float() for level in teacher.local], [level.float() for level in student])

    assert all(level.dtype == torch.bfloat16 for level in student), 'the student must run in bf16'
    assert all(level.dtype == torch.float32 for level in teacher.local), 'the local teacher must stay fp32'
    assert all(level.dtype == torch.bfloat16 for level in teacher.global_), 'the Transformer must run in bf16'
    assert output.anomaly_map.dtype == torch.float32
    assert output.pred_score.dtype == torch.float32
    assert torch.equal(output.anomaly_map, expected)


def test_fp16_on_cpu_raises(tiny_checkpoint):
    loaded = load_checkpoint(tiny_checkpoint)

    with pytest.raises(ValueError) as raised:
        AnomalyDetector(loaded.model, loaded.calibration, 'tiny', 'cpu', precision='fp16')
    message = str(raised.value)
    assert "'fp16'" in message
    assert "'bf16' or 'fp32' on the CPU" in message
    assert 'CUDA' in message


def test_unknown_precision_raises(fp32_detector, screw_batch):
    with pytest.raises(ValueError, match=r"one of fp32, fp16, bf16, got 'half'"):
        AnomalyDetector(fp32_detector.model, fp32_detector.calibration, 'tiny', precision='half')
    with pytest.raises(ValueError, match=r"got 'FP32'"):
        infer_raw(fp32_detector.model, torch.from_numpy(screw_batch), 'cpu', precision='FP32')


def test_bf16_rejected_without_onednn_bf16(monkeypatch):
    monkeypatch.setattr(inference, 'cpu_bf16_unavailable_reason', lambda: 'no bf16 instructions')

    with pytest.raises(ValueError) as raised:
        autocast_dtype('bf16', 'cpu')
    message = str(raised.value)
    assert 'no bf16 instructions' in message
    assert "use 'fp32' on this CPU" in message
    assert autocast_dtype('fp32', 'cpu') is None


def test_cuda_precisions(monkeypatch):
    # Only the checks run here, no CUDA kernels, so no GPU is needed.
    monkeypatch.setattr(torch.cuda, 'is_bf16_supported', lambda including_emulation=True: False)
    assert autocast_dtype('fp16', 'cuda') == torch.float16
    assert autocast_dtype('fp32', 'cuda:0') is None
    expected = "'bf16' is not supported on CUDA device cuda:0.*use 'fp16' or 'fp32'"
    with pytest.raises(ValueError, match=expected):
        autocast_dtype('bf16', 'cuda:0')

    monkeypatch.setattr(torch.cuda, 'is_bf16_supported', lambda including_emulation=True: True)
    assert autocast_dtype('bf16', 'cuda') == torch.bfloat16


def test_reduced_precision_other_device_raises():
    with pytest.raises(ValueError, match="cpu and cuda devices only, got device meta"):
        autocast_dtype('bf16', 'meta')
    assert autocast_dtype('fp32', 'meta') is None


@needs_cpu_bf16
def test_check_against_fp32_within_tolerance(bf16_detector, screw_batch):
    check = bf16_detector.check_against_fp32(screw_batch)

    assert check.images == len(screw_batch)
    assert 0.0 < check.max_map_diff, 'bf16 must differ from fp32 by more than nothing'
    assert check.passed, check.describe()
