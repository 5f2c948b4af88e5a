#!/usr/bin/env python3
"""CPU training throughput: weft vs a tuned PyTorch eager GPT-2 vs the OpenBLAS
sgemm ceiling, all at the same thread count, in one run on one machine.

For each recipe (default: bench/recipes/gpt-small.toml and gpt2-124m.toml):

  weft     `weft train RECIPE --set run.steps=S --set log.interval=1 ...`;
           median tokens_per_s / step_ms of the last M steps of metrics.jsonl,
           peak bytes by category (metrics) and the process's peak RSS.
  torch    bench/torch_gpt2.py with the same L, C, H, T, B and vocabulary
           width Vp, fp32, AdamW, torch.set_num_threads(threads), under
           OMP_WAIT_POLICY=PASSIVE and (when Debian's libjemalloc2 is
           installed) LD_PRELOAD=libjemalloc.so.2 with
           MALLOC_CONF=dirty_decay_ms:-1,muzzy_decay_ms:-1; same S and M.
  ceiling  bench/sgemm_ceiling.py: OpenBLAS sgemm GFLOP/s at the thread count
           (large square products; also the step's own GEMM list).

Achieved GFLOP/s = tokens/s x FLOPs per token, FLOPs per token = 6 N (N =
parameters without the position table) + 6 L T C (causal attention, forward
and backward), as weft's model summary counts them. OPENBLAS_CORETYPE is left
as the environment sets it and reported.

Prints a table and writes JSON (--out). Benchmarks print figures; nothing here
asserts a time.
  python3 bench/bench.py [--weft build/weft] [--threads 2] [--steps 12] [--measure 8] [--repeats 1]
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

try:
    import tomllib
except ImportError:  # Python < 3.11
    tomllib = None

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
JEMALLOC = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"


def read_recipe(path):
    if tomllib is None:
        raise SystemExit("bench.py needs Python 3.11 (tomllib) to read recipes")
    with open(path, "rb") as f:
        r = tomllib.load(f)
    m = r["model"]
    pad = int(m.get("vocab_pad_multiple", 64))
    vocab = int(m.get("vocab_size", 0)) or 257  # 0: the byte tokenizer's 257
    vp = (vocab + pad - 1) // pad * pad
    return {"name": r["run"]["name"], "L": int(m["layers"]), "C": int(m["hidden"]), "H": int(m["heads"]),
            "T": int(m["seq_length"]), "B": int(r["batch"]["global"]), "Vp": vp}


def flops_per_token(cfg):
    L, C, T, Vp = cfg["L"], cfg["C"], cfg["T"], cfg["Vp"]
    params_no_wpe = Vp * C + L * (12 * C * C + 13 * C) + 2 * C
    return 6 * params_no_wpe + 6 * L * T * C, params_no_wpe + T * C


def run_child(cmd, env=None):
    """Runs cmd; returns (returncode, stdout, stderr, peak RSS bytes of that child)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        p = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        _, status, ru = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return p.returncode, out.read().decode(), err.read().decode(), ru.ru_maxrss * 1024


def loadavg():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def run_weft(weft, recipe, threads, steps, measure, extra=()):
    """`extra`: more --set overrides (KEY=VALUE) after the bench's own."""
    out_dir = tempfile.mkdtemp(prefix="weft-bench-")
    try:
        cmd = [weft, "train", recipe, "--set", f"run.steps={steps}", "--set", "log.interval=1",
               "--set", f"run.out_dir={out_dir}", "--set", f"backend.threads={threads}",
               "--set", "checkpoint.interval=0", "--set", 'log.sinks=["jsonl"]']
        for o in extra:
            cmd += ["--set", o]
        rc, out, err, rss = run_child(cmd)
        if rc != 0:
            raise SystemExit(f"weft failed ({rc}): {' '.join(cmd)}\n{err[-2000:]}")
        with open(os.path.join(out_dir, "metrics.jsonl")) as f:
            rec = [json.loads(line) for line in f if line.strip()]
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    last = rec[-measure:]
    return {"step_ms": [r["step_ms"] for r in rec],
            "median_step_ms": statistics.median(r["step_ms"] for r in last),
            "median_tokens_per_s": statistics.median(r["tokens_per_s"] for r in last),
            "loss_last": rec[-1]["loss"],
            "peak_bytes": {k[4:-6]: int(rec[-1][k]) for k in rec[-1] if k.startswith("mem_")},
            "peak_rss_bytes": rss}


def torch_env(threads, tuned):
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(threads)
    env["OPENBLAS_NUM_THREADS"] = str(threads)
    if tuned:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
        if os.path.exists(JEMALLOC):
            env["LD_PRELOAD"] = JEMALLOC
            env["MALLOC_CONF"] = "dirty_decay_ms:-1,muzzy_decay_ms:-1"
    return env


def run_torch(python, cfg, threads, steps, measure, tuned, foreach):
    cmd = [python, os.path.join(HERE, "torch_gpt2.py"), "--layers", str(cfg["L"]), "--hidden", str(cfg["C"]),
           "--heads", str(cfg["H"]), "--vocab", str(cfg["Vp"]), "--seq", str(cfg["T"]), "--batch", str(cfg["B"]),
           "--steps", str(steps), "--measure", str(measure), "--threads", str(threads), "--foreach", str(foreach)]
    rc, out, err, rss = run_child(cmd, torch_env(threads, tuned))
    if rc != 0:
        raise SystemExit(f"torch reference failed ({rc}): {' '.join(cmd)}\n{err[-2000:]}")
    res = json.loads(out.strip().splitlines()[-1])
    res["peak_rss_bytes"] = rss
    res["tuned"] = tuned
    return res


def run_ceiling(python, cfg, threads):
    cmd = [python, os.path.join(HERE, "sgemm_ceiling.py"), "--threads", str(threads), "--layers", str(cfg["L"]),
           "--hidden", str(cfg["C"]), "--vocab", str(cfg["Vp"]), "--rows", str(cfg["B"] * cfg["T"])]
    rc, out, err, _ = run_child(cmd, dict(os.environ))
    if rc != 0:
        raise SystemExit(f"sgemm_ceiling failed ({rc})\n{err[-2000:]}")
    return json.loads(out)


def default_weft():
    for cand in ("build/weft", "build-perf/weft", "builddir/weft"):
        p = os.path.join(ROOT, cand)
        if os.path.exists(p):
            return p
    return shutil.which("weft") or "weft"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipes", nargs="*", default=[os.path.join(HERE, "recipes", "gpt-small.toml"),
                                                   os.path.join(HERE, "recipes", "gpt2-124m.toml")])
    ap.add_argument("--weft", default=default_weft())
    ap.add_argument("--python", default="/usr/bin/python3", help="the Python with Debian's torch")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--measure", type=int, default=8, help="median over the last this many steps")
    ap.add_argument("--repeats", type=int, default=1, help="alternating weft/torch runs per recipe")
    ap.add_argument("--torch-untuned", action="store_true", help="also run PyTorch at its defaults")
    ap.add_argument("--foreach", default="both",
                    help="torch AdamW: 1 (foreach), 0 (loop) or both (each run both, the faster one counts)")
    ap.add_argument("--out", default=os.path.join(ROOT, "runs", "bench", "results.json"))
    a = ap.parse_args()
    if a.measure > a.steps:
        raise SystemExit("--measure must be <= --steps")

    results = {"machine": {"cpu": platform.processor() or platform.machine(), "nproc": os.cpu_count(),
                           "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE", ""),
                           "jemalloc": os.path.exists(JEMALLOC)},
               "threads": a.threads, "steps": a.steps, "measure": a.measure, "weft": a.weft, "configs": []}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    results["machine"]["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    if not os.path.exists(JEMALLOC):
        print(f"note: {JEMALLOC} not found (Debian package libjemalloc2): PyTorch runs without jemalloc",
              file=sys.stderr)

    for recipe in a.recipes:
        cfg = read_recipe(recipe)
        fpt, params = flops_per_token(cfg)
        entry = {"recipe": os.path.relpath(recipe, ROOT), "config": cfg, "params": params,
                 "flops_per_token": fpt, "load_before": loadavg(), "weft": [], "torch": [], "torch_untuned": []}
        print(f"== {cfg['name']}: L={cfg['L']} C={cfg['C']} H={cfg['H']} T={cfg['T']} B={cfg['B']} "
              f"Vp={cfg['Vp']}, {params / 1e6:.1f}M params, {a.threads} threads", file=sys.stderr, flush=True)
        entry["ceiling"] = run_ceiling(a.python, cfg, a.threads)
        for _ in range(a.repeats):
            entry["weft"].append(run_weft(a.weft, recipe, a.threads, a.steps, a.measure))
            variants = [1, 0] if a.foreach == "both" else [int(a.foreach)]
            tuned = [run_torch(a.python, cfg, a.threads, a.steps, a.measure, True, fe) for fe in variants]
            for fe, r in zip(variants, tuned):
                r["foreach"] = fe
            entry["torch_variants"] = entry.get("torch_variants", []) + tuned
            entry["torch"].append(max(tuned, key=lambda r: r["median_tokens_per_s"]))  # the best configuration
            if a.torch_untuned:
                entry["torch_untuned"].append(run_torch(a.python, cfg, a.threads, a.steps, a.measure, False,
                                                        variants[0]))
        entry["load_after"] = loadavg()
        results["configs"].append(entry)

    # Table.
    rows = []
    for e in results["configs"]:
        ceil = e["ceiling"]["ceiling_gflops"]
        fpt = e["flops_per_token"]

        def row(label, runs):
            if not runs:
                return
            tps = statistics.median(r["median_tokens_per_s"] for r in runs)
            ms = statistics.median(r["median_step_ms"] for r in runs)
            gf = tps * fpt / 1e9
            rss = max(r["peak_rss_bytes"] for r in runs) / 2**20
            rows.append((e["config"]["name"], label, f"{ms:9.1f}", f"{tps:9.1f}", f"{gf:8.1f}",
                         f"{100 * gf / ceil:6.1f}%", f"{rss:8.0f}"))
        row("weft", e["weft"])
        row("torch (tuned, best of AdamW foreach/loop)", e["torch"])
        row("torch (default)", e["torch_untuned"])
        rows.append((e["config"]["name"], f"sgemm ceiling ({e['ceiling']['openblas_core']})", "", "",
                     f"{ceil:8.1f}", "100.0%", ""))
        sp = e["ceiling"].get("step")
        if sp:
            rows.append((e["config"]["name"], "  (step's GEMM list alone)", "", "", f"{sp['median_gflops']:8.1f}",
                         f"{100 * sp['median_gflops'] / ceil:6.1f}%", ""))
    head = ("config", "run", "ms/step", "tokens/s", "GFLOP/s", "of ceil", "RSS MiB")
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    fmt = "  ".join("{:<%d}" % w if i < 2 else "{:>%d}" % w for i, w in enumerate(widths))
    print(fmt.format(*head))
    for r in rows:
        print(fmt.format(*r))
    for e in results["configs"]:
        w = e["weft"][-1]
        print(f"{e['config']['name']}: weft peak bytes " +
              ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in w["peak_bytes"].items() if k != "comm") +
              f"; load average {e['load_before']:.2f} -> {e['load_after']:.2f}")
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(results, f, indent=1)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
