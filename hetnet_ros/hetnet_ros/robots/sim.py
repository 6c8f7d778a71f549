"""Kinematic simulation of a robot arm's TCP for tests and demos without a robot.

The TCP moves along a straight line at constant speed while its orientation
follows a spherical linear interpolation (slerp), so that neither the linear
velocity limit nor the angular velocity limit is exceeded. After reaching the
target, the arm counts as settled once `settle_time_s` has passed, which
models the vibration decay of a real arm. A background thread advances
the simulation on `time.monotonic()` in steps of `step_s`. Simulated time runs
`speed_factor` times faster than wall time, and every timeout argument is in
wall-clock seconds.

NOTE: dynamics are not modelled (no acceleration limits, joint limits or
reachability checks), so move times are lower bounds of a real arm's.
"""

import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Optional

from hetnet_ros.robots.base import (
    MotionStoppedError,
    MotionTimeoutError,
    Pose,
    RobotArm,
    RobotFaultError,
    RobotNotConnectedError,
    validate_pose,
    validate_speed,
    validate_timeout,
)

logger = logging.getLogger(__name__)

# Above the part table, tool z axis pointing down (180 degrees about base x).
DEFAULT_HOME_POSE = Pose((0.40, 0.0, 0.45), (1.0, 0.0, 0.0, 0.0))


def quaternion_angle(q0: tuple, q1: tuple) -> float:
    """Return the rotation angle in radians between two unit quaternions (x, y, z, w)."""
    dot = abs(sum(a * b for a, b in zip(q0, q1)))
    return 2.0 * math.acos(min(1.0, dot))


def slerp(q0: tuple, q1: tuple, fraction: float) -> tuple:
    """Interpolate unit quaternions along the shorter arc; fraction 0 gives q0, 1 gives q1."""
    dot = sum(a * b for a, b in zip(q0, q1))
    if dot < 0.0:
        # q and -q are the same rotation; flipping one takes the shorter arc.
        q1 = tuple(-value for value in q1)
        dot = -dot

    if dot > 0.9995:
        # Nearly parallel: linear interpolation is accurate and avoids dividing by sin(~0).
        blended = [a + fraction * (b - a) for a, b in zip(q0, q1)]
    else:
        theta = math.acos(dot)
        weight0 = math.sin((1.0 - fraction) * theta) / math.sin(theta)
        weight1 = math.sin(fraction * theta) / math.sin(theta)
        blended = [weight0 * a + weight1 * b for a, b in zip(q0, q1)]

    norm = math.sqrt(sum(value * value for value in blended))
    return tuple(value / norm for value in blended)


def interpolate_pose(start: Pose, target: Pose, fraction: float) -> Pose:
    """Pose at `fraction` of the straight-line, slerp path from start to target."""
    position = tuple(a + fraction * (b - a) for a, b in zip(start.position, target.position))
    return Pose(position, slerp(start.orientation, target.orientation, fraction))


@dataclass
class _Motion:
    start: Pose
    target: Pose
    duration_s: float
    elapsed_s: float = 0.0


class SimulatedArm(RobotArm):
    """Simulated arm with the `RobotArm` interface.

    Args:
        home_pose: TCP pose at start-up, in the base frame.
        settle_time_s: simulated time after a motion ends before `is_settled()`.
        max_angular_vel_rad_s: orientation speed limit (simulated rad/s).
        speed_factor: simulated seconds per wall-clock second (>= 1 speeds up tests).
        step_s: wall-clock period of the simulation thread.
    """

    def __init__(
        self,
        home_pose: Pose = DEFAULT_HOME_POSE,
        settle_time_s: float = 0.2,
        max_angular_vel_rad_s: float = 1.0,
        speed_factor: float = 1.0,
        step_s: float = 0.01,
    ) -> None:
        super().__init__()
        if not math.isfinite(settle_time_s) or settle_time_s < 0.0:
            raise ValueError(f'settle_time_s must be finite and >= 0 seconds, got {settle_time_s}')
        if not math.isfinite(max_angular_vel_rad_s) or max_angular_vel_rad_s <= 0.0:
            raise ValueError(
                f'max_angular_vel_rad_s must be finite and > 0, got {max_angular_vel_rad_s}')
        self._speed_factor = validate_timeout(speed_factor, 'speed_factor')
        self._step_s = validate_timeout(step_s, 'step_s')
        self._settle_time_s = float(settle_time_s)
        self._max_angular_vel_rad_s = float(max_angular_vel_rad_s)

        # Everything below is guarded by _condition, which is notified after every step.
        self._condition = threading.Condition()
        self._pose = validate_pose(home_pose, label='home pose')
        self._motion: Optional[_Motion] = None
        self._last_outcome: Optional[str] = None  # 'reached', 'stopped' or 'fault'
        self._settle_remaining_s = 0.0
        self._connected = False
        self._thread: Optional[threading.Thread] = None
        self._shutdown = threading.Event()

    @property
    def speed_factor(self) -> float:
        return self._speed_factor

    @property
    def settle_time_s(self) -> float:
        return self._settle_time_s

    def connect(self, timeout_s: float = 1.0) -> None:
        validate_timeout(timeout_s)
        with self._condition:
            if self._connected:
                return
            self._shutdown.clear()
            self._thread = threading.Thread(
                target=self._run, name='simulated-arm', daemon=True)
            self._connected = True
        self._thread.start()
        logger.info('simulated arm connected at %s (speed factor %.3g)',
                    self._pose.position, self._speed_factor)

    def disconnect(self) -> None:
        with self._condition:
            if not self._connected:
                return
            self._end_motion('stopped')
            self._connected = False
            self._condition.notify_all()
        self._shutdown.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        logger.info('simulated arm disconnected')

    @property
    def is_connected(self) -> bool:
        with self._condition:
            return self._connected

    def move_to(
        self,
        pose: Pose,
        max_linear_vel_m_s: float,
        timeout_s: float,
        wait: bool = True,
    ) -> None:
        target = validate_pose(pose, label='target pose')
        speed = validate_speed(max_linear_vel_m_s)
        timeout = validate_timeout(timeout_s)

        with self._condition:
            self._require_connected()
            self._raise_if_fault()
            start = self._pose
            distance_m = math.dist(start.position, target.position)
            angle_rad = quaternion_angle(start.orientation, target.orientation)
            duration_s = max(distance_m / speed, angle_rad / self._max_angular_vel_rad_s)

            # A new command replaces a running one and starts from the current pose.
            if duration_s <= 0.0:
                self._motion = None
                self._last_outcome = 'reached'
            else:
                self._motion = _Motion(start, target, duration_s)
                self._last_outcome = None
            self._condition.notify_all()
        logger.debug('moving %.3f m and %.3f rad in %.3f s of simulated time',
                     distance_m, angle_rad, duration_s)

        if wait:
            self.wait_for_motion(timeout)

    def wait_for_motion(self, timeout_s: float) -> None:
        timeout = validate_timeout(timeout_s)
        with self._condition:
            finished = self._condition.wait_for(
                lambda: self._motion is None or not self._connected, timeout)
            if not finished:
                remaining_m = math.dist(self._pose.position, self._motion.target.position)
                self._end_motion('stopped')
                raise MotionTimeoutError(
                    f'motion did not reach its target within {timeout:.3f} s '
                    f'({remaining_m:.3f} m left); the arm was stopped. Increase the timeout '
                    'or lower the distance per move')
            self._require_connected()
            self._raise_outcome()

    def is_settled(self) -> bool:
        with self._condition:
            return self._motion is None and self._settle_remaining_s <= 0.0

    def wait_settled(self, timeout_s: float) -> None:
        timeout = validate_timeout(timeout_s)
        with self._condition:
            settled = self._condition.wait_for(
                lambda: (self._motion is None and self._settle_remaining_s <= 0.0)
                or not self._connected or self.has_fault,
                timeout)
            self._require_connected()
            self._raise_if_fault()
            if not settled:
                raise MotionTimeoutError(
                    f'arm did not settle within {timeout:.3f} s '
                    f'(settle time {self._settle_time_s:.3f} s simulated, '
                    f'speed factor {self._speed_factor:.3g})')

    def current_pose(self) -> Pose:
        with self._condition:
            self._require_connected()
            return self._pose

    def stop(self) -> None:
        with self._condition:
            if self._motion is not None:
                self._end_motion('stopped')
                logger.info('simulated arm stopped at %s', self._pose.position)
            self._condition.notify_all()

    def inject_fault(self, reason: str) -> None:
        """Put the arm into a fault state, stopping any motion (as a protective stop would)."""
        self._set_fault(reason)
        with self._condition:
            if self._motion is not None:
                self._end_motion('fault')
            self._condition.notify_all()
        logger.warning('simulated arm fault: %s', reason)

    def _run(self) -> None:
        last = time.monotonic()
        while not self._shutdown.wait(self._step_s):
            now = time.monotonic()
            simulated_dt_s = (now - last) * self._speed_factor
            last = now
            with self._condition:
                self._advance(simulated_dt_s)
                self._condition.notify_all()

    def _advance(self, dt_s: float) -> None:
        motion = self._motion
        if motion is None:
            self._settle_remaining_s = max(0.0, self._settle_remaining_s - dt_s)
            return
        if self.has_fault:
            self._end_motion('fault')
            return

        motion.elapsed_s += dt_s
        if motion.elapsed_s < motion.duration_s:
            self._pose = interpolate_pose(
                motion.start, motion.target, motion.elapsed_s / motion.duration_s)
            return

        # Reached: the time left over in this step already counts towards settling.
        self._pose = motion.target
        self._motion = None
        self._last_outcome = 'reached'
        overshoot_s = motion.elapsed_s - motion.duration_s
        self._settle_remaining_s = max(0.0, self._settle_time_s - overshoot_s)

    def _end_motion(self, outcome: str) -> None:
        """Hold the current pose and record why the motion ended; the caller must own _condition."""
        if self._motion is None:
            return
        self._motion = None
        self._last_outcome = outcome
        self._settle_remaining_s = self._settle_time_s

    def _raise_outcome(self) -> None:
        if self._last_outcome == 'stopped':
            raise MotionStoppedError('motion was stopped before reaching its target')
        if self._last_outcome == 'fault':
            raise RobotFaultError(
                f'motion ended by a fault: {self.fault_reason or "fault cleared since"}')
        self._raise_if_fault()

    def _require_connected(self) -> None:
        if not self._connected:
            raise RobotNotConnectedError('simulated arm is not connected; call connect() first')
