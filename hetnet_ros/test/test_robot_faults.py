"""Robot faults and motion limits over real DDS: goal status, result message, no motion after.

Each fault is injected by the simulated arm through the node's sim_fault
parameters during the move to the second pose, so the first view is recorded
before the fault. The goal, the clear_fault service and /diagnostics are used
over DDS from a client node in the same process.
"""

import time

import pytest
from action_msgs.msg import GoalStatus
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.parameter import Parameter
from std_srvs.srv import Trigger
from test_inspection_node import WAIT_S, Harness, wait_for

from hetnet_ros.robots import SimulatedArm

# Fault kind: text that the abort message must contain.
FAULT_REASONS = {
    'fault_mid_move': 'torque limit exceeded',
    'estop': 'emergency stop pressed',
    'unreachable': 'unreachable',
    'timeout': 'did not reach its target',
    'connection_loss': 'connection to the simulated arm was lost',
}
# Time to watch the arm after a fault; it must not move at all.
STILL_WATCH_S = 0.3


@pytest.fixture
def harness_factory(tmp_path):
    harnesses = []

    def create(**kwargs):
        harness = Harness(tmp_path, **kwargs)
        harnesses.append(harness)
        harness.diagnostics = []
        harness.client.create_subscription(
            DiagnosticArray, '/diagnostics', harness.diagnostics.append, 10)
        harness.clear_fault = harness.client.create_client(Trigger, 'clear_fault')
        harness.start()
        return harness

    yield create
    for harness in harnesses:
        harness.close()


def call_clear_fault(harness) -> Trigger.Response:
    client = harness.clear_fault
    assert client.wait_for_service(timeout_sec=WAIT_S), 'no clear_fault service'
    future = client.call_async(Trigger.Request())
    wait_for(future.done, 'clear_fault response')
    return future.result()


def run_goal(harness, part_id, pose_names=()):
    return harness.client.result(harness.client.send(part_id, pose_names))


def inspection_status(harness, after_s: float):
    """Return the newest /diagnostics status of the inspection node received after `after_s`."""
    def newest():
        for array in reversed(harness.diagnostics):
            stamp_s = array.header.stamp.sec + array.header.stamp.nanosec / 1e9
            for status in array.status:
                if status.name.endswith(': inspection') and stamp_s > after_s:
                    return status
        return None

    wait_for(lambda: newest() is not None, 'an inspection /diagnostics message')
    return newest()


def assert_arm_still(arm: SimulatedArm, pose, when: str) -> None:
    assert arm.simulated_pose == pose, f'the arm moved {when}'


@pytest.mark.parametrize('fault', list(FAULT_REASONS))
def test_fault_aborts_goal_and_blocks_motion(harness_factory, fault):
    harness = harness_factory(rate_hz=50.0, parameters={
        'sim_fault': fault, 'sim_fault_at_pose': 1, 'move_timeout_s': 1.5})
    arm = harness.node._arm

    response = run_goal(harness, f'part-{fault}')
    assert response.status == GoalStatus.STATUS_ABORTED
    message = response.result.message
    assert not response.result.success
    assert FAULT_REASONS[fault] in message, message
    assert "pose 'front'" in message, 'the message names the pose of the failed move'
    assert list(response.result.report.view_names) == ['top'], 'the view before the fault'

    halted_at = arm.simulated_pose
    time.sleep(STILL_WATCH_S)
    assert_arm_still(arm, halted_at, 'after the fault')

    # A new goal without clear_fault is aborted, and the arm stays where it halted.
    response = run_goal(harness, f'part-{fault}-again')
    assert response.status == GoalStatus.STATUS_ABORTED
    assert 'motion is blocked' in response.result.message
    assert 'clear_fault' in response.result.message
    assert FAULT_REASONS[fault] in response.result.message
    assert_arm_still(arm, halted_at, 'for a goal sent before clear_fault')

    if fault == 'estop':
        cleared = call_clear_fault(harness)
        assert not cleared.success, 'a pressed emergency stop cannot be cleared'
        assert 'still pressed' in cleared.message
        assert run_goal(harness, 'part-estop-pressed').status == GoalStatus.STATUS_ABORTED
        arm.release_estop()

    cleared = call_clear_fault(harness)
    assert cleared.success, cleared.message
    assert 'fault cleared' in cleared.message, cleared.message
    assert_arm_still(arm, halted_at, 'when the fault was cleared')

    harness.node.set_parameters([Parameter('sim_fault', value='none')])
    response = run_goal(harness, f'part-{fault}-after-clear', ['top'])
    assert response.status == GoalStatus.STATUS_SUCCEEDED, response.result.message


def test_fault_reported_on_diagnostics(harness_factory):
    harness = harness_factory(rate_hz=50.0, parameters={
        'sim_fault': 'fault_mid_move', 'sim_fault_at_pose': 0})
    started_s = harness.node.get_clock().now().nanoseconds / 1e9
    status = inspection_status(harness, started_s)
    assert status.level == DiagnosticStatus.OK, status.message
    values = {item.key: item.value for item in status.values}
    assert values['state'] == 'active'
    assert values['robot_backend'] == 'sim'
    assert values['arm_connected'] == 'True'

    run_goal(harness, 'part-diagnostics')
    failed_s = harness.node.get_clock().now().nanoseconds / 1e9
    status = inspection_status(harness, failed_s)
    values = {item.key: item.value for item in status.values}
    assert status.level == DiagnosticStatus.ERROR
    assert 'torque limit' in status.message
    assert values['motion_faults'] == '1'
    assert values['goals_aborted'] == '1'
    assert 'torque limit' in values['last_error']

    assert call_clear_fault(harness).success
    cleared_s = harness.node.get_clock().now().nanoseconds / 1e9
    status = inspection_status(harness, cleared_s)
    values = {item.key: item.value for item in status.values}
    assert status.level == DiagnosticStatus.OK, status.message
    assert values['faults_cleared'] == '1'
    assert values['motion_blocked_by'] == ''


def test_pose_outside_workspace_rejected_before_motion(harness_factory):
    harness = harness_factory(rate_hz=50.0, parameters={
        'workspace_max_xyz_m': [0.80, 0.40, 0.30]})
    arm = harness.node._arm
    home = arm.simulated_pose

    response = run_goal(harness, 'part-outside', ['left', 'top'])
    assert response.status == GoalStatus.STATUS_ABORTED
    message = response.result.message
    assert 'before any motion' in message
    assert "pose 'top'" in message, message
    assert '[0.5000, 0.0000, 0.3200] m' in message, message
    assert 'z 0.3200 > max 0.3000' in message
    assert_arm_still(arm, home, 'for a goal with a pose outside the workspace')

    # A rejected goal is not a fault: a goal inside the box runs without clear_fault.
    response = run_goal(harness, 'part-inside', ['left', 'front'])
    assert response.status == GoalStatus.STATUS_SUCCEEDED, response.result.message


def test_speed_above_limit_rejected_before_motion(harness_factory):
    harness = harness_factory(rate_hz=50.0, parameters={
        'max_linear_vel_m_s': 0.5, 'linear_vel_limit_m_s': 0.25})
    arm = harness.node._arm
    home = arm.simulated_pose

    response = run_goal(harness, 'part-fast')
    assert response.status == GoalStatus.STATUS_ABORTED
    message = response.result.message
    assert "pose 'top' at [0.5, 0.0, 0.32] m" in message, message
    assert 'velocity 0.5 m/s is above the limit of 0.25 m/s' in message
    assert_arm_still(arm, home, 'for a goal above the speed limit')


def test_clear_fault_rejected_while_inspecting(harness_factory):
    harness = harness_factory(rate_hz=50.0, parameters={
        'max_linear_vel_m_s': 0.02, 'sim_speed_factor': 1.0})
    assert call_clear_fault(harness).message == 'no fault to clear'

    goal_handle = harness.client.send('part-slow')
    wait_for(lambda: any(f.stage == 'moving' for _, f in harness.client.feedback),
             'moving feedback')
    response = call_clear_fault(harness)
    assert not response.success
    assert 'inspection is running' in response.message
    goal_handle.cancel_goal_async()
    assert harness.client.result(goal_handle).status == GoalStatus.STATUS_CANCELED
