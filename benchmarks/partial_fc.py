"""Partial FC vs the full softmax it replaces: one training step of the classification term.

At 1,000,000 classes x 256 dims, batch 256, ArcFace (margin 0.3, scale 30), on this CPU with
2 torch threads. A step is: zero the gradients, loss forward, backward (to the embeddings and
the class table), optimizer step. The embeddings are a random (256, 256) leaf tensor standing
in for the backbone output; labels are uniform random classes, fresh each step.

* ``partial_fc``: :class:`mmmatch.losses.PartialFCLoss` with ``num_sampled`` = 25,600 (10%)
  classes per step (the batch's classes plus uniform negatives), centres in a sparse
  ``nn.Embedding``, plain ``torch.optim.SGD`` (sparse update of the sampled rows only).
* ``full_softmax``: :class:`mmmatch.losses.ClassificationLoss` (kind ``arcface``) over all
  classes: normalised (C, d) weights, (256, C) logits, cross-entropy, dense (C, d) gradient,
  the same ``SGD`` (no momentum, so neither variant has optimizer state).

Each variant runs in its own fresh subprocess. Memory counted (``*_mem_mb``): the child's peak
RSS (``ru_maxrss``) minus its RSS after importing torch and mmmatch, i.e. *including* the
(C, d) float32 class table (1,024 MB at 1M x 256) and its initialisation, the gradient,
logits, autograd buffers, the sampler's keys and the optimizer step. Times (``*_step_s``)
are the median of 10 steps after 2 warm-up steps. If the full softmax would not fit in the
available memory (or its child dies), it is measured at a tenth of the classes and scaled
linearly (everything it does is O(C)); ``partial_fc.full_softmax_estimated`` is then 1.

    python benchmarks/partial_fc.py [--out benchmarks/results/partial_fc.json]

No data is needed: ``--data-dir`` is accepted and unused.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import parser, write

CLASSES, DIM, BATCH, NUM_SAMPLED = 1_000_000, 256, 256, 25_600
WARMUP, STEPS, THREADS = 2, 10, 2
MARKER = "PARTIAL_FC_RESULT "


def _rss_peak_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child(variant: str, classes: int, dim: int, batch: int, num_sampled: int) -> dict:
    """Run one variant in this (fresh) process; return its peak memory and step times."""
    import torch

    from mmmatch.losses import ClassificationLoss, PartialFCLoss

    torch.set_num_threads(THREADS)
    baseline = _rss_peak_mb()
    torch.manual_seed(0)
    if variant == "partial":
        loss_fn: torch.nn.Module = PartialFCLoss(dim, classes, num_sampled=num_sampled,
                                                 kind="arcface", margin=0.3, scale=30.0, seed=0)
    else:
        loss_fn = ClassificationLoss(dim, classes, kind="arcface", margin=0.3, scale=30.0)
    opt = torch.optim.SGD(loss_fn.parameters(), lr=0.1)
    emb = torch.randn(batch, dim, requires_grad=True)
    labels = torch.randint(classes, (WARMUP + STEPS, batch))
    times = []
    for step in range(WARMUP + STEPS):
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        emb.grad = None
        loss = loss_fn(emb, labels[step])
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - start)
        if not torch.isfinite(loss):
            raise RuntimeError(f"{variant}: non-finite loss at step {step}")
    return {"mem_mb": _rss_peak_mb() - baseline, "step_s": statistics.median(times[WARMUP:]),
            "loss": float(loss.detach())}


def run_child(variant: str, classes: int, timeout: float = 1800) -> dict | None:
    """Run :func:`child` in a subprocess; ``None`` if it failed (e.g. killed for memory)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", variant,
           "--classes", str(classes)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"{variant}: timed out", flush=True)
        return None
    for line in proc.stdout.splitlines():
        if line.startswith(MARKER):
            result = json.loads(line[len(MARKER):])
            print(variant, classes, result, flush=True)
            return result
    print(f"{variant} ({classes} classes) failed with code {proc.returncode}:\n"
          f"{proc.stderr[-2000:]}", flush=True)
    return None


def available_mb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("inf")


def full_softmax_estimate_mb(classes: int, dim: int, batch: int) -> float:
    """Rough need of the full step: table, normalised copy, two (C, d) gradients, ~5 logits."""
    return 4 * (4 * classes * dim + 5 * batch * classes) / 2**20


def main() -> None:
    p = parser("partial_fc", __doc__.splitlines()[0])
    p.add_argument("--child", choices=["partial", "full"], help=argparse.SUPPRESS)
    p.add_argument("--classes", type=int, default=CLASSES, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        result = child(args.child, args.classes, DIM, BATCH, NUM_SAMPLED)
        print(MARKER + json.dumps(result), flush=True)
        return

    import torch

    torch.set_num_threads(THREADS)  # reported by write()'s machine line
    start = time.perf_counter()
    partial = run_child("partial", CLASSES)
    if partial is None:
        raise SystemExit("the Partial FC step failed; see above")
    need, have = full_softmax_estimate_mb(CLASSES, DIM, BATCH), available_mb()
    full = run_child("full", CLASSES) if need < 0.8 * have else None
    estimated = full is None
    if estimated:  # measure a tenth and scale: every part of the full step is O(C)
        print(f"full softmax needs ~{need:.0f} MB, {have:.0f} MB available (or it failed): "
              "measuring 1/10 of the classes and scaling", flush=True)
        small = run_child("full", CLASSES // 10)
        if small is None:
            raise SystemExit("the full-softmax step failed even at 1/10 of the classes")
        full = {"mem_mb": small["mem_mb"] * 10, "step_s": small["step_s"] * 10}
    results = {
        "partial_fc.classes": float(CLASSES),
        "partial_fc.dim": float(DIM),
        "partial_fc.batch": float(BATCH),
        "partial_fc.num_sampled": float(NUM_SAMPLED),
        "partial_fc.table_mb": CLASSES * DIM * 4 / 2**20,
        "partial_fc.peak_mem_mb": partial["mem_mb"],
        "partial_fc.step_s": partial["step_s"],
        "partial_fc.full_softmax_mem_mb": full["mem_mb"],
        "partial_fc.full_softmax_step_s": full["step_s"],
        "partial_fc.full_softmax_estimated": float(estimated),
        "partial_fc.mem_ratio": full["mem_mb"] / partial["mem_mb"],
        "partial_fc.speedup": full["step_s"] / partial["step_s"],
        "partial_fc.total_s": time.perf_counter() - start,
    }
    write(results, args.out)


if __name__ == "__main__":
    main()
