#!/usr/bin/env python3
"""Checkpoint save rate against the disk's own fsync'd write rate.

  python3 bench/checkpoint_rate.py [--weft build/weft] [--recipe bench/recipes/gpt2-124m.toml]
                                   [--dir DIR] [--repeats 3]

1. The disk: writes as many bytes as the checkpoint holds into DIR in 1 MiB
   chunks, fsyncs and closes (what `dd conv=fsync` measures); the best of
   --repeats runs.
2. weft: trains RECIPE for --saves steps with a checkpoint after each,
   synchronous (`checkpoint.async = false`), and reads each save's size, time
   and rate from the log line `checkpoint DIR (X MB in Y s, Z MB/s)`; the time
   counts collecting the tensors as well as writing and fsyncing both files.
   Also the process's peak RSS (ru_maxrss of the child) against the bytes of
   one copy of weights and optimizer state.

Prints a table; the target is a save rate of at least 70% of the disk's rate,
read on the later saves (their median). The first save of a process also
pays for the first touch of its host buffers, which on a virtual machine can
cost more than the writing (memory the guest never used before is slow to
fault in); it is shown on its own line.
Benchmarks print figures; nothing here asserts.
"""

import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time


def disk_rate(directory, nbytes, repeats):
    chunk = b"\0" * (1 << 20)
    best = 0.0
    for _ in range(repeats):
        path = os.path.join(directory, "disk-rate.bin")
        t0 = time.perf_counter()
        with open(path, "wb") as f:
            left = nbytes
            while left > 0:
                f.write(chunk[:min(left, len(chunk))])
                left -= len(chunk)
            f.flush()
            os.fsync(f.fileno())
        best = max(best, nbytes / 1e6 / (time.perf_counter() - t0))
        os.remove(path)
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weft", default="build/weft")
    ap.add_argument("--recipe", default="bench/recipes/gpt2-124m.toml")
    ap.add_argument("--dir", default=None, help="where to write (default: a temporary folder under runs/)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--saves", type=int, default=4)
    a = ap.parse_args()
    os.makedirs("runs", exist_ok=True)
    work = a.dir or tempfile.mkdtemp(prefix="bench-ckpt-", dir="runs")
    out_dir = os.path.join(work, "run")
    cmd = [a.weft, "train", a.recipe, "--set", f"run.steps={a.saves}", "--set", "checkpoint.interval=1", "--set",
           "checkpoint.async=false", "--set", f"run.out_dir={out_dir}", "--overwrite"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    res = subprocess.run(cmd, capture_output=True, text=True)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB -> MiB
    if res.returncode != 0:
        sys.exit(f"weft exited {res.returncode}:\n{res.stderr[-2000:]}")
    saves = [(float(m.group(1)), float(m.group(2)), float(m.group(3)))
             for m in re.finditer(r"checkpoint \S+ \(([\d.]+) MB in ([\d.]+) s, ([\d.]+) MB/s\)", res.stderr + res.stdout)]
    if not saves:
        sys.exit("no checkpoint line in weft's log")
    params = re.search(r"(\d+) parameters", res.stderr + res.stdout)
    n = int(params.group(1)) if params else 0
    mb = max(s[0] for s in saves)
    disk = disk_rate(work, int(mb * 1e6), a.repeats)
    later = sorted(s[2] for s in saves[1:]) or [saves[0][2]]
    steady = later[len(later) // 2]
    print(f"recipe {a.recipe}: {n} parameters, checkpoint {mb:.1f} MB (weights + 2 AdamW moments, fp32)")
    print(f"{'':28s} {'MB/s':>8s} {'of disk':>8s}")
    print(f"{'disk, fsync (best of %d)' % a.repeats:28s} {disk:8.0f} {'100%':>8s}")
    for i, (size, secs, rate) in enumerate(saves, 1):
        print(f"{'weft save %d (%.2f s)' % (i, secs):28s} {rate:8.0f} {100 * rate / disk:7.0f}%")
    one_copy_mb = 12 * n / (1 << 20)
    print(f"peak RSS of the run {peak_rss_mb:.0f} MiB; one host copy of weights + optimizer state would add "
          f"{one_copy_mb:.0f} MiB (before: {before})")
    print(f"saves 2 to {len(saves)} (median): {100 * steady / disk:.0f}% of the disk's fsync'd rate "
          f"(target: at least 70%); save 1: {100 * saves[0][2] / disk:.0f}%")
    if a.dir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
