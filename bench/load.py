"""Service load benchmark: the whole service under closed-loop load against the bare engine.

Starts its own service instance (``main.py`` with a temp config: embedded PostgreSQL and
spool in a temp directory, the model below) or uses ``--url`` of a running one, then
POSTs real JPEGs to ``/detect`` (one image per request; multipart, or ``--body raw``)
from N concurrent clients that each send the next request as soon as the last one
answered, for each concurrency level: a warm-up, then ``--duration`` seconds (or
``--requests`` requests). Every upload is a new image (a JPEG comment segment makes its
bytes unique, as photos from a camera are), so each one is stored; ``--repeat-images``
sends the same few again and again (stored once).

Before the service starts, the bare engine runs in this process on the same images with
the same cfg, weights, img_size, device and backend, through the workers' pipeline
(``decode_for_network`` + ``Detector.detect_decoded``: decode, letterbox, forward, NMS),
one image at a time, threads = cores.  At concurrency 1 it runs again, in turns with the
service (``PAIR_SLICE_S`` each), so both meet the same machine.  Then

- service efficiency = best service images/s over the levels / bare engine images/s;
- added latency at concurrency 1 = service p50 at c=1 - bare engine p50 per image (in
  turns);
- where the time goes at each level: the medians of the phases in the service's
  ``Server-Timing`` header, and of what they leave out.

Model: ``workers.model_path`` and ``img_size`` of the base config (``config/config.yaml``)
unless ``--cfg/--weights/--names/--img-size`` are given; without a weights file the
network gets random weights (written once, Darknet format: speed does not depend on
their values).  If the default cfg does not exist, ``tests/data/service-6cls.cfg`` with
random weights is used instead, and the report says so.

    python -m bench.load                                   # levels 1,2,4,8,16, 30 s each
    python -m bench.load --levels 1,2,4 --duration 10 --warmup 3
    python -m bench.load --cfg ../shared/darknet/yolov3-spp-6cls.cfg --img-size 512 \\
        --set workers.max_queue=64 --json load.json
    python -m bench.load --url http://127.0.0.1:8080 --no-engine
    python -m bench.load --layouts 1x2,2x1 --set workers.max_batch_size=4   # worker layouts

``--layouts WxT,...`` runs the levels once per worker layout (W workers x T threads
each; a fresh service instance per layout, the bare engine measured once) and ends with
a table comparing them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import platform
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from bench._service import (PROJECT_ROOT, ServiceError, ServiceProcess, free_port,
                            parse_assignment, run_in_scratch, write_config)
from bench.common import (JpegImage, ModelChoice, load_images, materialize_weights, percentile,
                          resolve_model)

log = logging.getLogger("bench.load")

OK = "200"
ERROR_BACKOFF_S = 0.05  # after a failed request, so that fast 503s do not spin the client
PAIR_SLICE_S = 2.0  # at concurrency 1 the bare engine and the service take turns this long
# The most the service may add at concurrency 1 over the bare engine, every record durable
# (issue 14: the floors of a durable commit, multipart parsing, the pipe and HTTP).
ADDED_LATENCY_TARGET_MS = {"raw": 8.0, "multipart": 11.0}


def _levels(text: str) -> list[int]:
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError(f"levels must be positive integers, got {text!r}")
    return levels


def _layouts(text: str) -> list[tuple[int, int]]:
    layouts = []
    for part in text.split(","):
        workers, _, threads = part.strip().lower().partition("x")
        try:
            layout = (int(workers), int(threads))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected WxT[,WxT...], got {text!r}") from None
        if min(layout) < 1:
            raise argparse.ArgumentTypeError(f"workers and threads must be positive: {part!r}")
        layouts.append(layout)
    return layouts


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running service instead of starting one "
                                      "(e.g. http://127.0.0.1:8080)")
    parser.add_argument("--config", type=Path, default=PROJECT_ROOT / "config" / "config.yaml",
                        help="base service config (default: config/config.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a service config key, e.g. "
                                                  "workers.max_queue=64 (repeatable)")
    parser.add_argument("--cfg", type=Path, help="Darknet cfg (default: the config's)")
    parser.add_argument("--weights", type=Path, help="weights (default: the config's with "
                                                     "--cfg unset, else random)")
    parser.add_argument("--names", type=Path, help="class names (default: the config's)")
    parser.add_argument("--img-size", type=int, help="network input size (default: the config's)")
    parser.add_argument("--images", type=Path, nargs="+",
                        help="JPEGs to send (default: shared bus.jpg, zidane.jpg + 2 generated)")
    parser.add_argument("--body", choices=("multipart", "raw"), default="multipart",
                        help="upload as a multipart form (the default, as the upload page "
                             "does) or as a raw image/jpeg body (as API clients may)")
    parser.add_argument("--repeat-images", action="store_true",
                        help="send the same few images again and again (stored once) instead "
                             "of making every upload a new image")
    parser.add_argument("--levels", type=_levels, default=[1, 2, 4, 8, 16],
                        help="concurrency levels (default: 1,2,4,8,16)")
    parser.add_argument("--layouts", type=_layouts,
                        help="worker layouts to compare, e.g. 1x2,2x1 (workers x threads); "
                             "default: the config's")
    parser.add_argument("--duration", type=float, default=30.0,
                        help="measured seconds per level (default: 30)")
    parser.add_argument("--requests", type=int,
                        help="measured requests per level instead of --duration")
    parser.add_argument("--warmup", type=float, default=5.0,
                        help="unmeasured seconds of load before each level (default: 5)")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="per-request timeout in seconds (default: 300)")
    parser.add_argument("--threads", type=int, default=_cores(),
                        help="bare engine torch threads (default: the cores, %(default)s)")
    parser.add_argument("--engine-duration", type=float,
                        help="bare engine seconds (default: --duration)")
    parser.add_argument("--no-engine", action="store_true", help="skip the bare engine")
    parser.add_argument("--ready-timeout", type=float, default=600.0,
                        help="seconds to wait for /readyz (default: 600)")
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temp directory (config, service log, database)")
    args = parser.parse_args(argv)
    for name in ("duration", "warmup", "timeout"):
        if getattr(args, name) < 0 or (name != "warmup" and getattr(args, name) == 0):
            parser.error(f"--{name} must be positive")
    if args.requests is not None and args.requests < 1:
        parser.error("--requests must be positive")
    if args.threads < 1:
        parser.error("--threads must be positive")
    if args.url and args.layouts:
        parser.error("--layouts starts its own instances: it cannot be used with --url")
    try:
        args.overrides = dict(parse_assignment(text) for text in args.overrides)
    except ValueError as exc:
        parser.error(f"--set: {exc}")
    return args


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# ---------------------------------------------------------------- statistics

@dataclass(frozen=True)
class Sample:
    """One request: start and end on ``time.perf_counter``, and its outcome
    (``"200"``, another status code, ``"timeout"`` or a client error's name)."""

    start: float
    end: float
    status: str
    timing: dict[str, float] = field(default_factory=dict)  # the response's Server-Timing


@dataclass
class LevelStats:
    concurrency: int
    requests: int  # started in the measured window
    ok: int
    errors: dict[str, int]
    window_s: float
    images_per_s: float  # 200s completed in the window / window
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    latencies_ms: list[float] = field(repr=False)  # of the 200s started in the window
    phases_p50_ms: dict[str, float] = field(default_factory=dict)  # Server-Timing medians


def summarize(concurrency: int, samples: Sequence[Sample], window_start: float,
              window_end: float) -> LevelStats:
    """Stats of one level: requests started in ``[window_start, window_end)`` give the
    counts and latencies (200s only); successes *completed* in the window give the
    throughput, so requests in flight at either edge do not bias it."""
    if window_end <= window_start:
        raise ValueError("the measured window is empty")
    measured = [s for s in samples if window_start <= s.start < window_end]
    latencies = [(s.end - s.start) * 1e3 for s in measured if s.status == OK]
    phases: dict[str, list[float]] = {}
    for s in measured:
        if s.status == OK:
            for name, ms in request_phases(s).items():
                phases.setdefault(name, []).append(ms)
    completed = sum(1 for s in samples
                    if s.status == OK and window_start <= s.end <= window_end)
    window = window_end - window_start
    return LevelStats(
        concurrency=concurrency, requests=len(measured), ok=len(latencies),
        errors=dict(sorted(Counter(s.status for s in measured if s.status != OK).items())),
        window_s=window, images_per_s=completed / window,
        p50_ms=percentile(latencies, 50), p95_ms=percentile(latencies, 95),
        p99_ms=percentile(latencies, 99),
        mean_ms=sum(latencies) / len(latencies) if latencies else math.nan,
        latencies_ms=latencies,
        phases_p50_ms={name: percentile(values, 50) for name, values in phases.items()})


def request_phases(sample: Sample) -> dict[str, float]:
    """One request's Server-Timing phases plus two derived from them: ``transfer``, the
    pool's part of ``detect`` that is neither decoding nor inference (queue, the trip to
    the worker and back), and ``outside``, the client's latency that no phase covers
    (HTTP both ways, the load generator itself)."""
    phases = dict(sample.timing)
    if {"detect", "decode", "infer"} <= phases.keys():
        phases["transfer"] = phases["detect"] - phases["decode"] - phases["infer"]
    if {"upload", "detect", "store"} <= phases.keys():
        covered = phases["upload"] + phases["detect"] + phases["store"]
        phases["outside"] = (sample.end - sample.start) * 1e3 - covered
    return phases


def parse_server_timing(header: str | None) -> dict[str, float]:
    """``name;dur=1.5, other;dur=2`` -> ``{"name": 1.5, "other": 2.0}`` (metrics without
    a duration, or unparseable ones, are left out)."""
    timing: dict[str, float] = {}
    for metric in (header or "").split(","):
        name, *params = (part.strip() for part in metric.split(";"))
        for param in params:
            key, _, value = param.partition("=")
            if name and key.strip().lower() == "dur":
                try:
                    timing[name] = float(value.strip().strip('"'))
                except ValueError:
                    pass
    return timing


@dataclass
class EngineStats:
    backend: str
    device: str
    threads: int
    images: int
    images_per_s: float
    p50_ms: float
    p95_ms: float
    latencies_ms: list[float] = field(repr=False)


# ---------------------------------------------------------------- bare engine

class BareEngine:
    """The workers' pipeline in this process, one image at a time:
    ``decode_for_network`` + ``Detector.detect_decoded`` (decode, letterbox, forward, NMS)."""

    def __init__(self, model: ModelChoice, *, device: str, backend: str, threads: int,
                 conf: float, iou: float, max_pixels: int) -> None:
        import torch

        from model.inference import Detector

        torch.set_num_threads(threads)
        self.detector = Detector.load(model.cfg, model.weights, model.names,
                                      img_size=model.img_size, device=device, backend=backend,
                                      threads=threads)
        self.threads = threads
        self.conf, self.iou, self.max_pixels = conf, iou, max_pixels

    def run(self, image: JpegImage) -> float:
        """Seconds for one image."""
        from model.preprocess import decode_for_network

        start = time.perf_counter()
        decoded = decode_for_network(image.data, self.max_pixels, self.detector.img_size)
        self.detector.detect_decoded([decoded], conf_thres=self.conf, iou_thres=self.iou)
        return time.perf_counter() - start

    def run_for(self, images: Sequence[JpegImage], seconds: float, *, first: int = 0,
                at_least: int = 1) -> list[float]:
        """Latencies of images run back to back for ``seconds`` (and ``at_least`` of
        them), cycling through ``images`` from index ``first``."""
        latencies: list[float] = []
        started = time.perf_counter()
        while time.perf_counter() - started < seconds or len(latencies) < at_least:
            latencies.append(self.run(images[(first + len(latencies)) % len(images)]))
        return latencies

    def stats(self, latencies: Sequence[float], elapsed: float) -> EngineStats:
        return EngineStats(backend=self.detector.backend, device=str(self.detector.device),
                           threads=self.threads, images=len(latencies),
                           images_per_s=len(latencies) / elapsed,
                           p50_ms=percentile(latencies, 50) * 1e3,
                           p95_ms=percentile(latencies, 95) * 1e3,
                           latencies_ms=[t * 1e3 for t in latencies])

    def measure(self, images: Sequence[JpegImage], duration: float) -> EngineStats:
        """One warm-up pass over the images, then ``duration`` seconds (at least two
        passes)."""
        for image in images:
            self.run(image)
        started = time.perf_counter()
        latencies = self.run_for(images, duration, at_least=2 * len(images))
        return self.stats(latencies, time.perf_counter() - started)


# ---------------------------------------------------------------- load generator

async def _post(session: aiohttp.ClientSession, url: str, image: JpegImage,
                body: str = "multipart") -> tuple[str, dict[str, float]]:
    """One upload (``body``: ``multipart`` form field ``image``, or ``raw`` JPEG body): its
    outcome and its Server-Timing phases."""
    if body == "raw":
        request = session.post(url, data=image.data, params={"filename": image.name},
                               headers={"Content-Type": "image/jpeg"})
    else:
        form = aiohttp.FormData()
        form.add_field("image", image.data, filename=image.name, content_type="image/jpeg")
        request = session.post(url, data=form)
    try:
        async with request as response:
            await response.read()
            return str(response.status), parse_server_timing(
                response.headers.get("Server-Timing"))
    except asyncio.TimeoutError:
        return "timeout", {}
    except aiohttp.ClientError as exc:
        return type(exc).__name__, {}


def unique_jpeg(data: bytes, tag: str) -> bytes:
    """The same JPEG with a comment segment (COM) carrying ``tag`` after its SOI marker:
    the same pixels, different bytes, so the service stores it as a new image."""
    if data[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG")
    payload = tag.encode("ascii")
    return data[:2] + b"\xff\xfe" + (len(payload) + 2).to_bytes(2, "big") + payload + data[2:]


async def run_level(session: aiohttp.ClientSession, url: str, images: Sequence[JpegImage],
                    concurrency: int, warmup: float, duration: float,
                    max_requests: int | None, unique: bool = True, body: str = "multipart",
                    ) -> tuple[LevelStats, list[Sample], float]:
    """``concurrency`` closed-loop clients: warm-up, then the measured window; waits for
    every request to finish before returning (levels never overlap). ``unique``: every
    request's JPEG differs in a comment segment (as uploads from cameras do), so each
    one is a new image to store; otherwise the same few images repeat (deduplicated)."""
    run_tag = f"{os.getpid()}-{time.time_ns()}"
    samples: list[Sample] = []
    sent = 0
    measured_started = 0
    begin = time.perf_counter()
    window_start = begin + warmup
    stop_at = math.inf if max_requests is not None else window_start + duration

    async def client() -> None:
        nonlocal sent, measured_started
        while True:
            now = time.perf_counter()
            if now >= stop_at:
                return
            if max_requests is not None and now >= window_start:
                if measured_started >= max_requests:
                    return
                measured_started += 1
            image = images[sent % len(images)]
            if unique:
                image = JpegImage(image.name, unique_jpeg(image.data, f"bench {run_tag} {sent}"),
                                  image.width, image.height)
            sent += 1
            start = time.perf_counter()
            status, timing = await _post(session, url, image, body)
            samples.append(Sample(start, time.perf_counter(), status, timing))
            if status != OK:
                await asyncio.sleep(ERROR_BACKOFF_S)

    await asyncio.gather(*(client() for _ in range(concurrency)))
    if max_requests is not None:
        in_window = [s.end for s in samples if s.start >= window_start]
        window_end = max(in_window) if in_window else time.perf_counter()
    else:
        window_end = window_start + duration
    return summarize(concurrency, samples, window_start, window_end), samples, begin


async def run_paired_level(session: aiohttp.ClientSession, url: str,
                           images: Sequence[JpegImage], engine: BareEngine, warmup: float,
                           duration: float, unique: bool = True, body: str = "multipart",
                           ) -> tuple[LevelStats, list[Sample], float, EngineStats]:
    """Concurrency 1, with the bare engine measured in turns: ``PAIR_SLICE_S`` of engine,
    then as long of service, and so on, so that both meet the same machine (other load,
    clock speed) and the added latency is a paired difference. The samples are on a
    clock that runs only while the service is measured."""
    await run_level(session, url, images, 1, 0.0, warmup, None, unique, body)  # warm-up
    engine.run_for(images, 0.0, at_least=len(images))
    samples: list[Sample] = []
    engine_latencies: list[float] = []
    service_time = engine_time = 0.0
    while service_time < duration:
        started = time.perf_counter()
        engine_latencies += engine.run_for(images, PAIR_SLICE_S, first=len(engine_latencies))
        engine_time += time.perf_counter() - started
        _, part, begin = await run_level(session, url, images, 1, 0.0,
                                         min(PAIR_SLICE_S, duration - service_time), None,
                                         unique, body)
        samples += [Sample(x.start - begin + service_time, x.end - begin + service_time,
                           x.status, x.timing) for x in part]
        service_time += time.perf_counter() - begin
    return (summarize(1, samples, 0.0, service_time), samples, 0.0,
            engine.stats(engine_latencies, engine_time))


@dataclass
class LoadRun:
    """One service instance under every concurrency level."""

    service: dict[str, Any]  # its /readyz
    levels: list[LevelStats]
    raw: list[list[Sample]]  # per level, seconds from the level's start
    paired_engine: EngineStats | None = None  # the bare engine in turns with concurrency 1


async def _load(args: argparse.Namespace, base_url: str, images: Sequence[JpegImage],
                service: ServiceProcess | None, engine: BareEngine | None) -> LoadRun:
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    connector = aiohttp.TCPConnector(limit=max(args.levels) + 2)
    unique = not args.repeat_images
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        if service is not None:
            service.start()
            log.info("waiting for %s/readyz (embedded PostgreSQL, worker warm-up)", base_url)
            ready = await service.wait_ready(session, args.ready_timeout)
        else:
            async with session.get(f"{base_url}/readyz") as response:
                if response.status != 200:
                    raise ServiceError(f"{base_url}/readyz answered {response.status}")
                ready = await response.json()
        log.info("service ready: model %s, workers %s", ready.get("model"), ready.get("workers"))
        result = LoadRun(ready, [], [])
        url = f"{base_url}/detect"
        for concurrency in args.levels:
            paired = engine is not None and concurrency == 1 and args.requests is None
            log.info("concurrency %d: %.0f s warm-up, then %s%s", concurrency, args.warmup,
                     f"{args.requests} requests" if args.requests else f"{args.duration:.0f} s",
                     f" in turns of {PAIR_SLICE_S:g} s with the bare engine" if paired else "")
            if paired:
                assert engine is not None
                stats, samples, begin, result.paired_engine = await run_paired_level(
                    session, url, images, engine, args.warmup, args.duration, unique,
                    args.body)
            else:
                stats, samples, begin = await run_level(session, url, images, concurrency,
                                                        args.warmup, args.duration,
                                                        args.requests, unique, args.body)
            result.levels.append(stats)
            result.raw.append([Sample(s.start - begin, s.end - begin, s.status, s.timing)
                               for s in samples])
            log.info("concurrency %d: %.2f images/s, p50 %.0f ms, errors %s", concurrency,
                     stats.images_per_s, stats.p50_ms, stats.errors or "none")
    return result


# ---------------------------------------------------------------- report

def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.1f}"


def _errors(errors: dict[str, int]) -> str:
    return " ".join(f"{status}x{count}" for status, count in errors.items()) or "0"


def format_table(levels: Sequence[LevelStats]) -> str:
    lines = [f"{'concurrency':>11} {'requests':>8} {'ok':>6} {'errors':>14} {'images/s':>9} "
             f"{'p50 ms':>9} {'p95 ms':>9} {'p99 ms':>9}"]
    for s in levels:
        lines.append(f"{s.concurrency:>11} {s.requests:>8} {s.ok:>6} {_errors(s.errors):>14} "
                     f"{s.images_per_s:>9.2f} {_ms(s.p50_ms):>9} {_ms(s.p95_ms):>9} "
                     f"{_ms(s.p99_ms):>9}")
    return "\n".join(lines)


def derived(engine: EngineStats | None, levels: Sequence[LevelStats],
            paired: EngineStats | None = None) -> dict[str, Any]:
    """Service efficiency at saturation and added latency at concurrency 1 (against the
    bare engine measured in turns with it when there is one: ``paired``)."""
    out: dict[str, Any] = {}
    if not levels:
        return out
    best = max(levels, key=lambda s: s.images_per_s)
    out["best_images_per_s"] = best.images_per_s
    out["best_concurrency"] = best.concurrency
    if engine is not None and engine.images_per_s > 0:
        out["efficiency"] = best.images_per_s / engine.images_per_s
    single = next((s for s in levels if s.concurrency == 1), None)
    reference = paired or engine
    if reference is not None and single is not None and not math.isnan(single.p50_ms):
        out["added_latency_c1_ms"] = single.p50_ms - reference.p50_ms
        out["added_latency_c1_paired"] = paired is not None
    return out


def report(model: ModelChoice, images: Sequence[JpegImage], engine: EngineStats | None,
           run_: LoadRun, body: str = "multipart") -> dict[str, Any]:
    ready, levels, paired = run_.service, run_.levels, run_.paired_engine
    workers = ready.get("workers") or []
    layout = ", ".join(f"{w.get('device')}/{w.get('backend')}x{w.get('threads')}t"
                       for w in workers) or "?"
    print(f"model: cfg={model.cfg.name} weights={model.weights.name if model.weights else '?'} "
          f"img_size={model.img_size}; service reports model={ready.get('model')} "
          f"workers=[{layout}]")
    if model.note:
        print(f"note: {model.note}")
    print("images: " + ", ".join(f"{i.name} ({i.width}x{i.height}, {len(i.data) // 1024} KiB)"
                                 for i in images))
    if engine is not None:
        print(f"bare engine ({engine.backend} on {engine.device}, {engine.threads} threads, "
              f"decode+letterbox+forward+NMS, {engine.images} images): "
              f"{engine.images_per_s:.2f} images/s, p50 {engine.p50_ms:.1f} ms, "
              f"p95 {engine.p95_ms:.1f} ms")
    if paired is not None:
        print(f"bare engine in turns with concurrency 1 ({PAIR_SLICE_S:g} s each, "
              f"{paired.images} images): {paired.images_per_s:.2f} images/s, "
              f"p50 {paired.p50_ms:.1f} ms, p95 {paired.p95_ms:.1f} ms")
    print("service, closed loop, one image per request (latency percentiles of 200s):")
    print(format_table(levels))
    numbers = derived(engine, levels, paired)
    if "efficiency" in numbers and engine is not None:
        print(f"service efficiency: {numbers['efficiency']:.3f} (best "
              f"{numbers['best_images_per_s']:.2f} images/s at concurrency "
              f"{numbers['best_concurrency']} / bare engine {engine.images_per_s:.2f}; "
              "target >= 0.95)")
    single = next((s for s in levels if s.concurrency == 1), None)
    reference = paired or engine
    if "added_latency_c1_ms" in numbers and reference is not None and single is not None:
        target = ADDED_LATENCY_TARGET_MS[body]
        verdict = "met" if numbers["added_latency_c1_ms"] <= target else "NOT met"
        print(f"added latency at concurrency 1: {numbers['added_latency_c1_ms']:+.1f} ms "
              f"(service p50 {single.p50_ms:.1f} - bare engine p50 {reference.p50_ms:.1f}"
              f"{' in turns' if paired is not None else ''}; target <= {target:g} ms for "
              f"{body} bodies: {verdict})")
    for level in levels:  # under load, "transfer" is mostly the wait in the queue
        if level.phases_p50_ms:
            print(format_phases(level))
    return numbers


PHASES = ("upload", "transfer", "decode", "infer", "store", "outside")


def format_phases(level: LevelStats) -> str:
    """Where a request's time goes: the median of each phase (``request_phases``)."""
    phases = level.phases_p50_ms
    return (f"where the time goes at concurrency {level.concurrency} (medians, ms): "
            + ", ".join(f"{name} {phases[name]:.1f}" for name in PHASES if name in phases))


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_json(path: Path, args: argparse.Namespace, model: ModelChoice,
               images: Sequence[JpegImage], engine: EngineStats | None,
               runs: Sequence[dict[str, Any]], load_before: float | None) -> None:
    import torch

    data = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": {"platform": platform.platform(), "cores": _cores(),
                 "load_average_before": load_before,
                 "python": sys.version.split()[0], "torch": torch.__version__,
                 "aiohttp": aiohttp.__version__},
        "settings": {"url": args.url, "levels": args.levels, "duration_s": args.duration,
                     "requests": args.requests, "warmup_s": args.warmup, "body": args.body,
                     "repeat_images": args.repeat_images,
                     "overrides": args.overrides},
        "model": {"cfg": str(model.cfg), "weights": str(model.weights),
                  "names": str(model.names), "img_size": model.img_size, "note": model.note},
        "images": [{"name": i.name, "width": i.width, "height": i.height, "bytes": len(i.data)}
                   for i in images],
        "engine": asdict(engine) if engine is not None else None,
        "runs": [{"layout": run_["layout"], "service": run_["service"],
                  "levels": [{**asdict(s), "samples": [asdict(x) for x in samples]}
                             for s, samples in zip(run_["levels"], run_["raw"], strict=True)],
                  "paired_engine": (asdict(run_["paired_engine"])
                                    if run_["paired_engine"] is not None else None),
                  "derived": run_["derived"]} for run_ in runs],
    }
    path.write_text(json.dumps(_json_safe(data), indent=1), encoding="utf-8")
    log.info("raw numbers written to %s", path)


# ---------------------------------------------------------------- main

def _service_settings(model: ModelChoice | None, extra: dict[str, Any]) -> dict[str, Any]:
    """Dotted overrides for the service config: the model, then ``extra`` (``--set``)."""
    overrides: dict[str, Any] = {"server.host": "127.0.0.1"}
    if model is not None:
        overrides.update({"models": None,  # the one model below
                          "workers.model_path.cfg": str(model.cfg),
                          "workers.model_path.weights": str(model.weights),
                          "workers.model_path.data": str(model.names),
                          "workers.img_size": model.img_size})
    overrides.update(extra)
    return overrides


def _workers_section(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    workers = dict(base.get("workers") or {})
    for key, value in overrides.items():
        if key.startswith("workers.") and key.count(".") == 1:
            workers[key.split(".", 1)[1]] = value
    return workers


def _load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:  # not available on this platform
        return None


def _warn_if_busy() -> float | None:
    """The load average before the benchmark starts, with a warning when the machine is
    busy: other work on the cores skews every number here, a multi-threaded bare engine
    most (its threads wait for each other at every layer)."""
    load = _load_average()
    if load is not None and load > 0.5:
        log.warning("the machine is busy before the benchmark (1-min load average %.2f on %d "
                    "cores): treat the numbers as noisy", load, _cores())
    return load


def run(args: argparse.Namespace, workdir: Path) -> int:
    base = yaml.safe_load(args.config.read_text(encoding="utf-8")) or {}
    workers = _workers_section(base, args.overrides)
    server = base.get("server") or {}
    model = materialize_weights(resolve_model(args, {**base, "workers": workers}), workdir)
    if model.note:
        log.warning("%s", model.note)
    images = load_images(args.images)
    load_before = _warn_if_busy()
    bare, engine = None, None
    if not args.no_engine:
        log.info("bare engine: %s at %d px, %d threads", model.cfg.name, model.img_size,
                 args.threads)
        bare = BareEngine(model, device=str(workers.get("device") or "auto"),
                          backend=str(workers.get("backend") or "auto"), threads=args.threads,
                          conf=float(workers.get("conf_thres") or 0.3),
                          iou=float(workers.get("iou_thres") or 0.6),
                          max_pixels=int(server.get("max_pixels") or 50_000_000))
        engine = bare.measure(images, args.engine_duration or args.duration)
    runs = []
    for layout in args.layouts or [None]:
        overrides = dict(args.overrides)
        if layout is not None:
            overrides.update({"workers.max_workers": layout[0],
                              "workers.threads_per_worker": layout[1]})
            print(f"\n=== layout {layout[0]} worker(s) x {layout[1]} thread(s) ===")
        load = _serve_and_load(args, workdir, model, images, overrides, bare)
        numbers = report(model, images, engine, load, args.body)
        runs.append({"layout": layout, "service": load.service, "levels": load.levels,
                     "raw": load.raw, "paired_engine": load.paired_engine,
                     "derived": numbers})
    if len(runs) > 1:
        print("\n" + format_layouts(runs))
    if load_before is not None:
        print(f"1-min load average before the run: {load_before:.2f} on {_cores()} cores")
    if args.json is not None:
        write_json(args.json, args, model, images, engine, runs, load_before)
    return 0


def _serve_and_load(args: argparse.Namespace, workdir: Path, model: ModelChoice,
                    images: Sequence[JpegImage], overrides: dict[str, Any],
                    engine: BareEngine | None) -> LoadRun:
    """Start a service instance with ``overrides`` (or use ``--url``) and run the levels."""
    if args.url:
        return asyncio.run(_load(args, args.url.rstrip("/"), images, None, engine))
    instance = workdir / f"instance-{len(list(workdir.glob('instance-*')))}"
    instance.mkdir()
    config_path = instance / "service.yaml"
    settings = _service_settings(model, overrides)
    write_config(args.config, config_path, instance, settings)
    service = ServiceProcess(config_path, free_port(), instance / "service.log")
    try:
        return asyncio.run(_load(args, service.url, images, service, engine))
    finally:
        log.info("stopping the service")
        service.stop()


def format_layouts(runs: Sequence[dict[str, Any]]) -> str:
    """One line per worker layout: latency at concurrency 1, best throughput, ratios."""
    lines = [f"{'layout':>8} {'c=1 p50 ms':>11} {'best images/s':>14} {'at c':>5} "
             f"{'efficiency':>10} {'added c=1 ms':>13}"]
    for run_ in runs:
        workers, threads = run_["layout"]
        single = next((s for s in run_["levels"] if s.concurrency == 1), None)
        numbers = run_["derived"]
        lines.append(
            f"{f'{workers}x{threads}':>8} {_ms(single.p50_ms if single else math.nan):>11} "
            f"{numbers.get('best_images_per_s', math.nan):>14.2f} "
            f"{numbers.get('best_concurrency', 0):>5} "
            f"{numbers.get('efficiency', math.nan):>10.3f} "
            f"{numbers.get('added_latency_c1_ms', math.nan):>+13.1f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = _parse_args(argv)
    return run_in_scratch("yolo-load-", args.keep, partial(run, args))


if __name__ == "__main__":
    sys.exit(main())
