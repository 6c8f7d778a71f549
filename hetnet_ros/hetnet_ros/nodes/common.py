"""Pieces shared by the hetnet_ros nodes: QoS, error throttling, a newest-frame slot, main().

image_message builds sensor_msgs/Image messages from NumPy arrays with one copy of the pixels.
"""

import array
import math
import threading
import time
from typing import Callable, Dict, Generic, List, Optional, Tuple, TypeVar

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn
from rclpy.logging import get_logger
from rclpy.qos import QoSProfile, qos_profile_sensor_data
from sensor_msgs.msg import Image
from std_msgs.msg import Header

T = TypeVar('T')

# Best effort, volatile, keep last 5: the usual profile for camera streams.
SENSOR_QOS = qos_profile_sensor_data


def sensor_qos(depth: int) -> QoSProfile:
    """Return the sensor-data QoS profile with another history depth."""
    profile = QoSProfile(depth=depth)
    profile.history = SENSOR_QOS.history
    profile.reliability = SENSOR_QOS.reliability
    profile.durability = SENSOR_QOS.durability
    return profile


class ErrorThrottle:
    """Rate limit for a repeated error log, kept separately for each kind of error.

    The first error of a kind is logged at once. Later ones of the same kind are
    logged at most once per `period_s`, with the number left out since the last one.
    Safe to call from several threads.
    """

    def __init__(
            self,
            log: Callable[[str], None],
            period_s: float,
            clock: Callable[[], float] = time.monotonic):
        self._log = log
        self._period_s = period_s
        self._clock = clock
        self._lock = threading.Lock()
        # kind -> (time of the last log, errors not logged since then)
        self._state: Dict[str, Tuple[float, int]] = {}

    def report(self, kind: str, message: str) -> bool:
        """Log `message` unless an error of this kind was logged less than period_s ago.

        Returns:
            True when the message was logged.
        """
        with self._lock:
            now = self._clock()
            last_logged, suppressed = self._state.get(kind, (-math.inf, 0))
            if now - last_logged < self._period_s:
                self._state[kind] = (last_logged, suppressed + 1)
                return False
            self._state[kind] = (now, 0)

        if suppressed:
            message += (
                f' ({suppressed} more errors of this kind in the last '
                f'{now - last_logged:.0f} s were not logged)')
        self._log(message)
        return True


class LatestSlot(Generic[T]):
    """Hand-over of the newest item from a producer thread to a consumer thread.

    The slot contains at most one item. Putting a new item replaces one that was not taken
    yet, so a slow consumer always gets the newest item and memory stays bounded.
    """

    def __init__(self):
        self._condition = threading.Condition()
        self._item: Optional[T] = None
        self._closed = False

    def put(self, item: T) -> bool:
        """Store `item`; return True when it replaced an item that was never taken."""
        with self._condition:
            replaced = self._item is not None
            self._item = item
            self._condition.notify()
        return replaced

    def take(self, timeout_s: float) -> Optional[T]:
        """Remove and return the item, waiting at most `timeout_s`; None on timeout or close."""
        with self._condition:
            self._condition.wait_for(lambda: self._item is not None or self._closed, timeout_s)
            item, self._item = self._item, None
            return item

    def close(self) -> None:
        """Wake a waiting consumer; later take() calls return the last item, then None."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()

    def reopen(self) -> None:
        """Drop any stored item and accept items again after close()."""
        with self._condition:
            self._item = None
            self._closed = False


def image_message(
        header: Header, pixels: np.ndarray, encoding: str, is_bigendian: bool = False) -> Image:
    """Build a sensor_msgs/Image of an (H, W) or (H, W, C) array, copying its pixels once.

    The rows are stored without padding, so step is the row length in bytes. The caller
    picks an `encoding` that matches the array's dtype and channel count.
    """
    pixels = np.ascontiguousarray(pixels)
    data = array.array('B')
    data.frombytes(pixels.reshape(-1).view(np.uint8))
    # With check_fields, the setter of a uint8[] field keeps an array.array('B') as it is.
    # Without it, the setter copies the buffer again (rosidl_generator_py, ROS 2 Jazzy).
    message = Image(
        check_fields=True, header=header, height=pixels.shape[0], width=pixels.shape[1],
        encoding=encoding, is_bigendian=int(is_bigendian), step=pixels.strides[0])
    message.data = data
    return message


def diagnostic_array(
        stamp,
        name: str,
        hardware_id: str,
        level: bytes,
        message: str,
        values: Dict[str, object]) -> DiagnosticArray:
    """Build a /diagnostics message with one status; `values` become string key-value pairs."""
    status = DiagnosticStatus(
        level=level, name=name, message=message, hardware_id=hardware_id,
        values=[KeyValue(key=key, value=str(value)) for key, value in values.items()])
    array = DiagnosticArray()
    array.header.stamp = stamp
    array.status = [status]
    return array


def start_lifecycle_node(node: LifecycleNode) -> bool:
    """Configure and activate `node`; return False, with the reason logged, if a step fails."""
    for transition, step in ((node.trigger_configure, 'configure'),
                             (node.trigger_activate, 'activate')):
        result = transition()
        if result != TransitionCallbackReturn.SUCCESS:
            node.get_logger().error(
                f'node {node.get_fully_qualified_name()} failed to {step} '
                f'({result.to_label()}); see the error above')
            return False
    return True


def run_node(create_node: Callable[[], LifecycleNode], args: Optional[List[str]]) -> int:
    """Run a lifecycle node until shutdown; return the process exit code.

    With its `autostart` parameter true (the default), the node is configured and
    activated at once, and a failure there ends the process with exit code 1.
    With autostart false, it waits unconfigured for a lifecycle manager.
    The node must have an `autostart` parameter and a `release()` method that frees
    its resources; release() is called at exit.
    """
    rclpy.init(args=args)
    node = None
    try:
        try:
            node = create_node()
        except ParameterException as error:
            # A parameter override of the wrong type fails in the constructor.
            get_logger('hetnet_ros').error(f'invalid parameter: {error}')
            return 1
        if node.get_parameter('autostart').value and not start_lifecycle_node(node):
            return 1
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.release()
            node.destroy_node()
        rclpy.try_shutdown()
    return 0
