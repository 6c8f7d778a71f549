"""Robot arm interface shared by the simulated and the real back-ends.

Poses are tool centre point (TCP) poses in the robot base frame: position in
metres, orientation as a unit quaternion (x, y, z, w). Every blocking call
takes a timeout in wall-clock seconds and raises a `RobotError` subclass when
it cannot complete.
"""

import abc
import math
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Sequence

if TYPE_CHECKING:
    from hetnet_ros.robots.limits import MotionLimits

# Largest accepted deviation of a quaternion's norm from 1. A back-end
# normalises accepted quaternions exactly before use.
QUATERNION_NORM_TOLERANCE = 1e-3


class RobotError(Exception):
    """Base class of every error raised by a robot back-end."""


class RobotConnectionError(RobotError):
    """The back-end could not connect to the arm, or lost the connection."""


class RobotNotConnectedError(RobotError):
    """A command was sent before `connect()` or after `disconnect()`."""


class InvalidPoseError(RobotError, ValueError):
    """A target pose is not finite, not normalised or has the wrong shape."""


class InvalidSpeedError(RobotError, ValueError):
    """A velocity or acceleration is not a finite number greater than zero."""


class MotionTimeoutError(RobotError, TimeoutError):
    """A motion or settle wait did not finish within its timeout."""


class MotionStoppedError(RobotError):
    """A motion ended early because `stop()` was called."""


class RobotFaultError(RobotError):
    """The arm is in a fault state and does not accept motion commands."""


class EmergencyStopError(RobotFaultError):
    """The emergency stop is pressed, or was pressed and the fault is not cleared yet."""


class UnreachablePoseError(RobotFaultError):
    """The controller rejected a target it cannot reach and went into a fault."""


@dataclass(frozen=True)
class Pose:
    """TCP pose: position (x, y, z) in metres, orientation quaternion (x, y, z, w)."""

    position: tuple[float, float, float]
    orientation: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 1.0)


def validate_pose(pose: Pose, *, label: str = 'pose') -> Pose:
    """Check a pose and return it with an exactly normalised quaternion.

    Raises:
        InvalidPoseError: when a value is missing or not finite, or when the
            quaternion norm differs from 1 by more than `QUATERNION_NORM_TOLERANCE`.
    """
    position = _finite_tuple(pose.position, 3, f'{label} position [x, y, z]')
    orientation = _finite_tuple(pose.orientation, 4, f'{label} orientation [x, y, z, w]')

    norm = math.sqrt(sum(value * value for value in orientation))
    if abs(norm - 1.0) > QUATERNION_NORM_TOLERANCE:
        raise InvalidPoseError(
            f'{label} orientation {list(orientation)} is not a unit quaternion '
            f'(norm {norm:.6f}, allowed 1 +/- {QUATERNION_NORM_TOLERANCE}); normalise it')
    return Pose(position, tuple(value / norm for value in orientation))


def validate_speed(max_linear_vel_m_s: float) -> float:
    """Return the velocity limit as a float, raising `InvalidSpeedError` unless it is > 0."""
    try:
        speed = float(max_linear_vel_m_s)
    except (TypeError, ValueError):
        raise InvalidSpeedError(
            f'max_linear_vel_m_s must be a number, got {max_linear_vel_m_s!r}') from None
    if not math.isfinite(speed) or speed <= 0.0:
        raise InvalidSpeedError(
            f'max_linear_vel_m_s must be a finite number greater than 0, got {speed}')
    return speed


def validate_acceleration(max_linear_acc_m_s2: float) -> float:
    """Return the acceleration limit as a float, raising `InvalidSpeedError` unless it is > 0."""
    try:
        acceleration = float(max_linear_acc_m_s2)
    except (TypeError, ValueError):
        raise InvalidSpeedError(
            f'max_linear_acc_m_s2 must be a number, got {max_linear_acc_m_s2!r}') from None
    if not math.isfinite(acceleration) or acceleration <= 0.0:
        raise InvalidSpeedError(
            f'max_linear_acc_m_s2 must be a finite number greater than 0, got {acceleration}')
    return acceleration


def validate_timeout(timeout_s: float, name: str = 'timeout_s') -> float:
    """Return a timeout as a float, raising ValueError unless it is finite and > 0."""
    timeout = float(timeout_s)
    if not math.isfinite(timeout) or timeout <= 0.0:
        raise ValueError(f'{name} must be a finite number of seconds greater than 0, got {timeout}')
    return timeout


def _finite_tuple(values: Sequence[float], length: int, label: str) -> tuple:
    try:
        numbers = tuple(float(value) for value in values)
    except (TypeError, ValueError):
        raise InvalidPoseError(f'{label} must contain {length} numbers, got {values!r}') from None
    if len(numbers) != length:
        raise InvalidPoseError(f'{label} must contain {length} numbers, got {len(numbers)}')
    if not all(math.isfinite(value) for value in numbers):
        raise InvalidPoseError(f'{label} must be finite, got {list(numbers)}')
    return numbers


class RobotArm(abc.ABC):
    """Interface of a robot arm that moves its TCP to Cartesian poses.

    Implementations are thread-safe: `stop()` may be called from another
    thread while `move_to()` or a wait blocks. Fault state is kept here so
    every back-end reports it the same way. Once in a fault, the arm rejects
    motion commands until `clear_fault()` succeeds, and no back-end clears a
    fault on its own.

    Args:
        limits: workspace box and velocity and acceleration caps that every
            target is checked against before any motion; None allows the
            widest values (no workspace box).
    """

    def __init__(self, limits: Optional['MotionLimits'] = None) -> None:
        from hetnet_ros.robots.limits import MotionLimits

        self._fault_lock = threading.Lock()
        self._fault_reason: Optional[str] = None
        self._limits = limits if limits is not None else MotionLimits()

    @property
    def limits(self) -> 'MotionLimits':
        return self._limits

    def set_limits(self, limits: 'MotionLimits') -> None:
        """Replace the motion limits; the next `move_to()` is checked against them."""
        self._limits = limits

    @abc.abstractmethod
    def connect(self, timeout_s: float) -> None:
        """Connect to the arm and enable it; raises `RobotConnectionError` on failure.

        An arm that reports a fault or a pressed emergency stop still connects,
        in the fault state, so that `clear_fault()` can be requested later.
        """

    @abc.abstractmethod
    def disconnect(self) -> None:
        """Stop any motion and release the connection. Calling it twice is allowed."""

    @property
    @abc.abstractmethod
    def is_connected(self) -> bool:
        """True between a successful `connect()` and `disconnect()` or a lost connection."""

    @abc.abstractmethod
    def move_to(
        self,
        pose: Pose,
        max_linear_vel_m_s: float,
        timeout_s: float,
        wait: bool = True,
        max_linear_acc_m_s2: Optional[float] = None,
    ) -> None:
        """Move the TCP in a straight line to `pose`, at most at `max_linear_vel_m_s`.

        With `wait=True`, block until the target is reached (not yet settled);
        otherwise start the motion and return, and use `wait_for_motion()`.
        `max_linear_acc_m_s2` None uses the back-end's default acceleration.

        Raises:
            InvalidPoseError, InvalidSpeedError: on invalid arguments or ones
                outside `limits` (`WorkspaceError`, `SpeedLimitError`), before moving.
            RobotNotConnectedError: when not connected.
            RobotConnectionError: when the connection is lost during the motion.
            RobotFaultError: when the arm is or goes into a fault
                (`EmergencyStopError` for an emergency stop).
            MotionStoppedError: when `stop()` interrupts the motion.
            MotionTimeoutError: when the target is not reached within `timeout_s`;
                the arm is stopped first.
        """

    @abc.abstractmethod
    def wait_for_motion(self, timeout_s: float) -> None:
        """Block until the current motion reaches its target; same errors as `move_to`."""

    @abc.abstractmethod
    def is_settled(self) -> bool:
        """True when no motion is running and the settle time after the last one has passed."""

    @abc.abstractmethod
    def wait_settled(self, timeout_s: float) -> None:
        """Block until `is_settled()`; raises `MotionTimeoutError`, `RobotFaultError`."""

    @abc.abstractmethod
    def current_pose(self) -> Pose:
        """Return the measured TCP pose in the base frame."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop the current motion and return once the arm is at rest.

        Does nothing when the arm is still.
        """

    @property
    def fault_reason(self) -> Optional[str]:
        """Description of the current fault, or None when the arm has no fault."""
        with self._fault_lock:
            return self._fault_reason

    @property
    def has_fault(self) -> bool:
        return self.fault_reason is not None

    def clear_fault(self, timeout_s: float = 30.0) -> None:
        """Clear the fault state on explicit request.

        Back-ends that talk to hardware also reset the controller and enable the
        arm again, within `timeout_s`. Clearing never moves the arm.

        Raises:
            RobotFaultError: when the fault cannot be cleared (for example while
                the emergency stop is still pressed).
        """
        with self._fault_lock:
            self._fault_reason = None

    def _set_fault(self, reason: str) -> None:
        """Enter the fault state; the first reason is kept until `clear_fault()`."""
        with self._fault_lock:
            if self._fault_reason is None:
                self._fault_reason = reason

    def _raise_if_fault(self) -> None:
        reason = self.fault_reason
        if reason is not None:
            raise RobotFaultError(
                f'robot arm is in a fault state: {reason}; clear the fault before moving')

    def _check_move(
            self,
            pose: Pose,
            max_linear_vel_m_s: float,
            max_linear_acc_m_s2: Optional[float],
    ) -> tuple[Pose, float, float]:
        """Validate a move against the argument rules and `limits` and return the clean values.

        An acceleration of None means the back-end's `_default_linear_acc_m_s2`, which every
        back-end sets in its constructor.
        """
        if max_linear_acc_m_s2 is None:
            max_linear_acc_m_s2 = self._default_linear_acc_m_s2
        target = validate_pose(pose, label='target pose')
        speed = validate_speed(max_linear_vel_m_s)
        acceleration = validate_acceleration(max_linear_acc_m_s2)
        label = f'target pose at {list(round(value, 4) for value in target.position)} m'
        self._limits.check_target(target, label='target pose')
        self._limits.check_speed(speed, acceleration, label=label)
        return target, speed, acceleration

    def __enter__(self) -> 'RobotArm':
        return self

    def __exit__(self, *exc_info) -> None:
        self.disconnect()
