"""Tests of the frozen timm teachers: levels, layouts, freezing and every weight source."""

import cv2
import numpy as np
import pytest
import safetensors.torch
import timm
import torch

from hetnet_ros.model.teachers import (
    TimmTeacher,
    efficientnet_lite0_package_state_dict,
    select_out_indices,
    transformer_size_kwargs,
)

LEVELS = (1, 2, 3)
# ImageNet-1k class 783 is 'screw'.
IMAGENET_SCREW = 783


@pytest.fixture(scope='module')
def resnet_teacher():
    torch.manual_seed(0)
    return TimmTeacher('resnet18', 'random', LEVELS, 64)


def test_cnn_levels_by_stride(resnet_teacher):
    images = torch.rand(2, 3, 64, 64)

    features = resnet_teacher(images)

    assert resnet_teacher.strides == (4, 8, 16), 'levels 1-3 must have strides 4, 8, 16'
    assert resnet_teacher.channels == (64, 128, 256), 'resnet18 layer1-3 have 64, 128, 256 channels'
    shapes = [tuple(f.shape) for f in features]
    assert shapes == [(2, 64, 16, 16), (2, 128, 8, 8), (2, 256, 4, 4)], f'unexpected shapes {shapes}'


def test_teacher_frozen_after_train(resnet_teacher):
    resnet_teacher.train()

    assert not resnet_teacher.training, 'train() must leave the teacher in eval mode'
    assert not any(m.training for m in resnet_teacher.modules()), 'a teacher submodule is in train mode'
    assert not any(p.requires_grad for p in resnet_teacher.parameters()), 'a teacher parameter requires grad'


@pytest.mark.parametrize('image_size, expected', [
    (224, {}),
    (256, {'img_size': 256, 'window_size': 8}),
    (64, {'img_size': 64, 'window_size': 8}),
    (96, {'img_size': 96, 'window_size': 6}),
])
def test_swin_window_fits_grid(image_size, expected):
    kwargs = transformer_size_kwargs('swin_tiny_patch4_window7_224.ms_in22k', image_size)

    assert kwargs == expected, f'{image_size} px gave {kwargs}'


def test_swin_rejects_uneven_grid():
    with pytest.raises(ValueError, match='multiple of 32'):
        transformer_size_kwargs('swin_tiny_patch4_window7_224', 48)


def test_cnn_needs_no_size_kwargs():
    assert transformer_size_kwargs('resnet18', 64) == {}, 'CNNs accept any input size'


def test_missing_stride_rejected():
    feature_info = [{'reduction': 16, 'num_chs': 384, 'module': f'blocks.{i}'} for i in range(12)]

    with pytest.raises(ValueError, match=r'strides \[16\]'):
        select_out_indices('vit_small_patch16_224', feature_info, (4, 8, 16))


def test_deepest_entry_per_stride_chosen():
    feature_info = [{'reduction': r, 'num_chs': 8} for r in (2, 4, 4, 8, 16, 16, 32)]

    assert select_out_indices('toy', feature_info, (4, 8, 16)) == [2, 3, 5], 'must pick the last entry per stride'


def test_unknown_model_name_rejected():
    with pytest.raises(ValueError, match="'not_a_model' is not a timm model"):
        TimmTeacher('not_a_model', 'random', LEVELS, 64)


@pytest.mark.parametrize('suffix', ['.pth', '.safetensors'])
def test_local_weights_file_loaded(tmp_path, suffix):
    torch.manual_seed(1)
    source = timm.create_model('resnet18')
    path = tmp_path / f'resnet18{suffix}'
    if suffix == '.safetensors':
        safetensors.torch.save_file(source.state_dict(), str(path))
    else:
        torch.save({'state_dict': source.state_dict()}, path)

    teacher = TimmTeacher('resnet18', str(path), LEVELS, 64)

    loaded = teacher.extractor.state_dict()
    assert torch.equal(loaded['layer3.1.conv2.weight'], source.state_dict()['layer3.1.conv2.weight']), \
        'layer3 weights differ from the file'
    assert torch.equal(loaded['bn1.running_var'], source.state_dict()['bn1.running_var']), \
        'BatchNorm statistics differ from the file'


@pytest.mark.parametrize('num_classes', [0, 10])
def test_other_classifier_file_loaded(tmp_path, num_classes):
    torch.manual_seed(1)
    state_dict = timm.create_model('resnet18', num_classes=num_classes).state_dict()
    path = tmp_path / 'resnet18_other_head.pth'
    torch.save(state_dict, path)

    teacher = TimmTeacher('resnet18', str(path), LEVELS, 64)

    assert torch.equal(teacher.extractor.state_dict()['conv1.weight'], state_dict['conv1.weight']), \
        f'a file with {num_classes} classes must load into the feature extractor'


def test_wrong_shape_file_rejected(tmp_path):
    state_dict = timm.create_model('resnet18').state_dict()
    state_dict['layer1.0.conv1.weight'] = torch.zeros(64, 64, 1, 1)
    path = tmp_path / 'resnet18_tampered.pth'
    torch.save(state_dict, path)

    with pytest.raises(ValueError, match='size mismatch'):
        TimmTeacher('resnet18', str(path), LEVELS, 64)


def test_mismatched_weights_file_rejected(tmp_path):
    path = tmp_path / 'resnet34.pth'
    torch.save(timm.create_model('resnet34').state_dict(), path)

    with pytest.raises(ValueError, match='does not match timm'):
        TimmTeacher('resnet18', str(path), LEVELS, 64)


def test_missing_weights_file_rejected(tmp_path):
    with pytest.raises(FileNotFoundError, match='not found'):
        TimmTeacher('resnet18', str(tmp_path / 'absent.pth'), LEVELS, 64)


def test_swin_file_adapted_to_window_nchw(tmp_path):
    torch.manual_seed(2)
    source = timm.create_model('swin_tiny_patch4_window7_224')
    path = tmp_path / 'swin.pth'
    torch.save(source.state_dict(), path)

    teacher = TimmTeacher('swin_tiny_patch4_window7_224', str(path), LEVELS, 64)

    loaded = teacher.extractor.state_dict()
    assert torch.equal(loaded['patch_embed.proj.weight'], source.state_dict()['patch_embed.proj.weight']), \
        'patch embedding differs from the file'
    table = loaded['layers_0.blocks.0.attn.relative_position_bias_table']
    assert table.shape == (15 * 15, 3), f'window 8 needs a 15 x 15 bias table, got {tuple(table.shape)}'

    features = teacher(torch.rand(1, 3, 64, 64))
    shapes = [tuple(f.shape) for f in features]
    assert shapes == [(1, 96, 16, 16), (1, 192, 8, 8), (1, 384, 4, 4)], f'Swin maps not NCHW: {shapes}'
    assert all(f.is_contiguous() for f in features), 'teacher outputs must be contiguous'


def _screw_image(screw_root, size):
    path = sorted((screw_root / 'train' / 'good').glob('*.png'))[0]
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    rgb = cv2.resize(bgr[:, :, ::-1], (size, size), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float().div(255).unsqueeze(0)


def test_package_weights_classify_screw(screw_root):
    classifier = timm.create_model('tf_efficientnet_lite0')
    classifier.load_state_dict(efficientnet_lite0_package_state_dict(classifier), strict=True)
    classifier.eval()
    image = (_screw_image(screw_root, 224) - 0.5) / 0.5

    with torch.no_grad():
        top_class = classifier(image).argmax(dim=1).item()

    assert top_class == IMAGENET_SCREW, f'real lite0 weights should call a screw a screw, got class {top_class}'


def test_package_teacher_holds_real_weights(screw_root):
    reference = timm.create_model('tf_efficientnet_lite0')
    reference.load_state_dict(efficientnet_lite0_package_state_dict(reference), strict=True)
    torch.manual_seed(0)
    teacher = TimmTeacher('tf_efficientnet_lite0', 'efficientnet-lite0-package', LEVELS, 256)
    random_teacher = TimmTeacher('tf_efficientnet_lite0', 'random', LEVELS, 256)

    loaded = teacher.extractor.state_dict()
    for key in ('conv_stem.weight', 'blocks.4.2.conv_pwl.weight', 'blocks.4.2.bn3.running_var'):
        assert torch.equal(loaded[key], reference.state_dict()[key]), f'{key} is not the package tensor'
    assert not torch.equal(loaded['conv_stem.weight'], random_teacher.extractor.state_dict()['conv_stem.weight']), \
        'package weights equal a random init'

    with torch.no_grad():
        features = teacher((_screw_image(screw_root, 256) - 0.5) / 0.5)
    assert [tuple(f.shape[1:]) for f in features] == [(24, 64, 64), (40, 32, 32), (112, 16, 16)], \
        'lite0 levels 1-3 at 256 px must be 24@64, 40@32, 112@16'
    assert all(torch.isfinite(f).all() for f in features), 'real features must be finite'
