"""hetnet-records: list, show and export the inspection records of a records folder.

    hetnet-records --records DIR list
    hetnet-records --records DIR show PART_ID
    hetnet-records --records DIR export --csv OUT.csv [--part PART_ID]

DIR is the folder given to `hetnet-inspect --records` (the `records_dir`
parameter of the inspection node). Opening it marks inspections left
'running' by a process that died as 'interrupted' (see hetnet_ros.records),
so the command needs write access to the folder.

Exit codes: 0 success, 1 the records or the part were not found or a file
could not be written, 2 invalid arguments.
"""

import argparse
import csv
import dataclasses
import datetime
import difflib
import json
import logging
import pathlib
import sys
from typing import Optional, TextIO

from hetnet_ros.records import (
    DATABASE_NAME, InspectionRow, RecordError, RecordStore, ViewRow)

EXIT_FAILURE = 1

# Columns of the CSV export, one row per recorded view. Positions are in metres
# in the robot base frame; scores are normalised so that the threshold is 0.5.
CSV_COLUMNS = (
    'part_id', 'inspection_id', 'inspection_status', 'inspection_started_at',
    'view_index', 'pose_name',
    'position_x_m', 'position_y_m', 'position_z_m',
    'orientation_x', 'orientation_y', 'orientation_z', 'orientation_w',
    'image_stamp_s', 'pred_score', 'raw_score', 'threshold', 'is_anomalous',
    'region_count', 'regions', 'inference_time_s', 'model_id',
    'image_path', 'heatmap_path', 'recorded_at',
)


class RecordsNotFoundError(LookupError):
    """The records folder, its database or a part does not exist."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='hetnet-records',
        description='List, show and export the inspection records written by hetnet-inspect '
                    'and the inspection node.')
    parser.add_argument('--records', required=True, metavar='DIR',
                        help=f'records folder, the one that contains {DATABASE_NAME}')
    commands = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')

    commands.add_parser(
        'list', help='list the parts with their inspection count and last verdict')

    show = commands.add_parser(
        'show', help="print a part's history: inspections, views, scores and files")
    show.add_argument('part_id', metavar='PART_ID', help='part identifier')

    export = commands.add_parser('export', help='write one CSV row per recorded view')
    export.add_argument('--csv', required=True, metavar='OUT.csv',
                        help="output CSV file; '-' writes to standard output")
    export.add_argument('--part', default=None, metavar='PART_ID',
                        help='export only this part (default: every part)')
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    # Warnings of the record store (inspections marked interrupted) go to stderr.
    logging.basicConfig(level=logging.WARNING, format='%(levelname)s: %(message)s')
    try:
        with open_records(args.records) as store:
            if args.command == 'list':
                print_parts(store, sys.stdout)
            elif args.command == 'show':
                print_part_history(store, args.part_id, sys.stdout)
            else:
                count = export_csv(store, args.csv, args.part)
                if args.csv != '-':
                    print(f'wrote {count} views to {args.csv}', file=sys.stderr)
    except (RecordsNotFoundError, RecordError) as error:
        print(f'error: {error}', file=sys.stderr)
        return EXIT_FAILURE
    except OSError as error:
        print(f'error: cannot write {error.filename or args.csv}: {error.strerror}',
              file=sys.stderr)
        return EXIT_FAILURE
    return 0


def open_records(folder: str) -> RecordStore:
    """Open an existing records folder; unlike RecordStore, never create one.

    Raises:
        RecordsNotFoundError: when the folder or its database does not exist.
    """
    root = pathlib.Path(folder).expanduser()
    if not root.exists():
        raise RecordsNotFoundError(
            f'records folder {root} not found; pass the folder given to '
            'hetnet-inspect --records (the records_dir parameter of the inspection node)')
    if not root.is_dir():
        raise RecordsNotFoundError(f'records folder {root} is not a folder')
    if not (root / DATABASE_NAME).is_file():
        raise RecordsNotFoundError(
            f'no records database in {root} (expected {root / DATABASE_NAME}); pass the '
            'folder given to hetnet-inspect --records')
    return RecordStore(root)


def print_parts(store: RecordStore, out: TextIO) -> None:
    """Print one line per part: inspection count and the newest inspection's outcome."""
    parts = store.list_parts()
    if not parts:
        print(f'no inspections recorded in {store.root}', file=out)
        return

    rows = [('PART', 'INSPECTIONS', 'LAST STATUS', 'LAST VERDICT', 'LAST STARTED')]
    for part in parts:
        last = part.last_inspection
        rows.append((part.part_id, str(part.inspection_count), last.status,
                     verdict_label(last.is_anomalous), format_time(last.started_at)))
    _print_table(rows, out)


def print_part_history(store: RecordStore, part_id: str, out: TextIO) -> None:
    """Print every inspection of a part, oldest first, with its views and files.

    Raises:
        RecordsNotFoundError: when the part has no inspection.
    """
    inspections = list(reversed(_inspections_of_part(store, part_id)))
    print(f'part {part_id}: {len(inspections)} inspection(s) in {store.root}', file=out)
    for inspection in inspections:
        print(file=out)
        _print_inspection(inspection, store.list_views(inspection.id), out)


def export_csv(store: RecordStore, destination: str, part_id: Optional[str] = None) -> int:
    """Write one CSV row per recorded view, oldest inspection first; return the row count.

    Raises:
        RecordsNotFoundError: when `part_id` is given and has no inspection.
        OSError: when the file cannot be written.
    """
    if part_id is not None:
        inspections = _inspections_of_part(store, part_id)
    else:
        inspections = store.list_inspections()
    rows = [
        view_csv_row(inspection, view)
        for inspection in reversed(inspections)
        for view in store.list_views(inspection.id)
    ]

    if destination == '-':
        _write_csv(sys.stdout, rows)
    else:
        with open(destination, 'w', newline='', encoding='utf-8') as file:
            _write_csv(file, rows)
    return len(rows)


def view_csv_row(inspection: InspectionRow, view: ViewRow) -> dict:
    """Return the CSV_COLUMNS values of one view."""
    verdict = view.verdict
    regions = [dataclasses.asdict(region) for region in verdict.regions]
    return {
        'part_id': inspection.part_id,
        'inspection_id': inspection.id,
        'inspection_status': inspection.status,
        'inspection_started_at': format_time(inspection.started_at),
        'view_index': view.view_index,
        'pose_name': view.pose_name,
        'position_x_m': view.pose.position[0],
        'position_y_m': view.pose.position[1],
        'position_z_m': view.pose.position[2],
        'orientation_x': view.pose.orientation[0],
        'orientation_y': view.pose.orientation[1],
        'orientation_z': view.pose.orientation[2],
        'orientation_w': view.pose.orientation[3],
        'image_stamp_s': f'{verdict.stamp_s:.9f}',
        'pred_score': verdict.pred_score,
        'raw_score': verdict.raw_score,
        'threshold': verdict.threshold,
        'is_anomalous': int(verdict.is_anomalous),
        'region_count': len(regions),
        'regions': json.dumps(regions),
        'inference_time_s': verdict.inference_time_s,
        'model_id': verdict.model_id,
        'image_path': '' if view.image_path is None else str(view.image_path),
        'heatmap_path': '' if view.heatmap_path is None else str(view.heatmap_path),
        'recorded_at': format_time(view.recorded_at),
    }


def verdict_label(is_anomalous: Optional[bool]) -> str:
    """Return 'ANOMALOUS', 'normal', or '-' for an inspection without a part verdict."""
    if is_anomalous is None:
        return '-'
    return 'ANOMALOUS' if is_anomalous else 'normal'


def format_time(seconds: Optional[float]) -> str:
    """Format seconds since the Unix epoch as local ISO 8601 time with its UTC offset."""
    if seconds is None:
        return '-'
    moment = datetime.datetime.fromtimestamp(seconds).astimezone()
    return moment.isoformat(timespec='seconds')


def _inspections_of_part(store: RecordStore, part_id: str) -> list[InspectionRow]:
    inspections = store.list_inspections(part_id=part_id)
    if inspections:
        return inspections

    known = [part.part_id for part in store.list_parts()]
    close = difflib.get_close_matches(part_id, known, n=3)
    hint = f'; similar part ids: {", ".join(close)}' if close else ''
    raise RecordsNotFoundError(
        f'part {part_id!r} not found in {store.database_path}{hint}; run '
        f'hetnet-records --records {store.root} list to see the recorded parts')


def _print_inspection(inspection: InspectionRow, views: list[ViewRow], out: TextIO) -> None:
    print(f'inspection {inspection.id}: {inspection.status}, part verdict '
          f'{verdict_label(inspection.is_anomalous)}, {len(views)} of '
          f'{inspection.view_count} views recorded', file=out)
    print(f'  started   {format_time(inspection.started_at)}', file=out)
    print(f'  finished  {format_time(inspection.finished_at)}', file=out)
    if inspection.model_id:
        print(f'  model     {inspection.model_id}', file=out)
    if inspection.worst_view_index is not None and inspection.worst_view_index >= 0:
        names = {view.view_index: view.pose_name for view in views}
        name = names.get(inspection.worst_view_index, '')
        print(f'  worst     view {inspection.worst_view_index} {name!r}, '
              f'pred_score {inspection.worst_score:.3f}', file=out)
    if inspection.message:
        print(f'  message   {inspection.message}', file=out)
    print(f'  folder    {inspection.path}', file=out)
    if not views:
        return

    rows = [('VIEW', 'POSE', 'PRED_SCORE', 'THRESHOLD', 'VERDICT', 'REGIONS')]
    for view in views:
        verdict = view.verdict
        rows.append((str(view.view_index), view.pose_name, f'{verdict.pred_score:.3f}',
                     f'{verdict.threshold:.3f}', verdict_label(verdict.is_anomalous),
                     str(len(verdict.regions))))
    _print_table(rows, out, indent='  ')
    for view in views:
        print(f'  view {view.view_index} image:   {view.image_path or "(not recorded)"}', file=out)
        print(f'  view {view.view_index} heatmap: {view.heatmap_path or "(not recorded)"}',
              file=out)


def _print_table(rows: list[tuple], out: TextIO, indent: str = '') -> None:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths)]
        print(indent + '  '.join(cells).rstrip(), file=out)


def _write_csv(file: TextIO, rows: list[dict]) -> None:
    writer = csv.DictWriter(file, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)


if __name__ == '__main__':
    sys.exit(main())
