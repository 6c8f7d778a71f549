"""Inspection node: drives the arm over inspection poses and judges one image per pose.

Serves the action `inspect_part` (hetnet_ros_msgs/InspectPart). For every pose
of the goal it moves the arm, waits until the arm has settled, and optionally
requests a frame through the camera's `capture` service. It then takes the
first `verdict` whose header stamp is later than the settle time, so that no
image taken while the arm still moved is judged. Each view is recorded as soon as it
is judged. At the end the node returns and publishes an InspectionReport.

Motion safety: before the first move of a goal, every pose of the goal is
checked against the workspace box (workspace_min_xyz_m, workspace_max_xyz_m),
and the move speed against linear_vel_limit_m_s and linear_acc_limit_m_s2. A
goal that fails is aborted without any motion, naming the pose. When a move
fails (fault, emergency stop, unreachable pose, timeout, lost connection) the
arm is stopped, the goal is aborted with the reason, and motion stays blocked.
Every later goal is aborted until the fault is cleared through the
`clear_fault` service. Nothing clears a fault automatically. Canceling a goal
stops the arm without blocking later goals.

Topics (relative names, remapped by the bringup):
    subscribes  verdict (hetnet_ros_msgs/DefectVerdict)
                image, heatmap (sensor_msgs/Image rgb8; only when recording)
    publishes   tool_pose (geometry_msgs/PoseStamped, in base_frame)
                inspection_report (hetnet_ros_msgs/InspectionReport, latched)
                /diagnostics (diagnostic_msgs/DiagnosticArray), once per second
    action      inspect_part (hetnet_ros_msgs/InspectPart)
    service     clear_fault (std_srvs/Trigger): clear a robot fault and unblock motion
    client      capture (std_srvs/Trigger; only when capture_service is set)

The node is a lifecycle node. With `autostart` (the default) it configures
and activates itself at start-up, because `ros2 lifecycle` is not available
everywhere it runs.
"""

import dataclasses
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
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
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
from rclpy.parameter import Parameter
from rclpy.qos import (
    DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data)
from sensor_msgs.msg import Image
from std_srvs.srv import Trigger

from hetnet_ros import imaging
from hetnet_ros.bringup import INSPECT_ACTION, package_config_path
from hetnet_ros.nodes.common import diagnostic_array, start_lifecycle_node
from hetnet_ros.poses import InspectionPose, PoseFileError, UnknownPoseError, load_poses, select_poses
from hetnet_ros.records import RecordError, RecordStore, Region, ViewVerdict
from hetnet_ros.robots import (
    BACKENDS, SIM_FAULTS, InvalidPoseError, InvalidSpeedError, MotionLimits, Pose, RobotArm,
    RobotError, RobotFaultError, SimulatedArm, create_arm)
from hetnet_ros.robots.guard import MotionGuard, check_targets

T = TypeVar('T')

# Maximum time between two checks for a cancel request or a shutdown during a wait.
WAIT_SLICE_S = 0.05
# Maximum time for a cancel callback, which stops the arm, to return.
CANCEL_ACCEPT_TIMEOUT_S = 10.0
# Messages kept per topic to match verdicts, images and heatmaps by stamp. Few
# images are kept because they are large. That is enough because the detector
# judges only the newest frame, so its verdicts trail the camera by about one frame.
VERDICT_BUFFER_LENGTH = 50
IMAGE_BUFFER_LENGTH = 8

STAGE_MOVING = 'moving'
STAGE_SETTLING = 'settling'
STAGE_CAPTURING = 'capturing'
STAGE_RECORDED = 'recorded'

DIAGNOSTICS_PERIOD_S = 1.0

# name: (default, description). Units are in the names and the descriptions.
PARAMETERS = {
    'robot_backend': ('sim', f'robot back-end, one of: {", ".join(BACKENDS)}'),
    'poses_file': ('', 'YAML file of inspection poses; empty uses config/poses.yaml of the package'),
    'max_linear_vel_m_s': (0.1, 'TCP velocity of every move, sent as the velocity limit (m/s)'),
    'max_linear_acc_m_s2': (0.5, 'TCP acceleration of every move, sent as the acceleration '
                                 'limit (m/s^2)'),
    'linear_vel_limit_m_s': (0.25, 'highest TCP velocity of the cell; moves asking for more are '
                                   'rejected before any motion (m/s)'),
    'linear_acc_limit_m_s2': (1.0, 'highest TCP acceleration of the cell; moves asking for more '
                                   'are rejected before any motion (m/s^2)'),
    'workspace_min_xyz_m': ([0.20, -0.40, 0.10],
                            'lower corner [x, y, z] of the box, in base_frame, that every target '
                            'position must lie in (m)'),
    'workspace_max_xyz_m': ([0.80, 0.40, 0.70],
                            'upper corner [x, y, z] of the box, in base_frame, that every target '
                            'position must lie in (m)'),
    'move_timeout_s': (30.0, 'maximum wall time of one move (s)'),
    'settle_time_s': (0.5, 'time the arm must stay still after a move before a frame counts (s)'),
    'settle_timeout_s': (5.0, 'maximum wall time to wait for the arm to settle after a move (s)'),
    'connect_timeout_s': (10.0, 'maximum time to connect to and enable the arm at configure (s)'),
    'clear_fault_timeout_s': (30.0, 'maximum time for the clear_fault service to reset and '
                                    'enable the arm (s)'),
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
    'sim_fault': ('none', "fault the 'sim' back-end injects in every goal, one of: "
                          f'{", ".join(SIM_FAULTS)}'),
    'sim_fault_at_pose': (0, 'index, within a goal, of the pose whose move gets sim_fault'),
    'flexiv_serial_number': ('', "serial number of the Flexiv robot, e.g. 'Rizon4s-123456' "
                                 "(robot_backend 'flexiv')"),
    'flexiv_network_interfaces': (Parameter.Type.STRING_ARRAY,
                                  "IPv4 addresses of this computer's interfaces on the robot "
                                  "network, e.g. ['192.168.2.100'] (robot_backend 'flexiv'; no "
                                  'default, so that the RDK never searches every interface)'),
    'autostart': (True, 'configure and activate at start-up without a lifecycle manager'),
}

_POSITIVE_PARAMETERS = (
    'max_linear_vel_m_s', 'max_linear_acc_m_s2', 'linear_vel_limit_m_s', 'linear_acc_limit_m_s2',
    'move_timeout_s', 'settle_timeout_s', 'connect_timeout_s', 'clear_fault_timeout_s',
    'verdict_timeout_s', 'match_timeout_s', 'capture_timeout_s', 'capture_retry_s',
    'tool_pose_rate_hz', 'sim_speed_factor')
_WORKSPACE_PARAMETERS = ('workspace_min_xyz_m', 'workspace_max_xyz_m')


class InspectionError(RuntimeError):
    """An inspection step failed; the message is returned to the action client."""


class _GoalCanceled(Exception):
    pass


@dataclass
class InspectionStats:
    """Counters of the inspection node since start, reported on /diagnostics."""

    goals_accepted: int = 0
    goals_rejected: int = 0
    goals_succeeded: int = 0
    goals_aborted: int = 0
    goals_canceled: int = 0
    views_recorded: int = 0
    motion_faults: int = 0
    faults_cleared: int = 0
    tool_poses_published: int = 0
    last_error: str = ''


def _is_xyz(value) -> bool:
    """True for 3 finite numbers; a list here, an array.array from a remote parameter set."""
    if isinstance(value, (str, bytes)) or not hasattr(value, '__len__') or len(value) != 3:
        return False
    return all(isinstance(number, (int, float)) and math.isfinite(number) for number in value)


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
        self._cancel_requested = threading.Event()
        self._clearing_fault = False
        self._active = False
        self._shutting_down = False
        # Blocks motion after a failed move until clear_fault succeeds; it is kept
        # across cleanup and configure, because only clear_fault may unblock it.
        self._guard = MotionGuard(
            clear_hint=f'call the {self.resolve_service_name("clear_fault")} service')
        self._lifecycle_state = 'unconfigured'

        self.stats = InspectionStats()
        self._stats_lock = threading.Lock()
        self._aborted_at_last_diagnostics = 0
        self._tool_poses_at_last_diagnostics = 0
        self._last_diagnostics_time = time.monotonic()

        # Action callbacks must run while a goal executes (cancel requests), and the
        # subscriptions must deliver verdicts while the goal waits for them.
        self._action_group = ReentrantCallbackGroup()
        self._topic_group = MutuallyExclusiveCallbackGroup()
        self._timer_group = MutuallyExclusiveCallbackGroup()
        self._entities: list = []
        self._action_server: Optional[ActionServer] = None
        self._capture_client = None
        self._clear_fault_service = None
        self._tool_pose_pub = None
        self._report_pub = None
        self._tool_pose_timer = None

        self._diagnostics_publisher = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self._diagnostics_timer = self.create_timer(
            DIAGNOSTICS_PERIOD_S, self._publish_diagnostics, callback_group=self._timer_group)

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
        self._lifecycle_state = 'inactive'
        return super().on_configure(state)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        rate_hz = self._float('tool_pose_rate_hz')
        self._tool_pose_timer = self.create_timer(
            1.0 / rate_hz, self._publish_tool_pose, callback_group=self._timer_group)
        self._active = True
        self._lifecycle_state = 'active'
        result = super().on_activate(state)
        self.get_logger().info('active: accepting inspect_part goals')
        return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active = False
        self._lifecycle_state = 'inactive'
        self._stop_arm()
        if self._tool_pose_timer is not None:
            self.destroy_timer(self._tool_pose_timer)
            self._tool_pose_timer = None
        self.get_logger().info('inactive: goals are rejected and the arm is stopped')
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self._lifecycle_state = 'unconfigured'
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.release()
        self._lifecycle_state = 'finalized'
        return super().on_shutdown(state)

    def stop_goals(self) -> None:
        """Stop the arm and make a running goal abort at its next check."""
        self._shutting_down = True
        self._active = False
        self._stop_arm()

    def release(self) -> None:
        """Abort any running goal, stop the arm and release it; safe to call twice."""
        self.stop_goals()
        self._wait_for_goal_end(timeout_s=5.0)
        self._release()

    def _configure(self) -> None:
        poses_file = self.get_parameter('poses_file').value or str(
            package_config_path('poses.yaml'))
        self._poses = load_poses(poses_file)

        limits = self._motion_limits()
        self._warn_poses_outside(limits)
        if self._given_arm is not None:
            self._arm = self._given_arm
            self._arm.set_limits(limits)
        else:
            self._arm = create_arm(**self._arm_options(limits))
        self._arm.connect(self._float('connect_timeout_s'))
        if self._arm.has_fault:
            self._block_motion(f'the robot arm reports a fault after connecting: '
                               f'{self._arm.fault_reason}')

        records_dir = self.get_parameter('records_dir').value
        if records_dir:
            self._store = RecordStore(records_dir)

        self._create_interfaces(record_images=bool(records_dir))

    def _arm_options(self, limits: MotionLimits) -> dict:
        """Return the create_arm() arguments of the configured back-end."""
        backend = self.get_parameter('robot_backend').value
        options = {'backend': backend, 'settle_time_s': self._float('settle_time_s'),
                   'limits': limits}
        if backend == 'sim':
            options['speed_factor'] = self._float('sim_speed_factor')
        elif backend == 'flexiv':
            options['serial_number'] = self.get_parameter('flexiv_serial_number').value
            interfaces = self.get_parameter_or('flexiv_network_interfaces', None).value
            if interfaces is None:
                raise ValueError(
                    'flexiv_network_interfaces is not set: give the IPv4 address of the '
                    "interface of this computer on the robot network, e.g. ['192.168.2.100']")
            options['network_interfaces'] = list(interfaces)
            options['default_linear_acc_m_s2'] = self._float('max_linear_acc_m_s2')
        if backend != 'sim' and self.get_parameter('sim_fault').value != 'none':
            self.get_logger().warning(
                f'sim_fault is ignored by robot backend {backend!r}')
        return options

    def _motion_limits(self) -> MotionLimits:
        """Build the workspace box and caps from the parameters; ValueError names a bad value."""
        return MotionLimits(
            workspace_min_xyz_m=tuple(self.get_parameter('workspace_min_xyz_m').value),
            workspace_max_xyz_m=tuple(self.get_parameter('workspace_max_xyz_m').value),
            linear_vel_limit_m_s=self._float('linear_vel_limit_m_s'),
            linear_acc_limit_m_s2=self._float('linear_acc_limit_m_s2'))

    def _warn_poses_outside(self, limits: MotionLimits) -> None:
        # Goals that use such a pose are rejected; the other poses stay usable.
        for pose in self._poses:
            try:
                limits.check_target(pose.pose, label=f'pose {pose.name!r}')
            except InvalidPoseError as error:
                self.get_logger().warning(f'{error}; goals that visit it will be rejected')
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

        self._clear_fault_service = self.create_service(
            Trigger, 'clear_fault', self._on_clear_fault, callback_group=self._action_group)

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
        if self._clear_fault_service is not None:
            self.destroy_service(self._clear_fault_service)
            self._clear_fault_service = None
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
            if parameter.name == 'sim_fault' and value not in SIM_FAULTS:
                return SetParametersResult(
                    successful=False,
                    reason=f'unknown sim_fault {value!r}; available: {", ".join(SIM_FAULTS)}')
            if parameter.name == 'sim_fault_at_pose' and not (
                    isinstance(value, int) and not isinstance(value, bool) and value >= 0):
                return SetParametersResult(
                    successful=False,
                    reason=f'sim_fault_at_pose must be an integer >= 0, got {value!r}')
            if parameter.name in _WORKSPACE_PARAMETERS and not _is_xyz(value):
                return SetParametersResult(
                    successful=False,
                    reason=f'{parameter.name} must be 3 finite numbers [x, y, z] in metres, '
                           f'got {value!r}')
        return SetParametersResult(successful=True)

    # Action server callbacks.

    def _on_goal(self, goal_request) -> GoalResponse:
        if not self._active:
            return self._reject_goal(goal_request, 'node is not active')
        with self._goal_lock:
            if self._goal_running:
                return self._reject_goal(goal_request, 'another inspection is running')
            if self._clearing_fault:
                return self._reject_goal(goal_request, 'a robot fault is being cleared')
            self._goal_running = True
            self._cancel_requested.clear()
        with self._stats_lock:
            self.stats.goals_accepted += 1
        return GoalResponse.ACCEPT

    def _reject_goal(self, goal_request, reason: str) -> GoalResponse:
        self.get_logger().error(f'rejected goal for part {goal_request.part_id!r}: {reason}')
        with self._stats_lock:
            self.stats.goals_rejected += 1
        return GoalResponse.REJECT

    def _on_cancel(self, goal_handle) -> CancelResponse:
        self.get_logger().info('cancel requested: stopping the arm')
        self._cancel_requested.set()
        self._stop_arm()
        return CancelResponse.ACCEPT

    def _on_clear_fault(self, request, response):
        """Clear the arm's fault on request and unblock motion; never moves the arm."""
        with self._goal_lock:
            if self._goal_running:
                response.success = False
                response.message = 'an inspection is running; cancel it before clearing a fault'
                return response
            self._clearing_fault = True
        try:
            response.success, response.message = self._clear_fault()
        finally:
            with self._goal_lock:
                self._clearing_fault = False
        # rclpy rejects one logging call site used with two severities, hence two calls.
        if response.success:
            self.get_logger().info(f'clear_fault: {response.message}')
        else:
            self.get_logger().error(f'clear_fault: {response.message}')
        return response

    def _clear_fault(self) -> tuple[bool, str]:
        arm = self._arm
        if arm is None:
            return False, 'the node is not configured, so there is no arm to clear'
        try:
            message = self._guard.clear(arm, self._float('connect_timeout_s'),
                                        self._float('clear_fault_timeout_s'))
        except RobotError as error:
            self._record_error(str(error))
            return False, f'the fault was not cleared, motion stays blocked: {error}'

        if message.startswith('fault cleared'):
            with self._stats_lock:
                self.stats.faults_cleared += 1
            message += '; the arm moves at the next inspect_part goal'
        return True, message

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
            self._raise_if_motion_blocked()
            plan = select_poses(self._poses, goal.pose_names)
            self._check_plan(plan)
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

    def _raise_if_motion_blocked(self) -> None:
        if self._guard.reason is None and self._arm.has_fault:
            self._block_motion(f'the robot arm reports a fault: {self._arm.fault_reason}')
        self._guard.raise_if_blocked(self._arm)

    def _check_plan(self, plan: Sequence[InspectionPose]) -> None:
        """Reject the goal before any motion when a pose or the move speed is out of limits."""
        limits = self._motion_limits()
        self._arm.set_limits(limits)
        try:
            check_targets(limits, [(pose.name, pose.pose) for pose in plan],
                          self._float('max_linear_vel_m_s'), self._float('max_linear_acc_m_s2'))
        except (InvalidPoseError, InvalidSpeedError) as error:
            raise InspectionError(f'goal rejected before any motion: {error}') from None

    def _inspect_view(self, goal_handle, report, inspection_id, index, count, pose) -> None:
        # Move; a cancel request stops the arm, which ends move_to early.
        self._send_feedback(goal_handle, index, count, pose.name, STAGE_MOVING)
        self._schedule_sim_fault(index)
        try:
            self._arm.move_to(
                pose.pose, self._float('max_linear_vel_m_s'), self._float('move_timeout_s'),
                max_linear_acc_m_s2=self._float('max_linear_acc_m_s2'))
        except (InvalidPoseError, InvalidSpeedError) as error:
            # Rejected by the arm's own checks before it moved.
            raise InspectionError(f'move to pose {pose.name!r} rejected: {error}') from error
        except RobotError as error:
            self._check_interrupted(goal_handle)
            self._stop_arm()
            message = f'move to pose {pose.name!r} failed: {error}'
            self._block_motion(message)
            raise RobotError(message) from error
        self._publish_tool_pose()

        self._send_feedback(goal_handle, index, count, pose.name, STAGE_SETTLING)
        try:
            self._wait(goal_handle, self._poll_settled,
                       self._float('settle_timeout_s'),
                       f'the arm to settle at pose {pose.name!r}')
        except RobotError as error:
            self._stop_arm()
            self._block_motion(str(error))
            raise
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
        with self._stats_lock:
            self.stats.views_recorded += 1

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
        with self._stats_lock:
            if status == 'succeeded':
                self.stats.goals_succeeded += 1
            elif status == 'canceled':
                self.stats.goals_canceled += 1
            else:
                self.stats.goals_aborted += 1
                self.stats.last_error = message
        if status == 'succeeded':
            if self._report_pub is not None:
                self._report_pub.publish(report)
            goal_handle.succeed()
            self.get_logger().info(
                f'part {report.part_id!r}: {"ANOMALOUS" if is_anomalous else "normal"} '
                f'(worst view {worst_index}, pred_score {worst_score:.3f})')
        elif status == 'canceled':
            # The goal can end as canceled only once the cancel callback has returned.
            deadline = time.monotonic() + CANCEL_ACCEPT_TIMEOUT_S
            while not goal_handle.is_cancel_requested and time.monotonic() < deadline:
                time.sleep(WAIT_SLICE_S / 5)
            if goal_handle.is_cancel_requested:
                goal_handle.canceled()
                self.get_logger().info(f'inspection of part {report.part_id!r} canceled')
            else:
                goal_handle.abort()
                self.get_logger().error(
                    f'inspection of part {report.part_id!r} aborted: the cancel request was '
                    f'not accepted within {CANCEL_ACCEPT_TIMEOUT_S:.0f} s')
        else:
            self._stop_arm()
            goal_handle.abort()
            self.get_logger().error(f'inspection of part {report.part_id!r} aborted: {message}')
        return result

    # Steps of one view.

    def _schedule_sim_fault(self, index: int) -> None:
        fault = self.get_parameter('sim_fault').value
        if (fault == 'none' or not isinstance(self._arm, SimulatedArm)
                or index != self.get_parameter('sim_fault_at_pose').value):
            return
        self.get_logger().warning(f'injecting simulated fault {fault!r} into the move to pose '
                                  f'index {index}')
        self._arm.schedule_fault(fault)

    def _block_motion(self, reason: str) -> None:
        """Block every later goal until clear_fault; the first reason is kept."""
        if self._guard.block(reason):
            with self._stats_lock:
                self.stats.motion_faults += 1
            self.get_logger().error(
                f'motion blocked: {reason}; call {self.resolve_service_name("clear_fault")} '
                'after checking the cell')
        self._record_error(reason)

    def _record_error(self, message: str) -> None:
        with self._stats_lock:
            self.stats.last_error = message

    def _stop_arm(self) -> None:
        arm = self._arm
        if arm is None:
            return
        try:
            arm.stop()
        except RobotError as error:
            self.get_logger().error(f'failed to stop the robot arm: {error}')

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
        # The cancel callback sets the flag before it stops the arm, so before rclpy
        # marks the goal as canceling. That lets a requested stop count as a cancel.
        if goal_handle.is_cancel_requested or self._cancel_requested.is_set():
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
        with self._stats_lock:
            self.stats.tool_poses_published += 1

    def _publish_diagnostics(self) -> None:
        now = time.monotonic()
        period_s = max(1e-3, now - self._last_diagnostics_time)
        self._last_diagnostics_time = now
        with self._stats_lock:
            stats = dataclasses.replace(self.stats)
        new_aborts = stats.goals_aborted - self._aborted_at_last_diagnostics
        self._aborted_at_last_diagnostics = stats.goals_aborted
        tool_pose_rate_hz = (stats.tool_poses_published
                             - self._tool_poses_at_last_diagnostics) / period_s
        self._tool_poses_at_last_diagnostics = stats.tool_poses_published

        arm = self._arm
        connected = arm is not None and arm.is_connected
        blocked_by = self._guard.reason
        if blocked_by is not None:
            level = DiagnosticStatus.ERROR
            message = f'motion blocked until clear_fault: {blocked_by}'
        elif arm is not None and not connected:
            level, message = DiagnosticStatus.ERROR, 'robot arm not connected'
        elif arm is not None and arm.has_fault:
            level, message = DiagnosticStatus.ERROR, f'robot arm fault: {arm.fault_reason}'
        elif new_aborts:
            level = DiagnosticStatus.WARN
            message = f'{new_aborts} goals aborted in the last period: {stats.last_error}'
        else:
            level, message = DiagnosticStatus.OK, self._lifecycle_state

        values = dataclasses.asdict(stats)
        values.update({
            'state': self._lifecycle_state,
            'robot_backend': self.get_parameter('robot_backend').value,
            'arm_connected': connected,
            'motion_blocked_by': blocked_by or '',
            'goal_running': self._goal_running,
            'tool_pose_rate_hz': f'{tool_pose_rate_hz:.2f}',
        })
        hardware_id = self.get_parameter('robot_backend').value
        if hardware_id == 'flexiv':
            hardware_id = self.get_parameter('flexiv_serial_number').value
        self._diagnostics_publisher.publish(diagnostic_array(
            self.get_clock().now().to_msg(), f'{self.get_fully_qualified_name()}: inspection',
            hardware_id, level, message, values))

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
