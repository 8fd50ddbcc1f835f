"""``bench_serving``'s parts (a) in process and (b) through Ray Serve's handle, the figures
that compare them with (c) (``tests.bench.lib.e2e``), and its tables."""

from __future__ import annotations

import logging
import os
import resource
import time
from collections import deque
from pathlib import Path
from typing import Any, get_args

import numpy as np
import numpy.typing as npt
import torch
from rich.console import Console

from services.serving.core import ModelRef, ServingCore
from services.serving.settings import ServingSettings
from shared.artifacts import ArtifactStore
from shared.runtimes import RuntimeName
from shared.settings import ArtifactSettings
from tests.bench.lib.control import BenchError, wait_ray_gone
from tests.bench.lib.fixtures import Fixture
from tests.bench.lib.measure import batches_of, timed_calls
from tests.bench.lib.procs import (
    CPU_GROUPS,
    SAMPLE_EVERY_S,
    MemorySampler,
    Peak,
    bytes_to_mib,
)
from tests.bench.lib.report import fmt_rate, fmt_ratio
from tests.integration.helpers import free_port

TARGET_RATIO = 0.75
"""Target: end-to-end saturation rate at least this share of the in-process rate (c/a)."""
TARGET_P99_MS = 100.0
"""Target: p99 publish-to-prediction latency (to the prediction record's Kafka timestamp) at
half the saturation rate."""
TARGET_LOAD = 0.5
"""The load level (share of the saturation rate) the latency target is taken at."""
TARGET_CPU_MS = 0.6
"""Target: CPU ms a frame of the stack (``procs.STACK``) at saturation."""
LOW_LOAD = 0.25
"""The load level whose CPU a frame is compared with saturation's."""
TARGET_LOW_LOAD_OVER_SATURATION = 1.5
"""Target: the stack's CPU a frame at ``LOW_LOAD`` at most this many times its CPU a frame at
saturation."""
LOAD_LEVELS = (0.25, 0.5, 0.9)
"""Paced streams, as shares of (c)'s saturation rate, run one after the other."""
RUNTIMES: tuple[RuntimeName, ...] = get_args(RuntimeName)

BATCH = 128
TORCH_THREADS = 2
REPLICA_CPUS = 1.0
SEED = 23
POOL = 256
"""Distinct rendered frames reused for every part (batches and PNG payloads)."""


# --- (a) in process -----------------------------------------------------------------------


def bench_inprocess(
    console: Console, fx: Fixture, root: Path, seconds: float, when: str, runtime: RuntimeName
) -> dict[str, Any]:
    """``ServingCore.probabilities`` with ``runtime`` on batches of ``BATCH`` for ``seconds``,
    and on one frame alone."""
    label = "(a)" if runtime == fx.runtime else "(a')"
    console.print(
        f"{label} in process, {runtime} ({when}): ServingCore.probabilities, batches of {BATCH}, "
        f"{TORCH_THREADS} threads, {seconds:g} s"
    )
    torch.set_num_threads(TORCH_THREADS)
    core = ServingCore(ArtifactStore(root), runtime=runtime, threads=TORCH_THREADS)
    if core.model(fx.ref)[0].name != runtime:
        raise BenchError(f"the serving core does not run {runtime} with this model")
    out = timed_calls(
        lambda b: core.probabilities(fx.ref, b), batches_of(fx.pixels, BATCH), seconds
    )
    single = timed_calls(lambda b: core.probabilities(fx.ref, b), [fx.pixels[:1]], 1.0)
    out["single_frame_ms_median"] = single["batch_ms_median"]
    console.print(
        f"  {out['frames_per_s']:,.0f} frames/s (batch median {out['batch_ms_median']:.1f} ms, "
        f"p95 {out['batch_ms_p95']:.1f} ms); one frame alone {single['batch_ms_median']:.1f} ms"
    )
    return out


def measured_runtimes(fx: Fixture) -> dict[RuntimeName, str]:
    """The runtimes (a) measures, by the results key each goes to: the fixture's (``inprocess``)
    and eager beside it (``inprocess_eager``)."""
    if fx.runtime == "eager":
        return {"eager": "inprocess"}
    return {fx.runtime: "inprocess", "eager": "inprocess_eager"}


def first_batch_references(
    fx: Fixture, root: Path, runtimes: list[RuntimeName]
) -> dict[str, npt.NDArray[np.float32]]:
    """The in-process probabilities of the first batch, by runtime: what (b) compares with."""
    first = batches_of(fx.pixels, BATCH)[0]
    return {
        name: ServingCore(ArtifactStore(root), runtime=name, threads=TORCH_THREADS).probabilities(
            fx.ref, first
        )
        for name in runtimes
    }


# --- (b) Ray Serve through its handle -----------------------------------------------------


def serving_settings(root: Path, model_name: str, runtime: RuntimeName) -> ServingSettings:
    return ServingSettings(
        model_name=model_name,
        runtime=runtime,
        min_replicas=1,
        max_replicas=1,
        replica_cpus=REPLICA_CPUS,
        torch_threads=TORCH_THREADS,
        artifacts=ArtifactSettings(root=root),
    )


def bench_ray(
    console: Console,
    fx: Fixture,
    root: Path,
    seconds: float,
    sampler: MemorySampler,
    references: dict[str, npt.NDArray[np.float32]],
) -> dict[str, Any]:
    """A local Ray in this process and the serving application on it, called through its
    handle. ``references``: the in-process probabilities of the first batch, by runtime (the
    one measured, and eager). Ray is shut down at the end."""
    import ray
    from ray import serve

    from services.serving.ray_app import APP_NAME, RayBackend, build_app

    settings = serving_settings(root, fx.ref.model_name, fx.runtime)
    console.print(
        f"(b) Ray Serve: local Ray in this process, 1 replica ({REPLICA_CPUS:g} CPU, "
        f"{TORCH_THREADS} threads, runtime {settings.runtime}), called through the handle"
    )
    os.environ.pop("RAY_ADDRESS", None)
    sampler.phase, sampler.driver = "b", os.getpid()
    out: dict[str, Any] = {}
    try:
        start = time.perf_counter()
        # "local": a Ray of its own, as serving starts one; never a cluster left behind by
        # another run (Ray's default joins the one named in /tmp/ray/ray_current_cluster).
        ray.init(
            address="local",
            object_store_memory=settings.object_store_mb * 2**20,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
        out["ray_init_s"] = round(time.perf_counter() - start, 2)
        start = time.perf_counter()
        serve.start(http_options={"host": "127.0.0.1", "port": free_port()})
        handle = serve.run(build_app(settings), name=APP_NAME, route_prefix="/")
        out["deploy_s"] = round(time.perf_counter() - start, 2)
        console.print(
            f"  Ray started in {out['ray_init_s']:.1f} s, application deployed in "
            f"{out['deploy_s']:.1f} s"
        )
        backend = RayBackend(handle, settings.call_timeout_s, owns_cluster=True)
        batches = batches_of(fx.pixels, BATCH)
        first = backend.submit(fx.ref, batches[0]).result()
        out["replica_max_abs_diff"] = _check_replica(console, fx, first, references)
        sequential = timed_calls(lambda b: backend.submit(fx.ref, b).result(), batches, seconds)
        single = timed_calls(lambda b: backend.submit(fx.ref, b).result(), [fx.pixels[:1]], 1.0)
        sequential["single_frame_ms_median"] = single["batch_ms_median"]
        console.print(
            f"  one call at a time: {sequential['frames_per_s']:,.0f} frames/s "
            f"(batch median {sequential['batch_ms_median']:.1f} ms); one frame alone "
            f"{single['batch_ms_median']:.1f} ms"
        )
        out["sequential"] = sequential
        out["two_in_flight"] = two_in_flight(handle, fx.ref, batches, seconds, settings)
        console.print(
            f"  two calls in flight: {out['two_in_flight']['frames_per_s']:,.0f} frames/s"
        )
        sampler.sample()
    finally:
        try:
            serve.shutdown()  # type: ignore[no-untyped-call]
        finally:
            ray.shutdown()
            sampler.phase, sampler.driver = "between", None
            wait_ray_gone(console)
    return out


def _check_replica(
    console: Console,
    fx: Fixture,
    first: npt.NDArray[np.float32],
    references: dict[str, npt.NDArray[np.float32]],
) -> dict[str, float]:
    """The replica's first answer against each in-process runtime's (max |dp|); BenchError
    when it differs from the runtime measured."""
    diffs = {
        name: float(np.abs(first.astype(np.float64) - ref).max())
        if ref.shape == first.shape
        else float("inf")
        for name, ref in references.items()
    }
    if diffs[fx.runtime] > 1e-5:
        raise BenchError(
            f"the Ray replica's probabilities differ from the in-process {fx.runtime} ones "
            f"(max |dp| {diffs[fx.runtime]:.1e})"
        )
    console.print(
        "  the replica's first batch against in process: "
        + ", ".join(f"{name} max |dp| {d:.1e}" for name, d in diffs.items())
    )
    if fx.runtime != "eager" and diffs["eager"] < diffs[fx.runtime]:
        console.print(
            f"  [yellow]note:[/] the replica's probabilities are closer to eager's than to "
            f"{fx.runtime}'s: it may not run {fx.runtime}"
        )
    return diffs


def two_in_flight(
    handle: Any,
    ref: ModelRef,
    batches: list[npt.NDArray[np.uint8]],
    seconds: float,
    settings: ServingSettings,
) -> dict[str, Any]:
    pending: deque[Any] = deque()
    frames, calls, i = 0, 0, 0
    start = time.perf_counter()
    while True:
        while len(pending) < 2:
            pending.append(handle.predict.remote(batches[i % len(batches)], ref))
            i += 1
        pending.popleft().result(timeout_s=settings.call_timeout_s)
        frames += BATCH
        calls += 1
        if time.perf_counter() - start >= seconds and calls >= 10:
            break
    for resp in pending:
        resp.result(timeout_s=settings.call_timeout_s)
    total = time.perf_counter() - start
    frames += BATCH * len(pending)
    return {"frames": frames, "seconds": round(total, 3), "frames_per_s": round(frames / total, 1)}


# --- figures ------------------------------------------------------------------------------


def ratios(results: dict[str, Any]) -> dict[str, float | None]:
    """Each rate over (a)'s."""
    a = (results.get("inprocess") or {}).get("frames_per_s")
    a_eager = (results.get("inprocess_eager") or {}).get("frames_per_s")
    b = ((results.get("ray") or {}).get("sequential") or {}).get("frames_per_s")
    b2 = ((results.get("ray") or {}).get("two_in_flight") or {}).get("frames_per_s")
    c = ((results.get("end_to_end") or {}).get("saturation") or {}).get("frames_per_s")
    return {
        "a_eager_over_a": round(a_eager / a, 3) if a and a_eager else None,
        "b_over_a": round(b / a, 3) if a and b else None,
        "b2_over_a": round(b2 / a, 3) if a and b2 else None,
        "c_over_a": round(c / a, 3) if a and c else None,
    }


def at_target_load(results: dict[str, Any]) -> dict[str, Any] | None:
    paced = (results.get("end_to_end") or {}).get("paced") or []
    return next((p for p in paced if p["load"] == TARGET_LOAD), None)


def stack_cpu_ms(results: dict[str, Any]) -> dict[str, float | None]:
    """The stack's CPU ms a frame at saturation and at ``LOW_LOAD``, and their ratio (None
    where a part was not measured)."""
    cpu = (results.get("end_to_end") or {}).get("cpu") or {}

    def per_frame(phase: str) -> float | None:
        value = (cpu.get(phase) or {}).get("stack", {}).get("ms_per_frame")
        return float(value) if value is not None else None

    sat, low = per_frame("saturation"), per_frame(f"pace{round(LOW_LOAD * 100)}")
    return {
        "saturation": sat,
        "low_load": low,
        "low_over_saturation": round(low / sat, 2) if sat and low is not None else None,
    }


def targets(results: dict[str, Any]) -> dict[str, Any]:
    """Whether the ratio, latency and CPU targets were met (None: not measured)."""
    c_over_a = results["ratios"]["c_over_a"]
    paced = at_target_load(results)
    stack = stack_cpu_ms(results)
    low = stack["low_over_saturation"]
    return {
        "ratio": None if c_over_a is None else c_over_a >= TARGET_RATIO,
        "p99": None if not paced else paced["record"]["p99_ms"] <= TARGET_P99_MS,
        "cpu_ms": None if stack["saturation"] is None else stack["saturation"] <= TARGET_CPU_MS,
        "low_load_cpu": None if low is None else low <= TARGET_LOW_LOAD_OVER_SATURATION,
        "stack_cpu_ms": stack,
        "cpu_ms_max": TARGET_CPU_MS,
        "low_load": LOW_LOAD,
        "low_over_saturation_max": TARGET_LOW_LOAD_OVER_SATURATION,
        "c_over_a_min": TARGET_RATIO,
        "p99_ms_max": TARGET_P99_MS,
        "p99_load": TARGET_LOAD,
        "p99_measure": "Kafka timestamp of the prediction record - FrameRaw.captured_at",
    }


def complete(results: dict[str, Any], settings: dict[str, Any], sampler: MemorySampler) -> None:
    """Add the ratios, the settings, the targets and the memory peaks to ``results``."""
    results["ratios"] = ratios(results)
    results["settings"] = settings
    results["targets"] = targets(results)
    results["bench_peak_rss_mib"] = round(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
    )
    results["memory"] = sampler.as_dict()


# --- tables -------------------------------------------------------------------------------


def peak_row(label: str, peak: Peak | None) -> str:
    if peak is None:
        return f"| {label} | n/a | n/a | 0 |"
    pss = f"{bytes_to_mib(peak.pss_bytes):,.0f}" if peak.pss_bytes else "-"
    return f"| {label} | {bytes_to_mib(peak.rss_bytes):,.0f} | {pss} | {peak.processes} |"


def inprocess_detail(part: dict[str, Any]) -> str:
    runs = [r for r in (part.get("before"), part.get("after")) if r]
    if not runs:
        return ""
    best = max(runs, key=lambda r: r["frames_per_s"])
    return (
        "best of "
        + ", ".join(f"{r['frames_per_s']:,.0f}" for r in runs)
        + f"; batch median {best.get('batch_ms_median', 'n/a')} ms, "
        f"1 frame alone {best.get('single_frame_ms_median', 'n/a')} ms"
    )


def throughput_rows(results: dict[str, Any]) -> list[str]:
    runtime = results["settings"]["runtime"]
    a = results.get("inprocess") or {}
    a_eager = results.get("inprocess_eager") or {}
    b = results.get("ray") or {}
    c = results.get("end_to_end") or {}
    ratio = results["ratios"]
    seq = b.get("sequential") or {}
    two = b.get("two_in_flight") or {}
    sat = c.get("saturation") or {}
    rows = [
        f"| (a) in process, {runtime}: ServingCore.probabilities "
        f"| {fmt_rate(a.get('frames_per_s'))} | {'1.00' if a else 'n/a'} "
        f"| {inprocess_detail(a)} |",
    ]
    if runtime != "eager":
        rows.append(
            f"| (a') in process, eager | {fmt_rate(a_eager.get('frames_per_s'))} "
            f"| {fmt_ratio(ratio.get('a_eager_over_a'))} | {inprocess_detail(a_eager)} |"
        )
    rows += [
        f"| (b) Ray Serve handle, 1 replica ({REPLICA_CPUS:g} CPU), one call at a time "
        f"| {fmt_rate(seq.get('frames_per_s'))} | {fmt_ratio(ratio.get('b_over_a'))} "
        f"| batch median {seq.get('batch_ms_median', 'n/a')} ms, "
        f"1 frame alone {seq.get('single_frame_ms_median', 'n/a')} ms |",
        f"| (b') Ray Serve handle, two calls in flight | {fmt_rate(two.get('frames_per_s'))} "
        f"| {fmt_ratio(ratio.get('b2_over_a'))} | |",
        f"| (c) end to end: frames.raw to predictions "
        f"| {fmt_rate(sat.get('frames_per_s'))} | {fmt_ratio(ratio.get('c_over_a'))} "
        f"| {sat.get('predictions', 'n/a')} PNG frames, {sat.get('model_calls', 'n/a')} model "
        f"calls (mean batch {sat.get('mean_batch', 'n/a')}); ingest's pace "
        f"{fmt_rate(sat.get('ingest_frames_per_s'))}/s |",
    ]
    return rows


def latency_rows(paced: list[dict[str, Any]]) -> list[str]:
    rows = [
        "| load | offered frames/s | frames | mean batch | to served_at p50 ms | p95 ms | p99 ms "
        "| to prediction record p50 ms | p95 ms | p99 ms |",
        "|:---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in paced:
        served, record = p["served"], p["record"]
        rows.append(
            f"| {p['load']:.0%} of (c) | {p['rate_per_s']:,.0f} | {p['frames']:,} "
            f"| {p['mean_batch']:.1f} | {served['p50_ms']:,.1f} | {served['p95_ms']:,.1f} "
            f"| {served['p99_ms']:,.1f} | {record['p50_ms']:,.1f} | {record['p95_ms']:,.1f} "
            f"| {record['p99_ms']:,.1f} |"
        )
    return rows


RAY_GROUPS = ("replica", "ray")
"""Rows left out of the CPU table when no process of theirs ran (serving's ``local`` backend)."""


def cpu_rows(cpu: dict[str, Any]) -> list[str]:
    parts = list(cpu.items())
    header = "| process |"
    for name, part in parts:
        header += f" {name}: cores ({part.get('wall_s', 0):.1f} s) | {name}: CPU ms per frame |"
    rows = [header, "|:---|" + "---:|---:|" * len(parts)]
    labels = {
        **CPU_GROUPS,
        "other": "rest of the machine (kernel, other work)",
        "stack": "**the stack** (Kafka, Redis, ingest, serving, its Ray)",
        "machine": "**whole machine**",
    }
    for group, label in labels.items():
        if group in RAY_GROUPS and not any((p.get(group) or {}).get("cpu_s") for _, p in parts):
            continue
        cells = []
        for _, part in parts:
            g = part.get(group) or {}
            cores, per = g.get("cores"), g.get("ms_per_frame")
            cells += [
                f"{cores:.2f}" if cores is not None else "n/a",
                f"{per:.2f}" if per is not None else "n/a",
            ]
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return rows


def _paced_lines(paced: list[dict[str, Any]]) -> list[str]:
    if not paced:
        return ["not measured"]
    return [
        *latency_rows(paced),
        "",
        "Each level ran "
        + ", ".join(f"{p['seconds']:.1f} s" for p in paced)
        + "; the publisher was at most "
        + ", ".join(f"{p['max_behind_ms']:.0f} ms" for p in paced)
        + " behind its schedule.",
    ]


def markdown(results: dict[str, Any], sampler: MemorySampler) -> str:
    c = results.get("end_to_end") or {}
    runtime = results["settings"]["runtime"]
    lines = [
        f"### Serving throughput ({runtime} runtime, batches of {BATCH} 64x64 frames, "
        f"{TORCH_THREADS} threads)",
        "",
        "| path | frames/s | ratio to (a) | detail |",
        "|:---|---:|---:|:---|",
        *throughput_rows(results),
    ]
    for key, label in (("ray", "(b)"), ("end_to_end", "(c)")):
        if results.get(f"{key}_error"):
            lines.append(f"\n{label} failed: {results[f'{key}_error']}")
    lines += [
        "",
        "### Latency from publish (captured_at) to prediction, paced at shares of (c)'s rate",
        "",
        *_paced_lines(c.get("paced") or []),
    ]
    if c.get("cpu"):
        lines += ["", "### CPU during (c) (2 cores = 2.00)", "", *cpu_rows(c["cpu"])]
    lines += [
        "",
        f"### Peak resident memory (sampled every {SAMPLE_EVERY_S:g} s, {sampler.samples} samples)",
        "",
        "| processes | peak RSS MiB (sum) | PSS MiB at that peak | processes |",
        "|:---|---:|---:|---:|",
        peak_row("(b) Ray: ray::*, raylet, gcs_server", sampler.peak("b:ray")),
        peak_row("(b) Ray: every process Ray started", sampler.peak("b:ray_all")),
        peak_row("(c) Ray: ray::*, raylet, gcs_server", sampler.peak("c:ray")),
        peak_row("(c) Ray: every process below serving", sampler.peak("c:ray_all")),
        peak_row("(c) Ray Serve replica", sampler.peak("c:replica")),
        peak_row("(c) serving process (Kafka ingress, Ray driver)", sampler.peak("c:serving")),
        peak_row("(c) ingest process", sampler.peak("c:ingest")),
        f"| this benchmark process (ru_maxrss) | {results['bench_peak_rss_mib']:,.0f} | - | 1 |",
    ]
    return "\n".join(lines)


def target_lines(results: dict[str, Any]) -> list[str]:
    runtime = results["settings"]["runtime"]
    ratio = results["ratios"].get("c_over_a")
    p = at_target_load(results)
    p99 = p["record"]["p99_ms"] if p else None
    met = results["targets"]
    return [
        f"target: end to end >= {TARGET_RATIO} of in process, {runtime} (c/a): "
        + ("not measured" if ratio is None else f"{'yes' if met['ratio'] else 'no'} ({ratio:.2f})"),
        f"target: p99 publish to prediction record <= {TARGET_P99_MS:.0f} ms at "
        f"{TARGET_LOAD:.0%} of saturation: "
        + ("not measured" if p99 is None else f"{'yes' if met['p99'] else 'no'} ({p99:.0f} ms)"),
        *cpu_target_lines(met),
    ]


def cpu_target_lines(met: dict[str, Any]) -> list[str]:
    """The CPU targets, for the stack (Kafka, Redis, ingest, serving and its Ray: what a
    deployment runs; this benchmark's publisher and reader stand for cameras and consumers)."""
    stack = met.get("stack_cpu_ms") or {}
    sat, low = stack.get("saturation"), stack.get("low_load")
    ratio = stack.get("low_over_saturation")
    return [
        f"target: the stack's CPU a frame at saturation <= {TARGET_CPU_MS} ms: "
        + ("not measured" if sat is None else f"{'yes' if met['cpu_ms'] else 'no'} ({sat:.2f} ms)"),
        f"target: the stack's CPU a frame at {LOW_LOAD:.0%} of saturation <= "
        f"{TARGET_LOW_LOAD_OVER_SATURATION} x at saturation: "
        + (
            "not measured"
            if ratio is None
            else f"{'yes' if met['low_load_cpu'] else 'no'} ({low:.2f} ms against {sat:.2f}: "
            f"{ratio:.2f} x)"
        ),
    ]
