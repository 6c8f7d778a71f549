"""Shared test configuration: an isolated ROS 2 domain and the real data sets."""

import os
import pathlib
import random

import pytest

# Every test run talks DDS over loopback only, in a domain of its own, so that
# parallel runs on one host cannot see each other. Set before rclpy is imported.
os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
os.environ.setdefault('ROS_DOMAIN_ID', str(random.randint(1, 100)))

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope='session')
def data_root() -> pathlib.Path:
    """Folder with the MVTec-layout data sets (HETNET_DATA or ../shared/data)."""
    root = pathlib.Path(os.environ.get('HETNET_DATA', REPO_ROOT.parent / 'shared' / 'data'))
    if not (root / 'mvtec_screw' / 'train' / 'good').is_dir():
        pytest.fail(
            f'data folder {root} has no mvtec_screw/train/good; point DATA (make test) or '
            'HETNET_DATA (pytest) at the folder that holds mvtec_screw and batteryweld_welding')
    return root


@pytest.fixture(scope='session')
def screw_root(data_root) -> pathlib.Path:
    return data_root / 'mvtec_screw'


@pytest.fixture(scope='session')
def weld_root(data_root) -> pathlib.Path:
    return data_root / 'batteryweld_welding'


@pytest.fixture(scope='session')
def tiny_checkpoint(tmp_path_factory, screw_root) -> pathlib.Path:
    """A small but real checkpoint trained by hetnet_ros.train on real screw images.

    Image size 64 px, resnet18 and swin_tiny_patch4_window7_224 teachers with random
    weights, 8 training images (2 steps of batch 4, one epoch) and a threshold calibrated
    on 2 held-out images. The file is about 125 MB because it stores both teachers.
    """
    from hetnet_ros.train import TrainOptions, train

    options = TrainOptions(
        data=screw_root, output=tmp_path_factory.mktemp('tiny_checkpoint') / 'tiny.pt',
        image_size=64, cnn_teacher='resnet18', cnn_weights='random',
        transformer_teacher='swin_tiny_patch4_window7_224', transformer_weights='random',
        epochs=1, batch_size=4, max_train_images=10, holdout_images=2, seed=0, device='cpu',
        progress=False)
    return train(options)


@pytest.fixture(scope='session')
def tiny_onnx(tiny_checkpoint, tmp_path_factory, screw_root) -> pathlib.Path:
    """The tiny checkpoint exported by hetnet-export and checked on 3 real screw test images."""
    from hetnet_ros import export

    path = tmp_path_factory.mktemp('tiny_onnx') / 'tiny.onnx'
    status = export.main([
        '--checkpoint', str(tiny_checkpoint), '--output', str(path),
        '--check-images', str(screw_root / 'test'), '--max-images', '3'])
    assert status == export.EXIT_OK, f'hetnet-export exited with {status}'
    return path
