"""Tests of hetnet-train: settings, hold-out split, training, resume and torchrun."""

import os
import pathlib
import subprocess
import sys

import pytest
import torch

from hetnet_ros.checkpoint import CheckpointError, read_checkpoint
from hetnet_ros.data.mvtec import DatasetError
from hetnet_ros.model import HetNetConfig
from hetnet_ros.model.config import IMAGENET_MEAN
from hetnet_ros.train import (
    TrainOptions, build_parser, main, options_from_args, resolve_config, split_holdout, train)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]

# The tiny settings of the tiny_checkpoint fixture, as command-line arguments.
TINY_ARGS = [
    '--image-size', '64', '--cnn-teacher', 'resnet18', '--cnn-weights', 'random',
    '--transformer-teacher', 'swin_tiny_patch4_window7_224', '--transformer-weights', 'random',
    '--batch-size', '4', '--max-train-images', '10', '--holdout-images', '2', '--seed', '0',
    '--device', 'cpu', '--no-progress',
]


def test_defaults_follow_paper():
    options = options_from_args(build_parser().parse_args(['--data', 'x']))
    assert options.image_size == 256
    assert options.learning_rate == 0.005
    assert options.betas == (0.5, 0.999)
    assert options.alpha == 0.1
    assert options.epochs == 200
    assert options.batch_size == 16
    assert options.levels == (1, 2, 3)
    assert options.sigma == 4.0
    config = resolve_config(options)
    assert config.levels == (1, 2, 3)
    assert config.sigma == 4.0
    assert (config.teacher_mode, config.use_algf, config.noise) == ('both', True, 'mgd')
    assert config.loss_cosine == 'per_position'
    assert options.max_train_time_s is None, 'training must not stop on time by default'


def test_ablation_and_ambiguity_flags_reach_config():
    args = build_parser().parse_args([
        '--data', 'x', '--levels', '2', '3', '--image-size', '128', '--sigma', '2.5',
        '--teacher-mode', 'cnn', '--no-algf', '--noise', 'randn', '--noise-size', 'random_region',
        '--noise-scale-max', '0.5', '--uncentered-noise', '--loss-cosine', 'flattened', '--alpha', '0.2'])

    config = resolve_config(options_from_args(args))

    assert config.levels == (2, 3)
    assert config.sigma == 2.5
    assert config.teacher_mode == 'cnn'
    assert config.use_algf is False
    assert config.noise == 'randn'
    assert config.noise_size == 'random_region'
    assert config.noise_scale_max == 0.5
    assert config.noise_centered is False
    assert config.loss_cosine == 'flattened'
    assert config.alpha == 0.2


def test_invalid_levels_rejected_by_config():
    args = build_parser().parse_args(['--data', 'x', '--levels', '1', '3'])
    with pytest.raises(ValueError, match='consecutive'):
        resolve_config(options_from_args(args))


def test_help_states_units_and_defaults():
    text = build_parser().format_help()
    assert 'pixels' in text
    assert '(default: 200)' in text
    assert 'torchrun' in text


def test_default_teachers_are_offline():
    config = resolve_config(TrainOptions(data=pathlib.Path('x')))
    offline = HetNetConfig.offline_default()
    assert config.cnn_teacher == offline.cnn_teacher
    assert config.cnn_weights == offline.cnn_weights
    assert config.transformer_weights == offline.transformer_weights
    assert config.normalization_mean == offline.normalization_mean
    assert config.image_size == 256


def test_named_teacher_uses_hub_and_imagenet():
    config = resolve_config(TrainOptions(data=pathlib.Path('x'), cnn_teacher='wide_resnet50_2'))
    assert config.cnn_weights == 'hub'
    assert config.normalization_mean == IMAGENET_MEAN
    assert config.transformer_teacher == HetNetConfig.offline_default().transformer_teacher


def test_normalization_override():
    config = resolve_config(TrainOptions(
        data=pathlib.Path('x'), normalization_mean=(0.1, 0.2, 0.3), normalization_std=(1.0, 1.0, 1.0)))
    assert config.normalization_mean == (0.1, 0.2, 0.3)
    assert config.normalization_std == (1.0, 1.0, 1.0)


def test_split_holdout():
    assert split_holdout(10, 0.1, None) == ([1, 2, 3, 4, 5, 6, 7, 8, 9], [0])
    assert split_holdout(10, 0.5, None)[1] == [0, 2, 4, 6, 8]
    assert split_holdout(10, 0.1, 3)[1] == [0, 3, 6]
    assert split_holdout(3, 0.01, None)[1] == [0], 'at least one image is held out'


@pytest.mark.parametrize('count, fraction, images', [
    (5, 0.1, 5), (5, 0.1, 0), (5, 1.5, None), (1, 0.1, None)])
def test_split_holdout_invalid(count, fraction, images):
    with pytest.raises(ValueError):
        split_holdout(count, fraction, images)


@pytest.mark.parametrize('changes, fragment', [
    ({'epochs': -1}, 'epochs'),
    ({'batch_size': 0}, 'batch size'),
    ({'learning_rate': 0.0}, 'learning rate'),
    ({'betas': (0.5, 1.0)}, 'betas'),
    ({'max_train_images': 1}, 'max train images'),
    ({'max_train_time_s': 0.0}, 'max train time'),
    ({'device': 'tpu'}, 'device'),
    ({'image_size': 100, 'device': 'cpu'}, 'image_size'),
])
def test_invalid_options(screw_root, changes, fragment):
    with pytest.raises(ValueError, match=fragment):
        train(TrainOptions(data=screw_root, **changes))


def test_missing_data_folder(tmp_path):
    with pytest.raises(DatasetError, match='folder not found'):
        train(TrainOptions(data=tmp_path / 'missing'))


def test_main_reports_errors(tmp_path, caplog):
    assert main(['--data', str(tmp_path / 'missing'), '--no-progress']) == 1
    assert 'hetnet-train failed: folder not found' in caplog.text


def test_tiny_training_output(tiny_checkpoint):
    payload = read_checkpoint(tiny_checkpoint)
    training = payload['metadata']['training']
    assert training['epochs_completed'] == 1
    assert len(training['loss_history']) == 1
    assert training['loss_history'][0] > 0.0
    assert payload['training_state']['epoch'] == 1
    assert payload['calibration']['method'] == 'normal_quantile'


@pytest.fixture(scope='module')
def resumed_checkpoint(tiny_checkpoint, screw_root, tmp_path_factory) -> pathlib.Path:
    output = tmp_path_factory.mktemp('resumed') / 'resumed.pt'
    status = main(['--data', str(screw_root), '--output', str(output), '--resume', str(tiny_checkpoint),
                   '--epochs', '2', *TINY_ARGS])
    assert status == 0, 'hetnet-train --resume failed'
    return output


def test_resume_continues_from_saved_epoch(resumed_checkpoint, tiny_checkpoint):
    original = read_checkpoint(tiny_checkpoint)
    resumed = read_checkpoint(resumed_checkpoint)
    training = resumed['metadata']['training']
    assert training['epochs_completed'] == 2
    assert resumed['training_state']['epoch'] == 2
    assert len(training['loss_history']) == 2
    assert training['loss_history'][0] == original['metadata']['training']['loss_history'][0]
    assert resumed['metadata']['model_id'] != original['metadata']['model_id']
    assert resumed['config'] == original['config']


def test_resume_matches_uninterrupted_run(resumed_checkpoint, screw_root, tmp_path):
    output = tmp_path / 'straight.pt'
    assert main(['--data', str(screw_root), '--output', str(output), '--epochs', '2', *TINY_ARGS]) == 0
    straight = read_checkpoint(output)['state_dict']
    resumed = read_checkpoint(resumed_checkpoint)['state_dict']
    for name, tensor in straight.items():
        assert torch.allclose(resumed[name], tensor, atol=1e-5), f'{name} differs after resume'


def test_resume_needs_optimizer_state(tiny_checkpoint, screw_root, tmp_path):
    payload = torch.load(tiny_checkpoint, map_location='cpu', weights_only=True)
    payload['training_state'] = None
    path = tmp_path / 'no_state.pt'
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match='no optimizer state'):
        train(TrainOptions(data=screw_root, resume=path, max_train_images=10, holdout_images=2,
                           device='cpu', progress=False))


def test_torchrun_two_cpu_processes(screw_root, tmp_path):
    output = tmp_path / 'ddp.pt'
    environment = {
        **os.environ,
        'PYTHONPATH': os.pathsep.join(
            filter(None, [str(REPO_ROOT / 'hetnet_ros'), os.environ.get('PYTHONPATH')])),
        'OMP_NUM_THREADS': '1',
        'MASTER_ADDR': '127.0.0.1',
    }
    command = [
        sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
        '-m', 'hetnet_ros.train', '--data', str(screw_root), '--output', str(output), '--epochs', '1',
        *TINY_ARGS]
    completed = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, \
        f'torchrun failed:\n{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}'
    assert 'processes: 2' in completed.stdout
    payload = read_checkpoint(output)
    assert payload['metadata']['training']['epochs_completed'] == 1
    assert payload['training_state']['epoch'] == 1


def test_torchrun_ranks_hold_identical_weights(tmp_path):
    environment = {
        **os.environ,
        'PYTHONPATH': os.pathsep.join(
            filter(None, [str(REPO_ROOT / 'hetnet_ros'), os.environ.get('PYTHONPATH')])),
        'OMP_NUM_THREADS': '1',
        'MASTER_ADDR': '127.0.0.1',
    }
    worker = pathlib.Path(__file__).with_name('ddp_step_worker.py')
    command = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
               str(worker), str(tmp_path)]
    completed = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, \
        f'torchrun failed:\n{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}'

    ranks = [torch.load(tmp_path / f'rank{rank}.pt', weights_only=True) for rank in (0, 1)]
    assert ranks[0]['loss'] != ranks[1]['loss'], 'the ranks must train on different images'
    changed = [name for name, tensor in ranks[0]['trained'].items()
               if not torch.equal(tensor, ranks[0]['initial'][name])]
    assert changed, 'the step must change the trainable weights'
    for name, tensor in ranks[0]['trained'].items():
        assert torch.allclose(tensor, ranks[1]['trained'][name], atol=1e-6), \
            f'{name} differs between ranks after one step'


def test_time_limit_stops_after_first_epoch(screw_root, tmp_path):
    output = tmp_path / 'limited.pt'
    options = TrainOptions(
        data=screw_root, output=output, image_size=64, cnn_teacher='resnet18', cnn_weights='random',
        teacher_mode='cnn', noise='none', epochs=3, batch_size=4, max_train_images=6, holdout_images=2,
        max_train_time_s=1e-3, device='cpu', progress=False)

    train(options)

    payload = read_checkpoint(output)
    training = payload['metadata']['training']
    assert training['epochs_completed'] == 1, 'a spent time limit must stop after the first epoch'
    assert len(training['loss_history']) == 1
    assert payload['training_state']['epoch'] == 1
    assert payload['calibration']['method'] == 'normal_quantile', 'the stopped run must still be calibrated'


@pytest.mark.parametrize('arguments, message', [
    (['--quantile', '1.5'], '--quantile must be in'),
    (['--margin', '-1'], '--margin must be'),
])
def test_calibration_options_checked_before_training(arguments, message, screw_root, tmp_path, caplog):
    output = tmp_path / 'model.pt'
    assert main(['--data', str(screw_root), '--output', str(output), *TINY_ARGS, *arguments]) == 1
    assert message in caplog.text
    assert not output.exists()


def test_output_folder_rejected_before_training(screw_root, tmp_path, caplog):
    assert main(['--data', str(screw_root), '--output', str(tmp_path), *TINY_ARGS]) == 1
    assert 'is a folder' in caplog.text
