"""docs/extending.md's worked example runs: its loss, dataset and method files, then a training run."""

from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path

import pytest

from mlrkit.config import build_config
from mlrkit.errors import ConfigError

DOC = Path(__file__).resolve().parent.parent / "docs" / "extending.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_the_page_has_a_loss_a_dataset_a_method_and_a_run():
    heads = [b.splitlines()[0] for b in python_blocks()]
    assert heads[:3] == ["# src/mlrkit/losses/brier.py", "# src/mlrkit/data/datasets/emotions_half.py",
                         "# src/mlrkit/methods/cosine.py"]
    assert len(heads) == 4


@pytest.mark.slow  # a 3-epoch run plus imports: ~20 s alone, more on a loaded machine
def test_worked_example_runs(tmp_path):
    from mlrkit.data import DATASETS
    from mlrkit.losses import LOSSES
    from mlrkit.methods import METHODS

    from .test_contracts import check_loss_contract

    module = types.ModuleType("mlrkit_docs_extending")  # the example's code lives in a module of its own
    module.RUN_DIR = str(tmp_path / "run")
    sys.modules[module.__name__] = module
    try:
        for block in python_blocks():
            exec(compile(block, str(DOC), "exec"), module.__dict__)  # noqa: S102 - the project's own docs
        # the loss meets the contract every registered loss meets
        check_loss_contract("brier_an")
        # the run trained the new method with the new loss on the new dataset
        results = module.results
        assert 0.0 <= results["test_map"] <= 1.0 and results["method"] == "cosine"
        assert results["dataset"] == "emotions-half" and results["loss"] == "brier_an"
        rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
        assert len(rows) == 3 and all(r["terms"]["scale"] == pytest.approx(16.0) for r in rows)  # StepOutput terms
        # and the configuration knows their keys
        for sets, pattern in [
            (["method.name=cosine", "cosine.scael=2"], r"'cosine.scael' \(did you mean scale"),
            (["cosine.scale=2"], r"'cosine' is read by method cosine, but the active method is 'linear'"),
            (["method.name=cosine", "cosine.scale=0"], r"cosine.scale must be > 0"),
            (["method.name=cosine", "method.init_from_mean=true"], r"did you mean init_from_means"),
            (["loss.name=brier_an", "loss.gama=1"], r"'loss.gama' \(did you mean gamma"),
        ]:
            with pytest.raises(ConfigError, match=pattern):
                build_config(sets=sets)
        cfg = build_config(sets=["data.name=emotions-half", "data.options={n_features: 20}"])
        from mlrkit.engine.run_data import prepare_run_data

        assert prepare_run_data(cfg).train.features.shape[1] == 20
    finally:
        for registry, name in ((LOSSES, "brier_an"), (DATASETS, "emotions-half"), (METHODS, "cosine")):
            if name in registry:
                registry.remove(name)
        sys.modules.pop(module.__name__, None)
