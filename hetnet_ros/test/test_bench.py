"""hetnet-bench on the tiny configuration: one JSON line per runtime with sane values."""

import json

import pytest

from hetnet_ros import bench

FIELDS = ('runtime', 'batch', 'p50_s', 'p95_s', 'throughput_img_s', 'peak_rss_mib',
          'max_abs_map_diff', 'ratio_to_peer')
RUNTIMES = (bench.TORCH_EAGER_FP32, bench.ONNXRUNTIME_FP32)
# fp32 runtimes agree to rounding: hetnet-export accepts up to 1e-4 in raw map units.
MAX_FP32_MAP_DIFF = 1e-4


@pytest.fixture(scope='module')
def bench_lines(tmp_path_factory, screw_root):
    output = tmp_path_factory.mktemp('bench') / 'bench.jsonl'
    status = bench.main([
        '--config', 'tiny', '--image-size', '64', '--runtimes', ','.join(RUNTIMES), '--no-peer',
        '--iterations', '2', '--warmup', '1', '--batch', '2', '--throughput-iterations', '1',
        '--images', '2', '--images-dir', str(screw_root / 'test'), '--output', str(output)])
    assert status == bench.EXIT_OK, f'hetnet-bench exited with {status}'
    return [json.loads(line) for line in output.read_text().splitlines()]


def test_bench_one_line_per_runtime(bench_lines):
    assert [line['runtime'] for line in bench_lines] == list(RUNTIMES)


@pytest.mark.parametrize('index', range(len(RUNTIMES)))
def test_bench_line_fields(bench_lines, index):
    line = bench_lines[index]
    assert line['skipped'] is None, f"{line['runtime']} was skipped: {line['skipped']}"
    for field in FIELDS:
        assert field in line, f'{field} missing from {line}'


@pytest.mark.parametrize('index', range(len(RUNTIMES)))
def test_bench_line_values(bench_lines, index):
    line = bench_lines[index]
    assert line['p50_s'] > 0, f'p50_s must be positive: {line}'
    assert line['p95_s'] >= line['p50_s'], f'p95_s below p50_s: {line}'
    assert line['throughput_img_s'] > 0, f'throughput must be positive: {line}'
    assert line['peak_rss_mib'] > 0, f'peak memory must be positive: {line}'
    assert line['batch'] == 2, f'batch should be the --batch value: {line}'
    assert line['ratio_to_peer'] is None, f'no peer ran, so no ratio: {line}'


def test_bench_maps_match_fp32(bench_lines):
    onnx_line = bench_lines[1]
    assert onnx_line['reference'] == bench.TORCH_EAGER_FP32
    assert onnx_line['max_abs_map_diff'] <= MAX_FP32_MAP_DIFF, (
        f"ONNX Runtime map differs from fp32 PyTorch by {onnx_line['max_abs_map_diff']}")
    assert bench_lines[0]['max_abs_map_diff'] == 0.0, 'the reference must match itself'
