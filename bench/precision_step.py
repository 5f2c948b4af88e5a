#!/usr/bin/env python3
"""CPU step time in each precision mode: the same recipe in fp32, bf16 and fp16.

For each configuration (gpt-tiny as examples/gpt-tiny.toml has it, and a
wider one: hidden 512, 4 layers, 8 heads, sequence 256, global batch 4) runs

  weft train RECIPE --set precision.plugin=MODE --set run.steps=S --set log.interval=1 ...

(mode bf16-g16 is bf16 with 16-bit gradients: precision.accumulate_grads_in_fp32=false)

and prints the median step_ms of the last M steps of metrics.jsonl, its ratio
to the fp32 step, and the peak activation bytes (mem_act_bytes). The modes
run in turn, `--repeats` rounds of them, so a change in the machine's load
touches every mode alike; the figure per mode is the median over the rounds.
Benchmarks print figures; nothing here asserts a time.

  python3 bench/precision_step.py [--weft build/weft] [--threads 2] [--steps 8] [--measure 5] [--repeats 2]
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import bench  # noqa: E402  (run_weft: one weft run, its metrics)
# mode -> its overrides
MODES = {
    "fp32": ["precision.plugin=fp32"],
    "bf16": ["precision.plugin=bf16"],
    "fp16": ["precision.plugin=fp16"],
    "bf16-g16": ["precision.plugin=bf16", "precision.accumulate_grads_in_fp32=false"],
}

# name -> overrides on examples/gpt-tiny.toml
CONFIGS = {
    "gpt-tiny": [],
    "wide (C 512, L 4, T 256)": ["model.hidden=512", "model.layers=4", "model.heads=8", "model.seq_length=256",
                                 "batch.global=4", "batch.micro=2"],
}


def run_weft(weft, overrides, mode, threads, steps, measure):
    """Median step_ms of the last `measure` steps and the peak activation bytes."""
    res = bench.run_weft(weft, os.path.join(ROOT, "examples", "gpt-tiny.toml"), threads, steps, measure,
                         extra=overrides + MODES[mode])
    return res["median_step_ms"], res["peak_bytes"]["act"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weft", default=os.path.join(ROOT, "build", "weft"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--measure", type=int, default=5, help="median over the last M steps")
    ap.add_argument("--repeats", type=int, default=2, help="rounds over the modes")
    ap.add_argument("--config", action="append", choices=sorted(CONFIGS), help="default: all")
    ap.add_argument("--out", help="also write the figures as JSON here")
    args = ap.parse_args()

    load = os.getloadavg()[0]
    print(f"# {datetime.date.today()}  {platform.machine()}  {os.cpu_count()} cpus  threads {args.threads}  "
          f"load average {load:.2f} at start  steps {args.steps}, median of last {args.measure}, "
          f"{args.repeats} rounds")
    print(f"{'config':<26} {'mode':<8} {'ms/step':>9} {'x fp32':>7} {'act peak MiB':>13}")
    results = {}
    for name in args.config or list(CONFIGS):
        times = {m: [] for m in MODES}
        act = {}
        for _ in range(args.repeats):
            for mode in MODES:
                ms, act[mode] = run_weft(args.weft, CONFIGS[name], mode, args.threads, args.steps, args.measure)
                times[mode].append(ms)
        med = {m: statistics.median(times[m]) for m in MODES}
        results[name] = {m: {"step_ms": med[m], "ratio": med[m] / med["fp32"], "runs_ms": times[m],
                             "mem_act_bytes": act[m]} for m in MODES}
        for m in MODES:
            print(f"{name:<26} {m:<8} {med[m]:9.1f} {med[m] / med['fp32']:7.2f} {act[m] / 2**20:13.2f}")
    print(f"# load average {os.getloadavg()[0]:.2f} at the end")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
