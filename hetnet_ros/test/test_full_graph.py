"""The whole graph through hetnet-inspect: real camera, detector and inspection processes.

Uses the tiny real checkpoint and a replay set of real screw images (good and
defective), resized to 256 px so that every frame is small enough for a quick
run. Each test checks afterwards that no process started by the launcher is
left, by looking for a marker variable in the environment of every process.
"""

import json
import os
import pathlib
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid

import cv2
import pytest
import rclpy
import yaml
from action_msgs.msg import GoalStatus
from hetnet_ros_msgs.action import InspectPart
from rclpy.action import ActionClient
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node

from hetnet_ros.bringup import package_config_path
from hetnet_ros.poses import load_poses
from hetnet_ros.records import RecordStore

RUN_TIMEOUT_S = 150.0
REPLAY_SIZE_PX = 256


@pytest.fixture(scope='module')
def replay_images(tmp_path_factory, screw_root) -> pathlib.Path:
    folder = tmp_path_factory.mktemp('replay')
    for defect_type in ('good', 'scratch_head', 'thread_top'):
        for path in sorted((screw_root / 'test' / defect_type).glob('*.png'))[:2]:
            image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            small = cv2.resize(image, (REPLAY_SIZE_PX, REPLAY_SIZE_PX), interpolation=cv2.INTER_AREA)
            cv2.imwrite(str(folder / f'{defect_type}_{path.name}'), small)
    assert len(list(folder.glob('*.png'))) == 6
    return folder


@pytest.fixture
def test_config(tmp_path) -> pathlib.Path:
    """The package's node parameters with a shorter retry for lost frames."""
    document = yaml.safe_load(package_config_path('inspect.yaml').read_text())
    document['inspection']['ros__parameters']['capture_retry_s'] = 1.0
    path = tmp_path / 'inspect.yaml'
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.fixture
def marker():
    """Environment marker inherited by the launcher and every node it starts."""
    value = uuid.uuid4().hex
    yield value
    deadline = time.monotonic() + 10.0
    while _processes_with_marker(value) and time.monotonic() < deadline:
        time.sleep(0.1)
    leftover = _processes_with_marker(value)
    for pid in leftover:
        os.kill(pid, signal.SIGKILL)
    assert not leftover, f'processes left after the launcher exited: {leftover}'


def launcher_command(checkpoint, images, config, *extra) -> list:
    return [sys.executable, '-m', 'hetnet_ros.launcher', '--checkpoint', str(checkpoint),
            '--images', str(images), '--config', str(config), '--device', 'cpu',
            '--sim-speed-factor', '10', '--timeout-s', '90', *extra]


def launcher_env(marker: str) -> dict:
    return dict(os.environ, HETNET_TEST_MARKER=marker)


def test_inspect_part_through_launcher(tiny_checkpoint, replay_images, test_config, marker,
                                       tmp_path):
    records = tmp_path / 'records'
    report_file = tmp_path / 'report.json'
    result = subprocess.run(
        launcher_command(tiny_checkpoint, replay_images, test_config, '--records', str(records),
                         '--part-id', 'screw-001', '--report-json', str(report_file), '--quiet'),
        env=launcher_env(marker), capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert result.returncode == 0, f'stdout:\n{result.stdout}\nstderr:\n{result.stderr}'

    pose_names = [pose.name for pose in load_poses(package_config_path('poses.yaml'))]
    report = json.loads(report_file.read_text())
    assert [view['pose_name'] for view in report['views']] == pose_names
    assert report['part_id'] == 'screw-001'
    assert report['model_id'].startswith('hetnet-')
    scores = [view['pred_score'] for view in report['views']]
    assert report['worst_score'] == pytest.approx(max(scores))
    assert report['is_anomalous'] == any(view['is_anomalous'] for view in report['views'])
    stamps = [view['stamp'] for view in report['views']]
    assert stamps == sorted(stamps), 'views must be judged in pose order'
    assert len(set(stamps)) == len(stamps), 'each view needs a frame of its own'
    assert all(report['started'] < stamp < report['finished'] for stamp in stamps)

    lines = result.stdout.splitlines()
    view_lines = [line for line in lines if line.startswith('view ')]
    assert len(view_lines) == len(pose_names), result.stdout
    assert view_lines[0].startswith(f'view 1/{len(pose_names)} {pose_names[0]}: pred_score ')
    part_line = next(line for line in lines if line.startswith('part screw-001: '))
    assert ('ANOMALOUS' in part_line) == report['is_anomalous']

    with RecordStore(records) as store:
        (inspection,) = store.list_inspections(part_id='screw-001')
        views = store.list_views(inspection.id)
    assert inspection.status == 'succeeded'
    assert str(inspection.path) == report['records_path']
    assert [view.pose_name for view in views] == pose_names
    for view, reported in zip(views, report['views']):
        assert view.verdict.pred_score == pytest.approx(reported['pred_score'])
        assert view.image_path is not None and view.image_path.is_file()
        assert view.heatmap_path is not None and view.heatmap_path.is_file()
        assert cv2.imread(str(view.image_path)).shape == (REPLAY_SIZE_PX, REPLAY_SIZE_PX, 3)


def test_streaming_graph_serves_goals_until_sigterm(tiny_checkpoint, replay_images, test_config,
                                                     marker):
    process = subprocess.Popen(
        launcher_command(tiny_checkpoint, replay_images, test_config, '--camera-rate-hz', '5'),
        env=launcher_env(marker), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout_lines = _line_queue(process.stdout)
    stderr_tail = _tail(process.stderr)
    try:
        _wait_for_line(stdout_lines, 'ready:', 100.0, stderr_tail)

        # A cell controller's view: a plain action client in another process.
        context = rclpy.Context()
        rclpy.init(context=context)
        node = Node('cell_controller', context=context)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        client = ActionClient(node, InspectPart, 'inspect_part')
        try:
            assert client.wait_for_server(timeout_sec=20.0)
            goal = InspectPart.Goal(part_id='screw-002', pose_names=['front', 'top'])
            goal_future = client.send_goal_async(goal)
            executor.spin_until_future_complete(goal_future, timeout_sec=20.0)
            result_future = goal_future.result().get_result_async()
            executor.spin_until_future_complete(result_future, timeout_sec=60.0)
            assert result_future.done(), 'no result within 60 s'
            response = result_future.result()
        finally:
            client.destroy()
            node.destroy_node()
            rclpy.try_shutdown(context=context)
        assert response.status == GoalStatus.STATUS_SUCCEEDED, response.result.message
        assert list(response.result.report.view_names) == ['front', 'top']

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30.0) == 128 + signal.SIGTERM
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10.0)


def test_launcher_reports_node_that_died(tiny_checkpoint, replay_images, test_config, marker,
                                         tmp_path):
    bad_poses = tmp_path / 'poses.yaml'
    bad_poses.write_text('- {name: top, position: [0.5, 0.0]}\n')
    result = subprocess.run(
        launcher_command(tiny_checkpoint, replay_images, test_config, '--poses', str(bad_poses),
                         '--part-id', 'screw-003', '--quiet'),
        env=launcher_env(marker), capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert result.returncode == 1, result.stderr
    assert "node 'inspection'" in result.stderr
    assert 'exited with code 1' in result.stderr
    assert 'position [x, y, z] must be a list of 3 numbers' in result.stderr, (
        'the last stderr lines of the node must explain why it died')


def _processes_with_marker(marker: str) -> list:
    needle = f'HETNET_TEST_MARKER={marker}'.encode()
    found = []
    for entry in pathlib.Path('/proc').iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environment = (entry / 'environ').read_bytes()
            state = (entry / 'stat').read_text().rsplit(')', 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if needle in environment.split(b'\0') and state != 'Z':
            found.append(int(entry.name))
    return found


def _line_queue(stream) -> queue.Queue:
    lines: queue.Queue = queue.Queue()

    def read() -> None:
        for line in stream:
            lines.put(line.rstrip('\n'))

    threading.Thread(target=read, daemon=True).start()
    return lines


def _tail(stream, length: int = 40) -> list:
    tail: list = []

    def read() -> None:
        for line in stream:
            tail.append(line.rstrip('\n'))
            del tail[:-length]

    threading.Thread(target=read, daemon=True).start()
    return tail


def _wait_for_line(lines: queue.Queue, prefix: str, timeout_s: float, stderr_tail: list) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(
                f'no line starting with {prefix!r} within {timeout_s} s; launcher stderr:\n'
                + '\n'.join(stderr_tail))
        try:
            line = lines.get(timeout=remaining)
        except queue.Empty:
            continue
        if line.startswith(prefix):
            return line
