"""hetnet-records on a real record store: list, show, CSV export and errors."""

import csv
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from hetnet_ros import records_cli
from hetnet_ros.records import RecordStore, Region, ViewVerdict
from hetnet_ros.robots.base import Pose

POSES = {
    'top': Pose((0.5, 0.0, 0.32), (1.0, 0.0, 0.0, 0.0)),
    'front': Pose((0.35, 0.0, 0.2798), (0.965926, 0.0, 0.258819, 0.0)),
}


def verdict(score: float, regions=()) -> ViewVerdict:
    return ViewVerdict(
        pred_score=score, raw_score=score / 10, threshold=0.5, is_anomalous=score >= 0.5,
        inference_time_s=0.03, model_id='hetnet-test', stamp_s=1700000000.123456789,
        regions=regions)


@pytest.fixture
def records(tmp_path):
    """Records of two parts: screw-1 (a failed then an anomalous inspection), screw-2 (normal)."""
    root = tmp_path / 'records'
    image = np.full((16, 16, 3), 120, np.uint8)
    with RecordStore(root) as store:
        failed = store.start_inspection('screw-1', view_count=2)
        store.add_view(failed.id, 0, 'top', POSES['top'], verdict(0.2), image=image)
        store.finish_inspection(failed.id, 'failed', 'robot arm fault while settling')

        anomalous = store.start_inspection('screw-1', view_count=2)
        store.add_view(anomalous.id, 0, 'top', POSES['top'], verdict(0.3), image=image,
                       heatmap=image)
        store.add_view(anomalous.id, 1, 'front', POSES['front'],
                       verdict(0.8, (Region(3, 4, 5, 6, 0.9),)), image=image, heatmap=image)
        store.finish_inspection(anomalous.id, 'succeeded', is_anomalous=True, worst_view_index=1,
                                worst_score=0.8, model_id='hetnet-test')

        normal = store.start_inspection('screw-2', view_count=1)
        store.add_view(normal.id, 0, 'top', POSES['top'], verdict(0.1))
        store.finish_inspection(normal.id, 'succeeded', is_anomalous=False, worst_view_index=0,
                                worst_score=0.1, model_id='hetnet-test')
    return root


def run(capsys, *argv) -> tuple:
    code = records_cli.main(list(argv))
    output = capsys.readouterr()
    return code, output.out, output.err


def test_list_parts_with_last_verdict(records, capsys):
    code, out, err = run(capsys, '--records', str(records), 'list')
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ['PART', 'INSPECTIONS', 'LAST', 'STATUS', 'LAST', 'VERDICT',
                                'LAST', 'STARTED']
    assert lines[1].split()[:4] == ['screw-1', '2', 'succeeded', 'ANOMALOUS']
    assert lines[2].split()[:4] == ['screw-2', '1', 'succeeded', 'normal']
    assert len(lines) == 3


def test_list_empty_records(tmp_path, capsys):
    RecordStore(tmp_path).close()
    code, out, _ = run(capsys, '--records', str(tmp_path), 'list')
    assert code == 0
    assert out.strip() == f'no inspections recorded in {tmp_path.resolve()}'


def test_list_shows_interrupted_inspection(tmp_path):
    with RecordStore(tmp_path) as store:
        inspection = store.start_inspection('crashed', view_count=3)
        store.add_view(inspection.id, 0, 'top', POSES['top'], verdict(0.4))
    # Closing without finishing leaves the row running, as a killed node does. The
    # command runs as a program here, so that its own logging setup reaches stderr.
    result = subprocess.run(
        [sys.executable, '-m', 'hetnet_ros.records_cli', '--records', str(tmp_path), 'list'],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1].split()[:4] == ['crashed', '1', 'interrupted', '-']
    assert f"inspection {inspection.id} of part 'crashed' was left running" in result.stderr


def test_show_prints_history(records, capsys):
    code, out, err = run(capsys, '--records', str(records), 'show', 'screw-1')
    assert code == 0, err
    assert out.startswith('part screw-1: 2 inspection(s)')
    first = out.index('inspection 1: failed, part verdict -, 1 of 2 views recorded')
    second = out.index('inspection 2: succeeded, part verdict ANOMALOUS, 2 of 2 views recorded')
    assert first < second, 'inspections must be printed oldest first'
    assert 'message   robot arm fault while settling' in out
    assert "worst     view 1 'front', pred_score 0.800" in out

    history = out[second:]
    view_lines = [line.split() for line in history.splitlines()
                  if line.startswith('  0 ') or line.startswith('  1 ')]
    assert view_lines == [['0', 'top', '0.300', '0.500', 'normal', '0'],
                          ['1', 'front', '0.800', '0.500', 'ANOMALOUS', '1']]
    folder = records.resolve() / 'screw-1' / '2'
    assert f'view 1 image:   {folder / "01_front_image.png"}' in history
    assert f'view 1 heatmap: {folder / "01_front_heatmap.png"}' in history
    assert (folder / '01_front_heatmap.png').is_file()


def test_show_view_without_files(records, capsys):
    code, out, _ = run(capsys, '--records', str(records), 'show', 'screw-2')
    assert code == 0
    assert 'view 0 image:   (not recorded)' in out


def test_export_csv_one_row_per_view(records, tmp_path, capsys):
    destination = tmp_path / 'views.csv'
    code, _, err = run(capsys, '--records', str(records), 'export', '--csv', str(destination))
    assert code == 0, err
    assert err.strip() == f'wrote 4 views to {destination}'

    with destination.open(newline='') as file:
        rows = list(csv.DictReader(file))
    assert list(rows[0]) == list(records_cli.CSV_COLUMNS)
    assert [(row['part_id'], row['inspection_id'], row['view_index']) for row in rows] == [
        ('screw-1', '1', '0'), ('screw-1', '2', '0'), ('screw-1', '2', '1'), ('screw-2', '3', '0')]
    front = rows[2]
    assert front['inspection_status'] == 'succeeded'
    assert front['pose_name'] == 'front'
    assert float(front['position_x_m']) == pytest.approx(0.35)
    assert float(front['orientation_x']) == pytest.approx(0.965926)
    assert float(front['orientation_z']) == pytest.approx(0.258819)
    assert float(front['pred_score']) == pytest.approx(0.8)
    assert front['is_anomalous'] == '1'
    assert front['region_count'] == '1'
    assert json.loads(front['regions']) == [
        {'x': 3, 'y': 4, 'width': 5, 'height': 6, 'peak_score': pytest.approx(0.9)}]
    assert front['image_stamp_s'] == '1700000000.123456717', 'stamps keep sub-microsecond digits'
    assert front['model_id'] == 'hetnet-test'
    assert os.path.isfile(front['image_path'])
    assert os.path.isfile(front['heatmap_path'])
    assert rows[3]['image_path'] == '', 'a view without an image has an empty path'


def test_export_csv_of_one_part_to_stdout(records, capsys):
    code, out, _ = run(capsys, '--records', str(records), 'export', '--csv', '-',
                       '--part', 'screw-2')
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(row['part_id'], row['pose_name']) for row in rows] == [('screw-2', 'top')]


def test_missing_records_folder_rejected(tmp_path, capsys):
    missing = tmp_path / 'nowhere'
    code, _, err = run(capsys, '--records', str(missing), 'list')
    assert code == 1
    assert f'error: records folder {missing} not found' in err
    assert not missing.exists(), 'the command must not create a records folder'


def test_folder_without_database_rejected(tmp_path, capsys):
    code, _, err = run(capsys, '--records', str(tmp_path), 'list')
    assert code == 1
    assert f'no records database in {tmp_path}' in err
    assert not (tmp_path / 'records.db').exists()


def test_unknown_part_rejected(records, tmp_path, capsys):
    code, out, err = run(capsys, '--records', str(records), 'show', 'screw-3')
    assert code == 1
    assert out == ''
    assert "error: part 'screw-3' not found" in err
    hint = err.split('similar part ids: ', 1)[-1].split(';', 1)[0]
    assert sorted(hint.split(', ')) == ['screw-1', 'screw-2'], err

    destination = tmp_path / 'views.csv'
    code, _, err = run(capsys, '--records', str(records), 'export', '--csv', str(destination),
                       '--part', 'nut-9')
    assert code == 1
    assert "part 'nut-9' not found" in err
    assert not destination.exists()


def test_unwritable_csv_rejected(records, tmp_path, capsys):
    destination = tmp_path / 'missing-folder' / 'views.csv'
    code, _, err = run(capsys, '--records', str(records), 'export', '--csv', str(destination))
    assert code == 1
    assert f'error: cannot write {destination}: No such file or directory' in err


def test_usage_errors_exit_2(records, capsys):
    with pytest.raises(SystemExit) as exit_info:
        records_cli.main(['--records', str(records), 'export'])
    assert exit_info.value.code == 2
    assert '--csv' in capsys.readouterr().err
