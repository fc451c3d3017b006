"""LitServe serving our own :class:`model.inference.Detector`: the peer of ``bench.peers``.

Run as its own process (``bench.peers`` starts and stops it)::

    python -m bench._litserve_app --port 8001 --cfg CFG --weights W --names N \\
        --img-size 512 --workers 2 --threads 1 --max-batch-size 4

``POST /predict`` takes a multipart form with the image in the field ``image`` (as our
``/detect`` does) and answers ``{"detections": [...]}``; ``GET /health`` answers 200 once
every worker is warm. The work per image is the one our workers do
(``service/workers/child.py``): ``decode_for_network`` (header check, decode, letterbox)
in ``decode_request``, then ``Detector.detect_decoded`` on the batch (forward pass, NMS,
boxes back to the original pixels) in ``predict``, on ONNX Runtime with ``--threads``
intra-op threads per worker, with the same thresholds. Nothing is stored anywhere.

LitServe (Apache-2.0, Lightning AI) is a benchmark-only dependency
(``requirements-bench.txt``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import litserve as ls

log = logging.getLogger("bench.litserve")


class DetectorAPI(ls.LitAPI):
    """decode_request -> batch -> predict -> unbatch -> encode_response, one image each."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(max_batch_size=args.max_batch_size, batch_timeout=args.batch_timeout,
                         api_path="/predict")
        self.args = args
        self.detector: Any = None

    def setup(self, device: str) -> None:
        import torch

        from model.inference import Detector

        args = self.args
        torch.set_num_threads(args.threads)
        self.detector = Detector.load(args.cfg, args.weights, args.names,
                                      img_size=args.img_size, device="cpu",
                                      backend=args.backend, onnx_cache_dir=args.onnx_cache_dir,
                                      threads=args.threads)
        self.detector.warmup((1, args.max_batch_size))
        log.info("LitServe worker warm (%s, %d thread(s))", self.detector.backend, args.threads)

    # ``request`` unannotated on purpose: LitServe reads the annotation to pick how the
    # body is parsed, and none means "the form or JSON of the request".
    def decode_request(self, request, **kwargs: Any) -> Any:  # type: ignore[no-untyped-def]
        from model.preprocess import decode_for_network

        upload = request["image"]
        data = upload.file.read() if hasattr(upload, "file") else bytes(upload)
        return decode_for_network(data, self.args.max_pixels, self.detector.img_size)

    def batch(self, inputs: Sequence[Any]) -> list[Any]:
        return list(inputs)

    def predict(self, x: Sequence[Any], **kwargs: Any) -> list[Any]:
        args = self.args
        return self.detector.detect_decoded(list(x), conf_thres=args.conf_thres,
                                            iou_thres=args.iou_thres, agnostic=args.agnostic,
                                            max_det=args.max_det)

    def unbatch(self, output: Sequence[Any]) -> list[Any]:
        return list(output)

    def encode_response(self, output: Any, **kwargs: Any) -> dict[str, Any]:
        return {"detections": [det.to_json() for det in output]}


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cfg", type=Path, required=True)
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--names", type=Path, required=True)
    parser.add_argument("--img-size", type=int, default=512)
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--onnx-cache-dir", type=Path)
    parser.add_argument("--workers", type=int, default=2, help="workers_per_device")
    parser.add_argument("--threads", type=int, default=1, help="threads per worker")
    parser.add_argument("--max-batch-size", type=int, default=4)
    parser.add_argument("--batch-timeout", type=float, default=0.0, help="seconds")
    parser.add_argument("--conf-thres", type=float, default=0.5)
    parser.add_argument("--iou-thres", type=float, default=0.45)
    parser.add_argument("--agnostic", action="store_true")
    parser.add_argument("--max-det", type=int, default=300)
    parser.add_argument("--max-pixels", type=int, default=50_000_000)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = _parse_args(argv)
    server = ls.LitServer(DetectorAPI(args), accelerator="cpu", devices=1,
                          workers_per_device=args.workers, timeout=60,
                          enable_shutdown_api=False)
    server.run(host=args.host, port=args.port, generate_client_file=False, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
