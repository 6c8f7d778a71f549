"""hetnet-bench on the tiny configuration: one JSON line per runtime with sane values."""

import json

import pytest

from hetnet_ros import bench

FIELDS = ('runtime', 'batch', 'p50_s', 'p95_s', 'throughput_img_s', 'peak_rss_mib',
          'max_abs_map_diff', 'ratio_to_peer')
RUNTIMES = (bench.TORCH_EAGER_FP32, bench.ONNXRUNTIME_FP32, bench.OPENVINO_DETECTOR_FP32)
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
    for line in bench_lines[1:]:
        assert line['reference'] == bench.TORCH_EAGER_FP32
        assert line['max_abs_map_diff'] <= MAX_FP32_MAP_DIFF, (
            f"{line['runtime']} map differs from fp32 PyTorch by {line['max_abs_map_diff']}")
        assert line['fp32_level_maps'] is True
    assert bench_lines[0]['max_abs_map_diff'] == 0.0, 'the reference must match itself'


def test_bench_map_diff_fraction(bench_lines):
    for line in bench_lines:
        assert line['reference_map_range'] > 0, f'reference maps must vary: {line}'
        assert line['map_diff_fraction'] == pytest.approx(
            line['max_abs_map_diff'] / line['reference_map_range'])


@pytest.mark.parametrize('arguments, fragment', [
    (['--iterations', '0'], '--iterations must be at least 1, got 0'),
    (['--images', '0'], '--images must be at least 1, got 0'),
    (['--image-size', '10'], 'invalid --image-size 10: image_size must be a positive multiple of 32'),
    (['--images-dir', '/nonexistent/images'], '--images-dir /nonexistent/images is not a folder'),
    (['--no-peer', '--runtimes', bench.PEER_FP32], '--no-peer leaves no runtime to measure'),
    (['--runtimes', 'tensorrt'], "unknown runtimes ['tensorrt']"),
])
def test_bench_rejects_invalid_options(arguments, fragment, capsys):
    status = bench.main(arguments)

    assert status == 2
    assert fragment in capsys.readouterr().err
