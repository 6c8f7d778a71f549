"""Kinematic simulation of a robot arm's TCP, with fault injection, for tests and demos.

The TCP moves along a straight line while its orientation follows a spherical
linear interpolation (slerp). One trapezoidal time law drives both, so that
neither the linear nor the angular velocity and acceleration limits are
exceeded (see `hetnet_ros.robots.profile`). `stop()` brakes along the path at
the move's acceleration limit. A fault or an emergency stop halts the TCP at
once, as a protective stop of a real arm would. After reaching the target, the
arm counts as settled once `settle_time_s` has passed, which models the
vibration decay of a real arm.

A background thread advances the simulation on `time.monotonic()` in steps of
`step_s`. Simulated time runs `speed_factor` times faster than wall time, and
every timeout argument is in wall-clock seconds.

Faults for tests (`schedule_fault`, or at once with `inject_fault`,
`press_estop` and `lose_connection`):
    fault_mid_move   the arm faults and halts halfway along the next move
    estop            the emergency stop is pressed halfway along the next move
    unreachable      the next move is rejected as unreachable and the arm faults
    timeout          the arm stalls halfway and never reaches the target
    connection_loss  the connection drops halfway; the arm halts

NOTE: joint limits, singularities and real reachability are not modelled, so
a pose that this arm reaches may still be out of reach for a real one.
"""

import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Optional, Union

from hetnet_ros.robots.base import (
    EmergencyStopError,
    MotionStoppedError,
    MotionTimeoutError,
    Pose,
    RobotArm,
    RobotConnectionError,
    RobotFaultError,
    RobotNotConnectedError,
    UnreachablePoseError,
    validate_pose,
    validate_timeout,
)
from hetnet_ros.robots.geometry import interpolate_pose, quaternion_angle
from hetnet_ros.robots.limits import MotionLimits, format_position
from hetnet_ros.robots.profile import BrakingProfile, TrapezoidalProfile, path_profile

logger = logging.getLogger(__name__)

# Above the part table, tool z axis pointing down (180 degrees about base x).
DEFAULT_HOME_POSE = Pose((0.40, 0.0, 0.45), (1.0, 0.0, 0.0, 0.0))

SIM_FAULTS = ('none', 'fault_mid_move', 'estop', 'unreachable', 'timeout', 'connection_loss')

# Path fraction of a move at which a scheduled mid-move fault happens.
FAULT_AT_FRACTION = 0.5

# Extra wall time that stop() waits for the braking ramp to end, on top of its length.
STOP_MARGIN_S = 1.0


@dataclass
class _Motion:
    start: Pose
    target: Pose
    profile: Union[TrapezoidalProfile, BrakingProfile]
    path_acceleration: float
    scheduled_fault: Optional[str] = None
    elapsed_s: float = 0.0
    fraction: float = 0.0
    braking: bool = False
    stalled: bool = False


class SimulatedArm(RobotArm):
    """Simulated arm with the `RobotArm` interface.

    Args:
        home_pose: TCP pose at start-up, in the base frame.
        settle_time_s: simulated time after a motion ends before `is_settled()`.
        max_angular_vel_rad_s: orientation speed limit (simulated rad/s).
        max_angular_acc_rad_s2: orientation acceleration limit (simulated rad/s^2).
        default_linear_acc_m_s2: TCP acceleration of a move that gives none (m/s^2).
        limits: workspace box and caps checked before every move.
        speed_factor: simulated seconds per wall-clock second (>= 1 speeds up tests).
        step_s: wall-clock period of the simulation thread.
    """

    def __init__(
        self,
        home_pose: Pose = DEFAULT_HOME_POSE,
        settle_time_s: float = 0.2,
        max_angular_vel_rad_s: float = 1.0,
        max_angular_acc_rad_s2: float = 4.0,
        default_linear_acc_m_s2: float = 1.0,
        limits: Optional[MotionLimits] = None,
        speed_factor: float = 1.0,
        step_s: float = 0.01,
    ) -> None:
        super().__init__(limits)
        if not math.isfinite(settle_time_s) or settle_time_s < 0.0:
            raise ValueError(f'settle_time_s must be finite and >= 0 seconds, got {settle_time_s}')
        for name, value in (('max_angular_vel_rad_s', max_angular_vel_rad_s),
                            ('max_angular_acc_rad_s2', max_angular_acc_rad_s2),
                            ('default_linear_acc_m_s2', default_linear_acc_m_s2)):
            if not math.isfinite(value) or value <= 0.0:
                raise ValueError(f'{name} must be finite and > 0, got {value}')
        self._speed_factor = validate_timeout(speed_factor, 'speed_factor')
        self._step_s = validate_timeout(step_s, 'step_s')
        self._settle_time_s = float(settle_time_s)
        self._max_angular_vel_rad_s = float(max_angular_vel_rad_s)
        self._max_angular_acc_rad_s2 = float(max_angular_acc_rad_s2)
        self._default_linear_acc_m_s2 = float(default_linear_acc_m_s2)

        # Everything below is guarded by _condition, which is notified after every step.
        # It wraps an RLock, so stop() may be called while the lock is held.
        self._condition = threading.Condition(threading.RLock())
        self._pose = validate_pose(home_pose, label='home pose')
        self._motion: Optional[_Motion] = None
        # 'reached', 'stopped', 'fault', 'estop' or 'connection_lost'
        self._last_outcome: Optional[str] = None
        self._settle_remaining_s = 0.0
        self._connected = False
        self._connection_error: Optional[str] = None
        self._estop_pressed = False
        self._scheduled_fault: Optional[str] = None
        self._thread: Optional[threading.Thread] = None
        self._shutdown = threading.Event()

    @property
    def speed_factor(self) -> float:
        return self._speed_factor

    @property
    def settle_time_s(self) -> float:
        return self._settle_time_s

    @property
    def simulated_pose(self) -> Pose:
        """TCP pose of the simulated hardware, readable without a connection (for tests)."""
        with self._condition:
            return self._pose

    @property
    def estop_pressed(self) -> bool:
        with self._condition:
            return self._estop_pressed

    def connect(self, timeout_s: float = 1.0) -> None:
        validate_timeout(timeout_s)
        with self._condition:
            if self._connected:
                return
            previous = self._thread
        # A thread left from a lost connection ends within one step.
        if previous is not None and previous is not threading.current_thread():
            previous.join(timeout=timeout_s)

        with self._condition:
            self._shutdown.clear()
            self._thread = threading.Thread(
                target=self._run, name='simulated-arm', daemon=True)
            self._connected = True
            self._connection_error = None
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
        max_linear_acc_m_s2: Optional[float] = None,
    ) -> None:
        target, speed, acceleration = self._check_move(pose, max_linear_vel_m_s,
                                                       max_linear_acc_m_s2)
        timeout = validate_timeout(timeout_s)

        with self._condition:
            self._require_connected()
            self._raise_if_fault()
            # A new command while moving brakes first, so that the acceleration
            # limit holds, and starts from where the arm came to rest.
            if self._motion is not None:
                self.stop()
                self._require_connected()
                self._raise_if_fault()

            start = self._pose
            distance_m = math.dist(start.position, target.position)
            angle_rad = quaternion_angle(start.orientation, target.orientation)
            profile = path_profile(distance_m, angle_rad, speed, acceleration,
                                   self._max_angular_vel_rad_s, self._max_angular_acc_rad_s2)
            if profile is None:
                self._motion = None
                self._last_outcome = 'reached'
                self._condition.notify_all()
                return

            scheduled, self._scheduled_fault = self._scheduled_fault, None
            if scheduled == 'unreachable':
                reason = (f'target pose at {format_position(target.position)} is unreachable '
                          '(simulated inverse kinematics failure)')
                self._set_fault(reason)
                logger.warning('simulated arm fault: %s', reason)
                raise UnreachablePoseError(
                    f'{reason}; the arm did not move. Choose a reachable pose and clear the fault')

            self._motion = _Motion(start, target, profile, profile.max_acceleration, scheduled)
            self._last_outcome = None
            self._condition.notify_all()
        logger.debug('moving %.3f m and %.3f rad in %.3f s of simulated time',
                     distance_m, angle_rad, profile.duration_s)

        if wait:
            self.wait_for_motion(timeout)

    def wait_for_motion(self, timeout_s: float) -> None:
        timeout = validate_timeout(timeout_s)
        with self._condition:
            finished = self._condition.wait_for(
                lambda: self._motion is None or not self._connected, timeout)
            if not finished:
                remaining_m = math.dist(self._pose.position, self._motion.target.position)
                self.stop()
                raise MotionTimeoutError(
                    f'motion did not reach its target within {timeout:.3f} s '
                    f'({remaining_m:.3f} m left); the arm was stopped. Check for an obstacle, '
                    'increase the timeout or lower the distance per move')
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
            motion = self._motion
            if motion is None:
                return
            if not motion.braking:
                velocity = 0.0 if motion.stalled else motion.profile.velocity(motion.elapsed_s)
                if velocity <= 0.0:
                    self._end_motion('stopped')
                    self._condition.notify_all()
                    logger.info('simulated arm stopped at %s', self._pose.position)
                    return
                motion.profile = BrakingProfile(motion.fraction, velocity,
                                                motion.path_acceleration)
                motion.elapsed_s = 0.0
                motion.braking = True
                motion.scheduled_fault = None

            wait_s = motion.profile.duration_s / self._speed_factor + STOP_MARGIN_S
            stopped = self._condition.wait_for(
                lambda: self._motion is not motion or not self._connected, wait_s)
            if not stopped:
                # Only reachable when the simulation thread stalls; halt at once instead.
                self._end_motion('stopped')
                self._condition.notify_all()
            logger.info('simulated arm stopped at %s', self._pose.position)

    def clear_fault(self, timeout_s: float = 30.0) -> None:
        with self._condition:
            if self._estop_pressed:
                raise EmergencyStopError(
                    'cannot clear the fault: the emergency stop is still pressed; release it, '
                    'then clear the fault')
            super().clear_fault(timeout_s)
        logger.info('simulated arm fault cleared')

    # Fault injection for tests.

    def schedule_fault(self, kind: str) -> None:
        """Inject fault `kind` (one of SIM_FAULTS) into the next move; 'none' cancels it."""
        if kind not in SIM_FAULTS:
            raise ValueError(
                f'unknown simulated fault {kind!r}; use one of {", ".join(SIM_FAULTS)}')
        with self._condition:
            self._scheduled_fault = None if kind == 'none' else kind
        logger.info('simulated fault %r scheduled for the next move', kind)

    def inject_fault(self, reason: str) -> None:
        """Put the arm into a fault state, halting any motion at once (as a protective stop)."""
        self._set_fault(reason)
        with self._condition:
            self._end_motion('fault')
            self._condition.notify_all()
        logger.warning('simulated arm fault: %s', reason)

    def press_estop(self) -> None:
        """Press the simulated emergency stop: the arm halts at once and enters a fault."""
        with self._condition:
            self._trigger_fault('estop')
            self._condition.notify_all()

    def release_estop(self) -> None:
        """Release the simulated emergency stop; the fault stays until `clear_fault()`."""
        with self._condition:
            self._estop_pressed = False
        logger.info('simulated emergency stop released')

    def lose_connection(self) -> None:
        """Drop the simulated connection: the arm halts, and `connect()` must be called again."""
        with self._condition:
            self._trigger_fault('connection_loss')
            self._condition.notify_all()

    # Simulation thread.

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
        if motion.stalled:
            return

        motion.elapsed_s += dt_s
        fraction = motion.profile.position(motion.elapsed_s)
        if motion.scheduled_fault is not None and fraction >= FAULT_AT_FRACTION:
            motion.fraction = FAULT_AT_FRACTION
            self._pose = interpolate_pose(motion.start, motion.target, FAULT_AT_FRACTION)
            self._trigger_fault(motion.scheduled_fault)
            return

        motion.fraction = fraction
        if motion.elapsed_s < motion.profile.duration_s:
            self._pose = interpolate_pose(motion.start, motion.target, fraction)
            return

        if motion.braking:
            self._pose = interpolate_pose(motion.start, motion.target, fraction)
            self._end_motion('stopped')
            return

        # Reached: the time left over in this step already counts towards settling.
        self._pose = motion.target
        self._motion = None
        self._last_outcome = 'reached'
        overshoot_s = motion.elapsed_s - motion.profile.duration_s
        self._settle_remaining_s = max(0.0, self._settle_time_s - overshoot_s)

    def _trigger_fault(self, kind: str) -> None:
        """Apply fault `kind` now; the caller must own _condition."""
        if kind == 'fault_mid_move':
            reason = 'simulated joint torque limit exceeded during the move'
            self._set_fault(reason)
            self._end_motion('fault')
            logger.warning('simulated arm fault: %s', reason)
        elif kind == 'estop':
            self._estop_pressed = True
            self._set_fault('emergency stop pressed')
            self._end_motion('estop')
            logger.warning('simulated emergency stop pressed')
        elif kind == 'timeout':
            if self._motion is not None:
                self._motion.stalled = True
            logger.warning('simulated arm stalled at %s', self._pose.position)
        elif kind == 'connection_loss':
            self._end_motion('connection_lost')
            self._connected = False
            self._connection_error = 'connection to the simulated arm was lost'
            self._shutdown.set()
            logger.warning('simulated connection loss at %s', self._pose.position)
        else:
            raise ValueError(f'cannot trigger simulated fault {kind!r}')

    def _end_motion(self, outcome: str) -> None:
        """Hold the current pose and record why the motion ended; the caller must own _condition."""
        if self._motion is None:
            return
        self._motion = None
        self._last_outcome = outcome
        self._settle_remaining_s = self._settle_time_s

    def _raise_outcome(self) -> None:
        outcome = self._last_outcome
        if outcome == 'connection_lost':
            raise RobotConnectionError(
                f'{self._connection_error} during the move; the arm halted. Check the '
                'connection, then clear the fault to reconnect')
        self._require_connected()
        if outcome == 'stopped':
            raise MotionStoppedError('motion was stopped before reaching its target')
        if outcome == 'estop':
            raise EmergencyStopError(
                'emergency stop pressed during the move; the arm halted. Release the emergency '
                'stop and clear the fault before moving again')
        if outcome == 'fault':
            raise RobotFaultError(
                f'motion ended by a fault: {self.fault_reason or "fault cleared since"}')
        self._raise_if_fault()

    def _require_connected(self) -> None:
        if not self._connected:
            if self._connection_error is not None:
                raise RobotConnectionError(
                    f'{self._connection_error}; clear the fault to reconnect')
            raise RobotNotConnectedError('simulated arm is not connected; call connect() first')
