"""Reliability run: faults, overload and hostile input against a live instance it starts.

Starts PostgreSQL (embedded, in a temp directory, owned by this script so that it can be
stopped) and the service (``main.py``, temp config from ``--config`` pointed at that
server), measures the capacity, then runs the phases:

- ``kill``: kill -9 a worker during a stream of requests: failed requests (target: none,
  the dead worker's job is retried), time until /readyz is ready again;
- ``postgres``: stop PostgreSQL for ``--outage-s`` during a stream, start it again: every
  answered id is in the database afterwards, no duplicates;
- ``hung``: SIGSTOP every PostgreSQL process for ``--hang-s`` during a stream: requests
  answered within the write deadlines, admission places released, every answered id
  stored once after SIGCONT;
- ``killed``: kill -9 the postmaster of the service's own (supervised) embedded
  PostgreSQL during a stream: serving with the database again within 30 s, /readyz
  shows the steps, nothing answered lost or doubled;
- ``disk``: the spool on a small tmpfs (root only), filled while the database hangs:
  503 ``storage_unavailable`` and /readyz 503; then a crash leaves a torn frame on the
  full disk and the service starts again on it;
- ``overload``: open-loop arrivals at ``--overload-factor`` x capacity for
  ``--overload-s``: only 200 or 503 + Retry-After, p99 of accepted requests, RSS;
- ``hostile``: ``--hostile-count`` generated hostile requests: zero 5xx, zero worker
  deaths, no half records;
- ``soak``: ``--soak-s`` at capacity: RSS growth under 5 %, zero errors;
- ``slow``: ``--tricklers`` uploads at 1 byte/s for ``--slow-s`` while the closed loop
  runs: every normal request 200, their p95 under 5 s, every trickler cut off with 408.

``killed`` and ``disk`` run on a second instance, started after the others, whose service
owns its embedded PostgreSQL (as ``make run``) and whose spool is on a tmpfs of
``--disk-tmpfs-mib``.

Model: the base config's, else ``tests/data/service-6cls.cfg`` with random weights
(as ``bench.load``). Requests go to 127.0.0.1 only. Exit status 0 when every target is
met. ``--quick`` shortens every phase (about 4 minutes instead of about 15).

    python -m bench.reliability
    python -m bench.reliability --quick --json reliability.json
    python -m bench.reliability --phases kill,postgres --outage-s 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from bench._service import PROJECT_ROOT, ServiceError, parse_assignment, scratch_dir
from bench.common import load_images, materialize_weights, resolve_model
from bench.reliability import memory, phases, slow
from bench.reliability.live import LiveInstance, LiveInstanceError
from service.web.tokens import create_token

log = logging.getLogger("bench.reliability")

PHASES = ("kill", "postgres", "hung", "overload", "hostile", "soak", "slow", "killed", "disk",
          "memory")
OWN_DATABASE_PHASES = ("killed", "disk")  # on the second instance
OWN_INSTANCE_PHASES = ("memory",)  # on an instance of its own: access control on
QUICK = {"calibrate_s": 8.0, "kill_stream_s": 15.0, "outage_s": 10.0, "overload_s": 15.0,
         "soak_s": 60.0, "soak_warmup_s": 15.0, "hang_s": 10.0, "slow_s": 15.0}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.reliability",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=PROJECT_ROOT / "config" / "config.yaml",
                        help="base service config (default: config/config.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a service config key (repeatable)")
    parser.add_argument("--cfg", type=Path, help="Darknet cfg (default: the config's)")
    parser.add_argument("--weights", type=Path, help="weights (default: the config's)")
    parser.add_argument("--names", type=Path, help="class names (default: the config's)")
    parser.add_argument("--img-size", type=int, help="network input size")
    parser.add_argument("--phases", default=",".join(PHASES),
                        help=f"comma-separated subset of {','.join(PHASES)}")
    parser.add_argument("--quick", action="store_true", help="shorten every phase")
    parser.add_argument("--clients", type=int,
                        help="closed-loop clients (default: 2 x workers: every worker busy)")
    parser.add_argument("--calibrate-s", type=float, default=15.0)
    parser.add_argument("--kill-stream-s", type=float, default=30.0)
    parser.add_argument("--kill-after-s", type=float, default=5.0)
    parser.add_argument("--outage-s", type=float, default=30.0)
    parser.add_argument("--hang-s", type=float, default=30.0, help="SIGSTOP of PostgreSQL")
    parser.add_argument("--disk-tmpfs-mib", type=int, default=64,
                        help="size of the spool's tmpfs (phase disk)")
    parser.add_argument("--disk-reserve-mib", type=float, default=8.0,
                        help="storage.spool_reserve_mb on that instance")
    parser.add_argument("--overload-s", type=float, default=60.0)
    parser.add_argument("--overload-factor", type=float, default=10.0)
    parser.add_argument("--hostile-count", type=int, default=1000)
    parser.add_argument("--hostile-seed", type=int, default=0)
    parser.add_argument("--hostile-concurrency", type=int, default=4)
    parser.add_argument("--soak-s", type=float, default=600.0)
    parser.add_argument("--soak-warmup-s", type=float, default=60.0)
    parser.add_argument("--slow-s", type=float, default=30.0)
    parser.add_argument("--tricklers", type=int, default=16)
    parser.add_argument("--timeout", type=float, default=120.0, help="client timeout per request")
    parser.add_argument("--ready-timeout", type=float, default=600.0)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the temp directory")
    args = parser.parse_args(argv)
    if args.quick:
        for name, value in QUICK.items():
            if getattr(args, name) == parser.get_default(name):
                setattr(args, name, value)
    args.phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = set(args.phases) - set(PHASES)
    if unknown:
        parser.error(f"unknown phases: {', '.join(sorted(unknown))}")
    try:
        args.overrides = dict(parse_assignment(text) for text in args.overrides)
    except ValueError as exc:
        parser.error(f"--set: {exc}")
    return args


def _section(settings: dict[str, Any], name: str) -> dict[str, Any]:
    value = settings.get(name) or {}
    return value if isinstance(value, dict) else {}


async def run(args: argparse.Namespace, workdir: Path) -> list[phases.PhaseReport]:
    base = yaml.safe_load(args.config.read_text(encoding="utf-8")) or {}
    model = materialize_weights(resolve_model(args, base), workdir)
    if model.note:
        log.warning("%s", model.note)
    overrides = {"models": None,  # the one model below
                 "workers.model_path.cfg": str(model.cfg),
                 "workers.model_path.weights": str(model.weights),
                 "workers.model_path.data": str(model.names),
                 "workers.img_size": model.img_size, **args.overrides}
    images = load_images(None)
    reports: list[phases.PhaseReport] = []
    async with LiveInstance(args.config, workdir, overrides) as live:
        ready = await live.wait_ready(args.ready_timeout)
        workers = _section(live.settings, "workers")
        server = _section(live.settings, "server")
        n_workers = len(ready["workers"])
        limit = int(ready["admission"]["limit"])
        clients = args.clients or 2 * n_workers
        log.info("ready: %d worker(s), model %s, admission limit %d", n_workers,
                 ready.get("model"), limit)
        capacity = await phases.calibrate(live, images, clients=clients,
                                          duration=args.calibrate_s, timeout=args.timeout)
        reports.append(capacity)
        capacity.figures["model"] = f"{model.cfg.name} @ {model.img_size}" + \
            (" (random weights)" if "random" in model.note or "random" in str(model.weights)
             else "")
        capacity.figures["workers"] = n_workers
        capacity.figures["admission_limit"] = limit
        rps = float(capacity.figures["capacity_rps"])
        log.info("capacity: %.2f requests/s", rps)
        for name in [p for p in args.phases
                     if p not in OWN_DATABASE_PHASES + OWN_INSTANCE_PHASES]:
            log.info("phase %s", name)
            if name == "kill":
                report = await phases.worker_kill(
                    live, images, clients=clients, kill_after=args.kill_after_s,
                    duration=args.kill_stream_s, timeout=args.timeout)
            elif name == "postgres":
                report = await phases.postgres_outage(
                    live, images, clients=clients, before=5.0, outage=args.outage_s,
                    after=10.0, timeout=args.timeout)
            elif name == "hung":
                report = await phases.hung_database(
                    live, images, clients=clients, before=5.0, hang=args.hang_s, after=5.0,
                    write_timeout=float(_section(live.settings, "postgres").get(
                        "write_timeout", 5.0)), timeout=args.timeout)
            elif name == "overload":
                report = await phases.overload(
                    live, images, capacity_rps=rps, factor=args.overload_factor,
                    duration=args.overload_s, timeout=args.timeout, limit=limit,
                    workers=n_workers,
                    max_upload_bytes=int(float(server.get("max_upload_mb", 20)) * (1 << 20)))
            elif name == "hostile":
                report = await phases.hostile(live, count=args.hostile_count,
                                              seed=args.hostile_seed,
                                              concurrency=args.hostile_concurrency)
            elif name == "slow":
                report = await slow.slow_clients(live, images, clients=clients,
                                                 tricklers=args.tricklers,
                                                 duration=args.slow_s, timeout=args.timeout)
            else:
                report = await phases.soak(live, images, clients=clients,
                                           duration=args.soak_s, warmup=args.soak_warmup_s,
                                           timeout=args.timeout)
            reports.append(report)
            print_report(report)
            await live.wait_ready(args.ready_timeout)  # the next phase starts ready
        del workers
    own = [p for p in args.phases if p in OWN_DATABASE_PHASES]
    if own:
        reports += await _own_database_phases(args, own, workdir / "own-database",
                                              overrides, images, clients)
    if "memory" in args.phases:
        reports.append(await _memory_phase(args, workdir / "memory", overrides, images))
    return reports


async def _memory_phase(args: argparse.Namespace, workdir: Path, overrides: dict[str, Any],
                        images: Sequence[Any]) -> phases.PhaseReport:
    """Issue 25's memory rows on an instance with access control on and 20 MiB uploads."""
    workdir.mkdir(parents=True, exist_ok=True)
    tokens = workdir / "tokens.json"
    token = create_token(tokens, "bench")
    async with LiveInstance(args.config, workdir,
                            {**overrides, "auth.tokens_file": str(tokens),
                             "server.max_upload_mb": 20}) as live:
        await live.wait_ready(args.ready_timeout)
        log.info("phase memory (access control on, 20 MiB uploads)")
        report = await memory.large_bodies(live, token, images[0].data)
    print_report(report)
    return report


async def _own_database_phases(args: argparse.Namespace, names: Sequence[str], workdir: Path,
                               overrides: dict[str, Any], images: Sequence[Any],
                               clients: int) -> list[phases.PhaseReport]:
    """The phases that need the service to own its embedded PostgreSQL (and a spool on
    a small tmpfs), on an instance of their own."""
    workdir.mkdir(parents=True, exist_ok=True)
    reserve = int(args.disk_reserve_mib * (1 << 20))
    tmpfs = args.disk_tmpfs_mib if "disk" in names else None
    try:
        live = LiveInstance(args.config, workdir,
                            {**overrides, "storage.spool_reserve_mb": args.disk_reserve_mib},
                            service_owns_database=True, spool_tmpfs_mib=tmpfs)
        await live.__aenter__()
    except LiveInstanceError as exc:
        log.warning("phases %s skipped: %s", ", ".join(names), exc)
        skipped = [phases.PhaseReport(name, {"skipped": str(exc)}) for name in names]
        for report in skipped:
            print_report(report)
        return skipped
    reports = []
    try:
        await live.wait_ready(args.ready_timeout)
        for name in names:
            log.info("phase %s (the service owns its PostgreSQL)", name)
            if name == "killed":
                report = await phases.killed_database(live, images, clients=clients,
                                                      before=5.0, after=10.0,
                                                      timeout=args.timeout)
            else:
                report = await phases.full_disk(live, images, clients=clients,
                                                reserve_bytes=reserve,
                                                ready_timeout=args.ready_timeout,
                                                timeout=args.timeout)
            reports.append(report)
            print_report(report)
            await live.wait_ready(args.ready_timeout)
    finally:
        await live.__aexit__(None, None, None)
    return reports


def _verdict(report: phases.PhaseReport) -> str:
    if "skipped" in report.figures:
        return "SKIP"
    return "PASS" if report.passed else "FAIL"


def print_report(report: phases.PhaseReport) -> None:
    print(f"\n== {report.name}: {_verdict(report)}")
    for key, value in report.figures.items():
        print(f"   {key}: {value}")
    for target, met in report.checks.items():
        print(f"   [{'x' if met else ' '}] {target}")


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        with scratch_dir("yolo-reliability-", args.keep) as workdir:
            reports = asyncio.run(run(args, workdir))
    except ServiceError as exc:
        log.error("%s", exc)
        return 1
    print("\n== summary")
    for report in reports:
        print(f"   {_verdict(report)}  {report.name}")
    if args.json is not None:
        args.json.write_text(json.dumps(
            [{"phase": r.name, "passed": r.passed, "figures": r.figures, "checks": r.checks}
             for r in reports], indent=2, default=str))
    return 0 if all(report.passed for report in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
