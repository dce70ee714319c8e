"""``mlrkit bench throughput`` / ``bench classes``: every case runs end to end (with small models, so the
suite stays fast; the figures of docs/benchmarks.md use the papers' backbones)."""

from __future__ import annotations

import pytest

from mlrkit.bench.throughput import CASES, bench_classes, format_table, run_case
from mlrkit.errors import MlrkitError

from .conftest import run_cli

SMALL = {"backbone": "smallcnn", "vl_model": "tiny:rn", "image_size": 64}

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize("name", list(CASES))
def test_every_case_times_a_real_training_step(name):
    row = run_case(name, classes=12, batch=2, steps=1, small=SMALL)
    assert row["method"] == name and row["classes"] == 12 and row["train_step_s"] > 0
    assert row["train_img_s"] == pytest.approx(2 / row["train_step_s"])
    assert row["infer_img_s"] > 0 and row["peak_memory_mb"] > 0 and row["trainable_params"] > 0
    if CASES[name]["kind"] == "backbone":
        assert row["overhead_vs_backbone"] == pytest.approx(row["train_step_s"] / row["bare_backbone_step_s"])
    expect_chunk = None if name == "baseline" or CASES[name]["kind"] == "backbone" else 256
    assert row["text_chunk"] == expect_chunk


def test_text_chunk_reaches_the_model_and_the_table():
    row = run_case("dualcoop", classes=10, batch=2, steps=1, small=SMALL, train_only=True, warmup=False,
                   text_chunk=4)
    assert row["text_chunk"] == 4 and "infer_img_s" not in row
    assert run_case("scpnet", classes=10, batch=2, steps=1, small=SMALL, train_only=True, text_chunk=0)[
        "text_chunk"] == 0
    table = format_table([row, {"method": "dualcoop", "classes": 5000, "error": "not finished within 1 s"}])
    assert "| dualcoop |" in table and "| 4 |" in table and "not finished within 1 s" in table


def test_bench_classes_runs_each_count_in_a_subprocess_and_stops_after_a_timeout(monkeypatch):
    monkeypatch.delenv("MLRKIT_MMAP_THRESHOLD", raising=False)
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    rows = bench_classes(("positivecoop",), (6,), batch=2, steps=1, small=SMALL, text_chunk=4)
    assert [r["classes"] for r in rows] == [6] and "error" not in rows[0] and rows[0]["text_chunk"] == 4
    from mlrkit.engine.host_memory import _libc

    if _libc() is not None:  # the case's process sets the host allocator up as `mlrkit` does
        assert rows[0]["host_allocator"] == "glibc, mmap threshold 1024 KiB"
        assert "host allocator: glibc, mmap threshold 1024 KiB" in format_table(rows)
    rows = bench_classes(("positivecoop",), (6, 12), batch=2, steps=1, small=SMALL, timeout=0.5)
    assert len(rows) == 1 and "not finished within" in rows[0]["error"]  # 12 classes skipped after the timeout
    with pytest.raises(MlrkitError, match="unknown benchmark method"):
        bench_classes(("dualcop",), (6,))


def test_bench_classes_cli_options_are_parsed(tmp_path):
    r = run_cli("bench", "classes", "--methods", "nosuch", "--counts", "6", "--json", str(tmp_path / "x.json"))
    assert r.returncode != 0 and "unknown benchmark method" in r.stderr
    r = run_cli("bench", "--help")
    assert r.returncode == 0 and "--no-warmup" in r.stdout and "--text-chunk" in r.stdout
    assert "mlrkit bench allocator" in r.stdout
    assert not (tmp_path / "x.json").exists()


def test_a_case_killed_without_a_message_is_reported_not_a_crash(monkeypatch):
    import subprocess

    from mlrkit.bench import throughput

    def killed(*args, **kwargs):
        return subprocess.CompletedProcess(args, -9, stdout="", stderr="")

    monkeypatch.setattr(throughput.subprocess, "run", killed)
    rows = throughput.bench_throughput(["dualcoop"], classes=5000)
    assert rows == [{"method": "dualcoop", "classes": 5000, "error": "killed by signal 9 (out of memory?)"}]
