"""Bringup data, the launch file built from it, the RViz config and launcher process handling."""

import ast
import importlib.util
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time
import types

import pytest
import rclpy
import yaml
from rclpy.parameter import Parameter

from hetnet_ros import bringup, launcher
from hetnet_ros.bringup import (
    GRAPH_ARGUMENTS,
    GRAPH_NAMES,
    GraphConfigError,
    GraphOptions,
    NodeSpec,
    action_name,
    inspection_graph,
)

PACKAGE_ROOT = pathlib.Path(__file__).resolve().parents[1]
LAUNCH_FILE = PACKAGE_ROOT / 'launch' / 'inspect.launch.py'
RVIZ_FILE = PACKAGE_ROOT / 'rviz' / 'inspect.rviz'


@pytest.fixture
def graph(tmp_path):
    checkpoint = tmp_path / 'model.pt'
    checkpoint.write_bytes(b'')
    options = GraphOptions(checkpoint=str(checkpoint), images=str(tmp_path / 'images'),
                           records=str(tmp_path / 'records'))
    return {spec.name: spec for spec in inspection_graph(options)}


def remapped(spec: NodeSpec, name: str) -> str:
    return dict(spec.remappings)[name]


def test_graph_has_three_nodes_with_modules(graph):
    assert list(graph) == ['camera', 'detector', 'inspection']
    setup_py = (PACKAGE_ROOT / 'setup.py').read_text()
    for spec in graph.values():
        assert spec.package == 'hetnet_ros'
        assert importlib.util.find_spec(spec.module) is not None, f'{spec.module} not found'
        entry_point = f"'{spec.executable} = {spec.module}:main'"
        assert entry_point in setup_py, f'setup.py lacks the console script {entry_point}'


def test_topics_connect_the_nodes(graph):
    camera, detector, inspection = graph['camera'], graph['detector'], graph['inspection']
    assert remapped(detector, 'image') == remapped(camera, 'image')
    assert remapped(inspection, 'image') == remapped(camera, 'image')
    assert remapped(inspection, 'verdict') == remapped(detector, 'verdict')
    assert remapped(inspection, 'heatmap') == remapped(detector, 'heatmap')
    assert remapped(inspection, 'capture') == remapped(camera, 'capture')
    for spec in graph.values():
        for source, target in spec.remappings:
            assert target == GRAPH_NAMES[source], f'{spec.name}: {source} -> {target}'


def test_parameters_merge_config_and_options(graph, tmp_path):
    config = bringup.load_node_parameters(PACKAGE_ROOT / 'config' / 'inspect.yaml')
    camera, detector, inspection = (graph[name].parameters for name in graph)
    assert detector['checkpoint'] == str(tmp_path / 'model.pt')
    assert camera['source'] == str(tmp_path / 'images')
    assert inspection['records_dir'] == str(tmp_path / 'records')
    assert 'poses_file' not in inspection, 'no --poses keeps the package default'
    for key, value in config['inspection'].items():
        assert inspection[key] == value, f'inspection {key} differs from config/inspect.yaml'
    assert camera['rate_hz'] == 0.0
    assert inspection['capture_service'] == 'capture', 'on-request camera needs the capture call'


def test_options_override_config(tmp_path):
    options = GraphOptions.from_strings({
        'checkpoint': 'model.pt', 'images': 'imgs', 'camera_rate_hz': '5',
        'sim_speed_factor': '8', 'robot_backend': 'sim', 'device': 'cpu', 'poses': 'p.yaml',
        'namespace': '/cell1/'})
    specs = {spec.name: spec for spec in inspection_graph(options)}
    assert specs['camera'].parameters['rate_hz'] == 5.0
    assert isinstance(specs['camera'].parameters['rate_hz'], float)
    assert specs['inspection'].parameters['capture_service'] == ''
    assert specs['inspection'].parameters['sim_speed_factor'] == 8.0
    assert specs['inspection'].parameters['poses_file'] == os.path.abspath('p.yaml')
    assert specs['detector'].parameters['device'] == 'cpu'
    assert specs['detector'].parameters['checkpoint'] == os.path.abspath('model.pt')
    assert all(spec.namespace == 'cell1' for spec in specs.values())
    assert specs['inspection'].fully_qualified_name == '/cell1/inspection'
    assert action_name('cell1') == '/cell1/inspect_part'
    assert action_name() == '/inspect_part'


def test_invalid_options_rejected(tmp_path):
    with pytest.raises(GraphConfigError, match='no checkpoint'):
        inspection_graph(GraphOptions())
    with pytest.raises(GraphConfigError, match="camera_rate_hz must be a number, got 'fast'"):
        GraphOptions.from_strings({'camera_rate_hz': 'fast'})
    with pytest.raises(GraphConfigError, match=r"unknown graph arguments \['speed'\]"):
        GraphOptions.from_strings({'speed': '1'})
    bad_config = tmp_path / 'bad.yaml'
    bad_config.write_text('camera:\n  ros__parameters: {}\n')
    with pytest.raises(GraphConfigError, match=r"has no section for \['detector', 'inspection'\]"):
        inspection_graph(GraphOptions(checkpoint='m.pt', config=str(bad_config)))
    bad_config.write_text('camera: 3\n')
    with pytest.raises(GraphConfigError, match='"ros__parameters" mapping'):
        inspection_graph(GraphOptions(checkpoint='m.pt', config=str(bad_config)))


def test_ros_arguments_and_parameter_file(graph, tmp_path):
    spec = NodeSpec('hetnet_ros', 'inspection_node', 'hetnet_ros.nodes.inspection_node',
                    'inspection', 'cell1', {'records_dir': '007'}, (('verdict', 'detector/verdict'),))
    arguments = spec.ros_arguments(tmp_path / 'p.yaml')
    assert arguments == [
        '--ros-args', '-r', '__node:=inspection', '-r', '__ns:=/cell1',
        '--params-file', str(tmp_path / 'p.yaml'), '-r', 'verdict:=detector/verdict']
    document = yaml.safe_load(yaml.safe_dump(spec.parameters_document()))
    # A parameter file keeps '007' a string, where -p records_dir:=007 would give an integer.
    assert document == {'/cell1/inspection': {'ros__parameters': {'records_dir': '007'}}}


def test_nodes_accept_bringup_parameters(graph):
    """Every parameter the bringup sets is declared by the real node and has a valid type."""
    from hetnet_ros.nodes.camera_node import CameraNode
    from hetnet_ros.nodes.detector_node import DetectorNode
    from hetnet_ros.nodes.inspection_node import InspectionNode

    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        for node_class, spec in ((CameraNode, graph['camera']), (DetectorNode, graph['detector']),
                                 (InspectionNode, graph['inspection'])):
            overrides = [Parameter(name, value=value) for name, value in spec.parameters.items()]
            node = node_class(context=context, parameter_overrides=overrides)
            try:
                for name, value in spec.parameters.items():
                    assert node.has_parameter(name), f'{spec.name} does not declare {name}'
                    assert node.get_parameter(name).value == value, f'{spec.name}.{name}'
            finally:
                node.destroy_node()
    finally:
        rclpy.try_shutdown(context=context)


def test_launch_file_parses_and_uses_bringup():
    tree = ast.parse(LAUNCH_FILE.read_text(), filename=str(LAUNCH_FILE))
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                and node.module == 'hetnet_ros.bringup' for alias in node.names}
    assert {'inspection_graph', 'GRAPH_ARGUMENTS', 'GraphOptions'} <= imported
    functions = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    assert 'generate_launch_description' in functions


class Recorder:
    """Stand-in for a launch action: records its arguments."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


class LaunchConfiguration(Recorder):
    def perform(self, context):
        return context.get(self.args[0], '')


class SetEnvironmentVariable(Recorder):
    pass


@pytest.fixture
def launch_module(monkeypatch) -> dict:
    """Execute the launch file against minimal stand-ins of launch and launch_ros."""
    modules = {
        'launch': types.SimpleNamespace(LaunchDescription=Recorder),
        'launch.actions': types.SimpleNamespace(
            DeclareLaunchArgument=Recorder, OpaqueFunction=Recorder,
            SetEnvironmentVariable=SetEnvironmentVariable),
        'launch.conditions': types.SimpleNamespace(IfCondition=Recorder),
        'launch.substitutions': types.SimpleNamespace(LaunchConfiguration=LaunchConfiguration),
        'launch_ros.actions': types.SimpleNamespace(Node=Recorder),
    }
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    for variable in ('RMW_IMPLEMENTATION', 'FASTRTPS_DEFAULT_PROFILES_FILE', 'FASTDDS_DEFAULT_PROFILES_FILE'):
        monkeypatch.delenv(variable, raising=False)
    namespace = {'__name__': 'inspect_launch'}
    exec(compile(LAUNCH_FILE.read_text(), str(LAUNCH_FILE), 'exec'), namespace)
    return namespace


def test_launch_file_builds_nodes_from_graph(launch_module, graph, tmp_path):
    namespace = launch_module
    description = namespace['generate_launch_description']()
    actions = description.args[0]
    declared = [action.args[0] for action in actions if action.args and action.kwargs.get(
        'default_value') is not None]
    assert declared == [*GRAPH_ARGUMENTS, 'rviz']
    environment = {action.args[0]: action.args[1] for action in actions
                   if isinstance(action, SetEnvironmentVariable)}
    profile = pathlib.Path(environment['FASTRTPS_DEFAULT_PROFILES_FILE'])
    assert profile.name == bringup.DDS_PROFILE
    assert profile.is_file(), f'DDS profile {profile} is missing'

    context = {'checkpoint': str(tmp_path / 'model.pt'), 'images': str(tmp_path / 'images'),
               'records': str(tmp_path / 'records')}
    nodes = namespace['create_graph_nodes'](context)
    assert [node.kwargs['name'] for node in nodes] == list(graph)
    for node, spec in zip(nodes, graph.values()):
        assert node.kwargs['executable'] == spec.executable
        assert node.kwargs['parameters'] == [spec.parameters]
        assert node.kwargs['remappings'] == list(spec.remappings)


def test_launch_file_starts_realsense2_camera(launch_module, tmp_path):
    context = {'checkpoint': str(tmp_path / 'model.pt'), 'camera_backend': 'realsense2_camera'}
    camera, detector, inspection = launch_module['create_graph_nodes'](context)
    assert camera.kwargs['package'] == 'realsense2_camera'
    assert camera.kwargs['executable'] == 'realsense2_camera_node'
    assert camera.kwargs['name'] == 'camera'
    assert camera.kwargs['namespace'] == 'camera'
    assert camera.kwargs['remappings'] == [
        ('/camera/camera/color/image_raw', '/camera/image'),
        ('/camera/camera/color/camera_info', '/camera/camera_info')]
    assert camera.kwargs['parameters'][0]['enable_color'] is True
    assert detector.kwargs['package'] == 'hetnet_ros'
    assert inspection.kwargs['parameters'][0]['capture_service'] == ''


def test_realsense2_camera_replaces_camera_node(tmp_path):
    options = GraphOptions(checkpoint=str(tmp_path / 'model.pt'),
                           camera_backend='realsense2_camera')
    camera, detector, inspection = inspection_graph(options)
    assert camera.package == 'realsense2_camera'
    assert camera.executable == 'realsense2_camera_node'
    assert camera.module == '', 'the driver is no Python module of this package'
    assert camera.fully_qualified_name == '/camera/camera', 'the driver keeps its usual names'
    remappings = dict(camera.remappings)
    assert remappings['/camera/camera/color/image_raw'] == '/' + GRAPH_NAMES['image']
    assert remappings['/camera/camera/color/camera_info'] == '/' + GRAPH_NAMES['camera_info']
    assert remapped(detector, 'image') == GRAPH_NAMES['image']
    assert remapped(inspection, 'image') == GRAPH_NAMES['image']
    assert camera.parameters == bringup.REALSENSE2_CAMERA_PARAMETERS
    assert inspection.parameters['capture_service'] == '', 'the driver has no capture service'


def test_realsense2_camera_in_namespace(tmp_path):
    options = GraphOptions(checkpoint=str(tmp_path / 'model.pt'),
                           camera_backend='realsense2_camera', namespace='/cell1/')
    camera, detector, _ = inspection_graph(options)
    assert camera.fully_qualified_name == '/cell1/camera/camera'
    assert dict(camera.remappings) == {
        '/cell1/camera/camera/color/image_raw': '/cell1/camera/image',
        '/cell1/camera/camera/color/camera_info': '/cell1/camera/camera_info'}
    assert detector.fully_qualified_name == '/cell1/detector'


def test_realsense2_camera_parameters_from_config(tmp_path):
    document = yaml.safe_load((PACKAGE_ROOT / 'config' / 'inspect.yaml').read_text())
    document['realsense2_camera'] = {'ros__parameters': {
        'serial_no': '_012345678901', 'rgb_camera.color_profile': '1920x1080x15'}}
    config = tmp_path / 'inspect.yaml'
    config.write_text(yaml.safe_dump(document))
    options = GraphOptions(checkpoint='m.pt', camera_backend='realsense2_camera',
                           config=str(config))
    camera = inspection_graph(options)[0]
    assert camera.parameters['serial_no'] == '_012345678901'
    assert camera.parameters['rgb_camera.color_profile'] == '1920x1080x15'
    assert camera.parameters['enable_depth'] is False, 'defaults stay unless the file sets them'


def test_camera_backends_match_camera_node():
    from hetnet_ros.nodes import camera_node

    node_backends = set(bringup.CAMERA_BACKENDS) - {bringup.REALSENSE2_CAMERA}
    assert node_backends == set(camera_node.BACKENDS)
    with pytest.raises(GraphConfigError, match="invalid camera back-end 'usb'"):
        inspection_graph(GraphOptions(checkpoint='m.pt', camera_backend='usb'))


def test_realsense2_camera_remaps_onto_graph_over_dds(tmp_path):
    """A stand-in driver with the driver's topic name and default image QoS reaches a
    subscription with the detector's QoS, through the bringup's remapping rules."""
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.qos import qos_profile_system_default
    from sensor_msgs.msg import Image

    from hetnet_ros.nodes.common import sensor_qos

    options = GraphOptions(checkpoint='m.pt', camera_backend='realsense2_camera')
    spec = inspection_graph(options)[0]
    params_file = tmp_path / 'driver.yaml'
    params_file.write_text(yaml.safe_dump(spec.parameters_document()))

    context = rclpy.Context()
    rclpy.init(context=context)
    received = []
    try:
        driver = Node('driver_stand_in', context=context,
                      cli_args=spec.ros_arguments(params_file))
        publisher = driver.create_publisher(Image, '~/color/image_raw', qos_profile_system_default)
        detector = Node('detector_stand_in', context=context)
        detector.create_subscription(Image, '/' + GRAPH_NAMES['image'], received.append,
                                     sensor_qos(depth=1))
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(driver)
        executor.add_node(detector)

        assert driver.get_fully_qualified_name() == '/camera/camera'
        assert publisher.topic_name == '/camera/image'
        deadline = time.monotonic() + 20.0
        while not received and time.monotonic() < deadline:
            publisher.publish(Image(encoding='rgb8', height=1, width=1, step=3, data=[1, 2, 3]))
            executor.spin_once(timeout_sec=0.1)
        executor.shutdown()
        driver.destroy_node()
        detector.destroy_node()
    finally:
        rclpy.try_shutdown(context=context)
    assert received, 'no image reached the detector QoS subscription within 20 s'
    assert received[0].encoding == 'rgb8'


def test_launcher_rejects_realsense2_camera(tmp_path, capsys):
    checkpoint = tmp_path / 'model.pt'
    checkpoint.write_bytes(b'')
    with pytest.raises(SystemExit) as exit_info:
        launcher.main(['--checkpoint', str(checkpoint), '--camera-backend', 'realsense2_camera'])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert 'hetnet-inspect cannot start' in error
    assert 'ros2 launch hetnet_ros inspect.launch.py camera_backend:=realsense2_camera' in error


def test_rviz_config_shows_graph_topics():
    config = yaml.safe_load(RVIZ_FILE.read_text())
    manager = config['Visualization Manager']
    assert manager['Global Options']['Fixed Frame'] == 'base_link'
    displays = {(display['Class'], display['Topic']['Value'])
                for display in manager['Displays'] if 'Topic' in display}
    assert ('rviz_default_plugins/Image', '/' + GRAPH_NAMES['image']) in displays
    assert ('rviz_default_plugins/Image', '/' + GRAPH_NAMES['heatmap']) in displays
    assert ('rviz_default_plugins/Pose', '/tool_pose') in displays
    # Installed packages resolve to the share folder, source checkouts to the file itself.
    assert bringup.package_rviz_path().read_text() == RVIZ_FILE.read_text()


def test_launcher_options_follow_graph_arguments():
    parser = launcher.build_parser()
    options = {option for action in parser._actions for option in action.option_strings}
    for name in GRAPH_ARGUMENTS:
        assert '--' + name.replace('_', '-') in options


def test_launcher_rejects_missing_inputs(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        launcher.main(['--checkpoint', str(tmp_path / 'missing.pt'), '--images', str(tmp_path)])
    assert exit_info.value.code == 2
    assert f'--checkpoint {tmp_path / "missing.pt"} does not exist' in capsys.readouterr().err

    checkpoint = tmp_path / 'model.pt'
    checkpoint.write_bytes(b'')
    with pytest.raises(SystemExit):
        launcher.main(['--checkpoint', str(checkpoint)])
    assert 'the replay camera needs --images' in capsys.readouterr().err


# A stand-in node process that ignores SIGINT and SIGTERM, so only SIGKILL ends it.
STUBBORN_NODE = textwrap.dedent('''
    import signal, sys, time
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print('stubborn node up', file=sys.stderr, flush=True)
    time.sleep(60)
''')


def stub_spec(tmp_path, source: str) -> tuple:
    (tmp_path / 'stub_node.py').write_text(source)
    env = dict(os.environ, PYTHONPATH=f'{tmp_path}{os.pathsep}{os.environ.get("PYTHONPATH", "")}')
    spec = NodeSpec('hetnet_ros', 'stub', 'stub_node', 'stub')
    params_file = tmp_path / 'stub.yaml'
    params_file.write_text('{}')
    return spec, params_file, env


def test_stop_children_escalates_to_sigkill(tmp_path, monkeypatch):
    monkeypatch.setattr(launcher, 'SIGINT_TIMEOUT_S', 0.5)
    monkeypatch.setattr(launcher, 'SIGTERM_TIMEOUT_S', 0.5)
    spec, params_file, env = stub_spec(tmp_path, STUBBORN_NODE)
    child = launcher.ChildNode(spec, params_file, env, echo=None)
    deadline = time.monotonic() + 20
    while 'stubborn node up' not in child.stderr_tail and time.monotonic() < deadline:
        time.sleep(0.05)
    assert os.getpgid(child.pid) == child.pid, 'a child must lead its own process group'

    started = time.monotonic()
    launcher.stop_children([child])
    assert child.poll() == -signal.SIGKILL
    assert time.monotonic() - started < 5.0


def test_children_die_with_killed_launcher(tmp_path):
    spec, params_file, env = stub_spec(tmp_path, STUBBORN_NODE.replace(
        'signal.signal(signal.SIGTERM, signal.SIG_IGN)', ''))
    parent_script = textwrap.dedent(f'''
        import pathlib, sys, time
        from hetnet_ros import launcher
        from hetnet_ros.bringup import NodeSpec
        spec = NodeSpec('hetnet_ros', 'stub', 'stub_node', 'stub')
        child = launcher.ChildNode(spec, pathlib.Path({str(params_file)!r}), dict(
            __import__('os').environ), echo=None)
        print(child.pid, flush=True)
        time.sleep(60)
    ''')
    parent = subprocess.Popen([sys.executable, '-c', parent_script], env=env,
                              stdout=subprocess.PIPE, text=True)
    try:
        child_pid = int(parent.stdout.readline())
        parent.kill()
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _process_alive(child_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _process_alive(child_pid), 'the child outlived its killed launcher'
    finally:
        if parent.poll() is None:
            parent.kill()


def _process_alive(pid: int) -> bool:
    try:
        state = pathlib.Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != 'Z'


def test_dds_profile_set_by_default():
    environment = bringup.dds_environment({})
    profile = pathlib.Path(environment['FASTRTPS_DEFAULT_PROFILES_FILE'])
    assert profile.name == bringup.DDS_PROFILE
    assert profile.is_file(), f'DDS profile {profile} is missing'


@pytest.mark.parametrize('environ', [
    {'FASTRTPS_DEFAULT_PROFILES_FILE': '/etc/cell/fastdds.xml'},
    {'FASTDDS_DEFAULT_PROFILES_FILE': '/etc/cell/fastdds.xml'},
    {'RMW_IMPLEMENTATION': 'rmw_cyclonedds_cpp'},
])
def test_dds_profile_keeps_user_choice(environ):
    assert bringup.dds_environment(environ) == {}


@pytest.mark.parametrize('namespace', ['bad name!', '1cell', 'cell//a'])
def test_invalid_namespace_rejected(namespace):
    with pytest.raises(bringup.GraphConfigError, match='not a valid ROS name'):
        bringup.inspection_graph(bringup.GraphOptions(checkpoint='model.pt', images='images', namespace=namespace))


def test_non_finite_camera_rate_rejected():
    with pytest.raises(bringup.GraphConfigError, match='finite number'):
        bringup.GraphOptions.from_strings({'camera_rate_hz': 'nan'})


@pytest.mark.parametrize('arguments', [
    ['--ros-domain-id', '500'],
    ['--ros-domain-id', '-1'],
    ['--report-json', '/nonexistent-folder/report.json'],
])
def test_launcher_rejects_invalid_options(arguments, tmp_path, capsys):
    checkpoint = tmp_path / 'model.pt'
    checkpoint.write_bytes(b'')
    with pytest.raises(SystemExit) as exit_info:
        launcher.main(['--checkpoint', str(checkpoint), '--images', str(tmp_path), *arguments])
    assert exit_info.value.code == 2
    assert arguments[1] in capsys.readouterr().err
