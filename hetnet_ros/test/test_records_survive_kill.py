"""Records survive a node killed with SIGKILL in the middle of an inspection.

Each test starts the graph through hetnet-inspect with the tiny real checkpoint
and real screw images, and waits until two views of the part are in the
records database. Then it kills one node (camera, detector or inspection) with
SIGKILL. Every view recorded before the kill must still be there with readable
image files, and the inspection row must exist and no longer be 'running'.
When the camera or detector dies, the launcher cancels the goal and stops the
inspection node, which ends the inspection itself. When the inspection node
dies, the next RecordStore opened on the folder marks it 'interrupted'.
"""

import os
import pathlib
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid

import cv2
import pytest
import yaml

from hetnet_ros.bringup import package_config_path
from hetnet_ros.records import INTERRUPTED_MESSAGE, RecordStore

REPLAY_SIZE_PX = 256
VIEWS_BEFORE_KILL = 2
START_TIMEOUT_S = 120.0
VIEWS_TIMEOUT_S = 60.0
STARTED_LINE = re.compile(r"started node '(\w+)' \(pid (\d+)\)")
# Final status of the inspection by killed node. The launcher cancels the goal, but
# the inspection node may receive its SIGINT first and fail the goal instead.
EXPECTED_STATUSES = {
    'camera': ('canceled', 'failed'),
    'detector': ('canceled', 'failed'),
    'inspection': ('interrupted',),
}


@pytest.fixture(scope='module')
def replay_images(tmp_path_factory, screw_root) -> pathlib.Path:
    """Two real good and two real defective screw images, shrunk to 256 px."""
    folder = tmp_path_factory.mktemp('replay_kill')
    for defect_type in ('good', 'thread_top'):
        for path in sorted((screw_root / 'test' / defect_type).glob('*.png'))[:2]:
            image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            small = cv2.resize(image, (REPLAY_SIZE_PX, REPLAY_SIZE_PX), interpolation=cv2.INTER_AREA)
            cv2.imwrite(str(folder / f'{defect_type}_{path.name}'), small)
    return folder


@pytest.fixture(scope='module')
def test_config(tmp_path_factory) -> pathlib.Path:
    """The package's node parameters with a shorter retry for lost frames."""
    document = yaml.safe_load(package_config_path('inspect.yaml').read_text())
    document['inspection']['ros__parameters']['capture_retry_s'] = 1.0
    path = tmp_path_factory.mktemp('kill_config') / 'inspect.yaml'
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.mark.parametrize('victim', ['camera', 'detector', 'inspection'])
def test_views_survive_killed_node(victim, tiny_checkpoint, replay_images, test_config, tmp_path):
    records = tmp_path / 'records'
    part_id = f'screw-kill-{victim}'
    marker = uuid.uuid4().hex
    launcher = subprocess.Popen(
        [sys.executable, '-m', 'hetnet_ros.launcher', '--checkpoint', str(tiny_checkpoint),
         '--images', str(replay_images), '--config', str(test_config), '--device', 'cpu',
         '--sim-speed-factor', '5', '--timeout-s', '90', '--records', str(records),
         '--part-id', part_id, '--quiet'],
        env=dict(os.environ, HETNET_TEST_MARKER=marker),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = _collect(launcher.stdout), _collect(launcher.stderr)
    try:
        pids = _wait_for_node_pids(launcher, stdout, stderr)
        before_kill = _wait_for_views(launcher, records, part_id, stderr)
        os.kill(pids[victim], signal.SIGKILL)
        exit_code = launcher.wait(timeout=60)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait(timeout=10)
        leftover = _wait_for_no_processes(marker, timeout_s=15.0)
        for pid in leftover:
            os.kill(pid, signal.SIGKILL)
    time.sleep(0.2)  # let the reader threads catch the last lines
    output = '\n'.join(stderr)
    assert not leftover, f'processes left after the launcher exited: {leftover}'
    assert exit_code == 1, f'the launcher must report the dead node; stderr:\n{output}'
    assert f"node '{victim}' (pid {pids[victim]}) exited with code -9" in output

    with RecordStore(records) as store:
        (inspection,) = store.list_inspections(part_id=part_id)
        views = {view.view_index: view for view in store.list_views(inspection.id)}
    assert inspection.status in EXPECTED_STATUSES[victim], inspection
    if victim == 'inspection':
        assert inspection.message == INTERRUPTED_MESSAGE
    assert len(views) < inspection.view_count, 'the kill must come before the last view'

    for view_index, pred_score, image_path, heatmap_path in before_kill:
        assert view_index in views, f'view {view_index} recorded before the kill is lost'
        view = views[view_index]
        assert view.verdict.pred_score == pytest.approx(pred_score)
        image = cv2.imread(str(records / image_path))
        assert image is not None, f'image of view {view_index} is not readable'
        assert image.shape == (REPLAY_SIZE_PX, REPLAY_SIZE_PX, 3)
        heatmap = cv2.imread(str(records / heatmap_path))
        assert heatmap is not None, f'heatmap of view {view_index} is not readable'
        assert view.image_path == (records / image_path).resolve()


def _wait_for_node_pids(launcher, stdout: list, stderr: list) -> dict:
    """Return {node name: pid} from the launcher's 'started node' lines."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline and launcher.poll() is None:
        pids = {match.group(1): int(match.group(2))
                for match in map(STARTED_LINE.match, list(stdout)) if match}
        if len(pids) == 3:
            return pids
        time.sleep(0.05)
    raise AssertionError('the launcher did not start the three nodes; stderr:\n'
                         + '\n'.join(stderr))


def _wait_for_views(launcher, records: pathlib.Path, part_id: str, stderr: list) -> list:
    """Wait until VIEWS_BEFORE_KILL views of the part are committed; return their rows.

    Reads the database read-only, as another process on the cell would, so the
    test changes nothing in it before the kill.
    """
    database = records / 'records.db'
    deadline = time.monotonic() + START_TIMEOUT_S + VIEWS_TIMEOUT_S
    while time.monotonic() < deadline and launcher.poll() is None:
        if database.exists():
            rows = _read_views(database, part_id)
            if len(rows) >= VIEWS_BEFORE_KILL:
                return rows
        time.sleep(0.05)
    raise AssertionError(f'{VIEWS_BEFORE_KILL} views of {part_id} were not recorded (launcher '
                         f'exit code {launcher.poll()}); stderr:\n' + '\n'.join(stderr))


def _read_views(database: pathlib.Path, part_id: str) -> list:
    try:
        connection = sqlite3.connect(f'file:{database}?mode=ro', uri=True, timeout=5)
        try:
            return connection.execute(
                'SELECT views.view_index, views.pred_score, views.image_path, '
                'views.heatmap_path FROM views JOIN inspections '
                'ON views.inspection_id = inspections.id WHERE inspections.part_id = ? '
                'ORDER BY views.view_index', (part_id,)).fetchall()
        finally:
            connection.close()
    except sqlite3.OperationalError:
        return []  # the tables are being created


def _collect(stream) -> list:
    lines: list = []

    def read() -> None:
        for line in stream:
            lines.append(line.rstrip('\n'))

    threading.Thread(target=read, daemon=True).start()
    return lines


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
