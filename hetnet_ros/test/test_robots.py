"""Robot back-ends without ROS: the simulated arm, motion limits and the Flexiv back-end."""

import math
import re
import sys
import threading
import time
import types

import pytest

from hetnet_ros.poses import rpy_to_quaternion
from hetnet_ros.robots import (
    EmergencyStopError,
    FlexivArm,
    FlexivSdkMissingError,
    InvalidPoseError,
    InvalidSpeedError,
    MotionLimits,
    MotionStoppedError,
    MotionTimeoutError,
    Pose,
    RobotConnectionError,
    RobotFaultError,
    RobotNotConnectedError,
    SimulatedArm,
    SpeedLimitError,
    UnreachablePoseError,
    WorkspaceError,
    create_arm,
)
from hetnet_ros.robots.flexiv import import_sdk
from hetnet_ros.robots.geometry import quaternion_angle, quaternion_to_rpy, slerp
from hetnet_ros.robots.guard import MotionBlockedError, MotionGuard, check_targets
from hetnet_ros.robots.profile import BrakingProfile, TrapezoidalProfile, path_profile

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


# Trapezoidal profile and acceleration limits.


@pytest.mark.parametrize('max_velocity, max_acceleration, triangular', [
    (0.5, 2.0, False),   # reaches the velocity limit and cruises
    (5.0, 2.0, True),    # too short to reach it
])
def test_trapezoidal_profile_limits(max_velocity, max_acceleration, triangular):
    profile = TrapezoidalProfile(max_velocity, max_acceleration)
    assert (profile.peak_velocity < max_velocity) == triangular
    dt = profile.duration_s / 2000
    positions = [profile.position(i * dt) for i in range(2001)]
    assert positions[0] == 0.0
    assert positions[-1] == pytest.approx(1.0)
    velocities = [(b - a) / dt for a, b in zip(positions, positions[1:])]
    accelerations = [(b - a) / dt for a, b in zip(velocities, velocities[1:])]
    assert max(velocities) <= max_velocity * (1 + 1e-6), 'velocity limit exceeded'
    assert min(velocities) >= -1e-9, 'the path went backwards'
    assert max(abs(a) for a in accelerations) <= max_acceleration * 1.01, 'acceleration exceeded'
    assert profile.velocity(0.0) == 0.0
    assert profile.velocity(profile.duration_s) == 0.0


def test_trapezoidal_profile_duration():
    # 1 path unit at 0.5/s with 2/s^2: 0.25 s up and 0.25 s down cover 0.125, so the
    # cruise takes (1 - 0.125) / 0.5 = 1.75 s.
    profile = TrapezoidalProfile(0.5, 2.0)
    assert profile.duration_s == pytest.approx(0.25 + 0.25 + 1.75)


def test_braking_profile_stops_within_limits():
    braking = BrakingProfile(start=0.2, start_velocity=0.5, deceleration=2.0)
    assert braking.duration_s == pytest.approx(0.25)
    assert braking.position(braking.duration_s) == pytest.approx(0.2 + 0.5 * 0.25 / 2)
    assert braking.position(10.0) == braking.position(braking.duration_s)
    assert braking.velocity(braking.duration_s) == 0.0


def test_path_profile_uses_slower_limit():
    # 0.1 m at 1 m/s is fast, but 1 rad at 0.5 rad/s limits the path velocity to 0.5/s.
    profile = path_profile(0.1, 1.0, 1.0, 10.0, 0.5, 10.0)
    assert profile.max_velocity == pytest.approx(0.5)
    assert path_profile(0.0, 0.0, 1.0, 1.0, 1.0, 1.0) is None


def test_move_respects_acceleration_limit():
    arm = SimulatedArm(home_pose=HOME, settle_time_s=0.0)
    arm.connect(1.0)
    try:
        acceleration = 0.5
        arm.move_to(Pose((0.40, 0.20, 0.40), DOWN), max_linear_vel_m_s=1.0, timeout_s=5.0,
                    wait=False, max_linear_acc_m_s2=acceleration)
        started = time.monotonic()
        samples = []
        while time.monotonic() - started < 0.4:
            samples.append((time.monotonic() - started, arm.current_pose().position[1]))
            time.sleep(0.02)
        arm.wait_for_motion(5.0)
    finally:
        arm.disconnect()
    for elapsed_s, y in samples:
        # The first simulation step may count up to one step period before the command.
        limit = 0.5 * acceleration * (elapsed_s + 0.015) ** 2
        assert y <= limit + 1e-9, f'{y:.4f} m after {elapsed_s:.3f} s exceeds a = {acceleration}'


def test_stop_brakes_and_holds(arm):
    arm.move_to(Pose((0.90, 0.0, 0.40), DOWN), max_linear_vel_m_s=0.2, timeout_s=5.0, wait=False,
                max_linear_acc_m_s2=1.0)
    time.sleep(0.4)
    arm.stop()
    stopped_at = arm.current_pose()
    time.sleep(0.1)
    assert arm.current_pose() == stopped_at, 'the arm moved after stop() returned'
    assert stopped_at.position[0] < 0.6
    with pytest.raises(MotionStoppedError):
        arm.wait_for_motion(1.0)


# Motion limits.


LIMITS = MotionLimits(workspace_min_xyz_m=(0.2, -0.4, 0.1), workspace_max_xyz_m=(0.8, 0.4, 0.7),
                      linear_vel_limit_m_s=0.25, linear_acc_limit_m_s2=1.0)


def test_workspace_rejects_pose_before_motion():
    arm = SimulatedArm(home_pose=HOME, limits=LIMITS)
    arm.connect(1.0)
    try:
        with pytest.raises(WorkspaceError) as error:
            arm.move_to(Pose((0.5, 0.0, 0.9), DOWN), max_linear_vel_m_s=0.1, timeout_s=1.0)
        assert '[0.5000, 0.0000, 0.9000] m' in str(error.value), 'the message names the pose'
        assert 'z 0.9000 > max 0.7000' in str(error.value), 'the message names the axis'
        assert_pose_close(arm.current_pose(), HOME)
        assert not arm.has_fault, 'a rejected target is not a fault'
    finally:
        arm.disconnect()


@pytest.mark.parametrize('velocity, acceleration, message', [
    (0.3, 0.5, 'velocity 0.3 m/s is above the limit of 0.25 m/s'),
    (0.2, 1.5, 'acceleration 1.5 m/s^2 is above the limit of 1 m/s^2'),
])
def test_speed_above_limit_rejected(velocity, acceleration, message):
    arm = SimulatedArm(home_pose=HOME, limits=LIMITS)
    arm.connect(1.0)
    try:
        with pytest.raises(SpeedLimitError, match=re.escape(message)) as error:
            arm.move_to(Pose((0.5, 0.0, 0.4), DOWN), max_linear_vel_m_s=velocity,
                        timeout_s=1.0, max_linear_acc_m_s2=acceleration)
        assert '[0.5, 0.0, 0.4]' in str(error.value), 'the message names the pose'
        assert_pose_close(arm.current_pose(), HOME)
    finally:
        arm.disconnect()


@pytest.mark.parametrize('kwargs, message', [
    ({'workspace_min_xyz_m': (0.2, 0.0, 0.1), 'workspace_max_xyz_m': (0.8, 0.0, 0.7)},
     'y 0.0 must be below'),
    ({'workspace_min_xyz_m': (0.2, 0.0, 0.1)}, 'give both'),
    ({'workspace_min_xyz_m': (0.2, 0.0), 'workspace_max_xyz_m': (0.8, 0.4, 0.7)}, '3 finite'),
    ({'linear_vel_limit_m_s': 0.0}, 'linear_vel_limit_m_s'),
    ({'linear_acc_limit_m_s2': math.nan}, 'linear_acc_limit_m_s2'),
])
def test_invalid_limits_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MotionLimits(**kwargs)


# Fault injection of the simulated arm.


def start_move(arm, x=0.80):
    arm.move_to(Pose((x, 0.0, 0.40), DOWN), max_linear_vel_m_s=0.4, timeout_s=5.0)


def test_fault_mid_move_halts_halfway(arm):
    arm.schedule_fault('fault_mid_move')
    with pytest.raises(RobotFaultError, match='torque limit'):
        start_move(arm)
    assert arm.has_fault
    assert arm.current_pose().position[0] == pytest.approx(0.60), 'expected a halt halfway'
    with pytest.raises(RobotFaultError):
        start_move(arm, x=0.5)
    arm.clear_fault()
    start_move(arm, x=0.5)


def test_estop_needs_release_before_clear(arm):
    arm.schedule_fault('estop')
    with pytest.raises(EmergencyStopError):
        start_move(arm)
    halted_at = arm.current_pose()
    with pytest.raises(EmergencyStopError, match='still pressed'):
        arm.clear_fault()
    assert arm.has_fault
    arm.release_estop()
    assert arm.has_fault, 'releasing the emergency stop must not clear the fault'
    arm.clear_fault()
    assert not arm.has_fault
    assert arm.current_pose() == halted_at, 'clearing a fault must not move the arm'


def test_unreachable_pose_rejected_without_motion(arm):
    arm.schedule_fault('unreachable')
    with pytest.raises(UnreachablePoseError, match='unreachable'):
        start_move(arm)
    assert_pose_close(arm.current_pose(), HOME)
    assert arm.has_fault


def test_stalled_move_times_out_and_stops(arm):
    arm.schedule_fault('timeout')
    with pytest.raises(MotionTimeoutError, match='did not reach'):
        arm.move_to(Pose((0.80, 0.0, 0.40), DOWN), max_linear_vel_m_s=0.4, timeout_s=1.5)
    stopped_at = arm.current_pose()
    assert stopped_at.position[0] == pytest.approx(0.60)
    time.sleep(0.1)
    assert arm.current_pose() == stopped_at
    assert not arm.has_fault, 'a timeout is not an arm fault'


def test_connection_loss_halts_and_reconnects(arm):
    arm.schedule_fault('connection_loss')
    with pytest.raises(RobotConnectionError, match='lost'):
        start_move(arm)
    assert not arm.is_connected
    with pytest.raises(RobotConnectionError):
        arm.current_pose()
    halted_at = arm.simulated_pose
    time.sleep(0.1)
    assert arm.simulated_pose == halted_at, 'the arm moved without a connection'
    arm.connect(1.0)
    assert arm.current_pose() == halted_at
    start_move(arm, x=0.5)


def test_schedule_unknown_fault_rejected(arm):
    with pytest.raises(ValueError, match="unknown simulated fault 'melt'"):
        arm.schedule_fault('melt')


def test_quaternion_to_rpy_inverts_rpy_to_quaternion():
    for roll, pitch, yaw in [(math.pi, 0.0, 0.0), (math.pi, -math.pi / 6, 0.0),
                             (0.3, 0.2, -1.1), (5 * math.pi / 6, 0.0, math.pi / 2)]:
        quaternion = rpy_to_quaternion(roll, pitch, yaw)
        recovered = rpy_to_quaternion(*quaternion_to_rpy(quaternion))
        assert quaternion_angle(quaternion, recovered) < 1e-9, (roll, pitch, yaw)


# Flexiv back-end against a stand-in for flexivrdk. `make flexiv-check` matches
# the same calls against the real SDK's signatures in a Python 3.12 venv.


class FakeEnum:
    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return self.name


class FakeMode:
    IDLE = FakeEnum('IDLE')
    NRT_PRIMITIVE_EXECUTION = FakeEnum('NRT_PRIMITIVE_EXECUTION')


class FakeOperationalStatus:
    READY = FakeEnum('READY')
    NOT_ENABLED = FakeEnum('NOT_ENABLED')
    MINOR_FAULT = FakeEnum('MINOR_FAULT')


class FakeCoord:
    def __init__(self, position, orientation, ref_frame):
        self.position, self.orientation, self.ref_frame = position, orientation, ref_frame


class FakeStates:
    def __init__(self, tcp_pose):
        self.tcp_pose = tcp_pose


class FakeEvent:
    def __init__(self, event_id, description, level='ERROR'):
        self.id, self.description, self.level = event_id, description, FakeEnum(level)
        self.recommended_actions = 'check the payload'


FAKE_ROBOT_RECORDED_CALLS = {
    'Enable', 'SwitchMode', 'ExecutePrimitive', 'Stop', 'ClearFault', 'mode', 'operational',
    'primitive_states'}


class FakeRobot:
    """Stand-in for a Rizon. Set the flags to script a scenario; `calls` lists the calls."""

    instances = []
    connect_error = None

    def __init__(self, serial, interfaces):
        if FakeRobot.connect_error is not None:
            raise FakeRobot.connect_error
        self.serial, self.interfaces = serial, interfaces
        self.calls = [('Robot', serial, tuple(interfaces))]
        self.is_connected = True
        self.has_fault = False
        self.estop_pressed = False
        self.enabled = False
        self.becomes_operational = True
        self.current_mode = FakeMode.IDLE
        self.reached_after_polls = 2
        self.polls = 0
        self.on_poll = None
        self.tcp_pose = [0.4, 0.0, 0.4, 0.0, 1.0, 0.0, 0.0]
        FakeRobot.instances.append(self)

    def __getattribute__(self, name):
        if name in FAKE_ROBOT_RECORDED_CALLS:
            object.__getattribute__(self, 'calls').append((name,))
        return object.__getattribute__(self, name)

    def connected(self):
        return self.is_connected

    def fault(self):
        return self.has_fault

    def estop_released(self):
        return not self.estop_pressed

    def Enable(self):
        self.enabled = True

    def operational(self):
        return (self.enabled and self.becomes_operational and not self.has_fault
                and not self.estop_pressed)

    def operational_status(self):
        if self.has_fault:
            return FakeOperationalStatus.MINOR_FAULT
        if self.operational():
            return FakeOperationalStatus.READY
        return FakeOperationalStatus.NOT_ENABLED

    def mode(self):
        return self.current_mode

    def SwitchMode(self, mode):
        self.current_mode = mode

    def ExecutePrimitive(self, name, params):
        self.primitive = (name, params)
        self.polls = 0

    def primitive_states(self):
        self.polls += 1
        if self.on_poll is not None:
            self.on_poll(self, self.polls)
        reached = self.reached_after_polls is not None and self.polls >= self.reached_after_polls
        return {'reachedTarget': int(reached)}

    def Stop(self):
        self.current_mode = FakeMode.IDLE

    def stopped(self):
        return True

    def states(self):
        return FakeStates(self.tcp_pose)

    def event_log(self):
        return [FakeEvent(7, 'joint 3 torque limit'), FakeEvent(8, 'note', level='INFO')]

    def ClearFault(self, timeout_sec=30):
        self.has_fault = False
        return True


FAKE_SDK = types.SimpleNamespace(Robot=FakeRobot, Mode=FakeMode, Coord=FakeCoord,
                                 OperationalStatus=FakeOperationalStatus)
SERIAL = 'Rizon4s-000000'


@pytest.fixture
def fake_robots():
    FakeRobot.instances = []
    FakeRobot.connect_error = None
    yield FakeRobot.instances
    FakeRobot.connect_error = None


def flexiv_arm(**kwargs) -> FlexivArm:
    options = {'settle_time_s': 0.0, 'poll_period_s': 0.001, 'sdk': FAKE_SDK}
    options.update(kwargs)
    return FlexivArm(SERIAL, ['127.0.0.1'], **options)


def names(robot):
    return [call[0] for call in robot.calls]


def test_flexiv_connect_enables_and_switches_mode(fake_robots):
    arm = flexiv_arm()
    arm.connect(1.0)
    (robot,) = fake_robots
    assert robot.calls[0] == ('Robot', SERIAL, ('127.0.0.1',))
    calls = names(robot)
    assert calls.index('Enable') < calls.index('SwitchMode'), 'enable before switching mode'
    assert robot.current_mode is FakeMode.NRT_PRIMITIVE_EXECUTION
    assert arm.is_connected and not arm.has_fault
    assert 'ClearFault' not in calls


def test_flexiv_connect_failure_names_serial_and_checks(fake_robots):
    FakeRobot.connect_error = RuntimeError('Failed to connect')
    arm = flexiv_arm()
    with pytest.raises(RobotConnectionError) as error:
        arm.connect(1.0)
    message = str(error.value)
    assert SERIAL in message
    assert "['127.0.0.1']" in message
    assert 'Remote mode' in message
    assert 'flexiv_network_interfaces' in message
    assert not arm.is_connected


def test_flexiv_invalid_serial_format(fake_robots):
    FakeRobot.connect_error = ValueError('Format of the provided robot serial number is invalid')
    with pytest.raises(RobotConnectionError, match='invalid Flexiv serial number'):
        flexiv_arm().connect(1.0)


def test_flexiv_connect_timeout_names_status(fake_robots):
    arm = flexiv_arm()
    FakeRobot.connect_error = None
    original = FakeRobot.__init__

    def never_operational(self, *args):
        original(self, *args)
        self.becomes_operational = False

    FakeRobot.__init__ = never_operational
    try:
        with pytest.raises(RobotConnectionError, match='NOT_ENABLED'):
            arm.connect(0.05)
    finally:
        FakeRobot.__init__ = original


def test_flexiv_fault_at_connect_not_cleared(fake_robots):
    original = FakeRobot.__init__

    def faulted(self, *args):
        original(self, *args)
        self.has_fault = True

    FakeRobot.__init__ = faulted
    try:
        arm = flexiv_arm()
        arm.connect(1.0)
    finally:
        FakeRobot.__init__ = original
    (robot,) = fake_robots
    assert arm.is_connected and arm.has_fault
    assert 'joint 3 torque limit' in arm.fault_reason
    assert 'ClearFault' not in names(robot)
    assert 'Enable' not in names(robot), 'a faulted arm stays disabled'
    with pytest.raises(RobotFaultError):
        arm.move_to(Pose((0.5, 0.0, 0.4), DOWN), 0.1, 1.0)
    assert 'ExecutePrimitive' not in names(robot)

    arm.clear_fault(1.0)
    assert names(robot).count('ClearFault') == 1
    assert not arm.has_fault
    assert robot.current_mode is FakeMode.NRT_PRIMITIVE_EXECUTION


def test_flexiv_move_sends_movel(fake_robots):
    arm = flexiv_arm()
    arm.connect(1.0)
    (robot,) = fake_robots
    arm.move_to(Pose((0.5, 0.1, 0.3), DOWN), 0.1, 1.0, max_linear_acc_m_s2=0.5)
    name, params = robot.primitive
    assert name == 'MoveL'
    assert params['vel'] == 0.1
    assert params['acc'] == 0.5
    target = params['target']
    assert target.position == [0.5, 0.1, 0.3]
    assert target.orientation == pytest.approx([180.0, 0.0, 0.0])
    assert target.ref_frame == ['WORLD', 'WORLD_ORIGIN']
    assert robot.polls == 2, 'the move ends when reachedTarget becomes 1'
    assert arm.is_settled()
    assert arm.current_pose().orientation == (1.0, 0.0, 0.0, 0.0)


def test_flexiv_switches_mode_again_after_stop(fake_robots):
    arm = flexiv_arm()
    arm.connect(1.0)
    (robot,) = fake_robots
    robot.reached_after_polls = None
    threading.Timer(0.05, arm.stop).start()
    with pytest.raises(MotionStoppedError):
        arm.move_to(Pose((0.5, 0.0, 0.4), DOWN), 0.1, 5.0)
    assert 'Stop' in names(robot)
    robot.reached_after_polls = 1
    arm.move_to(Pose((0.5, 0.0, 0.4), DOWN), 0.1, 5.0)
    assert names(robot).count('SwitchMode') == 2, 'Stop() leaves IDLE, so the mode is set again'


@pytest.mark.parametrize('event, error_type, message', [
    ('fault', RobotFaultError, 'joint 3 torque limit'),
    ('estop', EmergencyStopError, 'emergency stop'),
    ('disconnect', RobotConnectionError, 'connection to Flexiv robot'),
])
def test_flexiv_move_ends_on_fault_state(fake_robots, event, error_type, message):
    arm = flexiv_arm()
    arm.connect(1.0)
    (robot,) = fake_robots
    robot.reached_after_polls = 10

    def on_poll(robot, polls):
        if polls == 3:
            robot.has_fault = event == 'fault'
            robot.estop_pressed = event == 'estop'
            robot.is_connected = event != 'disconnect'

    robot.on_poll = on_poll
    with pytest.raises(error_type, match=message):
        arm.move_to(Pose((0.5, 0.0, 0.4), DOWN), 0.1, 5.0)
    if event != 'disconnect':
        assert 'Stop' in names(robot), 'the back-end must stop the arm'
        assert arm.has_fault
    else:
        assert not arm.is_connected
    assert 'ClearFault' not in names(robot), 'faults are never cleared automatically'


def test_flexiv_timeout_stops_arm(fake_robots):
    arm = flexiv_arm()
    arm.connect(1.0)
    (robot,) = fake_robots
    robot.reached_after_polls = None
    with pytest.raises(MotionTimeoutError, match=SERIAL):
        arm.move_to(Pose((0.5, 0.0, 0.4), DOWN), 0.1, 0.05)
    assert names(robot)[-1] == 'Stop'


def test_flexiv_checks_limits_before_sdk_calls(fake_robots):
    arm = flexiv_arm(limits=LIMITS)
    arm.connect(1.0)
    (robot,) = fake_robots
    with pytest.raises(WorkspaceError):
        arm.move_to(Pose((0.5, 0.0, 0.9), DOWN), 0.1, 1.0)
    with pytest.raises(SpeedLimitError):
        arm.move_to(Pose((0.5, 0.0, 0.4), DOWN), 0.5, 1.0)
    with pytest.raises(InvalidSpeedError, match='range'):
        arm.move_to(Pose((0.5, 0.0, 0.4), DOWN), 0.1, 1.0, max_linear_acc_m_s2=0.05)
    assert 'ExecutePrimitive' not in names(robot)


def test_flexiv_clear_fault_needs_released_estop(fake_robots):
    arm = flexiv_arm()
    arm.connect(1.0)
    (robot,) = fake_robots
    robot.estop_pressed = True
    assert arm.has_fault and arm.fault_reason == 'emergency stop pressed'
    with pytest.raises(EmergencyStopError, match='still pressed'):
        arm.clear_fault(1.0)
    robot.estop_pressed = False
    arm.clear_fault(1.0)
    assert not arm.has_fault


@pytest.mark.parametrize('interfaces, message', [
    ([], 'is empty'),
    (['eth0'], 'not an IPv4 address'),
])
def test_flexiv_network_interfaces_validated(interfaces, message):
    with pytest.raises(ValueError, match=message):
        FlexivArm(SERIAL, interfaces, sdk=FAKE_SDK)


def test_flexiv_sdk_missing_message(monkeypatch):
    monkeypatch.setitem(sys.modules, 'flexivrdk', None)
    with pytest.raises(FlexivSdkMissingError, match='Python 3.12') as error:
        import_sdk()
    assert 'flexivrdk==1.9.4.1' in str(error.value)
    with pytest.raises(FlexivSdkMissingError, match='flexivrdk'):
        FlexivArm(SERIAL, ['127.0.0.1']).connect(1.0)


def test_flexiv_sdk_version_checked(monkeypatch):
    monkeypatch.setitem(sys.modules, 'flexivrdk', types.SimpleNamespace(__version__='2.0.0'))
    with pytest.raises(FlexivSdkMissingError, match='1.9 line'):
        import_sdk()


# Motion guard.


def test_guard_keeps_first_reason_until_clear(arm):
    guard = MotionGuard(clear_hint='call clear_fault')
    guard.raise_if_blocked(arm)
    assert guard.block('first failure')
    assert not guard.block('second failure')
    with pytest.raises(MotionBlockedError, match=r'first failure.*call clear_fault'):
        guard.raise_if_blocked(arm)
    assert guard.clear(arm, 1.0, 1.0).startswith('fault cleared (first failure)')
    guard.raise_if_blocked(arm)


def test_guard_blocks_on_arm_fault(arm):
    guard = MotionGuard()
    arm.inject_fault('protective stop')
    with pytest.raises(MotionBlockedError, match='protective stop'):
        guard.raise_if_blocked(arm)
    arm.clear_fault()
    with pytest.raises(MotionBlockedError, match='protective stop'):
        guard.raise_if_blocked(arm)


def test_guard_stays_blocked_while_estop_pressed(arm):
    guard = MotionGuard()
    arm.press_estop()
    guard.block('emergency stop pressed')
    with pytest.raises(EmergencyStopError):
        guard.clear(arm, 1.0, 1.0)
    assert guard.reason == 'emergency stop pressed'
    arm.release_estop()
    guard.clear(arm, 1.0, 1.0)
    assert guard.reason is None
    assert not arm.has_fault


def test_guard_clear_reconnects(arm):
    guard = MotionGuard()
    arm.lose_connection()
    guard.block('connection lost')
    guard.clear(arm, 1.0, 1.0)
    assert arm.is_connected


def test_guard_clear_without_fault(arm):
    assert MotionGuard().clear(arm, 1.0, 1.0) == 'no fault to clear'


def test_check_targets_names_pose():
    targets = [('top', Pose((0.5, 0.0, 0.32), DOWN)), ('high', Pose((0.5, 0.0, 0.75), DOWN))]
    with pytest.raises(WorkspaceError, match="pose 'high' at"):
        check_targets(LIMITS, targets, 0.1, 0.5)
    with pytest.raises(SpeedLimitError, match=re.escape("pose 'top' at [0.5, 0.0, 0.32] m")):
        check_targets(LIMITS, targets[:1], 0.3, 0.5)
    check_targets(LIMITS, targets[:1], 0.25, 1.0)
