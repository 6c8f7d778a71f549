"""Quaternion helpers for TCP orientations: angles, interpolation and Euler angles.

Quaternions are unit quaternions ordered (x, y, z, w), as in geometry_msgs.
"""

import math

from hetnet_ros.robots.base import Pose


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


def quaternion_to_rpy(quaternion: tuple) -> tuple[float, float, float]:
    """Convert a unit quaternion (x, y, z, w) to fixed-axis roll, pitch, yaw in radians.

    The angles satisfy R = Rz(yaw) Ry(pitch) Rx(roll), the convention of tf2's
    getRPY and of Flexiv's "Euler ZYX" Coord orientation. Pitch lies in
    [-pi/2, pi/2]; at exactly +/-pi/2 (gimbal lock) roll and yaw are not unique.
    """
    x, y, z, w = quaternion
    roll = math.atan2(2.0 * (w * x + y * z), 1.0 - 2.0 * (x * x + y * y))
    # Rounding can push the sine just past +/-1 near gimbal lock.
    pitch = math.asin(max(-1.0, min(1.0, 2.0 * (w * y - z * x))))
    yaw = math.atan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))
    return roll, pitch, yaw
