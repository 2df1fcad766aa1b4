import hashlib
import re

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import COCO128, COCO128_VOC, need_shared
from spp_det.data import (VOC_CLASSES, CocoDetection, build_dataset, generate_shapes, list_images,
                          load_voc, read_image)
from spp_det.errors import SppDetError

OBJ_RE = re.compile(r"<object>.*?<name>(.*?)</name>.*?<difficult>(\d)</difficult>.*?"
                    r"<xmin>([\d.]+)</xmin>\s*<ymin>([\d.]+)</ymin>\s*<xmax>([\d.]+)</xmax>\s*"
                    r"<ymax>([\d.]+)</ymax>", re.S)


def test_voc_parsing_of_real_files_matches_xml_text():
    need_shared(COCO128_VOC)
    ds = load_voc(COCO128_VOC.parent, [("VOC2007", "trainval")])
    assert len(ds) == 128 and ds.classes == VOC_CLASSES
    total = 0
    for t in ds.targets:
        text = (COCO128_VOC / "Annotations" / f"{t.image_id}.xml").read_text()
        objs = OBJ_RE.findall(text)
        assert len(objs) == len(t.boxes)
        for (name, diff, x1, y1, x2, y2), box, label, ign in zip(objs, t.boxes, t.labels, t.ignore):
            assert VOC_CLASSES[label - 1] == name
            assert box.tolist() == [float(x1) - 1, float(y1) - 1, float(x2), float(y2)]
            assert bool(ign) == (diff == "1")
        w = int(re.search(r"<width>(\d+)</width>", text).group(1))
        assert t.width == w
        total += len(objs)
    assert total > 300  # the 20 VOC classes of 929 COCO boxes
    image, target = ds[0]
    assert image.dtype == np.uint8 and image.shape == (target.height, target.width, 3)


def test_voc_class_subset_and_combined_parts(tmp_path):
    need_shared(COCO128_VOC)
    ds = load_voc(COCO128_VOC.parent, [("VOC2007", "trainval")], classes=["person", "dog"])
    assert ds.classes == ["person", "dog"]
    assert all(set(t.labels.tolist()) <= {1, 2} for t in ds.targets)
    persons = sum(int((t.labels == 1).sum()) for t in ds.targets)
    assert persons == 254  # coco128's person boxes (its README)
    with pytest.raises(SppDetError, match="also in"):
        load_voc(COCO128_VOC.parent, [("VOC2007", "trainval"), ("VOC2007", "trainval")])


def test_voc_errors_name_the_file(tmp_path):
    with pytest.raises(SppDetError, match=r"VOC2007/ImageSets/Main/test.txt: split file not found"):
        load_voc(tmp_path, [("VOC2007", "test")])
    base = tmp_path / "V" / "ImageSets" / "Main"
    base.mkdir(parents=True)
    (base / "s.txt").write_text("a\n")
    (tmp_path / "V" / "Annotations").mkdir()
    (tmp_path / "V" / "Annotations" / "a.xml").write_text("<annotation><size>")
    with pytest.raises(SppDetError, match=r"a.xml: cannot parse"):
        load_voc(tmp_path, [("V", "s")])


def test_voc_difficult_flag(tmp_path):
    base = tmp_path / "V"
    (base / "ImageSets" / "Main").mkdir(parents=True)
    (base / "Annotations").mkdir()
    (base / "ImageSets" / "Main" / "s.txt").write_text("x\n")
    (base / "Annotations" / "x.xml").write_text(
        "<annotation><size><width>50</width><height>40</height></size>"
        "<object><name>dog</name><difficult>1</difficult><bndbox><xmin>3</xmin><ymin>4</ymin>"
        "<xmax>20</xmax><ymax>30</ymax></bndbox></object>"
        "<object><name>cat</name><difficult>0</difficult><bndbox><xmin>1</xmin><ymin>1</ymin>"
        "<xmax>50</xmax><ymax>40</ymax></bndbox></object></annotation>")
    t = load_voc(tmp_path, [("V", "s")]).targets[0]
    assert t.boxes.tolist() == [[2.0, 3.0, 20.0, 30.0], [0.0, 0.0, 50.0, 40.0]]
    assert t.ignore.tolist() == [True, False]
    assert t.labels.tolist() == [VOC_CLASSES.index("dog") + 1, VOC_CLASSES.index("cat") + 1]


def test_coco128_loads_all_images_and_boxes():
    need_shared(COCO128)
    ds = CocoDetection(COCO128 / "train2017", COCO128 / "annotations" / "instances_train2017.json")
    assert len(ds) == 128
    assert sum(len(t.boxes) for t in ds.targets) == 929
    assert len(ds.classes) == 80 and ds.label_to_cat[1] == 1 and ds.label_to_cat[-1] == 90
    # boxes are [x, y, x + w, y + h] of the json
    ann = ds.coco.loadAnns(ds.coco.getAnnIds(imgIds=ds.targets[0].image_id))[0]
    x, y, w, h = ann["bbox"]
    assert torch.allclose(ds.targets[0].boxes[0], torch.tensor([x, y, x + w, y + h]))
    empty = [t for t in ds.targets if len(t.boxes) == 0]
    assert len(empty) > 0  # images without annotations stay in the set
    person = CocoDetection(COCO128 / "train2017", COCO128 / "annotations" / "instances_train2017.json",
                           classes=["person"])
    assert sum(len(t.boxes) for t in person.targets) == 254 and person.label_to_cat == [0, 1]
    with pytest.raises(SppDetError, match="unknown categories"):
        CocoDetection(COCO128 / "train2017", COCO128 / "annotations" / "instances_train2017.json",
                      classes=["unicorn"])


def test_coco_crowd_is_ignore(tmp_path):
    import json
    (tmp_path / "a.json").write_text(json.dumps({
        "images": [{"id": 7, "file_name": "x.jpg", "width": 20, "height": 10}],
        "categories": [{"id": 3, "name": "car"}],
        "annotations": [{"id": 1, "image_id": 7, "category_id": 3, "bbox": [1, 2, 3, 4], "iscrowd": 1,
                         "area": 12},
                        {"id": 2, "image_id": 7, "category_id": 3, "bbox": [0, 0, 5, 5], "iscrowd": 0,
                         "area": 25}]}))
    ds = CocoDetection(tmp_path, tmp_path / "a.json")
    assert ds.targets[0].ignore.tolist() == [True, False]
    assert ds.targets[0].boxes.tolist() == [[1, 2, 4, 6], [0, 0, 5, 5]]


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_shapes_byte_identical_per_seed(tmp_path):
    a = generate_shapes(tmp_path / "a", 5, 3, seed=1)
    b = generate_shapes(tmp_path / "b", 5, 3, seed=1)
    c = generate_shapes(tmp_path / "c", 5, 3, seed=2)
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)
    ds = load_voc(tmp_path / "a", [("SHAPES", "trainval")], ["ellipse", "rectangle", "triangle"])
    assert len(ds) == 5
    for i in range(len(ds)):
        image, t = ds[i]
        assert 300 <= t.height <= 500 and 300 <= t.width <= 500
        assert len(t.boxes) >= 1
        assert (t.boxes[:, 2:] - t.boxes[:, :2] >= 20).all()
        assert (t.boxes[:, 2] <= t.width).all() and (t.boxes[:, 3] <= t.height).all()


def test_build_dataset_from_config(shapes_root):
    cfg = OmegaConf.load("configs/dataset/shapes.yaml")
    cfg.root = str(shapes_root)
    cfg.generate = {"num_trainval": 8, "num_test": 6, "seed": 0}
    assert len(build_dataset(cfg, "test")) == 6
    with pytest.raises(SppDetError, match="unknown split 'val'"):
        build_dataset(cfg, "val")


def test_folder_and_bad_images(tmp_path):
    (tmp_path / "b.png").write_bytes(b"not an image")
    (tmp_path / "a.txt").write_text("x")
    import cv2
    cv2.imwrite(str(tmp_path / "c.jpg"), np.zeros((5, 7, 3), np.uint8))
    assert list_images(tmp_path) == [(tmp_path / "b.png", "b.png"), (tmp_path / "c.jpg", "c.jpg")]
    assert read_image(tmp_path / "c.jpg").shape == (5, 7, 3)
    with pytest.raises(SppDetError, match=r"b.png: not a readable image"):
        read_image(tmp_path / "b.png")
    with pytest.raises(SppDetError, match="no such file or folder"):
        list_images(tmp_path / "nope")


def test_image_list_file(tmp_path):
    import cv2
    (tmp_path / "sub").mkdir()
    cv2.imwrite(str(tmp_path / "sub" / "x.png"), np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "list.txt").write_text("sub/x.png\n\n")
    assert list_images(tmp_path / "list.txt") == [(tmp_path / "sub" / "x.png", "sub/x.png")]
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(SppDetError, match="image list is empty"):
        list_images(tmp_path / "empty.txt")


def test_shapes_writes_test_list(shapes_root):
    lines = (shapes_root / "test_images.txt").read_text().split()
    assert len(lines) == 6 and all((shapes_root / ln).is_file() for ln in lines)


def _voc_one(tmp_path, objects: str, size=(50, 40)):
    base = tmp_path / "V"
    (base / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    (base / "Annotations").mkdir(exist_ok=True)
    (base / "ImageSets" / "Main" / "s.txt").write_text("x\n")
    (base / "Annotations" / "x.xml").write_text(
        f"<annotation><size><width>{size[0]}</width><height>{size[1]}</height></size>{objects}</annotation>")
    return base / "Annotations" / "x.xml"


def _obj(name, x1, y1, x2, y2):
    return (f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
            f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>")


def test_unknown_class_names_are_errors_and_other_names_are_counted(tmp_path, caplog):
    xml = _voc_one(tmp_path, _obj("dog", 3, 4, 20, 30) + _obj("cat", 1, 1, 9, 9) + _obj("unicorn", 1, 1, 5, 5)
                   + _obj("unicorn", 2, 2, 6, 6))
    with pytest.raises(SppDetError) as err:
        load_voc(tmp_path, [("V", "s")], classes=["persn"], name="mine")
    msg = str(err.value)
    assert msg.startswith("dataset 'mine': unknown class name(s) ['persn'] in dataset.classes; known: [")
    assert "'person'" in msg and "'unicorn'" in msg  # VOC's own names and the names met in the files
    # VOC's own 20: the two 'unicorn' objects are left out, counted by name, reported once
    ds = load_voc(tmp_path, [("V", "s")], name="mine")
    assert ds.skipped == {"outside dataset.classes: unicorn": 2}
    assert len(ds.targets[0].boxes) == 2
    ds.report_skipped("split s")
    assert caplog.text.count("left out") == 1
    assert "dataset 'mine' (split s): object(s) left out on load: 2 outside dataset.classes (unicorn 2)" in caplog.text
    # a class present in VOC's list but absent from these files is no typo
    assert load_voc(tmp_path, [("V", "s")], classes=["dog", "sheep"]).skipped == {
        "outside dataset.classes: cat": 1, "outside dataset.classes: unicorn": 2}
    assert xml.is_file()


def test_shapes_config_rejects_a_misspelt_class(shapes_root):
    cfg = OmegaConf.load("configs/dataset/shapes.yaml")
    cfg.root = str(shapes_root)
    cfg.generate = {"num_trainval": 8, "num_test": 6, "seed": 0}
    cfg.classes = ["elipse"]
    with pytest.raises(SppDetError, match=r"unknown class name\(s\) \['elipse'\].*known: \['ellipse', "
                                          r"'rectangle', 'triangle'\]"):
        build_dataset(cfg, "train")


def test_voc_ground_truth_anomalies(tmp_path):
    xml = _voc_one(tmp_path, _obj("dog", 3, 4, 20, 30) + _obj("cat", 10, 10, 90, 30))  # 90 > width 50
    with pytest.raises(SppDetError) as err:
        load_voc(tmp_path, [("V", "s")])
    assert str(err.value) == f"{xml}: object 1 'cat' xyxy [9.0, 9.0, 90.0, 30.0] lies outside its 50x40 image"
    _voc_one(tmp_path, _obj("dog", 3, 4, 20, 30) + _obj("cat", 10, 10, 51, 41))  # 1 px over: clipped, counted
    ds = load_voc(tmp_path, [("V", "s")])
    assert ds.targets[0].boxes.tolist()[1] == [9.0, 9.0, 50.0, 40.0]
    assert ds.skipped == {"clipped to the image (kept)": 1}
    _voc_one(tmp_path, _obj("dog", 30, 4, 20, 30))
    with pytest.raises(SppDetError, match=r"x.xml: object 0 'dog' has xmax < xmin"):
        load_voc(tmp_path, [("V", "s")])


def _coco_file(tmp_path, annotations, categories=({"id": 3, "name": "car"}, {"id": 5, "name": "bus"})):
    import json
    path = tmp_path / "a.json"
    path.write_text(json.dumps({"images": [{"id": 7, "file_name": "x.jpg", "width": 20, "height": 10}],
                                "categories": list(categories), "annotations": annotations}))
    return path


def _ann(i, **kw):
    a = {"id": i, "image_id": 7, "category_id": 3, "bbox": [1, 2, 3, 4], "iscrowd": 0, "area": 12}
    a.update(kw)
    return a


@pytest.mark.parametrize("ann, message", [
    (_ann(9, image_id=8), "annotation id 9 refers to image id 8, which is not in 'images'"),
    (_ann(9, category_id=4), "annotation id 9 has category id 4, which is not in 'categories'"),
    (_ann(9, bbox=[1, 2, -3, 4]), "annotation id 9 has a negative size: bbox [1, 2, -3, 4]"),
    (_ann(9, bbox=[15, 2, 30, 4]), "annotation id 9 xyxy [15.0, 2.0, 45.0, 6.0] lies outside its 20x10 image"),
    (_ann(9, bbox=[1, 2]), "annotation id 9 has no [x, y, w, h] 'bbox'"),
])
def test_coco_ground_truth_anomalies_are_errors(tmp_path, ann, message):
    path = _coco_file(tmp_path, [_ann(1), ann])
    with pytest.raises(SppDetError) as err:
        CocoDetection(tmp_path, path)
    assert str(err.value) == f"{path}: {message}"


def test_coco_zero_size_and_other_categories_are_counted(tmp_path):
    path = _coco_file(tmp_path, [_ann(1), _ann(2, bbox=[1, 2, 0, 4]), _ann(3, category_id=5),
                                 _ann(4, bbox=[18, 2, 3, 4])])  # 1 px over the right edge: clipped
    ds = CocoDetection(tmp_path, path, classes=["car"])
    assert ds.targets[0].boxes.tolist() == [[1, 2, 4, 6], [18, 2, 20, 6]]
    assert ds.skipped == {"zero-size boxes": 1, "outside dataset.classes: bus": 1, "clipped to the image (kept)": 1}


def test_coco128_config_splits_are_disjoint():
    need_shared(COCO128)
    cfg = OmegaConf.load("configs/dataset/coco128.yaml")
    cfg.root = str(COCO128)
    train, test = build_dataset(cfg, "train"), build_dataset(cfg, "test")
    train_ids, test_ids = {t.image_id for t in train.targets}, {t.image_id for t in test.targets}
    assert (len(train_ids), len(test_ids)) == (96, 32) and not train_ids & test_ids
    assert sorted(train_ids | test_ids) == sorted(CocoDetection(
        COCO128 / "train2017", COCO128 / "annotations" / "instances_train2017.json").coco.getImgIds())
    assert min(test_ids) > max(train_ids)  # the 32 highest ids, as the README's experiments
    # the image-content check that training runs before it starts
    test.check_disjoint(set(train.digests()), "the test split")
    with pytest.raises(SppDetError, match=r"dataset 'coco128': 32 image\(s\) of the test split are also training"):
        test.check_disjoint(set(CocoDetection(COCO128 / "train2017", COCO128 / "annotations" /
                                              "instances_train2017.json").digests()), "the test split")


def test_voc2012_1800_data_set_config_counts():
    """configs/dataset/voc2012_1800.yaml: train 1,440 / test (VOC val) 360 photos, the six
    classes by default with the shared README's object counts; classes=null gives every
    VOC class (aeroplane and train have no object there: never learned, never detected,
    and left out of the mAP, which averages classes with ground truth)."""
    from collections import Counter

    from omegaconf import OmegaConf

    from conftest import ROOT, SHARED, need_shared
    from spp_det.data import build_dataset
    need_shared(SHARED / "voc2012-1800")
    cfg = OmegaConf.load(ROOT / "configs" / "dataset" / "voc2012_1800.yaml")
    cfg.root = str(SHARED / "voc2012-1800")
    train, test = build_dataset(cfg, "train"), build_dataset(cfg, "test")
    assert (len(train), len(test)) == (1440, 360)
    assert train.classes == ["dog", "cat", "person", "horse", "sheep", "cow"] and cfg.metric == "voc07"
    counts = Counter()
    for ds in (train, test):
        for t in ds.targets:
            counts.update(ds.classes[int(label) - 1] for label in t.labels)
    assert counts == {"dog": 807, "cat": 640, "person": 539, "horse": 387, "sheep": 383, "cow": 299}
    assert not {t.image_id for t in train.targets} & {t.image_id for t in test.targets}
    cfg.classes = None
    every = build_dataset(cfg, "train")
    present = {every.classes[int(label) - 1] for t in every.targets for label in t.labels}
    assert len(every.classes) == 20 and len(present) == 18 and not {"aeroplane", "train"} & present


def test_voc_layout_finds_any_image_format_and_reads_an_unannotated_split(tmp_path, shapes_root):
    """PNG images in JPEGImages are found; a part marked annotated: false (VOC2012 test)
    loads with no boxes, its sizes from the images, and is flagged as unscorable."""
    import shutil

    import cv2
    base = tmp_path / "VOC" / "T"
    (base / "JPEGImages").mkdir(parents=True)
    (base / "ImageSets" / "Main").mkdir(parents=True)
    src = shapes_root / "SHAPES" / "JPEGImages"
    first, second = sorted(src.glob("*.jpg"))[:2]
    cv2.imwrite(str(base / "JPEGImages" / "a.png"), cv2.imread(str(first)))
    shutil.copy(second, base / "JPEGImages" / "b.jpg")
    (base / "ImageSets" / "Main" / "test.txt").write_text("a\nb\n")
    node = OmegaConf.create({"kind": "voc", "name": "mine", "root": str(tmp_path / "VOC"),
                             "classes": ["ellipse", "rectangle", "triangle"], "metric": "voc07",
                             "splits": {"test": [{"dir": "T", "split": "test", "annotated": False}]}})
    ds = build_dataset(node, "test")
    assert not ds.annotated and [t.path.name for t in ds.targets] == ["a.png", "b.jpg"]
    h, w = cv2.imread(str(first)).shape[:2]
    assert (ds.targets[0].height, ds.targets[0].width, len(ds.targets[0].boxes)) == (h, w, 0)
    image, _ = ds[0]
    assert image.shape == (h, w, 3)
    # the same folder as an annotated split: the missing annotation is named, with the way out
    node.splits.test[0].annotated = True
    with pytest.raises(SppDetError, match=r"a\.xml: annotation listed in .*annotated: false"):
        build_dataset(node, "test")
