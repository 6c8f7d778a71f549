"""Pose files: the shipped file, rpy conversion and each kind of invalid file."""

import logging
import math
import pathlib

import pytest

from hetnet_ros.poses import (
    PoseFileError,
    UnknownPoseError,
    load_poses,
    rpy_to_quaternion,
    select_poses,
)
from hetnet_ros.robots.base import validate_pose

PACKAGE_ROOT = pathlib.Path(__file__).resolve().parents[1]


def write(tmp_path: pathlib.Path, text: str) -> pathlib.Path:
    path = tmp_path / 'poses.yaml'
    path.write_text(text, encoding='utf-8')
    return path


def tool_z_axis(quaternion):
    x, y, z, w = quaternion
    return (2 * (x * z + y * w), 2 * (y * z - x * w), 1 - 2 * (x * x + y * y))


def test_shipped_poses_are_valid():
    poses = load_poses(PACKAGE_ROOT / 'config' / 'poses.yaml')
    assert len(poses) >= 5, f'expected at least 5 inspection poses, got {len(poses)}'
    assert len({pose.name for pose in poses}) == len(poses)
    for pose in poses:
        validate_pose(pose.pose, label=pose.name)
        assert 0.2 < math.hypot(*pose.position[:2]) < 0.9, f'{pose.name} out of reach'
        assert 0.1 < pose.position[2] < 0.6, f'{pose.name} height {pose.position[2]} m'
        assert tool_z_axis(pose.orientation)[2] < -0.5, f'{pose.name}: camera does not look down'


def test_shipped_poses_look_at_part_centre():
    part_centre = (0.50, 0.00, 0.02)
    for pose in load_poses(PACKAGE_ROOT / 'config' / 'poses.yaml'):
        axis = tool_z_axis(pose.orientation)
        towards_part = [c - p for c, p in zip(part_centre, pose.position)]
        distance = math.sqrt(sum(value * value for value in towards_part))
        cosine = sum(a * b for a, b in zip(axis, towards_part)) / distance
        assert cosine > math.cos(math.radians(1.0)), f'{pose.name} does not aim at the part'
        assert abs(distance - 0.30) < 0.005, f'{pose.name} is {distance:.3f} m from the part'


def test_load_list_with_quaternion_and_rpy(tmp_path):
    path = write(tmp_path, '''
- name: top
  position: [0.5, 0.0, 0.3]
  orientation: [1.0, 0.0, 0.0, 0.0]
- name: side
  position: [0.4, 0, 0.3]
  rpy: [3.141592653589793, 0.0, 1.5707963267948966]
''')
    top, side = load_poses(path)
    assert top.name == 'top'
    assert top.position == (0.5, 0.0, 0.3)
    assert top.orientation == (1.0, 0.0, 0.0, 0.0)
    assert side.position == (0.4, 0.0, 0.3)
    expected = (math.sqrt(0.5), math.sqrt(0.5), 0.0, 0.0)
    assert all(abs(a - b) < 1e-9 for a, b in zip(side.orientation, expected)), side.orientation


def test_load_mapping_with_poses_key(tmp_path):
    path = write(tmp_path, 'poses:\n  - {name: a, position: [0.5, 0, 0.3], rpy: [0, 0, 0]}\n')
    assert [pose.name for pose in load_poses(path)] == ['a']


@pytest.mark.parametrize('roll, pitch, yaw, expected', [
    (0.0, 0.0, 0.0, (0.0, 0.0, 0.0, 1.0)),
    (math.pi, 0.0, 0.0, (1.0, 0.0, 0.0, 0.0)),
    (0.0, math.pi / 2, 0.0, (0.0, math.sqrt(0.5), 0.0, math.sqrt(0.5))),
    (0.0, 0.0, math.pi / 2, (0.0, 0.0, math.sqrt(0.5), math.sqrt(0.5))),
])
def test_rpy_to_quaternion(roll, pitch, yaw, expected):
    quaternion = rpy_to_quaternion(roll, pitch, yaw)
    assert all(abs(a - b) < 1e-12 for a, b in zip(quaternion, expected)), quaternion


def test_rpy_applies_roll_first_about_fixed_axes():
    # Roll pi, then yaw pi/2 about the fixed z axis: the tool x axis ends on base y.
    x, y, z, w = rpy_to_quaternion(math.pi, 0.0, math.pi / 2)
    tool_x = (1 - 2 * (y * y + z * z), 2 * (x * y + z * w), 2 * (x * z - y * w))
    assert all(abs(a - b) < 1e-9 for a, b in zip(tool_x, (0.0, 1.0, 0.0))), tool_x


def test_non_unit_quaternion_normalised_with_warning(tmp_path, caplog):
    path = write(tmp_path, '- {name: a, position: [0.5, 0, 0.3], orientation: [0, 0, 0, 2]}\n')
    with caplog.at_level(logging.WARNING, logger='hetnet_ros.poses'):
        (pose,) = load_poses(path)
    assert pose.orientation == (0.0, 0.0, 0.0, 1.0)
    assert "'a'" in caplog.text and 'norm 2.0' in caplog.text, caplog.text


def test_nearly_unit_quaternion_normalised_silently(tmp_path, caplog):
    path = write(tmp_path, '- {name: a, position: [0.5, 0, 0.3], orientation: [0, 0, 0, 1.0002]}\n')
    with caplog.at_level(logging.WARNING, logger='hetnet_ros.poses'):
        (pose,) = load_poses(path)
    assert pose.orientation == (0.0, 0.0, 0.0, 1.0)
    assert caplog.text == ''


@pytest.mark.parametrize('text, message', [
    ('', 'non-empty list of poses'),
    ('[]', 'non-empty list of poses'),
    ('poses: 3', 'non-empty list of poses'),
    ('frames: []\nposes: []', "unknown top-level keys \\['frames'\\]"),
    ('- [0.5, 0, 0.3]', 'index 0 must be a mapping'),
    ('- {position: [0.5, 0, 0.3], rpy: [0, 0, 0]}', 'index 0 needs a non-empty string "name"'),
    ('- {name: "", position: [0.5, 0, 0.3], rpy: [0, 0, 0]}', 'non-empty string "name"'),
    ('- {name: a, rpy: [0, 0, 0]}', "pose 'a' \\(index 0\\): missing \"position\""),
    ('- {name: a, position: [0.5, 0], rpy: [0, 0, 0]}', "'a'.*position .* 3 numbers"),
    ('- {name: a, position: [0.5, 0, .nan], rpy: [0, 0, 0]}', "'a'.*position.*finite"),
    ('- {name: a, position: [0.5, 0, .inf], rpy: [0, 0, 0]}', "'a'.*position.*finite"),
    ('- {name: a, position: [0.5, x, 0.3], rpy: [0, 0, 0]}', "'a'.*position .* 3 numbers"),
    ('- {name: a, position: [0.5, true, 0.3], rpy: [0, 0, 0]}', "'a'.*position .* 3 numbers"),
    ('- {name: a, position: [0.5, 0, 0.3]}', "'a'.*exactly one of \"orientation\""),
    ('- {name: a, position: [0.5, 0, 0.3], rpy: [0, 0, 0], orientation: [0, 0, 0, 1]}',
     "'a'.*exactly one of"),
    ('- {name: a, position: [0.5, 0, 0.3], orientation: [0, 0, 1]}', "'a'.*orientation .* 4 numbers"),
    ('- {name: a, position: [0.5, 0, 0.3], orientation: [0, 0, 0, 0]}', "'a'.*zero length"),
    ('- {name: a, position: [0.5, 0, 0.3], rpy: [0, .nan, 0]}', "'a'.*rpy.*finite"),
    ('- {name: a, position: [0.5, 0, 0.3], rpy: [0, 0, 0], speed: 1}', "'a'.*unknown keys \\['speed'\\]"),
    ('- {name: a, position: [0.5, 0, 0.3], rpy: [0, 0, 0]}\n'
     '- {name: a, position: [0.4, 0, 0.3], rpy: [0, 0, 0]}', "'a' is used more than once"),
    ('- {name: a, position: [0.5, 0, 0.3]', 'not valid YAML'),
])
def test_invalid_file_rejected(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(PoseFileError, match=message) as error:
        load_poses(path)
    assert str(path) in str(error.value), 'the error must name the file'


def test_missing_file_rejected(tmp_path):
    with pytest.raises(PoseFileError, match='not found'):
        load_poses(tmp_path / 'missing.yaml')


def test_select_poses_by_name(tmp_path):
    path = write(tmp_path, ''.join(
        f'- {{name: {name}, position: [0.5, 0, 0.3], rpy: [0, 0, 0]}}\n' for name in 'abc'))
    poses = load_poses(path)
    assert [pose.name for pose in select_poses(poses, [])] == ['a', 'b', 'c']
    assert [pose.name for pose in select_poses(poses, ['c', 'a'])] == ['c', 'a']
    with pytest.raises(UnknownPoseError, match=r"\['x'\]; valid names: a, b, c"):
        select_poses(poses, ['a', 'x'])
