"""Training throughput: images/s of ``training.train`` as one process and as two under torchrun.

    python benchmarks/bench_train.py [--variant tiny] [--steps 30] [--batch-size 8]

Every configuration runs the real CLI (``python -m training.train`` or
``python -m torch.distributed.run --nproc-per-node N -m training.train``) in a fresh subprocess on
the same synthetic dataset (generated once into a temporary folder), with the same per-process
batch, and reports the throughput the loop itself measures (images seen by all ranks / seconds).
Ratios are against the first configuration (one process, all threads) of the same run.
Two processes on two cores use one torch thread each, so the comparison is "one process with two
threads" against "two processes with one thread each" on the same hardware.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd, env) -> dict:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=str(ROOT), env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    res = json.loads(lines[-1])
    res["wall_s"] = wall
    return res


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default="tiny")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--cores", type=int, default=os.cpu_count() or 2)
    args = p.parse_args()

    with tempfile.TemporaryDirectory(prefix="safire-bench-train-") as tmp:
        data = Path(tmp) / "data"
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        subprocess.run([sys.executable, "-m", "training.synth", "--out", str(data), "--n", str(args.samples),
                        "--sources", "1-4", "--seed", "5", "--quiet"], cwd=str(ROOT), env=env, check=True)
        common = ["--data", str(data), "--variant", args.variant, "--steps", str(args.steps),
                  "--batch-size", str(args.batch_size), "--workers", "0", "--log-every", str(args.steps),
                  "--val-every", "100000", "--save-every", "100000", "--device", "cpu", "--warmup-steps", "1"]
        configs = [
            ("1 process", 1, args.cores),
            ("1 process", 1, 1),
            (f"{args.cores} processes (torchrun, gloo)", args.cores, 1),
        ]
        rows = []
        for name, nproc, threads in configs:
            out = str(Path(tmp) / f"run-{nproc}-{threads}")
            cenv = dict(env, OMP_NUM_THREADS=str(threads))
            if nproc == 1:
                cmd = [sys.executable, "-m", "training.train", *common, "--out-dir", out, "--threads", str(threads)]
            else:
                cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
                       "--master-port", str(free_port()), "-m", "training.train", *common, "--out-dir", out,
                       "--threads", str(threads)]
            res = run(cmd, cenv)
            rows.append((name, nproc, threads, res))
            print(f"done: {name}, {threads} thread(s) per process", file=sys.stderr)

    base = rows[0][3]["images_per_second"]
    print(f"Training throughput, variant {args.variant}, {args.steps} steps, batch {args.batch_size} per process, "
          f"6 point prompts per image, {args.cores} cores")
    print()
    print("| configuration | threads per process | images/s | ratio vs first row | wall s |")
    print("|---|---|---|---|---|")
    for name, nproc, threads, res in rows:
        ips = res["images_per_second"]
        print(f"| {name} | {threads} | {ips:.2f} | {ips / base:.2f}x | {res['wall_s']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
