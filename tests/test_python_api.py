"""docs/python-api.md is executed as written (every python block, in order, in an empty directory)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "python-api.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


@pytest.mark.slow
def test_python_api_page_runs(tmp_path, monkeypatch):
    pytest.importorskip("imgviz")
    blocks = python_blocks(DOC.read_text())
    assert len(blocks) >= 3
    monkeypatch.chdir(tmp_path)
    scope: dict = {"__name__": "__doc_example__"}
    for code in blocks:
        exec(compile(code, str(DOC), "exec"), scope)  # noqa: S102 - our own documentation
    pred, run = scope["pred"], scope["run"]
    assert run.class_names == ["bottle", "chair", "diningtable", "person"]
    assert (tmp_path / "runs/photos/calibration.json").is_file()
    assert pred.ids[0].endswith("tile_0_0.png") and pred.ids[-3:] == ["image#2", "array#3", "array#4"]
    # the labels are the calibrated probabilities at the run's per-class thresholds
    assert (pred.labels == (pred.probs >= run.calibration.threshold_array())).all()


def test_api_exports_fit_and_load_run():
    import mlrkit

    assert callable(mlrkit.fit) and callable(mlrkit.load_run)
    with pytest.raises(AttributeError):
        mlrkit.no_such_thing  # noqa: B018
