"""Detector node: runs HetNet on the newest camera image and publishes its verdict.

Topics (relative, remapped in bringup), all published with the input image's header:
    image (sensor_msgs/Image, subscribed, sensor-data QoS, depth 1): rgb8, bgr8, rgba8,
        bgra8, mono8 or mono16
    verdict (hetnet_ros_msgs/DefectVerdict)
    anomaly_map (sensor_msgs/Image, 32FC1): normalised anomaly score per pixel, at the
        input size; 0.5 is the decision threshold. Published only while a node
        subscribes to it.
    heatmap (sensor_msgs/Image, rgb8): the anomaly map blended over the image, for RViz.
        Published only while a node subscribes to it and publish_heatmap is true.
    /diagnostics (diagnostic_msgs/DiagnosticArray), once per second: frame, drop and
        error counters

For each image the verdict is published first, then the anomaly map and the heatmap,
so the verdict's latency does not include encoding and publishing the images.

The subscription callback only stores the message with its arrival time. A worker
thread takes the newest one and runs the model, so frames that arrive while the model
is busy are dropped (and counted) instead of queueing up. The verdict's queue_time_s
is the time from the arrival to the worker taking the image.

A checkpoint from hetnet-train runs with PyTorch or OpenVINO, and an .onnx file from
hetnet-export runs with ONNX Runtime. `runtimes.load_detector` makes the choice, and the
node logs it. The ONNX Runtime path never imports PyTorch.

Run: python -m hetnet_ros.nodes.detector_node --ros-args -p checkpoint:=model.pt
"""

import dataclasses
import pathlib
import sys
import threading
import time
from typing import Optional, Tuple

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from hetnet_ros_msgs.msg import DefectVerdict
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from sensor_msgs.msg import Image, RegionOfInterest

from hetnet_ros.imaging import FLOAT_MAP_ENCODING, ImageDecodeError, decode_image
from hetnet_ros.nodes.common import (
    ErrorThrottle, LatestSlot, diagnostic_array, image_message, run_node, sensor_qos)
from hetnet_ros.runtimes import (
    DEVICES, PRECISION_CHOICES, RUNTIMES, ModelLoadError, load_detector)
from hetnet_ros.visualize import heatmap_overlay

ERROR_LOG_PERIOD_S = 5.0
DIAGNOSTICS_PERIOD_S = 1.0

# Maximum time the worker thread blocks before it checks whether to stop.
WORKER_POLL_PERIOD_S = 0.2
WORKER_JOIN_TIMEOUT_S = 10.0


@dataclasses.dataclass
class DetectorStats:
    """Counters of the detector node since start, reported on /diagnostics.

    The subscription callback writes frames_received and frames_dropped, the worker
    thread writes the others, so no counter has two writers.
    """

    frames_received: int = 0
    frames_dropped: int = 0
    frames_processed: int = 0
    bad_messages: int = 0
    inference_errors: int = 0
    last_inference_time_s: float = 0.0
    last_error: str = ''


class DetectorNode(LifecycleNode):
    """Lifecycle node that owns one detector (PyTorch or ONNX Runtime).

    configure loads the model file and warms the model up, activate subscribes to
    `image` and starts the worker thread, deactivate stops both, cleanup releases
    the model.
    """

    def __init__(self, **kwargs):
        super().__init__('detector', **kwargs)
        self._declare_parameters()
        self.add_on_set_parameters_callback(self._validate_parameters)

        self.detector = None
        self.device = ''
        self.stats = DetectorStats()
        # Each item is (message, time.monotonic() at its arrival in the callback).
        self._slot: LatestSlot[Tuple[Image, float]] = LatestSlot()
        self._worker: Optional[threading.Thread] = None
        self._stop_worker = threading.Event()
        self._subscription = None
        self._map_publisher = None
        self._heatmap_publisher = None
        self._verdict_publisher = None
        self._throttle = ErrorThrottle(self.get_logger().error, ERROR_LOG_PERIOD_S)
        self._errors_at_last_diagnostics = 0

        self._diagnostics_publisher = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self._diagnostics_timer = self.create_timer(
            DIAGNOSTICS_PERIOD_S, self._publish_diagnostics)

    def _declare_parameters(self) -> None:
        self.declare_parameter('checkpoint', '', ParameterDescriptor(
            description='Path of the model file (required): a checkpoint (.pt) written by '
                        'hetnet-train or an ONNX file (.onnx) written by hetnet-export.'))
        self.declare_parameter('runtime', 'auto', ParameterDescriptor(
            description="Runtime that runs the model: 'torch', 'onnxruntime', 'openvino' (CPU, "
                        "checkpoints), or 'auto': onnxruntime for .onnx files, torch for "
                        'checkpoints on a CUDA device, openvino for checkpoints on the CPU.'))
        self.declare_parameter('device', 'auto', ParameterDescriptor(
            description="Device: 'cpu', 'cuda', or 'auto' (cuda when the runtime finds it). "
                        'For onnxruntime it selects the execution provider.'))
        self.declare_parameter('precision', 'auto', ParameterDescriptor(
            description="Precision of the networks: 'fp32', 'bf16', 'fp16' (CUDA only), or "
                        "'auto': fp16 on CUDA, bf16 with openvino on a CPU with native bf16, "
                        'fp32 otherwise, checked against fp32 at load. The local teacher and '
                        'the anomaly map always run in fp32.'))
        self.declare_parameter('publish_heatmap', True, ParameterDescriptor(
            description='Publish the rgb8 heatmap overlay on heatmap.'))
        self.declare_parameter('autostart', True, ParameterDescriptor(
            description='Configure and activate at start; false leaves the node unconfigured '
                        'for a lifecycle manager.'))

    def _validate_parameters(self, parameters) -> SetParametersResult:
        for parameter in parameters:
            if parameter.name == 'device' and parameter.value not in DEVICES:
                return SetParametersResult(
                    successful=False,
                    reason=f"device must be one of {', '.join(DEVICES)}, got {parameter.value!r}")
            if parameter.name == 'runtime' and parameter.value not in RUNTIMES:
                return SetParametersResult(
                    successful=False,
                    reason=f"runtime must be one of {', '.join(RUNTIMES)}, got {parameter.value!r}")
            if parameter.name == 'precision' and parameter.value not in PRECISION_CHOICES:
                return SetParametersResult(
                    successful=False,
                    reason=f"precision must be one of {', '.join(PRECISION_CHOICES)}, "
                           f'got {parameter.value!r}')
        return SetParametersResult(successful=True)

    # Lifecycle transitions.

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self.detector, self.device = self._load_detector()
        except ValueError as error:
            self.get_logger().error(str(error))
            return TransitionCallbackReturn.FAILURE
        except Exception as error:  # noqa: BLE001
            # rclpy turns an exception in a transition into an error state without
            # logging it, so log it here.
            checkpoint = self.get_parameter('checkpoint').value
            self.get_logger().error(
                f'failed to load checkpoint {checkpoint} (unexpected {type(error).__name__}: '
                f'{error}); check that it is a checkpoint written by hetnet-train or an ONNX '
                'file written by hetnet-export')
            return TransitionCallbackReturn.FAILURE

        self._map_publisher = self.create_lifecycle_publisher(Image, 'anomaly_map', 10)
        self._heatmap_publisher = self.create_lifecycle_publisher(Image, 'heatmap', 10)
        self._verdict_publisher = self.create_lifecycle_publisher(DefectVerdict, 'verdict', 10)
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._slot.reopen()
        self._stop_worker.clear()
        self._worker = threading.Thread(
            target=self._run_worker, name='detector-worker', daemon=True)
        self._worker.start()
        self._subscription = self.create_subscription(
            Image, 'image', self._on_image, sensor_qos(depth=1))
        self.get_logger().info(f'active: waiting for images on {self._subscription.topic_name}')
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop()
        self.get_logger().info('inactive: image subscription closed')
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        for publisher in (self._map_publisher, self._heatmap_publisher, self._verdict_publisher):
            self.destroy_lifecycle_publisher(publisher)
        self._map_publisher = self._heatmap_publisher = self._verdict_publisher = None
        self.detector = None
        self.get_logger().info('unconfigured: model released')
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.release()
        return TransitionCallbackReturn.SUCCESS

    def release(self) -> None:
        """Stop the worker thread and release the model; safe to call more than once."""
        self._stop()
        self.detector = None

    # Image handling.

    def _on_image(self, message: Image) -> None:
        self.stats.frames_received += 1
        if self._slot.put((message, time.monotonic())):
            self.stats.frames_dropped += 1

    def _run_worker(self) -> None:
        while not self._stop_worker.is_set():
            item = self._slot.take(WORKER_POLL_PERIOD_S)
            if item is None:
                continue
            message, received_at = item
            try:
                self.process(message, received_at)
            except Exception as error:  # noqa: BLE001 - the worker must outlive any one frame
                self.stats.inference_errors += 1
                self.stats.last_error = repr(error)
                self.get_logger().error(
                    f'unexpected error on image {_describe(message)}: {error!r}; '
                    'skipping this frame')

    def process(self, message: Image, received_at: Optional[float] = None) -> bool:
        """Run the model on one image message and publish the results.

        Args:
            message: the image.
            received_at: time.monotonic() at the message's arrival in the subscription
                callback; None reports a queue time of 0.

        Returns:
            True when the verdict was published; False when the message was rejected
            (the error is logged, throttled, and counted in stats).
        """
        queue_time_s = 0.0 if received_at is None else time.monotonic() - received_at
        try:
            rgb = decode_image(
                message.encoding, message.height, message.width, message.step, message.data,
                bool(message.is_bigendian))
        except ImageDecodeError as error:
            self.stats.bad_messages += 1
            self.stats.last_error = str(error)
            self._throttle.report(
                error.reason, f'rejected image {_describe(message)}: {error}')
            return False

        # The model needs contiguous memory; rgb8 without row padding is used as is.
        rgb = np.ascontiguousarray(rgb)
        try:
            prediction = self.detector.predict(rgb)
        except (RuntimeError, ValueError) as error:
            return self._reject_output(message, f'inference failed: {error}')
        anomaly_map = np.asarray(prediction.anomaly_map, dtype=np.float32)
        if anomaly_map.shape != rgb.shape[:2]:
            return self._reject_output(
                message, f'model returned an anomaly map of shape {anomaly_map.shape} for an '
                f'image of shape {rgb.shape[:2]}')
        if not (np.isfinite(prediction.pred_score) and np.all(np.isfinite(anomaly_map))):
            return self._reject_output(
                message, 'model output contains NaN or inf; check that the checkpoint is '
                'intact and was trained without diverging')

        self.stats.frames_processed += 1
        self.stats.last_inference_time_s = float(prediction.inference_time_s)
        self._verdict_publisher.publish(self._verdict_message(message, prediction, queue_time_s))
        self._publish_images(message, rgb, anomaly_map)
        return True

    def _publish_images(self, message: Image, rgb: np.ndarray, anomaly_map: np.ndarray) -> None:
        # A 1280x720 map is 3.7 MB to copy and send, and the overlay needs a colour map
        # and a blend, so each is skipped while no node subscribes to it.
        if self._map_publisher.get_subscription_count() > 0:
            self._map_publisher.publish(image_message(
                message.header, np.ascontiguousarray(anomaly_map, dtype=np.float32),
                FLOAT_MAP_ENCODING, sys.byteorder == 'big'))

        if (self.get_parameter('publish_heatmap').value
                and self._heatmap_publisher.get_subscription_count() > 0):
            self._heatmap_publisher.publish(image_message(
                message.header, heatmap_overlay(rgb, anomaly_map), 'rgb8'))

    def _verdict_message(self, message: Image, prediction, queue_time_s: float) -> DefectVerdict:
        verdict = DefectVerdict()
        verdict.header = message.header
        verdict.pred_score = float(prediction.pred_score)
        verdict.raw_score = float(prediction.raw_score)
        verdict.threshold = float(self.detector.threshold)
        verdict.is_anomalous = bool(prediction.is_anomalous)
        verdict.anomalous_regions = [
            RegionOfInterest(
                x_offset=int(region.x), y_offset=int(region.y),
                width=int(region.width), height=int(region.height))
            for region in prediction.regions]
        verdict.region_scores = [float(region.peak_score) for region in prediction.regions]
        verdict.inference_time_s = float(prediction.inference_time_s)
        verdict.queue_time_s = float(queue_time_s)
        verdict.model_id = self.detector.model_id
        return verdict

    def _reject_output(self, message: Image, reason: str) -> bool:
        self.stats.inference_errors += 1
        self.stats.last_error = reason
        self._throttle.report('inference', f'no verdict for image {_describe(message)}: {reason}')
        return False

    # Helpers.

    def _load_detector(self):
        """Load and warm up the model file; return (detector, device).

        Raises:
            ValueError: the checkpoint parameter is empty, the file is missing or
                cannot be loaded, the runtime cannot run it, or the device is not
                available.
        """
        checkpoint = self.get_parameter('checkpoint').value
        if not checkpoint:
            raise ValueError(
                "parameter 'checkpoint' is empty; set it to a checkpoint file written by "
                'hetnet-train or an ONNX file written by hetnet-export, for example '
                '-p checkpoint:=/models/screw.pt')
        path = pathlib.Path(checkpoint).expanduser()
        if not path.is_file():
            raise ValueError(
                f'checkpoint file {path} not found; check the checkpoint parameter, or train '
                'one with hetnet-train')
        runtime = self.get_parameter('runtime').value
        device = self.get_parameter('device').value
        precision = self.get_parameter('precision').value

        started = time.monotonic()
        try:
            detector, reason = load_detector(path, runtime, device, precision)
            detector.warmup()
        except (ModelLoadError, OSError, RuntimeError) as error:
            raise ValueError(
                f'failed to load checkpoint {path} with runtime {runtime!r} on device {device!r} '
                f'in precision {precision!r}: {error}') from error
        self.get_logger().info(
            f'configured: model {detector.model_id} from {path}, input {detector.image_size}x'
            f'{detector.image_size} px, threshold {detector.threshold:g}, loaded and warmed up in '
            f'{time.monotonic() - started:.1f} s; using {reason}')
        return detector, str(detector.device)

    def _stop(self) -> None:
        if self._subscription is not None:
            self.destroy_subscription(self._subscription)
            self._subscription = None
        self._stop_worker.set()
        self._slot.close()
        if self._worker is not None:
            self._worker.join(WORKER_JOIN_TIMEOUT_S)
            if self._worker.is_alive():
                self.get_logger().warning(
                    f'worker thread still busy after {WORKER_JOIN_TIMEOUT_S:g} s; '
                    'it stops after the current frame')
            self._worker = None

    def _publish_diagnostics(self) -> None:
        # WARN while errors keep coming; OK again after a period without new ones.
        errors = self.stats.bad_messages + self.stats.inference_errors
        new_errors = errors - self._errors_at_last_diagnostics
        self._errors_at_last_diagnostics = errors
        if self.detector is None:
            level, message = DiagnosticStatus.WARN, 'no model loaded'
        elif new_errors:
            level = DiagnosticStatus.WARN
            message = f'{new_errors} images rejected in the last period, last error: ' \
                f'{self.stats.last_error}'
        else:
            level, message = DiagnosticStatus.OK, 'active' if self._worker else 'inactive'
        values = dataclasses.asdict(self.stats)
        values['device'] = self.device
        hardware_id = self.detector.model_id if self.detector is not None else ''
        self._diagnostics_publisher.publish(diagnostic_array(
            self.get_clock().now().to_msg(), f'{self.get_fully_qualified_name()}: detector',
            hardware_id, level, message, values))


def _describe(message: Image) -> str:
    stamp = message.header.stamp
    return (
        f'(frame_id {message.header.frame_id!r}, stamp {stamp.sec}.{stamp.nanosec:09d}, '
        f'encoding {message.encoding!r}, {message.width}x{message.height}, step {message.step}, '
        f'{len(message.data)} bytes)')


def main(args=None) -> int:
    return run_node(DetectorNode, args)


if __name__ == '__main__':
    sys.exit(main())
