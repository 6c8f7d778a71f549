"""hetnet-inspect: start the inspection graph as processes and optionally inspect one part.

This is the launcher for machines without `ros2 launch`. It starts the nodes
of `hetnet_ros.bringup.inspection_graph()` as child processes
(`python -m <module> --ros-args ...`), waits until the graph is ready, and then
either sends one `inspect_part` goal (`--part-id`) or runs until Ctrl-C.

Child processes run in their own process groups, so a Ctrl-C in the terminal
reaches only the launcher, which stops them in order: SIGINT, then SIGTERM,
then SIGKILL, each after a timeout. On Linux every child also gets SIGTERM
from the kernel if the launcher itself dies (PR_SET_PDEATHSIG).

Exit codes: 0 success, 1 a node died or the inspection failed or timed out,
2 invalid arguments, 130 / 143 interrupted by SIGINT / SIGTERM.
"""

import argparse
import collections
import ctypes
import ctypes.util
import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Optional, TextIO

import yaml

from hetnet_ros.bringup import (
    GRAPH_ARGUMENTS,
    GRAPH_NAMES,
    REALSENSE2_CAMERA,
    GraphConfigError,
    GraphOptions,
    NodeSpec,
    action_name,
    dds_environment,
    inspection_graph,
)

# Highest ROS_DOMAIN_ID that Fast DDS's default port mapping accepts on Linux.
MAX_DOMAIN_ID = 232

EXIT_FAILURE = 1
EXIT_USAGE = 2

# Time each child gets to exit after SIGINT, then after SIGTERM, before SIGKILL.
SIGINT_TIMEOUT_S = 10.0
SIGTERM_TIMEOUT_S = 5.0
SIGKILL_TIMEOUT_S = 2.0

# Maximum wait for the response to a cancel request sent after a failed inspection.
CANCEL_TIMEOUT_S = 5.0

# Lines of each child's stderr kept to explain an early exit.
STDERR_TAIL_LINES = 20

# The graph is ready when these nodes publish or subscribe these topics: the camera
# and detector publish once configured (camera opened, model loaded), and the
# detector and inspection nodes subscribe once active.
READINESS = (
    ('camera', 'publishes', 'image'),
    ('detector', 'subscribes', 'image'),
    ('detector', 'publishes', 'verdict'),
    ('inspection', 'subscribes', 'verdict'),
)

_PR_SET_PDEATHSIG = 1


class LaunchError(RuntimeError):
    """The graph failed: a node died, a wait timed out or the inspection failed."""


class Interrupted(Exception):
    """SIGINT or SIGTERM was received; `signal_number` is the signal."""

    def __init__(self, signal_number: int) -> None:
        super().__init__(signal.Signals(signal_number).name)
        self.signal_number = signal_number


class ChildNode:
    """One node process: its spec, the process, and the tail of its stderr."""

    def __init__(self, spec: NodeSpec, params_file: pathlib.Path, env: dict,
                 echo: Optional[TextIO]) -> None:
        self.spec = spec
        self.command = [sys.executable, '-m', spec.module, *spec.ros_arguments(params_file)]
        self.stderr_tail: collections.deque = collections.deque(maxlen=STDERR_TAIL_LINES)
        self._echo = echo
        self._echo_lock = threading.Lock()
        self.process = subprocess.Popen(
            self.command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, start_new_session=True,
            preexec_fn=_exit_with_parent(os.getpid()))
        self._readers = [
            threading.Thread(target=self._forward, args=(self.process.stdout, False), daemon=True),
            threading.Thread(target=self._forward, args=(self.process.stderr, True), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def pid(self) -> int:
        return self.process.pid

    def poll(self) -> Optional[int]:
        return self.process.poll()

    def signal_group(self, signal_number: int) -> None:
        """Send a signal to the child's process group (the child and anything it started).

        Only while the child is not yet reaped, because after that its id may be reused.
        """
        if self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal_number)
        except (ProcessLookupError, PermissionError):
            pass

    def describe_exit(self) -> str:
        tail = '\n'.join(f'    {line}' for line in self.stderr_tail) or '    (no stderr output)'
        return (f'node {self.name!r} (pid {self.pid}) exited with code {self.poll()}; '
                f'last stderr lines:\n{tail}')

    def join_readers(self, timeout_s: float) -> None:
        for reader in self._readers:
            reader.join(timeout_s)

    def _forward(self, stream, is_stderr: bool) -> None:
        for raw in iter(stream.readline, b''):
            line = raw.decode('utf-8', errors='replace').rstrip('\n')
            if is_stderr:
                self.stderr_tail.append(line)
            if self._echo is not None:
                with self._echo_lock:
                    print(f'[{self.name}] {line}', file=self._echo, flush=True)
        stream.close()


def _exit_with_parent(parent_pid: int):
    """Return a preexec_fn that makes the kernel send SIGTERM to the child if the launcher dies.

    Only on Linux; elsewhere the function does nothing and a killed launcher can
    leave its children running.
    """
    libc_name = ctypes.util.find_library('c') if sys.platform.startswith('linux') else None
    libc = ctypes.CDLL(libc_name, use_errno=True) if libc_name else None

    def set_parent_death_signal() -> None:
        if libc is None:
            return
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        # The launcher may have died before prctl took effect.
        if os.getppid() != parent_pid:
            os._exit(EXIT_FAILURE)

    return set_parent_death_signal


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='hetnet-inspect',
        description='Start the hetnet_ros inspection graph (camera, detector, inspection) '
                    'and optionally inspect one part.')
    for name, description in GRAPH_ARGUMENTS.items():
        parser.add_argument('--' + name.replace('_', '-'), dest=name, default='',
                            required=name == 'checkpoint', help=description)
    parser.add_argument('--part-id', default='',
                        help='inspect this part once, print the verdicts and exit; without it '
                             'the graph runs until Ctrl-C')
    parser.add_argument('--pose', dest='pose_names', action='append', default=[],
                        metavar='NAME', help='pose to visit (repeatable; default: every pose)')
    parser.add_argument('--timeout-s', type=float, default=120.0,
                        help='maximum time for the nodes to start and the model to load, in '
                             'seconds (default: %(default)s)')
    parser.add_argument('--inspection-timeout-s', type=float, default=600.0,
                        help='maximum time of the inspection, in seconds (default: %(default)s)')
    parser.add_argument('--ros-domain-id', type=int, default=None,
                        help='ROS_DOMAIN_ID for the launcher and every node (default: inherited)')
    parser.add_argument('--report-json', default='',
                        help='write the inspection report to this JSON file')
    parser.add_argument('--quiet', action='store_true',
                        help="do not echo the nodes' output")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        options = GraphOptions.from_strings(
            {name: getattr(args, name) for name in GRAPH_ARGUMENTS})
        graph = inspection_graph(options)
        check_startable(graph)
        check_inputs(graph)
    except GraphConfigError as error:
        parser.error(str(error))
    for name in ('timeout_s', 'inspection_timeout_s'):
        if not getattr(args, name) > 0:
            parser.error(f'--{name.replace("_", "-")} must be greater than 0 seconds')
    domain_id = args.ros_domain_id if args.ros_domain_id is not None else os.environ.get('ROS_DOMAIN_ID')
    if domain_id not in (None, '') and not _valid_domain_id(domain_id):
        parser.error(f'ROS domain id {domain_id!r} is invalid: use an integer from 0 to '
                     f'{MAX_DOMAIN_ID} (--ros-domain-id or ROS_DOMAIN_ID)')
    if args.report_json:
        report_path = pathlib.Path(args.report_json)
        if report_path.is_dir() or not report_path.parent.is_dir():
            parser.error(f'--report-json {report_path} must be a file in an existing folder')

    if args.ros_domain_id is not None:
        os.environ['ROS_DOMAIN_ID'] = str(args.ros_domain_id)
    dds_variables = dds_environment(os.environ)
    for name, value in dds_variables.items():
        print(f'using the Fast DDS profile {value} ({name})', flush=True)
    # The launcher's own participant needs the same transports as the nodes.
    os.environ.update(dds_variables)
    env = dict(os.environ, PYTHONUNBUFFERED='1')

    previous_handlers = _install_signal_handlers()
    children: list[ChildNode] = []
    try:
        with tempfile.TemporaryDirectory(prefix='hetnet_inspect_') as folder:
            for spec in graph:
                params_file = pathlib.Path(folder) / f'{spec.name}.params.yaml'
                params_file.write_text(yaml.safe_dump(spec.parameters_document()))
                children.append(ChildNode(spec, params_file, env,
                                          echo=None if args.quiet else sys.stderr))
                print(f'started node {spec.name!r} (pid {children[-1].pid})', flush=True)
            return run_graph(args, options, children)
    except Interrupted as interrupt:
        print(f'{interrupt}: stopping the nodes', file=sys.stderr, flush=True)
        return 128 + interrupt.signal_number
    except LaunchError as error:
        print(f'error: {error}', file=sys.stderr, flush=True)
        return EXIT_FAILURE
    finally:
        # A second Ctrl-C must not interrupt the shutdown of the children.
        for signal_number in previous_handlers:
            signal.signal(signal_number, signal.SIG_IGN)
        stop_children(children)
        for signal_number, handler in previous_handlers.items():
            signal.signal(signal_number, handler)


def check_startable(graph: list[NodeSpec]) -> None:
    """Reject nodes of other packages, which this launcher cannot start as Python modules."""
    for spec in graph:
        if spec.module:
            continue
        if spec.package == REALSENSE2_CAMERA:
            raise GraphConfigError(
                "camera back-end realsense2_camera starts Intel's realsense2_camera driver, "
                'a C++ ROS 2 package that hetnet-inspect cannot start. Use ros2 launch '
                'hetnet_ros inspect.launch.py camera_backend:=realsense2_camera on a ROS 2 '
                'installation with the driver, or --camera-backend realsense for the camera '
                "node of this package (pyrealsense2)")
        raise GraphConfigError(
            f'node {spec.name!r} runs {spec.package}/{spec.executable}, which hetnet-inspect '
            'cannot start; use ros2 launch hetnet_ros inspect.launch.py')


def _valid_domain_id(value) -> bool:
    try:
        return 0 <= int(value) <= MAX_DOMAIN_ID
    except ValueError:
        return False


def check_inputs(graph: list[NodeSpec]) -> None:
    """Check the files the nodes need before starting any, so errors name the option."""
    parameters = {spec.name: spec.parameters for spec in graph}
    checks = [
        ('--checkpoint', parameters['detector'].get('checkpoint', '')),
        ('--poses', parameters['inspection'].get('poses_file', '')),
    ]
    if parameters['camera'].get('backend') == 'replay':
        source = parameters['camera'].get('source', '')
        if not source:
            raise GraphConfigError('the replay camera needs --images: an image folder, an '
                                   'image file or an MVTec-layout data set root')
        checks.append(('--images', source))
    for option, path in checks:
        if path and not os.path.exists(path):
            raise GraphConfigError(f'{option} {path} does not exist')


def run_graph(args, options: GraphOptions, children: list[ChildNode]) -> int:
    """Wait until the graph is ready, then inspect one part or wait for a signal."""
    import rclpy
    from rclpy.signals import SignalHandlerOptions

    # Signals stay with this launcher, which stops the children in order.
    context = rclpy.Context()
    rclpy.init(context=context, signal_handler_options=SignalHandlerOptions.NO)
    try:
        session = _Session(context, options.namespace, children)
        try:
            session.wait_until_ready(args.timeout_s)
            if not args.part_id:
                print(f'ready: send inspect_part goals to {action_name(options.namespace)}; '
                      'press Ctrl-C to stop', flush=True)
                session.watch_children_forever()
            return session.inspect(args.part_id, args.pose_names, args.inspection_timeout_s,
                                   args.report_json)
        finally:
            session.destroy()
    finally:
        rclpy.try_shutdown(context=context)


class _Session:
    """The launcher's own ROS node: readiness checks and the action client."""

    def __init__(self, context, namespace: str, children: list[ChildNode]) -> None:
        from hetnet_ros_msgs.action import InspectPart
        from rclpy.action import ActionClient
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node

        self._children = children
        self._namespace = namespace
        self.node = Node('hetnet_inspect', context=context)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.action_type = InspectPart
        self.client = ActionClient(self.node, InspectPart, action_name(namespace))

    def destroy(self) -> None:
        self.client.destroy()
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()

    def check_children(self) -> None:
        for child in self._children:
            if child.poll() is not None:
                # Let the reader threads catch the last lines before reporting them.
                child.join_readers(timeout_s=1.0)
                raise LaunchError(child.describe_exit())

    def wait_until_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            self.check_children()
            missing = [f'{node} {role} {GRAPH_NAMES[topic]}' for node, role, topic in READINESS
                       if not self._has_endpoint(node, role, topic)]
            if not self.client.server_is_ready():
                missing.append(f'action server {action_name(self._namespace)}')
            if not missing:
                return
            if time.monotonic() > deadline:
                raise LaunchError(
                    f'the graph was not ready within {timeout_s:g} s; still waiting until: '
                    f'{", ".join(missing)}. Check the node output above, or raise --timeout-s '
                    'if the model loads slowly')
            self.executor.spin_once(timeout_sec=0.2)

    def _has_endpoint(self, node_name: str, role: str, name: str) -> bool:
        namespace = self._namespace.strip('/')
        topic = f'/{namespace}/{GRAPH_NAMES[name]}' if namespace else f'/{GRAPH_NAMES[name]}'
        if role == 'publishes':
            endpoints = self.node.get_publishers_info_by_topic(topic)
        else:
            endpoints = self.node.get_subscriptions_info_by_topic(topic)
        return any(endpoint.node_name == node_name
                   and endpoint.node_namespace.strip('/') == namespace
                   for endpoint in endpoints)

    def watch_children_forever(self) -> None:
        while True:
            self.check_children()
            self.executor.spin_once(timeout_sec=0.5)

    def inspect(self, part_id: str, pose_names: list, timeout_s: float,
                report_json: str) -> int:
        goal = self.action_type.Goal(part_id=part_id, pose_names=pose_names)
        goal_future = self.client.send_goal_async(goal, feedback_callback=self._print_feedback)
        deadline = time.monotonic() + timeout_s
        self._spin_until(goal_future, deadline, 'the goal to be accepted')
        goal_handle = goal_future.result()
        if not goal_handle.accepted:
            raise LaunchError(f'the inspection node rejected the goal for part {part_id!r}; '
                              'its log says why (is another inspection running?)')

        result_future = goal_handle.get_result_async()
        try:
            self._spin_until(result_future, deadline, f'the inspection of part {part_id!r}')
        except LaunchError:
            self._cancel_after_error(goal_handle)
            raise
        result = result_future.result().result
        report = result.report

        if report_json:
            pathlib.Path(report_json).write_text(json.dumps(report_to_dict(report), indent=2))
        if not result.success:
            raise LaunchError(f'inspection of part {part_id!r} failed after '
                              f'{len(report.views)} views: {result.message}')

        verdict = 'ANOMALOUS' if report.is_anomalous else 'normal'
        # Views are numbered from 1 in the output, like the per-view lines above.
        worst = report.worst_view_index
        worst_name = report.view_names[worst] if worst >= 0 else ''
        print(f'part {part_id}: {verdict} (worst view {worst + 1} {worst_name!r}, '
              f'pred_score {report.worst_score:.3f}, model {report.model_id})', flush=True)
        if report.records_path:
            print(f'records: {report.records_path}', flush=True)
        return 0

    def _cancel_after_error(self, goal_handle) -> None:
        """Cancel the goal unless its server died; a failed cancel must not hide the error."""
        server = next((child for child in self._children if child.name == 'inspection'), None)
        if server is not None and server.poll() is not None:
            return
        cancel = goal_handle.cancel_goal_async()
        try:
            self._spin_until(cancel, time.monotonic() + CANCEL_TIMEOUT_S, 'the cancel response',
                             check_children=False)
        except LaunchError as error:
            print(f'warning: {error}; the inspection node may still run the goal',
                  file=sys.stderr, flush=True)

    def _print_feedback(self, message) -> None:
        feedback = message.feedback
        if feedback.stage != 'recorded':
            return
        verdict = feedback.last_verdict
        print(f'view {feedback.view_index + 1}/{feedback.view_count} {feedback.pose_name}: '
              f'pred_score {verdict.pred_score:.3f} '
              f'{"ANOMALOUS" if verdict.is_anomalous else "normal"}', flush=True)

    def _spin_until(self, future, deadline: float, awaited: str, check_children: bool = True):
        while not future.done():
            if check_children:
                self.check_children()
            if time.monotonic() > deadline:
                raise LaunchError(f'timed out waiting for {awaited}')
            self.executor.spin_once(timeout_sec=0.1)


def report_to_dict(report) -> dict:
    """Convert an InspectionReport message to plain JSON types."""
    def stamp(time_msg) -> float:
        return time_msg.sec + time_msg.nanosec / 1e9

    return {
        'part_id': report.part_id,
        'is_anomalous': bool(report.is_anomalous),
        'worst_view_index': int(report.worst_view_index),
        'worst_score': float(report.worst_score),
        'model_id': report.model_id,
        'started': stamp(report.started),
        'finished': stamp(report.header.stamp),
        'frame_id': report.header.frame_id,
        'records_path': report.records_path,
        'views': [
            {
                'pose_name': name,
                'stamp': stamp(view.header.stamp),
                'pred_score': float(view.pred_score),
                'raw_score': float(view.raw_score),
                'is_anomalous': bool(view.is_anomalous),
                'position': [pose.position.x, pose.position.y, pose.position.z],
                'orientation': [pose.orientation.x, pose.orientation.y, pose.orientation.z,
                                pose.orientation.w],
            }
            for name, view, pose in zip(report.view_names, report.views, report.view_poses)
        ],
    }


def stop_children(children: list[ChildNode]) -> None:
    """Stop every child: SIGINT, then SIGTERM, then SIGKILL, each after its timeout."""
    for signal_number, timeout_s in ((signal.SIGINT, SIGINT_TIMEOUT_S),
                                     (signal.SIGTERM, SIGTERM_TIMEOUT_S),
                                     (signal.SIGKILL, SIGKILL_TIMEOUT_S)):
        running = [child for child in children if child.poll() is None]
        if not running:
            break
        if signal_number != signal.SIGINT:
            names = ', '.join(child.name for child in running)
            print(f'nodes still running after the previous signal: {names}; sending '
                  f'{signal.Signals(signal_number).name}', file=sys.stderr, flush=True)
        for child in running:
            child.signal_group(signal_number)
        deadline = time.monotonic() + timeout_s
        for child in running:
            try:
                child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass

    for child in children:
        child.join_readers(timeout_s=1.0)


def _install_signal_handlers() -> dict:
    def interrupt(signal_number, frame):
        raise Interrupted(signal_number)

    previous = {}
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        previous[signal_number] = signal.signal(signal_number, interrupt)
    return previous


if __name__ == '__main__':
    sys.exit(main())
