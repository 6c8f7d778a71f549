"""Inspection poses: loading and validating the YAML pose file.

A pose file is either a list of poses or a mapping with a `poses` list::

    poses:
      - name: top
        position: [0.50, 0.00, 0.35]          # metres, robot base frame
        orientation: [1.0, 0.0, 0.0, 0.0]     # quaternion x, y, z, w
      - name: front
        position: [0.35, 0.00, 0.28]
        rpy: [3.14159, -0.5236, 0.0]          # roll, pitch, yaw in radians

Each pose gives exactly one of `orientation` and `rpy`. Roll, pitch and yaw
are rotations about the fixed base axes x, y and z, applied in that order
(R = Rz(yaw) Ry(pitch) Rx(roll)), as in tf2's setRPY.
"""

import logging
import math
import pathlib
from dataclasses import dataclass
from typing import Iterable, Sequence, Union

import yaml

from hetnet_ros.robots.base import Pose

logger = logging.getLogger(__name__)

# A quaternion whose norm is within this distance of 1 is normalised silently.
# One farther off is normalised with a warning, because it may be a typo.
QUATERNION_NORM_TOLERANCE = 1e-3

_POSE_KEYS = {'name', 'position', 'orientation', 'rpy'}


class PoseFileError(ValueError):
    """A pose file is missing, unreadable or has an invalid pose."""


class UnknownPoseError(ValueError):
    """A requested pose name is not in the pose file."""


@dataclass(frozen=True)
class InspectionPose:
    """Named TCP pose: position (x, y, z) in metres and unit quaternion (x, y, z, w)."""

    name: str
    position: tuple[float, float, float]
    orientation: tuple[float, float, float, float]

    @property
    def pose(self) -> Pose:
        return Pose(self.position, self.orientation)


def rpy_to_quaternion(roll: float, pitch: float, yaw: float) -> tuple[float, float, float, float]:
    """Convert fixed-axis roll, pitch, yaw (radians) to a unit quaternion (x, y, z, w)."""
    cr, sr = math.cos(roll / 2.0), math.sin(roll / 2.0)
    cp, sp = math.cos(pitch / 2.0), math.sin(pitch / 2.0)
    cy, sy = math.cos(yaw / 2.0), math.sin(yaw / 2.0)
    return (
        sr * cp * cy - cr * sp * sy,
        cr * sp * cy + sr * cp * sy,
        cr * cp * sy - sr * sp * cy,
        cr * cp * cy + sr * sp * sy,
    )


def load_poses(path: Union[str, pathlib.Path]) -> list[InspectionPose]:
    """Load and validate the inspection poses of a YAML file, in file order.

    Raises:
        PoseFileError: naming the file, the pose and the field that is invalid.
    """
    path = pathlib.Path(path)
    try:
        text = path.read_text(encoding='utf-8')
    except FileNotFoundError:
        raise PoseFileError(f'pose file {path} not found') from None
    except OSError as error:
        raise PoseFileError(f'cannot read pose file {path}: {error}') from None

    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise PoseFileError(f'pose file {path} is not valid YAML: {error}') from None
    return parse_poses(document, source=str(path))


def parse_poses(document: object, source: str = '<poses>') -> list[InspectionPose]:
    """Validate the poses of an already parsed YAML document (see `load_poses`)."""
    if isinstance(document, dict):
        unknown = set(document) - {'poses'}
        if unknown:
            raise PoseFileError(
                f'{source}: unknown top-level keys {sorted(unknown)}; only "poses" is allowed')
        document = document.get('poses')
    if not isinstance(document, list) or not document:
        raise PoseFileError(
            f'{source}: expected a non-empty list of poses (or a mapping with a "poses" list), '
            f'got {type(document).__name__}')

    poses = [_parse_pose(entry, index, source) for index, entry in enumerate(document)]

    seen = set()
    for pose in poses:
        if pose.name in seen:
            raise PoseFileError(f'{source}: pose name {pose.name!r} is used more than once')
        seen.add(pose.name)
    return poses


def select_poses(poses: Sequence[InspectionPose], names: Iterable[str]) -> list[InspectionPose]:
    """Return the poses with the given names in the requested order; no names selects all.

    Raises:
        UnknownPoseError: listing the unknown names and the valid ones.
    """
    names = list(names)
    if not names:
        return list(poses)

    by_name = {pose.name: pose for pose in poses}
    unknown = [name for name in names if name not in by_name]
    if unknown:
        raise UnknownPoseError(
            f'unknown pose names {unknown}; valid names: {", ".join(by_name)}')
    return [by_name[name] for name in names]


def _parse_pose(entry: object, index: int, source: str) -> InspectionPose:
    if not isinstance(entry, dict):
        raise PoseFileError(
            f'{source}: pose at index {index} must be a mapping with name, position and '
            f'orientation or rpy, got {type(entry).__name__}')

    name = entry.get('name')
    if not isinstance(name, str) or not name.strip():
        raise PoseFileError(f'{source}: pose at index {index} needs a non-empty string "name"')
    where = f'{source}: pose {name!r} (index {index})'

    unknown = set(entry) - _POSE_KEYS
    if unknown:
        raise PoseFileError(
            f'{where}: unknown keys {sorted(unknown)}; allowed: {sorted(_POSE_KEYS)}')

    if 'position' not in entry:
        raise PoseFileError(f'{where}: missing "position" [x, y, z] in metres')
    position = _numbers(entry['position'], 3, f'{where}: position [x, y, z]')

    has_orientation = 'orientation' in entry
    has_rpy = 'rpy' in entry
    if has_orientation == has_rpy:
        raise PoseFileError(
            f'{where}: give exactly one of "orientation" [x, y, z, w] and "rpy" '
            '[roll, pitch, yaw] in radians')
    if has_rpy:
        orientation = rpy_to_quaternion(*_numbers(entry['rpy'], 3, f'{where}: rpy'))
    else:
        orientation = _normalised(
            _numbers(entry['orientation'], 4, f'{where}: orientation [x, y, z, w]'), where)
    return InspectionPose(name, position, orientation)


def _numbers(value: object, length: int, label: str) -> tuple:
    if not isinstance(value, (list, tuple)) or len(value) != length:
        raise PoseFileError(f'{label} must be a list of {length} numbers, got {value!r}')
    numbers = []
    for item in value:
        # bool is an int subclass, and "true" in a pose is always a mistake.
        if isinstance(item, bool) or not isinstance(item, (int, float)):
            raise PoseFileError(f'{label} must be a list of {length} numbers, got {value!r}')
        if not math.isfinite(item):
            raise PoseFileError(f'{label} must be finite, got {value!r}')
        numbers.append(float(item))
    return tuple(numbers)


def _normalised(quaternion: tuple, where: str) -> tuple:
    norm = math.sqrt(sum(value * value for value in quaternion))
    if norm < 1e-6:
        raise PoseFileError(f'{where}: orientation {list(quaternion)} has zero length')
    if abs(norm - 1.0) > QUATERNION_NORM_TOLERANCE:
        logger.warning('%s: orientation %s has norm %.6f, not 1; using it normalised',
                       where, list(quaternion), norm)
    return tuple(value / norm for value in quaternion)
