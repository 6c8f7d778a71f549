"""Record store: rows and files per view, readers in other processes, crash safety."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading

import cv2
import numpy as np
import pytest

from hetnet_ros.records import (
    INTERRUPTED_MESSAGE,
    RecordError,
    RecordStore,
    Region,
    ViewVerdict,
    safe_path_component,
)
from hetnet_ros.robots.base import Pose

POSE = Pose((0.5, 0.0, 0.32), (1.0, 0.0, 0.0, 0.0))

READER = textwrap.dedent('''
    import json, sqlite3, sys
    connection = sqlite3.connect(f'file:{sys.argv[1]}?mode=ro', uri=True, timeout=5)
    inspections = connection.execute('SELECT id, status FROM inspections').fetchall()
    views = connection.execute(
        'SELECT view_index, pose_name, pred_score, image_path FROM views ORDER BY view_index'
    ).fetchall()
    print(json.dumps({'inspections': inspections, 'views': views}))
''')


def verdict(score: float, regions=()) -> ViewVerdict:
    return ViewVerdict(
        pred_score=score, raw_score=score * 0.1, threshold=0.5, is_anomalous=score >= 0.5,
        inference_time_s=0.02, model_id='model-a', stamp_s=1700000000.25, regions=regions)


def rgb_image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (24, 32, 3), dtype=np.uint8)


def read_in_other_process(database) -> dict:
    output = subprocess.run(
        [sys.executable, '-c', READER, str(database)], capture_output=True, text=True,
        timeout=30, check=True).stdout
    return json.loads(output)


def test_view_rows_and_files_written_per_view(tmp_path):
    store = RecordStore(tmp_path)
    inspection = store.start_inspection('part-7', view_count=3)
    assert inspection.status == 'running'
    assert inspection.path == tmp_path / 'part-7' / str(inspection.id)
    assert inspection.path.is_dir()

    for index, score in enumerate([0.2, 0.8, 0.4]):
        image, heatmap = rgb_image(index), rgb_image(index + 10)
        row = store.add_view(inspection.id, index, f'pose{index}', POSE, verdict(score),
                             image=image, heatmap=heatmap)

        # Files and row are there before the next view and before finish.
        assert row.image_path.is_file() and row.heatmap_path.is_file()
        saved = cv2.cvtColor(cv2.imread(str(row.image_path)), cv2.COLOR_BGR2RGB)
        assert np.array_equal(saved, image), 'PNG must hold the RGB image unchanged'
        seen = read_in_other_process(store.database_path)
        assert [view[0] for view in seen['views']] == list(range(index + 1))
        assert seen['views'][-1][2] == pytest.approx(score)
        assert seen['views'][-1][3] == f'part-7/{inspection.id}/{index:02d}_pose{index}_image.png'
        assert seen['inspections'] == [[inspection.id, 'running']]

    finished = store.finish_inspection(
        inspection.id, 'succeeded', is_anomalous=True, worst_view_index=1, worst_score=0.8,
        model_id='model-a')
    assert finished.status == 'succeeded'
    assert finished.is_anomalous is True
    assert finished.worst_view_index == 1
    assert finished.finished_at >= finished.started_at
    assert read_in_other_process(store.database_path)['inspections'] == [
        [inspection.id, 'succeeded']]
    store.close()


def test_view_round_trip(tmp_path):
    with RecordStore(tmp_path) as store:
        inspection = store.start_inspection('p', view_count=1)
        regions = (Region(3, 4, 10, 12, 0.9), Region(20, 1, 2, 2, 0.6))
        store.add_view(inspection.id, 0, 'top', POSE, verdict(0.9, regions))
        (view,) = store.list_views(inspection.id)
    assert view.pose_name == 'top'
    assert view.pose == POSE
    assert view.verdict == verdict(0.9, regions)
    assert view.image_path is None and view.heatmap_path is None


def test_views_survive_killed_writer(tmp_path):
    writer = textwrap.dedent(f'''
        import os, signal, numpy as np
        from hetnet_ros.records import RecordStore, ViewVerdict
        from hetnet_ros.robots.base import Pose
        store = RecordStore({str(tmp_path)!r})
        inspection = store.start_inspection('crash', view_count=5)
        for index in range(2):
            store.add_view(inspection.id, index, f'v{{index}}', Pose((0.5, 0.0, 0.3)),
                           ViewVerdict(0.3, 0.03, 0.5, False, 0.01, 'm', 1.0),
                           image=np.zeros((8, 8, 3), np.uint8))
        os.kill(os.getpid(), signal.SIGKILL)
    ''')
    result = subprocess.run([sys.executable, '-c', writer], capture_output=True, text=True,
                            timeout=60, env=os.environ)
    assert result.returncode == -signal.SIGKILL, result.stderr

    with RecordStore(tmp_path) as store:
        (inspection,) = store.list_inspections(part_id='crash')
        views = store.list_views(inspection.id)
    assert inspection.status == 'interrupted', 'reopening marks a killed inspection interrupted'
    assert inspection.message == INTERRUPTED_MESSAGE
    assert inspection.finished_at is None
    assert [view.view_index for view in views] == [0, 1]
    assert all(view.image_path.is_file() for view in views)
    assert not list(tmp_path.rglob('*.partial')), 'no half-written files may remain'
    assert not list((tmp_path / '.running').iterdir()), 'the lock file of the dead writer remains'


# Starts an inspection, records one view, reports its id and waits to be killed.
LIVE_WRITER = textwrap.dedent('''
    import sys, time
    from hetnet_ros.records import RecordStore, ViewVerdict
    from hetnet_ros.robots.base import Pose
    store = RecordStore(sys.argv[1])
    inspection = store.start_inspection('live', view_count=3)
    store.add_view(inspection.id, 0, 'top', Pose((0.5, 0.0, 0.3)),
                   ViewVerdict(0.3, 0.03, 0.5, False, 0.01, 'm', 1.0))
    print(inspection.id, flush=True)
    time.sleep(60)
''')


def test_running_inspection_of_live_process_kept(tmp_path):
    writer = subprocess.Popen([sys.executable, '-c', LIVE_WRITER, str(tmp_path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        inspection_id = int(writer.stdout.readline())
        with RecordStore(tmp_path) as store:
            assert store.get_inspection(inspection_id).status == 'running', (
                'an inspection whose process is alive must stay running')
            assert store.mark_interrupted_inspections() == []

        writer.kill()
        writer.wait(timeout=10)
        with RecordStore(tmp_path) as store:
            inspection = store.get_inspection(inspection_id)
            views = store.list_views(inspection_id)
            assert store.mark_interrupted_inspections() == [], 'marked only once'
        assert inspection.status == 'interrupted'
        assert [view.pose_name for view in views] == ['top']
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait(timeout=10)


def test_running_inspection_of_same_process_kept(tmp_path):
    with RecordStore(tmp_path) as writer:
        inspection = writer.start_inspection('p', view_count=2)
        with RecordStore(tmp_path) as reader:
            assert reader.get_inspection(inspection.id).status == 'running'
        writer.add_view(inspection.id, 0, 'top', POSE, verdict(0.2))
        finished = writer.finish_inspection(inspection.id, 'succeeded', is_anomalous=False)
    assert finished.status == 'succeeded'
    assert not (tmp_path / '.running' / f'{inspection.id}.lock').exists()
    with RecordStore(tmp_path) as store:
        assert store.get_inspection(inspection.id).status == 'succeeded'


def test_closed_store_running_inspection_interrupted(tmp_path):
    with RecordStore(tmp_path) as store:
        inspection = store.start_inspection('p', view_count=2)
        store.add_view(inspection.id, 0, 'top', POSE, verdict(0.7), image=rgb_image(0))
    with RecordStore(tmp_path) as store:
        reopened = store.get_inspection(inspection.id)
        (view,) = store.list_views(inspection.id)
    assert reopened.status == 'interrupted'
    assert view.image_path.is_file()


def test_running_inspection_without_lock_file_interrupted(tmp_path):
    """Records written before lock files existed have no lock file for a running row."""
    with RecordStore(tmp_path) as store:
        inspection = store.start_inspection('old', view_count=1)
    (tmp_path / '.running' / f'{inspection.id}.lock').unlink(missing_ok=True)
    with RecordStore(tmp_path) as store:
        assert store.get_inspection(inspection.id).status == 'interrupted'


def test_list_parts_counts_and_last(tmp_path):
    with RecordStore(tmp_path) as store:
        assert store.list_parts() == []
        first = store.start_inspection('b', 1)
        store.finish_inspection(first.id, 'succeeded', is_anomalous=True)
        store.start_inspection('a', 1)
        last_of_b = store.start_inspection('b', 1)
        store.finish_inspection(last_of_b.id, 'failed', 'robot fault')
        parts = store.list_parts()
    assert [part.part_id for part in parts] == ['a', 'b']
    assert [part.inspection_count for part in parts] == [1, 2]
    assert parts[1].last_inspection.id == last_of_b.id
    assert parts[1].last_inspection.status == 'failed'
    assert parts[1].last_inspection.message == 'robot fault'


def test_list_inspections_filters(tmp_path):
    with RecordStore(tmp_path) as store:
        first = store.start_inspection('a', 1)
        second = store.start_inspection('b', 1)
        third = store.start_inspection('a', 1)
        store.finish_inspection(first.id, 'failed', 'timed out')
        assert [row.id for row in store.list_inspections()] == [third.id, second.id, first.id]
        assert [row.id for row in store.list_inspections(part_id='a')] == [third.id, first.id]
        assert [row.id for row in store.list_inspections(status='failed')] == [first.id]
        assert [row.id for row in store.list_inspections(limit=1)] == [third.id]
        assert store.get_inspection(first.id).message == 'timed out'


def test_concurrent_writers_in_threads(tmp_path):
    with RecordStore(tmp_path) as store:
        inspection = store.start_inspection('threads', view_count=8)
        threads = [
            threading.Thread(target=store.add_view, args=(
                inspection.id, index, f'v{index}', POSE, verdict(0.1), rgb_image(index)))
            for index in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert [view.view_index for view in store.list_views(inspection.id)] == list(range(8))


def test_part_id_made_safe_for_paths(tmp_path):
    assert safe_path_component('P-001/A b') == 'P-001_A_b'
    assert safe_path_component('..') == '_..'
    with RecordStore(tmp_path) as store:
        inspection = store.start_inspection('../escape', view_count=1)
        assert inspection.path.parent.parent == tmp_path
        assert inspection.part_id == '../escape'


def test_invalid_calls_rejected(tmp_path):
    with RecordStore(tmp_path) as store:
        with pytest.raises(ValueError, match='part_id'):
            store.start_inspection('', 1)
        inspection = store.start_inspection('p', 1)
        with pytest.raises(ValueError, match="invalid final status 'done'"):
            store.finish_inspection(inspection.id, 'done')
        with pytest.raises(ValueError, match="invalid final status 'interrupted'"):
            store.finish_inspection(inspection.id, 'interrupted')
        with pytest.raises(RecordError, match='inspection 999 not found'):
            store.add_view(999, 0, 'top', POSE, verdict(0.1))
        with pytest.raises(ValueError, match='must be uint8'):
            store.add_view(inspection.id, 0, 'top', POSE, verdict(0.1),
                           image=np.zeros((4, 4, 3), np.float32))
        store.add_view(inspection.id, 0, 'top', POSE, verdict(0.1))
        with pytest.raises(RecordError, match='record view 0 of inspection'):
            store.add_view(inspection.id, 0, 'top', POSE, verdict(0.1))


def test_database_uses_wal(tmp_path):
    RecordStore(tmp_path).close()
    connection = sqlite3.connect(tmp_path / 'records.db')
    assert connection.execute('PRAGMA journal_mode').fetchone()[0] == 'wal'
    tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {'inspections', 'views'} <= tables


def test_unwritable_root_rejected(tmp_path):
    blocker = tmp_path / 'file'
    blocker.write_text('not a folder')
    with pytest.raises(RecordError, match='cannot open the records database'):
        RecordStore(blocker / 'records')
