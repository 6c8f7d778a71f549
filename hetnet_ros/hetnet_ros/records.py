"""Durable inspection records: an SQLite database plus PNG files per view.

Layout under the records root::

    records.db                                  tables inspections and views
    <part_id>/<inspection_id>/00_top_image.png  camera image of view 0
    <part_id>/<inspection_id>/00_top_heatmap.png

Each view is written as soon as it is judged: its image files first (written
to a temporary name, then renamed), then its database row in its own
transaction. A row therefore never points to a missing file, and every
recorded view survives if the process dies afterwards. The database runs in
WAL mode, so other processes can read it while an inspection is running.

A running inspection is owned by the store that started it, which holds an
exclusive `flock` on ``.running/<inspection_id>.lock`` until it finishes the
inspection. The kernel releases that lock when the owning process dies, so a
store opened later marks every 'running' inspection whose lock is free as
'interrupted'. An inspection that a live process is still recording is left
alone, whether that process is another node or the same one.

NOTE: synchronous=NORMAL survives a crash of the process but may lose the
last committed views on a power failure; the database stays consistent.
NOTE: flock works between processes of one host. On a network file system the
lock may not be seen by other hosts, so keep the records folder on a local disk.
"""

import dataclasses
import errno
import fcntl
import json
import logging
import os
import pathlib
import re
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import cv2
import numpy as np

from hetnet_ros.robots.base import Pose

logger = logging.getLogger(__name__)

DATABASE_NAME = 'records.db'
SCHEMA_VERSION = 1
LOCK_FOLDER = '.running'
# 'interrupted' is set only when a store finds a running inspection whose process died.
STATUSES = ('running', 'succeeded', 'failed', 'canceled', 'interrupted')
FINAL_STATUSES = ('succeeded', 'failed', 'canceled')
INTERRUPTED_MESSAGE = ('the process recording this inspection ended before the inspection '
                       'finished; the views recorded until then are kept')

_SCHEMA = """
CREATE TABLE IF NOT EXISTS inspections (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    part_id TEXT NOT NULL,
    status TEXT NOT NULL,
    message TEXT NOT NULL DEFAULT '',
    started_at REAL NOT NULL,
    finished_at REAL,
    view_count INTEGER NOT NULL,
    is_anomalous INTEGER,
    worst_view_index INTEGER,
    worst_score REAL,
    model_id TEXT NOT NULL DEFAULT '',
    path TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS views (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    inspection_id INTEGER NOT NULL REFERENCES inspections(id),
    view_index INTEGER NOT NULL,
    pose_name TEXT NOT NULL,
    position_x REAL NOT NULL,
    position_y REAL NOT NULL,
    position_z REAL NOT NULL,
    orientation_x REAL NOT NULL,
    orientation_y REAL NOT NULL,
    orientation_z REAL NOT NULL,
    orientation_w REAL NOT NULL,
    stamp REAL NOT NULL,
    pred_score REAL NOT NULL,
    raw_score REAL NOT NULL,
    threshold REAL NOT NULL,
    is_anomalous INTEGER NOT NULL,
    regions TEXT NOT NULL,
    inference_time_s REAL NOT NULL,
    model_id TEXT NOT NULL,
    image_path TEXT,
    heatmap_path TEXT,
    recorded_at REAL NOT NULL,
    UNIQUE (inspection_id, view_index)
);
CREATE INDEX IF NOT EXISTS inspections_part_id ON inspections (part_id);
"""


class RecordError(RuntimeError):
    """A record could not be written or read."""


@dataclass(frozen=True)
class Region:
    """Anomalous region in input-image pixels with its peak normalised score."""

    x: int
    y: int
    width: int
    height: int
    peak_score: float


@dataclass(frozen=True)
class ViewVerdict:
    """Detector verdict on the image of one view, as stored in the views table."""

    pred_score: float
    raw_score: float
    threshold: float
    is_anomalous: bool
    inference_time_s: float
    model_id: str
    stamp_s: float  # header stamp of the judged image, seconds since the Unix epoch
    regions: tuple[Region, ...] = ()


@dataclass(frozen=True)
class InspectionRow:
    id: int
    part_id: str
    status: str
    message: str
    started_at: float
    finished_at: Optional[float]
    view_count: int
    is_anomalous: Optional[bool]
    worst_view_index: Optional[int]
    worst_score: Optional[float]
    model_id: str
    path: pathlib.Path


@dataclass(frozen=True)
class ViewRow:
    id: int
    inspection_id: int
    view_index: int
    pose_name: str
    pose: Pose
    verdict: ViewVerdict
    image_path: Optional[pathlib.Path]
    heatmap_path: Optional[pathlib.Path]
    recorded_at: float


@dataclass(frozen=True)
class PartSummary:
    """A part with the number of its inspections and its newest inspection."""

    part_id: str
    inspection_count: int
    last_inspection: InspectionRow


def safe_path_component(name: str) -> str:
    """Turn a part id or pose name into a single file-name component."""
    component = re.sub(r'[^A-Za-z0-9._-]', '_', name)
    if component in ('', '.', '..'):
        component = f'_{component}'
    return component


class RecordStore:
    """Store of inspections and their views under one root folder.

    The methods may be called from several threads of one process; they are
    serialised by a lock. Other processes may open the same root to read.
    Opening a store marks the inspections of dead processes as interrupted.
    """

    def __init__(self, root: Union[str, pathlib.Path]) -> None:
        self.root = pathlib.Path(root).expanduser().resolve()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self._connection = sqlite3.connect(
                self.root / DATABASE_NAME, timeout=5.0, check_same_thread=False)
            self._connection.row_factory = sqlite3.Row
            self._connection.execute('PRAGMA journal_mode=WAL')
            self._connection.execute('PRAGMA synchronous=NORMAL')
            self._connection.execute('PRAGMA foreign_keys=ON')
            with self._connection:
                self._connection.executescript(_SCHEMA)
                self._connection.execute(f'PRAGMA user_version={SCHEMA_VERSION}')
            (self.root / LOCK_FOLDER).mkdir(exist_ok=True)
        except (OSError, sqlite3.Error) as error:
            raise RecordError(
                f'cannot open the records database in {self.root}: {error}; check that the '
                'folder is writable') from error
        self._lock = threading.Lock()
        # inspection id -> open file descriptor of its flock-ed lock file
        self._owner_locks: dict[int, int] = {}
        self.mark_interrupted_inspections()

    @property
    def database_path(self) -> pathlib.Path:
        return self.root / DATABASE_NAME

    def close(self) -> None:
        """Close the database. Inspections still running are marked interrupted on the next open."""
        with self._lock:
            for inspection_id in list(self._owner_locks):
                self._release_owner_lock(inspection_id, remove_file=False)
            self._connection.close()

    def __enter__(self) -> 'RecordStore':
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def start_inspection(
        self,
        part_id: str,
        view_count: int,
        model_id: str = '',
        started_at: Optional[float] = None,
    ) -> InspectionRow:
        """Insert a running inspection and create its folder."""
        if not part_id:
            raise ValueError('part_id must not be empty')
        started_at = time.time() if started_at is None else started_at

        with self._lock:
            inspection_id = None
            try:
                with self._write_transaction('start the inspection of part ' + repr(part_id)):
                    cursor = self._connection.execute(
                        'INSERT INTO inspections (part_id, status, started_at, view_count, '
                        "model_id, path) VALUES (?, 'running', ?, ?, ?, '')",
                        (part_id, started_at, int(view_count), model_id))
                    inspection_id = cursor.lastrowid
                    relative = pathlib.Path(safe_path_component(part_id), str(inspection_id))
                    self._connection.execute(
                        'UPDATE inspections SET path = ? WHERE id = ?',
                        (relative.as_posix(), inspection_id))
                    (self.root / relative).mkdir(parents=True, exist_ok=True)
                    # Locked before the commit, so no other store can read the row unlocked.
                    self._acquire_owner_lock(inspection_id)
            except RecordError:
                if inspection_id is not None:
                    self._release_owner_lock(inspection_id, remove_file=True)
                raise
            row = self._fetch_inspection(inspection_id)
        logger.info('inspection %d of part %r started, folder %s', row.id, part_id, row.path)
        return row

    def add_view(
        self,
        inspection_id: int,
        view_index: int,
        pose_name: str,
        pose: Pose,
        verdict: ViewVerdict,
        image: Optional[np.ndarray] = None,
        heatmap: Optional[np.ndarray] = None,
    ) -> ViewRow:
        """Write the image files, then insert and commit the view's row.

        Args:
            image, heatmap: RGB uint8 arrays (H, W, 3), or grayscale (H, W); None skips the file.
        """
        with self._lock:
            inspection = self._fetch_inspection(inspection_id)
            folder = self.root / inspection.path
            stem = f'{view_index:02d}_{safe_path_component(pose_name)}'
            image_path = _write_png(folder / f'{stem}_image.png', image)
            heatmap_path = _write_png(folder / f'{stem}_heatmap.png', heatmap)

            regions = json.dumps([dataclasses.asdict(region) for region in verdict.regions])
            with self._write_transaction(f'record view {view_index} of inspection {inspection_id}'):
                cursor = self._connection.execute(
                    'INSERT INTO views (inspection_id, view_index, pose_name, '
                    'position_x, position_y, position_z, '
                    'orientation_x, orientation_y, orientation_z, orientation_w, '
                    'stamp, pred_score, raw_score, threshold, is_anomalous, regions, '
                    'inference_time_s, model_id, image_path, heatmap_path, recorded_at) '
                    'VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)',
                    (inspection_id, view_index, pose_name, *pose.position, *pose.orientation,
                     verdict.stamp_s, verdict.pred_score, verdict.raw_score, verdict.threshold,
                     int(verdict.is_anomalous), regions, verdict.inference_time_s,
                     verdict.model_id, self._relative(image_path), self._relative(heatmap_path),
                     time.time()))
            row = self._fetch_views('WHERE id = ?', (cursor.lastrowid,))[0]
        logger.debug('recorded view %d (%s) of inspection %d', view_index, pose_name, inspection_id)
        return row

    def finish_inspection(
        self,
        inspection_id: int,
        status: str,
        message: str = '',
        is_anomalous: Optional[bool] = None,
        worst_view_index: Optional[int] = None,
        worst_score: Optional[float] = None,
        model_id: Optional[str] = None,
    ) -> InspectionRow:
        """Set the final status ('succeeded', 'failed' or 'canceled') and the part verdict.

        The commit comes before the lock of the inspection is released, so a store
        opened meanwhile never marks a finished inspection as interrupted.
        """
        if status not in FINAL_STATUSES:
            raise ValueError(
                f'invalid final status {status!r}; expected succeeded, failed or canceled')
        with self._lock:
            self._fetch_inspection(inspection_id)
            with self._write_transaction(f'finish inspection {inspection_id}'):
                self._connection.execute(
                    'UPDATE inspections SET status = ?, message = ?, finished_at = ?, '
                    'is_anomalous = ?, worst_view_index = ?, worst_score = ?, '
                    'model_id = COALESCE(?, model_id) WHERE id = ?',
                    (status, message, time.time(),
                     None if is_anomalous is None else int(is_anomalous),
                     worst_view_index, worst_score, model_id, inspection_id))
            self._release_owner_lock(inspection_id, remove_file=True)
            row = self._fetch_inspection(inspection_id)
        logger.info('inspection %d of part %r %s', inspection_id, row.part_id, status)
        return row

    def mark_interrupted_inspections(self) -> list[InspectionRow]:
        """Mark 'running' inspections whose recording process has died as 'interrupted'.

        Called when the store opens. An inspection counts as dead when no process holds
        the lock of its lock file, or when that file is missing (records written by
        versions without lock files). Their views and files are kept unchanged.

        Returns:
            The inspections marked by this call, with their new status.
        """
        marked = []
        with self._lock:
            running = self._connection.execute(
                "SELECT id FROM inspections WHERE status = 'running' ORDER BY id").fetchall()
            for (inspection_id,) in running:
                if inspection_id in self._owner_locks or not self._take_dead_owner_lock(
                        inspection_id):
                    continue
                with self._write_transaction(f'mark inspection {inspection_id} interrupted'):
                    # The status condition skips an inspection finished since the SELECT.
                    cursor = self._connection.execute(
                        "UPDATE inspections SET status = 'interrupted', message = ? "
                        "WHERE id = ? AND status = 'running'",
                        (INTERRUPTED_MESSAGE, inspection_id))
                self._release_owner_lock(inspection_id, remove_file=True)
                if cursor.rowcount:
                    marked.append(self._fetch_inspection(inspection_id))

        for row in marked:
            logger.warning('inspection %d of part %r was left running by a process that ended; '
                           'marked interrupted (%d views recorded, folder %s)',
                           row.id, row.part_id, len(self.list_views(row.id)), row.path)
        return marked

    def get_inspection(self, inspection_id: int) -> InspectionRow:
        with self._lock:
            return self._fetch_inspection(inspection_id)

    def list_inspections(
        self,
        part_id: Optional[str] = None,
        status: Optional[str] = None,
        limit: Optional[int] = None,
    ) -> list[InspectionRow]:
        """Return inspections, newest first, optionally of one part and/or one status."""
        conditions, parameters = [], []
        if part_id is not None:
            conditions.append('part_id = ?')
            parameters.append(part_id)
        if status is not None:
            conditions.append('status = ?')
            parameters.append(status)
        query = 'SELECT * FROM inspections'
        if conditions:
            query += ' WHERE ' + ' AND '.join(conditions)
        query += ' ORDER BY id DESC'
        if limit is not None:
            query += ' LIMIT ?'
            parameters.append(int(limit))

        with self._lock:
            rows = self._connection.execute(query, parameters).fetchall()
        return [self._inspection_from_row(row) for row in rows]

    def list_parts(self) -> list[PartSummary]:
        """Return every part with its inspection count and newest inspection, by part id."""
        with self._lock:
            rows = self._connection.execute(
                'SELECT inspections.*, counts.inspection_count FROM inspections JOIN ('
                '  SELECT part_id, COUNT(*) AS inspection_count, MAX(id) AS last_id'
                '  FROM inspections GROUP BY part_id'
                ') AS counts ON inspections.id = counts.last_id '
                'ORDER BY inspections.part_id').fetchall()
        return [
            PartSummary(row['part_id'], row['inspection_count'], self._inspection_from_row(row))
            for row in rows
        ]

    def list_views(self, inspection_id: int) -> list[ViewRow]:
        """Return the recorded views of an inspection in view order."""
        with self._lock:
            return self._fetch_views('WHERE inspection_id = ? ORDER BY view_index', (inspection_id,))

    def inspection_folder(self, inspection_id: int) -> pathlib.Path:
        return self.get_inspection(inspection_id).path

    def _write_transaction(self, action: str):
        return _Transaction(self._connection, action)

    def _lock_path(self, inspection_id: int) -> pathlib.Path:
        return self.root / LOCK_FOLDER / f'{inspection_id}.lock'

    def _acquire_owner_lock(self, inspection_id: int) -> None:
        """Create and lock the lock file of a new inspection; raises OSError on failure."""
        descriptor = os.open(self._lock_path(inspection_id), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(descriptor)
            raise
        self._owner_locks[inspection_id] = descriptor

    def _take_dead_owner_lock(self, inspection_id: int) -> bool:
        """Lock the lock file of an inspection unless a live process holds it.

        Returns:
            True when the owner is gone: the lock was taken (and is now held by this
            store), or the lock file does not exist.
        """
        path = self._lock_path(inspection_id)
        try:
            descriptor = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return True
        except OSError as error:
            raise RecordError(
                f'cannot check the lock file {path} of inspection {inspection_id}: {error}; '
                'check that the records folder is writable') from error
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(descriptor)
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return False
            raise RecordError(
                f'cannot lock {path} of inspection {inspection_id}: {error}') from error
        self._owner_locks[inspection_id] = descriptor
        return True

    def _release_owner_lock(self, inspection_id: int, remove_file: bool) -> None:
        descriptor = self._owner_locks.pop(inspection_id, None)
        if remove_file:
            # Unlinked before the lock is released: a store that locks the old file
            # afterwards finds the inspection no longer running and changes nothing.
            self._lock_path(inspection_id).unlink(missing_ok=True)
        if descriptor is not None:
            os.close(descriptor)

    def _fetch_inspection(self, inspection_id: int) -> InspectionRow:
        row = self._connection.execute(
            'SELECT * FROM inspections WHERE id = ?', (inspection_id,)).fetchone()
        if row is None:
            raise RecordError(f'inspection {inspection_id} not found in {self.database_path}')
        return self._inspection_from_row(row)

    def _fetch_views(self, where: str, parameters: Sequence) -> list[ViewRow]:
        rows = self._connection.execute(f'SELECT * FROM views {where}', parameters).fetchall()
        return [self._view_from_row(row) for row in rows]

    def _inspection_from_row(self, row: sqlite3.Row) -> InspectionRow:
        return InspectionRow(
            id=row['id'],
            part_id=row['part_id'],
            status=row['status'],
            message=row['message'],
            started_at=row['started_at'],
            finished_at=row['finished_at'],
            view_count=row['view_count'],
            is_anomalous=None if row['is_anomalous'] is None else bool(row['is_anomalous']),
            worst_view_index=row['worst_view_index'],
            worst_score=row['worst_score'],
            model_id=row['model_id'],
            path=self.root / row['path'])

    def _view_from_row(self, row: sqlite3.Row) -> ViewRow:
        regions = tuple(Region(**region) for region in json.loads(row['regions']))
        verdict = ViewVerdict(
            pred_score=row['pred_score'],
            raw_score=row['raw_score'],
            threshold=row['threshold'],
            is_anomalous=bool(row['is_anomalous']),
            inference_time_s=row['inference_time_s'],
            model_id=row['model_id'],
            stamp_s=row['stamp'],
            regions=regions)
        pose = Pose(
            (row['position_x'], row['position_y'], row['position_z']),
            (row['orientation_x'], row['orientation_y'], row['orientation_z'],
             row['orientation_w']))
        return ViewRow(
            id=row['id'],
            inspection_id=row['inspection_id'],
            view_index=row['view_index'],
            pose_name=row['pose_name'],
            pose=pose,
            verdict=verdict,
            image_path=None if row['image_path'] is None else self.root / row['image_path'],
            heatmap_path=None if row['heatmap_path'] is None else self.root / row['heatmap_path'],
            recorded_at=row['recorded_at'])

    def _relative(self, path: Optional[pathlib.Path]) -> Optional[str]:
        return None if path is None else path.relative_to(self.root).as_posix()


class _Transaction:
    """Commit on success; roll back and raise `RecordError` naming the action on failure."""

    def __init__(self, connection: sqlite3.Connection, action: str) -> None:
        self._connection = connection
        self._action = action

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, traceback) -> bool:
        if exc_type is None:
            try:
                self._connection.commit()
                return False
            except sqlite3.Error as error:
                exc = error
        self._connection.rollback()
        if isinstance(exc, (sqlite3.Error, OSError)):
            raise RecordError(f'failed to {self._action}: {exc}') from exc
        return False


def _write_png(path: pathlib.Path, image: Optional[np.ndarray]) -> Optional[pathlib.Path]:
    """Write an RGB or grayscale uint8 image atomically; None writes nothing."""
    if image is None:
        return None
    image = np.ascontiguousarray(image)
    if image.dtype != np.uint8 or not (
            image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3))):
        raise ValueError(
            f'image for {path.name} must be uint8 (H, W), (H, W, 1) or (H, W, 3), '
            f'got {image.dtype} {image.shape}')
    if image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)

    ok, encoded = cv2.imencode('.png', image)
    if not ok:
        raise RecordError(f'failed to encode {path.name} as PNG')
    temporary = path.with_name(path.name + '.partial')
    try:
        temporary.write_bytes(encoded.tobytes())
        os.replace(temporary, path)
    except OSError as error:
        raise RecordError(f'failed to write {path}: {error}') from error
    return path
