"""Motion limits of a robot cell: a workspace box for the TCP and caps on speed and acceleration.

Every back-end checks each target against these limits before it sends any
motion command, so an invalid target never moves the arm. The workspace is an
axis-aligned box in the robot base frame. Because a box is convex, a straight
line between two points inside it stays inside, so checking the target of a
linear move from a pose inside the box is enough to keep the whole path inside.
"""

import math
from dataclasses import dataclass
from typing import Optional, Sequence

from hetnet_ros.robots.base import InvalidPoseError, InvalidSpeedError, Pose

AXES = ('x', 'y', 'z')

# Defaults without a configured cell: the widest velocity and acceleration that
# the Flexiv MoveL primitive accepts (Flexiv Primitives reference, MoveL: vel up
# to 2.2 m/s, acc up to 3.0 m/s^2). A cell configuration should set lower values.
DEFAULT_LINEAR_VEL_LIMIT_M_S = 2.2
DEFAULT_LINEAR_ACC_LIMIT_M_S2 = 3.0


class WorkspaceError(InvalidPoseError):
    """A target position lies outside the configured workspace box."""


class SpeedLimitError(InvalidSpeedError):
    """A requested velocity or acceleration is above the configured limit."""


def format_position(position: Sequence[float]) -> str:
    return '[' + ', '.join(f'{value:.4f}' for value in position) + '] m'


@dataclass(frozen=True)
class MotionLimits:
    """Workspace box (metres, base frame) and TCP velocity and acceleration caps.

    Args:
        workspace_min_xyz_m, workspace_max_xyz_m: opposite corners of the box;
            both None disables the workspace check.
        linear_vel_limit_m_s: highest TCP linear velocity a move may request (m/s).
        linear_acc_limit_m_s2: highest TCP linear acceleration a move may request (m/s^2).

    Raises:
        ValueError: when a value is not finite, a limit is not above 0, only one
            corner is given, or a min corner coordinate is not below the max one.
    """

    workspace_min_xyz_m: Optional[tuple[float, float, float]] = None
    workspace_max_xyz_m: Optional[tuple[float, float, float]] = None
    linear_vel_limit_m_s: float = DEFAULT_LINEAR_VEL_LIMIT_M_S
    linear_acc_limit_m_s2: float = DEFAULT_LINEAR_ACC_LIMIT_M_S2

    def __post_init__(self) -> None:
        for name in ('linear_vel_limit_m_s', 'linear_acc_limit_m_s2'):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f'{name} must be a finite number greater than 0, got {value!r}')

        low, high = self.workspace_min_xyz_m, self.workspace_max_xyz_m
        if (low is None) != (high is None):
            raise ValueError('give both workspace_min_xyz_m and workspace_max_xyz_m, or neither')
        if low is None:
            return
        low = _xyz(low, 'workspace_min_xyz_m')
        high = _xyz(high, 'workspace_max_xyz_m')
        for axis, lower, upper in zip(AXES, low, high):
            if lower >= upper:
                raise ValueError(
                    f'workspace_min_xyz_m {axis} {lower} must be below workspace_max_xyz_m '
                    f'{axis} {upper}')
        # The dataclass is frozen, so the normalised tuples are stored this way.
        object.__setattr__(self, 'workspace_min_xyz_m', low)
        object.__setattr__(self, 'workspace_max_xyz_m', high)

    @property
    def has_workspace(self) -> bool:
        return self.workspace_min_xyz_m is not None

    def check_target(self, pose: Pose, label: str = 'target pose') -> None:
        """Raise `WorkspaceError` naming `label` and the axis when `pose` is outside the box."""
        if not self.has_workspace:
            return
        outside = []
        for axis, value, lower, upper in zip(
                AXES, pose.position, self.workspace_min_xyz_m, self.workspace_max_xyz_m):
            if value < lower:
                outside.append(f'{axis} {value:.4f} < min {lower:.4f}')
            elif value > upper:
                outside.append(f'{axis} {value:.4f} > max {upper:.4f}')
        if outside:
            raise WorkspaceError(
                f'{label} at {format_position(pose.position)} is outside the workspace box '
                f'{format_position(self.workspace_min_xyz_m)} to '
                f'{format_position(self.workspace_max_xyz_m)} ({", ".join(outside)}); move the '
                'pose into the box, or widen workspace_min_xyz_m / workspace_max_xyz_m if the '
                'cell allows it')

    def check_speed(
            self,
            max_linear_vel_m_s: float,
            max_linear_acc_m_s2: float,
            label: str = 'target pose') -> None:
        """Raise `SpeedLimitError` naming `label` when a velocity or acceleration is too high."""
        if max_linear_vel_m_s > self.linear_vel_limit_m_s:
            raise SpeedLimitError(
                f'move to {label} rejected: velocity {max_linear_vel_m_s:g} m/s is above the '
                f'limit of {self.linear_vel_limit_m_s:g} m/s (linear_vel_limit_m_s); lower '
                'max_linear_vel_m_s')
        if max_linear_acc_m_s2 > self.linear_acc_limit_m_s2:
            raise SpeedLimitError(
                f'move to {label} rejected: acceleration {max_linear_acc_m_s2:g} m/s^2 is above '
                f'the limit of {self.linear_acc_limit_m_s2:g} m/s^2 (linear_acc_limit_m_s2); '
                'lower max_linear_acc_m_s2')


def _xyz(values: Sequence[float], name: str) -> tuple[float, float, float]:
    try:
        numbers = tuple(float(value) for value in values)
    except (TypeError, ValueError):
        raise ValueError(f'{name} must contain 3 numbers [x, y, z], got {values!r}') from None
    if len(numbers) != 3 or not all(math.isfinite(value) for value in numbers):
        raise ValueError(f'{name} must contain 3 finite numbers [x, y, z], got {list(numbers)}')
    return numbers
