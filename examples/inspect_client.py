#!/usr/bin/env python3
"""Inspect one part through the inspect_part action of hetnet_ros, as a cell controller does.

    python3 examples/inspect_client.py PART_ID [--pose NAME ...] [--namespace NS]
        [--server-timeout-s 10] [--result-timeout-s 600] [--ros-args ...]

The client waits for the inspection node's action server, sends one goal,
prints the feedback of every pose, and prints the part verdict from the
report. Ctrl-C (or SIGTERM) cancels the goal, and the inspection node then
stops the arm. Run it next to a running graph, for example one started with
`hetnet-inspect --checkpoint ... --images ...` (without --part-id) or with
`ros2 launch hetnet_ros inspect.launch.py ...`, in the same ROS_DOMAIN_ID.

Exit codes, for a controller that branches on them:
    0    the part is normal: every view scored below the threshold
    1    the part is anomalous: at least one view scored at or above the threshold
    2    invalid arguments
    3    no inspect_part action server was found, or it sent no goal response,
         within --server-timeout-s
    4    the goal was rejected: another inspection is running or the node is inactive
    5    the inspection did not complete (aborted, for example after a robot fault
         or a camera timeout, or canceled by another client); stderr gives the reason
    6    no result within --result-timeout-s; the goal was canceled
    130  interrupted by Ctrl-C or SIGTERM; the goal was canceled

It needs only rclpy and hetnet_ros_msgs, not hetnet_ros or PyTorch.
"""

import argparse
import signal
import sys
from typing import Optional

import rclpy
from action_msgs.msg import GoalStatus
from hetnet_ros_msgs.action import InspectPart
from rclpy.action import ActionClient
from rclpy.action.client import ClientGoalHandle
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions
from rclpy.task import Future
from rclpy.utilities import remove_ros_args

EXIT_NORMAL = 0
EXIT_ANOMALOUS = 1
EXIT_USAGE = 2
EXIT_NO_SERVER = 3
EXIT_REJECTED = 4
EXIT_NOT_COMPLETED = 5
EXIT_TIMED_OUT = 6
EXIT_INTERRUPTED = 130

# Maximum waits for the response to a cancel request, and then for the final result.
CANCEL_TIMEOUT_S = 5.0
FINAL_RESULT_TIMEOUT_S = 10.0


class InspectClient:
    """One inspect_part goal at a time, spun by its own executor."""

    def __init__(self, node: Node, action_name: str) -> None:
        self.node = node
        self.action_name = action_name
        self.client = ActionClient(node, InspectPart, action_name)
        self.executor = SingleThreadedExecutor(context=node.context)
        self.executor.add_node(node)
        self.goal_future: Optional[Future] = None
        self.goal_handle: Optional[ClientGoalHandle] = None
        self.result_future: Optional[Future] = None

    def destroy(self) -> None:
        self.client.destroy()
        self.executor.shutdown(timeout_sec=1.0)

    def inspect(self, part_id: str, pose_names: list, server_timeout_s: float,
                result_timeout_s: float) -> int:
        """Send the goal, follow it to the end and return the exit code."""
        if not self.client.wait_for_server(timeout_sec=server_timeout_s):
            print(f'error: no action server {self.action_name} within {server_timeout_s:g} s; '
                  'check that the inspection node runs in this ROS_DOMAIN_ID and namespace',
                  file=sys.stderr)
            return EXIT_NO_SERVER

        goal = InspectPart.Goal(part_id=part_id, pose_names=pose_names)
        self.goal_future = self.client.send_goal_async(
            goal, feedback_callback=self._print_feedback)
        if not self._spin_until_done(self.goal_future, server_timeout_s):
            print(f'error: no goal response from the server within {server_timeout_s:g} s',
                  file=sys.stderr)
            return EXIT_NO_SERVER
        self.goal_handle = self.goal_future.result()
        if not self.goal_handle.accepted:
            print(f'error: goal for part {part_id!r} rejected; the inspection node logs the '
                  'reason (another inspection running, or the node is not active)',
                  file=sys.stderr)
            return EXIT_REJECTED
        print(f'goal accepted: inspecting part {part_id}', flush=True)

        self.result_future = self.goal_handle.get_result_async()
        if not self._spin_until_done(self.result_future, result_timeout_s):
            print(f'error: no result within {result_timeout_s:g} s; canceling the goal',
                  file=sys.stderr)
            self.cancel()
            return EXIT_TIMED_OUT
        response = self.result_future.result()
        return report_result(part_id, response.status, response.result)

    def cancel(self) -> None:
        """Cancel the goal unless it has ended, and wait a bounded time for its final status."""
        if self.goal_handle is None and self.goal_future is not None:
            # Interrupted before the goal response: the goal may still be accepted.
            if self._spin_until_done(self.goal_future, CANCEL_TIMEOUT_S):
                self.goal_handle = self.goal_future.result()
        if self.goal_handle is None or not self.goal_handle.accepted:
            return
        if self.result_future is not None and self.result_future.done():
            return

        print('canceling the goal', file=sys.stderr, flush=True)
        cancel_future = self.goal_handle.cancel_goal_async()
        if not self._spin_until_done(cancel_future, CANCEL_TIMEOUT_S):
            print(f'warning: no response to the cancel request within {CANCEL_TIMEOUT_S:g} s',
                  file=sys.stderr)
            return
        if self.result_future is None:
            self.result_future = self.goal_handle.get_result_async()
        if self._spin_until_done(self.result_future, FINAL_RESULT_TIMEOUT_S):
            status = self.result_future.result().status
            print(f'goal {status_name(status)}', file=sys.stderr, flush=True)

    def _spin_until_done(self, future: Future, timeout_s: float) -> bool:
        self.executor.spin_until_future_complete(future, timeout_sec=timeout_s)
        return future.done()

    def _print_feedback(self, message) -> None:
        feedback = message.feedback
        line = (f'view {feedback.view_index + 1}/{feedback.view_count} {feedback.pose_name}: '
                f'{feedback.stage}')
        if feedback.stage == 'recorded':
            verdict = feedback.last_verdict
            label = 'ANOMALOUS' if verdict.is_anomalous else 'normal'
            line += f', pred_score {verdict.pred_score:.3f} ({label})'
        print(line, flush=True)


def report_result(part_id: str, status: int, result) -> int:
    """Print the outcome of a finished goal and return the exit code."""
    report = result.report
    if status != GoalStatus.STATUS_SUCCEEDED or not result.success:
        print(f'error: inspection of part {part_id!r} {status_name(status)} after '
              f'{len(report.views)} views: {result.message}', file=sys.stderr)
        return EXIT_NOT_COMPLETED

    verdict = 'ANOMALOUS' if report.is_anomalous else 'normal'
    worst = report.worst_view_index
    worst_name = report.view_names[worst] if worst >= 0 else ''
    print(f'part {report.part_id}: {verdict} (worst view {worst + 1}/{len(report.views)} '
          f'{worst_name!r}, pred_score {report.worst_score:.3f}, model {report.model_id})',
          flush=True)
    if report.records_path:
        print(f'records: {report.records_path}', flush=True)
    return EXIT_ANOMALOUS if report.is_anomalous else EXIT_NORMAL


def status_name(status: int) -> str:
    """Return the name of an action_msgs/GoalStatus value, such as 'aborted'."""
    names = {
        GoalStatus.STATUS_UNKNOWN: 'unknown',
        GoalStatus.STATUS_ACCEPTED: 'accepted',
        GoalStatus.STATUS_EXECUTING: 'executing',
        GoalStatus.STATUS_CANCELING: 'canceling',
        GoalStatus.STATUS_SUCCEEDED: 'succeeded',
        GoalStatus.STATUS_CANCELED: 'canceled',
        GoalStatus.STATUS_ABORTED: 'aborted',
    }
    return names.get(status, f'status {status}')


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description='Inspect one part through the inspect_part action of hetnet_ros. '
                    'Exit code 0: normal part, 1: anomalous part, 3-6: no verdict, '
                    '130: interrupted.')
    parser.add_argument('part_id', help='identifier of the part, stored with the records')
    parser.add_argument('--pose', dest='pose_names', action='append', default=[],
                        metavar='NAME',
                        help='pose to visit, repeatable, in order (default: every pose)')
    parser.add_argument('--namespace', default='',
                        help='ROS namespace of the inspection node (default: none)')
    parser.add_argument('--server-timeout-s', type=float, default=10.0,
                        help='maximum wait for the action server and its goal response, in '
                             'seconds (default: %(default)s)')
    parser.add_argument('--result-timeout-s', type=float, default=600.0,
                        help='maximum duration of the inspection, in seconds '
                             '(default: %(default)s)')
    return parser


def main(argv: Optional[list] = None) -> int:
    argv = sys.argv if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(remove_ros_args(argv)[1:])
    for option in ('server_timeout_s', 'result_timeout_s'):
        if not getattr(args, option) > 0:
            parser.error(f'--{option.replace("_", "-")} must be greater than 0 seconds')
    if not args.part_id:
        parser.error('PART_ID must not be empty')

    # rclpy's own SIGINT handler shuts the context down, after which no cancel request
    # could be sent. Without it, Ctrl-C raises KeyboardInterrupt, and so does SIGTERM here.
    rclpy.init(args=argv, signal_handler_options=SignalHandlerOptions.NO)
    # Python keeps SIGINT ignored when the parent ignored it, as a non-interactive shell
    # does for background jobs; a controller's SIGINT must still cancel the goal.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    namespace = args.namespace.strip('/')
    action_name = f'/{namespace}/inspect_part' if namespace else '/inspect_part'
    node = Node('inspect_client')
    client = InspectClient(node, action_name)
    try:
        return client.inspect(args.part_id, args.pose_names, args.server_timeout_s,
                              args.result_timeout_s)
    except KeyboardInterrupt:
        print('interrupted', file=sys.stderr, flush=True)
        # A second signal must not stop the cancel request half-way.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        client.cancel()
        return EXIT_INTERRUPTED
    finally:
        client.destroy()
        node.destroy_node()
        rclpy.try_shutdown()


def _raise_keyboard_interrupt(signal_number, frame) -> None:
    raise KeyboardInterrupt


if __name__ == '__main__':
    sys.exit(main())
