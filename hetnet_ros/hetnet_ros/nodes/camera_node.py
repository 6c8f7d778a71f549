"""Camera node: publishes colour images from a RealSense camera or a replay of image files.

Topics (relative, remapped in bringup):
    image (sensor_msgs/Image, rgb8, sensor-data QoS)
    camera_info (sensor_msgs/CameraInfo, sensor-data QoS), one per image with its header
    /diagnostics (diagnostic_msgs/DiagnosticArray), once per second
Service:
    capture (std_srvs/Trigger): read and publish the next frame; the response message
    contains the stamp and the source of that frame.

Run: python -m hetnet_ros.nodes.camera_node --ros-args -p backend:=replay -p source:=DIR
"""

import dataclasses
import sys
import time
from typing import Optional, Tuple

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from sensor_msgs.msg import CameraInfo, Image
from std_srvs.srv import Trigger

from hetnet_ros.cameras.base import (
    Camera, CameraError, CameraFrameError, CameraIntrinsics, EndOfStreamError, Frame)
from hetnet_ros.cameras.realsense import RealSenseCamera
from hetnet_ros.cameras.replay import ReplayCamera
from hetnet_ros.imaging import encode_rgb8
from hetnet_ros.nodes.common import SENSOR_QOS, ErrorThrottle, diagnostic_array, run_node

BACKENDS = ('replay', 'realsense')

FLOAT_PARAMETERS = (
    'rate_hz', 'exposure_us', 'white_balance_k', 'capture_timeout_s', 'reconnect_max_delay_s')

# Consecutive failed reads after which the camera is closed and reopened.
FAILURES_BEFORE_RECONNECT = 3

ERROR_LOG_PERIOD_S = 5.0
DIAGNOSTICS_PERIOD_S = 1.0


@dataclasses.dataclass
class CameraStats:
    """Counters of the camera node since start, reported on /diagnostics."""

    frames_published: int = 0
    read_errors: int = 0
    reconnects: int = 0
    last_error: str = ''


class CameraNode(LifecycleNode):
    """Lifecycle node that owns one camera and publishes its frames.

    configure opens the camera, activate starts publishing (at rate_hz, or only on
    capture requests when rate_hz is 0), deactivate stops it, cleanup closes the camera.
    """

    def __init__(self, **kwargs):
        super().__init__('camera', **kwargs)
        self._declare_parameters()
        self.add_on_set_parameters_callback(self._validate_parameters)

        self.camera: Optional[Camera] = None
        self.stats = CameraStats()
        self._active = False
        self._stream_ended = False
        self._consecutive_failures = 0
        self._reconnect_attempt = 0
        self._reconnect_at: Optional[float] = None
        self._image_publisher = None
        self._info_publisher = None
        self._timer = None
        self._throttle = ErrorThrottle(self.get_logger().error, ERROR_LOG_PERIOD_S)

        self._capture_service = self.create_service(Trigger, 'capture', self._on_capture)
        self._diagnostics_publisher = self.create_publisher(
            DiagnosticArray, '/diagnostics', 10)
        self._diagnostics_timer = self.create_timer(
            DIAGNOSTICS_PERIOD_S, self._publish_diagnostics)

    def _declare_parameters(self) -> None:
        self._parameter_names = []

        def declare(name, default, description):
            # Float parameters also accept integers (-p rate_hz:=2), and a serial
            # number typed without quotes arrives as an integer, so the types of
            # these are checked in _validate_parameters instead of by rclpy.
            descriptor = ParameterDescriptor(
                description=description,
                dynamic_typing=isinstance(default, float) or name == 'serial_number')
            self.declare_parameter(name, default, descriptor)
            self._parameter_names.append(name)

        declare('backend', 'replay', "Camera back-end: 'replay' (image files) or 'realsense'.")
        declare('source', '',
                'replay: image file, folder (searched recursively) or MVTec-layout data set '
                'root (its test/<type>/ images).')
        declare('loop', True, 'replay: start over after the last image.')
        declare('shuffle', False, 'replay: random order, a new permutation each pass.')
        declare('seed', 0, 'replay: seed of the shuffled order.')
        declare('rate_hz', 0.0,
                'Publishing rate in hertz; 0 publishes only on requests to the capture service.')
        declare('frame_id', 'camera_color_optical_frame', 'frame_id of published images.')
        declare('serial_number', '', "realsense: serial number of the camera; '' opens any.")
        declare('width', 1280, 'realsense: colour image width in pixels.')
        declare('height', 720, 'realsense: colour image height in pixels.')
        declare('fps', 30, 'realsense: colour stream rate in frames per second.')
        declare('exposure_us', 0.0,
                'realsense: manual exposure time in microseconds; 0 keeps auto exposure.')
        declare('white_balance_k', 0.0,
                'realsense: manual white balance in kelvin; 0 keeps auto white balance.')
        declare('capture_timeout_s', 2.0, 'Maximum wait for one frame, in seconds.')
        declare('reconnect_max_delay_s', 30.0,
                'Longest wait between attempts to reopen a lost camera, in seconds.')
        declare('autostart', True,
                'Configure and activate at start; false leaves the node unconfigured for a '
                'lifecycle manager.')

    def _validate_parameters(self, parameters) -> SetParametersResult:
        for parameter in parameters:
            value = parameter.value
            reason = ''
            if parameter.name in FLOAT_PARAMETERS and (
                    isinstance(value, bool) or not isinstance(value, (int, float))):
                reason = f'{parameter.name} must be a number, got {value!r}'
            elif parameter.name == 'serial_number' and not isinstance(value, str):
                reason = (
                    f'serial_number must be a string, got {value!r}; quote it so that YAML '
                    'keeps leading zeros: -p serial_number:="\'012345678901\'"')
            elif parameter.name == 'backend' and value not in BACKENDS:
                reason = f"backend must be one of {', '.join(BACKENDS)}, got {value!r}"
            elif parameter.name == 'rate_hz' and value < 0:
                reason = f'rate_hz must be 0 (on request) or positive, got {value}'
            elif parameter.name in ('capture_timeout_s', 'reconnect_max_delay_s') and value <= 0:
                reason = f'{parameter.name} must be positive, got {value}'
            elif parameter.name in ('width', 'height', 'fps') and value <= 0:
                reason = f'{parameter.name} must be positive, got {value}'
            elif parameter.name in ('exposure_us', 'white_balance_k') and value < 0:
                reason = f'{parameter.name} must be 0 (automatic) or positive, got {value}'
            if reason:
                return SetParametersResult(successful=False, reason=reason)
        return SetParametersResult(successful=True)

    # Lifecycle transitions.

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        # The on-set callback is added after the parameters are declared, so values
        # given at start (--ros-args -p) have not been checked yet.
        check = self._validate_parameters(self.get_parameters(self._parameter_names))
        if not check.successful:
            self.get_logger().error(f'invalid parameter: {check.reason}')
            return TransitionCallbackReturn.FAILURE
        try:
            camera = self._create_camera()
            camera.open()
        except (CameraError, ValueError) as error:
            self.get_logger().error(f'failed to open the camera: {error}')
            return TransitionCallbackReturn.FAILURE
        except Exception as error:  # noqa: BLE001
            # rclpy turns an exception in a transition into an error state without
            # logging it, so log it here.
            self.get_logger().error(f'unexpected error while opening the camera: {error!r}')
            return TransitionCallbackReturn.FAILURE

        self.camera = camera
        self._stream_ended = False
        self._consecutive_failures = 0
        self._reconnect_at = None
        self._image_publisher = self.create_lifecycle_publisher(Image, 'image', SENSOR_QOS)
        self._info_publisher = self.create_lifecycle_publisher(
            CameraInfo, 'camera_info', SENSOR_QOS)
        details = f' with {len(camera.images)} images' if isinstance(camera, ReplayCamera) else ''
        self.get_logger().info(f'configured: camera {camera.name} is open{details}')
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        rate_hz = float(self.get_parameter('rate_hz').value)
        if rate_hz > 0:
            self._timer = self.create_timer(1.0 / rate_hz, self._on_timer)
            mode = f'publishing at {rate_hz:g} Hz'
        else:
            mode = 'publishing one frame per request to the capture service'
        self._active = True
        self.get_logger().info(f'active: {mode} on {self._image_publisher.topic_name}')
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_timer()
        self._active = False
        self.get_logger().info('inactive: publishing stopped')
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._close_camera()
        self.destroy_lifecycle_publisher(self._image_publisher)
        self.destroy_lifecycle_publisher(self._info_publisher)
        self._image_publisher = self._info_publisher = None
        self.get_logger().info('unconfigured: camera closed')
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.release()
        return TransitionCallbackReturn.SUCCESS

    def release(self) -> None:
        """Stop publishing and close the camera; safe to call more than once."""
        self._stop_timer()
        self._active = False
        self._close_camera()

    # Publishing.

    def _on_timer(self) -> None:
        if self._reconnect_at is not None:
            if time.monotonic() >= self._reconnect_at:
                self._try_reconnect()
            return
        self.publish_next_frame()

    def _on_capture(self, request: Trigger.Request, response: Trigger.Response):
        if not self._active:
            response.success = False
            response.message = 'camera node is not active; configure and activate it first'
            return response
        if self._reconnect_at is not None and not self._try_reconnect():
            response.success = False
            response.message = f'camera is not connected: {self.stats.last_error}'
            return response

        response.success, response.message = self.publish_next_frame()
        return response

    def publish_next_frame(self) -> Tuple[bool, str]:
        """Read one frame and publish it with its camera_info.

        Returns:
            (success, message): on success the message contains the stamp and
            source of the frame, otherwise the error.
        """
        if self._stream_ended:
            return False, self.stats.last_error
        timeout_s = float(self.get_parameter('capture_timeout_s').value)
        try:
            frame = self.camera.read(timeout_s)
        except EndOfStreamError as error:
            self._stream_ended = True
            self.stats.last_error = str(error)
            self._stop_timer()
            self.get_logger().info(str(error))
            return False, str(error)
        except CameraFrameError as error:
            self._record_read_error('frame', error)
            return False, str(error)
        except CameraError as error:
            self._record_read_error('device', error)
            self._consecutive_failures += 1
            if self._consecutive_failures >= FAILURES_BEFORE_RECONNECT:
                self._schedule_reconnect(error)
            return False, str(error)

        self._consecutive_failures = 0
        image = self._image_message(frame)
        self._image_publisher.publish(image)
        self._info_publisher.publish(self._camera_info_message(image))
        self.stats.frames_published += 1
        stamp = image.header.stamp
        return True, f'published frame stamp={stamp.sec}.{stamp.nanosec:09d} source={frame.source}'

    def _image_message(self, frame: Frame) -> Image:
        step, data = encode_rgb8(frame.rgb)
        image = Image()
        image.header.stamp = self.get_clock().now().to_msg()
        image.header.frame_id = self.get_parameter('frame_id').value
        image.height, image.width = frame.rgb.shape[:2]
        image.encoding = 'rgb8'
        image.is_bigendian = 0
        image.step = step
        image.data = data
        return image

    def _camera_info_message(self, image: Image) -> CameraInfo:
        info = CameraInfo()
        info.header = image.header
        info.height = image.height
        info.width = image.width
        intrinsics = self.camera.intrinsics()
        if intrinsics is not None and (intrinsics.width, intrinsics.height) == (
                image.width, image.height):
            _fill_intrinsics(info, intrinsics)
        # Without intrinsics, k, r and p stay all zero: CameraInfo's mark of an
        # uncalibrated camera.
        return info

    # Faults and reconnection.

    def _record_read_error(self, kind: str, error: CameraError) -> None:
        self.stats.read_errors += 1
        self.stats.last_error = str(error)
        self._throttle.report(kind, f'camera read failed: {error}')

    def _schedule_reconnect(self, error: Exception) -> None:
        self.camera.close()
        max_delay_s = float(self.get_parameter('reconnect_max_delay_s').value)
        delay_s = min(max_delay_s, 2.0 ** self._reconnect_attempt)
        self._reconnect_attempt += 1
        self._reconnect_at = time.monotonic() + delay_s
        self.get_logger().warning(
            f'camera {self.camera.name} lost ({error}); reopening in {delay_s:g} s '
            f'(attempt {self._reconnect_attempt})')

    def _try_reconnect(self) -> bool:
        try:
            self.camera.open()
        except CameraError as error:
            self.stats.last_error = str(error)
            self._schedule_reconnect(error)
            return False
        self.get_logger().info(
            f'camera {self.camera.name} reopened after {self._reconnect_attempt} attempts')
        self.stats.reconnects += 1
        self._reconnect_attempt = 0
        self._reconnect_at = None
        self._consecutive_failures = 0
        return True

    # Helpers.

    def _create_camera(self) -> Camera:
        value = self.get_parameter
        backend = value('backend').value
        if backend == 'replay':
            source = value('source').value
            if not source:
                raise ValueError(
                    "parameter 'source' is empty; set it to a folder of images or an "
                    'MVTec-layout data set root, for example -p source:=/data/mvtec_screw')
            return ReplayCamera(
                source, loop=value('loop').value, shuffle=value('shuffle').value,
                seed=value('seed').value)
        return RealSenseCamera(
            serial_number=value('serial_number').value, width=value('width').value,
            height=value('height').value, fps=value('fps').value,
            exposure_us=float(value('exposure_us').value),
            white_balance_k=float(value('white_balance_k').value))

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self.destroy_timer(self._timer)
            self._timer = None

    def _close_camera(self) -> None:
        if self.camera is not None:
            self.camera.close()
            self.camera = None
        self._reconnect_at = None

    def _publish_diagnostics(self) -> None:
        if self.camera is None:
            level, message = DiagnosticStatus.WARN, 'camera not open'
        elif self._reconnect_at is not None:
            level, message = DiagnosticStatus.ERROR, f'camera lost: {self.stats.last_error}'
        elif self._stream_ended:
            level, message = DiagnosticStatus.OK, 'replay finished'
        else:
            level, message = DiagnosticStatus.OK, 'active' if self._active else 'inactive'
        values = dataclasses.asdict(self.stats)
        values['backend'] = self.get_parameter('backend').value
        self._diagnostics_publisher.publish(diagnostic_array(
            self.get_clock().now().to_msg(), f'{self.get_fully_qualified_name()}: camera',
            self.camera.name if self.camera is not None else '', level, message, values))


def _fill_intrinsics(info: CameraInfo, intrinsics: CameraIntrinsics) -> None:
    fx, fy, cx, cy = intrinsics.fx, intrinsics.fy, intrinsics.cx, intrinsics.cy
    info.distortion_model = intrinsics.distortion_model
    info.d = list(intrinsics.distortion)
    info.k = [fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0]
    info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    info.p = [fx, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0]


def main(args=None) -> int:
    return run_node(CameraNode, args)


if __name__ == '__main__':
    sys.exit(main())
