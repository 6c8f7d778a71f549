"""Tests of the camera back-ends: replay on real screw images, RealSense with no camera."""

import pathlib
import time

import numpy as np
import pytest

from hetnet_ros.cameras import (
    CameraError, CameraFrameError, CameraNotFoundError, EndOfStreamError, RealSenseCamera,
    ReplayCamera, list_replay_images)
from hetnet_ros.data.mvtec import read_image

# pipeline.start() with no camera fails only after about 15 s, so the check of the
# device list must raise well before that.
REALSENSE_NOT_FOUND_LIMIT_S = 10.0


@pytest.fixture
def small_folder(tmp_path, screw_root) -> pathlib.Path:
    """Folder of links to three real screw images, with mixed-case extensions and a subfolder."""
    good = sorted((screw_root / 'test' / 'good').glob('*.png'))[:3]
    (tmp_path / 'nested').mkdir()
    (tmp_path / 'b.png').symlink_to(good[0])
    (tmp_path / 'A.PNG').symlink_to(good[1])
    (tmp_path / 'nested' / 'c.Png').symlink_to(good[2])
    (tmp_path / 'notes.txt').write_text('not an image')
    (tmp_path / '.hidden.png').symlink_to(good[0])
    return tmp_path


def test_mvtec_layout_lists_test_images(screw_root):
    images = list_replay_images(screw_root)

    expected = sorted(screw_root.glob('test/*/*.png'))
    assert images == expected
    assert all(path.parent.parent.name == 'test' for path in images), \
        'train/ and ground_truth/ images must be left out'


def test_folder_listing_recursive_case_insensitive(small_folder):
    images = list_replay_images(small_folder)

    names = [path.relative_to(small_folder).as_posix() for path in images]
    assert names == ['A.PNG', 'b.png', 'nested/c.Png']


def test_replay_frames_match_training_reader(screw_root):
    camera = ReplayCamera(screw_root, loop=False)

    with camera:
        frames = [camera.read(timeout_s=1.0) for _ in range(2)]

    for frame, path in zip(frames, camera.images[:2]):
        assert frame.source == str(path)
        assert frame.rgb.dtype == np.uint8
        assert frame.rgb.shape == (1024, 1024, 3)
        np.testing.assert_array_equal(
            frame.rgb, read_image(path), err_msg='replay must read images like training does')
    assert [frame.sequence for frame in frames] == [0, 1]


def test_replay_loops(small_folder):
    with ReplayCamera(small_folder, loop=True) as camera:
        sources = [camera.read(timeout_s=1.0).source for _ in range(7)]

    names = [pathlib.Path(source).name for source in sources]
    assert names == ['A.PNG', 'b.png', 'c.Png', 'A.PNG', 'b.png', 'c.Png', 'A.PNG']


def test_replay_without_loop_ends(small_folder):
    with ReplayCamera(small_folder, loop=False) as camera:
        for _ in range(3):
            camera.read(timeout_s=1.0)
        with pytest.raises(EndOfStreamError) as raised:
            camera.read(timeout_s=1.0)

    assert 'loop' in str(raised.value)


def test_replay_shuffle_is_seeded(small_folder):
    def sources(seed):
        with ReplayCamera(small_folder, shuffle=True, seed=seed) as camera:
            return [camera.read(timeout_s=1.0).source for _ in range(6)]

    first = sources(seed=3)

    assert first == sources(seed=3), 'the same seed must give the same order'
    assert sorted(first[:3]) == sorted(set(first)), 'each pass shows every image once'
    assert sorted(first[3:]) == sorted(first[:3])


def test_replay_empty_folder(tmp_path):
    (tmp_path / 'readme.txt').write_text('no images here')

    with pytest.raises(CameraNotFoundError) as raised:
        ReplayCamera(tmp_path).open()

    assert str(tmp_path) in str(raised.value)
    assert '.png' in str(raised.value)


def test_replay_missing_folder(tmp_path):
    missing = tmp_path / 'missing'

    with pytest.raises(CameraNotFoundError) as raised:
        ReplayCamera(missing).open()

    assert str(missing) in str(raised.value)


def test_replay_corrupt_file_skipped(small_folder):
    (small_folder / '0_corrupt.png').write_bytes(b'not a png')

    with ReplayCamera(small_folder) as camera:
        with pytest.raises(CameraFrameError) as raised:
            camera.read(timeout_s=1.0)
        next_frame = camera.read(timeout_s=1.0)

    assert '0_corrupt.png' in str(raised.value)
    assert pathlib.Path(next_frame.source).name == 'A.PNG'


def test_read_before_open_rejected(small_folder):
    camera = ReplayCamera(small_folder)

    with pytest.raises(CameraError) as raised:
        camera.read(timeout_s=1.0)

    assert 'open()' in str(raised.value)


def test_context_manager_closes(small_folder):
    with ReplayCamera(small_folder) as camera:
        assert camera.is_open

    assert not camera.is_open


@pytest.mark.parametrize('serial, named', [('012345678901', '012345678901'), ('', 'any')])
def test_realsense_without_camera(serial, named):
    rs = pytest.importorskip('pyrealsense2')
    if len(rs.context().query_devices()) > 0:
        pytest.skip('a RealSense camera is connected; this test needs a machine without one')
    camera = RealSenseCamera(serial_number=serial)

    started = time.monotonic()
    with pytest.raises(CameraNotFoundError) as raised:
        camera.open()
    elapsed_s = time.monotonic() - started

    message = str(raised.value)
    assert named in message
    assert 'rs-enumerate-devices' in message
    assert 'USB 3' in message
    assert elapsed_s < REALSENSE_NOT_FOUND_LIMIT_S, \
        f'CameraNotFoundError took {elapsed_s:.1f} s; the device list check should be immediate'
    assert not camera.is_open


@pytest.mark.parametrize('options', [
    {'width': 0}, {'fps': -1}, {'exposure_us': -5.0}, {'white_balance_k': -1.0}])
def test_realsense_rejects_invalid_options(options):
    with pytest.raises(ValueError):
        RealSenseCamera(**options)
