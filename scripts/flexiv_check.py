#!/usr/bin/env python3
"""Check the Flexiv back-end against the real flexivrdk 1.9 SDK, without a robot.

Run by `make flexiv-check` in .venv-flexiv (Python 3.12, because flexivrdk 1.9
has no wheel for 3.11). Three checks:

1. flexivrdk imports and is the 1.9 line that Rizon arms need.
2. Every SDK call that FlexivArm makes exists and accepts the arguments it
   passes. FlexivArm runs its connect, move, stop, fault, clear and timeout
   paths against a recording stand-in for `flexivrdk.Robot` (the only class
   that needs a robot), while Coord, Mode and the state types are the real
   ones. Each recorded call is then matched against the pybind11 signature in
   the real method's docstring, including argument types and fixed sizes. The
   matcher itself is first checked against real pybind11 calls that need no
   robot, so that it cannot pass arguments that pybind11 would reject.
3. The inspection node, started with robot_backend 'flexiv', a made-up serial
   number and a loopback-only interface whitelist, fails configuration within
   a bounded time with an error that names the serial number and what to check.

Only 127.0.0.1 is ever given to the SDK, so nothing leaves this computer.
Exit code 0 when every check passes, 1 otherwise.
"""

import collections.abc
import functools
import inspect
import math
import os
import pathlib
import random
import re
import subprocess
import sys
import threading
import time
import types
import typing

import flexivrdk

from hetnet_ros.robots import (
    EmergencyStopError,
    MotionStoppedError,
    MotionTimeoutError,
    Pose,
    RobotConnectionError,
    RobotFaultError,
)
from hetnet_ros.robots import flexiv as flexiv_backend
from hetnet_ros.robots.flexiv import FlexivArm

LOOPBACK_ONLY = ['127.0.0.1']
MADE_UP_SERIAL = 'Rizon4s-000000'
# The node must fail configuration well within this wall time. flexivrdk
# 1.9.4.1 gives up its search after about 3 s here; ROS start-up adds about 1 s.
NODE_FAILURE_LIMIT_S = 30.0
DOWN = (1.0, 0.0, 0.0, 0.0)


class CheckFailed(AssertionError):
    pass


def check(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def check_sdk_version() -> str:
    check(flexivrdk.__version__.startswith(flexiv_backend.SDK_VERSION_PREFIX),
          f'flexivrdk {flexivrdk.__version__} is not the 1.9 line that Rizon arms need')
    return f'flexivrdk {flexivrdk.__version__} from {pathlib.Path(flexivrdk.__file__).parent}'


# Signature matching.

SIGNATURE_LINE = re.compile(r'^(?:\d+\.\s*)?(\w*)\((.*)\)\s*->\s*(.+)$')
ANNOTATION_NAMESPACE = {'typing': typing, 'collections': collections, 'flexivrdk': flexivrdk}


def signatures(function) -> list[inspect.Signature]:
    """Parse the pybind11 signatures (all overloads) from a function's docstring."""
    found = []
    for line in (function.__doc__ or '').splitlines():
        match = SIGNATURE_LINE.match(line.strip())
        if not match or match.group(2) in ('*args, **kwargs',):
            continue
        namespace: dict = {}
        source = f'from __future__ import annotations\ndef _signature({match.group(2)}): pass\n'
        exec(source, namespace)  # noqa: S102 - the text is the SDK's own docstring
        found.append(inspect.signature(namespace['_signature']))
    check(bool(found), f'no pybind11 signature found in the docstring of {function!r}')
    return found


def matches(value, annotation) -> bool:
    """True when pybind11 would convert `value` to the C++ type that `annotation` names."""
    origin, arguments = typing.get_origin(annotation), typing.get_args(annotation)

    if origin is typing.Annotated:
        base, *metadata = arguments
        for item in metadata:
            size = re.fullmatch(r'FixedSize\((\d+)\)', str(item))
            if size and (not hasattr(value, '__len__') or len(value) != int(size.group(1))):
                return False
        return matches(value, base)

    if origin in (typing.Union, types.UnionType):
        return any(matches(value, option) for option in arguments)
    if origin in (collections.abc.Sequence, list):
        # pybind11's list caster rejects str and bytes.
        return (isinstance(value, (list, tuple))
                and all(matches(item, arguments[0]) for item in value))
    if origin in (collections.abc.Mapping, dict):
        return isinstance(value, dict) and all(
            matches(key, arguments[0]) and matches(item, arguments[1])
            for key, item in value.items())

    if annotation is typing.SupportsIndex:
        return hasattr(value, '__index__')
    if annotation is typing.SupportsInt:
        # pybind11's integer caster rejects floats even though they have __int__.
        return hasattr(value, '__index__')
    if annotation is typing.SupportsFloat:
        return isinstance(value, (int, float)) or hasattr(value, '__float__')
    if annotation is bool:
        return isinstance(value, bool)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    raise CheckFailed(f'the signature matcher does not know the annotation {annotation!r}')


def accepts(function, args: tuple, kwargs: dict) -> tuple[bool, str]:
    """Return whether one overload of `function` accepts `args` (self excluded), and why not."""
    reasons = []
    for signature in signatures(function):
        try:
            bound = signature.bind(None, *args, **kwargs)
        except TypeError as error:
            reasons.append(f'{signature}: {error}')
            continue
        names = list(signature.parameters)
        mismatched = [
            f'{name}={value!r} is not {signature.parameters[name].annotation}'
            for name, value in bound.arguments.items()
            if name != names[0] and not matches(
                value, eval(signature.parameters[name].annotation, ANNOTATION_NAMESPACE))]
        if not mismatched:
            return True, ''
        reasons.append(f'{signature}: ' + '; '.join(mismatched))
    return False, ' | '.join(reasons)


def check_matcher_against_pybind11() -> int:
    """Compare the matcher with real pybind11 argument conversion on calls that need no robot."""
    cases = [
        (flexivrdk.Coord, ([0.5, 0.0, 0.3], [180.0, 0.0, 0.0], ['WORLD', 'WORLD_ORIGIN'])),
        (flexivrdk.Coord, ([1, 0, 0], [0, 0, 0], ['WORLD', 'WORLD_ORIGIN'])),
        (flexivrdk.Coord, ((0.5, 0.0, 0.3), (180.0, 0.0, 0.0), ('WORLD', 'WORLD_ORIGIN'))),
        (flexivrdk.Coord, ([0.5, 0.0], [180.0, 0.0, 0.0], ['WORLD', 'WORLD_ORIGIN'])),
        (flexivrdk.Coord, ([0.5, 0.0, 0.3], [180.0, 0.0, 0.0], ['WORLD'])),
        (flexivrdk.Coord, ('abc', [0.0, 0.0, 0.0], ['WORLD', 'WORLD_ORIGIN'])),
        (flexivrdk.Coord, ([0.5, 0.0, 0.3], [180.0, 0.0, 0.0], [1, 2])),
    ]
    event = flexivrdk.RobotEvent()
    setter = type(event).id.fset
    cases += [(setter, (value,)) for value in (3, True, 3.0, '3')]

    for function, args in cases:
        target = function.__init__ if isinstance(function, type) else function
        predicted, reason = accepts(target, args, {})
        try:
            function(*args) if isinstance(function, type) else function(event, *args)
            real = True
        except TypeError:
            real = False
        check(predicted == real,
              f'signature matcher disagrees with pybind11 on {function.__name__}{args}: matcher '
              f'{predicted} ({reason}), pybind11 {real}')

    # Calls with wrong arguments that need a robot to run; the matcher must reject each.
    robot = flexivrdk.Robot
    coord = flexivrdk.Coord([0.5, 0.0, 0.3], [180.0, 0.0, 0.0], ['WORLD', 'WORLD_ORIGIN'])
    wrong_calls = [
        (robot.__init__, (MADE_UP_SERIAL, '127.0.0.1'), {}),
        (robot.ClearFault, (30.0,), {}),
        (robot.SwitchMode, ('NRT_PRIMITIVE_EXECUTION',), {}),
        (robot.ExecutePrimitive, ('MoveL', {'target': coord, 'vel': object()}), {}),
        (robot.ExecutePrimitive, ('MoveL', {'target': coord}), {'blocking': True}),
        (robot.Stop, (True,), {}),
    ]
    for function, args, kwargs in wrong_calls:
        check(not accepts(function, args, kwargs)[0],
              f'signature matcher accepts the wrong call {function.__name__}{args} {kwargs}')
    return f'{len(cases)} pybind11 calls compared, {len(wrong_calls)} wrong calls rejected'


# A recording stand-in for flexivrdk.Robot.


def recorded(method):
    """Record a call with any arguments; they are matched against the real signature later."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        RecordingRobot.calls.append((method.__name__, args, kwargs))
        self.last_args = args + tuple(kwargs.values())
        return method(self)
    return wrapper


class RecordingRobot:
    """Records every call and returns real flexivrdk types where FlexivArm reads them."""

    calls: list = []
    script: dict = {}

    def __init__(self, *args, **kwargs) -> None:
        RecordingRobot.calls.append(('__init__', args, kwargs))
        self.last_args = ()
        self.fault_flag = self.script.get('fault_at_connect', False)
        self.estop = False
        self.operational_after = self.script.get('operational_after', 1)
        self.operational_polls = 0
        self.reached_after = self.script.get('reached_after', 2)
        self.state_polls = 0
        self.fault_on_poll = self.script.get('fault_on_poll')
        self.current_mode = flexivrdk.Mode.IDLE

    @recorded
    def connected(self):
        return True

    @recorded
    def fault(self):
        return self.fault_flag

    @recorded
    def estop_released(self):
        return not self.estop

    @recorded
    def Enable(self):
        pass

    @recorded
    def operational(self):
        self.operational_polls += 1
        after = self.operational_after
        return after is not None and self.operational_polls > after

    @recorded
    def operational_status(self):
        if self.fault_flag:
            return flexivrdk.OperationalStatus.MINOR_FAULT
        return flexivrdk.OperationalStatus.NOT_ENABLED

    @recorded
    def mode(self):
        return self.current_mode

    @recorded
    def SwitchMode(self):
        self.current_mode = self.last_args[0]

    @recorded
    def ExecutePrimitive(self):
        self.state_polls = 0

    @recorded
    def primitive_states(self):
        self.state_polls += 1
        if self.fault_on_poll is not None and self.state_polls >= self.fault_on_poll:
            self.fault_flag = True
        reached = self.reached_after is not None and self.state_polls > self.reached_after
        return {'reachedTarget': int(reached), 'timePeriod': 0.1 * self.state_polls}

    @recorded
    def Stop(self):
        self.current_mode = flexivrdk.Mode.IDLE

    @recorded
    def stopped(self):
        return True

    @recorded
    def states(self):
        states = flexivrdk.RobotStates()
        states.tcp_pose = [0.5, 0.0, 0.3, 0.0, 1.0, 0.0, 0.0]
        return states

    @recorded
    def event_log(self):
        event = flexivrdk.RobotEvent()
        event.level = flexivrdk.RobotEvent.Level.ERROR
        event.id = 42
        event.description = 'recorded test event'
        event.recommended_actions = 'none'
        return [event]

    @recorded
    def ClearFault(self):
        self.fault_flag = False
        return True


def recording_sdk(**script) -> types.SimpleNamespace:
    """Return the real flexivrdk module's names, with Robot replaced by RecordingRobot."""
    RecordingRobot.script = script
    names = {name: getattr(flexivrdk, name) for name in dir(flexivrdk) if not name.startswith('_')}
    names['Robot'] = RecordingRobot
    return types.SimpleNamespace(**names)


def new_arm(**script) -> FlexivArm:
    return FlexivArm(MADE_UP_SERIAL, LOOPBACK_ONLY, settle_time_s=0.0, poll_period_s=0.001,
                     sdk=recording_sdk(**script))


def exercise_backend() -> None:
    """Run every FlexivArm path that talks to the SDK against RecordingRobot."""
    target = Pose((0.5, 0.1, 0.3), DOWN)

    arm = new_arm()
    arm.connect(5.0)
    arm.move_to(target, 0.1, 5.0, max_linear_acc_m_s2=0.5)
    check(arm.is_settled(), 'the arm should be settled after a move with no settle time')
    pose = arm.current_pose()
    check(math.dist(pose.position, (0.5, 0.0, 0.3)) < 1e-9, f'tcp_pose read wrongly: {pose}')

    # stop() from another thread while the move waits.
    arm._robot.reached_after = None
    threading.Timer(0.05, arm.stop).start()
    try:
        arm.move_to(target, 0.1, 5.0)
        raise CheckFailed('stop() did not end the move')
    except MotionStoppedError:
        pass

    # A move that never reaches its target.
    try:
        arm.move_to(target, 0.1, 0.05)
        raise CheckFailed('the move did not time out')
    except MotionTimeoutError:
        pass

    # A fault during the move, then an explicit clear.
    arm._robot.reached_after = 5
    arm._robot.fault_on_poll = 2
    try:
        arm.move_to(target, 0.1, 5.0)
        raise CheckFailed('the fault did not end the move')
    except RobotFaultError as error:
        check(not isinstance(error, EmergencyStopError), 'a fault is not an emergency stop')
        check('recorded test event' in str(error), f'fault message lacks the event: {error}')
    arm._robot.fault_on_poll = None
    arm.clear_fault(5.0)
    check(not arm.has_fault, 'clear_fault left the fault')
    arm.disconnect()

    # An arm that never becomes operational.
    try:
        new_arm(operational_after=None).connect(0.05)
        raise CheckFailed('connect did not time out')
    except RobotConnectionError as error:
        check('NOT_ENABLED' in str(error), f'operational status missing: {error}')


def sdk_names_in_source() -> tuple[set[str], set[str]]:
    """Robot methods and module attributes that flexiv.py uses, found in its source."""
    source = pathlib.Path(flexiv_backend.__file__).read_text(encoding='utf-8')
    robot_methods = set(re.findall(r'\brobot\.([A-Za-z_]\w*)\(', source))
    module_names = set(re.findall(r'\bsdk\.([A-Za-z_]\w*)', source))
    return robot_methods, module_names


def check_sdk_calls() -> str:
    RecordingRobot.calls = []
    try:
        exercise_backend()
        backend_error = None
    except CheckFailed:
        raise
    except Exception as error:  # noqa: BLE001 - reported after the calls are matched
        backend_error = error
    recorded = RecordingRobot.calls
    robot_methods, module_names = sdk_names_in_source()

    for name in sorted(module_names):
        check(hasattr(flexivrdk, name), f'flexivrdk has no {name!r}, which flexiv.py uses')
    for name, args, kwargs in recorded:
        function = getattr(flexivrdk.Robot, name, None)
        check(function is not None, f'flexivrdk.Robot has no method {name!r}')
        ok, reason = accepts(function, args, kwargs)
        check(ok, f'flexivrdk.Robot.{name} does not accept {args} {kwargs}: {reason}')
    check(backend_error is None,
          f'FlexivArm failed against the recording robot: {type(backend_error).__name__}: '
          f'{backend_error}')
    called = {name for name, _, _ in recorded}
    missing = robot_methods - called - {'__init__'}
    check(not missing, f'the check did not exercise Robot methods {sorted(missing)}')
    return (f'{len(recorded)} recorded calls of {len(called)} Robot methods match: '
            f'{", ".join(sorted(called))}')


# The node without a robot.


def check_node_fails_configuration() -> float:
    environment = dict(os.environ)
    environment['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    environment.setdefault('ROS_DOMAIN_ID', str(random.randint(150, 200)))
    command = [
        sys.executable, '-m', 'hetnet_ros.nodes.inspection_node', '--ros-args',
        '-p', 'robot_backend:=flexiv',
        '-p', f'flexiv_serial_number:={MADE_UP_SERIAL}',
        '-p', f'flexiv_network_interfaces:=[{",".join(LOOPBACK_ONLY)}]',
        '-p', 'connect_timeout_s:=10.0',
    ]
    started = time.monotonic()
    try:
        process = subprocess.run(command, env=environment, capture_output=True, text=True,
                                 timeout=NODE_FAILURE_LIMIT_S)
    except subprocess.TimeoutExpired:
        raise CheckFailed(f'the inspection node did not fail within {NODE_FAILURE_LIMIT_S} s '
                          'without a robot') from None
    elapsed_s = time.monotonic() - started
    output = process.stdout + process.stderr
    check(process.returncode == 1,
          f'expected exit code 1, got {process.returncode}; output:\n{output}')
    check('configure failed' in output, f'no configure error in the output:\n{output}')
    check(MADE_UP_SERIAL in output, f'the error does not name the serial number:\n{output}')
    check('Check that' in output and 'flexiv_network_interfaces' in output,
          f'the error does not say what to check:\n{output}')
    error_line = next(line for line in output.splitlines() if 'configure failed' in line)
    return f'exit code 1 after {elapsed_s:.1f} s: {error_line}'


def main() -> int:
    steps = [
        ('flexivrdk version', check_sdk_version),
        ('signature matcher agrees with pybind11', check_matcher_against_pybind11),
        ('SDK calls of FlexivArm match flexivrdk', check_sdk_calls),
        ('node fails configuration without a robot', check_node_fails_configuration),
    ]
    failures = 0
    for title, step in steps:
        print(f'== {title}')
        started = time.monotonic()
        try:
            result = step()
        except CheckFailed as error:
            failures += 1
            print(f'FAILED: {error}')
            continue
        print(f'passed in {time.monotonic() - started:.1f} s: {result}')
    print('flexiv check: ' + ('all checks passed' if not failures else f'{failures} failed'))
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
