#!/usr/bin/env python3
"""A requeue loop under fire (docs/reliability.md), suite 'unit':

    test_requeue.py WEFT SOURCE_ROOT

`weft train gpt-tiny --resume` is started again and again, as a scheduler's
requeue loop would (`until weft train R --resume; do :; done`), while SIGTERM
(checkpoint, exit 0 with steps left: the loop sees a stopped run and starts it
again) and SIGKILL (nothing saved since the last checkpoint) are thrown at it
at fixed points, with 2 ranks as threads. The loop ends when a run finishes;
its metrics.jsonl must hold every step once, each loss equal bit for bit to an
uninterrupted run's. Prints one line per start and "N passed, M failed".
"""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

WEFT, SRC = sys.argv[1:3]
STEPS = 24
COMMON = ["train", os.path.join(SRC, "examples", "gpt-tiny.toml"), "--set", f"run.steps={STEPS}", "--set",
          "log.interval=1", "--set", "checkpoint.interval=3", "--set", "parallel.data=2"]
# What each start gets: after how many new metrics records, which signal (None: runs to the end).
PLAN = [(4, signal.SIGTERM), (5, signal.SIGKILL), (3, signal.SIGTERM), (4, signal.SIGKILL), (None, None)]


def records(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def main():
    passed = failed = 0
    with tempfile.TemporaryDirectory(prefix="weft-requeue-") as tmp:
        ref_dir, run_dir = os.path.join(tmp, "ref"), os.path.join(tmp, "run")
        subprocess.run([WEFT] + COMMON + ["--set", f"run.out_dir={ref_dir}"], check=True, capture_output=True)
        ref = {r["step"]: r["loss"] for r in records(os.path.join(ref_dir, "metrics.jsonl"))}
        metrics = os.path.join(run_dir, "metrics.jsonl")
        finished = False
        for start, (after, sig) in enumerate(PLAN * 3):  # the plan, then as many plain restarts as it takes
            before = len(records(metrics))
            p = subprocess.Popen([WEFT] + COMMON + ["--set", f"run.out_dir={run_dir}", "--resume"],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            if sig is not None and start < len(PLAN):
                deadline = time.monotonic() + 120
                while p.poll() is None and len(records(metrics)) < before + after and time.monotonic() < deadline:
                    time.sleep(0.05)
                if p.poll() is None:
                    p.send_signal(sig)
            out, _ = p.communicate(timeout=300)
            last = out.strip().splitlines()[-1] if out.strip() else ""
            print(f"start {start + 1}: {signal.Signals(sig).name if sig else 'no signal'} -> exit {p.returncode}: {last[:110]}")
            if p.returncode == 0 and "done:" in out:
                finished = True
                break
            if p.returncode not in (0, -signal.SIGKILL):
                print(f"FAIL - start {start + 1} ended with exit {p.returncode}:\n{out[-2000:]}")
                return 1
        got = records(metrics)
        steps = [r["step"] for r in got]
        ok = finished and steps == list(range(1, STEPS + 1))
        print(("ok - " if ok else "FAIL - ") + f"the loop finished with every step once ({len(steps)} records)")
        passed, failed = passed + ok, failed + (not ok)
        same = ok and all(r["loss"] == ref[r["step"]] for r in got)
        print(("ok - " if same else "FAIL - ") + "every loss equals the uninterrupted run's bit for bit")
        passed, failed = passed + same, failed + (not same)
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
