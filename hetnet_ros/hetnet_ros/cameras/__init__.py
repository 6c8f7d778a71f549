"""Camera back-ends behind one interface: RealSense (pyrealsense2) and replay of image files."""

from hetnet_ros.cameras.base import (
    Camera, CameraError, CameraFrameError, CameraIntrinsics, CameraNotFoundError,
    CameraTimeoutError, EndOfStreamError, Frame)
from hetnet_ros.cameras.realsense import RealSenseCamera
from hetnet_ros.cameras.replay import ReplayCamera, list_replay_images

__all__ = [
    'Camera', 'CameraError', 'CameraFrameError', 'CameraIntrinsics', 'CameraNotFoundError',
    'CameraTimeoutError', 'EndOfStreamError', 'Frame', 'RealSenseCamera', 'ReplayCamera',
    'list_replay_images',
]
