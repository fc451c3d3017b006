"""model.train.yolo_dir: Darknet's data layout read as Darknet reads it (obj.data keys,
the images -> labels path rule, class cx cy w h relative), and refused when it does not
fit the network."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from model.darknet import Darknet
from model.train.yolo_dir import DataError, label_path, read_data, training_data
from tests.paths import DATA_DIR


def write_dataset(root: Path, names: list[str], *, classes: int | None = None,
                  label: str = "1 0.5 0.5 0.3 0.4\n") -> Path:
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    image = np.full((100, 200, 3), 90, np.uint8)
    for stem in ("a", "b", "c"):
        cv2.imwrite(str(root / "images" / f"{stem}.jpg"), image)
    (root / "labels" / "a.txt").write_text(label)
    (root / "labels" / "b.txt").write_text("")  # nothing in it
    # c has no label file: nothing in it either
    (root / "obj.names").write_text("".join(f"{n}\n" for n in names))
    (root / "train.txt").write_text("images/a.jpg\nimages/b.jpg\n")
    (root / "valid.txt").write_text("images/c.jpg\n")
    (root / "obj.data").write_text(
        f"classes = {classes or len(names)}\ntrain = train.txt\nvalid = valid.txt\n"
        "names = obj.names\nbackup = backup/  # Darknet writes its weights here\n")
    return root


def test_label_path_follows_darknet() -> None:
    assert label_path(Path("x/images/a.b.jpg")) == Path("x/labels/a.b.txt")
    assert label_path(Path("images/sub/images/a.png")) == Path("images/sub/labels/a.txt")


def test_reads_lists_labels_and_names(tmp_path: Path) -> None:
    data = read_data(write_dataset(tmp_path / "d", ["red", "green"]))
    assert data.names == ["red", "green"]
    assert [p.path.name for p in data.train] == ["a.jpg", "b.jpg"]
    assert [p.path.name for p in data.valid] == ["c.jpg"]
    a = data.train[0]
    assert a.classes.tolist() == [1]
    assert a.boxes[0].tolist() == pytest.approx([0.35, 0.3, 0.65, 0.7])
    img, classes, boxes = a.load()
    assert boxes[0].tolist() == pytest.approx([70, 30, 130, 70])  # in the 200x100 pixels
    assert len(data.train[1].classes) == 0 and len(data.valid[0].classes) == 0


def test_dataset_samples_for_the_network(tmp_path: Path) -> None:
    net = Darknet(DATA_DIR / "tiny.cfg", img_size=64)
    dataset, valid = training_data(write_dataset(tmp_path / "d", ["red", "green"]), net,
                                   seed=0, img_size=64)
    assert len(dataset) == 2 and [p.path.name for p in valid] == ["c.jpg"]
    samples = [dataset[i] for i in range(len(dataset))]
    assert all(t.shape == (3, 64, 64) for t, _ in samples)
    labels = next(lab for _, lab in samples if len(lab))
    assert labels[0, 0] == 1 and (labels[0, 1:] >= 0).all() and (labels[0, 1:] <= 64).all()


@pytest.mark.parametrize("names, classes, label, message", [
    (["red", "green", "yellow"], None, "0 0.5 0.5 0.1 0.1\n", "but the cfg has 2"),
    (["red", "green"], 3, "0 0.5 0.5 0.1 0.1\n", "classes = 3 but obj.names has 2"),
    (["red", "green"], None, "5 0.5 0.5 0.1 0.1\n", "class outside 0..1"),
])
def test_refuses_what_does_not_fit(tmp_path: Path, names: list[str], classes: int | None,
                                   label: str, message: str) -> None:
    net = Darknet(DATA_DIR / "tiny.cfg", img_size=64)
    root = write_dataset(tmp_path / "d", names, classes=classes, label=label)
    with pytest.raises(DataError, match=message):
        training_data(root, net, seed=0, img_size=64)


def test_refuses_a_missing_image(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "d", ["red", "green"])
    (root / "images" / "b.jpg").unlink()
    with pytest.raises(DataError, match="images/b.jpg is not a file"):
        read_data(root / "obj.data")
