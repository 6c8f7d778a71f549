"""Simulated arm: timing against the velocity limit, reached poses and input checks."""

import math
import threading
import time

import pytest

from hetnet_ros.robots import (
    InvalidPoseError,
    InvalidSpeedError,
    MotionStoppedError,
    MotionTimeoutError,
    Pose,
    RobotFaultError,
    RobotNotConnectedError,
    SimulatedArm,
    create_arm,
)
from hetnet_ros.robots.sim import quaternion_angle, slerp

DOWN = (1.0, 0.0, 0.0, 0.0)
HOME = Pose((0.40, 0.0, 0.40), DOWN)


@pytest.fixture
def arm():
    arm = SimulatedArm(home_pose=HOME, settle_time_s=0.2, speed_factor=1.0)
    arm.connect(timeout_s=1.0)
    yield arm
    arm.disconnect()


def assert_pose_close(actual: Pose, expected: Pose, tolerance: float = 1e-9) -> None:
    assert math.dist(actual.position, expected.position) < tolerance, (
        f'position {actual.position} != {expected.position}')
    assert quaternion_angle(actual.orientation, expected.orientation) < 1e-6, (
        f'orientation {actual.orientation} != {expected.orientation}')


def test_move_respects_velocity_limit(arm):
    target = Pose((0.50, 0.0, 0.40), DOWN)
    speed = 0.5
    started = time.monotonic()
    arm.move_to(target, max_linear_vel_m_s=speed, timeout_s=5.0)
    elapsed = time.monotonic() - started

    minimum = 0.10 / speed
    assert elapsed >= minimum * 0.98, f'0.10 m at {speed} m/s took {elapsed:.3f} s < {minimum} s'
    assert elapsed < minimum + 1.0, f'move took {elapsed:.3f} s, far above {minimum} s'
    assert_pose_close(arm.current_pose(), target)


def test_move_passes_through_straight_line(arm):
    target = Pose((0.40, 0.20, 0.40), DOWN)
    speed = 0.4
    started = time.monotonic()
    arm.move_to(target, max_linear_vel_m_s=speed, timeout_s=5.0, wait=False)
    samples = []
    while not arm.is_settled():
        samples.append((time.monotonic(), arm.current_pose().position))
        time.sleep(0.02)

    assert len(samples) > 5, 'expected the move to take several steps'
    for sampled_at, (x, y, z) in samples:
        assert abs(x - 0.40) < 1e-9, f'left the line at {(x, y, z)}'
        assert abs(z - 0.40) < 1e-9, f'left the line at {(x, y, z)}'
        assert -1e-9 <= y <= 0.20 + 1e-9, f'y {y} outside the segment'
        # The first simulation step may count up to one step period (10 ms) before the command.
        limit = speed * (sampled_at - started + 0.015)
        assert y <= limit, f'{y:.4f} m travelled after {sampled_at - started:.3f} s at {speed} m/s'


def test_rotation_respects_angular_limit():
    arm = SimulatedArm(home_pose=HOME, settle_time_s=0.0, max_angular_vel_rad_s=2.0)
    arm.connect(1.0)
    try:
        # 90 degrees about the tool axis at the same position: only the angular limit applies.
        target = Pose(HOME.position, (math.sqrt(0.5), math.sqrt(0.5), 0.0, 0.0))
        started = time.monotonic()
        arm.move_to(target, max_linear_vel_m_s=1.0, timeout_s=5.0)
        elapsed = time.monotonic() - started
        assert elapsed >= (math.pi / 2) / 2.0 * 0.98, f'rotation took only {elapsed:.3f} s'
        assert_pose_close(arm.current_pose(), target)
    finally:
        arm.disconnect()


def test_settle_time_after_move():
    arm = SimulatedArm(home_pose=HOME, settle_time_s=1.0)
    arm.connect(1.0)
    try:
        arm.move_to(Pose((0.41, 0.0, 0.40), DOWN), max_linear_vel_m_s=1.0, timeout_s=2.0)
        started = time.monotonic()
        assert not arm.is_settled(), 'arm reported settled right after reaching the target'
        arm.wait_settled(timeout_s=5.0)
        waited = time.monotonic() - started
        assert waited >= 0.9, f'settled after {waited:.3f} s, settle time is 1.0 s'
        assert arm.is_settled()
    finally:
        arm.disconnect()


def test_speed_factor_shortens_wall_time():
    arm = SimulatedArm(home_pose=HOME, settle_time_s=1.0, speed_factor=10.0)
    arm.connect(1.0)
    try:
        started = time.monotonic()
        arm.move_to(Pose((0.60, 0.0, 0.40), DOWN), max_linear_vel_m_s=0.1, timeout_s=5.0)
        arm.wait_settled(timeout_s=5.0)
        elapsed = time.monotonic() - started
        # 2 s of motion plus 1 s of settling in simulated time is 0.3 s of wall time.
        assert 0.29 <= elapsed < 1.5, f'expected about 0.3 s of wall time, took {elapsed:.3f} s'
    finally:
        arm.disconnect()


def test_move_timeout_stops_arm(arm):
    with pytest.raises(MotionTimeoutError, match='did not reach'):
        arm.move_to(Pose((0.90, 0.0, 0.40), DOWN), max_linear_vel_m_s=0.1, timeout_s=0.2)
    stopped_at = arm.current_pose()
    time.sleep(0.1)
    assert arm.current_pose() == stopped_at, 'arm kept moving after the timeout'
    assert stopped_at.position[0] < 0.90


def test_stop_from_other_thread(arm):
    threading.Timer(0.1, arm.stop).start()
    with pytest.raises(MotionStoppedError):
        arm.move_to(Pose((0.90, 0.0, 0.40), DOWN), max_linear_vel_m_s=0.1, timeout_s=5.0)
    assert arm.current_pose().position[0] < 0.6, 'the arm did not stop'


def test_fault_rejects_motion_until_cleared(arm):
    threading.Timer(0.1, arm.inject_fault, args=('protective stop',)).start()
    with pytest.raises(RobotFaultError, match='protective stop'):
        arm.move_to(Pose((0.90, 0.0, 0.40), DOWN), max_linear_vel_m_s=0.1, timeout_s=5.0)
    assert arm.has_fault
    assert arm.fault_reason == 'protective stop'
    with pytest.raises(RobotFaultError, match='protective stop'):
        arm.move_to(HOME, max_linear_vel_m_s=0.1, timeout_s=5.0)

    arm.clear_fault()
    arm.move_to(HOME, max_linear_vel_m_s=1.0, timeout_s=5.0)
    assert_pose_close(arm.current_pose(), HOME)


@pytest.mark.parametrize('position, orientation, message', [
    ((0.4, 0.0, math.nan), DOWN, 'finite'),
    ((0.4, 0.0, math.inf), DOWN, 'finite'),
    ((0.4, 0.0), DOWN, '3 numbers'),
    ((0.4, 0.0, 0.4), (0.0, 0.0, 0.0, 2.0), 'not a unit quaternion'),
    ((0.4, 0.0, 0.4), (0.0, 0.0, 0.0, 0.0), 'not a unit quaternion'),
    ((0.4, 0.0, 0.4), (0.0, 0.0, math.nan, 1.0), 'finite'),
    ((0.4, 0.0, 0.4), (0.0, 0.0, 1.0), '4 numbers'),
])
def test_invalid_pose_rejected(arm, position, orientation, message):
    with pytest.raises(InvalidPoseError, match=message):
        arm.move_to(Pose(position, orientation), max_linear_vel_m_s=0.1, timeout_s=1.0)
    assert_pose_close(arm.current_pose(), HOME)


@pytest.mark.parametrize('speed', [0.0, -0.1, math.nan, math.inf, 'fast'])
def test_invalid_speed_rejected(arm, speed):
    with pytest.raises(InvalidSpeedError, match='max_linear_vel_m_s'):
        arm.move_to(Pose((0.5, 0.0, 0.4), DOWN), max_linear_vel_m_s=speed, timeout_s=1.0)


def test_invalid_timeout_rejected(arm):
    with pytest.raises(ValueError, match='timeout_s'):
        arm.move_to(Pose((0.5, 0.0, 0.4), DOWN), max_linear_vel_m_s=0.1, timeout_s=0.0)


def test_nearly_unit_quaternion_normalised(arm):
    arm.move_to(Pose(HOME.position, (1.0005, 0.0, 0.0, 0.0)), max_linear_vel_m_s=0.1, timeout_s=1.0)
    norm = math.sqrt(sum(value * value for value in arm.current_pose().orientation))
    assert abs(norm - 1.0) < 1e-12


def test_commands_need_connection():
    arm = SimulatedArm(home_pose=HOME)
    with pytest.raises(RobotNotConnectedError, match='connect'):
        arm.move_to(HOME, max_linear_vel_m_s=0.1, timeout_s=1.0)
    with pytest.raises(RobotNotConnectedError):
        arm.current_pose()
    arm.connect(1.0)
    arm.disconnect()
    arm.disconnect()
    assert not arm.is_connected


def test_slerp_endpoints_and_midpoint():
    q0 = (0.0, 0.0, 0.0, 1.0)
    q1 = (0.0, 0.0, math.sin(math.pi / 4), math.cos(math.pi / 4))  # 90 degrees about z
    assert quaternion_angle(slerp(q0, q1, 0.0), q0) < 1e-9
    assert quaternion_angle(slerp(q0, q1, 1.0), q1) < 1e-9
    middle = slerp(q0, q1, 0.5)
    assert abs(quaternion_angle(middle, q0) - math.pi / 4) < 1e-9


def test_create_arm_rejects_unknown_backend():
    assert isinstance(create_arm('sim'), SimulatedArm)
    with pytest.raises(ValueError, match="unknown robot backend 'flexy'"):
        create_arm('flexy')
