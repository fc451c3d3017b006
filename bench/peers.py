"""Peer benchmark: our service against LitServe serving the same Detector, in turns.

Both servers run the same model with the same settings on the same machine, each alone:

- **ours**: ``main.py`` with the shipped ``config/config.yaml`` (only PostgreSQL's data
  directory and the spool moved to a temp directory), so every answer waits for the
  commit of its record and its image to PostgreSQL;
- **LitServe** (``bench._litserve_app``): our ``model.inference.Detector`` on ONNX
  Runtime, the config's default model, ``workers_per_device`` = ``workers.max_workers``
  workers of ``--litserve-threads`` thread(s) (1), ``max_batch_size`` =
  ``workers.max_batch_size`` (4), ``batch_timeout`` = ``workers.max_queue_delay_ms`` (0);
  it stores nothing.

Turns alternate, ours first: ours, LitServe, ours, LitServe, ... (``--rounds``, at least
2). A turn starts its server, waits until it is ready, runs every concurrency level
(closed loop, ``bench.load``'s load generator: one multipart upload per request, field
``image``, the same real photos, each upload's bytes made unique), then measures the
CPU its processes use over ``--idle`` seconds without requests (for ours: the HTTP
process, its workers and PostgreSQL), and stops it. The table pools the turns of each
server: images/s (completed in the measured windows / their length) and latency
percentiles, the ratio ours/theirs per level, and each turn's images/s to show the
spread.

    python -m bench.peers                                  # 2 rounds, c=1,4,8, 20 s each
    python -m bench.peers --rounds 3 --duration 30 --json peers.json
    python -m bench.peers --rounds 2 --duration 3 --warmup 1 --idle 3   # smoke test

Needs ``pip install -r requirements-bench.txt`` (LitServe, python-multipart).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import IO, Any

import aiohttp
import psutil
import yaml

from bench._service import (PROJECT_ROOT, ServiceError, ServiceProcess, free_port, run_in_scratch,
                            write_config)
from bench.common import (JpegImage, ModelChoice, default_model_paths, load_images,
                          materialize_weights, percentile, resolve_model)
from bench.load import OK, Sample, _levels, run_level

log = logging.getLogger("bench.peers")

EXAMPLES_DIR = PROJECT_ROOT / "system" / "static" / "examples"
OURS, THEIRS = "ours", "litserve"
SETTLE_S = 2.0  # after the last request, before idle CPU is measured


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=PROJECT_ROOT / "config" / "config.yaml",
                        help="our service's config (default: the shipped config/config.yaml)")
    parser.add_argument("--images", type=Path, nargs="+",
                        help="JPEGs to send (default: the photos in system/static/examples)")
    parser.add_argument("--levels", type=_levels, default=[1, 4, 8],
                        help="concurrency levels (default: 1,4,8)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="turns of each server, alternating, ours first (default: 2)")
    parser.add_argument("--duration", type=float, default=20.0,
                        help="measured seconds per level and turn (default: 20)")
    parser.add_argument("--warmup", type=float, default=3.0,
                        help="unmeasured seconds of load before each level (default: 3)")
    parser.add_argument("--idle", type=float, default=10.0,
                        help="seconds of idle CPU measured after each turn (default: 10)")
    parser.add_argument("--litserve-threads", type=int, default=1,
                        help="threads per LitServe worker (default: 1)")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="per-request timeout in seconds (default: 120)")
    parser.add_argument("--ready-timeout", type=float, default=600.0,
                        help="seconds to wait for a server to be ready (default: 600)")
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temp directory (configs, logs, database)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be positive")
    for name in ("duration", "timeout", "idle"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name} must be positive")
    if args.warmup < 0:
        parser.error("--warmup must not be negative")
    return args


# ---------------------------------------------------------------- the servers

@dataclass(frozen=True)
class ModelSettings:
    """What both servers are given: the default model and the thresholds and batching
    of our config."""

    model: ModelChoice
    workers: int
    max_batch_size: int
    batch_timeout_s: float
    conf_thres: float
    iou_thres: float
    agnostic: bool
    max_det: int
    max_pixels: int
    onnx_cache_dir: Path


def model_settings(base: dict[str, Any], workdir: Path) -> ModelSettings:
    """The shipped config's default model and the settings its workers run it with."""
    workers = base.get("workers") or {}
    models = base.get("models") or {}
    entries = [m for m in models.values() if isinstance(m, dict)] if isinstance(models, dict) \
        else []
    entry = next((m for m in entries if m.get("default")), entries[0] if entries else {})

    def setting(key: str, default: Any) -> Any:
        value = entry.get(key, workers.get(key))
        return default if value is None else value

    paths, _ = default_model_paths(base)
    if not paths.get("cfg"):
        raise SystemExit("the config names no model")
    flags = argparse.Namespace(cfg=None, weights=None, names=None, img_size=None)
    model = materialize_weights(resolve_model(flags, base), workdir)
    cache = Path(str(workers.get("onnx_cache_dir") or "var/onnx"))
    return ModelSettings(
        model=model, workers=int(entry.get("workers") or workers.get("max_workers") or 2),
        max_batch_size=int(workers.get("max_batch_size") or 1),
        batch_timeout_s=float(workers.get("max_queue_delay_ms") or 0) / 1000.0,
        conf_thres=float(setting("conf_thres", 0.5)), iou_thres=float(setting("iou_thres", 0.45)),
        agnostic=bool(setting("agnostic_nms", False)), max_det=int(setting("max_det", 300)),
        max_pixels=int((base.get("server") or {}).get("max_pixels") or 50_000_000),
        onnx_cache_dir=cache if cache.is_absolute() else PROJECT_ROOT / cache)


class LitServeProcess:
    """``bench._litserve_app`` in a subprocess, owned by this object."""

    def __init__(self, settings: ModelSettings, threads: int, port: int, log_path: Path) -> None:
        self.settings, self.threads, self.port, self.log_path = settings, threads, port, log_path
        self.url = f"http://127.0.0.1:{port}"
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def start(self) -> None:
        s = self.settings
        command = [sys.executable, "-m", "bench._litserve_app", "--port", str(self.port),
                   "--cfg", str(s.model.cfg), "--weights", str(s.model.weights),
                   "--names", str(s.model.names), "--img-size", str(s.model.img_size),
                   "--onnx-cache-dir", str(s.onnx_cache_dir),
                   "--workers", str(s.workers), "--threads", str(self.threads),
                   "--max-batch-size", str(s.max_batch_size),
                   "--batch-timeout", str(s.batch_timeout_s),
                   "--conf-thres", str(s.conf_thres), "--iou-thres", str(s.iou_thres),
                   "--max-det", str(s.max_det), "--max-pixels", str(s.max_pixels),
                   *(["--agnostic"] if s.agnostic else [])]
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        log.info("starting LitServe: %s", " ".join(command))
        self._process = subprocess.Popen(command, cwd=PROJECT_ROOT, stdin=subprocess.DEVNULL,
                                         stdout=self._log, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    async def wait_ready(self, session: aiohttp.ClientSession, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                raise ServiceError(f"LitServe exited before it was ready; see {self.log_path}")
            try:
                async with session.get(f"{self.url}/health") as response:
                    if response.status == 200:
                        return
            except (TimeoutError, aiohttp.ClientError):
                pass
            await asyncio.sleep(0.5)
        raise ServiceError(f"LitServe was not ready after {timeout:.0f} s; see {self.log_path}")

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM to the server and every process it started, then SIGKILL."""
        process, self._process = self._process, None
        try:
            if process is None or process.poll() is not None:
                return
            tree = _tree(process.pid)
            for proc in tree:
                _signal(proc, "terminate")
            _, alive = psutil.wait_procs(tree, timeout=timeout)
            for proc in alive:
                log.warning("LitServe process %d did not stop: killing it", proc.pid)
                _signal(proc, "kill")
            process.wait()
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None


def _signal(proc: psutil.Process, how: str) -> None:
    try:
        getattr(proc, how)()
    except psutil.NoSuchProcess:
        pass


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _postgres_tree(pgdata: Path) -> list[psutil.Process]:
    """The embedded PostgreSQL's postmaster (from ``postmaster.pid``) and its backends."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text(encoding="utf-8").split()[0])
    except (OSError, ValueError, IndexError):
        return []
    return _tree(pid)


# ---------------------------------------------------------------- idle CPU

def _cpu_seconds(procs: Sequence[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def idle_cpu(groups: dict[str, list[psutil.Process]], seconds: float) -> dict[str, float]:
    """CPU used by each group of processes over ``seconds`` without requests, as a
    percentage of one core."""
    before = {name: _cpu_seconds(procs) for name, procs in groups.items()}
    time.sleep(seconds)
    return {name: 100.0 * (_cpu_seconds(procs) - before[name]) / seconds
            for name, procs in groups.items()}


# ---------------------------------------------------------------- turns

@dataclass
class Turn:
    server: str
    round: int
    levels: dict[int, list[Sample]] = field(default_factory=dict)  # measured window only
    windows: dict[int, float] = field(default_factory=dict)  # seconds measured per level
    images_per_s: dict[int, float] = field(default_factory=dict)
    idle_cpu_pct: dict[str, float] = field(default_factory=dict)
    processes: int = 0


async def _load_levels(url: str, args: argparse.Namespace, images: Sequence[JpegImage],
                       turn: Turn, wait_ready: Any) -> None:
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    connector = aiohttp.TCPConnector(limit=max(args.levels) + 2)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        await wait_ready(session)
        for concurrency in args.levels:
            stats, samples, begin = await run_level(session, url, images, concurrency,
                                                    args.warmup, args.duration, None)
            window_start = begin + args.warmup
            turn.levels[concurrency] = [s for s in samples
                                        if window_start <= s.start < window_start + args.duration]
            turn.windows[concurrency] = stats.window_s
            turn.images_per_s[concurrency] = stats.images_per_s
            log.info("%s round %d, c=%d: %.2f images/s, p50 %.1f ms, errors %s", turn.server,
                     turn.round, concurrency, stats.images_per_s, stats.p50_ms,
                     stats.errors or "none")


def run_ours(args: argparse.Namespace, instance: Path, images: Sequence[JpegImage],
             round_: int, name: str = OURS, overrides: dict[str, Any] | None = None) -> Turn:
    """One turn of our service, with ``overrides`` (dotted config keys) on the config
    (the same instance directory every round: its database persists, as a deployment's
    does)."""
    config_path = instance / "service.yaml"
    if not config_path.exists():
        write_config(args.config, config_path, instance,
                     {"server.host": "127.0.0.1", **(overrides or {})})
    service = ServiceProcess(config_path, free_port(), instance / "service.log")
    turn = Turn(name, round_)
    service.start()
    try:
        async def ready(session: aiohttp.ClientSession) -> None:
            await service.wait_ready(session, args.ready_timeout)

        asyncio.run(_load_levels(f"{service.url}/detect", args, images, turn, ready))
        time.sleep(SETTLE_S)
        assert service.pid is not None
        groups = {"server": _tree(service.pid), "postgres": _postgres_tree(instance / "pgdata")}
        turn.processes = sum(len(procs) for procs in groups.values())
        turn.idle_cpu_pct = idle_cpu(groups, args.idle)
    finally:
        service.stop()
    return turn


def run_theirs(args: argparse.Namespace, settings: ModelSettings, workdir: Path,
               images: Sequence[JpegImage], round_: int) -> Turn:
    server = LitServeProcess(settings, args.litserve_threads, free_port(),
                             workdir / "litserve.log")
    turn = Turn(THEIRS, round_)
    server.start()
    try:
        async def ready(session: aiohttp.ClientSession) -> None:
            await server.wait_ready(session, args.ready_timeout)

        asyncio.run(_load_levels(f"{server.url}/predict", args, images, turn, ready))
        time.sleep(SETTLE_S)
        assert server.pid is not None
        groups = {"server": _tree(server.pid)}
        turn.processes = len(groups["server"])
        turn.idle_cpu_pct = idle_cpu(groups, args.idle)
    finally:
        server.stop()
    return turn


# ---------------------------------------------------------------- report

@dataclass(frozen=True)
class Pooled:
    images_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    ok: int
    errors: int
    per_turn: list[float]


def pooled(turns: Sequence[Turn], concurrency: int) -> Pooled:
    """One server's turns at one level together: 200s completed in the windows over the
    windows' total length; percentiles of every 200's latency."""
    samples = [s for t in turns for s in t.levels.get(concurrency, [])]
    latencies = [(s.end - s.start) * 1e3 for s in samples if s.status == OK]
    window = sum(t.windows.get(concurrency, 0.0) for t in turns)
    completed = sum(t.images_per_s.get(concurrency, 0.0) * t.windows.get(concurrency, 0.0)
                    for t in turns)
    return Pooled(images_per_s=completed / window if window else math.nan,
                  p50_ms=percentile(latencies, 50), p95_ms=percentile(latencies, 95),
                  p99_ms=percentile(latencies, 99), ok=len(latencies),
                  errors=sum(1 for s in samples if s.status != OK),
                  per_turn=[t.images_per_s.get(concurrency, math.nan) for t in turns])


def format_report(turns: Sequence[Turn], levels: Sequence[int]) -> str:
    """One table: per level, each server's pooled turns, then the ratio of the first
    server (ours) to each other one."""
    names = list(dict.fromkeys(t.server for t in turns))
    width = max(9, *(len(n) for n in names))
    header = (f"{'c':>3} {'server':>{width}} {'images/s':>9} {'p50 ms':>8} {'p95 ms':>8} "
              f"{'p99 ms':>8} {'ok':>6} {'errors':>6}  per turn images/s")
    lines = [header]
    ratios = []
    for concurrency in levels:
        stats = {n: pooled([t for t in turns if t.server == n], concurrency) for n in names}
        for name, p in stats.items():
            lines.append(f"{concurrency:>3} {name:>{width}} {p.images_per_s:>9.2f} "
                         f"{p.p50_ms:>8.1f} {p.p95_ms:>8.1f} {p.p99_ms:>8.1f} {p.ok:>6} "
                         f"{p.errors:>6}  " + " ".join(f"{x:.2f}" for x in p.per_turn))
        a = stats[names[0]]
        for name in names[1:]:
            b = stats[name]
            ratios.append(f"{concurrency:>3} {names[0] + '/' + name:>{2 * width}} "
                          f"{a.images_per_s / b.images_per_s:>9.3f} {a.p50_ms / b.p50_ms:>8.3f} "
                          f"{a.p95_ms / b.p95_ms:>8.3f} {a.p99_ms / b.p99_ms:>8.3f}")
    lines += [(f"{'ratio':>{2 * width + 4}} {'images/s':>9} {'p50':>8} {'p95':>8} {'p99':>8}"
               "  (images/s > 1: the first faster; latency < 1: the first faster)"), *ratios]
    lines.append("idle CPU over the idle window, % of one core (each turn):")
    for turn in turns:
        parts = ", ".join(f"{name} {pct:.2f}" for name, pct in turn.idle_cpu_pct.items())
        lines.append(f"  {turn.server:>{width}} round {turn.round}: {parts} "
                     f"({turn.processes} processes)")
    return "\n".join(lines)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


# ---------------------------------------------------------------- main

@contextmanager
def _noted(step: str) -> Iterator[None]:
    started = time.perf_counter()
    yield
    log.info("%s took %.0f s", step, time.perf_counter() - started)


def run(args: argparse.Namespace, workdir: Path) -> int:
    base = yaml.safe_load(args.config.read_text(encoding="utf-8")) or {}
    settings = model_settings(base, workdir)
    if settings.model.note:
        log.warning("%s", settings.model.note)
    images = load_images(args.images or sorted(EXAMPLES_DIR.glob("*.jpg")))
    instance = workdir / "ours"
    instance.mkdir()
    turns: list[Turn] = []
    for round_ in range(1, args.rounds + 1):
        with _noted(f"round {round_}, ours"):
            turns.append(run_ours(args, instance, images, round_))
        with _noted(f"round {round_}, LitServe"):
            turns.append(run_theirs(args, settings, workdir, images, round_))
    m = settings.model
    print(f"model: {m.cfg.name} + {m.weights.name if m.weights else 'random weights'} at "
          f"{m.img_size} px; {settings.workers} workers, batches up to "
          f"{settings.max_batch_size}, ONNX Runtime (LitServe: {args.litserve_threads} "
          "thread(s) per worker; ours: the shipped config)")
    print("images: " + ", ".join(f"{i.name} ({i.width}x{i.height}, {len(i.data) // 1024} KiB)"
                                 for i in images) + "; multipart, every upload new bytes")
    print(f"{args.rounds} round(s), ours first; per level {args.warmup:g} s warm-up + "
          f"{args.duration:g} s measured per turn")
    print(format_report(turns, args.levels))
    if args.json is not None:
        data = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "settings": {k: str(v) for k, v in vars(args).items()},
                "model": {k: str(v) for k, v in asdict(settings).items()},
                "turns": [{"server": t.server, "round": t.round, "images_per_s": t.images_per_s,
                           "idle_cpu_pct": t.idle_cpu_pct,
                           "latencies_ms": {c: [(s.end - s.start) * 1e3 for s in samples
                                                if s.status == OK]
                                            for c, samples in t.levels.items()}}
                          for t in turns]}
        args.json.write_text(json.dumps(_json_safe(data), indent=1), encoding="utf-8")
        log.info("raw numbers written to %s", args.json)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = _parse_args(argv)
    try:
        import litserve  # noqa: F401 - checked before anything starts
    except ImportError:
        log.error("LitServe is not installed: .venv/bin/pip install -r requirements-bench.txt")
        return 2
    return run_in_scratch("yolo-peers-", args.keep, partial(run, args))


if __name__ == "__main__":
    sys.exit(main())
