"""Tests of the detector node over real DDS with a small real model and real screw images.

The model runs as a PyTorch checkpoint and as its ONNX export.
"""

import array
import os
import pathlib
import subprocess
import sys
import threading
import time

import cv2
import numpy as np
import pytest
import rclpy
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray
from hetnet_ros_msgs.msg import DefectVerdict
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from sensor_msgs.msg import Image

from hetnet_ros import export
from hetnet_ros.data.mvtec import read_image
from hetnet_ros.imaging import decode_float_map, decode_image
from hetnet_ros.nodes.common import SENSOR_QOS, LatestSlot, image_message, start_lifecycle_node
from hetnet_ros.nodes.detector_node import DetectorNode

WAIT_TIMEOUT_S = 30.0
# How long test_queue_time_counts_busy_worker keeps the worker busy with one image.
BUSY_HOLD_S = 0.3
REPUBLISH_PERIOD_S = 3.0
PROCESS_TIMEOUT_S = 90.0
PACKAGE_ROOT = pathlib.Path(__file__).resolve().parents[1]

# Non-square, so that a swapped width and height cannot pass.
INPUT_WIDTH, INPUT_HEIGHT = 120, 96
FRAME_ID = 'probe_optical_frame'


def wait_for(predicate, timeout_s=WAIT_TIMEOUT_S, description='condition'):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    pytest.fail(f'timed out after {timeout_s} s waiting for {description}')


class Probe:
    """Test node that publishes images to the detector and records everything it publishes."""

    def __init__(self, context, namespace: str = ''):
        self.node = rclpy.create_node('detector_probe', context=context, namespace=namespace)
        self.publisher = self.node.create_publisher(Image, 'image', SENSOR_QOS)
        self.maps, self.heatmaps, self.verdicts, self.diagnostics = [], [], [], []
        self.map_subscription = self.node.create_subscription(
            Image, 'anomaly_map', self.maps.append, 10)
        self.node.create_subscription(Image, 'heatmap', self.heatmaps.append, 10)
        self.node.create_subscription(DefectVerdict, 'verdict', self.verdicts.append, 10)
        self.node.create_subscription(
            DiagnosticArray, '/diagnostics', self.diagnostics.append, 10)

    def publish_until(self, message: Image, done, description: str) -> None:
        """Publish `message` until done() is true; best-effort delivery may lose one."""
        deadline = time.monotonic() + WAIT_TIMEOUT_S
        while time.monotonic() < deadline:
            self.publisher.publish(message)
            republish_at = time.monotonic() + REPUBLISH_PERIOD_S
            while time.monotonic() < min(republish_at, deadline):
                if done():
                    return
                time.sleep(0.01)
        pytest.fail(f'timed out after {WAIT_TIMEOUT_S} s waiting for {description}')

    def outputs_for(self, stamp: Time):
        """Return (anomaly_map, heatmap, verdict) messages with this stamp, None where missing."""
        def find(messages):
            matches = [m for m in messages if m.header.stamp == stamp]
            return matches[-1] if matches else None
        return find(self.maps), find(self.heatmaps), find(self.verdicts)


def run_graph(parameters, namespace: str = ''):
    """Start a detector node and a probe node in `namespace`, spinning in a background thread.

    Yields (detector, probe) to a module fixture and shuts both down afterwards.
    """
    context = rclpy.Context()
    rclpy.init(context=context)
    detector = DetectorNode(
        context=context, use_global_arguments=False, namespace=namespace,
        parameter_overrides=parameters)
    assert start_lifecycle_node(detector), 'detector node failed to start'
    probe = Probe(context, namespace)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(detector)
    executor.add_node(probe.node)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()

    wait_for(lambda: probe.publisher.get_subscription_count() > 0
             and detector._verdict_publisher.get_subscription_count() > 0
             and detector._heatmap_publisher.get_subscription_count() > 0,
             description='the probe and the detector to discover each other')
    yield detector, probe

    executor.shutdown(timeout_sec=5.0)
    thread.join(timeout=5.0)
    detector.release()
    detector.destroy_node()
    probe.node.destroy_node()
    rclpy.shutdown(context=context)


@pytest.fixture(scope='module')
def graph(tiny_checkpoint):
    """A started detector node running the checkpoint with PyTorch in fp32, and a probe node."""
    yield from run_graph([
        Parameter('checkpoint', value=str(tiny_checkpoint)), Parameter('device', value='cpu'),
        Parameter('runtime', value='torch'), Parameter('precision', value='fp32')])


@pytest.fixture(scope='module')
def onnx_graph(tiny_onnx):
    """A detector node running the ONNX export (runtime 'auto') and a probe, in namespace onnx.

    The namespace keeps its topics apart from those of `graph`, which may run at the same time.
    """
    yield from run_graph([Parameter('checkpoint', value=str(tiny_onnx))], namespace='onnx')


@pytest.fixture(scope='module')
def screw_rgb(screw_root) -> np.ndarray:
    """A real defective screw image, shrunk to INPUT_WIDTH x INPUT_HEIGHT."""
    rgb = read_image(screw_root / 'test' / 'scratch_head' / '000.png')
    return cv2.resize(rgb, (INPUT_WIDTH, INPUT_HEIGHT), interpolation=cv2.INTER_AREA)


_stamp_counter = iter(range(1, 1_000_000))


def make_image(encoding: str, rgb: np.ndarray, is_bigendian: bool = False) -> Image:
    """Build an Image message of `rgb` in `encoding`, with a stamp no other message has."""
    gray = rgb[:, :, 0]
    alpha = np.full(gray.shape + (1,), 255, np.uint8)
    pixels = {
        'rgb8': rgb,
        'bgr8': rgb[:, :, ::-1],
        'rgba8': np.concatenate([rgb, alpha], axis=2),
        'bgra8': np.concatenate([rgb[:, :, ::-1], alpha], axis=2),
        'mono8': gray,
        'mono16': (gray.astype(np.uint16) * 257).astype('>u2' if is_bigendian else '<u2'),
    }[encoding]
    pixels = np.ascontiguousarray(pixels)

    message = Image()
    message.header.stamp = Time(sec=next(_stamp_counter), nanosec=500)
    message.header.frame_id = FRAME_ID
    message.height, message.width = rgb.shape[:2]
    message.encoding = encoding
    message.is_bigendian = int(is_bigendian)
    message.step = pixels.strides[0]
    message.data = pixels.tobytes()
    return message


def run_detector(probe: Probe, message: Image):
    """Publish one image and return its (anomaly_map, heatmap, verdict) messages."""
    def all_outputs_arrived():
        return all(output is not None for output in probe.outputs_for(message.header.stamp))

    probe.publish_until(
        message, all_outputs_arrived, f'the outputs for the {message.encoding} image')
    return probe.outputs_for(message.header.stamp)


@pytest.fixture(scope='module')
def reference_map(graph, screw_rgb) -> np.ndarray:
    _, probe = graph
    anomaly_map, _, _ = run_detector(probe, make_image('rgb8', screw_rgb))
    return decode_float_map(
        anomaly_map.height, anomaly_map.width, anomaly_map.step, anomaly_map.data,
        anomaly_map.is_bigendian)


@pytest.mark.parametrize('encoding, is_bigendian', [
    ('rgb8', False), ('bgr8', False), ('rgba8', False), ('bgra8', False), ('mono8', False),
    ('mono16', False), ('mono16', True)])
def test_image_to_map_heatmap_verdict(graph, screw_rgb, reference_map, encoding, is_bigendian):
    detector, probe = graph
    message = make_image(encoding, screw_rgb, is_bigendian)

    anomaly_map, heatmap, verdict = run_detector(probe, message)

    assert anomaly_map.header == message.header
    assert anomaly_map.encoding == '32FC1'
    assert (anomaly_map.height, anomaly_map.width) == (INPUT_HEIGHT, INPUT_WIDTH)
    values = decode_float_map(
        anomaly_map.height, anomaly_map.width, anomaly_map.step, anomaly_map.data,
        anomaly_map.is_bigendian)
    assert np.all(np.isfinite(values))
    assert values.min() >= 0.0, 'the map is normalised to [0, 1]'
    assert values.max() <= 1.0, 'the map is normalised to [0, 1]'
    # The screw image is gray, so every encoding carries the same pixels.
    np.testing.assert_allclose(values, reference_map, atol=1e-5,
                               err_msg=f'{encoding} must give the map of the same rgb8 image')

    assert heatmap.header == message.header
    assert heatmap.encoding == 'rgb8'
    assert (heatmap.height, heatmap.width) == (INPUT_HEIGHT, INPUT_WIDTH)
    overlay = decode_image(heatmap.encoding, heatmap.height, heatmap.width, heatmap.step,
                           heatmap.data)
    assert overlay.shape == (INPUT_HEIGHT, INPUT_WIDTH, 3)

    assert verdict.header == message.header
    assert verdict.model_id == detector.detector.model_id
    assert verdict.threshold == pytest.approx(0.5)
    assert verdict.is_anomalous == (verdict.pred_score >= verdict.threshold)
    assert 0.0 <= verdict.pred_score <= 1.0, 'pred_score is normalised to [0, 1]'
    assert verdict.inference_time_s > 0.0
    assert verdict.queue_time_s >= 0.0
    assert len(verdict.region_scores) == len(verdict.anomalous_regions)
    for region in verdict.anomalous_regions:
        assert region.x_offset + region.width <= INPUT_WIDTH
        assert region.y_offset + region.height <= INPUT_HEIGHT


def test_bad_messages_reported_then_recovers(graph, screw_rgb, capfd):
    detector, probe = graph
    bad_before = detector.stats.bad_messages

    unsupported = make_image('rgb8', screw_rgb)
    unsupported.encoding = 'yuv422'
    probe.publish_until(unsupported, lambda: detector.stats.bad_messages >= bad_before + 1,
                        'the yuv422 image to be rejected')

    truncated = make_image('rgb8', screw_rgb)
    truncated.data = truncated.data[:-7]
    probe.publish_until(truncated, lambda: detector.stats.bad_messages >= bad_before + 2,
                        'the truncated image to be rejected')

    good = make_image('mono8', screw_rgb)
    _, _, verdict = run_detector(probe, good)
    assert verdict.header == good.header, 'the detector must keep working after bad messages'

    for rejected in (unsupported, truncated):
        assert probe.outputs_for(rejected.header.stamp) == (None, None, None)
    logged = capfd.readouterr().err
    assert "image encoding 'yuv422' is not supported" in logged
    assert 'truncated' in logged
    assert detector.stats.last_error != ''

    def diagnostics_count_errors():
        for array in probe.diagnostics:
            for status in array.status:
                values = {pair.key: pair.value for pair in status.values}
                if status.name.endswith('detector') and \
                        int(values.get('bad_messages', 0)) >= bad_before + 2:
                    return True
        return False

    wait_for(diagnostics_count_errors, description='/diagnostics to count the rejected images')


def test_newest_frame_wins(graph, screw_rgb):
    detector, probe = graph
    messages = [make_image('rgb8', screw_rgb) for _ in range(5)]

    for message in messages:
        probe.publisher.publish(message)
    last_stamp = messages[-1].header.stamp
    wait_for(lambda: probe.outputs_for(last_stamp)[2] is not None,
             description='the verdict of the newest frame')
    stats = detector.stats
    wait_for(lambda: stats.frames_processed + stats.frames_dropped + stats.bad_messages
             + stats.inference_errors >= stats.frames_received,
             description='the worker to finish')

    assert stats.frames_processed + stats.frames_dropped + stats.bad_messages \
        + stats.inference_errors == stats.frames_received


def test_queue_time_counts_busy_worker(graph, screw_rgb):
    detector, probe = graph
    model = detector.detector
    entered, release = threading.Event(), threading.Event()
    calls = []

    def predict_blocking_first_call(rgb):
        calls.append(rgb)
        if len(calls) == 1:
            entered.set()
            release.wait(WAIT_TIMEOUT_S)
        return type(model).predict(model, rgb)

    stored_stamps = []
    put = detector._slot.put

    def record_put(item):
        stored_stamps.append(item[0].header.stamp)
        return put(item)

    first, second = make_image('rgb8', screw_rgb), make_image('rgb8', screw_rgb)
    model.predict = predict_blocking_first_call
    detector._slot.put = record_put
    try:
        probe.publish_until(first, entered.is_set, 'the worker to start on the first image')
        probe.publish_until(
            second, lambda: second.header.stamp in stored_stamps,
            'the second image to arrive while the worker is busy')
        # The second image arrived before this point, so it waits at least BUSY_HOLD_S.
        time.sleep(BUSY_HOLD_S)
    finally:
        release.set()
        del model.predict
        del detector._slot.put

    wait_for(lambda: probe.outputs_for(second.header.stamp)[2] is not None,
             description='the verdict of the second image')
    first_verdict = probe.outputs_for(first.header.stamp)[2]
    second_verdict = probe.outputs_for(second.header.stamp)[2]
    assert first_verdict is not None
    assert first_verdict.queue_time_s >= 0.0
    assert second_verdict.queue_time_s >= float(np.float32(BUSY_HOLD_S)), \
        'an image that arrives while the worker is busy must report its wait'


def test_verdict_without_map_subscriber(graph, screw_rgb):
    detector, probe = graph
    map_publishes = []
    publish_map = detector._map_publisher.publish

    def record_map_publish(message):
        map_publishes.append(message.header.stamp)
        publish_map(message)

    probe.node.destroy_subscription(probe.map_subscription)
    detector._map_publisher.publish = record_map_publish
    try:
        wait_for(lambda: detector._map_publisher.get_subscription_count() == 0,
                 description='the detector to lose its anomaly_map subscriber')
        message = make_image('rgb8', screw_rgb)

        def heatmap_and_verdict_arrived():
            _, heatmap, verdict = probe.outputs_for(message.header.stamp)
            return heatmap is not None and verdict is not None

        probe.publish_until(
            message, heatmap_and_verdict_arrived,
            'the heatmap and verdict of an image without anomaly_map subscriber')
    finally:
        del detector._map_publisher.publish
        probe.map_subscription = probe.node.create_subscription(
            Image, 'anomaly_map', probe.maps.append, 10)

    # The map step comes before the heatmap, so the received heatmap shows it has run.
    assert message.header.stamp not in map_publishes
    assert probe.outputs_for(message.header.stamp)[0] is None
    _, heatmap, verdict = probe.outputs_for(message.header.stamp)
    assert verdict.header == message.header
    assert heatmap.header == message.header
    wait_for(lambda: detector._map_publisher.get_subscription_count() > 0,
             description='the detector to find the new anomaly_map subscriber')
    anomaly_map, _, _ = run_detector(probe, make_image('rgb8', screw_rgb))
    assert anomaly_map.encoding == '32FC1', 'the map is published again once subscribed'


@pytest.mark.parametrize('pixels, encoding, step', [
    (np.arange(12, dtype=np.float32).reshape(3, 4) / 7, '32FC1', 16),
    (np.arange(18, dtype=np.uint8).reshape(2, 3, 3), 'rgb8', 9),
    (np.arange(72, dtype=np.uint8).reshape(4, 6, 3)[:, ::2], 'rgb8', 9),  # not contiguous
    (np.arange(6, dtype='>u2').reshape(2, 3), 'mono16', 6),  # not in native byte order
])
def test_image_message_copies_pixels(pixels, encoding, step):
    header = make_image('mono8', np.zeros((2, 2, 3), np.uint8)).header

    message = image_message(header, pixels, encoding, is_bigendian=True)

    assert message.header == header
    assert (message.height, message.width) == pixels.shape[:2]
    assert message.encoding == encoding
    assert message.is_bigendian == 1
    assert message.step == step
    assert isinstance(message.data, array.array)
    assert message.data.tobytes() == np.ascontiguousarray(pixels).tobytes()
    expected = message.data.tobytes()
    pixels[...] = 0
    assert message.data.tobytes() == expected, 'the message must own a copy of the pixels'


def test_latest_slot_keeps_newest():
    slot = LatestSlot()

    assert slot.put('first') is False
    assert slot.put('second') is True, 'replacing an untaken item counts as a drop'
    assert slot.take(timeout_s=1.0) == 'second'
    assert slot.take(timeout_s=0.01) is None

    slot.close()
    assert slot.take(timeout_s=5.0) is None, 'close() must wake a waiting consumer'
    slot.reopen()
    slot.put('third')
    assert slot.take(timeout_s=1.0) == 'third'


def _run_node_process(*ros_arguments) -> subprocess.CompletedProcess:
    environment = dict(os.environ)
    environment['PYTHONPATH'] = os.pathsep.join(
        filter(None, [str(PACKAGE_ROOT), environment.get('PYTHONPATH')]))
    return subprocess.run(
        [sys.executable, '-m', 'hetnet_ros.nodes.detector_node', '--ros-args', *ros_arguments],
        env=environment, capture_output=True, text=True, timeout=PROCESS_TIMEOUT_S)


def test_empty_checkpoint_exits_nonzero():
    result = _run_node_process()

    assert result.returncode == 1, result.stderr
    assert "parameter 'checkpoint' is empty" in result.stderr


def test_missing_checkpoint_exits_nonzero(tmp_path):
    missing = tmp_path / 'missing.pt'

    result = _run_node_process('-p', f'checkpoint:={missing}')

    assert result.returncode == 1, result.stderr
    assert f'checkpoint file {missing} not found' in result.stderr


def test_corrupt_checkpoint_exits_nonzero(tmp_path):
    corrupt = tmp_path / 'corrupt.pt'
    corrupt.write_bytes(b'this is not a checkpoint')

    result = _run_node_process('-p', f'checkpoint:={corrupt}', '-p', 'device:=cpu')

    assert result.returncode == 1, result.stderr
    assert f'failed to load checkpoint {corrupt}' in result.stderr


def test_onnx_export_map_and_verdict(onnx_graph, graph, screw_rgb, reference_map, tiny_onnx):
    detector, probe = onnx_graph
    torch_detector, _ = graph
    message = make_image('rgb8', screw_rgb)
    # A raw difference d changes normalised scores by at most 0.5 * d / scale.
    normalised_tolerance = 0.5 * export.DEFAULT_TOLERANCE / torch_detector.detector.calibration.scale

    anomaly_map, heatmap, verdict = run_detector(probe, message)

    assert detector.detector.runtime == 'onnxruntime', "runtime 'auto' must pick ONNX Runtime"
    assert anomaly_map.header == message.header
    assert anomaly_map.encoding == '32FC1'
    assert (anomaly_map.height, anomaly_map.width) == (INPUT_HEIGHT, INPUT_WIDTH)
    values = decode_float_map(
        anomaly_map.height, anomaly_map.width, anomaly_map.step, anomaly_map.data,
        anomaly_map.is_bigendian)
    np.testing.assert_allclose(values, reference_map, rtol=0, atol=normalised_tolerance,
                               err_msg='the ONNX map must match the PyTorch map of the same image')
    assert heatmap.header == message.header
    assert verdict.header == message.header
    assert verdict.model_id == torch_detector.detector.model_id
    assert verdict.is_anomalous == (verdict.pred_score >= verdict.threshold)


def test_invalid_precision_parameter_rejected(graph):
    detector, _ = graph

    (result,) = detector.set_parameters([Parameter('precision', value='int8')])

    assert not result.successful
    assert "precision must be one of auto, fp32, fp16, bf16, got 'int8'" in result.reason
    assert detector.get_parameter('precision').value == 'fp32'


def test_fp16_on_cpu_exits_nonzero(tiny_checkpoint):
    result = _run_node_process(
        '-p', f'checkpoint:={tiny_checkpoint}', '-p', 'device:=cpu', '-p', 'precision:=fp16')

    assert result.returncode == 1, result.stderr
    assert "precision for runtime 'openvino' must be one of fp32, bf16, got 'fp16'" in result.stderr
    assert "fp16 runs on CUDA devices with runtime 'torch'" in result.stderr


def test_torch_runtime_rejects_onnx_file(tiny_onnx):
    result = _run_node_process('-p', f'checkpoint:={tiny_onnx}', '-p', 'runtime:=torch')

    assert result.returncode == 1, result.stderr
    assert "runtime 'torch' cannot run the ONNX file" in result.stderr
