"""Inspection node over real DDS: a simulated arm, a test verdict publisher, the action.

A test publisher replaces the camera and detector. It publishes a
DefectVerdict with the matching image and heatmap, all stamped now, either at
a fixed rate (streaming camera) or once per request to a `capture` service.
"""

import threading
import time

import cv2
import numpy as np
import pytest
import rclpy
from action_msgs.msg import GoalStatus
from geometry_msgs.msg import PoseStamped
from hetnet_ros_msgs.action import InspectPart
from hetnet_ros_msgs.msg import DefectVerdict, InspectionReport
from rclpy.action import ActionClient
from rclpy.exceptions import InvalidParameterValueException
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image, RegionOfInterest
from std_srvs.srv import Trigger

from hetnet_ros.imaging import encode_rgb8
from hetnet_ros.nodes.inspection_node import InspectionNode, summarize_views
from hetnet_ros.records import RecordStore
from hetnet_ros.robots import SimulatedArm

POSES_YAML = '''
poses:
  - {name: top, position: [0.50, 0.00, 0.32], orientation: [1.0, 0.0, 0.0, 0.0]}
  - {name: front, position: [0.35, 0.00, 0.28], orientation: [0.965926, 0.0, 0.258819, 0.0]}
  - {name: left, position: [0.50, 0.15, 0.28], orientation: [0.965926, 0.0, 0.0, 0.258819]}
'''
POSE_NAMES = ['top', 'front', 'left']
WAIT_S = 20.0


class FakeDetector(Node):
    """Publishes verdicts with images and heatmaps, on a timer or per capture request."""

    def __init__(self, context, rate_hz: float = 0.0, anomalous_every: int = 2):
        super().__init__('fake_detector', context=context)
        self.verdicts = self.create_publisher(DefectVerdict, 'verdict', 10)
        self.images = self.create_publisher(Image, 'image', 10)
        self.heatmaps = self.create_publisher(Image, 'heatmap', 10)
        self.count = 0
        self.captures = 0
        self.anomalous_every = anomalous_every
        self.enabled = True
        # Frames to publish without their image, or without anything, as if lost.
        self.images_to_drop = 0
        self.frames_to_drop = 0
        self.verdict_stamps = []
        if rate_hz > 0:
            self.create_timer(1.0 / rate_hz, self.publish_frame)
        else:
            self.create_service(Trigger, 'capture', self._on_capture)

    def publish_frame(self) -> None:
        if not self.enabled:
            return
        self.count += 1
        if self.frames_to_drop > 0:
            self.frames_to_drop -= 1
            return
        stamp = self.get_clock().now().to_msg()
        publishers = ((self.images, 40), (self.heatmaps, 200))
        if self.images_to_drop > 0:
            self.images_to_drop -= 1
            publishers = publishers[1:]
        for publisher, value in publishers:
            step, data = encode_rgb8(np.full((12, 16, 3), value, np.uint8))
            image = Image(height=12, width=16, encoding='rgb8', step=step, data=data)
            image.header.stamp = stamp
            publisher.publish(image)

        anomalous = self.count % self.anomalous_every == 0
        verdict = DefectVerdict(
            pred_score=0.8 if anomalous else 0.2, raw_score=0.1, threshold=0.5,
            is_anomalous=anomalous, inference_time_s=0.01, model_id='fake-model')
        if anomalous:
            verdict.anomalous_regions = [RegionOfInterest(x_offset=2, y_offset=3, width=4, height=5)]
            verdict.region_scores = [0.8]
        verdict.header.stamp = stamp
        self.verdicts.publish(verdict)
        self.verdict_stamps.append(stamp.sec + stamp.nanosec / 1e9)

    def _on_capture(self, request, response):
        self.captures += 1
        self.publish_frame()
        response.success = True
        response.message = 'published'
        return response


class Client(Node):
    """Action client plus subscribers of the node's outputs."""

    def __init__(self, context):
        super().__init__('test_client', context=context)
        self.action = ActionClient(self, InspectPart, 'inspect_part')
        self.feedback = []
        self.reports = []
        self.tool_poses = []
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.create_subscription(InspectionReport, 'inspection_report', self.reports.append, latched)
        self.create_subscription(PoseStamped, 'tool_pose', self.tool_poses.append, 10)

    def send(self, part_id: str, pose_names=()):
        goal = InspectPart.Goal(part_id=part_id, pose_names=list(pose_names))

        def on_feedback(message):
            self.feedback.append((time.time_ns(), message.feedback))

        future = self.action.send_goal_async(goal, feedback_callback=on_feedback)
        goal_handle = wait_for(future.done, 'goal response') and future.result()
        return goal_handle

    def result(self, goal_handle):
        future = goal_handle.get_result_async()
        wait_for(future.done, 'goal result')
        return future.result()


def wait_for(condition, awaited: str, timeout_s: float = WAIT_S):
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f'timed out after {timeout_s} s waiting for {awaited}')
        time.sleep(0.02)
    return True


class Harness:
    """One ROS context with the inspection node, the fake detector and the client."""

    def __init__(self, tmp_path, parameters=None, rate_hz=50.0, arm=None, fake_detector=True):
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        poses_file = tmp_path / 'poses.yaml'
        poses_file.write_text(POSES_YAML)
        self.records = tmp_path / 'records'
        overrides = {
            'poses_file': str(poses_file), 'records_dir': str(self.records),
            'max_linear_vel_m_s': 0.5, 'linear_vel_limit_m_s': 1.0, 'max_linear_acc_m_s2': 1.0,
            'settle_time_s': 0.3, 'sim_speed_factor': 4.0,
            'verdict_timeout_s': 5.0, 'match_timeout_s': 2.0,
        }
        if rate_hz == 0:
            overrides['capture_service'] = 'capture'
        overrides.update(parameters or {})
        self.arm = arm
        self.node = InspectionNode(
            arm=arm, context=self.context,
            parameter_overrides=[Parameter(name, value=value) for name, value in overrides.items()])
        self.client = Client(self.context)
        self.executor = MultiThreadedExecutor(num_threads=6, context=self.context)
        self.nodes = []
        for node in (self.node, self.client):
            self.add_node(node)
        self.detector = None
        if fake_detector:
            self.detector = self.add_node(FakeDetector(self.context, rate_hz=rate_hz))
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def add_node(self, node):
        self.executor.add_node(node)
        self.nodes.append(node)
        return node

    def start(self) -> None:
        assert self.node.trigger_configure().to_label() == 'transition_success'
        assert self.node.trigger_activate().to_label() == 'transition_success'
        assert self.client.action.wait_for_server(timeout_sec=WAIT_S), 'no inspect_part server'
        if self.detector is not None:
            # Discovery of the fake detector's publishers can lag on a loaded machine, and a
            # view is recorded without its image when the node has found no image publisher.
            for topic in ('image', 'heatmap', 'verdict'):
                name = self.node.resolve_topic_name(topic)
                wait_for(lambda: self.node.count_publishers(name) > 0, f'a publisher on {name}')

    def close(self) -> None:
        for node in self.nodes:
            if hasattr(node, 'release'):
                node.release()
        self.executor.shutdown(timeout_sec=5.0)
        for node in self.nodes:
            node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self.thread.join(timeout=5.0)


@pytest.fixture
def harness_factory(tmp_path):
    harnesses = []

    def create(**kwargs):
        harness = Harness(tmp_path, **kwargs)
        harnesses.append(harness)
        harness.start()
        return harness

    yield create
    for harness in harnesses:
        harness.close()


def test_inspection_with_streaming_camera(harness_factory):
    harness = harness_factory(rate_hz=50.0)
    client = harness.client
    # The time at which the node saw the arm settled at each pose, and whether the
    # simulated arm was settled then.
    settled = []
    judge_view = harness.node._judge_view

    def record_settled(goal_handle, settled_ns, pose_name):
        settled.append((settled_ns, harness.node._arm.is_settled()))
        return judge_view(goal_handle, settled_ns, pose_name)

    harness.node._judge_view = record_settled
    goal_handle = client.send('part-1')
    assert goal_handle.accepted
    response = client.result(goal_handle)
    result = response.result

    assert response.status == GoalStatus.STATUS_SUCCEEDED, result.message
    assert result.success and result.message == ''
    report = result.report
    assert report.part_id == 'part-1'
    assert list(report.view_names) == POSE_NAMES
    assert len(report.views) == 3
    assert len(report.view_poses) == 3
    assert report.header.frame_id == 'base_link'
    assert report.model_id == 'fake-model'
    scores = [view.pred_score for view in report.views]
    expected = summarize_views(report.views)
    assert (report.is_anomalous, report.worst_view_index) == expected[:2]
    assert report.worst_score == pytest.approx(max(scores))

    # Reached poses are the requested ones.
    top = report.view_poses[0]
    assert (top.position.x, top.position.y, top.position.z) == pytest.approx((0.50, 0.0, 0.32))
    assert abs(top.orientation.x) == pytest.approx(1.0)

    # Every judged image was taken after the arm settled. The settle countdown starts
    # when the motion ends, so on a loaded machine the arm can already be settled when
    # the node announces 'settling'; the reference is the node's own settle time.
    wait_for(lambda: sum(f.stage == 'recorded' for _, f in client.feedback) == 3, 'feedback')
    assert len(settled) == 3
    for view, (settled_ns, arm_settled) in zip(report.views, settled):
        stamp_ns = view.header.stamp.sec * 10**9 + view.header.stamp.nanosec
        assert arm_settled, 'the node judged a view before the simulated arm had settled'
        assert stamp_ns > settled_ns, 'a verdict on an image from before settling was used'

    stages = [(f.view_index, f.stage) for _, f in client.feedback]
    assert stages == [(index, stage) for index in range(3)
                      for stage in ('moving', 'settling', 'capturing', 'recorded')]
    assert all(f.view_count == 3 for _, f in client.feedback)
    recorded = [f for _, f in client.feedback if f.stage == 'recorded']
    assert [f.last_verdict.pred_score for f in recorded] == pytest.approx(scores)

    # Report published (latched) and tool poses streamed in base_link.
    wait_for(lambda: client.reports, 'inspection_report message')
    assert list(client.reports[-1].view_names) == POSE_NAMES
    wait_for(lambda: client.tool_poses, 'tool_pose message')
    assert client.tool_poses[-1].header.frame_id == 'base_link'


def test_records_written_for_each_view(harness_factory):
    harness = harness_factory(rate_hz=50.0)
    response = harness.client.result(harness.client.send('part/2'))
    report = response.result.report
    assert response.result.success, response.result.message

    with RecordStore(harness.records) as store:
        (inspection,) = store.list_inspections(part_id='part/2')
        views = store.list_views(inspection.id)
    assert inspection.status == 'succeeded'
    assert str(inspection.path) == report.records_path
    assert inspection.is_anomalous == report.is_anomalous
    assert inspection.worst_view_index == report.worst_view_index
    assert [view.pose_name for view in views] == POSE_NAMES
    for view, verdict in zip(views, report.views):
        assert view.verdict.pred_score == pytest.approx(verdict.pred_score)
        assert view.verdict.stamp_s == pytest.approx(
            verdict.header.stamp.sec + verdict.header.stamp.nanosec / 1e9)
        assert view.image_path is not None and view.image_path.is_file(), 'image missing'
        assert view.heatmap_path is not None and view.heatmap_path.is_file(), 'heatmap missing'
        assert len(view.verdict.regions) == len(verdict.anomalous_regions)


def test_capture_service_requested_per_pose(harness_factory):
    harness = harness_factory(rate_hz=0.0)
    response = harness.client.result(harness.client.send('part-3', ['left', 'top']))
    assert response.result.success, response.result.message
    assert list(response.result.report.view_names) == ['left', 'top']
    assert harness.detector.captures == 2


def test_lost_frame_requested_again(harness_factory):
    harness = harness_factory(rate_hz=0.0, parameters={'capture_retry_s': 0.3})
    harness.detector.frames_to_drop = 1
    response = harness.client.result(harness.client.send('part-lost-frame'))
    assert response.result.success, response.result.message
    assert harness.detector.captures == 4, 'one extra capture for the lost frame'


def test_lost_image_replaced_by_next_frame(harness_factory):
    harness = harness_factory(rate_hz=0.0)
    harness.detector.images_to_drop = 1
    response = harness.client.result(harness.client.send('part-lost-image'))
    assert response.result.success, response.result.message
    assert harness.detector.captures == 4, 'one extra capture for the view without image'
    with RecordStore(harness.records) as store:
        (inspection,) = store.list_inspections(part_id='part-lost-image')
        views = store.list_views(inspection.id)
    assert all(view.image_path is not None for view in views), 'every view needs its image'
    first_stamp = response.result.report.views[0].header.stamp
    assert views[0].verdict.stamp_s == pytest.approx(first_stamp.sec + first_stamp.nanosec / 1e9)


def test_view_recorded_without_image_after_timeout(harness_factory):
    harness = harness_factory(rate_hz=0.0, parameters={
        'verdict_timeout_s': 1.0, 'match_timeout_s': 0.2})
    harness.detector.images_to_drop = 1000
    response = harness.client.result(harness.client.send('part-no-image', ['top']))
    assert response.result.success, response.result.message
    with RecordStore(harness.records) as store:
        (inspection,) = store.list_inspections(part_id='part-no-image')
        (view,) = store.list_views(inspection.id)
    assert view.image_path is None
    assert view.heatmap_path is not None and view.heatmap_path.is_file()
    # The first verdict after settling is kept when no frame arrives complete.
    assert harness.detector.captures >= 2
    assert view.verdict.stamp_s == pytest.approx(harness.detector.verdict_stamps[0])


def test_unknown_pose_names_rejected_with_valid_names(harness_factory):
    harness = harness_factory(rate_hz=50.0)
    before = harness.node._arm.current_pose()
    response = harness.client.result(harness.client.send('part-4', ['top', 'bottom']))
    assert response.status == GoalStatus.STATUS_ABORTED
    assert not response.result.success
    assert "['bottom']" in response.result.message
    assert 'top, front, left' in response.result.message
    assert harness.node._arm.current_pose() == before, 'the arm moved for an invalid goal'


def test_empty_part_id_rejected(harness_factory):
    harness = harness_factory(rate_hz=50.0)
    response = harness.client.result(harness.client.send(''))
    assert response.status == GoalStatus.STATUS_ABORTED
    assert 'part_id is empty' in response.result.message


def test_verdict_timeout_aborts(harness_factory):
    harness = harness_factory(rate_hz=50.0, parameters={'verdict_timeout_s': 0.5})
    harness.detector.enabled = False
    started = time.monotonic()
    response = harness.client.result(harness.client.send('part-5'))
    assert response.status == GoalStatus.STATUS_ABORTED
    assert 'timed out after 0.5 s' in response.result.message
    assert "pose 'top'" in response.result.message
    assert time.monotonic() - started < 10.0
    with RecordStore(harness.records) as store:
        (inspection,) = store.list_inspections(part_id='part-5')
    assert inspection.status == 'failed'
    assert 'timed out' in inspection.message


def test_cancel_stops_arm(harness_factory):
    # Slow moves, so that the cancel arrives during the first one.
    harness = harness_factory(rate_hz=50.0, parameters={
        'max_linear_vel_m_s': 0.02, 'sim_speed_factor': 1.0})
    client = harness.client
    goal_handle = client.send('part-6')
    wait_for(lambda: any(f.stage == 'moving' for _, f in client.feedback), 'moving feedback')
    time.sleep(0.3)

    cancel = goal_handle.cancel_goal_async()
    wait_for(cancel.done, 'cancel response')
    response = client.result(goal_handle)
    assert response.status == GoalStatus.STATUS_CANCELED
    assert not response.result.success
    assert 'canceled' in response.result.message

    stopped_at = harness.node._arm.current_pose()
    time.sleep(0.3)
    assert harness.node._arm.current_pose() == stopped_at, 'the arm kept moving after cancel'
    assert stopped_at.position[2] > 0.33, 'the arm should have stopped on its way to top'
    with RecordStore(harness.records) as store:
        (inspection,) = store.list_inspections(part_id='part-6')
    assert inspection.status == 'canceled'


def test_robot_fault_aborts_with_reason(harness_factory):
    arm = SimulatedArm(speed_factor=1.0)
    harness = harness_factory(rate_hz=50.0, arm=arm, parameters={'max_linear_vel_m_s': 0.05})
    client = harness.client
    goal_handle = client.send('part-7')
    wait_for(lambda: any(f.stage == 'moving' for _, f in client.feedback), 'moving feedback')
    arm.inject_fault('emergency stop pressed')

    response = client.result(goal_handle)
    assert response.status == GoalStatus.STATUS_ABORTED
    assert 'emergency stop pressed' in response.result.message
    assert "pose 'top'" in response.result.message

    # A new goal does not move a faulted arm.
    response = client.result(client.send('part-8'))
    assert response.status == GoalStatus.STATUS_ABORTED
    assert 'fault' in response.result.message


def test_second_goal_rejected_while_running(harness_factory):
    harness = harness_factory(rate_hz=50.0, parameters={
        'max_linear_vel_m_s': 0.05, 'sim_speed_factor': 1.0})
    first = harness.client.send('part-9')
    assert first.accepted
    second = harness.client.send('part-10')
    assert not second.accepted, 'a second goal must be rejected while one runs'
    first.cancel_goal_async()
    assert harness.client.result(first).status == GoalStatus.STATUS_CANCELED


def test_inspection_with_real_camera_and_detector(tmp_path, tiny_checkpoint, screw_root):
    """Real camera (replay, on request) and detector nodes in the same process."""
    from hetnet_ros.nodes.camera_node import CameraNode
    from hetnet_ros.nodes.common import start_lifecycle_node
    from hetnet_ros.nodes.detector_node import DetectorNode

    images = tmp_path / 'images'
    images.mkdir()
    for defect_type in ('good', 'scratch_neck'):
        path = sorted((screw_root / 'test' / defect_type).glob('*.png'))[0]
        small = cv2.resize(cv2.imread(str(path)), (128, 128), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(images / f'{defect_type}.png'), small)

    harness = Harness(tmp_path, rate_hz=0.0, parameters={'capture_retry_s': 1.0},
                      fake_detector=False)
    try:
        camera = harness.add_node(CameraNode(context=harness.context, parameter_overrides=[
            Parameter('source', value=str(images)), Parameter('rate_hz', value=0.0)]))
        detector = harness.add_node(DetectorNode(context=harness.context, parameter_overrides=[
            Parameter('checkpoint', value=str(tiny_checkpoint)), Parameter('device', value='cpu')]))
        for node in (camera, detector):
            assert start_lifecycle_node(node), f'{node.get_name()} failed to start'
        harness.start()

        response = harness.client.result(harness.client.send('screw-real', ['top', 'front']))
        assert response.result.success, response.result.message
        report = response.result.report
        assert list(report.view_names) == ['top', 'front']
        assert report.model_id == detector.detector.model_id
        with RecordStore(harness.records) as store:
            (inspection,) = store.list_inspections(part_id='screw-real')
            views = store.list_views(inspection.id)
        assert [view.pose_name for view in views] == ['top', 'front']
        for view in views:
            assert view.image_path is not None, 'the camera image must be recorded'
            assert cv2.imread(str(view.image_path)).shape == (128, 128, 3)
            assert view.heatmap_path is not None, 'the detector heatmap must be recorded'
    finally:
        harness.close()


def test_invalid_parameter_rejected():
    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        with pytest.raises(InvalidParameterValueException, match='max_linear_vel_m_s'):
            InspectionNode(context=context, parameter_overrides=[
                Parameter('max_linear_vel_m_s', value=0.0)])
        with pytest.raises(InvalidParameterValueException, match="unknown robot_backend 'ur5'"):
            InspectionNode(context=context, parameter_overrides=[
                Parameter('robot_backend', value='ur5')])
    finally:
        rclpy.try_shutdown(context=context)


def test_invalid_poses_file_fails_configure(tmp_path):
    context = rclpy.Context()
    rclpy.init(context=context)
    bad = tmp_path / 'bad.yaml'
    bad.write_text('- {name: a, position: [0.5, 0.0]}\n')
    node = InspectionNode(context=context, parameter_overrides=[
        Parameter('poses_file', value=str(bad))])
    try:
        assert node.trigger_configure().to_label() == 'transition_failure'
        assert node._arm is None, 'a failed configure must release the arm'
    finally:
        node.destroy_node()
        rclpy.try_shutdown(context=context)
