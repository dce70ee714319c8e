"""On-disk dataset adapters, each read from a tiny fixture written in the real file format.

VOC devkit XML, COCO instances JSON, NUS-WIDE lists (official and Cole et al.'s formatted
arrays), CUB attribute files, Open Images human-verified label CSVs and user manifests.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mlrkit.data import load_dataset, split_train_val
from mlrkit.data.datasets.nuswide import NUSWIDE_CONCEPTS
from mlrkit.data.datasets.voc import VOC_CLASSES
from mlrkit.errors import DataError, MlrkitError

COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200)]


def _image(path: Path, k: int = 0, fmt: str = "JPEG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), COLOURS[k % len(COLOURS)]).save(path, fmt)


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _row(names: list[str], *present: str) -> list[int]:
    return [int(n in present) for n in names]


@pytest.fixture(autouse=True)
def _no_data_env(monkeypatch):
    monkeypatch.delenv("MLRKIT_DATA", raising=False)


# --------------------------------------------------------------------------- VOC


def _voc_xml(filename: str, objects: list[tuple[str, int | None]]) -> str:
    """A devkit annotation; each object (name, difficult or None for no <difficult> tag)."""
    objs = []
    for name, difficult in objects:
        tag = "" if difficult is None else f"\n    <difficult>{difficult}</difficult>"
        part = "\n    <part>\n      <name>head</name>\n    </part>" if name == "person" else ""
        objs.append(
            f"  <object>\n    <name>{name}</name>\n    <pose>Unspecified</pose>\n    <truncated>0</truncated>{tag}\n"
            f"    <bndbox>\n      <xmin>1</xmin>\n      <ymin>1</ymin>\n      <xmax>7</xmax>\n      <ymax>7</ymax>\n"
            f"    </bndbox>{part}\n  </object>"
        )
    return (
        f"<annotation>\n  <folder>VOC2007</folder>\n  <filename>{filename}</filename>\n"
        "  <size>\n    <width>8</width>\n    <height>8</height>\n    <depth>3</depth>\n  </size>\n"
        "  <segmented>0</segmented>\n" + "\n".join(objs) + "\n</annotation>\n"
    )


VOC_FIXTURE = {
    # id: objects
    "000005": [("chair", 0), ("chair", 1), ("person", 0)],  # chair difficult and not: positive
    "000007": [("car", 0), ("bottle", 1)],  # bottle only difficult
    "000009": [("horse", None), ("person", 0)],  # no <difficult> tag: not difficult
    "000012": [("tvmonitor", 0)],
    "000016": [("cat", 1), ("dog", 1)],  # only difficult objects
}


def _make_voc(base: Path, year: str, lists: dict[str, list[str]]) -> Path:
    year_dir = base / "VOCdevkit" / f"VOC{year}"
    for k, (image_id, objects) in enumerate(VOC_FIXTURE.items()):
        _write(year_dir / "Annotations" / f"{image_id}.xml", _voc_xml(f"{image_id}.jpg", objects))
        _image(year_dir / "JPEGImages" / f"{image_id}.jpg", k)
    for name, ids in lists.items():
        _write(year_dir / "ImageSets" / "Main" / f"{name}.txt", "".join(f"{i}\n" for i in ids))
    return year_dir


@pytest.fixture
def voc2007(tmp_path) -> Path:
    return _make_voc(tmp_path, "2007", {"trainval": ["000005", "000007", "000009"], "test": ["000012", "000016"]})


def test_voc2007_targets_ids_and_default_difficult_negative(voc2007):
    ds = load_dataset("voc2007", root=voc2007.parent)  # root = VOCdevkit
    names = list(VOC_CLASSES)
    assert ds.class_names == names and len(names) == 20 and names[0] == "aeroplane" and names[-1] == "tvmonitor"
    assert ds.trainval.ids == ["000005", "000007", "000009"] and ds.test.ids == ["000012", "000016"]
    np.testing.assert_array_equal(
        ds.trainval.targets,
        [_row(names, "chair", "person"), _row(names, "car"), _row(names, "horse", "person")],
    )
    np.testing.assert_array_equal(ds.test.targets, [_row(names, "tvmonitor"), _row(names)])
    assert ds.trainval.known is None and ds.test.known is None
    assert ds.trainval.images.paths[1] == voc2007 / "JPEGImages" / "000007.jpg"
    assert ds.trainval.images.load(0).size == (8, 8)


def test_voc2007_difficult_positive_and_unknown(voc2007):
    names = list(VOC_CLASSES)
    pos = load_dataset("voc2007", root=voc2007, difficult="positive")  # root = VOC2007 itself
    np.testing.assert_array_equal(pos.trainval.targets[1], _row(names, "car", "bottle"))
    np.testing.assert_array_equal(pos.test.targets[1], _row(names, "cat", "dog"))
    unk = load_dataset("voc2007", root=voc2007.parent.parent, difficult="unknown")  # parent of VOCdevkit
    np.testing.assert_array_equal(unk.trainval.targets[1], _row(names, "car"))
    expected_known = np.ones((3, 20), dtype=bool)
    expected_known[1, names.index("bottle")] = False
    np.testing.assert_array_equal(unk.trainval.known, expected_known)
    assert unk.test.known[1].sum() == 18 and not unk.test.known[1, names.index("cat")]
    with pytest.raises(DataError, match="difficult must be one of"):
        load_dataset("voc2007", root=voc2007, difficult="maybe")
    with pytest.raises(MlrkitError, match="unknown option"):
        load_dataset("voc2007", root=voc2007, difficulty="unknown")


def test_voc2012_uses_train_and_val_as_cole(tmp_path):
    year_dir = _make_voc(
        tmp_path,
        "2012",
        {"train": ["000005", "000009"], "val": ["000007", "000012", "000016"], "trainval": list(VOC_FIXTURE)},
    )
    ds = load_dataset("voc2012", root=year_dir.parent)
    assert ds.trainval.ids == ["000005", "000009"]
    assert ds.test.ids == ["000007", "000012", "000016"]
    assert ds.name == "voc2012"


def test_voc_root_from_env(voc2007, tmp_path, monkeypatch):
    data = tmp_path / "datahome"
    data.mkdir()
    (data / "voc2007").symlink_to(voc2007.parent, target_is_directory=True)
    monkeypatch.setenv("MLRKIT_DATA", str(data))
    assert len(load_dataset("voc2007").trainval) == 3


def test_voc_missing_root_says_where_to_get_the_data():
    with pytest.raises(DataError) as e:
        load_dataset("voc2007")
    msg = str(e.value)
    assert "no --root given" in msg and "http://host.robots.ox.ac.uk/pascal/VOC/voc2007/" in msg
    assert "VOCtest_06-Nov-2007.tar" in msg and "VOCdevkit" in msg and "\n" not in msg


def test_voc_malformed_xml_names_file_and_line(voc2007):
    bad = voc2007 / "Annotations" / "000007.xml"
    bad.write_text("<annotation>\n  <object>\n    <name>car</name>\n  </objekt>\n</annotation>\n")
    with pytest.raises(DataError, match=r"000007\.xml:4:\d+: malformed XML"):
        load_dataset("voc2007", root=voc2007)


def test_voc_unknown_class_and_missing_annotation(voc2007):
    (voc2007 / "Annotations" / "000009.xml").write_text(_voc_xml("000009.jpg", [("unicorn", 0)]))
    with pytest.raises(DataError, match=r"000009\.xml.*'unicorn'.*not a VOC class"):
        load_dataset("voc2007", root=voc2007)
    (voc2007 / "Annotations" / "000009.xml").unlink()
    with pytest.raises(DataError, match=r"trainval\.txt: image '000009' has no annotation file"):
        load_dataset("voc2007", root=voc2007)


def test_voc_duplicate_id_and_missing_test_set(voc2007):
    _write(voc2007 / "ImageSets" / "Main" / "trainval.txt", "000005\n000007\n000005\n")
    with pytest.raises(DataError, match=r"trainval\.txt:3: image '000005' is listed twice \(first on line 1\)"):
        load_dataset("voc2007", root=voc2007)
    _write(voc2007 / "ImageSets" / "Main" / "trainval.txt", "000005\n")
    (voc2007 / "ImageSets" / "Main" / "test.txt").unlink()
    with pytest.raises(DataError, match="VOCtest_06-Nov-2007.tar"):
        load_dataset("voc2007", root=voc2007)


# --------------------------------------------------------------------------- COCO

COCO_CATS = [  # not in id order: columns are ordered by id
    {"supercategory": "vehicle", "id": 3, "name": "car"},
    {"supercategory": "person", "id": 1, "name": "person"},
    {"supercategory": "vehicle", "id": 2, "name": "bicycle"},
]


def _coco_json(split: str, images: dict[int, list[int]]) -> dict:
    """An instances file: image id -> category ids of its annotations (empty: none)."""
    imgs, anns = [], []
    for iid, cats in images.items():
        imgs.append({"license": 1, "file_name": f"COCO_{split}_{iid:012d}.jpg", "height": 8, "width": 8, "id": iid})
        for cid in cats:
            anns.append(
                {
                    "segmentation": [[1, 1, 7, 1, 7, 7]],
                    "area": 18.0,
                    "iscrowd": 0,
                    "image_id": iid,
                    "bbox": [1, 1, 6, 6],
                    "category_id": cid,
                    "id": 1000 + len(anns),
                }
            )
    return {"info": {"description": "fixture"}, "images": imgs, "annotations": anns, "categories": COCO_CATS}


@pytest.fixture
def coco(tmp_path) -> Path:
    root = tmp_path / "coco"
    content = {
        "train2014": {9: [1, 3, 1], 100: [2], 10: [3], 77: []},  # 77 has no annotation
        "val2014": {42: [1, 2]},
    }
    for split, images in content.items():
        _write(root / "annotations" / f"instances_{split}.json", json.dumps(_coco_json(split, images), indent=1))
        for k, iid in enumerate(images):
            _image(root / split / f"COCO_{split}_{iid:012d}.jpg", k)
    return root


def test_coco_targets_order_and_unannotated(coco):
    ds = load_dataset("coco2014", root=coco)
    assert ds.class_names == ["person", "bicycle", "car"]  # ordered by category id
    assert ds.trainval.ids == ["10", "100", "9"]  # image ids sorted as strings (Cole); 77 dropped
    np.testing.assert_array_equal(ds.trainval.targets, [[0, 0, 1], [0, 1, 0], [1, 0, 1]])
    np.testing.assert_array_equal(ds.test.targets, [[1, 1, 0]])
    assert ds.trainval.images.paths[2] == coco / "train2014" / "COCO_train2014_000000000009.jpg"
    kept = load_dataset("coco2014", root=coco, keep_unannotated="true")  # as a command line gives it
    assert kept.trainval.ids == ["10", "100", "77", "9"]
    np.testing.assert_array_equal(kept.trainval.targets[2], [0, 0, 0])


def test_coco_malformed_json_names_file_line_column(coco):
    path = coco / "annotations" / "instances_val2014.json"
    path.write_text('{"images": [\n  {"id": 1,\n   "file_name": "a.jpg",,}\n]}\n')
    with pytest.raises(DataError, match=r"instances_val2014\.json:3:\d+: malformed JSON"):
        load_dataset("coco2014", root=coco)


def test_coco_unknown_category_and_missing_images_dir(coco):
    path = coco / "annotations" / "instances_val2014.json"
    data = _coco_json("val2014", {42: [1, 5]})
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"instances_val2014\.json: annotations\[1\] \(id 1001\) has category_id 5"):
        load_dataset("coco2014", root=coco)
    data["images"].append(dict(data["images"][0]))
    data["annotations"] = []
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match="image id 42 appears twice"):
        load_dataset("coco2014", root=coco)
    (coco / "train2014").rename(coco / "train")
    with pytest.raises(DataError, match="train2014/ not found"):
        load_dataset("coco2014", root=coco)


# --------------------------------------------------------------------------- NUS-WIDE

NUS_IMAGES = {
    "Train": [("actor", "0001_2124494179.jpg"), ("airport", "0002_61234.jpg"), ("beach", "0003_777.jpg")],
    "Test": [("zoo", "0004_1.jpg"), ("actor", "0005_2.jpg")],
}
NUS_CONCEPTS = ["airport", "animal", "beach"]
NUS_LABELS = {
    "Train": {"airport": [0, 1, 0], "animal": [1, 0, 0], "beach": [0, 1, 0]},
    "Test": {"airport": [0, 0], "animal": [1, 0], "beach": [1, 0]},
}


@pytest.fixture
def nus_official(tmp_path) -> Path:
    root = tmp_path / "nuswide"
    _write(root / "Concepts81.txt", "".join(f"{c}\r\n" for c in NUS_CONCEPTS))  # the real file has CRLF
    for part, images in NUS_IMAGES.items():
        _write(root / "ImageList" / f"{part}Imagelist.txt", "".join(f"{d}\\{f}\r\n" for d, f in images))
        for c in NUS_CONCEPTS:
            _write(root / "TrainTestLabels" / f"Labels_{c}_{part}.txt", "".join(f"{v} \n" for v in NUS_LABELS[part][c]))
        for k, (d, f) in enumerate(images):
            _image(root / "Flickr" / d / f, k)
    return root


def test_nuswide_official_lists(nus_official):
    ds = load_dataset("nuswide", root=nus_official)
    assert ds.extras["layout"] == "official" and ds.class_names == NUS_CONCEPTS
    assert ds.trainval.ids == ["actor/0001_2124494179.jpg", "airport/0002_61234.jpg", "beach/0003_777.jpg"]
    assert ds.trainval.images.paths[0] == nus_official / "Flickr" / "actor" / "0001_2124494179.jpg"
    np.testing.assert_array_equal(ds.trainval.targets, [[0, 1, 0], [1, 0, 1], [0, 0, 0]])
    np.testing.assert_array_equal(ds.test.targets, [[0, 1, 1], [0, 0, 0]])
    assert ds.trainval.images.load(2).size == (8, 8)
    dropped = load_dataset("nuswide", root=nus_official, drop_unlabeled=True)
    assert dropped.trainval.ids == ["actor/0001_2124494179.jpg", "airport/0002_61234.jpg"]
    assert dropped.test.ids == ["zoo/0004_1.jpg"]


def test_nuswide_official_inconsistent_counts_and_values(nus_official):
    bad = _write(nus_official / "TrainTestLabels" / "Labels_animal_Test.txt", "1\n0\n1\n")
    with pytest.raises(DataError, match=r"Labels_animal_Test\.txt: has 3 values but the image list has 2 lines"):
        load_dataset("nuswide", root=nus_official)
    bad.write_text("1\n2\n")
    with pytest.raises(DataError, match=r"Labels_animal_Test\.txt:2: label must be 0 or 1, got '2'"):
        load_dataset("nuswide", root=nus_official)
    bad.write_text("1\n0\n")
    _write(nus_official / "ImageList" / "TestImagelist.txt", "zoo\\0004_1.jpg\nzoo\\0004_1.jpg\n")
    with pytest.raises(DataError, match=r"TestImagelist\.txt: image 'zoo/0004_1.jpg' appears twice"):
        load_dataset("nuswide", root=nus_official)


def test_nuswide_cole_formatted(tmp_path):
    root = tmp_path / "nus"
    names = list(NUSWIDE_CONCEPTS)
    assert len(names) == 81 and names[70] == "toy"
    train_lab = np.zeros((3, 81), dtype=np.float64)  # Cole et al. save float matrices
    train_lab[0, [0, 80]] = 1
    train_lab[2, 42] = 1
    test_lab = np.zeros((2, 81))
    test_lab[1, 5] = 1
    root.mkdir()
    np.save(root / "formatted_train_images.npy", np.array(["actor/0001_1.jpg", "Flickr/beach/0002_2.jpg", "cat/3.jpg"]))
    np.save(root / "formatted_train_labels.npy", train_lab)
    np.save(root / "formatted_val_images.npy", np.array(["dog/4.jpg", "sky\\5.jpg"]))
    np.save(root / "formatted_val_labels.npy", test_lab)
    for k, p in enumerate(["actor/0001_1.jpg", "beach/0002_2.jpg", "cat/3.jpg", "dog/4.jpg", "sky/5.jpg"]):
        _image(root / "Flickr" / p, k)
    ds = load_dataset("nuswide", root=root)
    assert ds.extras["layout"] == "cole" and ds.class_names == names
    assert ds.trainval.ids == ["actor/0001_1.jpg", "beach/0002_2.jpg", "cat/3.jpg"]
    assert ds.test.ids == ["dog/4.jpg", "sky/5.jpg"]
    np.testing.assert_array_equal(ds.trainval.targets, train_lab.astype(np.uint8))
    np.testing.assert_array_equal(ds.test.targets, test_lab.astype(np.uint8))
    assert ds.test.images.load(1).size == (8, 8)
    np.save(root / "formatted_val_labels.npy", np.zeros((3, 81)))
    with pytest.raises(DataError, match=r"formatted_val_labels\.npy: has 3 rows but formatted_val_images\.npy has 2"):
        load_dataset("nuswide", root=root)


def test_nuswide_nothing_found(tmp_path):
    with pytest.raises(DataError, match="Concepts81.txt.*NUS-WIDE.html"):
        load_dataset("nuswide", root=tmp_path)


# --------------------------------------------------------------------------- CUB

CUB_ATTRS = ["has_bill_shape::curved_(up_or_down)", "has_bill_shape::dagger", "has_wing_color::blue"]
CUB_IMAGES = [
    (1, "001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg", 0),
    (2, "001.Black_footed_Albatross/Black_Footed_Albatross_0009_34.jpg", 1),
    (3, "002.Laysan_Albatross/Laysan_Albatross_0002_1027.jpg", 0),
    (4, "002.Laysan_Albatross/Laysan_Albatross_0003_1033.jpg", 1),
]
# (image, attribute) -> (is_present, certainty)
CUB_LABELS = {
    (1, 1): (1, 4),
    (1, 2): (0, 3),
    (1, 3): (0, 1),
    (2, 1): (0, 4),
    (2, 2): (1, 2),
    (2, 3): (1, 3),
    (3, 1): (0, 1),
    (3, 2): (0, 4),
    (3, 3): (1, 4),
    (4, 1): (1, 1),
    (4, 2): (1, 4),
    (4, 3): (0, 2),
}


def _cub_label_lines() -> str:
    lines = []
    for (i, a), (p, c) in CUB_LABELS.items():
        extra = " 0" if (i, a) == (2, 2) else ""  # the real file has some lines with an extra field
        lines.append(f"{i} {a} {p} {c}{extra} {2.5 * a:.3f}")
    return "\n".join(lines) + "\n"


@pytest.fixture
def cub(tmp_path) -> Path:
    top = tmp_path / "cub"
    _write(top / "attributes.txt", "".join(f"{j} {n}\n" for j, n in enumerate(CUB_ATTRS, start=1)))
    d = top / "CUB_200_2011"
    _write(d / "images.txt", "".join(f"{i} {p}\n" for i, p, _ in CUB_IMAGES))
    _write(d / "train_test_split.txt", "".join(f"{i} {t}\n" for i, _, t in CUB_IMAGES))
    _write(d / "attributes" / "image_attribute_labels.txt", _cub_label_lines())
    _write(d / "attributes" / "certainties.txt", "1 not visible\n2 guessing\n3 probably\n4 definitely\n")
    for k, (_, p, _) in enumerate(CUB_IMAGES):
        _image(d / "images" / p, k)
    return top


def test_cub_attributes_split_and_certainty(cub):
    ds = load_dataset("cub", root=cub)
    assert ds.class_names == CUB_ATTRS
    assert ds.trainval.ids == [CUB_IMAGES[1][1], CUB_IMAGES[3][1]]  # is_training_image == 1
    assert ds.test.ids == [CUB_IMAGES[0][1], CUB_IMAGES[2][1]]
    np.testing.assert_array_equal(ds.trainval.targets, [[0, 1, 1], [1, 1, 0]])  # certainty ignored (Cole)
    np.testing.assert_array_equal(ds.test.targets, [[1, 0, 0], [0, 0, 1]])
    assert ds.trainval.known is None
    assert ds.test.images.paths[0] == cub / "CUB_200_2011" / "images" / CUB_IMAGES[0][1]
    strict = load_dataset("cub", root=cub / "CUB_200_2011", min_certainty=2)  # root = inner dir works too
    np.testing.assert_array_equal(strict.trainval.known, [[True, True, True], [False, True, True]])
    np.testing.assert_array_equal(strict.test.known, [[True, True, False], [False, True, True]])
    np.testing.assert_array_equal(strict.trainval.targets, ds.trainval.targets)
    assert load_dataset("cub", root=cub, min_certainty="2").trainval.known.sum() == 5
    with pytest.raises(DataError, match="min_certainty must be 1..4"):
        load_dataset("cub", root=cub, min_certainty=7)
    with pytest.raises(MlrkitError, match="option min_certainty must be an integer"):
        load_dataset("cub", root=cub, min_certainty="high")


def test_cub_attribute_names_inside_attributes_dir(cub):
    (cub / "attributes.txt").rename(cub / "CUB_200_2011" / "attributes" / "attributes.txt")
    assert load_dataset("cub", root=cub).class_names == CUB_ATTRS


def test_cub_malformed_labels(cub):
    path = cub / "CUB_200_2011" / "attributes" / "image_attribute_labels.txt"
    lines = _cub_label_lines().splitlines()
    path.write_text("\n".join(lines[:4] + ["2 1 7 4 1.0"] + lines[5:]) + "\n")
    with pytest.raises(DataError, match=r"image_attribute_labels\.txt:5: is_present must be 0 or 1"):
        load_dataset("cub", root=cub)
    path.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(DataError, match=r"image_attribute_labels\.txt: no label for image 4 .* attribute 3"):
        load_dataset("cub", root=cub)
    path.write_text("\n".join(lines + [lines[0]]) + "\n")
    with pytest.raises(DataError, match=r"image_attribute_labels\.txt:13: image 1 attribute 1 is labelled again"):
        load_dataset("cub", root=cub)
    path.write_text("\n".join(lines[:3] + ["2 x 0 4 1.0"] + lines[4:]) + "\n")
    with pytest.raises(DataError, match=r"image_attribute_labels\.txt:4: non-integer field"):
        load_dataset("cub", root=cub)


def test_cub_duplicate_image(cub):
    images = cub / "CUB_200_2011" / "images.txt"
    images.write_text(images.read_text() + f"5 {CUB_IMAGES[0][1]}\n")
    with pytest.raises(DataError, match=r"images\.txt:5: image .* appears twice \(first on line 1\)"):
        load_dataset("cub", root=cub)


# --------------------------------------------------------------------------- Open Images

OI_HEADER = "ImageID,Source,LabelName,Confidence\n"
OI_CLASSES = {
    "/m/01g317": "Person",
    "/m/0k4j": "Car",
    "/m/01yrx": "Cat",
    "/m/0bt9lr": "Dog",
    "/m/03p3bw": "Bat",
    "/m/01h44": "Bat",
}
OI_TRAIN = [
    ("000a1249af2bc5f0", "verification", "/m/01g317", 1),
    ("000a1249af2bc5f0", "verification", "/m/0k4j", 0),  # explicit negative
    ("000a1249af2bc5f0", "crowdsource-verification", "/m/03p3bw", 1),
    ("0b6f22bf3b586889", "verification", "/m/0k4j", 1),
    ("0b6f22bf3b586889", "verification", "/m/01yrx", 0),  # Cat: never positive in train
    ("0b6f22bf3b586889", "verification", "/m/01h44", 1),
    ("0fe3f9bf9e2e8b9c", "verification", "/m/01yrx", 0),
]
OI_TEST = [
    ("1a2b3c4d5e6f7a8b", "verification", "/m/0k4j", 1),
    ("1a2b3c4d5e6f7a8b", "verification", "/m/01g317", 0),
    ("2b3c4d5e6f7a8b9c", "verification", "/m/01yrx", 1),  # not a selected class: row skipped
    ("2b3c4d5e6f7a8b9c", "verification", "/m/01g317", 1),
]


def _oi_csv(rows) -> str:
    return OI_HEADER + "".join(f"{i},{s},{m},{c}\n" for i, s, m, c in rows)


@pytest.fixture
def openimages(tmp_path) -> Path:
    root = tmp_path / "oi"
    _write(
        root / "oidv7-class-descriptions.csv",
        "LabelName,DisplayName\n" + "".join(f'{m},"{n}"\n' for m, n in OI_CLASSES.items()),
    )
    _write(root / "oidv7-train-annotations-human-imagelabels.csv", _oi_csv(OI_TRAIN))
    _write(root / "oidv7-test-annotations-human-imagelabels.csv", _oi_csv(OI_TEST))
    for k, i in enumerate(dict.fromkeys(r[0] for r in OI_TRAIN)):
        _image(root / "train" / f"{i}.jpg", k)
    for k, i in enumerate(dict.fromkeys(r[0] for r in OI_TEST)):
        _image(root / "test" / f"{i}.jpg", k)
    return root


def test_openimages_verified_labels_and_known_mask(openimages):
    ds = load_dataset("openimages", root=openimages)
    # classes with a verified positive in train, first appearance; the shared name "Bat" gets its MID
    assert ds.class_names == ["Person", "Car", "Bat (/m/03p3bw)", "Bat (/m/01h44)"]
    assert ds.extras["label_names"] == ["/m/01g317", "/m/0k4j", "/m/03p3bw", "/m/01h44"]
    assert ds.trainval.ids == ["000a1249af2bc5f0", "0b6f22bf3b586889"]  # the third has only a Cat row
    np.testing.assert_array_equal(ds.trainval.targets, [[1, 0, 1, 0], [0, 1, 0, 1]])
    np.testing.assert_array_equal(ds.trainval.known, [[1, 1, 1, 0], [0, 1, 0, 1]])  # Car of image 1: known 0
    assert ds.test.ids == ["1a2b3c4d5e6f7a8b", "2b3c4d5e6f7a8b9c"]
    np.testing.assert_array_equal(ds.test.targets, [[0, 1, 0, 0], [1, 0, 0, 0]])
    np.testing.assert_array_equal(ds.test.known, [[1, 1, 0, 0], [1, 0, 0, 0]])
    assert ds.trainval.images.paths[1] == openimages / "train" / "0b6f22bf3b586889.jpg"
    assert ds.test.images.load(0).size == (8, 8)


def test_openimages_v6_headerless_descriptions_trainable_list_and_validation(openimages):
    for f in ("oidv7-class-descriptions.csv", "oidv7-test-annotations-human-imagelabels.csv"):
        (openimages / f).unlink()
    _write(openimages / "oidv6-class-descriptions.csv", "".join(f"{m},{n}\n" for m, n in OI_CLASSES.items()))
    _write(openimages / "oidv6-classes-trainable.txt", "/m/0k4j\n/m/01yrx\n/m/01g317\n")
    _write(openimages / "validation-annotations-human-imagelabels.csv", _oi_csv(OI_TEST))
    (openimages / "test").rename(openimages / "validation")
    ds = load_dataset("openimages", root=openimages, test_split="validation")
    assert ds.class_names == ["Car", "Cat", "Person"]
    assert ds.trainval.ids == ["000a1249af2bc5f0", "0b6f22bf3b586889", "0fe3f9bf9e2e8b9c"]
    np.testing.assert_array_equal(ds.trainval.targets, [[0, 0, 1], [1, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(ds.trainval.known, [[1, 0, 1], [1, 1, 0], [0, 1, 0]])
    np.testing.assert_array_equal(ds.test.targets, [[1, 0, 0], [0, 1, 1]])
    np.testing.assert_array_equal(ds.test.known, [[1, 0, 1], [0, 1, 1]])
    assert ds.test.images.paths[0] == openimages / "validation" / "1a2b3c4d5e6f7a8b.jpg"


def test_openimages_bad_rows(openimages):
    train = openimages / "oidv7-train-annotations-human-imagelabels.csv"
    train.write_text(_oi_csv(OI_TRAIN[:2]) + "0b6f22bf3b586889,verification,/m/0k4j,0.7\n")
    with pytest.raises(DataError, match=r"human-imagelabels\.csv:4: Confidence must be 0 or 1, got '0.7'"):
        load_dataset("openimages", root=openimages)
    train.write_text(_oi_csv(OI_TRAIN) + "0c0c0c0c0c0c0c0c,verification,/m/0zzzz,1\n")
    with pytest.raises(
        DataError, match=r"train-annotations-human-imagelabels\.csv:9: LabelName '/m/0zzzz' has no entry"
    ):
        load_dataset("openimages", root=openimages)
    train.write_text("ImageID,Source,Label,Confidence\n")
    with pytest.raises(DataError, match=r"imagelabels\.csv:1: header .* lacks column\(s\) \['LabelName'\]"):
        load_dataset("openimages", root=openimages)
    train.write_text(_oi_csv(OI_TRAIN + [("1a2b3c4d5e6f7a8b", "verification", "/m/0k4j", 1)]))
    with pytest.raises(DataError, match=r"test-annotations-human-imagelabels\.csv:2: image '1a2b3c4d5e6f7a8b' is also"):
        load_dataset("openimages", root=openimages)


# --------------------------------------------------------------------------- manifest


@pytest.fixture
def manifest_dir(tmp_path) -> Path:
    d = tmp_path / "mine"
    for k, name in enumerate(["a.jpg", "b.png", "sub/c.jpg", "d.jpg"]):
        _image(d / "imgs" / name, k, "PNG" if name.endswith(".png") else "JPEG")
    return d


def test_manifest_csv(manifest_dir):
    path = _write(
        manifest_dir / "data.csv",
        "image,labels,split,note\nimgs/a.jpg,cat|dog,train,x\nimgs/b.png, dog ,train,\n"
        'imgs/sub/c.jpg,,test,"no label, fine"\nimgs/d.jpg,bird|cat,test,\n',
    )
    ds = load_dataset(f"manifest:{path}")
    assert ds.class_names == ["bird", "cat", "dog"]
    assert ds.trainval.ids == ["imgs/a.jpg", "imgs/b.png"] and ds.test.ids == ["imgs/sub/c.jpg", "imgs/d.jpg"]
    np.testing.assert_array_equal(ds.trainval.targets, [[0, 1, 1], [0, 0, 1]])
    np.testing.assert_array_equal(ds.test.targets, [[0, 0, 0], [1, 1, 0]])
    assert ds.trainval.images.paths[1] == manifest_dir / "imgs" / "b.png"
    assert ds.trainval.images.load(1).size == (8, 8)


def test_manifest_jsonl_with_class_list(manifest_dir, tmp_path):
    lines = [
        {"image": "imgs/a.jpg", "labels": ["dog"], "split": "train"},
        {"image": str(manifest_dir / "imgs" / "b.png"), "labels": ["cat", "dog"], "split": "train"},
        {"image": "imgs/d.jpg", "labels": ["cat"], "split": "test"},
    ]
    path = _write(manifest_dir / "data.jsonl", "".join(json.dumps(x) + "\n" for x in lines) + "\n")
    classes = _write(tmp_path / "classes.txt", "dog\ncat\nbird\n")
    with pytest.raises(DataError, match=r"data\.jsonl:2: image path .* is absolute.*outside_root=true"):
        load_dataset(f"manifest:{path}", classes=str(classes))
    ds = load_dataset(f"manifest:{path}", classes=str(classes), outside_root=True)  # absolute paths asked for
    assert ds.class_names == ["dog", "cat", "bird"]
    np.testing.assert_array_equal(ds.trainval.targets, [[1, 0, 0], [1, 1, 0]])
    np.testing.assert_array_equal(ds.test.targets, [[0, 1, 0]])
    assert ds.trainval.images.paths[1] == manifest_dir / "imgs" / "b.png"
    lines.append({"image": "imgs/sub/c.jpg", "labels": ["fish"], "split": "test"})
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    with pytest.raises(DataError, match=r"data\.jsonl:4: label 'fish' is not in the class list .*classes\.txt"):
        load_dataset(f"manifest:{path}", classes=str(classes), outside_root=True)


def test_manifest_errors(manifest_dir):
    def fails(name: str, text: str, pattern: str) -> None:
        path = _write(manifest_dir / name, text)
        with pytest.raises(DataError, match=pattern):
            load_dataset(f"manifest:{path}")

    fails("empty.csv", "", r"empty\.csv: empty manifest")
    fails("header_only.csv", "image,labels,split\n", r"header_only\.csv: the manifest has no images")
    fails("nocol.csv", "image,labels\nimgs/a.jpg,cat\n", r"nocol\.csv:1: header .* lacks column\(s\) \['split'\]")
    fails("notest.csv", "image,labels,split\nimgs/a.jpg,cat,train\n", r"notest\.csv: no image has split 'test'")
    fails(
        "badsplit.csv",
        "image,labels,split\nimgs/a.jpg,cat,train\nimgs/b.png,cat,val\n",
        r"badsplit\.csv:3: split must be 'train' or 'test', got 'val'",
    )
    fails(
        "twice.csv",
        "image,labels,split\nimgs/a.jpg,cat,train\n./imgs/a.jpg,dog,test\n",
        r"twice\.csv:3: image './imgs/a.jpg' appears twice \(first on line 2\)",
    )
    fails("emptylabel.csv", "image,labels,split\nimgs/a.jpg,cat||dog,train\n", r"emptylabel\.csv:2: empty label")
    fails(
        "bad.jsonl",
        '{"image": "imgs/a.jpg", "labels": ["cat"], "split": "train"}\n{"image": "x", "labels": [}\n',
        r"bad\.jsonl:2:\d+: malformed JSON",
    )
    fails(
        "nolabels.jsonl",
        '{"image": "imgs/a.jpg", "split": "train"}\n',
        r"nolabels\.jsonl:1: missing key\(s\) \['labels \(or positives/negatives\)'\]",
    )
    with pytest.raises(DataError, match="manifest not found"):
        load_dataset(f"manifest:{manifest_dir / 'nope.csv'}")


def test_validation_split_is_carved_from_trainval(voc2007):
    ds = load_dataset("voc2007", root=voc2007)
    train, val = split_train_val(ds.trainval, 0.34, seed=1200)
    assert len(train) == 2 and len(val) == 1
    assert sorted(train.ids + val.ids) == ds.trainval.ids
