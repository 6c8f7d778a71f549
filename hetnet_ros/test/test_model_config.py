"""Tests of HetNetConfig: defaults, the offline preset, dict round trips and validation."""

import json

import pytest

from hetnet_ros.model import HetNetConfig


def test_defaults_follow_paper():
    config = HetNetConfig()

    assert config.cnn_teacher == 'wide_resnet50_2', 'the paper uses WideResNet50 as CNN teacher'
    assert config.transformer_teacher.startswith('swin_tiny'), 'the paper uses Swin-T-22k'
    assert config.image_size == 256, 'the paper resizes images to 256 px'
    assert config.levels == (1, 2, 3), 'the paper uses levels k = 1, 2, 3'
    assert config.alpha == pytest.approx(0.1), 'the paper sets the L_Recon weight to 0.1'
    assert config.sigma == pytest.approx(4.0), 'the anomaly map is smoothed with sigma 4'
    assert config.strides == (4, 8, 16), 'level k must have stride 2 ** (k + 1)'
    assert config.teacher_mode == 'both', 'the paper fuses a CNN and a Transformer teacher'
    assert config.use_algf, 'the paper fuses the teachers with ALGF'
    assert config.noise == 'mgd', 'the paper adds multivariate Gaussian noise'
    assert config.loss_cosine == 'per_position', "equation (3) averages the per-position cosine distance"


def test_ambiguous_choices_default_and_alternatives():
    config = HetNetConfig()

    assert config.noise_centered, 'centred LMGN noise is the default reading'
    assert config.noise_size == 'uniform_scale', 'a uniform per-image factor is the default reading'
    for field, value in [('noise_centered', False), ('noise_size', 'fixed_scale'),
                         ('noise_size', 'random_region'), ('loss_cosine', 'flattened')]:
        changed = HetNetConfig(**{field: value})
        assert getattr(changed, field) == value, f'{field}={value!r} must be selectable'


def test_dict_without_new_fields_loads_defaults():
    # Checkpoints written before noise_size and loss_cosine existed lack both keys.
    values = HetNetConfig(loss_cosine='flattened', noise_size='fixed_scale').to_dict()
    del values['loss_cosine'], values['noise_size']

    restored = HetNetConfig.from_dict(values)

    assert restored.loss_cosine == 'per_position', 'a missing loss_cosine must mean the paper default'
    assert restored.noise_size == 'uniform_scale', 'a missing noise_size must mean the earlier behaviour'


def test_offline_default_uses_package_weights():
    config = HetNetConfig.offline_default()

    assert config.cnn_teacher == 'tf_efficientnet_lite0', 'offline CNN teacher must be lite0'
    assert config.cnn_weights == 'efficientnet-lite0-package', 'lite0 weights must come from the package'
    assert config.transformer_weights == 'random', 'no Swin weights are reachable offline'
    assert config.normalization_mean == (0.5, 0.5, 0.5), 'lite0 preprocessing uses mean 0.5'
    assert config.normalization_std == (0.5, 0.5, 0.5), 'lite0 preprocessing uses std 0.5'


def test_offline_default_accepts_overrides():
    config = HetNetConfig.offline_default(image_size=128, noise='randn')

    assert config.image_size == 128, 'override image_size was not applied'
    assert config.noise == 'randn', 'override noise was not applied'
    assert config.cnn_weights == 'efficientnet-lite0-package', 'overrides must keep the preset'


def test_dict_round_trip_keeps_tuples():
    config = HetNetConfig.offline_default(levels=(2, 3), image_size=64, use_algf=False)

    restored = HetNetConfig.from_dict(config.to_dict())
    assert restored == config, 'from_dict(to_dict()) must give an equal config'

    through_json = HetNetConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert through_json == config, 'a JSON round trip must give an equal config'
    assert isinstance(through_json.levels, tuple), 'levels must come back as a tuple'
    assert isinstance(through_json.normalization_mean, tuple), 'normalization_mean must be a tuple'


def test_from_dict_rejects_unknown_field():
    values = HetNetConfig().to_dict()
    values['learning_rate'] = 0.005

    with pytest.raises(ValueError, match='learning_rate'):
        HetNetConfig.from_dict(values)


@pytest.mark.parametrize('field, value, message', [
    ('teacher_mode', 'hybrid', "teacher_mode must be one of .*'hybrid'"),
    ('noise', 'gaussian', "noise must be one of .*'gaussian'"),
    ('noise_size', 'normal', "noise_size must be one of .*'normal'"),
    ('loss_cosine', 'mean', "loss_cosine must be one of .*'mean'"),
    ('noise_centered', 1, 'noise_centered must be True or False'),
    ('image_size', 100, 'image_size must be a positive multiple of 32.*100'),
    ('image_size', 0, 'image_size must be a positive multiple'),
    ('levels', (1, 3), 'consecutive'),
    ('levels', (0, 1), 'outside the supported'),
    ('levels', (), 'non-empty tuple'),
    ('levels', [1, 2, 3], 'tuple'),
    ('alpha', -0.1, 'alpha must be a finite number >= 0'),
    ('noise_scale_max', float('nan'), 'noise_scale_max'),
    ('sigma', 64.0, 'sigma=64.0'),
    ('cnn_weights', 'weights.txt', "cnn_weights='weights.txt' is invalid"),
    ('cnn_weights', 'efficientnet-lite0-package', "only fits the timm model 'tf_efficientnet_lite0'"),
    ('transformer_teacher', '', 'transformer_teacher must be a non-empty'),
    ('normalization_std', (0.5, 0.0, 0.5), 'normalization_std values must be > 0'),
    ('normalization_mean', (0.5, 0.5), 'normalization_mean must be a tuple of 3'),
    ('use_algf', 'yes', 'use_algf must be True or False'),
    ('decoder_blocks', 0, 'decoder_blocks must be an int >= 1'),
])
def test_invalid_value_rejected(field, value, message):
    values = dict(cnn_teacher='resnet18', image_size=64)
    values[field] = value

    with pytest.raises(ValueError, match=message):
        HetNetConfig(**values)


def test_level_four_needs_larger_multiple():
    with pytest.raises(ValueError, match='multiple of 64'):
        HetNetConfig(levels=(2, 3, 4), image_size=96)

    config = HetNetConfig(levels=(2, 3, 4), image_size=128)
    assert config.strides == (8, 16, 32), 'levels 2-4 must have strides 8, 16, 32'
