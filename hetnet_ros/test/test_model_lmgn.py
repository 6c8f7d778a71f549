"""Tests of the LMGN noise generator on synthetic features with a known distribution."""

import numpy as np
import pytest
import torch

from hetnet_ros.model.lmgn import LocalGaussianNoise

NUM_IMAGES = 400
NUM_SAMPLES = 5000
RIDGE = 0.01


def _synthetic_levels(seed=0):
    """Two levels whose positions share a latent factor, so positions are correlated in the data."""
    generator = torch.Generator().manual_seed(seed)
    shared = torch.randn(NUM_IMAGES, 1, 1, 1, generator=generator)
    level0 = torch.randn(NUM_IMAGES, 3, 2, 2, generator=generator)
    level0[:, 1] = 0.5 * level0[:, 0] + 0.8 * level0[:, 1]  # channel correlation
    level0 = 2.0 * level0 + 1.5 * shared + torch.tensor([5.0, -3.0, 1.0]).view(1, 3, 1, 1)
    level1 = torch.randn(NUM_IMAGES, 2, 1, 1, generator=generator) * torch.tensor([1.0, 3.0]).view(1, 2, 1, 1)
    return [level0, level1]


def _batches(levels, batch_size=128):
    for start in range(0, NUM_IMAGES, batch_size):
        yield [level[start:start + batch_size] for level in levels]


@pytest.fixture(scope='module')
def fitted():
    levels = _synthetic_levels()
    noise = LocalGaussianNoise('mgd', scale_max=1.0, centered=True, ridge=RIDGE)
    noise.fit(_batches(levels))
    return noise, levels


def test_fit_stores_mean(fitted):
    noise, levels = fitted

    assert noise.num_images == NUM_IMAGES, f'fitted on {noise.num_images} images'
    for index, level in enumerate(levels):
        assert torch.allclose(noise.mean(index), level.mean(dim=0), atol=1e-4), f'level {index} mean is wrong'


def test_samples_match_data_statistics(fitted):
    noise, levels = fitted
    torch.manual_seed(0)

    for index, level in enumerate(levels):
        samples = noise.sample(index, NUM_SAMPLES).numpy().astype(np.float64)
        data = level.numpy().astype(np.float64)
        channels, height, width = data.shape[1:]
        for i in range(height):
            for j in range(width):
                data_cov = np.cov(data[:, :, i, j], rowvar=False) + RIDGE * np.eye(channels)
                sample_cov = np.cov(samples[:, :, i, j], rowvar=False)
                scale = float(np.max(np.diag(data_cov)))
                tolerance = 0.1 * scale  # about 5 standard errors for 5000 samples
                mean_error = np.abs(samples[:, :, i, j].mean(0) - data[:, :, i, j].mean(0)).max()
                assert mean_error < 0.05 * np.sqrt(scale), \
                    f'level {index} position ({i}, {j}): sample mean off by {mean_error:.3f}'
                assert np.allclose(sample_cov, data_cov, atol=tolerance), \
                    f'level {index} position ({i}, {j}): covariance\n{sample_cov}\nexpected\n{data_cov}'


def test_positions_sampled_independently(fitted):
    noise, levels = fitted
    torch.manual_seed(1)

    samples = noise.sample(0, NUM_SAMPLES).numpy()
    data = levels[0].numpy()

    data_corr = np.corrcoef(data[:, 0, 0, 0], data[:, 0, 1, 1])[0, 1]
    sample_corr = np.corrcoef(samples[:, 0, 0, 0], samples[:, 0, 1, 1])[0, 1]
    assert data_corr > 0.2, f'synthetic data should correlate positions, got {data_corr:.2f}'
    assert abs(sample_corr) < 0.1, f'positions must be sampled independently, correlation {sample_corr:.2f}'


def test_centered_noise_has_zero_mean(fitted):
    noise, levels = fitted
    torch.manual_seed(2)
    zeros = [torch.zeros(NUM_SAMPLES, *level.shape[1:]) for level in levels]

    drawn = noise.noise(zeros)

    mean = drawn[0].mean(dim=0)
    assert mean.abs().max() < 0.15, f'centred noise must have mean 0, got max |mean| {mean.abs().max():.3f}'


def test_uncentered_noise_includes_mean(fitted):
    noise, levels = fitted
    uncentered = LocalGaussianNoise('mgd', scale_max=1.0, centered=False, ridge=RIDGE)
    uncentered.fit(_batches(levels))
    torch.manual_seed(3)
    zeros = [torch.zeros(NUM_SAMPLES, *level.shape[1:]) for level in levels]

    drawn = uncentered.noise(zeros)

    # E[s * xi] = E[s] * mu with s ~ Uniform(0, 1).
    expected = 0.5 * noise.mean(0)
    assert torch.allclose(drawn[0].mean(dim=0), expected, atol=0.2), \
        f'uncentred noise mean {drawn[0].mean(dim=0)[:, 0, 0]} should be 0.5 * mu {expected[:, 0, 0]}'


def test_noise_scaled_per_image(fitted):
    noise, levels = fitted
    torch.manual_seed(4)
    zeros = [torch.zeros(64, *level.shape[1:]) for level in levels]

    drawn = noise.noise(zeros)

    norms = drawn[0].flatten(1).norm(dim=1)
    assert norms.std() > 0.1 * norms.mean(), 'each image must get its own random noise factor'
    silent = LocalGaussianNoise('mgd', scale_max=0.0, ridge=RIDGE)
    silent.fit(_batches(levels))
    assert all(torch.equal(n, torch.zeros_like(n)) for n in silent.noise(zeros)), \
        'scale_max = 0 must give zero noise'


def test_randn_noise_variance():
    torch.manual_seed(5)
    noise = LocalGaussianNoise('randn', scale_max=1.0)
    features = [torch.zeros(NUM_SAMPLES, 4, 2, 2)]

    drawn = noise.noise(features)[0]

    # Var(s * z) = E[s^2] = 1 / 3 for s ~ Uniform(0, 1), z ~ N(0, 1).
    assert abs(drawn.var().item() - 1 / 3) < 0.03, f'randn noise variance {drawn.var():.3f}, expected 1/3'
    assert abs(drawn.mean().item()) < 0.02, f'randn noise mean {drawn.mean():.3f}, expected 0'


def test_none_keeps_features():
    noise = LocalGaussianNoise('none')
    features = [torch.randn(2, 3, 4, 4)]

    assert torch.equal(noise(features)[0], features[0]), "noise 'none' must not change features"


def test_statistics_not_in_state_dict(fitted):
    noise, _ = fitted

    assert noise.state_dict() == {}, f'LMGN statistics must not be saved, got {list(noise.state_dict())}'
    assert noise.centered_features(0).dtype == torch.float16, 'centred features must be stored as float16'
    assert noise.centered_features(0).shape == (4, NUM_IMAGES, 3), 'centred features layout (H * W, N, C)'


def test_refit_replaces_statistics(fitted):
    _, levels = fitted
    noise = LocalGaussianNoise('mgd')
    noise.fit(_batches(levels))
    single = [torch.randn(10, 5, 3, 3)]

    noise.fit(iter([single]))

    assert noise.num_levels == 1, 'a second fit must replace all levels'
    assert noise.mean(0).shape == (5, 3, 3), 'a second fit must replace the mean'


def test_one_image_rejected():
    noise = LocalGaussianNoise('mgd')

    with pytest.raises(ValueError, match='at least 2'):
        noise.fit(iter([[torch.randn(1, 3, 2, 2)]]))


def test_unfitted_mgd_rejected():
    noise = LocalGaussianNoise('mgd')

    with pytest.raises(RuntimeError, match='fit_noise_statistics'):
        noise.noise([torch.zeros(2, 3, 2, 2)])


def test_shape_change_rejected(fitted):
    noise, _ = fitted

    with pytest.raises(ValueError, match='refit'):
        noise.noise([torch.zeros(2, 3, 4, 4), torch.zeros(2, 2, 1, 1)])
