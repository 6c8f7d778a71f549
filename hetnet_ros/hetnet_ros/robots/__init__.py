"""Robot arm back-ends behind the `RobotArm` interface."""

from hetnet_ros.robots.base import (
    EmergencyStopError,
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
    UnreachablePoseError,
)
from hetnet_ros.robots.flexiv import FlexivArm, FlexivSdkMissingError
from hetnet_ros.robots.limits import MotionLimits, SpeedLimitError, WorkspaceError
from hetnet_ros.robots.sim import SIM_FAULTS, SimulatedArm

BACKENDS = ('sim', 'flexiv')


def create_arm(backend: str, **options) -> RobotArm:
    """Create an unconnected arm of the named back-end; `options` go to its constructor."""
    if backend == 'sim':
        return SimulatedArm(**options)
    if backend == 'flexiv':
        return FlexivArm(**options)
    raise ValueError(
        f'unknown robot backend {backend!r}; available backends: {", ".join(BACKENDS)}')


__all__ = [
    'BACKENDS',
    'EmergencyStopError',
    'FlexivArm',
    'FlexivSdkMissingError',
    'InvalidPoseError',
    'InvalidSpeedError',
    'MotionLimits',
    'MotionStoppedError',
    'MotionTimeoutError',
    'Pose',
    'RobotArm',
    'RobotConnectionError',
    'RobotError',
    'RobotFaultError',
    'RobotNotConnectedError',
    'SIM_FAULTS',
    'SimulatedArm',
    'SpeedLimitError',
    'UnreachablePoseError',
    'WorkspaceError',
    'create_arm',
]
