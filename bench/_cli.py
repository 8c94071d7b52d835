"""What the benchmark scripts share and must run before numpy, torch or fusedrnn are imported (they
size their thread pools when they load): the machine's core count, the options every script takes
(repeats, warm-up, threads, JSON output) and putting the thread count into the environment."""

from __future__ import annotations

import argparse
import os


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def add_common(p: argparse.ArgumentParser, threads_help: str, json_help: str) -> None:
    p.add_argument("--repeats", type=int, default=5,
                   help="timed calls per variant; the median is reported (default: 5)")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed rounds before the timed ones (default: 1)")
    p.add_argument("--threads", type=int, default=cores(), help=threads_help)
    p.add_argument("--json", metavar="PATH", help=json_help)


def check_common(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.repeats < 1 or args.warmup < 0 or args.threads < 1:
        p.error("--repeats and --threads must be >= 1, --warmup >= 0")


def set_threads(n: int) -> None:
    """The thread count for OpenMP, OpenBLAS and MKL, before any of them loads."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)
