"""Tests of hetnet-export: a real tiny checkpoint exported to ONNX and run in ONNX Runtime."""

import logging
import pathlib

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
import torch.nn.functional as F

import hetnet_ros
from hetnet_ros import export
from hetnet_ros.checkpoint import LoadedCheckpoint, load_checkpoint
from hetnet_ros.data.mvtec import read_image
from hetnet_ros.inference import AnomalyDetector
from hetnet_ros.model import HetNetConfig
from hetnet_ros.onnx_inference import OnnxAnomalyDetector
from hetnet_ros.prediction import to_model_input

CHECK_IMAGE_COUNT = 3
# Real 1024 x 1024 screw test images of three kinds; the detectors resize them to 64 px.
SCREW_IMAGES = ('good/000.png', 'scratch_head/000.png', 'thread_top/000.png')


@pytest.fixture(scope='module')
def loaded(tiny_checkpoint) -> LoadedCheckpoint:
    return load_checkpoint(tiny_checkpoint)


@pytest.fixture(scope='module')
def detectors(tiny_onnx, loaded):
    """(PyTorch detector, ONNX Runtime detector) of the same tiny model."""
    torch_detector = AnomalyDetector(
        loaded.model, loaded.calibration, loaded.metadata['model_id'], metadata=loaded.metadata)
    return torch_detector, OnnxAnomalyDetector.from_file(tiny_onnx)


@pytest.fixture(scope='module')
def screw_images(screw_root) -> list[np.ndarray]:
    return [read_image(screw_root / 'test' / name) for name in SCREW_IMAGES]


def test_export_writes_only_the_file(tiny_onnx):
    leftovers = [path.name for path in tiny_onnx.parent.iterdir() if path != tiny_onnx]
    assert tiny_onnx.stat().st_size > 0
    assert leftovers == [], 'the temporary file must be renamed or removed'


def test_graph_input_and_outputs(tiny_onnx):
    model = onnx.load(str(tiny_onnx), load_external_data=False)
    (graph_input,) = model.graph.input
    outputs = {output.name: output for output in model.graph.output}
    input_dims = [dim.dim_param or dim.dim_value for dim in graph_input.type.tensor_type.shape.dim]
    map_dims = [dim.dim_param or dim.dim_value
                for dim in outputs['anomaly_map'].type.tensor_type.shape.dim]

    assert graph_input.name == 'images'
    assert isinstance(input_dims[0], str), 'the batch size must be dynamic'
    assert input_dims[1:] == [3, 64, 64]
    assert map_dims[1:] == [1, 64, 64]
    assert len(outputs['pred_score'].type.tensor_type.shape.dim) == 1


def test_metadata_round_trip(detectors, loaded):
    _, detector = detectors
    stored = detector.export_metadata

    assert stored['format'] == 'hetnet_ros.onnx'
    assert stored['format_version'] == 1
    assert stored['model_id'] == loaded.metadata['model_id']
    assert detector.model_id == loaded.metadata['model_id']
    assert stored['image_size'] == 64
    assert stored['calibration'] == loaded.calibration.to_dict()
    assert detector.calibration == loaded.calibration
    assert HetNetConfig.from_dict(stored['config']) == loaded.config
    assert stored['checkpoint_metadata'] == loaded.metadata
    assert stored['package_version'] == hetnet_ros.__version__
    assert stored['tolerance'] == export.DEFAULT_TOLERANCE
    assert stored['opset'] >= export.MIN_OPSET


def test_metadata_records_check(detectors, screw_root):
    verification = detectors[1].export_metadata['verification']

    assert verification['source'] == str(screw_root / 'test')
    assert verification['image_count'] == CHECK_IMAGE_COUNT
    assert verification['max_abs_diff_anomaly_map'] <= export.DEFAULT_TOLERANCE
    assert verification['max_abs_diff_pred_score'] <= export.DEFAULT_TOLERANCE
    assert verification['verdict_mismatches'] == 0


def test_onnx_matches_torch_raw_outputs(detectors, screw_images):
    torch_detector, onnx_detector = detectors
    batch = np.concatenate([to_model_input(rgb, 64) for rgb in screw_images])

    onnx_scores, onnx_maps = onnx_detector.infer_batch(batch)
    torch_scores, torch_maps = torch_detector.infer_batch(batch)

    assert onnx_maps.shape == (CHECK_IMAGE_COUNT, 64, 64), 'a batch of 3 must run (dynamic batch)'
    np.testing.assert_allclose(onnx_maps, torch_maps, rtol=0, atol=export.DEFAULT_TOLERANCE,
                               err_msg='anomaly_map differs beyond the stated tolerance')
    np.testing.assert_allclose(onnx_scores, torch_scores, rtol=0, atol=export.DEFAULT_TOLERANCE,
                               err_msg='pred_score differs beyond the stated tolerance')


@pytest.mark.parametrize('index', range(len(SCREW_IMAGES)))
def test_onnx_matches_torch_predictions(detectors, screw_images, index):
    torch_detector, onnx_detector = detectors
    rgb = screw_images[index]
    # A raw difference d changes normalised scores by at most 0.5 * d / scale.
    normalised_tolerance = 0.5 * export.DEFAULT_TOLERANCE / torch_detector.calibration.scale

    onnx_prediction = onnx_detector.predict(rgb)
    torch_prediction = torch_detector.predict(rgb)

    assert onnx_prediction.anomaly_map.shape == rgb.shape[:2]
    assert onnx_prediction.raw_score == pytest.approx(
        torch_prediction.raw_score, abs=export.DEFAULT_TOLERANCE)
    assert onnx_prediction.pred_score == pytest.approx(
        torch_prediction.pred_score, abs=normalised_tolerance)
    np.testing.assert_allclose(
        onnx_prediction.anomaly_map, torch_prediction.anomaly_map, rtol=0,
        atol=normalised_tolerance, err_msg=f'{SCREW_IMAGES[index]}: maps differ')
    assert onnx_prediction.is_anomalous == torch_prediction.is_anomalous, \
        f'{SCREW_IMAGES[index]}: verdicts differ'


def test_missing_checkpoint_exits_nonzero(tmp_path, caplog):
    missing = tmp_path / 'missing.pt'
    output = tmp_path / 'model.onnx'

    status = export.main(['--checkpoint', str(missing), '--output', str(output)])

    assert status == export.EXIT_FAILED
    assert f'checkpoint not found: {missing}' in caplog.text
    assert not output.exists()


def test_missing_check_images_exits_nonzero(tiny_checkpoint, tmp_path, caplog):
    missing = tmp_path / 'no_images'

    status = export.main(['--checkpoint', str(tiny_checkpoint), '--output', str(tmp_path / 'm.onnx'),
                          '--check-images', str(missing)])

    assert status == export.EXIT_FAILED
    assert f'check image folder not found: {missing}' in caplog.text


@pytest.mark.parametrize('arguments, fragment', [
    (['--opset', '17'], '--opset must be at least 18'),
    (['--max-images', '0'], '--max-images must be at least 1'),
    (['--tolerance', '-1'], '--tolerance must be a finite number >= 0'),
    (['--tolerance', 'nan'], '--tolerance must be a finite number >= 0'),
])
def test_invalid_arguments_exit_2(tmp_path, capsys, arguments, fragment):
    with pytest.raises(SystemExit) as exit_info:
        export.main(['--checkpoint', str(tmp_path / 'm.pt'), '--output', str(tmp_path / 'm.onnx'),
                     *arguments])

    assert exit_info.value.code == 2
    assert fragment in capsys.readouterr().err


def test_tolerance_exceeded_writes_nothing(tiny_onnx, tiny_checkpoint, loaded, tmp_path, monkeypatch):
    # Reusing the loaded checkpoint and the graph of the real export skips a second export.
    # A negative tolerance fails even where ONNX Runtime and PyTorch agree exactly.
    graph = onnx.load(str(tiny_onnx))
    monkeypatch.setattr(export, 'load_checkpoint', lambda path, device: loaded)
    monkeypatch.setattr(export, 'export_graph', lambda model, opset=None: graph)
    output = tmp_path / 'rejected.onnx'

    with pytest.raises(export.ToleranceExceededError, match='differs from PyTorch by more than'):
        export.export_checkpoint(tiny_checkpoint, output, tolerance=-1.0)

    assert list(tmp_path.iterdir()) == [], f'{output.name} must not be written'


def test_tolerance_exceeded_exits_3(tmp_path, monkeypatch, caplog):
    def exceed(*args, **kwargs):
        raise export.ToleranceExceededError('ONNX Runtime differs from PyTorch by more than 0')
    monkeypatch.setattr(export, 'export_checkpoint', exceed)

    status = export.main(['--checkpoint', str(tmp_path / 'm.pt'), '--output', str(tmp_path / 'm.onnx')])

    assert status == export.EXIT_MISMATCH
    assert 'differs from PyTorch' in caplog.text


def test_verification_is_logged(caplog):
    verification = export.Verification(
        source='random', image_count=2, max_abs_diff_anomaly_map=3e-7, max_abs_diff_pred_score=1e-7,
        max_abs_diff_anomaly_map_normalised=4e-7, max_abs_diff_pred_score_normalised=2e-7,
        verdict_mismatches=0, tolerance=1e-4)

    with caplog.at_level(logging.INFO, logger='hetnet_ros.export'):
        export._log_verification(verification)

    assert 'max abs difference anomaly_map 3e-07, pred_score 1e-07' in caplog.text
    assert 'tolerance 0.0001' in caplog.text
    assert verification.passed


def test_check_images_spread_over_folders(screw_root):
    files = export.find_check_images(screw_root / 'test', CHECK_IMAGE_COUNT)

    assert len(files) == CHECK_IMAGE_COUNT
    assert len({path.parent.name for path in files}) == CHECK_IMAGE_COUNT, \
        'the images must come from different defect types'
    assert all('_mask' not in path.stem for path in files)


def test_check_images_empty_folder_raises(tmp_path):
    (tmp_path / 'notes.txt').write_text('no images here')

    with pytest.raises(export.ExportError, match='no image files'):
        export.find_check_images(tmp_path, 3)


class TwoAttentions(torch.nn.Module):
    """3-D attention without mask, as in ALGF, and 4-D attention with a float mask."""

    def forward(self, first: torch.Tensor, second: torch.Tensor, mask: torch.Tensor):
        plain = F.scaled_dot_product_attention(first, second, first)
        masked = F.scaled_dot_product_attention(
            second.unsqueeze(1), first.unsqueeze(1), second.unsqueeze(1), attn_mask=mask)
        return plain, masked


def test_attention_translation_matches_torch():
    generator = torch.Generator().manual_seed(0)
    inputs = (torch.rand(2, 16, 8, generator=generator), torch.rand(2, 16, 8, generator=generator),
              torch.rand(16, 16, generator=generator))
    program = torch.onnx.export(
        TwoAttentions().eval(), inputs, dynamo=True,
        custom_translation_table={
            torch.ops.aten.scaled_dot_product_attention.default: export.translate_attention})
    session = onnxruntime.InferenceSession(
        program.model_proto.SerializeToString(), providers=['CPUExecutionProvider'])

    feed = {item.name: tensor.numpy() for item, tensor in zip(session.get_inputs(), inputs)}
    plain, masked = session.run(None, feed)
    expected_plain, expected_masked = TwoAttentions()(*inputs)

    np.testing.assert_allclose(plain, expected_plain.numpy(), rtol=0, atol=1e-6,
                               err_msg='3-D attention differs')
    np.testing.assert_allclose(masked, expected_masked.numpy(), rtol=0, atol=1e-6,
                               err_msg='4-D masked attention differs')
