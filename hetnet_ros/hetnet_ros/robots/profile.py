"""Time laws of a rest-to-rest move along a path: a trapezoidal profile and a braking ramp.

Both work on the path fraction s in [0, 1], so one law drives the position and
the orientation together. A move of length L metres with TCP limits v (m/s)
and a (m/s^2) has path limits v / L and a / L. When the move also rotates, the
smaller of the linear and the angular path limits applies, so that no linear
or angular velocity or acceleration limit is exceeded.
"""

import math
from dataclasses import dataclass, field
from typing import Optional


@dataclass(frozen=True)
class TrapezoidalProfile:
    """s(t) from 0 to 1: accelerate, cruise at the velocity limit, decelerate.

    When the path is too short to reach the velocity limit, the cruise phase
    vanishes and the profile is triangular with a lower peak velocity.

    Args:
        max_velocity: path velocity limit (1/s).
        max_acceleration: path acceleration limit (1/s^2).
    """

    max_velocity: float
    max_acceleration: float
    peak_velocity: float = field(init=False)
    accel_time_s: float = field(init=False)
    duration_s: float = field(init=False)

    def __post_init__(self) -> None:
        if not (self.max_velocity > 0.0 and self.max_acceleration > 0.0):
            raise ValueError(
                f'path limits must be > 0, got velocity {self.max_velocity} and '
                f'acceleration {self.max_acceleration}')
        peak = self.max_velocity
        if peak * peak / self.max_acceleration > 1.0:
            # Accelerating to the limit and back would take more than the whole path.
            peak = math.sqrt(self.max_acceleration)
        accel_time_s = peak / self.max_acceleration
        cruise_time_s = (1.0 - peak * accel_time_s) / peak
        object.__setattr__(self, 'peak_velocity', peak)
        object.__setattr__(self, 'accel_time_s', accel_time_s)
        object.__setattr__(self, 'duration_s', 2.0 * accel_time_s + max(0.0, cruise_time_s))

    def position(self, t: float) -> float:
        a, t_acc, total = self.max_acceleration, self.accel_time_s, self.duration_s
        if t <= 0.0:
            return 0.0
        if t >= total:
            return 1.0
        if t < t_acc:
            return 0.5 * a * t * t
        if t <= total - t_acc:
            return 0.5 * a * t_acc * t_acc + self.peak_velocity * (t - t_acc)
        remaining = total - t
        return 1.0 - 0.5 * a * remaining * remaining

    def velocity(self, t: float) -> float:
        a, t_acc, total = self.max_acceleration, self.accel_time_s, self.duration_s
        if t <= 0.0 or t >= total:
            return 0.0
        if t < t_acc:
            return a * t
        if t <= total - t_acc:
            return self.peak_velocity
        return a * (total - t)


@dataclass(frozen=True)
class BrakingProfile:
    """s(t) that decelerates from `start` at `start_velocity` to rest at `deceleration`."""

    start: float
    start_velocity: float
    deceleration: float

    @property
    def duration_s(self) -> float:
        return self.start_velocity / self.deceleration

    def position(self, t: float) -> float:
        t = min(max(t, 0.0), self.duration_s)
        return min(1.0, self.start + self.start_velocity * t - 0.5 * self.deceleration * t * t)

    def velocity(self, t: float) -> float:
        return max(0.0, self.start_velocity - self.deceleration * max(t, 0.0))


def path_profile(
        distance_m: float,
        angle_rad: float,
        max_linear_vel_m_s: float,
        max_linear_acc_m_s2: float,
        max_angular_vel_rad_s: float,
        max_angular_acc_rad_s2: float) -> Optional[TrapezoidalProfile]:
    """Return the profile of a move, or None when it neither translates nor rotates."""
    velocity_limits, acceleration_limits = [], []
    if distance_m > 0.0:
        velocity_limits.append(max_linear_vel_m_s / distance_m)
        acceleration_limits.append(max_linear_acc_m_s2 / distance_m)
    if angle_rad > 0.0:
        velocity_limits.append(max_angular_vel_rad_s / angle_rad)
        acceleration_limits.append(max_angular_acc_rad_s2 / angle_rad)
    if not velocity_limits:
        return None
    return TrapezoidalProfile(min(velocity_limits), min(acceleration_limits))
