"""Tests of checkpoint saving, loading and error reporting, with a real tiny checkpoint."""

import pathlib

import pytest
import torch

import hetnet_ros
from hetnet_ros.calibration import Calibration
from hetnet_ros.checkpoint import (
    FORMAT_VERSION, CheckpointError, compute_model_id, load_checkpoint, read_checkpoint,
    save_checkpoint)
from hetnet_ros.model import HetNet, HetNetConfig


@pytest.fixture(scope='module')
def loaded(tiny_checkpoint):
    return load_checkpoint(tiny_checkpoint)


@pytest.fixture(scope='module')
def payload(tiny_checkpoint):
    return torch.load(tiny_checkpoint, map_location='cpu', weights_only=True)


def _write_modified(payload: dict, path: pathlib.Path, **changes) -> pathlib.Path:
    """Write the payload with `changes` and a matching model id, as another version would."""
    modified = {**payload, **changes}
    model_id = compute_model_id(modified['state_dict'], modified['config'], modified['calibration'])
    modified['metadata'] = {**modified['metadata'], 'model_id': model_id}
    torch.save(modified, path)
    return path


def test_loads_with_weights_only(payload):
    assert payload['format'] == 'hetnet_ros.checkpoint'
    assert payload['format_version'] == FORMAT_VERSION


def test_state_dict_excludes_noise_statistics(payload):
    lmgn_keys = [name for name in payload['state_dict'] if name.startswith('lmgn.')]
    assert lmgn_keys == [], 'LMGN statistics are refitted, not stored'
    assert any(name.startswith('cnn_teacher.') for name in payload['state_dict']), 'teacher weights are stored'


def test_metadata_round_trip(loaded):
    metadata = loaded.metadata
    assert metadata['model_id'].startswith('hetnet-')
    assert metadata['package_version'] == hetnet_ros.__version__
    assert 'T' in metadata['created'], f'created is not ISO 8601: {metadata["created"]}'
    training = metadata['training']
    assert training['options']['image_size'] == 64
    assert training['epochs_completed'] == 1
    assert len(training['train_images']) == 8
    assert len(training['holdout_images']) == 2
    assert not set(training['train_images']) & set(training['holdout_images']), \
        'held-out images must not be trained on'


def test_config_and_calibration_round_trip(loaded):
    assert isinstance(loaded.config, HetNetConfig)
    assert loaded.config.image_size == 64
    assert loaded.config.cnn_teacher == 'resnet18'
    assert loaded.config.transformer_teacher == 'swin_tiny_patch4_window7_224'
    assert loaded.config.normalization_mean == (0.485, 0.456, 0.406)
    assert isinstance(loaded.calibration, Calibration)
    assert loaded.calibration.normal_count == 2
    assert loaded.training_state['epoch'] == 1
    assert 'state' in loaded.training_state['optimizer']


def test_loaded_model_is_in_eval_mode(loaded):
    assert isinstance(loaded.model, HetNet)
    assert not loaded.model.training
    output = loaded.model(torch.rand(1, 3, 64, 64))
    assert output.anomaly_map.shape == (1, 1, 64, 64)


def test_save_again_keeps_weights_and_id(loaded, tmp_path):
    path = tmp_path / 'nested' / 'copy.pt'
    metadata = save_checkpoint(path, loaded.model, loaded.calibration, {'note': pathlib.Path('/x')})
    assert metadata['model_id'] == loaded.metadata['model_id'], 'same weights and calibration, same id'
    assert metadata['note'] == '/x', 'paths must be stored as strings'
    again = read_checkpoint(path)
    assert again['training_state'] is None
    for name, tensor in loaded.model.state_dict().items():
        assert torch.equal(again['state_dict'][name], tensor), f'{name} changed in the round trip'
    assert not list(tmp_path.glob('nested/.*.tmp')), 'the temporary file must be renamed away'


def test_new_calibration_changes_id(loaded, tmp_path):
    calibration = Calibration(threshold=loaded.calibration.threshold + 1.0, low=loaded.calibration.low,
                              method='normal_quantile', normal_count=1)
    metadata = save_checkpoint(tmp_path / 'other.pt', loaded.model, calibration)
    assert metadata['model_id'] != loaded.metadata['model_id']


def test_unstorable_metadata_rejected(loaded, tmp_path):
    with pytest.raises(CheckpointError, match='metadata.bad'):
        save_checkpoint(tmp_path / 'x.pt', loaded.model, loaded.calibration, {'bad': object()})


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match='checkpoint not found: .*missing.pt'):
        load_checkpoint(tmp_path / 'missing.pt')


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(CheckpointError, match='is not a file'):
        load_checkpoint(tmp_path)


def test_corrupt_file(tmp_path):
    path = tmp_path / 'corrupt.pt'
    path.write_bytes(b'this is not a checkpoint' * 10)
    with pytest.raises(CheckpointError, match='corrupt, truncated'):
        load_checkpoint(path)


def test_truncated_file(tiny_checkpoint, tmp_path):
    path = tmp_path / 'truncated.pt'
    with open(tiny_checkpoint, 'rb') as source:
        path.write_bytes(source.read(4096))
    with pytest.raises(CheckpointError, match='corrupt, truncated'):
        load_checkpoint(path)


def test_other_torch_file(tmp_path):
    path = tmp_path / 'weights.pt'
    torch.save({'weight': torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match='not a hetnet_ros checkpoint'):
        load_checkpoint(path)


def test_newer_format_version(payload, tmp_path):
    path = _write_modified(payload, tmp_path / 'newer.pt', format_version=FORMAT_VERSION + 1)
    with pytest.raises(CheckpointError, match='upgrade hetnet_ros'):
        read_checkpoint(path)


def test_incomplete_payload(payload, tmp_path):
    modified = dict(payload)
    del modified['calibration']
    path = tmp_path / 'incomplete.pt'
    torch.save(modified, path)
    with pytest.raises(CheckpointError, match="lacks the entries \\['calibration'\\]"):
        read_checkpoint(path)


def test_unknown_config_field(payload, tmp_path):
    path = _write_modified(payload, tmp_path / 'config.pt', config={**payload['config'], 'future_field': 1})
    with pytest.raises(CheckpointError, match='configuration .*future_field'):
        load_checkpoint(path)


def test_mismatched_weights(payload, tmp_path):
    state_dict = dict(payload['state_dict'])
    removed = sorted(state_dict)[-1]
    del state_dict[removed]
    path = _write_modified(payload, tmp_path / 'weights.pt', state_dict=state_dict)
    with pytest.raises(CheckpointError, match='does not match the model layout'):
        load_checkpoint(path)


def test_changed_weights_detected_as_corrupt(payload, tmp_path):
    state_dict = dict(payload['state_dict'])
    name = sorted(state_dict)[0]
    state_dict[name] = state_dict[name] + 1.0
    path = tmp_path / 'changed.pt'
    torch.save({**payload, 'state_dict': state_dict}, path)
    with pytest.raises(CheckpointError, match='is corrupt: its content hashes to'):
        load_checkpoint(path)
