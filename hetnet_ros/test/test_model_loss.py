"""Tests of the cosine distillation losses."""

import pytest
import torch

from hetnet_ros.model import HetNet, HetNetConfig
from hetnet_ros.model.loss import (
    HetNetLoss, cosine_distance_map, flattened_cosine_distance, multi_level_cosine_loss)


def _levels(seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 8, 8, 8, generator=generator), torch.randn(2, 16, 4, 4, generator=generator)]


def test_distance_map_zero_for_identical():
    teacher = _levels()[0]

    distance = cosine_distance_map(teacher, teacher.clone())

    assert distance.shape == (2, 8, 8), f'map must be (N, H, W), got {tuple(distance.shape)}'
    assert distance.abs().max() < 1e-6, f'identical features must give 0, got {distance.abs().max():.2e}'


def test_distance_map_known_values():
    teacher = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)

    opposite = cosine_distance_map(teacher, -teacher)
    orthogonal = cosine_distance_map(teacher, torch.tensor([0.0, 3.0]).view(1, 2, 1, 1))
    scaled = cosine_distance_map(teacher, 5.0 * teacher)

    assert opposite.item() == pytest.approx(2.0), 'opposite vectors must give 2'
    assert orthogonal.item() == pytest.approx(1.0), 'orthogonal vectors must give 1'
    assert scaled.item() == pytest.approx(0.0, abs=1e-6), 'the distance must ignore the vector length'


def test_loss_zero_when_student_matches():
    teacher = _levels()

    loss = multi_level_cosine_loss(teacher, [level.clone() for level in teacher])

    assert loss.ndim == 0, 'the loss must be a scalar'
    assert loss.item() == pytest.approx(0.0, abs=1e-6), f'a perfect student must have loss 0, got {loss.item()}'


def test_loss_sums_level_means():
    teacher = _levels(0)
    student = _levels(1)

    loss = multi_level_cosine_loss(teacher, student)

    expected = sum(cosine_distance_map(t, s).mean() for t, s in zip(teacher, student))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6), 'loss must sum the per-level means'


def test_total_adds_weighted_recon():
    teacher, clean, noisy = _levels(0), _levels(1), _levels(2)

    losses = HetNetLoss(alpha=0.1)(teacher, clean, noisy)

    expected = losses['loss_kd'] + 0.1 * losses['loss_recon']
    assert losses['loss'].item() == pytest.approx(expected.item(), rel=1e-6), 'loss must be L_KD + alpha * L_Recon'
    assert losses['loss_recon'].item() > 0, 'a different noisy student must have L_Recon > 0'


def test_recon_zero_without_noisy_student():
    teacher, clean = _levels(0), _levels(1)

    losses = HetNetLoss(alpha=0.1)(teacher, clean, None)

    assert torch.is_tensor(losses['loss_recon']), 'loss_recon must stay a tensor'
    assert losses['loss_recon'].item() == 0.0, 'without a noisy student L_Recon must be 0'
    assert losses['loss'].item() == pytest.approx(losses['loss_kd'].item()), 'loss must equal L_KD'


def test_shape_mismatch_rejected():
    with pytest.raises(ValueError, match='same shape'):
        cosine_distance_map(torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 4, 4))


def test_flattened_distance_known_value():
    # Image 0: per position the student is orthogonal at one position and equal at the
    # other, so the per-position mean is 0.5. Flattened, the teacher is (1, 0, 0, 1) and
    # the student (0, 1, 0, 1): cosine 1/2, distance 0.5. Image 1 scales the teacher's
    # second position by 3, which changes only the flattened distance.
    teacher = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]],
                            [[[1.0, 0.0]], [[0.0, 3.0]]]])  # (2, 2, 1, 2)
    student = torch.tensor([[[[0.0, 0.0]], [[1.0, 1.0]]],
                            [[[0.0, 0.0]], [[1.0, 1.0]]]])

    flattened = flattened_cosine_distance(teacher, student)
    per_position = cosine_distance_map(teacher, student).mean(dim=(1, 2))

    assert flattened.shape == (2,), f'one distance per image expected, got {tuple(flattened.shape)}'
    assert flattened[0].item() == pytest.approx(0.5), 'flattened distance of image 0'
    assert flattened[1].item() == pytest.approx(1.0 - 3.0 / (10 ** 0.5 * 2 ** 0.5)), 'flattened distance of image 1'
    assert per_position[1].item() == pytest.approx(0.5), 'per-position distance ignores the norm of a position'


def test_flattened_loss_sums_level_means():
    teacher = _levels(0)
    student = _levels(1)

    loss = multi_level_cosine_loss(teacher, student, cosine='flattened')

    expected = 0.0
    for t, s in zip(teacher, student):
        expected += (1.0 - torch.nn.functional.cosine_similarity(t.flatten(1), s.flatten(1))).mean().item()
    assert loss.item() == pytest.approx(expected, rel=1e-6), 'flattened loss must sum the per-level means'


def test_hetnet_loss_uses_chosen_cosine():
    teacher, clean, noisy = _levels(0), _levels(1), _levels(2)

    losses = HetNetLoss(alpha=0.1, cosine='flattened')(teacher, clean, noisy)

    expected_kd = multi_level_cosine_loss(teacher, clean, cosine='flattened')
    expected_recon = multi_level_cosine_loss(teacher, noisy, cosine='flattened')
    assert losses['loss_kd'].item() == pytest.approx(expected_kd.item(), rel=1e-6), 'L_KD must use the flattened cosine'
    assert losses['loss_recon'].item() == pytest.approx(expected_recon.item(), rel=1e-6), \
        'L_Recon must use the flattened cosine'


def test_unknown_cosine_rejected():
    with pytest.raises(ValueError, match="cosine must be one of .*'mean'"):
        HetNetLoss(cosine='mean')
    with pytest.raises(ValueError, match='cosine must be one of'):
        multi_level_cosine_loss(_levels(0), _levels(1), cosine='mean')


@pytest.mark.parametrize('cosine', ['per_position', 'flattened'])
def test_model_training_loss_uses_config_cosine(cosine):
    torch.manual_seed(0)
    config = HetNetConfig(cnn_teacher='resnet18', cnn_weights='random', teacher_mode='cnn', noise='none',
                          image_size=64, bottleneck_blocks=1, decoder_blocks=1, loss_cosine=cosine)
    model = HetNet(config).train()
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))

    losses = model.training_loss(images)

    teacher = model.extract_teacher_features(images)
    student = model.decode(model.fuse(teacher.local, teacher.global_))
    expected = multi_level_cosine_loss(teacher.local, student, cosine=cosine)
    assert model.loss.cosine == cosine, f'the model must build its loss with cosine {cosine!r}'
    assert losses['loss_kd'].item() == pytest.approx(expected.item(), rel=1e-5), \
        f'training loss must use the {cosine} cosine'
