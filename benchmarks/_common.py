"""Shared helpers of the benchmark scripts: arguments, provenance, JSON output."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # so that `data_prep` imports from a clean checkout
    sys.path.insert(0, str(ROOT))


def parser(name: str, description: str) -> argparse.ArgumentParser:
    """The arguments every benchmark takes: ``--data-dir`` and ``--out``."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "datasets"),
                   help="shared datasets folder (default: ../shared/datasets)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / f"{name}.json"),
                   help="output JSON (default: benchmarks/results/%(prog)s.json)")
    return p


def commit() -> str:
    """The checked-out commit, with ``-dirty`` when the tree has changes."""
    try:
        head = subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                       text=True, stderr=subprocess.DEVNULL).strip()
        status = subprocess.check_output(
            ["git", "status", "--porcelain", "--", "mmmatch", "benchmarks", "data_prep",
             ":(exclude)benchmarks/results"], cwd=ROOT, text=True, stderr=subprocess.DEVNULL)
        return head + ("-dirty" if status.strip() else "")  # untracked code counts too
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> str:
    """CPU model, core count, memory and torch threads, in one line."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB, {gpu}, "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads)")


def write(results: dict, out: str | Path) -> None:
    """Write the flat JSON object (metric -> number, plus commit and machine)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    results = {"commit": commit(), "machine": machine(), **results}
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
