"""Motion guard: after a failed move, no motion until a fault is cleared on explicit request.

A caller that drives an arm through several moves (the inspection node) calls
`raise_if_blocked()` before the first move of each task. Once a move has
failed (fault, emergency stop, unreachable target, timeout, lost connection)
or the arm reports a fault, the guard stays blocked, so every later task is
rejected until `clear()` is called on request. Nothing in this package calls `clear()`
on its own.
"""

import logging
import threading
from typing import Optional, Sequence

from hetnet_ros.robots.base import Pose, RobotArm, RobotError
from hetnet_ros.robots.limits import MotionLimits

logger = logging.getLogger(__name__)


class MotionBlockedError(RobotError):
    """Motion is blocked after an earlier robot fault that was not cleared yet."""


class MotionGuard:
    """Thread-safe latch of the reason that blocks motion.

    Args:
        clear_hint: how a technician clears the block, appended to the error,
            e.g. 'call the /clear_fault service'.
    """

    def __init__(self, clear_hint: str = 'clear the fault') -> None:
        self._lock = threading.Lock()
        self._reason: Optional[str] = None
        self._clear_hint = clear_hint

    @property
    def reason(self) -> Optional[str]:
        """Why motion is blocked, or None when it is not."""
        with self._lock:
            return self._reason

    def block(self, reason: str) -> bool:
        """Block motion; return True when this call blocked it (the first reason is kept)."""
        with self._lock:
            if self._reason is not None:
                return False
            self._reason = reason
            return True

    def raise_if_blocked(self, arm: RobotArm) -> None:
        """Raise `MotionBlockedError` when blocked; an arm fault found here blocks too."""
        if self.reason is None and arm.has_fault:
            self.block(f'the robot arm reports a fault: {arm.fault_reason}')
        reason = self.reason
        if reason is not None:
            raise MotionBlockedError(
                f'motion is blocked after a robot fault ({reason}); check the cell, then '
                f'{self._clear_hint} before sending a new goal')

    def clear(self, arm: RobotArm, connect_timeout_s: float, clear_timeout_s: float) -> str:
        """Reconnect the arm if needed, clear its fault and unblock motion; never moves the arm.

        Returns:
            A message saying what was cleared.

        Raises:
            RobotError: when reconnecting or clearing fails; motion stays blocked.
        """
        blocked_by = self.reason
        if not arm.is_connected:
            arm.connect(connect_timeout_s)
        arm_fault = arm.fault_reason
        arm.clear_fault(clear_timeout_s)
        with self._lock:
            self._reason = None

        if blocked_by is None and arm_fault is None:
            return 'no fault to clear'
        logger.info('motion unblocked on request after: %s', blocked_by or arm_fault)
        return f'fault cleared ({blocked_by or arm_fault}); motion is allowed again'


def check_targets(
        limits: MotionLimits,
        targets: Sequence[tuple[str, Pose]],
        max_linear_vel_m_s: float,
        max_linear_acc_m_s2: float) -> None:
    """Check named targets and the move speed against `limits` before any motion.

    Raises:
        InvalidPoseError, InvalidSpeedError: for the first target out of limits, naming it.
    """
    for name, pose in targets:
        label = f'pose {name!r}'
        limits.check_target(pose, label=label)
        limits.check_speed(max_linear_vel_m_s, max_linear_acc_m_s2,
                           label=f'{label} at {list(pose.position)} m')
