"""Datasets whose own labels are partial, read from small fixtures written in their real formats."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from mlrkit.data import load_dataset
from mlrkit.errors import DataError
from mlrkit.labels import make_observed


def _observed(split) -> list[list[int]]:
    return make_observed(split.targets, "observed", 0, known=split.known).tolist()


# ----------------------------------------------------------------------------- LVIS v1


def _lvis(images, anns, cats=((1, "aerosol_can"), (3, "apple"), (7, "zebra"))):
    return {"images": images, "annotations": anns,
            "categories": [{"id": i, "name": n, "synonyms": [n], "frequency": "f"} for i, n in cats],
            "info": {"version": "1.0"}, "licenses": []}


@pytest.fixture()
def lvis_root(tmp_path):
    train_imgs = [
        {"id": 9, "coco_url": "http://images.cocodataset.org/train2017/000000000009.jpg", "height": 8, "width": 8,
         "neg_category_ids": [7], "not_exhaustive_category_ids": [3]},
        {"id": 25, "coco_url": "http://images.cocodataset.org/train2017/000000000025.jpg", "height": 8, "width": 8,
         "neg_category_ids": [], "not_exhaustive_category_ids": []},
        {"id": 30, "coco_url": "http://images.cocodataset.org/train2017/000000000030.jpg", "height": 8, "width": 8,
         "neg_category_ids": [], "not_exhaustive_category_ids": []},  # nothing known: dropped
    ]
    train_anns = [{"id": 1, "image_id": 9, "category_id": 3, "bbox": [0, 0, 2, 2], "area": 4},
                  {"id": 2, "image_id": 9, "category_id": 1, "bbox": [0, 0, 2, 2], "area": 4},
                  {"id": 3, "image_id": 25, "category_id": 7, "bbox": [0, 0, 2, 2], "area": 4}]
    val_imgs = [{"id": 139, "coco_url": "http://images.cocodataset.org/val2017/000000000139.jpg",
                 "neg_category_ids": [1, 3], "not_exhaustive_category_ids": []}]
    val_anns = [{"id": 9, "image_id": 139, "category_id": 7, "bbox": [0, 0, 1, 1], "area": 1}]
    (tmp_path / "lvis_v1_train.json").write_text(json.dumps(_lvis(train_imgs, train_anns)))
    (tmp_path / "lvis_v1_val.json").write_text(json.dumps(_lvis(val_imgs, val_anns)))
    (tmp_path / "train2017").mkdir()
    Image.new("RGB", (8, 8), (10, 200, 30)).save(tmp_path / "train2017" / "000000000009.jpg")
    return tmp_path


def test_lvis_image_level_three_states(lvis_root):
    ds = load_dataset("lvis", root=lvis_root)
    assert ds.class_names == ["aerosol_can", "apple", "zebra"]
    assert ds.trainval.ids == ["9", "25"]
    # image 9: aerosol_can and apple annotated (+1), zebra verified absent (-1)
    # image 25: zebra annotated, the rest unlisted: unknown
    assert _observed(ds.trainval) == [[1, 1, -1], [0, 0, 1]]
    assert _observed(ds.test) == [[-1, -1, 1]]
    assert ds.trainval.images.load(0).size == (8, 8)
    assert str(ds.test.images.paths[0]).endswith("val2017/000000000139.jpg")
    assert len(load_dataset("lvis", root=lvis_root, keep_unlabelled=True).trainval) == 3


def test_lvis_errors(lvis_root):
    data = json.loads((lvis_root / "lvis_v1_train.json").read_text())
    data["images"][0]["neg_category_ids"] = [3]
    (lvis_root / "lvis_v1_train.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"lvis_v1_train\.json: image 9 has instances of category 3 \('apple'\) "
                                        r"but lists it in neg_category_ids"):
        load_dataset("lvis", root=lvis_root)
    with pytest.raises(DataError, match="no --root given.*lvisdataset.org"):
        load_dataset("lvis")


# ----------------------------------------------------------------------------- CheXpert

HEADER = ("Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,Lung Opacity,"
          "Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,Pleural Effusion,Pleural Other,"
          "Fracture,Support Devices")


@pytest.fixture()
def chexpert_root(tmp_path):
    root = tmp_path / "CheXpert-v1.0-small"
    root.mkdir()
    # 14 observation cells per row: No Finding ... Support Devices
    train = [
        "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg,Female,68,Frontal,AP,"
        "1.0,,,,,,,,,0.0,,,,1.0",
        "CheXpert-v1.0-small/train/patient00002/study2/view1_frontal.jpg,Female,87,Frontal,AP,"
        ",,-1.0,1.0,,-1.0,-1.0,-1.0,,,-1.0,,1.0,",
        "CheXpert-v1.0-small/train/patient00002/study1/view2_lateral.jpg,Female,83,Lateral,,"
        ",,,1.0,,,,,,,,,1.0,",
    ]
    valid = ["CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg,Male,73,Frontal,AP,"
             "0.0,1.0,1.0,1.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0"]
    (root / "train.csv").write_text("\n".join([HEADER, *train]) + "\n")
    (root / "valid.csv").write_text("\n".join([HEADER, *valid]) + "\n")
    img = root / "train" / "patient00001" / "study1"
    img.mkdir(parents=True)
    Image.new("L", (8, 8), 128).save(img / "view1_frontal.jpg")
    return root


@pytest.mark.parametrize("uncertain, fill", [("unknown", 0), ("positive", 1), ("negative", -1)])
def test_chexpert_uncertainty_policies(chexpert_root, uncertain, fill):
    ds = load_dataset("chexpert", root=chexpert_root, uncertain=uncertain)
    assert len(ds.class_names) == 14 and ds.class_names[0] == "No Finding"
    obs = np.array(_observed(ds.trainval))
    assert obs[0].tolist() == [1] + [0] * 8 + [-1, 0, 0, 0, 1]  # blanks unknown, 0.0 negative
    row1 = [0, 0, fill, 1, 0, fill, fill, fill, 0, 0, fill, 0, 1, 0]
    assert obs[1].tolist() == row1
    assert ds.test.known is None  # valid.csv is complete
    assert ds.trainval.images.load(0).mode == "RGB"


def test_chexpert_frontal_only_and_errors(chexpert_root):
    assert len(load_dataset("chexpert", root=chexpert_root, frontal_only=True).trainval) == 2
    with pytest.raises(DataError, match="uncertain must be one of"):
        load_dataset("chexpert", root=chexpert_root, uncertain="maybe")
    text = (chexpert_root / "train.csv").read_text().replace(",1.0,,,,,,,,,0.0", ",2.0,,,,,,,,,0.0", 1)
    (chexpert_root / "train.csv").write_text(text)
    with pytest.raises(DataError, match=r"train\.csv:2: column 'No Finding' has '2\.0'"):
        load_dataset("chexpert", root=chexpert_root)


# ----------------------------------------------------------------------------- VAW


@pytest.fixture()
def vaw_root(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "attribute_index.json").write_text(json.dumps({"red": 0, "wooden": 1, "striped": 2}))

    def inst(image_id, pos, neg):
        return {"image_id": image_id, "instance_id": f"{image_id}-{len(pos)}", "instance_bbox": [0, 0, 4, 4],
                "instance_polygon": None, "object_name": "chair", "positive_attributes": pos,
                "negative_attributes": neg}

    (data / "train_part1.json").write_text(json.dumps([inst("2373241", ["red"], ["striped"]),
                                                        inst("2373241", [], ["red", "wooden"])]))
    (data / "train_part2.json").write_text(json.dumps([inst("107", ["wooden"], [])]))
    (data / "val.json").write_text(json.dumps([inst("55", [], ["red"])]))
    (data / "test.json").write_text(json.dumps([inst("2400000", ["striped"], ["red"])]))
    (tmp_path / "VG_100K_2").mkdir()
    Image.new("RGB", (6, 6), 0).save(tmp_path / "VG_100K_2" / "107.jpg")
    return tmp_path


def test_vaw_pools_instances_per_image(vaw_root):
    ds = load_dataset("vaw", root=vaw_root)
    assert ds.class_names == ["red", "wooden", "striped"]
    assert ds.trainval.ids == ["107", "2373241"]
    # image 2373241: one chair red (+), another not red: positive wins; wooden only negative; striped negative
    assert _observed(ds.trainval) == [[0, 1, 0], [1, -1, -1]]
    assert _observed(ds.test) == [[-1, 0, 1]]
    assert ds.trainval.images.load(0).size == (6, 6)  # found in VG_100K_2
    assert len(load_dataset("vaw", root=vaw_root, include_val=True).trainval) == 3


def test_vaw_unknown_attribute_is_an_error(vaw_root):
    (vaw_root / "data" / "test.json").write_text(json.dumps([{"image_id": 1, "positive_attributes": ["blue"],
                                                              "negative_attributes": []}]))
    with pytest.raises(DataError, match=r"test\.json: instance 0 of image 1: attribute 'blue' is not in"):
        load_dataset("vaw", root=vaw_root)
