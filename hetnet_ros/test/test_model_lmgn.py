"""Tests of the LMGN noise generator on synthetic features with a known distribution."""

import numpy as np
import pytest
import torch

from hetnet_ros.model.lmgn import LocalGaussianNoise, statistics_bytes
from hetnet_ros.model.teachers import TimmTeacher

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


def test_streamed_statistics_match_numpy():
    # Uneven batches and a large offset: the streamed mean and the covariance of the
    # stored float16 features must equal a direct float64 computation on all images.
    generator = torch.Generator().manual_seed(6)
    data = torch.randn(23, 4, 3, 2, generator=generator) * torch.tensor([1.0, 2.0, 0.5, 3.0]).view(1, 4, 1, 1)
    data[:, 1] += 0.7 * data[:, 0]
    data += 40.0
    noise = LocalGaussianNoise('mgd')

    noise.fit(iter([[data[:7]], [data[7:9]], [data[9:23]]]))

    values = data.numpy().astype(np.float64)
    assert noise.num_images == 23, f'fitted on {noise.num_images} images, expected 23'
    assert np.allclose(noise.mean(0).numpy(), values.mean(axis=0), atol=1e-4), 'streamed mean differs from numpy'
    for row in range(3):
        for column in range(2):
            expected = np.cov(values[:, :, row, column], rowvar=False)
            actual = noise.covariance(0, row, column).numpy()
            assert np.allclose(actual, expected, rtol=5e-3, atol=5e-3), \
                f'covariance at ({row}, {column}) differs from numpy:\n{actual}\nexpected\n{expected}'


def test_covariance_position_checked(fitted):
    noise, _ = fitted

    with pytest.raises(ValueError, match='outside the 2 x 2 map'):
        noise.covariance(0, 2, 0)


def test_nbytes_matches_statistics_bytes(fitted):
    noise, levels = fitted

    expected = statistics_bytes([3, 2], [(2, 2), (1, 1)], NUM_IMAGES)

    assert noise.nbytes == expected, f'stored {noise.nbytes} bytes, statistics_bytes gives {expected}'
    assert expected == (3 * 4 + 2 * 1) * (2 * NUM_IMAGES + 4), 'float16 features plus a float32 mean per value'


def test_wide_resnet50_statistics_fit_2_gib():
    # HetNet's CNN teacher WideResNet50 at 256 px and levels 1-3, with random weights so
    # that nothing is downloaded. Its real channel counts and map sizes set the storage.
    teacher = TimmTeacher('wide_resnet50_2', 'random', (1, 2, 3), 256, role='cnn_teacher')
    with torch.no_grad():
        features = teacher(torch.zeros(1, 3, 256, 256))
    channels = [feature.shape[1] for feature in features]
    sizes = [tuple(feature.shape[-2:]) for feature in features]

    size_bytes = statistics_bytes(channels, sizes, 300)

    assert channels == [256, 512, 1024], f'unexpected WideResNet50 channels {channels}'
    assert size_bytes < 2 * 2**30, f'LMGN statistics of 300 images take {size_bytes / 2**30:.2f} GiB, limit 2 GiB'


def test_fixed_scale_noise_has_constant_factor():
    noise = LocalGaussianNoise('randn', scale_max=0.5, size='fixed_scale')
    torch.manual_seed(7)
    zeros = [torch.zeros(NUM_SAMPLES, 4, 2, 2)]

    drawn = noise.noise(zeros)[0]

    # Var(0.5 * z) = 0.25, against E[s^2] * 1 = 0.25 / 3 for a uniform factor.
    assert abs(drawn.var().item() - 0.25) < 0.02, f'fixed-scale noise variance {drawn.var():.3f}, expected 0.25'


def test_random_region_noise_is_one_rectangle():
    torch.manual_seed(8)
    noise = LocalGaussianNoise('mgd', scale_max=1.0, ridge=RIDGE, size='random_region')
    noise.fit(iter([[torch.randn(20, 3, 8, 8), torch.randn(20, 2, 4, 4)]]))
    zeros = [torch.zeros(64, 3, 8, 8), torch.zeros(64, 2, 4, 4)]

    drawn = noise.noise(zeros)

    for level, level_noise in enumerate(drawn):
        active = level_noise.abs().sum(dim=1) > 0  # (B, H, W)
        assert active.flatten(1).any(dim=1).all(), f'level {level}: every image needs a noisy region'
        rows = active.any(dim=2)
        columns = active.any(dim=1)
        for image in range(active.shape[0]):
            expected = rows[image][:, None] & columns[image][None, :]
            assert torch.equal(active[image], expected), f'level {level} image {image}: noise is not one rectangle'
    partial = (drawn[0].abs().sum(dim=1) > 0).flatten(1).float().mean(dim=1)
    assert (partial < 1).any(), 'some rectangles must leave part of the map without noise'
    # The same image area at both levels: a shallow position is noisy only if the deep
    # position that covers it is.
    shallow = drawn[0].abs().sum(dim=1) > 0
    deep = drawn[1].abs().sum(dim=1) > 0
    covering = deep.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)
    assert not (shallow & ~covering).any(), 'the rectangle must cover the same image area at every level'


def test_unknown_noise_size_rejected():
    with pytest.raises(ValueError, match="size must be one of .*'gaussian'"):
        LocalGaussianNoise('mgd', size='gaussian')
