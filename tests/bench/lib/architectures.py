"""``bench_architectures``'s parts: one architecture's model trained and exported, its
in-process ceiling, its end-to-end rate and latency at half of it, its replica's memory, and
the headline figures that the architectures are compared by."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from shared.model import model_cost
from shared.runtimes import RuntimeName
from shared.zoo import BUILTIN_CNN
from tests.bench.lib.control import wait_ray_gone
from tests.bench.lib.e2e import bench_end_to_end
from tests.bench.lib.fixtures import Fixture, make_fixture, task_spec
from tests.bench.lib.procs import MemorySampler, bytes_to_mib
from tests.bench.lib.serving import POOL, SEED, TORCH_THREADS, bench_inprocess

ARCHITECTURES = (BUILTIN_CNN, "resnet18", "mobilenet_v3_small", "efficientnet_b0")
"""Measured by default, the baseline first."""
BASELINE = BUILTIN_CNN
"""Every ratio is to this architecture's figure in the same run."""
HALF = 0.5
"""The one paced stream: this share of the end-to-end saturation rate."""


@dataclass(frozen=True)
class Plan:
    """What is measured for every architecture."""

    runtime: RuntimeName
    train_examples: int
    seconds: float
    """Of each in-process run."""
    e2e_frames: int
    """Of the saturation burst; 0 leaves the end-to-end part (and the replica) out."""
    paced_s: float
    sample_ratio: float


@dataclass
class Measured:
    """One architecture's figures as they are taken, and its model (None when it failed)."""

    architecture: str
    work: Path
    figures: dict[str, Any]
    fx: Fixture | None = None

    @property
    def root(self) -> Path:
        """Its artifact store."""
        return self.work / self.architecture / "artifacts"


def measure_all(
    console: Console, architectures: list[str], plan: Plan, work: Path
) -> list[dict[str, Any]]:
    """The figures of each architecture, in three passes so that nothing measured in process
    overlaps Ray starting or stopping: (1) every model trained and stored under ``work``, its
    in-process ceiling taken; (2) end to end, one architecture after the other; (3) the
    in-process ceiling again, the better of (1) and (3) kept. A part that fails is named under
    ``error`` (the model) or ``end_to_end_error``; what was measured before it is kept."""
    measured = []
    for architecture in architectures:
        console.rule(f"{architecture}: model, in process")
        measured.append(prepare(console, architecture, plan, work))
    if plan.e2e_frames:
        for m in measured:
            if m.fx is not None:
                console.rule(f"{m.architecture}: end to end")
                end_to_end(console, m.fx, m.root, work / m.architecture, plan, m.figures)
        wait_ray_gone(console)
    console.rule("in process, again")
    for m in measured:
        if m.fx is not None:
            inprocess = m.figures["inprocess"]
            inprocess["after"] = bench_inprocess(
                console, m.fx, m.root, plan.seconds, f"{m.architecture}, again", m.fx.runtime
            )
            # Other work on a small machine only ever lowers a rate: the better is the ceiling.
            inprocess["frames_per_s"] = max(r["frames_per_s"] for r in inprocess.values())
        m.figures["figures"] = headline(m.figures)
    return [m.figures for m in measured]


def prepare(console: Console, architecture: str, plan: Plan, work: Path) -> Measured:
    """Pass (1) for one architecture: its model trained, exported and checked; its ceiling."""
    out: dict[str, Any] = {"architecture": architecture}
    m = Measured(architecture, work, out)
    out["model_cost"] = model_cost(task_spec(architecture)).model_dump()
    try:
        m.fx = make_fixture(
            console,
            m.root,
            plan.train_examples,
            f"bench-arch-{uuid.uuid4().hex[:6]}",
            plan.runtime,
            seed=SEED,
            pool=POOL,
            threads=TORCH_THREADS,
            architecture=architecture,
        )
    except Exception as exc:  # noqa: BLE001 - report it and measure the other architectures
        out["error"] = f"{type(exc).__name__}: {exc}"
        console.print(f"[red]{architecture}: the model failed:[/] {out['error']}")
        return m
    out["model"] = model_figures(m.fx)
    out["inprocess"] = {
        "before": bench_inprocess(console, m.fx, m.root, plan.seconds, architecture, m.fx.runtime)
    }
    return m


def model_figures(fx: Fixture) -> dict[str, Any]:
    """The trained model: its version, training times, artifact sizes and fresh accuracy."""
    return {
        "version": fx.ref.version,
        "input": f"{fx.spec.image_width}x{fx.spec.image_height}",
        "normalization": fx.spec.input_normalization,
        "train_examples": fx.train_examples,
        "epoch_s": round(fx.epoch_s, 3),
        "fit_s": round(fx.fit_s, 3),
        "train_s": round(fx.train_s, 2),
        "safetensors_bytes": fx.weights_bytes,
        "export": fx.export,
        "fresh_frames": fx.holdout,
    }


def end_to_end(
    console: Console, fx: Fixture, root: Path, work: Path, plan: Plan, out: dict[str, Any]
) -> None:
    """``bench_end_to_end`` with one paced stream at ``HALF`` of saturation, into
    ``out["end_to_end"]``; memory sampled meanwhile, the replica's peak into ``out["replica"]``."""
    sampler = MemorySampler()
    sampler.start()
    e2e: dict[str, Any] = {}
    out["end_to_end"] = e2e
    try:
        bench_end_to_end(
            console,
            fx,
            root,
            work,
            sampler,
            e2e,
            frames=plan.e2e_frames,
            paced_s=plan.paced_s,
            sample_ratio=plan.sample_ratio,
            levels=(HALF,),
        )
    except Exception as exc:  # noqa: BLE001 - report it, keep what was measured
        out["end_to_end_error"] = f"{type(exc).__name__}: {exc}"
        console.print(f"[red]end to end failed:[/] {out['end_to_end_error']}")
    finally:
        sampler.stop()
    out["memory"] = sampler.as_dict()
    peak = sampler.peak("c:replica")
    if peak is not None:
        out["replica"] = {
            "peak_rss_mib": round(bytes_to_mib(peak.rss_bytes), 1),
            "pss_mib": round(bytes_to_mib(peak.pss_bytes), 1) if peak.pss_bytes else None,
            "processes": peak.processes,
        }
        console.print(
            f"  replica: peak RSS {out['replica']['peak_rss_mib']:,.0f} MiB "
            f"(PSS at that peak {out['replica']['pss_mib'] or 0:,.0f} MiB)"
        )


def headline(entry: dict[str, Any]) -> dict[str, float | int | None]:
    """The figures the architectures are compared by (None: not measured)."""
    cost = entry.get("model_cost") or {}
    model = entry.get("model") or {}
    e2e = entry.get("end_to_end") or {}
    half = next((p for p in e2e.get("paced") or [] if p.get("load") == HALF), None)
    replica = entry.get("replica") or {}
    epoch_s, examples = model.get("epoch_s"), model.get("train_examples")
    return {
        "parameters_m": cost["parameters"] / 1e6 if cost.get("parameters") else None,
        "mflops_per_image": cost["flops_per_image"] / 1e6 if cost.get("flops_per_image") else None,
        "inprocess_frames_per_s": (entry.get("inprocess") or {}).get("frames_per_s"),
        "e2e_frames_per_s": (e2e.get("saturation") or {}).get("frames_per_s"),
        "p99_ms_at_half": half["record"]["p99_ms"] if half else None,
        "train_s_per_1000": epoch_s * 1000 / examples if epoch_s and examples else None,
        "safetensors_bytes": model.get("safetensors_bytes"),
        "export_bytes": (model.get("export") or {}).get("bytes"),
        "replica_rss_mib": replica.get("peak_rss_mib"),
        "replica_pss_mib": replica.get("pss_mib"),
    }
