"""Camera interface shared by the RealSense and replay back-ends.

A camera is opened once, read frame by frame with a timeout, and closed. It is
also a context manager, so `with ReplayCamera(path) as camera:` closes it on exit.
No rclpy here: the camera node wraps these classes.
"""

import abc
import dataclasses
from typing import Optional, Tuple

import numpy as np


class CameraError(RuntimeError):
    """A camera failed to open or to deliver a frame."""


class CameraNotFoundError(CameraError):
    """The requested device or image source does not exist."""


class CameraTimeoutError(CameraError):
    """No frame arrived within the read timeout."""


class CameraFrameError(CameraError):
    """One frame could not be read (for example a corrupt image file); later reads may work."""


class EndOfStreamError(CameraError):
    """A replay without looping has delivered all of its images."""


@dataclasses.dataclass(frozen=True)
class Frame:
    """One colour image from a camera.

    Attributes:
        rgb: array (H, W, 3) uint8 in RGB order, owned by the frame.
        source: where the frame came from: the image path for a replay,
            'realsense:<serial>#<frame number>' for a RealSense camera.
        sequence: number of frames this camera delivered before this one since open().
    """

    rgb: np.ndarray
    source: str
    sequence: int


@dataclasses.dataclass(frozen=True)
class CameraIntrinsics:
    """Pinhole intrinsics of a colour stream, in pixels, as sensor_msgs/CameraInfo uses them.

    Attributes:
        width, height: image size in pixels.
        fx, fy: focal lengths in pixels.
        cx, cy: principal point in pixels.
        distortion_model: CameraInfo model name, for example 'plumb_bob'.
        distortion: distortion coefficients in the order of that model.
    """

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    distortion_model: str
    distortion: Tuple[float, ...]


class Camera(abc.ABC):
    """A source of RGB frames.

    Subclasses implement `_open`, `_read` and `_close`; this class keeps the open
    state, counts frames and gives clear errors for calls in the wrong state.
    """

    def __init__(self, name: str):
        self.name = name
        self._is_open = False
        self._sequence = 0

    @property
    def is_open(self) -> bool:
        return self._is_open

    def open(self) -> None:
        """Open the device or image source.

        Raises:
            CameraNotFoundError: the device or source does not exist.
            CameraError: it exists but cannot be started.
        """
        if self._is_open:
            return
        self._open()
        self._is_open = True
        self._sequence = 0

    def read(self, timeout_s: float) -> Frame:
        """Return the next frame, waiting at most `timeout_s` seconds for it.

        Raises:
            CameraError: the camera is not open.
            CameraTimeoutError: no frame arrived in time.
            CameraFrameError: this frame could not be read.
            EndOfStreamError: a replay without looping has no images left.
        """
        if not self._is_open:
            raise CameraError(f'camera {self.name} is not open; call open() before read()')
        if timeout_s <= 0:
            raise ValueError(f'timeout_s must be positive, got {timeout_s}')
        rgb, source = self._read(timeout_s)
        frame = Frame(rgb=rgb, source=source, sequence=self._sequence)
        self._sequence += 1
        return frame

    def close(self) -> None:
        """Release the device. Closing a closed camera does nothing."""
        if not self._is_open:
            return
        self._is_open = False
        self._close()

    def intrinsics(self) -> Optional[CameraIntrinsics]:
        """Return the colour stream's intrinsics, or None where the back-end has none."""
        return None

    def __enter__(self) -> 'Camera':
        self.open()
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    @abc.abstractmethod
    def _open(self) -> None:
        ...

    @abc.abstractmethod
    def _read(self, timeout_s: float) -> Tuple[np.ndarray, str]:
        """Return (rgb, source) for the next frame."""

    @abc.abstractmethod
    def _close(self) -> None:
        ...
