"""The reliability phases. Each runs against the live instance and returns its figures
and the targets it checked (target -> met)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench._service import ServiceError
from bench.common import JpegImage, percentile
from bench.reliability import corpus
from bench.reliability.live import LiveInstance
from bench.reliability.stream import (
    Result,
    closed_loop,
    open_loop,
    post_image,
    send_hostile,
    summary,
)

POLL_S = 0.1


@dataclass
class PhaseReport:
    name: str
    figures: dict[str, Any] = field(default_factory=dict)
    checks: dict[str, bool] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(self.checks.values())


def _answered_ids(results: Sequence[Result]) -> set[str]:
    return {record_id for r in results if r.status == 200 for record_id in r.record_ids}


async def _pool(live: LiveInstance) -> dict[str, Any]:
    pool: dict[str, Any] = (await live.readyz())[1]["pool"]
    return pool


async def _sample_rss(live: LiveInstance, every: float, stop: asyncio.Event,
                      out: list[tuple[float, int]]) -> None:
    started = time.monotonic()
    while not stop.is_set():
        out.append((time.monotonic() - started, live.rss()))
        try:
            async with asyncio.timeout(every):
                await stop.wait()
        except TimeoutError:
            pass


def _mib(value: float) -> float:
    return round(value / (1 << 20), 1)


# ---------------------------------------------------------------- capacity

async def calibrate(live: LiveInstance, images: Sequence[JpegImage], *, clients: int,
                    duration: float, timeout: float) -> PhaseReport:
    """Closed-loop throughput with every worker busy: the service's capacity."""
    assert live.session is not None
    stop = asyncio.Event()
    task = asyncio.create_task(closed_loop(live.session, live.url, images, clients, stop,
                                           timeout))
    await asyncio.sleep(duration)
    stop.set()
    results = await task
    first = min(r.started for r in results)
    ok = [r for r in results if r.status == 200]
    window = max(r.started + r.latency_s for r in results) - first
    report = PhaseReport("capacity")
    report.figures = {"clients": clients, **summary(results),
                      "capacity_rps": round(len(ok) / window, 2)}
    report.checks = {"all requests answered 200": len(ok) == len(results)}
    return report


# ---------------------------------------------------------------- worker death

async def worker_kill(live: LiveInstance, images: Sequence[JpegImage], *, clients: int,
                      kill_after: float, duration: float, timeout: float) -> PhaseReport:
    """kill -9 one worker during a stream; count failures, time the way back to ready."""
    assert live.session is not None
    status, ready = await live.readyz()
    before = ready["pool"]
    victim = int(ready["workers"][0]["pid"])
    stop = asyncio.Event()
    started = time.monotonic()
    task = asyncio.create_task(closed_loop(live.session, live.url, images, clients, stop,
                                           timeout))
    await asyncio.sleep(kill_after)
    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()
    not_ready_seen = False
    while True:
        status, body = await live.readyz()
        if status != 200:
            not_ready_seen = True
        elif victim not in [w["pid"] for w in body["workers"]]:
            break
        if time.monotonic() - killed > 300:
            break
        await asyncio.sleep(POLL_S)
    back = time.monotonic() - killed
    await asyncio.sleep(max(0.0, duration - (time.monotonic() - started)))
    stop.set()
    results = await task
    after = await _pool(live)
    answered = _answered_ids(results)
    stored = await live.stored_ids()
    failed = [r for r in results if r.status != 200]
    during = [r for r in results if killed <= r.started <= killed + back]
    report = PhaseReport("worker kill -9")
    report.figures = {
        **summary(results), "failed_requests": len(failed),
        "failures": dict(Counter(f"{r.status} {r.error or ''}".strip() for r in failed)),
        "requests_started_while_recovering": len(during),
        "time_to_ready_s": round(back, 2),
        "worker_deaths": after["worker_deaths"] - before["worker_deaths"],
        "retried_jobs": after["retried_jobs"] - before["retried_jobs"],
        "answered_ids_missing_from_db": len(answered - stored.keys()),
    }
    report.checks = {
        "no failed requests (the killed worker's job retried)": not failed,
        "/readyz not ready while the worker was replaced": not_ready_seen,
        "ready again within 60 s": back < 60,
        "every answered record stored": not (answered - stored.keys()),
    }
    return report


# ---------------------------------------------------------------- PostgreSQL outage

async def postgres_outage(live: LiveInstance, images: Sequence[JpegImage], *, clients: int,
                          before: float, outage: float, after: float,
                          timeout: float) -> PhaseReport:
    """Stop PostgreSQL for ``outage`` seconds during a stream, then start it again."""
    assert live.session is not None
    stop = asyncio.Event()
    task = asyncio.create_task(closed_loop(live.session, live.url, images, clients, stop,
                                           timeout))
    await asyncio.sleep(before)
    await live.stop_postgres()
    stopped = time.monotonic()
    readiness: Counter[str] = Counter()
    max_spool = 0
    while time.monotonic() - stopped < outage:
        status, body = await live.readyz()
        readiness[f"{status} {body.get('status')}"] += 1
        max_spool = max(max_spool, body["spool"]["records"])
        await asyncio.sleep(0.5)
    await live.start_postgres()
    restarted = time.monotonic()
    drained_after = math.nan
    while time.monotonic() - restarted < 300:
        status, body = await live.readyz()
        if body["spool"]["entries"] == 0 and body["checks"].get("database") == "ok":
            drained_after = time.monotonic() - restarted
            break
        max_spool = max(max_spool, body["spool"]["records"])
        await asyncio.sleep(POLL_S)
    await asyncio.sleep(max(0.0, after - (time.monotonic() - restarted)))
    stop.set()
    results = await task
    for _ in range(300):  # records answered at the very end may still be replaying
        body = (await live.readyz())[1]
        if body["spool"]["entries"] == 0:
            break
        await asyncio.sleep(POLL_S)
    answered = _answered_ids(results)
    stored = await live.stored_ids()
    missing = answered - stored.keys()
    duplicates = [record_id for record_id, n in stored.items() if n > 1]
    during = [r for r in results if stopped <= r.started < restarted]
    failed = [r for r in results if r.status != 200]
    report = PhaseReport(f"PostgreSQL stopped {outage:g} s")
    report.figures = {
        **summary(results), "requests_during_outage": len(during),
        "answered_200_during_outage": sum(r.status == 200 for r in during),
        "failed_requests": len(failed),
        "failures": dict(Counter(f"{r.status} {r.error or ''}".strip() for r in failed)),
        "readyz_during_outage": dict(readiness), "max_spool_records": max_spool,
        "spool_drained_after_restart_s": round(drained_after, 2),
        "answered_ids": len(answered), "missing_from_db": len(missing),
        "duplicate_ids": len(duplicates),
    }
    report.checks = {
        "/detect kept answering (no failed requests)": not failed,
        "records were spooled during the outage": max_spool > 0,
        "spool replayed and removed after restart": not math.isnan(drained_after),
        "every answered id in the database": not missing,
        "no duplicates": not duplicates,
    }
    return report


# ---------------------------------------------------------------- overload

async def overload(live: LiveInstance, images: Sequence[JpegImage], *, capacity_rps: float,
                   factor: float, duration: float, timeout: float,
                   limit: int, workers: int, max_upload_bytes: int) -> PhaseReport:
    """Open-loop arrivals at ``factor`` x capacity for ``duration`` seconds."""
    assert live.session is not None
    samples: list[tuple[float, int]] = []
    stop = asyncio.Event()
    sampler = asyncio.create_task(_sample_rss(live, 1.0, stop, samples))
    rss_before = live.rss()
    results = await open_loop(live.session, live.url, images, capacity_rps * factor, duration,
                              timeout)
    stop.set()
    await sampler
    statuses = Counter(r.status for r in results)
    refused = [r for r in results if r.status == 503]
    ok = [r for r in results if r.status == 200]
    accepted_rps = len(ok) / duration
    # An accepted request waits at most for the ``limit - 1`` requests admitted before
    # it, served ``workers`` at a time: about (limit + workers) / throughput, with the
    # throughput seen during this phase (the rejected traffic costs CPU too).
    bound_s = (limit + workers) / max(accepted_rps, 1e-9)
    thirds: list[list[float]] = [[], [], []]  # latencies by arrival: does the wait grow?
    for r in ok:
        thirds[min(2, int(3 * (r.started - ok[0].started) / duration))].append(r.latency_s * 1e3)
    rss_peak = max(rss for _, rss in samples)
    rss_bound = rss_before + limit * max_upload_bytes
    report = PhaseReport(f"overload {factor:g}x capacity")
    report.figures = {
        **summary(results), "offered_rps": round(capacity_rps * factor, 1),
        "capacity_rps": round(capacity_rps, 2), "accepted_rps": round(accepted_rps, 2),
        "refused_503": len(refused),
        "refused_with_retry_after": sum(r.retry_after is not None for r in refused),
        "queue_bound_ms ((limit + workers) / accepted rps)": round(bound_s * 1e3, 1),
        "p99_ms_by_third": [round(percentile(t, 99), 1) if t else None for t in thirds],
        "rss_before_mib": _mib(rss_before), "rss_peak_mib": _mib(rss_peak),
        "rss_end_mib": _mib(samples[-1][1]),
        "rss_bound_mib (before + limit x max upload)": _mib(rss_bound),
    }
    p99 = report.figures["p99_ms"]
    report.checks = {
        "only 200 and 503 answers": set(statuses) <= {200, 503},
        "every 503 carries Retry-After": all(r.retry_after for r in refused),
        "p99 of accepted requests within 2x the queue bound":
            p99 is not None and p99 <= 2 * bound_s * 1e3,
        "RSS bounded": rss_peak <= rss_bound,
    }
    return report


# ---------------------------------------------------------------- hostile inputs

async def hostile(live: LiveInstance, *, count: int, seed: int,
                  concurrency: int) -> PhaseReport:
    """The generated corpus of hostile requests, ``concurrency`` at a time."""
    assert live.session is not None
    session = live.session
    before = await _pool(live)
    stored_before = await live.stored_ids()
    orphans_before = await live.images_without_records()
    requests = corpus.generate(count, seed)
    gate = asyncio.Semaphore(concurrency)

    async def one(request: corpus.HostileRequest) -> Result:
        async with gate:
            return await send_hostile(session, live.url, request)

    results = await asyncio.gather(*(one(request) for request in requests))
    after = await _pool(live)
    stored_after = await live.stored_ids()
    orphans = await live.images_without_records() - orphans_before
    answered = _answered_ids(results)
    new_rows = stored_after.keys() - stored_before.keys()
    per_kind: dict[str, Counter[str]] = defaultdict(Counter)
    for request, result in zip(requests, results, strict=True):
        per_kind[request.kind][str(result.status)] += 1
    server_errors = [(request.kind, request.path_qs[:80], result.status, result.error)
                     for request, result in zip(requests, results, strict=True)
                     if result.status >= 500 or result.status == 0]
    report = PhaseReport(f"hostile inputs ({count})")
    report.figures = {
        "requests": len(results),
        "statuses": dict(sorted(Counter(str(r.status) for r in results).items())),
        "per_kind": {kind: dict(sorted(c.items())) for kind, c in sorted(per_kind.items())},
        "5xx_or_no_answer": len(server_errors), "examples": server_errors[:5],
        "worker_deaths": after["worker_deaths"] - before["worker_deaths"],
        "records_answered": len(answered), "records_added": len(new_rows),
        "images_added_without_a_record": orphans,
    }
    report.checks = {
        "zero 5xx": not server_errors,
        "zero worker deaths": report.figures["worker_deaths"] == 0,
        "no half records (rows added == records answered)": new_rows == answered,
        "no image left without a record": orphans == 0,
    }
    return report


# ---------------------------------------------------------------- soak

async def soak(live: LiveInstance, images: Sequence[JpegImage], *, clients: int,
               duration: float, warmup: float, timeout: float) -> PhaseReport:
    """``duration`` seconds at capacity; RSS after ``warmup`` against RSS at the end."""
    assert live.session is not None
    samples: list[tuple[float, int]] = []
    stop = asyncio.Event()
    sampler = asyncio.create_task(_sample_rss(live, 5.0, stop, samples))
    stream_stop = asyncio.Event()
    task = asyncio.create_task(closed_loop(live.session, live.url, images, clients,
                                           stream_stop, timeout))
    await asyncio.sleep(duration)
    stream_stop.set()
    results = await task
    stop.set()
    await sampler
    settled = [rss for t, rss in samples if t >= warmup] or [rss for _, rss in samples]
    start = statistics.median(settled[:3])
    end = statistics.median(settled[-3:])
    growth = (end - start) / start
    failed = [r for r in results if r.status != 200]
    ok = [r for r in results if r.status == 200]
    report = PhaseReport(f"soak {duration:g} s at capacity")
    report.figures = {
        **summary(results), "rps": round(len(ok) / duration, 2), "errors": len(failed),
        "rss_after_warmup_mib": _mib(start), "rss_end_mib": _mib(end),
        "rss_growth_pct": round(100 * growth, 2),
        "rss_samples_mib": [_mib(rss) for _, rss in samples[:: max(1, len(samples) // 12)]],
    }
    report.checks = {"zero errors": not failed, "RSS growth under 5%": growth < 0.05}
    return report


# ---------------------------------------------------------------- database and disk faults

def _signal_all(pids: Sequence[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


async def _drained(live: LiveInstance, limit_s: float = 300.0) -> float:
    """Seconds until the spool is empty and the database answers (nan: not within
    ``limit_s``)."""
    started = time.monotonic()
    while time.monotonic() - started < limit_s:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            _, body = await live.readyz()
            if body["spool"]["entries"] == 0 and body["checks"].get("database") == "ok":
                return time.monotonic() - started
        await asyncio.sleep(POLL_S)
    return math.nan


async def _exactly_once(live: LiveInstance, results: Sequence[Result]) -> dict[str, int]:
    answered = _answered_ids(results)
    stored = await live.stored_ids()
    return {"answered_ids": len(answered), "missing_from_db": len(answered - stored.keys()),
            "duplicate_ids": sum(n > 1 for n in stored.values())}


async def hung_database(live: LiveInstance, images: Sequence[JpegImage], *, clients: int,
                        before: float, hang: float, after: float, write_timeout: float,
                        timeout: float) -> PhaseReport:
    """SIGSTOP every PostgreSQL process for ``hang`` seconds during a stream (the server
    hangs, its connections stay open), then SIGCONT."""
    assert live.session is not None
    stop = asyncio.Event()
    task = asyncio.create_task(closed_loop(live.session, live.url, images, clients, stop,
                                           timeout))
    await asyncio.sleep(before)
    pids = live.postgres_processes()
    _signal_all(pids, signal.SIGSTOP)
    stopped = time.monotonic()
    readiness: Counter[str] = Counter()
    try:
        while time.monotonic() - stopped < hang:
            status, body = await live.readyz()
            readiness[f"{status} {body['checks'].get('database')}"] += 1
            await asyncio.sleep(0.5)
    finally:
        _signal_all(pids, signal.SIGCONT)
    resumed = time.monotonic()
    drained_after = await _drained(live)
    await asyncio.sleep(max(0.0, after - (time.monotonic() - resumed)))
    stop.set()
    results = await task
    await _drained(live)
    in_progress = (await live.readyz())[1]["admission"]["in_progress"]
    # Normal: answered before the hang began. Caught: in flight at some time in it.
    normal = [r.latency_s for r in results
              if r.status == 200 and r.started + r.latency_s < stopped]
    caught = [r for r in results if r.started < resumed and r.started + r.latency_s > stopped]
    during = [r for r in results if stopped <= r.started < resumed]
    failed = [r for r in results if r.status != 200]
    # A request in the hang waits for two write deadlines at most (its images written
    # ahead, then its records), on top of its normal time.
    bound_s = 2 * write_timeout + (max(normal) if normal else 1.0)
    worst = max((r.latency_s for r in caught if r.status == 200), default=math.nan)
    report = PhaseReport(f"PostgreSQL hung (SIGSTOP) {hang:g} s")
    once = await _exactly_once(live, results)
    report.figures = {
        **summary(results), "server_processes_stopped": len(pids),
        "requests_in_flight_during_hang": len(caught),
        "requests_started_during_hang": len(during),
        "answered_200_during_hang": sum(r.status == 200 for r in during),
        "max_latency_in_flight_during_hang_ms": round(worst * 1e3, 1),
        "bound_ms (2 x write_timeout + max before the hang)": round(bound_s * 1e3, 1),
        "failures": dict(Counter(f"{r.status} {r.error or ''}".strip() for r in failed)),
        "readyz_during_hang": dict(readiness),
        "spool_drained_after_sigcont_s": round(drained_after, 2),
        "admission_in_progress_after": in_progress, **once,
    }
    report.checks = {
        "requests kept being answered during the hang": any(r.status == 200 for r in during),
        "no failed requests": not failed,
        "each answered within the write deadlines": not math.isnan(worst) and worst <= bound_s,
        "/readyz said the database is unavailable": any("unavailable" in k for k in readiness),
        "admission places released": in_progress == 0,
        "spool replayed after SIGCONT": not math.isnan(drained_after),
        "every answered id in the database, once":
            once["missing_from_db"] == 0 and once["duplicate_ids"] == 0,
    }
    return report


async def killed_database(live: LiveInstance, images: Sequence[JpegImage], *, clients: int,
                          before: float, after: float, timeout: float) -> PhaseReport:
    """kill -9 the postmaster of the service's own embedded PostgreSQL during a stream;
    the service restarts it. Time until it serves with the database again."""
    assert live.session is not None
    restarts_before = (await live.readyz())[1]["database"]["restarts"]
    stop = asyncio.Event()
    task = asyncio.create_task(closed_loop(live.session, live.url, images, clients, stop,
                                           timeout))
    await asyncio.sleep(before)
    postmaster = live.postgres.postmaster_pid()
    assert postmaster is not None
    os.kill(postmaster, signal.SIGKILL)
    killed = time.monotonic()
    steps: list[str] = []  # /readyz's database states, in order
    statuses: Counter[int] = Counter()
    back = math.nan
    while time.monotonic() - killed < 120:
        status, body = await live.readyz()
        statuses[status] += 1
        state = body["checks"].get("database")
        if not steps or steps[-1] != state:
            steps.append(state)
        if state == "ok" and body["spool"]["entries"] == 0 \
                and body["database"]["restarts"] > restarts_before:
            back = time.monotonic() - killed
            break
        await asyncio.sleep(POLL_S)
    await asyncio.sleep(after)
    stop.set()
    results = await task
    await _drained(live)
    failed = [r for r in results if r.status != 200]
    served_again = [r for r in results if r.status == 200 and r.started >= killed + back]
    once = await _exactly_once(live, results)
    report = PhaseReport("PostgreSQL killed (kill -9 of the postmaster)")
    report.figures = {
        **summary(results),
        "serving_with_the_database_again_after_s": round(back, 2),
        "readyz_database_steps": steps, "readyz_statuses": dict(statuses),
        "new_postmaster": live.postgres.postmaster_pid() != postmaster,
        "requests_after_recovery": len(served_again),
        "failures": dict(Counter(f"{r.status} {r.error or ''}".strip() for r in failed)),
        **once,
    }
    report.checks = {
        "serving with the database again within 30 s": back < 30,
        "/readyz showed the restart": bool({"restarting", "recovering"} & set(steps)),
        "/readyz stayed 200 (the spool took the records)": set(statuses) == {200},
        "no failed requests": not failed,
        "every answered id in the database, once":
            once["missing_from_db"] == 0 and once["duplicate_ids"] == 0,
    }
    return report


def _fill(path: Path, leave: int) -> None:
    """Fill the filesystem of ``path`` but for ``leave`` bytes, with ``path``."""
    stats = os.statvfs(path.parent)
    with open(path, "wb") as handle:
        handle.write(b"\0" * max(0, stats.f_bavail * stats.f_frsize - leave))


def _torn_frame(path: Path) -> int:
    """What a crash in the middle of an append on a full disk leaves: a frame header
    whose payload never came, then as much of it as fits (the disk full to the byte).
    Returns the bytes written."""
    torn = 0
    with contextlib.suppress(OSError), open(path, "ab", buffering=0) as handle:
        torn += handle.write(b"YSP1" + b"\xff" * 12)
        while True:
            torn += handle.write(b"\0" * 4096)
    return torn


async def full_disk(live: LiveInstance, images: Sequence[JpegImage], *, clients: int,
                    reserve_bytes: int, ready_timeout: float, timeout: float) -> PhaseReport:
    """The spool's small tmpfs filled but for a few MiB while the database hangs
    (SIGSTOP): records spool until the reserve is reached, then 503. Then a crash (kill
    -9) leaves a torn frame that fills the disk to the last byte, the database comes
    back, and the service starts again on that full disk."""
    assert live.session is not None
    session = live.session
    spool = live.spool_dir
    filler = spool / "filler.bin"  # not a spool file: left alone by the service
    await asyncio.to_thread(_fill, filler, reserve_bytes + (3 << 20))
    image = max(images, key=lambda i: len(i.data))  # one image: bytes per record are exact
    pids = live.postgres_processes()
    _signal_all(pids, signal.SIGSTOP)
    results: list[Result] = []
    readiness: Counter[str] = Counter()
    spool_bytes = spooled = 0
    full_ready: tuple[int, dict[str, Any]] | None = None
    started = time.monotonic()
    try:
        stop = asyncio.Event()
        task = asyncio.create_task(closed_loop(session, live.url, [image], clients, stop,
                                               timeout))
        while time.monotonic() - started < 120:
            await asyncio.sleep(0.5)
            status, body = await live.readyz()
            readiness[f"{status} {body['checks'].get('storage')}"] += 1
            spool_bytes, spooled = body["spool"]["bytes"], body["spool"]["records"]
            if status == 503 and body["checks"].get("storage") == "full":
                full_ready = (status, body)
                await asyncio.sleep(2.0)  # a few requests against the full disk
                break
        stop.set()
        results = await task
    finally:
        await live.crash_service()
        torn = await asyncio.to_thread(_torn_frame, spool / "records.spool")
        _signal_all(pids, signal.SIGCONT)
    full_to_the_byte = os.statvfs(spool).f_bavail == 0
    restarted = time.monotonic()
    live.start_service()
    try:
        await live.wait_ready(ready_timeout)
        ready_after = time.monotonic() - restarted
    except ServiceError as exc:  # a figure: the service did not come back
        ready_after = math.nan
        log_error = str(exc)[:300]
    else:
        log_error = None
    drained_after = await _drained(live)
    filler.unlink(missing_ok=True)
    after = [await post_image(session, live.url, images[i % len(images)], timeout)
             for i in range(4)]
    log_text = live.workdir.joinpath("service.log").read_text(errors="replace")
    logged = [line.split(": ", 1)[-1][:200] for line in log_text.splitlines()
              if "incomplete last frame" in line]
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in spool.iterdir()
             if p.name != "filler.bin"}
    refused = [r for r in results if r.status == 503]
    statuses = Counter(r.status for r in results)
    image_bytes = len(image.data)
    once = await _exactly_once(live, [*results, *after])
    report = PhaseReport("spool disk full (tmpfs)")
    report.figures = {
        **summary(results), "answered_200_before_full": statuses.get(200, 0),
        "refused_503": len(refused),
        "refused_codes": dict(Counter((r.error or "")[:60] for r in refused)),
        "spool_bytes_per_record": round(spool_bytes / spooled) if spooled else None,
        "image_bytes": image_bytes,
        "readyz_while_filling (status storage)": dict(readiness),
        "readyz_error_when_full": (full_ready[1].get("error") or {}).get("message")
        if full_ready else None,
        "torn_bytes_written_by_the_crash": torn, "disk_full_to_the_byte": full_to_the_byte,
        "restart_on_full_disk_ready_after_s": round(ready_after, 2),
        "restart_error": log_error, "spool_replayed_after_s": round(drained_after, 2),
        "log": logged[-1:] if logged else None, "spool_file_modes": modes,
        "after_statuses": [r.status for r in after], **once,
    }
    report.checks = {
        "503 storage_unavailable with Retry-After once full": bool(refused) and all(
            "storage_unavailable" in (r.error or "") and r.retry_after for r in refused),
        "only 200 and 503 answers": set(statuses) <= {200, 503},
        "/readyz 503 while the disk is full and the database away": full_ready is not None,
        "a spooled record costs its image + < 4 kB (raw bytes, not base64)":
            bool(spooled) and spool_bytes / spooled < image_bytes + 4096,
        "the service started again on the full disk": not math.isnan(ready_after),
        "the log says what was cut (incomplete last frame)": bool(logged),
        "every spool file 0600": all(m == "0o600" for m in modes.values()),
        "serving after": all(r.status == 200 for r in after),
        "every answered id in the database, once":
            once["missing_from_db"] == 0 and once["duplicate_ids"] == 0,
    }
    return report
