"""Tests of the camera node over real DDS, replaying real screw images."""

import contextlib
import os
import pathlib
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from sensor_msgs.msg import CameraInfo, Image
from std_srvs.srv import Trigger

from hetnet_ros.cameras.base import Camera, CameraTimeoutError
from hetnet_ros.data.mvtec import read_image
from hetnet_ros.imaging import decode_image
from hetnet_ros.nodes.camera_node import CameraNode
from hetnet_ros.nodes.common import SENSOR_QOS, start_lifecycle_node

WAIT_TIMEOUT_S = 20.0
PROCESS_TIMEOUT_S = 60.0
PACKAGE_ROOT = pathlib.Path(__file__).resolve().parents[1]


def wait_for(predicate, timeout_s=WAIT_TIMEOUT_S, description='condition'):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    pytest.fail(f'timed out after {timeout_s} s waiting for {description}')


@pytest.fixture(scope='module')
def context():
    ros_context = rclpy.Context()
    rclpy.init(context=ros_context)
    yield ros_context
    rclpy.shutdown(context=ros_context)


@contextlib.contextmanager
def spinning(context, *nodes):
    """Spin the nodes in a background thread for the duration of the block."""
    executor = SingleThreadedExecutor(context=context)
    for node in nodes:
        executor.add_node(node)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    try:
        yield executor
    finally:
        executor.shutdown(timeout_sec=5.0)
        thread.join(timeout=5.0)
        for node in nodes:
            if isinstance(node, CameraNode):
                node.release()
            node.destroy_node()


class Listener:
    """Test node that records images and camera_info messages."""

    def __init__(self, context):
        self.node = rclpy.create_node('camera_listener', context=context)
        self.images = []
        self.infos = []
        self.node.create_subscription(Image, 'image', self.images.append, SENSOR_QOS)
        self.node.create_subscription(CameraInfo, 'camera_info', self.infos.append, SENSOR_QOS)
        self.capture = self.node.create_client(Trigger, 'capture')

    def call_capture(self) -> Trigger.Response:
        assert self.capture.wait_for_service(timeout_sec=WAIT_TIMEOUT_S), 'capture service missing'
        future = self.capture.call_async(Trigger.Request())
        wait_for(future.done, description='the capture response')
        return future.result()


@pytest.fixture
def small_folder(tmp_path, screw_root) -> pathlib.Path:
    """Folder of links to three real screw images."""
    for index, path in enumerate(sorted((screw_root / 'test' / 'good').glob('*.png'))[:3]):
        (tmp_path / f'{index}.png').symlink_to(path)
    return tmp_path


def make_camera_node(context, source, autostart=True, **parameters) -> CameraNode:
    overrides = [Parameter('source', value=str(source))]
    overrides += [Parameter(name, value=value) for name, value in parameters.items()]
    node = CameraNode(context=context, parameter_overrides=overrides, use_global_arguments=False)
    if autostart:
        assert start_lifecycle_node(node), 'camera node failed to start'
    return node


def test_streams_rgb8_images(context, small_folder):
    camera = make_camera_node(context, small_folder, rate_hz=20.0, frame_id='test_optical_frame')
    listener = Listener(context)

    with spinning(context, camera, listener.node):
        wait_for(lambda: len(listener.images) >= 3 and len(listener.infos) >= 3,
                 description='three images and camera_info messages')

    image = listener.images[0]
    assert image.encoding == 'rgb8'
    assert image.header.frame_id == 'test_optical_frame'
    assert (image.height, image.width) == (1024, 1024)
    assert image.step == 1024 * 3
    rgb = decode_image(image.encoding, image.height, image.width, image.step, image.data)
    candidates = [read_image(path) for path in sorted(small_folder.glob('*.png'))]
    assert any(np.array_equal(rgb, candidate) for candidate in candidates), \
        'the published pixels must be one of the replayed images'

    stamps = {(info.header.stamp.sec, info.header.stamp.nanosec) for info in listener.infos}
    assert (image.header.stamp.sec, image.header.stamp.nanosec) in stamps, \
        'every image needs a camera_info with the same stamp'
    info = listener.infos[0]
    assert (info.height, info.width) == (1024, 1024)
    assert info.header.frame_id == 'test_optical_frame'


def test_capture_on_request(context, small_folder):
    camera = make_camera_node(context, small_folder, rate_hz=0.0)
    listener = Listener(context)

    with spinning(context, camera, listener.node):
        wait_for(lambda: camera._image_publisher.get_subscription_count() > 0,
                 description='the listener to subscribe')
        time.sleep(0.3)
        assert listener.images == [], 'with rate_hz 0 nothing is published before a request'

        response = listener.call_capture()
        assert response.success, response.message
        wait_for(lambda: len(listener.images) == 1, description='the captured image')
        second = listener.call_capture()

    image = listener.images[0]
    assert image.header.frame_id == 'camera_color_optical_frame'
    stamp = f'stamp={image.header.stamp.sec}.{image.header.stamp.nanosec:09d}'
    assert stamp in response.message
    source = response.message.split('source=')[1]
    assert pathlib.Path(source).name == '0.png'
    rgb = decode_image(image.encoding, image.height, image.width, image.step, image.data)
    np.testing.assert_array_equal(rgb, read_image(pathlib.Path(source)))
    assert second.success
    assert pathlib.Path(second.message.split('source=')[1]).name == '1.png'


def test_replay_end_stops_publishing(context, small_folder):
    camera = make_camera_node(context, small_folder, rate_hz=50.0, loop=False)
    listener = Listener(context)

    with spinning(context, camera, listener.node):
        wait_for(lambda: camera._stream_ended, description='the end of the replay')
        response = listener.call_capture()

    assert camera.stats.frames_published == 3
    assert not response.success
    assert 'finished after 3 images' in response.message


def test_capture_rejected_when_inactive(context, small_folder):
    camera = make_camera_node(context, small_folder, autostart=False)
    listener = Listener(context)

    with spinning(context, camera, listener.node):
        response = listener.call_capture()

    assert not response.success
    assert 'not active' in response.message


class FlakyCamera(Camera):
    """Wraps a camera and times out on its first `failures` reads, like an unplugged device."""

    def __init__(self, inner: Camera, failures: int):
        super().__init__(name='flaky')
        self.inner = inner
        self.failures = failures
        self.open_count = 0

    def _open(self):
        self.open_count += 1
        self.inner.open()

    def _read(self, timeout_s):
        if self.failures > 0:
            self.failures -= 1
            raise CameraTimeoutError('no frame (simulated unplugged camera)')
        frame = self.inner.read(timeout_s)
        return frame.rgb, frame.source

    def _close(self):
        self.inner.close()


def test_reconnects_after_repeated_timeouts(context, small_folder):
    camera = make_camera_node(
        context, small_folder, autostart=False, rate_hz=50.0, reconnect_max_delay_s=0.05)
    camera.trigger_configure()
    flaky = FlakyCamera(camera.camera, failures=3)
    flaky.open()
    camera.camera = flaky
    camera.trigger_activate()

    with spinning(context, camera):
        wait_for(lambda: camera.stats.frames_published >= 1,
                 description='a frame after reconnecting')

    assert camera.stats.read_errors == 3
    assert camera.stats.reconnects == 1
    assert flaky.open_count == 2, 'the camera should be closed and opened again once'


def _run_node_process(*ros_arguments) -> subprocess.CompletedProcess:
    environment = dict(os.environ)
    environment['PYTHONPATH'] = os.pathsep.join(
        filter(None, [str(PACKAGE_ROOT), environment.get('PYTHONPATH')]))
    return subprocess.run(
        [sys.executable, '-m', 'hetnet_ros.nodes.camera_node', '--ros-args', *ros_arguments],
        env=environment, capture_output=True, text=True, timeout=PROCESS_TIMEOUT_S)


def test_missing_source_exits_nonzero(tmp_path):
    missing = tmp_path / 'missing'

    result = _run_node_process('-p', f'source:={missing}')

    assert result.returncode == 1, result.stderr
    assert f'replay source {missing} does not exist' in result.stderr


def test_missing_realsense_exits_nonzero():
    pytest.importorskip('pyrealsense2')

    result = _run_node_process(
        '-p', 'backend:=realsense', '-p', "serial_number:='012345678901'")

    assert result.returncode == 1, result.stderr
    assert 'serial number 012345678901 not found' in result.stderr
