"""Robot arm back-ends behind the `RobotArm` interface."""

from hetnet_ros.robots.base import (
    InvalidPoseError,
    InvalidSpeedError,
    MotionStoppedError,
    MotionTimeoutError,
    Pose,
    RobotArm,
    RobotConnectionError,
    RobotError,
    RobotFaultError,
    RobotNotConnectedError,
)
from hetnet_ros.robots.sim import SimulatedArm

BACKENDS = ('sim',)


def create_arm(backend: str, **options) -> RobotArm:
    """Create an unconnected arm of the named back-end; `options` go to its constructor."""
    if backend == 'sim':
        return SimulatedArm(**options)
    raise ValueError(
        f'unknown robot backend {backend!r}; available backends: {", ".join(BACKENDS)}')


__all__ = [
    'BACKENDS',
    'InvalidPoseError',
    'InvalidSpeedError',
    'MotionStoppedError',
    'MotionTimeoutError',
    'Pose',
    'RobotArm',
    'RobotConnectionError',
    'RobotError',
    'RobotFaultError',
    'RobotNotConnectedError',
    'SimulatedArm',
    'create_arm',
]
