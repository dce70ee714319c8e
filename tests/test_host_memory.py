"""The fixed glibc mmap threshold (mlrkit.engine.host_memory)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mlrkit.engine.host_memory import (
    AUTO,
    _libc,
    auto_wants_fixed_threshold,
    configure_host_allocator,
    parse_threshold,
    set_mmap_threshold,
)
from mlrkit.errors import ConfigError

needs_glibc = pytest.mark.skipif(_libc() is None, reason="glibc mallopt not available")


def test_parse_threshold():
    assert parse_threshold(None) == parse_threshold("") == parse_threshold(" Auto ") == AUTO
    assert parse_threshold("65536") == 65536
    assert parse_threshold("64K") == 65536
    assert parse_threshold("2m") == 2 << 20
    for off in ("0", "off", "OFF", "none"):
        assert parse_threshold(off) == 0
    for bad in ("lots", "1.5M", "-1", "64G", "33M"):
        with pytest.raises(ConfigError):
            parse_threshold(bad)


def test_set_mmap_threshold_validates():
    for bad in (0, -5, True, 1.5, 64 << 20):
        with pytest.raises(ConfigError):
            set_mmap_threshold(bad)


def test_configure_respects_glibc_env_and_off():
    assert configure_host_allocator({"MALLOC_MMAP_THRESHOLD_": "65536"}) == "glibc, MALLOC_MMAP_THRESHOLD_=65536"
    assert configure_host_allocator({"MLRKIT_MMAP_THRESHOLD": "off"}).startswith("glibc default")
    assert configure_host_allocator({}).startswith("glibc default (auto")  # decided when a model is built
    with pytest.raises(ConfigError):
        configure_host_allocator({"MLRKIT_MMAP_THRESHOLD": "huge"})


_PROBE = r"""
import json, sys
import torch
from mlrkit.engine.host_memory import configure_host_allocator, host_allocator_setting, use_for_chunked_text

env, classes = json.loads(sys.argv[1]), int(sys.argv[2])
configure_host_allocator(env)  # as mlrkit starts
if classes:
    use_for_chunked_text(classes, 256, env)  # as a prompt method builds its model
big = torch.empty(8 << 20, dtype=torch.uint8)  # 8 MiB: mmapped; freeing it raises glibc's dynamic threshold
del big
t = torch.empty(2 << 20, dtype=torch.uint8)  # 2 MiB: heap or its own mapping?
p = t.data_ptr()
heap = [line.split()[0].split("-") for line in open("/proc/self/maps") if line.rstrip().endswith("[heap]")]
in_heap = any(int(a, 16) <= p < int(b, 16) for a, b in heap)
print(json.dumps({"allocator": host_allocator_setting(), "in_heap": in_heap}))
"""


def _probe(env: dict[str, str], classes: int = 0) -> dict:
    r = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(env), str(classes)], capture_output=True, text=True,
                       timeout=120, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


@needs_glibc
def test_fixed_threshold_keeps_mid_size_tensors_out_of_the_heap():
    """glibc's dynamic threshold puts a 2 MiB tensor in the (never shrinking) heap after an 8 MiB one was
    freed; with the fixed 1 MiB threshold, here set by the auto policy as a prompt method with 300
    classes (two text chunks) sets it, the tensor gets its own mapping, returned to the system on free."""
    default = _probe({"MLRKIT_MMAP_THRESHOLD": "off"}, classes=5000)  # off wins over auto
    assert default == {"allocator": "glibc default (dynamic mmap threshold)", "in_heap": True}
    assert _probe({}, classes=300) == {"allocator": "glibc, mmap threshold 1024 KiB", "in_heap": False}


def test_auto_policy_decides_by_classes_per_text_chunk():
    assert auto_wants_fixed_threshold(300, 256, {})
    assert auto_wants_fixed_threshold(5000, 256, {"MLRKIT_MMAP_THRESHOLD": "auto"})
    assert not auto_wants_fixed_threshold(256, 256, {})  # one chunk
    assert not auto_wants_fixed_threshold(5000, 0, {})  # one pass (text_chunk 0)
    assert not auto_wants_fixed_threshold(5000, 256, {"MLRKIT_MMAP_THRESHOLD": "off"})
    assert not auto_wants_fixed_threshold(5000, 256, {"MLRKIT_MMAP_THRESHOLD": "8M"})  # applied at start instead
    assert not auto_wants_fixed_threshold(5000, 256, {"MALLOC_MMAP_THRESHOLD_": "65536"})


def test_cli_applies_the_setting_before_any_command(monkeypatch, capsys):
    from mlrkit.cli.main import main

    monkeypatch.setenv("MLRKIT_MMAP_THRESHOLD", "huge")
    assert main(["list", "methods"]) == 2
    assert "MLRKIT_MMAP_THRESHOLD must be a byte count" in capsys.readouterr().err
    monkeypatch.setenv("MLRKIT_MMAP_THRESHOLD", "off")
    assert main(["list", "methods"]) == 0
    assert "dualcoop" in capsys.readouterr().out


def test_bench_allocator_interleaves_settings_and_takes_medians(monkeypatch):
    """The order of the processes alternates between rounds; medians and ratios per setting."""
    from mlrkit.bench import allocator, throughput  # bench_allocator looks bench_throughput up at call time

    monkeypatch.setattr(allocator, "_libc", lambda: object())
    seen = []
    fake = {"off": iter([(10.0, 400.0), (14.0, 420.0), (12.0, 410.0)]),
            "1048576": iter([(13.0, 300.0), (11.0, 310.0), (15.0, 290.0)])}

    def bench_throughput(methods, *, env, **kwargs):
        value = env["MLRKIT_MMAP_THRESHOLD"]
        seen.append(value)
        step, peak = next(fake[value])
        return [{"method": methods[0], "train_step_s": step, "peak_memory_mb": peak, "setting": "s", "device": "d"}]

    monkeypatch.setattr(throughput, "bench_throughput", bench_throughput)
    row = allocator.bench_allocator("dualcoop", classes=8, rounds=3)
    assert seen == ["off", "1048576", "1048576", "off", "off", "1048576"]
    assert row["step_s_glibc_default"] == [10.0, 14.0, 12.0] and row["step_s_fixed"] == [13.0, 11.0, 15.0]
    assert row["median_step_s_glibc_default"] == 12.0 and row["median_step_s_fixed"] == 13.0
    assert row["time_ratio_fixed_vs_default"] == pytest.approx(13 / 12)
    assert row["memory_ratio_fixed_vs_default"] == pytest.approx(300 / 410)
    table = allocator.format_table([row])
    assert "| dualcoop | 8 | 12.00 | 13.00 | 1.08x | 410 | 300 | 0.73x |" in table
    assert "fixed threshold 1024 KiB" in table


@needs_glibc
def test_a_case_process_gets_the_environment_it_is_given():
    from mlrkit.bench.throughput import bench_throughput

    rows = bench_throughput(["baseline"], classes=4, batch=2, steps=1, train_only=True,
                            small={"vl_model": "tiny:rn", "image_size": 64}, env={"MLRKIT_MMAP_THRESHOLD": "64K"})
    assert "error" not in rows[0] and rows[0]["host_allocator"] == "glibc, mmap threshold 64 KiB"
