"""Tests of the MVTec-layout dataset and the image preprocessing."""

import pathlib

import cv2
import numpy as np
import pytest
import torch

from hetnet_ros.data.mvtec import (
    DatasetError, MVTecDataset, find_samples, read_image, spread_indices)
from hetnet_ros.data.preprocess import (
    prepare_batch, resize_mask, resize_rgb, to_rgb_uint8)


def _write(path: pathlib.Path, array: np.ndarray) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array), f'could not write test image {path}'
    return path


@pytest.fixture
def small_dataset(tmp_path) -> pathlib.Path:
    """A synthetic MVTec-layout dataset with one file of each supported kind."""
    root = tmp_path / 'parts'
    gradient = np.tile(np.arange(32, dtype=np.uint8) * 8, (32, 1))
    _write(root / 'train' / 'good' / 'gray.png', gradient)
    _write(root / 'train' / 'good' / 'deep.PNG', gradient.astype(np.uint16) * 257)
    bgra = np.zeros((32, 32, 4), dtype=np.uint8)
    bgra[..., 2] = 200  # red in OpenCV's BGRA order
    bgra[..., 3] = 10
    _write(root / 'train' / 'good' / 'alpha.png', bgra)
    _write(root / 'train' / 'good' / 'photo.JPG', np.full((32, 32, 3), 90, dtype=np.uint8))
    (root / 'train' / 'good' / 'notes.txt').write_text('not an image')
    _write(root / 'test' / 'good' / '000.png', gradient)
    _write(root / 'test' / 'crack' / '000.png', gradient)
    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[4:12, 4:12] = 255
    _write(root / 'ground_truth' / 'crack' / '000_mask.PNG', mask)
    return root


def test_to_rgb_uint8_gray_layouts():
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    for layout in (gray, gray[:, :, None]):
        rgb = to_rgb_uint8(layout)
        assert rgb.shape == (3, 4, 3), f'shape {rgb.shape} for input {layout.shape}'
        assert rgb.dtype == np.uint8
        assert np.array_equal(rgb[:, :, 1], gray), 'gray values must be copied to every channel'


def test_to_rgb_uint8_rgba_drops_alpha():
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[..., 0] = 10
    rgba[..., 3] = 255
    assert np.array_equal(to_rgb_uint8(rgba), rgba[..., :3])


def test_to_rgb_uint8_scales_16_bit():
    values = np.array([[0, 257, 65535]], dtype=np.uint16)
    assert to_rgb_uint8(values)[0, :, 0].tolist() == [0, 1, 255]


def test_to_rgb_uint8_float_and_bool():
    floats = np.array([[0.0, 0.5, 1.0, 2.0]], dtype=np.float32)
    assert to_rgb_uint8(floats)[0, :, 0].tolist() == [0, 128, 255, 255]
    assert to_rgb_uint8(np.array([[True, False]]))[0, :, 0].tolist() == [255, 0]


@pytest.mark.parametrize('bad, fragment', [
    (np.zeros((0, 4), dtype=np.uint8), 'empty'),
    (np.zeros((4, 4, 2), dtype=np.uint8), 'shape'),
    (np.zeros((4,), dtype=np.uint8), 'shape'),
    (np.full((2, 2), np.nan, dtype=np.float32), 'NaN'),
    (np.zeros((2, 2), dtype=np.int64), 'dtype'),
    ([[1, 2], [3, 4]], 'numpy array'),
])
def test_to_rgb_uint8_rejects_bad_input(bad, fragment):
    with pytest.raises(ValueError, match=fragment):
        to_rgb_uint8(bad)


def test_resize_rgb_and_mask():
    rgb = np.zeros((40, 60, 3), dtype=np.uint8)
    assert resize_rgb(rgb, 16).shape == (16, 16, 3)
    assert resize_rgb(rgb, 100).shape == (100, 100, 3)
    mask = np.zeros((40, 40), dtype=np.uint8)
    mask[:20] = 255
    resized = resize_mask(mask, 10)
    assert resized.dtype == bool
    assert resized[:5].all(), 'nearest resizing must keep the top half defective'
    assert not resized[5:].any(), 'nearest resizing must keep the bottom half normal'


def test_prepare_batch_shapes_and_range():
    images = [np.full((10, 20), 255, dtype=np.uint8), np.zeros((30, 30, 3), dtype=np.uint8)]
    batch = prepare_batch(images, 8)
    assert batch.shape == (2, 3, 8, 8)
    assert batch.dtype == torch.float32
    assert batch[0].min() == 1.0
    assert batch[1].max() == 0.0


def test_prepare_batch_names_bad_image():
    with pytest.raises(ValueError, match='image 1 of the batch'):
        prepare_batch([np.zeros((4, 4), np.uint8), np.zeros((4, 4, 5), np.uint8)], 8)
    with pytest.raises(ValueError, match='at least one image'):
        prepare_batch([], 8)


def test_spread_indices_even_and_deterministic():
    assert spread_indices(10, 5) == [0, 2, 4, 6, 8]
    assert spread_indices(10, 3) == [0, 3, 6]
    assert spread_indices(3, 5) == [0, 1, 2]
    assert spread_indices(4, None) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match='at least 1'):
        spread_indices(4, 0)


def test_read_image_converts_file_kinds(small_dataset):
    folder = small_dataset / 'train' / 'good'
    for name in ('gray.png', 'deep.PNG', 'alpha.png', 'photo.JPG'):
        rgb = read_image(folder / name)
        assert rgb.shape == (32, 32, 3), f'{name}: shape {rgb.shape}'
        assert rgb.dtype == np.uint8, f'{name}: dtype {rgb.dtype}'
    assert np.array_equal(read_image(folder / 'deep.PNG'), read_image(folder / 'gray.png')), \
        '16-bit file must convert to the same values as its 8-bit original'
    assert read_image(folder / 'alpha.png')[0, 0].tolist() == [200, 0, 0], 'BGRA must become RGB'


def test_dataset_matches_extensions_case_insensitively(small_dataset):
    dataset = MVTecDataset(small_dataset, 'train', image_size=16)
    names = sorted(sample.image_path.name for sample in dataset.samples)
    assert names == ['alpha.png', 'deep.PNG', 'gray.png', 'photo.JPG']


def test_dataset_test_split_items(small_dataset):
    dataset = MVTecDataset(small_dataset, 'test', image_size=16)
    assert [sample.defect_type for sample in dataset.samples] == ['crack', 'good']
    defect = dataset[0]
    assert defect['label'] == 1
    assert defect['image'].shape == (3, 16, 16)
    assert defect['mask'].shape == (1, 16, 16)
    assert defect['mask'].sum() == 16, 'the 8x8 defect at 32 px must cover 4x4 pixels at 16 px'
    normal = dataset[1]
    assert normal['label'] == 0
    assert normal['mask'].sum() == 0


def test_dataset_missing_folder_error(tmp_path):
    with pytest.raises(DatasetError, match=r'folder not found: .*train.*MVTec AD layout'):
        MVTecDataset(tmp_path, 'train', image_size=16)


def test_dataset_empty_folder_error(tmp_path):
    (tmp_path / 'train' / 'good').mkdir(parents=True)
    with pytest.raises(DatasetError, match='contains no images'):
        MVTecDataset(tmp_path, 'train', image_size=16)


def test_dataset_missing_mask_error(small_dataset):
    (small_dataset / 'ground_truth' / 'crack' / '000_mask.PNG').unlink()
    with pytest.raises(DatasetError, match='no ground-truth mask'):
        MVTecDataset(small_dataset, 'test', image_size=16)


def test_dataset_unknown_defect_type(small_dataset):
    with pytest.raises(DatasetError, match='scratch'):
        find_samples(small_dataset, 'test', defect_types=['scratch'])


def test_screw_train_subset(screw_root):
    dataset = MVTecDataset(screw_root, 'train', image_size=32, max_images=4)
    assert len(dataset) == 4
    assert [sample.image_path.name for sample in dataset.samples] == \
        [sample.image_path.name for sample in MVTecDataset(screw_root, 'train', 32, max_images=4).samples], \
        'the subset must be deterministic'
    item = dataset[0]
    assert item['image'].shape == (3, 32, 32)
    assert float(item['image'].min()) >= 0.0
    assert float(item['image'].max()) <= 1.0


def test_screw_test_split_per_type(screw_root):
    dataset = MVTecDataset(screw_root, 'test', image_size=32, max_images_per_type=1)
    assert dataset.defect_types == [
        'good', 'manipulated_front', 'scratch_head', 'scratch_neck', 'thread_side', 'thread_top']
    for index, sample in enumerate(dataset.samples):
        item = dataset[index]
        if sample.label:
            assert item['mask'].sum() > 0, f'{sample.image_path} has an empty mask'
        else:
            assert sample.mask_path is None


def test_weld_non_square_images(weld_root):
    dataset = MVTecDataset(weld_root, 'test', image_size=24, max_images_per_type=1, cache=True)
    assert len(dataset) == 2
    rgb, mask = dataset.load_resized(0)
    assert rgb.shape == (24, 24, 3)
    assert mask.shape == (24, 24)
    assert dataset.load_resized(0)[0] is rgb, 'cached images must be reused'
