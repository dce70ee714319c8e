"""The fixed glibc mmap threshold (mlrkit.engine.host_memory)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mlrkit.engine.host_memory import (
    AUTO,
    _libc,
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
    freed; with a fixed 1 MiB threshold it gets its own mapping, returned to the system on free."""
    default = _probe({"MLRKIT_MMAP_THRESHOLD": "off"})
    assert default == {"allocator": "glibc default (dynamic mmap threshold)", "in_heap": True}
    fixed = {"allocator": "glibc, mmap threshold 1024 KiB", "in_heap": False}
    assert _probe({"MLRKIT_MMAP_THRESHOLD": "1M"}) == fixed


@needs_glibc
def test_auto_fixes_the_threshold_only_for_chunked_text_encoding():
    """auto (unset): glibc's default for image training and few classes, 1 MiB once more classes than one
    text chunk are encoded; an explicit off wins."""
    assert _probe({})["in_heap"] is True
    assert _probe({}, classes=200)["in_heap"] is True  # one chunk of 256
    assert _probe({}, classes=300) == {"allocator": "glibc, mmap threshold 1024 KiB", "in_heap": False}
    assert _probe({"MLRKIT_MMAP_THRESHOLD": "off"}, classes=5000)["in_heap"] is True


def test_cli_applies_the_setting_before_any_command(monkeypatch, capsys):
    from mlrkit.cli.main import main

    monkeypatch.setenv("MLRKIT_MMAP_THRESHOLD", "huge")
    assert main(["list", "methods"]) == 2
    assert "MLRKIT_MMAP_THRESHOLD must be a byte count" in capsys.readouterr().err
    monkeypatch.setenv("MLRKIT_MMAP_THRESHOLD", "off")
    assert main(["list", "methods"]) == 0
    assert "dualcoop" in capsys.readouterr().out


@needs_glibc
def test_bench_allocator_measures_both_settings_in_fresh_processes(monkeypatch):
    """Interleaved processes, small models: step time and peak memory per setting, medians, ratios."""
    from mlrkit.bench import allocator

    monkeypatch.delenv("MLRKIT_MMAP_THRESHOLD", raising=False)
    seen = []
    from mlrkit.bench import throughput  # bench_allocator looks it up at call time

    original = throughput.bench_throughput

    def spy(*args, **kwargs):
        seen.append(kwargs["env"]["MLRKIT_MMAP_THRESHOLD"])
        return original(*args, **kwargs)

    monkeypatch.setattr(throughput, "bench_throughput", spy)
    small = {"vl_model": "tiny:rn", "image_size": 64}
    row = allocator.bench_allocator("dualcoop", classes=8, rounds=2, small=small, timeout=300)
    assert seen == ["off", "1048576", "1048576", "off"]  # order alternates between rounds
    assert row["method"] == "dualcoop" and row["classes"] == 8 and row["threshold_bytes"] == 1 << 20
    assert len(row["step_s_fixed"]) == len(row["step_s_glibc_default"]) == 2 and min(row["step_s_fixed"]) > 0
    assert row["time_ratio_fixed_vs_default"] == pytest.approx(
        row["median_step_s_fixed"] / row["median_step_s_glibc_default"])
    assert min(row["peak_mb_glibc_default"] + row["peak_mb_fixed"]) > 100
    table = allocator.format_table([row])
    assert "| dualcoop | 8 |" in table and "fixed threshold 1024 KiB" in table
