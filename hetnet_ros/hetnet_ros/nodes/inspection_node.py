"""Inspection node: drives the arm over inspection poses and judges one image per pose.

Serves the action `inspect_part` (hetnet_ros_msgs/InspectPart). For every pose
of the goal it moves the arm, waits until the arm has settled, and optionally
requests a frame through the camera's `capture` service. It then takes the
first `verdict` whose header stamp is later than the settle time, so that no
image taken while the arm still moved is judged. Each view is recorded as soon as it
is judged. At the end the node returns and publishes an InspectionReport.

Topics (relative names, remapped by the bringup):
    subscribes  verdict (hetnet_ros_msgs/DefectVerdict)
                image, heatmap (sensor_msgs/Image rgb8; only when recording)
    publishes   tool_pose (geometry_msgs/PoseStamped, in base_frame)
                inspection_report (hetnet_ros_msgs/InspectionReport, latched)
    action      inspect_part (hetnet_ros_msgs/InspectPart)
    client      capture (std_srvs/Trigger; only when capture_service is set)

The node is a lifecycle node. With `autostart` (the default) it configures
and activates itself at start-up, because `ros2 lifecycle` is not available
everywhere it runs.
"""

import itertools
import math
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, TypeVar

import rclpy
from builtin_interfaces.msg import Time as TimeMsg
from geometry_msgs.msg import Pose as PoseMsg
from geometry_msgs.msg import PoseStamped
from hetnet_ros_msgs.action import InspectPart
from hetnet_ros_msgs.msg import DefectVerdict, InspectionReport
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.logging import get_logger
from rclpy.qos import (
    DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data)
from sensor_msgs.msg import Image
from std_srvs.srv import Trigger

from hetnet_ros import imaging
from hetnet_ros.bringup import INSPECT_ACTION, package_config_path
from hetnet_ros.nodes.common import start_lifecycle_node
from hetnet_ros.poses import InspectionPose, PoseFileError, UnknownPoseError, load_poses, select_poses
from hetnet_ros.records import RecordError, RecordStore, Region, ViewVerdict
from hetnet_ros.robots import BACKENDS, Pose, RobotArm, RobotError, RobotFaultError, create_arm

T = TypeVar('T')

# Maximum time between two checks for a cancel request or a shutdown during a wait.
WAIT_SLICE_S = 0.05
# Messages kept per topic to match verdicts, images and heatmaps by stamp. Few
# images are kept because they are large. That is enough because the detector
# judges only the newest frame, so its verdicts trail the camera by about one frame.
VERDICT_BUFFER_LENGTH = 50
IMAGE_BUFFER_LENGTH = 8

STAGE_MOVING = 'moving'
STAGE_SETTLING = 'settling'
STAGE_CAPTURING = 'capturing'
STAGE_RECORDED = 'recorded'

# name: (default, description). Units are in the names and the descriptions.
PARAMETERS = {
    'robot_backend': ('sim', f'robot back-end, one of: {", ".join(BACKENDS)}'),
    'poses_file': ('', 'YAML file of inspection poses; empty uses config/poses.yaml of the package'),
    'max_linear_vel_m_s': (0.1, 'TCP speed limit of every move (m/s)'),
    'move_timeout_s': (30.0, 'maximum wall time of one move (s)'),
    'settle_time_s': (0.5, 'time the arm must stay still after a move before a frame counts (s)'),
    'settle_timeout_s': (5.0, 'maximum wall time to wait for the arm to settle after a move (s)'),
    'connect_timeout_s': (10.0, 'maximum time to connect to the arm at configure (s)'),
    'verdict_timeout_s': (10.0, 'maximum wall time to wait for a verdict after settling (s)'),
    'match_timeout_s': (1.0,
                        'maximum wall time to wait for the image and heatmap of a verdict (s)'),
    'capture_service': ('', "Trigger service to request a frame after settling, e.g. 'capture'; "
                            'empty when the camera streams'),
    'capture_timeout_s': (5.0, 'maximum wall time for the capture service to answer (s)'),
    'capture_retry_s': (3.0, 'wall time without a verdict after which another frame is '
                             'requested from the capture service (s)'),
    'records_dir': ('', 'folder of the records database and images; empty disables recording'),
    'base_frame': ('base_link', 'frame of tool_pose and of the report poses'),
    'tool_pose_rate_hz': (10.0, 'publishing rate of tool_pose (Hz)'),
    'sim_speed_factor': (1.0, "simulated seconds per wall second of the 'sim' back-end"),
    'autostart': (True, 'configure and activate at start-up without a lifecycle manager'),
}

_POSITIVE_PARAMETERS = (
    'max_linear_vel_m_s', 'move_timeout_s', 'settle_timeout_s', 'connect_timeout_s',
    'verdict_timeout_s', 'match_timeout_s', 'capture_timeout_s', 'capture_retry_s',
    'tool_pose_rate_hz', 'sim_speed_factor')


class InspectionError(RuntimeError):
    """An inspection step failed; the message is returned to the action client."""


class _GoalCanceled(Exception):
    pass


def stamp_to_ns(stamp: TimeMsg) -> int:
    return stamp.sec * 1_000_000_000 + stamp.nanosec


def pose_to_msg(pose: Pose) -> PoseMsg:
    msg = PoseMsg()
    msg.position.x, msg.position.y, msg.position.z = pose.position
    (msg.orientation.x, msg.orientation.y, msg.orientation.z,
     msg.orientation.w) = pose.orientation
    return msg


def summarize_views(views: Sequence[DefectVerdict]) -> tuple[bool, int, float]:
    """Return (part is anomalous, worst view index or -1, worst pred_score) of the views."""
    if not views:
        return False, -1, 0.0
    worst_index = max(range(len(views)), key=lambda index: views[index].pred_score)
    is_anomalous = any(view.is_anomalous for view in views)
    return is_anomalous, worst_index, float(views[worst_index].pred_score)


def verdict_to_record(msg: DefectVerdict) -> ViewVerdict:
    regions = tuple(
        Region(int(roi.x_offset), int(roi.y_offset), int(roi.width), int(roi.height),
               float(score))
        for roi, score in zip(msg.anomalous_regions, msg.region_scores))
    return ViewVerdict(
        pred_score=float(msg.pred_score),
        raw_score=float(msg.raw_score),
        threshold=float(msg.threshold),
        is_anomalous=bool(msg.is_anomalous),
        inference_time_s=float(msg.inference_time_s),
        model_id=msg.model_id,
        stamp_s=stamp_to_ns(msg.header.stamp) / 1e9,
        regions=regions)


@dataclass
class _Judgement:
    """A verdict with the image and heatmap of the same stamp, where they arrived."""

    verdict: DefectVerdict
    image: Optional[Image] = None
    heatmap: Optional[Image] = None
    missing: list = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.missing


class StampedBuffer:
    """The newest messages of one topic, looked up by header stamp; thread-safe."""

    def __init__(self, maxlen: int) -> None:
        self._items: deque = deque(maxlen=maxlen)
        self._condition = threading.Condition()

    def add(self, msg) -> None:
        with self._condition:
            self._items.append((stamp_to_ns(msg.header.stamp), msg))
            self._condition.notify_all()

    def first_after(self, stamp_ns: int):
        """Return the message with the earliest stamp later than `stamp_ns`, or None."""
        with self._condition:
            later = [item for item in self._items if item[0] > stamp_ns]
        return min(later, key=lambda item: item[0])[1] if later else None

    def find(self, stamp_ns: int):
        """Return the newest message stamped exactly `stamp_ns`, or None."""
        with self._condition:
            for item_stamp, msg in reversed(self._items):
                if item_stamp == stamp_ns:
                    return msg
        return None

    def wait(self, select: Callable[['StampedBuffer'], T], timeout_s: float) -> Optional[T]:
        """Wait up to `timeout_s` until `select(self)` returns a message, and return it."""
        with self._condition:
            return self._condition.wait_for(lambda: select(self), timeout_s) or None


class InspectionNode(LifecycleNode):
    """Lifecycle node 'inspection'; see the module docstring.

    Args:
        arm: an unconnected arm to use instead of creating one from `robot_backend`
            (tests pass a SimulatedArm to inject faults). The node connects it.
    """

    def __init__(self, arm: Optional[RobotArm] = None, **kwargs) -> None:
        super().__init__('inspection', **kwargs)
        # Registered first so that values given at start-up are validated too.
        self.add_on_set_parameters_callback(self._validate_parameters)
        for name, (default, description) in PARAMETERS.items():
            # Float parameters also accept integers (-p move_timeout_s:=30); the
            # validation callback checks that they are numbers.
            self.declare_parameter(name, default, ParameterDescriptor(
                description=description, dynamic_typing=isinstance(default, float)))

        self._given_arm = arm
        self._arm: Optional[RobotArm] = None
        self._poses: list[InspectionPose] = []
        self._store: Optional[RecordStore] = None
        self._verdicts = StampedBuffer(VERDICT_BUFFER_LENGTH)
        self._images = StampedBuffer(IMAGE_BUFFER_LENGTH)
        self._heatmaps = StampedBuffer(IMAGE_BUFFER_LENGTH)

        self._goal_lock = threading.Lock()
        self._goal_running = False
        self._active = False
        self._shutting_down = False

        # Action callbacks must run while a goal executes (cancel requests), and the
        # subscriptions must deliver verdicts while the goal waits for them.
        self._action_group = ReentrantCallbackGroup()
        self._topic_group = MutuallyExclusiveCallbackGroup()
        self._timer_group = MutuallyExclusiveCallbackGroup()
        self._entities: list = []
        self._action_server: Optional[ActionServer] = None
        self._capture_client = None
        self._tool_pose_pub = None
        self._report_pub = None
        self._tool_pose_timer = None

    # Lifecycle transitions.

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._configure()
        except (PoseFileError, RobotError, RecordError, ValueError, OSError) as error:
            self.get_logger().error(f'configure failed: {error}')
            self._release()
            return TransitionCallbackReturn.FAILURE
        except Exception as error:  # noqa: BLE001
            # rclpy turns an exception in a transition into an error state without
            # logging it, so log it here.
            self.get_logger().error(f'configure failed: {type(error).__name__}: {error}')
            self._release()
            return TransitionCallbackReturn.FAILURE
        self.get_logger().info(
            f'configured: {len(self._poses)} poses ({", ".join(p.name for p in self._poses)}), '
            f'robot backend {self.get_parameter("robot_backend").value!r}, records '
            f'{self._store.root if self._store else "disabled"}')
        return super().on_configure(state)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        rate_hz = self._float('tool_pose_rate_hz')
        self._tool_pose_timer = self.create_timer(
            1.0 / rate_hz, self._publish_tool_pose, callback_group=self._timer_group)
        self._active = True
        result = super().on_activate(state)
        self.get_logger().info('active: accepting inspect_part goals')
        return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active = False
        if self._arm is not None:
            self._arm.stop()
        if self._tool_pose_timer is not None:
            self.destroy_timer(self._tool_pose_timer)
            self._tool_pose_timer = None
        self.get_logger().info('inactive: goals are rejected and the arm is stopped')
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.release()
        return super().on_shutdown(state)

    def stop_goals(self) -> None:
        """Stop the arm and make a running goal abort at its next check."""
        self._shutting_down = True
        self._active = False
        if self._arm is not None:
            self._arm.stop()

    def release(self) -> None:
        """Abort any running goal, stop the arm and release it; safe to call twice."""
        self.stop_goals()
        self._wait_for_goal_end(timeout_s=5.0)
        self._release()

    def _configure(self) -> None:
        poses_file = self.get_parameter('poses_file').value or str(
            package_config_path('poses.yaml'))
        self._poses = load_poses(poses_file)

        if self._given_arm is not None:
            self._arm = self._given_arm
        else:
            backend = self.get_parameter('robot_backend').value
            options = {'settle_time_s': self._float('settle_time_s')}
            if backend == 'sim':
                options['speed_factor'] = self._float('sim_speed_factor')
            self._arm = create_arm(backend, **options)
        self._arm.connect(self._float('connect_timeout_s'))

        records_dir = self.get_parameter('records_dir').value
        if records_dir:
            self._store = RecordStore(records_dir)

        self._create_interfaces(record_images=bool(records_dir))

    def _create_interfaces(self, record_images: bool) -> None:
        latched = QoSProfile(
            depth=1, reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self._tool_pose_pub = self.create_lifecycle_publisher(PoseStamped, 'tool_pose', 10)
        self._report_pub = self.create_lifecycle_publisher(
            InspectionReport, 'inspection_report', latched)

        self._entities.append(self.create_subscription(
            DefectVerdict, 'verdict', self._verdicts.add, 10, callback_group=self._topic_group))
        if record_images:
            # The camera streams best effort. The detector publishes reliably, and a
            # reliable subscription keeps large heatmaps from being lost.
            self._entities.append(self.create_subscription(
                Image, 'image', self._images.add, qos_profile_sensor_data,
                callback_group=self._topic_group))
            self._entities.append(self.create_subscription(
                Image, 'heatmap', self._heatmaps.add, 2, callback_group=self._topic_group))

        capture_service = self.get_parameter('capture_service').value
        if capture_service:
            self._capture_client = self.create_client(
                Trigger, capture_service, callback_group=self._action_group)

        self._action_server = ActionServer(
            self, InspectPart, INSPECT_ACTION,
            execute_callback=self._execute,
            goal_callback=self._on_goal,
            cancel_callback=self._on_cancel,
            callback_group=self._action_group)

    def _release(self) -> None:
        """Destroy what configure created; the node returns to unconfigured."""
        if self._action_server is not None:
            self._action_server.destroy()
            self._action_server = None
        for entity in self._entities:
            self.destroy_subscription(entity)
        self._entities.clear()
        if self._capture_client is not None:
            self.destroy_client(self._capture_client)
            self._capture_client = None
        for publisher in (self._tool_pose_pub, self._report_pub):
            if publisher is not None:
                self.destroy_lifecycle_publisher(publisher)
        self._tool_pose_pub = self._report_pub = None
        if self._tool_pose_timer is not None:
            self.destroy_timer(self._tool_pose_timer)
            self._tool_pose_timer = None
        if self._arm is not None:
            self._arm.disconnect()
            self._arm = None
        if self._store is not None:
            self._store.close()
            self._store = None

    def _validate_parameters(self, parameters) -> SetParametersResult:
        for parameter in parameters:
            value = parameter.value
            is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if parameter.name in _POSITIVE_PARAMETERS and not (
                    is_number and math.isfinite(value) and value > 0):
                return SetParametersResult(
                    successful=False,
                    reason=f'{parameter.name} must be a finite number > 0, got {value!r}')
            if parameter.name == 'settle_time_s' and not (
                    is_number and math.isfinite(value) and value >= 0):
                return SetParametersResult(
                    successful=False, reason=f'settle_time_s must be >= 0 seconds, got {value!r}')
            if parameter.name == 'robot_backend' and value not in BACKENDS:
                return SetParametersResult(
                    successful=False,
                    reason=f'unknown robot_backend {value!r}; available: {", ".join(BACKENDS)}')
        return SetParametersResult(successful=True)

    # Action server callbacks.

    def _on_goal(self, goal_request) -> GoalResponse:
        if not self._active:
            self.get_logger().error(
                f'rejected goal for part {goal_request.part_id!r}: node is not active')
            return GoalResponse.REJECT
        with self._goal_lock:
            if self._goal_running:
                self.get_logger().error(
                    f'rejected goal for part {goal_request.part_id!r}: '
                    'another inspection is running')
                return GoalResponse.REJECT
            self._goal_running = True
        return GoalResponse.ACCEPT

    def _on_cancel(self, goal_handle) -> CancelResponse:
        self.get_logger().info('cancel requested: stopping the arm')
        if self._arm is not None:
            self._arm.stop()
        return CancelResponse.ACCEPT

    def _execute(self, goal_handle) -> InspectPart.Result:
        try:
            return self._run_inspection(goal_handle)
        finally:
            with self._goal_lock:
                self._goal_running = False

    def _run_inspection(self, goal_handle) -> InspectPart.Result:
        goal = goal_handle.request
        report = InspectionReport()
        report.part_id = goal.part_id
        report.header.frame_id = self.get_parameter('base_frame').value
        report.started = self.get_clock().now().to_msg()
        inspection_id = None

        try:
            if not goal.part_id:
                raise InspectionError('part_id is empty; give the identifier of the part')
            plan = select_poses(self._poses, goal.pose_names)
            self.get_logger().info(
                f'inspecting part {goal.part_id!r} over {len(plan)} poses')
            if self._store is not None:
                row = self._store.start_inspection(goal.part_id, len(plan))
                inspection_id = row.id
                report.records_path = str(row.path)

            for index, pose in enumerate(plan):
                self._inspect_view(goal_handle, report, inspection_id, index, len(plan), pose)
        except _GoalCanceled:
            return self._end_goal(goal_handle, report, inspection_id, 'canceled',
                                  'canceled by the client; the arm was stopped')
        except (UnknownPoseError, InspectionError, RobotError, RecordError) as error:
            return self._end_goal(goal_handle, report, inspection_id, 'failed', str(error))
        except Exception as error:  # noqa: BLE001 - a goal must end, and the node must not die
            self.get_logger().error(f'unexpected error while inspecting {goal.part_id!r}: '
                                    f'{type(error).__name__}: {error}')
            return self._end_goal(goal_handle, report, inspection_id, 'failed',
                                  f'internal error: {type(error).__name__}: {error}')
        return self._end_goal(goal_handle, report, inspection_id, 'succeeded', '')

    def _inspect_view(self, goal_handle, report, inspection_id, index, count, pose) -> None:
        # Move; a cancel request stops the arm, which ends move_to early.
        self._send_feedback(goal_handle, index, count, pose.name, STAGE_MOVING)
        try:
            self._arm.move_to(
                pose.pose, self._float('max_linear_vel_m_s'), self._float('move_timeout_s'))
        except RobotError as error:
            self._check_interrupted(goal_handle)
            raise RobotError(f'move to pose {pose.name!r} failed: {error}') from error
        self._publish_tool_pose()

        self._send_feedback(goal_handle, index, count, pose.name, STAGE_SETTLING)
        self._wait(goal_handle, self._poll_settled,
                   self._float('settle_timeout_s'),
                   f'the arm to settle at pose {pose.name!r}')
        settled_ns = self.get_clock().now().nanoseconds
        reached = self._arm.current_pose()
        self.get_logger().info(f'pose {pose.name!r} reached and settled')

        self._send_feedback(goal_handle, index, count, pose.name, STAGE_CAPTURING)
        judgement = self._judge_view(goal_handle, settled_ns, pose.name)
        verdict = judgement.verdict

        report.views.append(verdict)
        report.view_names.append(pose.name)
        report.view_poses.append(pose_to_msg(reached))
        if inspection_id is not None:
            self._record_view(inspection_id, index, pose.name, reached, judgement)

        self.get_logger().info(
            f'view {index} ({pose.name}): pred_score {verdict.pred_score:.3f}, '
            f'{"anomalous" if verdict.is_anomalous else "normal"}')
        self._send_feedback(goal_handle, index, count, pose.name, STAGE_RECORDED, verdict)

    def _end_goal(self, goal_handle, report, inspection_id, status, message):
        is_anomalous, worst_index, worst_score = summarize_views(report.views)
        report.is_anomalous = is_anomalous
        report.worst_view_index = worst_index
        report.worst_score = worst_score
        model_ids = sorted({view.model_id for view in report.views})
        report.model_id = ','.join(model_ids)
        report.header.stamp = self.get_clock().now().to_msg()
        if len(model_ids) > 1:
            self.get_logger().warning(f'views of part {report.part_id!r} were judged by '
                                      f'several models: {model_ids}')

        if inspection_id is not None:
            try:
                self._store.finish_inspection(
                    inspection_id, status, message,
                    is_anomalous=is_anomalous if status == 'succeeded' else None,
                    worst_view_index=worst_index, worst_score=worst_score,
                    model_id=report.model_id)
            except RecordError as error:
                self.get_logger().error(f'inspection {inspection_id}: {error}')
                if status == 'succeeded':
                    status, message = 'failed', str(error)

        result = InspectPart.Result(success=status == 'succeeded', message=message, report=report)
        if status == 'succeeded':
            if self._report_pub is not None:
                self._report_pub.publish(report)
            goal_handle.succeed()
            self.get_logger().info(
                f'part {report.part_id!r}: {"ANOMALOUS" if is_anomalous else "normal"} '
                f'(worst view {worst_index}, pred_score {worst_score:.3f})')
        elif status == 'canceled':
            goal_handle.canceled()
            self.get_logger().info(f'inspection of part {report.part_id!r} canceled')
        else:
            if self._arm is not None:
                self._arm.stop()
            goal_handle.abort()
            self.get_logger().error(f'inspection of part {report.part_id!r} aborted: {message}')
        return result

    # Steps of one view.

    def _poll_settled(self, slice_s: float) -> bool:
        if self._arm.has_fault:
            raise RobotFaultError(f'robot arm fault while settling: {self._arm.fault_reason}')
        if self._arm.is_settled():
            return True
        time.sleep(slice_s)
        return self._arm.is_settled()

    def _judge_view(self, goal_handle, settled_ns: int, pose_name: str) -> '_Judgement':
        """Return the first verdict on an image stamped after `settled_ns`, with its images.

        With a capture service, a frame is requested first, and requested again every
        capture_retry_s without a verdict, because the camera sends no other frame
        unless asked. When recording, a verdict whose image or heatmap did not arrive
        within match_timeout_s is passed over for the next one, because large
        best-effort images can be lost. If no complete view arrives before
        verdict_timeout_s, the first verdict is used without the missing images.
        """
        timeout_s = self._float('verdict_timeout_s')
        retry_s = self._float('capture_retry_s')
        deadline = time.monotonic() + timeout_s
        awaited = (f'a verdict on an image taken after settling at pose {pose_name!r}; '
                   'check that the camera and detector nodes run and publish on the remapped '
                   'topics')
        after_ns = settled_ns
        fallback: Optional[_Judgement] = None

        for attempt in itertools.count(1):
            if self._capture_client is not None:
                self._request_capture(goal_handle, pose_name)
                wait_s = min(retry_s, deadline - time.monotonic())
            else:
                wait_s = deadline - time.monotonic()

            def poll(slice_s: float, after_ns=after_ns):
                return self._verdicts.wait(lambda buffer: buffer.first_after(after_ns), slice_s)

            try:
                verdict = self._wait(goal_handle, poll, max(WAIT_SLICE_S, wait_s), awaited)
            except InspectionError:
                if self._capture_client is not None and time.monotonic() < deadline:
                    self.get_logger().warning(
                        f'no verdict {retry_s:.1f} s after capture request {attempt} at pose '
                        f'{pose_name!r}; requesting another frame')
                    continue
                if fallback is not None:
                    return fallback
                raise InspectionError(
                    f'timed out after {timeout_s:.1f} s ({attempt} attempts) waiting for '
                    f'{awaited}') from None

            judgement = self._match_images(verdict)
            if judgement.complete or time.monotonic() >= deadline:
                return judgement if judgement.complete or fallback is None else fallback
            if fallback is None:
                fallback = judgement
            after_ns = stamp_to_ns(verdict.header.stamp)
            self.get_logger().warning(
                f'the {" and ".join(judgement.missing)} of the verdict at pose {pose_name!r} '
                'did not arrive; using the next frame')

    def _match_images(self, verdict: DefectVerdict) -> '_Judgement':
        """Collect the image and heatmap stamped like `verdict` (only when recording).

        A topic without any publisher is skipped without counting as missing, so that
        a graph without heatmaps is not delayed at every view.
        """
        judgement = _Judgement(verdict)
        if self._store is None:
            return judgement
        stamp_ns = stamp_to_ns(verdict.header.stamp)
        deadline = time.monotonic() + self._float('match_timeout_s')
        for topic, buffer in (('image', self._images), ('heatmap', self._heatmaps)):
            msg = buffer.find(stamp_ns)
            if msg is None:
                if self.count_publishers(self.resolve_topic_name(topic)) == 0:
                    self.get_logger().warning(
                        f'no publisher on {self.resolve_topic_name(topic)}; views are '
                        f'recorded without their {topic}', throttle_duration_sec=60.0)
                    continue
                msg = buffer.wait(lambda b: b.find(stamp_ns),
                                  max(0.0, deadline - time.monotonic()))
            if msg is None:
                judgement.missing.append(topic)
            setattr(judgement, topic, msg)
        return judgement

    def _request_capture(self, goal_handle, pose_name: str) -> None:
        client = self._capture_client
        timeout_s = self._float('capture_timeout_s')
        self._wait(goal_handle, lambda slice_s: client.wait_for_service(slice_s), timeout_s,
                   f'the capture service {client.srv_name!r} to be available')

        done = threading.Event()
        future = client.call_async(Trigger.Request())
        future.add_done_callback(lambda _: done.set())
        try:
            self._wait(goal_handle, done.wait, timeout_s,
                       f'the capture service {client.srv_name!r} at pose {pose_name!r}')
        except (InspectionError, _GoalCanceled):
            client.remove_pending_request(future)
            raise
        response = future.result()
        if response is None or not response.success:
            detail = response.message if response is not None else 'no response'
            raise InspectionError(
                f'capture service {client.srv_name!r} failed at pose {pose_name!r}: {detail}')

    def _record_view(self, inspection_id, index, pose_name, reached, judgement) -> None:
        if judgement.missing:
            self.get_logger().warning(
                f'view {index} ({pose_name}) is recorded without its '
                f'{" and ".join(judgement.missing)}')
        self._store.add_view(
            inspection_id, index, pose_name, reached, verdict_to_record(judgement.verdict),
            image=self._decode(judgement.image, 'image'),
            heatmap=self._decode(judgement.heatmap, 'heatmap'))

    def _decode(self, msg: Optional[Image], topic: str):
        if msg is None:
            return None
        try:
            return imaging.decode_image(
                msg.encoding, msg.height, msg.width, msg.step, msg.data, bool(msg.is_bigendian))
        except imaging.ImageDecodeError as error:
            self.get_logger().warning(f'cannot record the {topic}: {error}',
                                      throttle_duration_sec=10.0)
            return None

    # Helpers.

    def _float(self, name: str) -> float:
        return float(self.get_parameter(name).value)

    def _wait(self, goal_handle, poll: Callable[[float], T], timeout_s: float, awaited: str) -> T:
        """Call `poll(slice_s)` until it returns a true value, checking for a cancel in between.

        Raises:
            InspectionError: after `timeout_s` without a result, naming `awaited`.
            _GoalCanceled: when the client cancels the goal.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            self._check_interrupted(goal_handle)
            remaining = deadline - time.monotonic()
            result = poll(max(0.0, min(WAIT_SLICE_S, remaining)))
            if result:
                return result
            if remaining <= 0.0:
                raise InspectionError(f'timed out after {timeout_s:.1f} s waiting for {awaited}')

    def _check_interrupted(self, goal_handle) -> None:
        if goal_handle.is_cancel_requested:
            raise _GoalCanceled()
        if self._shutting_down or not self._active:
            raise InspectionError('the inspection node was deactivated or is shutting down')

    def _send_feedback(self, goal_handle, index, count, pose_name, stage, verdict=None) -> None:
        feedback = InspectPart.Feedback(
            view_index=index, view_count=count, pose_name=pose_name, stage=stage)
        if verdict is not None:
            feedback.last_verdict = verdict
        goal_handle.publish_feedback(feedback)

    def _publish_tool_pose(self) -> None:
        arm, publisher = self._arm, self._tool_pose_pub
        if arm is None or publisher is None:
            return
        try:
            pose = arm.current_pose()
        except RobotError as error:
            self.get_logger().warning(f'cannot read the tool pose: {error}',
                                      throttle_duration_sec=10.0)
            return
        msg = PoseStamped()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.header.frame_id = self.get_parameter('base_frame').value
        msg.pose = pose_to_msg(pose)
        publisher.publish(msg)

    def _wait_for_goal_end(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._goal_lock:
                if not self._goal_running:
                    return
            time.sleep(WAIT_SLICE_S)
        self.get_logger().warning(f'a goal was still running {timeout_s:.1f} s after shutdown')


def main(args=None) -> int:
    rclpy.init(args=args)
    executor = MultiThreadedExecutor(num_threads=4)
    node = None
    exit_code = 0
    try:
        node = InspectionNode()
        executor.add_node(node)
        if node.get_parameter('autostart').value and not start_lifecycle_node(node):
            exit_code = 1
        else:
            executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception as error:  # noqa: BLE001 - report why the node could not start
        # Invalid parameter values given at start-up end up here.
        get_logger('inspection').error(f'inspection node failed: {type(error).__name__}: {error}')
        exit_code = 1
    finally:
        if node is not None:
            node.stop_goals()
            executor.shutdown(timeout_sec=5.0)
            node.release()
            node.destroy_node()
        rclpy.try_shutdown()
    return exit_code


if __name__ == '__main__':
    sys.exit(main())
