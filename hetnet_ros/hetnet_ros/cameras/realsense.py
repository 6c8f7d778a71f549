"""Intel RealSense colour camera through pyrealsense2 (written against the 2.59 Python API)."""

import logging
from typing import Optional, Tuple

import numpy as np

from hetnet_ros.cameras.base import (
    Camera, CameraError, CameraFrameError, CameraIntrinsics, CameraNotFoundError,
    CameraTimeoutError)

logger = logging.getLogger(__name__)

# CameraInfo distortion model for each librealsense model. The Brown-Conrady
# variants all use the (k1, k2, p1, p2, k3) coefficients of plumb_bob.
# NOTE: inverse_brown_conrady maps distorted to undistorted points, the opposite
# direction of plumb_bob; D400 colour streams report it with zero coefficients.
DISTORTION_MODELS = {
    'none': ('plumb_bob', 5),
    'brown_conrady': ('plumb_bob', 5),
    'modified_brown_conrady': ('plumb_bob', 5),
    'inverse_brown_conrady': ('plumb_bob', 5),
    'kannala_brandt4': ('equidistant', 4),
    'ftheta': ('equidistant', 4),
}

# The D400 colour sensor takes its exposure option in steps of 100 microseconds
# (range 1..10000), unlike the depth sensor, which takes microseconds.
COLOR_EXPOSURE_UNIT_US = 100.0


# NOTE: only the path without a camera has run on the build machines. Streaming,
# options and intrinsics have not run against a real device.
class RealSenseCamera(Camera):
    """Colour stream of one RealSense camera (D415 and other D400 models).

    Args:
        serial_number: serial of the camera to open; '' opens the first camera found.
        width, height: colour profile size in pixels.
        fps: colour profile frame rate in frames per second.
        exposure_us: manual exposure time in microseconds; 0 keeps auto exposure.
        white_balance_k: manual white balance in kelvin; 0 keeps auto white balance.

    Raises:
        ValueError: a size, rate, exposure or white balance is out of range.
    """

    def __init__(
            self,
            serial_number: str = '',
            width: int = 1280,
            height: int = 720,
            fps: int = 30,
            exposure_us: float = 0.0,
            white_balance_k: float = 0.0):
        super().__init__(name=f'realsense:{serial_number or "any"}')
        if width <= 0 or height <= 0 or fps <= 0:
            raise ValueError(
                f'RealSense colour profile {width}x{height} at {fps} fps is invalid; '
                'width, height and fps must be positive')
        if exposure_us < 0 or white_balance_k < 0:
            raise ValueError(
                f'exposure_us={exposure_us} and white_balance_k={white_balance_k} must be '
                '0 (automatic) or positive')
        self.serial_number = serial_number
        self.width = width
        self.height = height
        self.fps = fps
        self.exposure_us = exposure_us
        self.white_balance_k = white_balance_k
        self._rs = None
        self._pipeline = None
        self._opened_serial = ''
        self._intrinsics: Optional[CameraIntrinsics] = None

    def intrinsics(self) -> Optional[CameraIntrinsics]:
        return self._intrinsics

    def _open(self) -> None:
        rs = _import_pyrealsense2()
        self._rs = rs

        # query_devices returns at once, while pipeline.start() with no camera
        # takes about 15 s to fail, so look for the camera first.
        serial = self._find_device(rs)

        config = rs.config()
        config.enable_device(serial)
        config.enable_stream(rs.stream.color, self.width, self.height, rs.format.rgb8, self.fps)
        pipeline = rs.pipeline()
        if not config.can_resolve(rs.pipeline_wrapper(pipeline)):
            raise CameraError(
                f'RealSense {serial} has no colour profile {self.width}x{self.height} rgb8 '
                f'at {self.fps} fps; list the supported profiles with `rs-enumerate-devices` '
                'and set width, height and fps to one of them')
        try:
            profile = pipeline.start(config)
        except RuntimeError as error:
            raise CameraError(
                f'failed to start RealSense {serial} ({error}); check that no other program '
                'uses the camera and that it is on a USB 3 port') from error

        self._pipeline = pipeline
        self._opened_serial = serial
        try:
            self._apply_options(profile)
        except (CameraError, RuntimeError):
            self._close()
            raise
        self._intrinsics = self._read_intrinsics(profile)
        logger.info(
            'RealSense %s started: colour %dx%d at %d fps', serial, self.width, self.height,
            self.fps)

    def _read(self, timeout_s: float) -> Tuple[np.ndarray, str]:
        # Discard a frame already waiting in the pipeline's queue, so that the frame
        # returned was taken after this call started. A capture after a robot motion
        # needs that.
        while self._pipeline.poll_for_frames():
            pass

        try:
            frames = self._pipeline.wait_for_frames(max(1, int(timeout_s * 1000)))
        except RuntimeError as error:
            raise CameraTimeoutError(
                f'RealSense {self._opened_serial} delivered no frame within {timeout_s} s '
                f'({error}); check the USB cable and that the camera is still connected') \
                from error

        color = frames.get_color_frame()
        if not color:
            raise CameraFrameError(
                f'RealSense {self._opened_serial} returned a frame set without a colour frame')

        # The SDK reuses the frame buffer, so the frame keeps its own copy.
        rgb = np.array(color.get_data(), dtype=np.uint8, copy=True)
        if rgb.shape != (self.height, self.width, 3):
            raise CameraFrameError(
                f'RealSense {self._opened_serial} returned a colour frame of shape {rgb.shape}, '
                f'expected ({self.height}, {self.width}, 3)')
        return rgb, f'realsense:{self._opened_serial}#{color.get_frame_number()}'

    def _close(self) -> None:
        if self._pipeline is not None:
            try:
                self._pipeline.stop()
            except RuntimeError as error:
                logger.warning('stopping RealSense %s failed: %s', self._opened_serial, error)
        self._pipeline = None
        self._intrinsics = None

    def _find_device(self, rs) -> str:
        """Return the serial of the requested camera, or raise CameraNotFoundError."""
        devices = rs.context().query_devices()
        found = []
        for device in devices:
            serial = device.get_info(rs.camera_info.serial_number)
            name = device.get_info(rs.camera_info.name)
            found.append(f'{name} {serial}')
            if not self.serial_number or serial == self.serial_number:
                return serial

        requested = self.serial_number or 'any'
        connected = ', '.join(found) if found else 'none'
        raise CameraNotFoundError(
            f'RealSense camera with serial number {requested} not found (connected cameras: '
            f'{connected}); check that it is plugged into a USB 3 port with a USB 3 cable, '
            'that the librealsense udev rules are installed, and that `rs-enumerate-devices` '
            'lists it')

    def _apply_options(self, profile) -> None:
        rs = self._rs
        sensor = profile.get_device().first_color_sensor()

        if self.exposure_us > 0:
            value = round(self.exposure_us / COLOR_EXPOSURE_UNIT_US)
            self._set_option(sensor, rs.option.enable_auto_exposure, 0, 'auto exposure')
            self._set_option(sensor, rs.option.exposure, value, 'exposure (100 us steps)')
        if self.white_balance_k > 0:
            self._set_option(
                sensor, rs.option.enable_auto_white_balance, 0, 'auto white balance')
            self._set_option(
                sensor, rs.option.white_balance, self.white_balance_k, 'white balance (K)')

    def _set_option(self, sensor, option, value: float, label: str) -> None:
        if not sensor.supports(option):
            raise CameraError(
                f'RealSense {self._opened_serial} colour sensor has no {label} option; '
                'leave it at 0 (automatic)')
        option_range = sensor.get_option_range(option)
        if not option_range.min <= value <= option_range.max:
            raise CameraError(
                f'RealSense {self._opened_serial} {label} value {value} is out of range '
                f'[{option_range.min}, {option_range.max}]; choose a value inside it')
        sensor.set_option(option, value)

    def _read_intrinsics(self, profile) -> Optional[CameraIntrinsics]:
        rs = self._rs
        try:
            stream = profile.get_stream(rs.stream.color).as_video_stream_profile()
            raw = stream.get_intrinsics()
        except RuntimeError as error:
            logger.warning(
                'RealSense %s reports no colour intrinsics (%s); camera_info will have none',
                self._opened_serial, error)
            return None

        model_name = str(raw.model).rsplit('.', 1)[-1]
        distortion_model, coefficient_count = DISTORTION_MODELS.get(model_name, ('', 0))
        if not distortion_model:
            logger.warning(
                'RealSense %s uses distortion model %s, which CameraInfo cannot express; '
                'publishing it without distortion', self._opened_serial, model_name)
            distortion_model, coefficient_count = 'plumb_bob', 5
            coefficients = (0.0,) * coefficient_count
        else:
            coefficients = tuple(float(value) for value in list(raw.coeffs)[:coefficient_count])
        return CameraIntrinsics(
            width=raw.width, height=raw.height, fx=raw.fx, fy=raw.fy, cx=raw.ppx, cy=raw.ppy,
            distortion_model=distortion_model, distortion=coefficients)


def _import_pyrealsense2():
    try:
        import pyrealsense2
    except ImportError as error:
        raise CameraError(
            f'cannot load pyrealsense2 ({error}); install the pyrealsense2 package and the '
            'libusb-1.0 system library it needs (Debian and Ubuntu: libusb-1.0-0)') from error
    return pyrealsense2
