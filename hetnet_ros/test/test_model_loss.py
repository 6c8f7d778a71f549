"""Tests of the cosine distillation losses."""

import pytest
import torch

from hetnet_ros.model.loss import HetNetLoss, cosine_distance_map, multi_level_cosine_loss


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
