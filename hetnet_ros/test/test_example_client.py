"""examples/inspect_client.py against the full simulated graph started by hetnet-inspect.

The launcher runs without --part-id, as on a cell where a controller sends the
goals. The example client then runs as a separate program: once to inspect a
part, once with a server that does not exist, once while another goal runs
(rejected), and once interrupted with Ctrl-C (goal canceled). Afterwards the
launcher must stop every node on Ctrl-C.
"""

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
import yaml

from hetnet_ros.bringup import package_config_path
from hetnet_ros.records import RecordStore

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
CLIENT = REPO_ROOT / 'examples' / 'inspect_client.py'
REPLAY_SIZE_PX = 256
READY_TIMEOUT_S = 100.0
CLIENT_TIMEOUT_S = 90.0


@pytest.fixture(scope='module')
def replay_images(tmp_path_factory, screw_root) -> pathlib.Path:
    """Two real good and two real defective screw images, shrunk to 256 px."""
    folder = tmp_path_factory.mktemp('replay_client')
    for defect_type in ('good', 'scratch_head'):
        for path in sorted((screw_root / 'test' / defect_type).glob('*.png'))[:2]:
            image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            small = cv2.resize(image, (REPLAY_SIZE_PX, REPLAY_SIZE_PX), interpolation=cv2.INTER_AREA)
            cv2.imwrite(str(folder / f'{defect_type}_{path.name}'), small)
    return folder


@pytest.fixture
def graph(tiny_checkpoint, replay_images, tmp_path):
    """The launcher running the graph without --part-id; yields (process, stdout lines, records)."""
    document = yaml.safe_load(package_config_path('inspect.yaml').read_text())
    document['inspection']['ros__parameters']['capture_retry_s'] = 1.0
    config = tmp_path / 'inspect.yaml'
    config.write_text(yaml.safe_dump(document))
    records = tmp_path / 'records'
    marker = uuid.uuid4().hex

    process = subprocess.Popen(
        [sys.executable, '-m', 'hetnet_ros.launcher', '--checkpoint', str(tiny_checkpoint),
         '--images', str(replay_images), '--config', str(config), '--records', str(records),
         '--device', 'cpu', '--timeout-s', '90', '--quiet'],
        env=dict(os.environ, HETNET_TEST_MARKER=marker),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = _line_queue(process.stdout)
    stderr_tail = _tail(process.stderr)
    try:
        _wait_for_line(process, lines, 'ready:', READY_TIMEOUT_S, stderr_tail)
        yield process, stderr_tail, records
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        leftover = _wait_for_no_processes(marker, timeout_s=10.0)
        for pid in leftover:
            os.kill(pid, signal.SIGKILL)
        assert not leftover, f'processes left after the launcher exited: {leftover}'


def client_command(*arguments) -> list:
    return [sys.executable, str(CLIENT), *arguments]


def test_example_client_against_graph(graph):
    launcher, launcher_stderr, records = graph

    # 1. A normal run over two poses: feedback for every stage, verdict, exit 0 or 1.
    result = subprocess.run(
        client_command('screw-42', '--pose', 'top', '--pose', 'front',
                       '--server-timeout-s', '30', '--result-timeout-s', '60'),
        capture_output=True, text=True, timeout=CLIENT_TIMEOUT_S)
    assert result.returncode in (0, 1), f'stdout:\n{result.stdout}\nstderr:\n{result.stderr}'
    lines = result.stdout.splitlines()
    # Feedback may arrive before the goal response, so this line has no fixed place.
    assert 'goal accepted: inspecting part screw-42' in lines
    expected_stages = [
        f'view {index}/2 {pose}: {stage}'
        for index, pose in ((1, 'top'), (2, 'front'))
        for stage in ('moving', 'settling', 'capturing', 'recorded')
    ]
    stages = [line.split(',')[0] for line in lines if line.startswith('view ')]
    # The first feedback can be sent before the feedback topic is matched, so only
    # the head of the list may be missing.
    assert len(stages) >= 5, result.stdout
    assert stages == expected_stages[-len(stages):], 'one feedback line per stage, in order'
    recorded = [line for line in lines if ': recorded, pred_score ' in line]
    assert [line.split(':')[0] for line in recorded] == ['view 1/2 top', 'view 2/2 front']
    part_line = next(line for line in lines if line.startswith('part screw-42: '))
    is_anomalous = result.returncode == 1
    assert part_line.startswith('part screw-42: ANOMALOUS' if is_anomalous
                                else 'part screw-42: normal'), part_line
    assert ('(ANOMALOUS)' in ''.join(recorded)) == is_anomalous, (
        'exit code 1 exactly when a view is anomalous')
    assert lines[-1].startswith(f'records: {records.resolve()}')

    with RecordStore(records) as store:
        (inspection,) = store.list_inspections(part_id='screw-42')
        assert inspection.status == 'succeeded'
        assert [view.pose_name for view in store.list_views(inspection.id)] == ['top', 'front']

    # 2. No server in that namespace: exit 3 after the timeout.
    result = subprocess.run(
        client_command('screw-43', '--namespace', 'no_such_cell', '--server-timeout-s', '1'),
        capture_output=True, text=True, timeout=CLIENT_TIMEOUT_S)
    assert result.returncode == 3, result.stderr
    assert 'no action server /no_such_cell/inspect_part within 1 s' in result.stderr

    # 3. A goal while another runs is rejected (exit 4); Ctrl-C cancels the running one (130).
    # The running goal visits 24 views, so that it still runs while the second client
    # starts, which can take many seconds on a loaded machine.
    many_views = ['--pose', 'top', '--pose', 'front'] * 12
    running = subprocess.Popen(
        client_command('screw-44', *many_views, '--server-timeout-s', '30',
                       '--result-timeout-s', '120'),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    running_lines = _line_queue(running.stdout)
    running_stderr = _tail(running.stderr)
    try:
        _wait_for_line(running, running_lines, 'goal accepted', CLIENT_TIMEOUT_S,
                       running_stderr)
        rejected = subprocess.run(
            client_command('screw-45', '--server-timeout-s', '30'),
            capture_output=True, text=True, timeout=CLIENT_TIMEOUT_S)
        assert rejected.returncode == 4, rejected.stderr
        assert "goal for part 'screw-45' rejected" in rejected.stderr

        running.send_signal(signal.SIGINT)
        assert running.wait(timeout=30) == 130, '\n'.join(running_stderr)
    finally:
        if running.poll() is None:
            running.kill()
            running.wait(timeout=10)
    time.sleep(0.2)  # let the stderr reader catch the last lines
    assert 'interrupted' in running_stderr
    assert 'canceling the goal' in running_stderr
    assert 'goal canceled' in running_stderr, '\n'.join(running_stderr)

    with RecordStore(records) as store:
        (canceled,) = store.list_inspections(part_id='screw-44')
        assert canceled.status == 'canceled'
        assert store.list_inspections(part_id='screw-45') == []

    # 4. The launcher stops every node on Ctrl-C (the fixture checks for leftovers).
    launcher.send_signal(signal.SIGINT)
    assert launcher.wait(timeout=40) == 128 + signal.SIGINT, '\n'.join(launcher_stderr)


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


def _wait_for_line(process: subprocess.Popen, lines: queue.Queue, expected: str,
                   timeout_s: float, stderr_tail: list) -> str:
    """Return the first output line of `process` that starts with `expected`."""
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or (process.poll() is not None and lines.empty()):
            time.sleep(0.2)  # let the stderr reader catch the last lines
            raise AssertionError(
                f'no line starting with {expected!r} within {timeout_s} s (exit code '
                f'{process.poll()}); stderr:\n' + '\n'.join(stderr_tail))
        try:
            line = lines.get(timeout=min(remaining, 0.5))
        except queue.Empty:
            continue
        if line.startswith(expected):
            return line


def _wait_for_no_processes(marker: str, timeout_s: float) -> list:
    deadline = time.monotonic() + timeout_s
    while _processes_with_marker(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    return _processes_with_marker(marker)


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
