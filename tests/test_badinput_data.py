"""Bad data and files: path escapes, decompression bombs, truncated caches, mismatched checkpoints, bad
predict inputs, crash consistency of metrics.jsonl vs last.pt, and the LLM client's deadline."""

from __future__ import annotations

import json
import re
import shutil
import struct
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from mlrkit.cli.main import main
from mlrkit.errors import DataError
from tests.test_datasets_formats import cub  # noqa: F401, F811 - the CUB fixture (real layout, small)

pytestmark = pytest.mark.badinput


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("mlrkit: error:") and "\n" not in err, err
    return err


def png(path: Path, size: tuple[int, int] = (8, 8)) -> Path:
    from PIL import Image

    Image.fromarray(np.full((size[1], size[0], 3), 128, np.uint8)).save(path)
    return path


# ---------------------------------------------------------------------------- paths stay inside the root
def _manifest(tmp_path: Path, first_image: str) -> Path:
    d = tmp_path / "data"
    d.mkdir(parents=True)
    for i in range(4):
        png(d / f"{i}.png")
    lines = ["image,labels,split", f"{first_image},a,train", "1.png,b,train", "2.png,a|b,test", "3.png,b,test"]
    (d / "m.csv").write_text("\n".join(lines) + "\n")
    return d / "m.csv"


@pytest.mark.parametrize("image, what", [
    ("../../../../etc/passwd", "leaves"),
    ("sub/../../secret.png", "leaves"),
    ("/etc/passwd", "is absolute"),
])
def test_manifest_paths_cannot_escape_the_root(image, what, tmp_path, capsys):
    """clear error | manifest rows `../../../../etc/passwd`, `sub/../../secret.png`, `/etc/passwd` | refused, naming
    the manifest line, the path and the `outside_root=true` option
    """
    m = _manifest(tmp_path, image)
    assert main(["prepare", "--dataset", f"manifest:{m}"]) == 2
    err = one_line_error(capsys)
    assert f"{m}:line 2" in err or f"{m}:2" in err or str(m) in err
    assert repr(image) in err and what in err and "outside_root=true" in err


def test_manifest_outside_paths_need_the_explicit_option_and_root_moves_the_base(tmp_path):
    """nothing silently accepted | an absolute manifest path with `--option outside_root=true`; `--root` | allowed
    only with the option; `--root` is the image root
    """
    from mlrkit.data import load_dataset

    outside = png(tmp_path / "outside.png")
    m = _manifest(tmp_path, str(outside))
    ds = load_dataset(f"manifest:{m}", None, outside_root=True)
    assert ds.trainval.images.paths[0] == outside
    inside = _manifest(tmp_path / "x", "0.png")
    other = tmp_path / "images"
    ds = load_dataset(f"manifest:{inside}", other)
    assert ds.trainval.images.paths[0] == other / "0.png"


@pytest.mark.parametrize("file_name", ["../../etc/passwd", "/etc/passwd"])
def test_coco_file_name_cannot_escape(file_name, tmp_path):
    """clear error | COCO `file_name` with `..` or absolute | refused naming the file, record and id"""
    from mlrkit.data.datasets.coco import split_from_instances

    data = {"images": [{"id": 1, "file_name": file_name}], "annotations": [{"image_id": 1, "category_id": 1}],
            "categories": [{"id": 1, "name": "cat"}]}
    with pytest.raises(DataError, match=r"images\[0\] \(id 1\) file_name: image path .* (leaves|is absolute)"):
        split_from_instances(data, tmp_path / "instances.json", tmp_path / "train2014", [1], False)


@pytest.mark.parametrize("field, message", [
    ("images", "image id must be in 0..2147483647"),
    ("labels", "non-integer field (or one out of range)"),
    ("path", "leaves"),
])
def test_cub_overflowing_ids_and_escaping_paths(field, message, cub):  # noqa: F811 - the imported fixture
    """clear error | CUB image id / label field overflowing int64, an image path with `..` | refused naming file and
    line (no OverflowError, no huge allocation)
    """
    from mlrkit.data import load_dataset

    d = cub / "CUB_200_2011"
    if field == "images":
        (d / "images.txt").write_text((d / "images.txt").read_text() + "99999999999999999999999 x.jpg\n")
    elif field == "labels":
        p = d / "attributes" / "image_attribute_labels.txt"
        p.write_text(p.read_text() + "99999999999999999999999 1 1 4 1.0\n")
    else:
        lines = (d / "images.txt").read_text().splitlines()
        lines[0] = lines[0].split()[0] + " ../../../../etc/passwd"
        (d / "images.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=re.escape(message)):
        load_dataset("cub", root=cub)


# ---------------------------------------------------------------------------- decompression bombs
def bomb_png(path: Path, width: int = 20000, height: int = 20000) -> Path:
    """A valid PNG header announcing width x height pixels (a few bytes on disk)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def test_decompression_bomb_is_refused_in_training_data(tmp_path):
    """clear error | a 20000x20000 PNG (decompression bomb) in training data | one DataError naming it;
    `--skip-bad-images` skips it
    """
    from mlrkit.data import PathImageSource

    src = PathImageSource([bomb_png(tmp_path / "bomb.png"), png(tmp_path / "ok.png")])
    with pytest.raises(DataError, match=r"refused image .*bomb.png: more pixels than PIL's limit .*"
                                        r"decompression bomb.*--skip-bad-images"):
        src.load(0)
    assert src.find_bad() == [0], "--skip-bad-images skips the bomb (and reports it)"


def test_predict_image_errors_name_the_input_and_no_foreign_flag(tmp_path, capsys):
    """clear error | predict on a bomb, a corrupt image, an empty folder | named errors; the advice names predict's own
    `--skip-bad-images`; a folder is searched for images, an empty one is named
    """
    from mlrkit.data import ImageList
    from mlrkit.engine.inference import expand_inputs

    with pytest.raises(DataError) as e:
        ImageList([bomb_png(tmp_path / "b.png")]).load(0)
    assert "decompression bomb" in str(e.value) and "b.png" in str(e.value)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(DataError) as e:
        ImageList([tmp_path / "broken.png"]).load(0)
    assert "unreadable image" in str(e.value) and "broken.png" in str(e.value)
    assert expand_inputs([tmp_path]) == [tmp_path / "b.png", tmp_path / "broken.png"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: no image files"):
        expand_inputs([tmp_path / "empty"])


# ---------------------------------------------------------------------------- predict / evaluate inputs
@pytest.fixture(scope="module")
def scene_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bad") / "run"
    assert main(["train", "--dataset", "scene", "--method", "linear", "--epochs", "1", "--batch-size", "64",
                 "--out", str(out), "--quiet"]) == 0
    return out


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    obj = tmp_path / "obj.npy"
    np.save(obj, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    bad_npz = tmp_path / "bad.npz"
    bad_npz.write_bytes(b"PK\x03\x04 this is not a zip archive")
    text = tmp_path / "text.npy"
    np.save(text, np.array(["a", "b"]))
    return {"object .npy": (obj, "Object arrays cannot be loaded"), "corrupt .npz": (bad_npz, "not a zip file"),
            "string .npy": (text, "could not convert"), "folder": (tmp_path, "is a directory; give feature files")}


@pytest.mark.parametrize("case", ["object .npy", "corrupt .npz", "string .npy", "folder"])
def test_predict_refuses_bad_feature_inputs(case, scene_run, tmp_path, capsys):
    """clear error | predict on an object `.npy`, a corrupt `.npz`, a string `.npy`, a folder | one line naming the
    file and the problem
    """
    path, message = _bad_inputs(tmp_path)[case]
    assert main(["predict", str(scene_run), str(path)]) == 2
    err = one_line_error(capsys)
    assert message in err and str(path) in err


def test_predict_output_folder_must_exist(scene_run, tmp_path, capsys):
    """clear error | predict `--output` in a missing folder | refused before any work"""
    np.save(tmp_path / "x.npy", np.zeros((1, 294), np.float32))
    assert main(["predict", str(scene_run), str(tmp_path / "x.npy"), "--output", str(tmp_path / "no" / "o.json")]) == 2
    assert f"folder {tmp_path / 'no'} does not exist" in one_line_error(capsys)


def test_checkpoint_of_another_model_is_a_clear_error(scene_run, tmp_path, capsys):
    """clear error | `best.pt` of another run (yeast into scene); a checkpoint tensor of the wrong shape | one line
    naming the file and the differing key/shape
    """
    other = tmp_path / "yeast"
    assert main(["train", "--dataset", "yeast", "--method", "linear", "--epochs", "1", "--out", str(other),
                 "--quiet"]) == 0
    run = tmp_path / "run"
    shutil.copytree(scene_run, run)
    shutil.copy(other / "best.pt", run / "best.pt")
    assert main(["evaluate", str(run)]) == 2
    err = one_line_error(capsys)
    assert f"{run / 'best.pt'} was not trained with {run / 'config.yaml'} (data.name: 'yeast' -> 'scene'" in err
    # a checkpoint of the same configuration whose tensors do not fit the model (edited or foreign state)
    import torch

    from mlrkit.engine.checkpoint import save_checkpoint

    ck = torch.load(scene_run / "best.pt", weights_only=True)
    key = next(iter(ck["model"]))
    ck["model"][key] = torch.zeros(3, 3)
    save_checkpoint(run / "best.pt", ck)
    assert main(["evaluate", str(run)]) == 2
    err = one_line_error(capsys)
    assert f"{run / 'best.pt'} does not fit the run's model" in err and f"{key} (3, 3)" in err


# ---------------------------------------------------------------------------- feature cache
def test_truncated_or_nan_feature_cache_is_named(tmp_path):
    """clear error | a truncated feature-cache file; NaN in a cached entry | named error saying which file/row and to
    delete the entry (never exported or used)
    """
    from mlrkit.features import FeatureStore

    class Images:
        def __len__(self):
            return 6

        def load(self, i):
            from PIL import Image

            return Image.new("RGB", (4, 4), (i * 10, 0, 0))

        def key(self, i):
            return f"img{i}"

    import torch

    def encode(x):
        return torch.ones(len(x), 3)

    def transform(im):
        return torch.zeros(3, 4, 4)

    store = FeatureStore(tmp_path / "cache")
    arr = store.get("enc", encode, Images(), transform, batch_size=2, progress=False)
    assert arr.shape == (6, 3)
    entry = store.entry_dir("enc", Images(), transform)
    data = entry / "features.npy"
    good = data.read_bytes()
    data.write_bytes(good[: len(good) - 20])
    with pytest.raises(DataError, match=r"feature cache .*features.npy is truncated or corrupt.*delete"):
        store.get("enc", encode, Images(), transform, batch_size=2, progress=False)
    data.write_bytes(good)
    a = np.load(data, mmap_mode="r+")
    a[4, 1] = np.nan
    a.flush()
    del a
    with pytest.raises(DataError, match=r"1 row\(s\) hold NaN/inf \(first: row 4\)"):
        store.get("enc", encode, Images(), transform, batch_size=2, progress=False)


# ---------------------------------------------------------------------------- crash consistency
class _Killed(BaseException):
    pass


def test_kill_between_last_pt_and_metrics_row_loses_nothing(tmp_path, monkeypatch):
    """nothing lost | the process dies right after `last.pt` is written | resumed run has every `metrics.jsonl` row,
    equal to a straight run

    The run dies right after last.pt of epoch 3 is written: the resumed run has every row, equal to a straight run
    (the row is written before the checkpoint, so nothing falls between them).
    """
    from mlrkit.config import build_config
    from mlrkit.engine import trainer as tr

    def cfg(out):
        return build_config(flags={"out": str(out), "data": {"name": "scene"}, "method": {"name": "linear"},
                                   "labels": {"protocol": "single-positive"}, "seed": 2,
                                   "train": {"epochs": 5, "batch_size": 64, "checkpoint_every_s": 0}})

    real = tr.Trainer._write_checkpoints

    def dies_after_epoch_3(self, last_ck, best_ck):
        real(self, last_ck, best_ck)
        if last_ck["epoch"] == 3:
            raise _Killed

    monkeypatch.setattr(tr.Trainer, "_write_checkpoints", dies_after_epoch_3)
    with pytest.raises(_Killed):
        tr.train(cfg(tmp_path / "k"), quiet=True)
    monkeypatch.setattr(tr.Trainer, "_write_checkpoints", real)
    tr.train(cfg(tmp_path / "k"), resume=True, quiet=True)
    tr.train(cfg(tmp_path / "s"), quiet=True)

    def rows(d):
        return [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]

    assert [r["epoch"] for r in rows(tmp_path / "k")] == [1, 2, 3, 4, 5]  # epochs count from 1
    assert [r["val_map"] for r in rows(tmp_path / "k")] == [r["val_map"] for r in rows(tmp_path / "s")]


def test_row_cut_short_by_a_kill_is_recomputed(tmp_path):
    """nothing lost | a `metrics.jsonl` row cut short by a kill | resume drops it and recomputes"""
    from mlrkit.config import build_config
    from mlrkit.engine.trainer import train

    c = build_config(flags={"out": str(tmp_path / "r"), "data": {"name": "scene"}, "method": {"name": "linear"},
                            "train": {"epochs": 2, "batch_size": 64, "keep_last": True}})
    train(c, quiet=True)
    (tmp_path / "r" / "results.json").unlink()
    with open(tmp_path / "r" / "metrics.jsonl", "a") as fh:
        fh.write('{"epoch": 2, "train_lo')  # a kill in the middle of a write
    train(c, resume=True, quiet=True)
    assert [json.loads(x)["epoch"] for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()] == [1, 2]


# ---------------------------------------------------------------------------- LLM client deadline
class _Trickle(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "100000")
        self.end_headers()
        try:
            for _ in range(200):  # one byte every 50 ms: each socket wait is short, the reply never ends in time
                self.wfile.write(b" ")
                self.wfile.flush()
                time.sleep(0.05)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *a):
        pass


def test_llm_attempt_has_a_total_deadline_against_a_trickling_server():
    """nothing silently accepted | an LLM server on 127.0.0.1 that trickles one byte every 50 ms | each attempt ends
    at its total deadline (0.6 s); counted as time-outs
    """
    from mlrkit.negation.llm import ChatClient, LLMConfig

    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Trickle)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        cfg = LLMConfig(base_url=f"http://127.0.0.1:{srv.server_address[1]}/v1", model="m", timeout=0.6,
                        max_retries=1, backoff=0.0)
        client = ChatClient(cfg, sleep=lambda s: None)
        t0 = time.monotonic()
        assert client.complete([{"role": "user", "content": "hi"}]) is None
        elapsed = time.monotonic() - t0
    finally:
        srv.shutdown()
        srv.server_close()
    assert client.stats.timeouts == 2 and client.stats.failed == 1
    assert elapsed < 2 * 0.6 + 1.0, f"two attempts of 0.6 s took {elapsed:.1f} s"
