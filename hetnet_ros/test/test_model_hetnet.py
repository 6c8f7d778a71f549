"""Tests of the complete HetNet model on tiny inputs and on a real screw image."""

import cv2
import numpy as np
import pytest
import timm
import torch

from hetnet_ros.model import HetNet, HetNetConfig, InferenceBatch
from hetnet_ros.model.algf import AdaptiveLocalGlobalFusion, ConcatFusion
from hetnet_ros.model.teachers import efficientnet_lite0_package_state_dict

IMAGE_SIZE = 64
BATCH = 2


def tiny_config(**overrides):
    values = dict(cnn_teacher='resnet18', cnn_weights='random',
                  transformer_teacher='swin_tiny_patch4_window7_224', transformer_weights='random',
                  image_size=IMAGE_SIZE, bottleneck_blocks=1, decoder_blocks=1)
    values.update(overrides)
    return HetNetConfig(**values)


def random_images(batch=BATCH, seed=0):
    return torch.rand(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope='module')
def model():
    torch.manual_seed(0)
    hetnet = HetNet(tiny_config())
    hetnet.fit_noise_statistics([random_images(seed=s) for s in range(3)], progress=False)
    return hetnet


def test_teacher_and_student_shapes_match(model):
    model.eval()
    teacher = model.extract_teacher_features(random_images())

    with torch.no_grad():
        student = model.decode(model.fuse(teacher.local, teacher.global_))

    expected = [(BATCH, 64, 16, 16), (BATCH, 128, 8, 8), (BATCH, 256, 4, 4)]
    assert [tuple(t.shape) for t in teacher.local] == expected, 'CNN teacher shapes per level'
    assert [tuple(g.shape[-2:]) for g in teacher.global_] == [(16, 16), (8, 8), (4, 4)], \
        'Transformer maps must be resized to the CNN map size'
    assert [tuple(s.shape) for s in student] == expected, 'student shapes must equal teacher shapes'


def test_inference_output_shapes(model):
    model.eval()

    with torch.no_grad():
        result = model(random_images())

    assert isinstance(result, InferenceBatch), f'eval forward must return InferenceBatch, got {type(result)}'
    assert result.pred_score.shape == (BATCH,), f'pred_score shape {tuple(result.pred_score.shape)}'
    assert result.anomaly_map.shape == (BATCH, 1, IMAGE_SIZE, IMAGE_SIZE), 'anomaly_map must be (N, 1, S, S)'
    assert torch.isfinite(result.anomaly_map).all(), 'anomaly_map is not finite'
    assert torch.equal(result.pred_score, result.anomaly_map.amax(dim=(1, 2, 3))), 'pred_score must be the map max'


def test_inference_deterministic(model):
    model.eval()
    images = random_images()

    with torch.no_grad():
        first = model(images)
        second = model(images)

    assert torch.equal(first.anomaly_map, second.anomaly_map), 'two eval forwards must give the same map'
    assert torch.equal(first.pred_score, second.pred_score), 'two eval forwards must give the same score'


def test_gradients_reach_trainable_only(model):
    model.train()
    model.zero_grad(set_to_none=True)

    losses = model.training_loss(random_images())
    losses['loss'].backward()

    assert torch.isfinite(losses['loss']), 'training loss is not finite'
    assert losses['loss_recon'].item() > 0, "noise 'mgd' must run the denoising student"
    for name, parameter in model.named_parameters():
        if name.startswith(('cnn_teacher.', 'transformer_teacher.')):
            assert parameter.grad is None, f'teacher parameter {name} received a gradient'
        else:
            assert parameter.grad is not None, f'trainable parameter {name} has no gradient'
            assert parameter.grad.abs().sum() > 0, f'trainable parameter {name} has an all-zero gradient'
    model.zero_grad(set_to_none=True)


def test_trainable_parameters_exclude_teachers(model):
    trainable = {id(p) for p in model.trainable_parameters()}
    requires_grad = {id(p) for p in model.parameters() if p.requires_grad}
    teacher = {id(p) for m in (model.cnn_teacher, model.transformer_teacher) for p in m.parameters()}

    assert trainable == requires_grad, 'trainable_parameters() must be exactly the parameters that require grad'
    assert not trainable & teacher, 'trainable_parameters() must not contain teacher parameters'


def test_teachers_stay_in_eval_mode(model):
    model.train()

    assert model.decoder.training, 'the decoder must follow train()'
    assert not model.cnn_teacher.training, 'the CNN teacher must stay in eval mode'
    assert not model.transformer_teacher.training, 'the Transformer teacher must stay in eval mode'


def test_train_forward_returns_losses(model):
    model.train()

    losses = model(random_images())

    assert set(losses) == {'loss', 'loss_kd', 'loss_recon'}, f'train forward returned {sorted(losses)}'
    model.zero_grad(set_to_none=True)


def test_wrong_image_shape_rejected(model):
    with pytest.raises(ValueError, match=r'\(N, 3, 64, 64\).*\(2, 3, 32, 32\)'):
        model.extract_teacher_features(torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match=r'\(N, 3, 64, 64\)'):
        model.extract_teacher_features(torch.rand(3, 64, 64))


def test_integer_images_rejected(model):
    with pytest.raises(ValueError, match='float tensor'):
        model.extract_teacher_features(torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8))


def test_fit_shows_progress(model, capsys):
    model.fit_noise_statistics([random_images(seed=7), random_images(seed=8)], progress=True)

    assert 'LMGN statistics' in capsys.readouterr().err, 'fitting with progress=True must show a tqdm bar'
    assert model.noise_statistics_fitted, 'statistics must exist after fitting'
    assert not any(key.startswith('lmgn.') for key in model.state_dict()), 'LMGN statistics must not be saved'


@pytest.mark.parametrize('overrides', [
    dict(teacher_mode='cnn'),
    dict(teacher_mode='cnn', noise='none', levels=(2, 3)),
    dict(teacher_mode='transformer'),
    dict(use_algf=False, noise='randn'),
], ids=['cnn-mgd', 'cnn-none-levels-2-3', 'transformer-mgd', 'algf-off-randn'])
def test_ablation_runs(overrides):
    torch.manual_seed(0)
    model = HetNet(tiny_config(**overrides))
    model.fit_noise_statistics([random_images(seed=1)], progress=False)

    model.train()
    losses = model.training_loss(random_images())
    losses['loss'].backward()
    model.eval()
    with torch.no_grad():
        result = model(random_images())

    assert torch.isfinite(losses['loss']), f'{overrides}: loss is not finite'
    assert result.anomaly_map.shape == (BATCH, 1, IMAGE_SIZE, IMAGE_SIZE), f'{overrides}: map shape'
    assert torch.isfinite(result.anomaly_map).all(), f'{overrides}: map is not finite'
    if overrides.get('noise') == 'none':
        assert losses['loss_recon'].item() == 0.0, "noise 'none' must skip the denoising student"
    else:
        assert losses['loss_recon'].item() > 0, f'{overrides}: the denoising student did not run'
    _check_ablation_structure(model, overrides)


def _check_ablation_structure(model, overrides):
    mode = overrides.get('teacher_mode', 'both')
    if mode == 'cnn':
        assert model.transformer_teacher is None, "teacher_mode 'cnn' must not build a Transformer"
        assert model.fusion is None, "teacher_mode 'cnn' has nothing to fuse"
    if mode == 'transformer':
        assert model.cnn_teacher is None, "teacher_mode 'transformer' must not build a CNN"
        assert model.local_channels == (96, 192, 384), 'the Transformer must take the local role'
    if overrides.get('use_algf') is False:
        assert all(isinstance(block, ConcatFusion) for block in model.fusion), 'use_algf=False must concatenate'
    if 'levels' in overrides:
        assert model.local_channels == (128, 256), 'levels 2-3 of resnet18 have 128 and 256 channels'


def test_default_fusion_is_algf(model):
    assert all(isinstance(block, AdaptiveLocalGlobalFusion) for block in model.fusion), 'ALGF expected per level'


def test_unfitted_mgd_training_rejected():
    model = HetNet(tiny_config(teacher_mode='cnn'))

    with pytest.raises(RuntimeError, match='fit_noise_statistics'):
        model.training_loss(random_images())


def _screw_batch(screw_root, size):
    path = sorted((screw_root / 'train' / 'good').glob('*.png'))[0]
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    rgb = cv2.resize(bgr[:, :, ::-1], (size, size), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float().div(255).unsqueeze(0)


def test_offline_default_real_weights(screw_root):
    torch.manual_seed(0)
    config = HetNetConfig.offline_default()
    model = HetNet(config).eval()
    rebuilt = HetNet(config, load_teacher_weights=False).eval()
    images = _screw_batch(screw_root, config.image_size)

    classifier = timm.create_model('tf_efficientnet_lite0')
    reference = efficientnet_lite0_package_state_dict(classifier)
    loaded = model.cnn_teacher.extractor.state_dict()
    assert all(torch.equal(loaded[k], reference[k]) for k in loaded), 'CNN teacher must hold the package weights'
    assert not torch.equal(rebuilt.cnn_teacher.extractor.state_dict()['conv_stem.weight'],
                           loaded['conv_stem.weight']), 'load_teacher_weights=False must leave a random init'

    with torch.no_grad():
        local = model.extract_teacher_features(images).local
        result = model(images)
    assert all(torch.isfinite(f).all() for f in local), 'real teacher features must be finite'
    assert torch.isfinite(result.anomaly_map).all(), 'anomaly map of a real image must be finite'

    rebuilt.load_state_dict(model.state_dict(), strict=True)
    with torch.no_grad():
        restored = rebuilt(images)
    assert torch.equal(restored.anomaly_map, result.anomaly_map), 'a model rebuilt from the state dict must match'
