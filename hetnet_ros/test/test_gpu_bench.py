"""Tests of scripts/gpu_bench.py, run as a subprocess: the no-CUDA exit and a tiny CPU run."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch

from hetnet_ros.inference import cpu_bf16_unavailable_reason

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / 'scripts' / 'gpu_bench.py'
SUBPROCESS_TIMEOUT_S = 600.0
CONFIGURATION_NAMES = [
    'torch-eager-fp32', 'torch-autocast-fp16', 'torch-autocast-bf16', 'peer-rd-fp32', 'peer-rd-fp16',
    'torch-compile-fp16', 'tensorrt-fp16']
FIELDS = {
    'configuration', 'model', 'precision', 'config', 'image_size', 'batch', 'iterations', 'device',
    'device_name', 'driver_version', 'cuda_version', 'torch_version', 'p50_s', 'p95_s',
    'throughput_img_s', 'peak_gpu_mib', 'peak_rss_mib', 'load_s', 'first_call_s', 'max_abs_map_diff',
    'reference_map_range', 'map_diff_fraction', 'reference', 'note', 'skipped'}
HAS_ANOMALIB = importlib.util.find_spec('anomalib') is not None


def run_script(*args: str) -> subprocess.CompletedProcess:
    """Run gpu_bench.py with this interpreter and hetnet_ros from the source tree."""
    environment = dict(os.environ)
    environment['PYTHONPATH'] = os.pathsep.join(
        filter(None, [str(REPO_ROOT / 'hetnet_ros'), environment.get('PYTHONPATH')]))
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          env=environment, timeout=SUBPROCESS_TIMEOUT_S, check=False)


@pytest.fixture(scope='module')
def tiny_cpu_run(tmp_path_factory, screw_root) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """A full run of the script on the CPU with the tiny model at 64 px: (process, lines of --output)."""
    output = tmp_path_factory.mktemp('gpu_bench') / 'bench.jsonl'
    completed = run_script('--device', 'cpu', '--config', 'tiny', '--image-size', '64', '--iterations', '2',
                           '--images-dir', str(screw_root / 'test'), '--output', str(output))
    assert completed.returncode == 0, completed.stderr[-2000:]
    lines = [json.loads(line) for line in output.read_text(encoding='utf-8').splitlines()]
    return completed, lines


@pytest.mark.skipif(torch.cuda.is_available(), reason='a CUDA device is present')
def test_no_cuda_exits_with_2(tmp_path):
    output = tmp_path / 'bench.jsonl'
    completed = run_script('--config', 'tiny', '--image-size', '64', '--output', str(output))

    assert completed.returncode == 2
    assert 'no CUDA device found' in completed.stderr
    assert '--device cpu' in completed.stderr
    assert completed.stdout == ''
    assert not output.exists()


def test_invalid_device_exits_with_2():
    completed = run_script('--device', 'gpu0')

    assert completed.returncode == 2
    assert "--device must be 'cuda', 'cuda:N' or 'cpu', got 'gpu0'" in completed.stderr


def test_tiny_cpu_run_lines(tiny_cpu_run):
    completed, lines = tiny_cpu_run
    stdout_lines = [json.loads(line) for line in completed.stdout.splitlines()]

    assert stdout_lines == lines
    assert [line['configuration'] for line in lines] == list(CONFIGURATION_NAMES)
    for line in lines:
        assert set(line) == FIELDS
        assert line['device'] == 'cpu'
        assert line['device_name']
        assert line['torch_version'] == torch.__version__
        assert line['image_size'] == 64
        assert line['iterations'] == 2


@pytest.mark.skipif(HAS_ANOMALIB, reason='anomalib is installed, so the peer runs')
def test_peer_skipped_without_anomalib(tiny_cpu_run):
    _, lines = tiny_cpu_run
    peers = [line for line in lines if line['configuration'].startswith('peer')]

    assert peers, 'the peer configurations must be reported, as skipped'
    for line in peers:
        assert line['skipped'] == 'anomalib is not installed; run make bench-env'


def test_tiny_cpu_run_fp32_measured(tiny_cpu_run):
    _, lines = tiny_cpu_run
    (fp32,) = [line for line in lines if line['configuration'] == 'torch-eager-fp32']

    assert fp32['skipped'] is None
    assert 0 < fp32['p50_s'] <= fp32['p95_s']
    assert fp32['throughput_img_s'] > 0
    assert fp32['peak_rss_mib'] > 0
    assert fp32['peak_gpu_mib'] is None
    assert fp32['reference'] == 'torch-eager-fp32'
    assert fp32['max_abs_map_diff'] == 0.0


def test_tiny_cpu_run_bf16_map_diff(tiny_cpu_run):
    _, lines = tiny_cpu_run
    (bf16,) = [line for line in lines if line['configuration'] == 'torch-autocast-bf16']
    reason = cpu_bf16_unavailable_reason()
    if reason:
        assert reason in bf16['skipped']
        pytest.skip(f'bf16 on the CPU: {reason}')

    assert bf16['skipped'] is None
    assert bf16['reference'] == 'torch-eager-fp32'
    assert bf16['max_abs_map_diff'] >= 0.0
    assert bf16['reference_map_range'] > 0.0
    assert bf16['map_diff_fraction'] >= 0.0
    assert bf16['p50_s'] > 0
    assert bf16['throughput_img_s'] > 0


def test_tiny_cpu_run_skips_fp16_and_tensorrt(tiny_cpu_run):
    _, lines = tiny_cpu_run
    by_name = {line['configuration']: line for line in lines}

    for name in ('torch-autocast-fp16', 'torch-compile-fp16'):
        assert "'fp16' is not supported on the CPU" in by_name[name]['skipped']
        assert by_name[name]['p50_s'] is None
    assert by_name['tensorrt-fp16']['skipped'] == 'TensorRT needs a CUDA device'


@pytest.mark.skipif(not HAS_ANOMALIB, reason='anomalib is not installed')
def test_tiny_cpu_run_peer_measured(tiny_cpu_run):
    _, lines = tiny_cpu_run
    (peer,) = [line for line in lines if line['configuration'] == 'peer-rd-fp32']

    assert peer['skipped'] is None
    assert peer['model'] == 'peer-rd'
    assert peer['p50_s'] > 0
    assert peer['reference'] == 'peer-rd-fp32'


def test_budget_skips_configurations(tmp_path, screw_root):
    # Writing the checkpoint alone takes longer than 1 ms, so no configuration may start.
    output = tmp_path / 'bench.jsonl'
    completed = run_script('--device', 'cpu', '--config', 'tiny', '--image-size', '64', '--no-peer',
                           '--budget-s', '0.001', '--images-dir', str(screw_root / 'test'),
                           '--output', str(output))
    lines = [json.loads(line) for line in output.read_text(encoding='utf-8').splitlines()]
    runnable_names = ['torch-eager-fp32'] + ([] if cpu_bf16_unavailable_reason() else ['torch-autocast-bf16'])
    runnable = [line for line in lines if line['configuration'] in runnable_names]

    assert completed.returncode == 0, completed.stderr[-2000:]
    assert [line['configuration'] for line in lines] == [
        name for name in CONFIGURATION_NAMES if not name.startswith('peer')]
    assert len(runnable) == len(runnable_names)
    for line in runnable:
        assert 'time budget of 0.001 s (--budget-s) ran out' in line['skipped']
        assert line['p50_s'] is None
