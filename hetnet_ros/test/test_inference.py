"""Tests of AnomalyDetector and OnnxAnomalyDetector with a real tiny checkpoint and real images."""

import copy
import os
import pathlib
import re
import subprocess
import sys

import cv2
import numpy as np
import onnx
import onnxruntime
import pytest
import torch

import hetnet_ros
from hetnet_ros import export
from hetnet_ros.calibration import Calibration
from hetnet_ros.data.mvtec import read_image
from hetnet_ros.data.preprocess import resize_rgb, rgb_to_tensor
from hetnet_ros.inference import AnomalyDetector, Prediction, Region, find_regions
from hetnet_ros.onnx_inference import OnnxAnomalyDetector, select_providers
from hetnet_ros.prediction import to_model_input
from hetnet_ros.runtimes import ModelLoadError, load_detector

SUBPROCESS_TIMEOUT_S = 120.0


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


# Pre- and post-processing shared by the runtimes, and the ONNX Runtime detector.

@pytest.fixture(scope='module')
def onnx_detector(tiny_onnx) -> OnnxAnomalyDetector:
    return OnnxAnomalyDetector.from_file(tiny_onnx, providers=['CPUExecutionProvider'])


@pytest.mark.parametrize('height, width', [(200, 300), (64, 64), (40, 30), (50, 100), (100, 50)])
def test_resize_to_model_matches_training(screw_image, height, width):
    rgb = cv2.resize(screw_image, (width, height), interpolation=cv2.INTER_AREA)

    expected = rgb_to_tensor(resize_rgb(rgb, 64)).numpy()
    model_input = to_model_input(rgb, 64)

    assert model_input.shape == (1, 3, 64, 64)
    assert model_input.dtype == np.float32
    assert np.array_equal(model_input[0], expected), 'inference must prepare images exactly as training'


def test_onnx_detector_has_torch_interface(onnx_detector, detector):
    assert onnx_detector.model_id == detector.model_id
    assert onnx_detector.image_size == detector.image_size
    assert onnx_detector.threshold == detector.threshold
    assert onnx_detector.raw_threshold == detector.raw_threshold
    assert onnx_detector.calibration == detector.calibration
    assert onnx_detector.metadata == detector.metadata
    assert onnx_detector.runtime == 'onnxruntime'
    assert detector.runtime == 'torch'
    assert onnx_detector.device == 'cpu'


def test_onnx_predict_map_has_input_size(onnx_detector, detector, screw_image):
    prediction = onnx_detector.predict(screw_image)
    reference = detector.predict(screw_image)

    assert isinstance(prediction, Prediction)
    assert prediction.anomaly_map.shape == (200, 300)
    assert prediction.anomaly_map.dtype == np.float32
    assert prediction.anomaly_map.min() >= 0.0
    assert prediction.anomaly_map.max() <= 1.0
    assert prediction.is_anomalous == reference.is_anomalous
    assert prediction.raw_score == pytest.approx(reference.raw_score, abs=export.DEFAULT_TOLERANCE)
    assert prediction.inference_time_s > 0.0


def test_onnx_warmup_returns_time(onnx_detector):
    assert onnx_detector.warmup() > 0.0


def test_onnx_predict_rejects_bad_input(onnx_detector):
    with pytest.raises(ValueError, match='dtype is float32, expected uint8'):
        onnx_detector.predict(np.zeros((8, 8, 3), np.float32))


# Loads the export and predicts in a fresh interpreter where importing torch raises.
NO_TORCH_SCRIPT = '''
import importlib.abc
import sys

class BlockTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == 'torch' or name.startswith('torch.'):
            raise ImportError(f'importing {name} is blocked by the test')
        return None

sys.meta_path.insert(0, BlockTorch())

import numpy as np
from hetnet_ros.runtimes import load_detector

detector, reason = load_detector(sys.argv[1], device='cpu')
prediction = detector.predict(np.full((48, 40, 3), 100, np.uint8))
print(detector.runtime, prediction.anomaly_map.shape)
print('torch imported:', any(name == 'torch' or name.startswith('torch.') for name in sys.modules))
'''


def test_onnx_path_imports_no_torch(tiny_onnx):
    environment = dict(os.environ)
    package_parent = str(pathlib.Path(hetnet_ros.__file__).resolve().parents[1])
    environment['PYTHONPATH'] = os.pathsep.join(filter(None, [package_parent, environment.get('PYTHONPATH')]))

    result = subprocess.run(
        [sys.executable, '-c', NO_TORCH_SCRIPT, str(tiny_onnx)], env=environment,
        capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S)

    assert result.returncode == 0, result.stderr
    assert 'onnxruntime (48, 40)' in result.stdout
    assert 'torch imported: False' in result.stdout


def test_load_detector_picks_runtime_by_suffix(tiny_checkpoint, tiny_onnx):
    torch_detector, torch_reason = load_detector(tiny_checkpoint, 'torch', device='cpu')
    onnx_detector, onnx_reason = load_detector(tiny_onnx, device='cpu')

    assert isinstance(torch_detector, AnomalyDetector)
    assert torch_reason.startswith('runtime torch on cpu in fp32')
    assert isinstance(onnx_detector, OnnxAnomalyDetector)
    assert onnx_reason.startswith('runtime onnxruntime with CPUExecutionProvider')
    assert "runtime 'auto' runs .onnx files with ONNX Runtime" in onnx_reason


@pytest.mark.parametrize('model_file, runtime, device, fragment', [
    ('tiny_onnx', 'torch', 'cpu', "runtime 'torch' cannot run the ONNX file"),
    ('tiny_checkpoint', 'onnxruntime', 'cpu', 'export the checkpoint with hetnet-export'),
    ('tiny_onnx', 'tensorrt', 'cpu', 'runtime must be one of auto, torch, onnxruntime'),
    ('tiny_onnx', 'auto', 'gpu', 'device must be one of auto, cpu, cuda'),
])
def test_load_detector_rejects_bad_request(request, model_file, runtime, device, fragment):
    path = request.getfixturevalue(model_file)

    with pytest.raises(ValueError, match=re.escape(fragment)):
        load_detector(path, runtime, device)


def test_load_detector_wraps_file_errors(tmp_path):
    corrupt = tmp_path / 'corrupt.onnx'
    corrupt.write_bytes(b'this is not an ONNX model')
    foreign = tmp_path / 'foreign.onnx'
    identity = onnx.helper.make_graph(
        [onnx.helper.make_node('Identity', ['x'], ['y'])], 'identity',
        [onnx.helper.make_tensor_value_info('x', onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info('y', onnx.TensorProto.FLOAT, [1])])
    onnx.save(onnx.helper.make_model(identity), foreign)

    with pytest.raises(ModelLoadError, match='failed to load ONNX file'):
        load_detector(corrupt, device='cpu')
    with pytest.raises(ModelLoadError, match='not a hetnet_ros export'):
        load_detector(foreign, device='cpu')
    with pytest.raises(ModelLoadError, match='ONNX file not found'):
        load_detector(tmp_path / 'missing.onnx', device='cpu')
    with pytest.raises(ModelLoadError, match='checkpoint not found'):
        load_detector(tmp_path / 'missing.pt', device='cpu')


def test_select_providers_without_cuda():
    if 'CUDAExecutionProvider' in onnxruntime.get_available_providers():
        pytest.skip('this onnxruntime build has CUDA, so the error path cannot run')

    assert select_providers('auto')[0] == ['CPUExecutionProvider']
    with pytest.raises(ValueError, match='install onnxruntime-gpu'):
        select_providers('cuda')
