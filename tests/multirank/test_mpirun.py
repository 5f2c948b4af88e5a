#!/usr/bin/env python3
"""Multi-rank runs in real processes under mpirun (comm-mpi), suite 'multirank'.

  test_mpirun.py WEFT TEST_COMM_MPI FIXTURE_DIR SOURCE_ROOT MPIRUN

1. examples/gpt-tiny.toml for 8 steps at a global batch of 8: one rank (no
   launcher), then `mpirun -np 2` (ddp) and `mpirun -np 4` (zero1, micro 1).
   comm "auto" must pick comm-mpi; every step's loss must equal the single-rank
   loss to rel 1e-5; mem_optim_bytes and comm_bytes must match the formulas
   (N parameters; ring(b) = 2 (dp-1)/dp x b):
     ddp    optim 8 N             comm ring(4 N) + ring(4)
     zero1  optim 8 ceil(N/dp)    comm ring(4 dp ceil(N/dp)) + ring(4) + ring(4)
   Then `mpirun -np 4` with tensor 2 x data 2 and zero1, without and with
   sequence parallelism, and `mpirun -np 8` with examples/gpt-3d.toml (tensor 2 x
   pipeline 2 x data 2, zero1): the single-rank loss at every step (the memory
   and traffic formulas are held in tests/multirank/test_layouts.cpp).
2. test_comm_mpi (every Communicator operation) under -np 2 and -np 4.
4. Expert parallelism: examples/gpt-moe.toml under `mpirun -np 4` (data 4,
   expert 2, zero1) gives the single-rank MoE losses.
5. Preemption while training: SIGUSR1 sent to mpirun (which hands it to every
   rank), and SIGTERM sent to every rank as Slurm signals a job's tasks (mpirun
   itself answers SIGTERM by killing the job): every rank finishes its step,
   writes a checkpoint and the job exits 0 saying so; `--resume` under mpirun
   then ends with the uninterrupted run's losses.
3. Failures, each under `timeout`: a rank that throws, stalls, returns early or
   exits. The job must end with a non-zero status, and (except for the exit,
   which mpirun reports) every other rank must print an error naming the
   collective and the missing rank.
Prints one line per check and a closing "N passed, M failed".
"""
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

WEFT, COMM_TEST, FIXTURE_DIR, SOURCE_ROOT, MPIRUN = sys.argv[1:6]
RECIPE = os.path.join(SOURCE_ROOT, "examples", "gpt-tiny.toml")
MPI_FLAGS = ["--allow-run-as-root", "--oversubscribe", "--bind-to", "none"]
STEPS = 8
N = 842496  # gpt-tiny's parameters (tests/multirank/test_layouts.cpp derives it from the shape)
HANG_LIMIT_S = 120

passed = 0
failed = 0


def report(ok, name, detail=""):
    global passed, failed
    if ok:
        passed += 1
        print(f"ok - {name}" + (f" ({detail})" if detail else ""), flush=True)
    else:
        failed += 1
        print(f"FAIL - {name}: {detail}", flush=True)


def run(cmd, limit=HANG_LIMIT_S):
    """Runs cmd in its own process group; returns (rc, output, seconds); rc None = killed after `limit`."""
    env = dict(os.environ)
    for var in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "WORLD_SIZE", "SLURM_STEP_NUM_TASKS"):
        env.pop(var, None)
    env["OMPI_MCA_btl_vader_single_copy_mechanism"] = "none"  # containers without ptrace/CMA
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                         start_new_session=True)
    try:
        out, _ = p.communicate(timeout=limit)
        rc = p.returncode
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, _ = p.communicate()
        rc = None
    return rc, out, time.monotonic() - t0


def mpirun(np_, *args):
    return [MPIRUN] + MPI_FLAGS + ["-np", str(np_)] + list(args)


def train_args(out_dir, *sets):
    cmd = [WEFT, "train", RECIPE, "--set", f"run.steps={STEPS}", "--set", "batch.global=8", "--set",
           "log.interval=1", "--set", f"run.out_dir={out_dir}"]
    for s in sets:
        cmd += ["--set", s]
    return cmd


def metrics(out_dir):
    rows = {}
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        for line in f:
            j = json.loads(line)
            rows[j["step"]] = j
    return rows


def ring(dp, nbytes):
    return nbytes * 2 * (dp - 1) // dp


def tail(text, lines=15):
    return "\n    " + "\n    ".join(text.strip().splitlines()[-lines:])


def check_losses(name, out_dir, ref, rc, out, secs):
    """Reports whether every step's loss equals the single-rank loss; returns the metrics (None on failure)."""
    if rc != 0:
        report(False, name, f"exit {rc} after {secs:.1f} s" + tail(out))
        return None
    m = metrics(out_dir)
    if sorted(m) != list(range(1, STEPS + 1)):
        report(False, name, f"metrics.jsonl has steps {sorted(m)}")
        return None
    worst = max(abs(m[s]["loss"] - ref[s]["loss"]) / abs(ref[s]["loss"]) for s in ref)
    report(worst <= 1e-5, f"{name}: every step's loss equals the single-rank loss",
           f"max rel error {worst:.3g} over {STEPS} steps, {secs:.1f} s")
    return m


def check_run(name, out_dir, ref, dp, plugin, rc, out, secs):
    m = check_losses(name, out_dir, ref, rc, out, secs)
    if m is None:
        return None
    shard = -(-N // dp)
    optim = 8 * shard if plugin == "zero1" else 8 * N
    comm = (ring(dp, 4 * dp * shard) + 2 * ring(dp, 4)) if plugin == "zero1" else ring(dp, 4 * N) + ring(dp, 4)
    got_optim = {m[s]["mem_optim_bytes"] for s in m}
    got_comm = {m[s]["comm_bytes"] for s in m}
    report(got_optim == {optim}, f"{name}: mem_optim_bytes", f"{sorted(got_optim)} expected {optim}")
    report(got_comm == {comm}, f"{name}: comm_bytes per step = ring volume", f"{sorted(got_comm)} expected {comm}")
    with open(os.path.join(out_dir, "recipe.toml")) as f:
        resolved = f.read()
    picked = re.search(r'\[comm\]\s*\nplugin = "(\w+)"', resolved)
    report(picked is not None and picked.group(1) == "mpi", f"{name}: comm \"auto\" picked mpi under mpirun",
           picked.group(1) if picked else "no [comm] section in recipe.toml")
    others = [l for l in out.splitlines() if re.search(r"\[rank [1-9]\d*\]", l)]
    steps = [l for l in out.splitlines() if re.search(r"\bstep \d+/\d+", l)]
    report(not others and len(steps) == STEPS, f"{name}: only rank 0 prints, one progress line per step",
           f"{len(steps)} progress lines" + ("; " + "; ".join(others[:3]) if others else ""))
    return optim


def check_failure(name, cmd, failing_rank, others, ops, expect_lines=True, limit=HANG_LIMIT_S, within=None):
    rc, out, secs = run(cmd, limit)
    if rc is None:
        report(False, name, f"still running after {limit} s: a hang" + tail(out))
        return
    ok = rc != 0 and (within is None or secs < within)
    detail = f"exit {rc} after {secs:.1f} s"
    if expect_lines:
        for r in others:
            # The failing rank must be named; a rank slow to answer the
            # missing-rank query may be listed beside it.
            pat = re.compile(rf"\[rank {r}\] ({'|'.join(ops)})\b.*missing ranks \[(\d+,)*{failing_rank}(,\d+)*\]")
            line = next((l for l in out.splitlines() if pat.search(l)), None)
            if line is None:
                ok = False
                detail += f"; no error line from rank {r} naming the collective and missing rank {failing_rank}"
            elif r == others[0]:
                detail += "; e.g. " + line.strip()[:160]
    report(ok, name, detail + ("" if ok else tail(out, 25)))


def main():
    with tempfile.TemporaryDirectory(prefix="weft-mpirun-") as tmp:
        # 1. Layout equivalence in real processes
        ref_dir = os.path.join(tmp, "ref")
        rc, out, secs = run(train_args(ref_dir))
        if rc != 0:
            report(False, "single-rank reference run", f"exit {rc}" + tail(out))
            print(f"{passed} passed, {failed} failed")
            return 1
        ref = metrics(ref_dir)
        report(len(ref) == STEPS, "single-rank reference run", f"{secs:.1f} s, losses {ref[1]['loss']:.6f} .. {ref[STEPS]['loss']:.6f}")

        d2 = os.path.join(tmp, "np2")
        rc, out, secs = run(mpirun(2, *train_args(d2, "parallel.data_parallel.plugin=ddp")))
        ddp_optim = check_run("mpirun -np 2 ddp", d2, ref, 2, "ddp", rc, out, secs)

        d4 = os.path.join(tmp, "np4")
        rc, out, secs = run(mpirun(4, *train_args(d4, "parallel.data_parallel.plugin=zero1", "batch.micro=1")))
        zero_optim = check_run("mpirun -np 4 zero1 micro 1", d4, ref, 4, "zero1", rc, out, secs)
        if ddp_optim and zero_optim:
            over = 4 * zero_optim - ddp_optim
            report(0 <= over <= 8 * 3, "zero1 over 4 ranks keeps a quarter of ddp's optimizer state",
                   f"{zero_optim} x 4 - {ddp_optim} = {over} bytes of padding")

        for sp in ("false", "true"):
            d = os.path.join(tmp, "tp2dp2" + sp)
            rc, out, secs = run(mpirun(4, *train_args(d, "parallel.tensor=2", "parallel.data_parallel.plugin=zero1",
                                                      f"parallel.tensor_parallel.sequence_parallel={sp}")))
            check_losses(f"mpirun -np 4 tensor 2 x data 2 zero1, sequence_parallel {sp}", d, ref, rc, out, secs)

        d = os.path.join(tmp, "3d")
        rc, out, secs = run(mpirun(8, WEFT, "train", os.path.join(SOURCE_ROOT, "examples", "gpt-3d.toml"), "--set",
                                   f"run.steps={STEPS}", "--set", "log.interval=1", "--set", f"run.out_dir={d}"))
        check_losses("mpirun -np 8 examples/gpt-3d.toml (tensor 2 x pipeline 2 x data 2, zero1)", d, ref, rc, out, secs)

        # 2. Every operation of the communicator
        for np_ in (2, 4):
            rc, out, secs = run(mpirun(np_, COMM_TEST))
            report(rc == 0 and "comm-mpi suite on" in out, f"test_comm_mpi under mpirun -np {np_}",
                   f"{secs:.1f} s" + ("" if rc == 0 else f", exit {rc}" + tail(out, 30)))

        # 3. Failures: never a hang
        fail_sets = ["log.sinks=jsonl,fail-at", "log.fail-at.rank=2", "log.fail-at.step=2",
                     f"plugins.paths={FIXTURE_DIR}"]
        check_failure("mpirun -np 4: rank 2 throws at step 2 (zero1)",
                      mpirun(4, *train_args(os.path.join(tmp, "throw"), "parallel.data_parallel.plugin=zero1",
                                            "comm.timeout_s=20", "log.fail-at.action=throw", *fail_sets)),
                      2, [0, 1, 3], ["reduce_scatter", "all_reduce", "all_gather"], within=20)
        check_failure("mpirun -np 4: rank 2 stalls at step 2 (ddp), the others time out",
                      mpirun(4, *train_args(os.path.join(tmp, "stall"), "parallel.data_parallel.plugin=ddp",
                                            "comm.timeout_s=3", "log.fail-at.action=stall",
                                            "log.fail-at.seconds=600", *fail_sets)),
                      2, [0, 1, 3], ["all_reduce"], within=60)
        check_failure("mpirun -np 4: rank 2 exits at step 2",
                      mpirun(4, *train_args(os.path.join(tmp, "exit"), "comm.timeout_s=10",
                                            "log.fail-at.action=exit", *fail_sets)),
                      2, [], [], expect_lines=False, within=60)
        check_failure("mpirun -np 3 test_comm_mpi: rank 1 throws before an all_reduce",
                      mpirun(3, COMM_TEST, "--fail=throw"), 1, [0, 2], ["all_reduce"], within=15)
        check_failure("mpirun -np 3 test_comm_mpi: rank 1 returns early, the others time out",
                      mpirun(3, COMM_TEST, "--fail=return"), 1, [0, 2], ["all_reduce"], within=30)

        # 4. Expert parallelism in real processes
        moe = os.path.join(SOURCE_ROOT, "examples", "gpt-moe.toml")
        moe_ref_dir = os.path.join(tmp, "moe-ref")
        moe_args = ["train", moe, "--set", f"run.steps={STEPS}", "--set", "log.interval=1"]
        rc, out, secs = run([WEFT] + moe_args + ["--set", f"run.out_dir={moe_ref_dir}"])
        if rc != 0:
            report(False, "single-rank MoE reference run", f"exit {rc}" + tail(out))
        else:
            d = os.path.join(tmp, "moe-ep2")
            rc, out, secs = run(mpirun(4, WEFT, *moe_args, "--set", f"run.out_dir={d}", "--set", "parallel.expert=2",
                                       "--set", "parallel.data_parallel.plugin=zero1"))
            check_losses("mpirun -np 4 gpt-moe data 4 x expert 2 (alltoall, zero1)", d, metrics(moe_ref_dir), rc, out,
                         secs)

        # 5. Preemption signals under mpirun
        steps = 30
        long_ref = os.path.join(tmp, "long-ref")
        rc, out, secs = run(train_args(long_ref, f"run.steps={steps}"))
        if rc != 0:
            report(False, f"single-rank {steps}-step reference", f"exit {rc}" + tail(out))
        else:
            for sig in (signal.SIGUSR1, signal.SIGTERM):
                check_preemption(sig, os.path.join(tmp, "sig-" + sig.name), steps, metrics(long_ref))

    print(f"{passed} passed, {failed} failed", flush=True)
    return 0 if failed == 0 else 1


def rank_pids(session):
    """The weft processes of the session `session` (mpirun's, started with start_new_session)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv0 = f.read().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        if int(fields[3]) == session and os.path.basename(argv0) == os.path.basename(WEFT):  # field 6: session id
            pids.append(int(entry))
    return pids


def check_preemption(sig, out_dir, steps, ref):
    name = f"mpirun -np 2: {sig.name} to " + ("every rank" if sig == signal.SIGTERM else "mpirun") + " during training"
    cmd = mpirun(2, *train_args(out_dir, f"run.steps={steps}", "checkpoint.interval=0"))
    env = dict(os.environ)
    env["OMPI_MCA_btl_vader_single_copy_mechanism"] = "none"
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                         start_new_session=True)
    log = os.path.join(out_dir, "metrics.jsonl")
    deadline = time.monotonic() + HANG_LIMIT_S
    while time.monotonic() < deadline and p.poll() is None:  # wait for step 3
        if os.path.exists(log) and sum(1 for _ in open(log)) >= 3:
            break
        time.sleep(0.05)
    if sig == signal.SIGTERM:
        for pid in rank_pids(p.pid):
            os.kill(pid, sig)
    else:
        os.kill(p.pid, sig)
    try:
        out, _ = p.communicate(timeout=HANG_LIMIT_S)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, _ = p.communicate()
        report(False, name, "did not end within the limit" + tail(out))
        return
    stopped = re.search(r"stopped by (\S+) after step (\d+) of", out)
    report(p.returncode == 0 and stopped is not None and int(stopped.group(2)) < steps, name + ": exit 0 after a checkpoint",
           f"exit {p.returncode}, " + (f"stopped after step {stopped.group(2)}" if stopped else "no stop line") +
           ("" if p.returncode == 0 and stopped else tail(out)))
    if not stopped:
        return
    resume = train_args(out_dir, f"run.steps={steps}", "checkpoint.interval=0")
    resume.insert(3, "--resume")  # after WEFT train RECIPE
    rc, out, secs = run(mpirun(2, *resume))
    if rc != 0:
        report(False, name + ": --resume", f"exit {rc}" + tail(out))
        return
    m = metrics(out_dir)
    worst = max(abs(m[s]["loss"] - ref[s]["loss"]) / abs(ref[s]["loss"]) for s in ref)
    report(sorted(m) == list(range(1, steps + 1)) and worst <= 1e-5,
           name + ": --resume ends with the uninterrupted run's losses",
           f"steps {min(m)}..{max(m)}, max rel error {worst:.3g}")


if __name__ == "__main__":
    sys.exit(main())
