"""Tests of the anomaly map and its Gaussian smoothing."""

import pytest
import torch

from hetnet_ros.model.anomaly_map import AnomalyMapGenerator, GaussianBlur2d, gaussian_kernel1d


def test_kernel_sums_to_one():
    kernel = gaussian_kernel1d(4.0)

    assert kernel.numel() == 33, f'sigma 4 needs 2 * ceil(16) + 1 = 33 taps, got {kernel.numel()}'
    assert kernel.sum().item() == pytest.approx(1.0, abs=1e-6), 'the kernel must sum to 1'
    assert torch.allclose(kernel, kernel.flip(0)), 'the kernel must be symmetric'
    assert kernel.argmax().item() == 16, 'the peak must be in the centre'


def test_blur_preserves_constant_map():
    blur = GaussianBlur2d(4.0)
    constant = torch.full((2, 1, 64, 64), 0.7)

    smoothed = blur(constant)

    assert smoothed.shape == constant.shape, f'blur changed the shape to {tuple(smoothed.shape)}'
    assert torch.allclose(smoothed, constant, atol=1e-6), 'a constant map, borders included, must not change'


def test_blur_preserves_mass_of_peak():
    blur = GaussianBlur2d(2.0)
    impulse = torch.zeros(1, 1, 64, 64)
    impulse[0, 0, 32, 32] = 1.0

    smoothed = blur(impulse)

    assert smoothed.sum().item() == pytest.approx(1.0, abs=1e-5), 'an interior impulse must keep its mass'
    assert smoothed[0, 0, 32, 32] == smoothed.max(), 'the peak must stay at the impulse'


def test_zero_sigma_is_identity():
    maps = torch.rand(1, 1, 16, 16)

    assert torch.equal(GaussianBlur2d(0.0)(maps), maps), 'sigma 0 must return the input unchanged'


def test_blur_exports_with_torch_export():
    exported = torch.export.export(GaussianBlur2d(4.0), (torch.rand(1, 1, 64, 64),))

    assert exported is not None, 'torch.export (the ONNX exporter front end) failed on the blur'


def test_anomaly_map_zero_for_perfect_student():
    generator = AnomalyMapGenerator(image_size=64, sigma=4.0)
    teacher = [torch.randn(2, 8, 16, 16), torch.randn(2, 16, 8, 8)]

    anomaly_map = generator(teacher, [t.clone() for t in teacher])

    assert anomaly_map.shape == (2, 1, 64, 64), f'map must be (N, 1, S, S), got {tuple(anomaly_map.shape)}'
    assert anomaly_map.abs().max() < 1e-5, 'identical features must give a zero map'


def test_anomaly_map_peaks_at_defect():
    generator = AnomalyMapGenerator(image_size=64, sigma=1.0)
    teacher = [torch.ones(1, 4, 16, 16)]
    student = [teacher[0].clone()]
    student[0][0, :, 12, 4] = -1.0  # opposite direction at pixel rows 48-51, columns 16-19

    anomaly_map = generator(teacher, student)

    row, column = divmod(anomaly_map[0, 0].argmax().item(), 64)
    assert 46 <= row <= 53, f'peak row {row} should lie over the changed feature'
    assert 14 <= column <= 21, f'peak column {column} should lie over the changed feature'
    assert anomaly_map.max().item() > 0.5, 'the changed feature must stand out'


def test_levels_summed():
    generator = AnomalyMapGenerator(image_size=32, sigma=0.0)
    teacher = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1).expand(1, 2, 4, 4)
    student = torch.tensor([0.0, 1.0]).view(1, 2, 1, 1).expand(1, 2, 4, 4)

    single = generator([teacher], [student])
    double = generator([teacher, teacher], [student, student])

    assert torch.allclose(single, torch.ones_like(single)), 'orthogonal features give distance 1 everywhere'
    assert torch.allclose(double, 2 * single), 'the map must be the sum over levels'
