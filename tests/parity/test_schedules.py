"""weft's lr schedules and logged loss vs an independent PyTorch replay (Meson suite 'parity').

    python3 test_schedules.py PARITY_DUMP BUILD_ROOT SOURCE_DIR

Megatron-LM's scheduler is written here from its description, counting in
samples as Megatron does (warm-up, decay and the weight-decay span are
iterations x global batch; iteration k reads the scheduler at
(k-1) x global batch, since Megatron advances it after the update). For each
variant below, `weft train` runs 30 steps of gpt-parity.toml with the schedule
set by --set, and torch.optim.AdamW + clip_grad_norm_ replays them on the same
initial parameters and batches (parity_dump), its lr and weight decay set
from the reference scheduler before every step. Checked: every step's lr and
step loss, and the 30-step update of every parameter at test_parity.py's
tolerance. One more run with log.interval = 5 checks that the logged `loss`
is the mean of the reference step losses over each interval and `loss_step`
the step's own.

Prints one line per check and "N passed, M failed"; exits 1 when anything failed.
"""

import json
import math
import os
import subprocess
import sys
import tempfile

STEPS = 30
TOL_LR = 1e-12           # relative; both sides are double arithmetic on the same formula
TOL_TRAIN_LOSS = 1e-4    # as test_parity.py
TOL_FINAL_UPDATE = 1e-3  # as test_parity.py (L2 relative on final - init)

# (label, --set overrides, reference schedule).
VARIANTS = [
    ("cosine-previous",
     ["lr_schedule.plugin=cosine", "lr_schedule.warmup_steps=5", "lr_schedule.min_lr=1e-4",
      "lr_schedule.decay_steps=25", "lr_schedule.step_of_lr=previous",
      "lr_schedule.weight_decay_style=linear", "lr_schedule.weight_decay_start=0.02",
      "lr_schedule.weight_decay_end=0.2"],
     dict(style="cosine", warmup=5, init_lr=0.0, min_lr=1e-4, decay=25, previous=True,
          wd=("linear", 0.02, 0.2))),
    ("wsd-previous",
     ["lr_schedule.plugin=wsd", "lr_schedule.warmup_fraction=0.1", "lr_schedule.min_lr=5e-5",
      "lr_schedule.wsd_decay_steps=10", "lr_schedule.wsd_decay_style=exponential",
      "lr_schedule.step_of_lr=previous", "lr_schedule.weight_decay_style=cosine",
      "lr_schedule.weight_decay_start=0.1", "lr_schedule.weight_decay_end=0.0"],
     dict(style="wsd", warmup_fraction=0.1, init_lr=0.0, min_lr=5e-5, decay=STEPS, previous=True,
          wsd_decay=10, wsd_style="exponential", wd=("cosine", 0.1, 0.0))),
    ("inverse-sqrt-current",
     ["lr_schedule.plugin=inverse_square_root", "lr_schedule.warmup_steps=4", "lr_schedule.warmup_init_lr=2e-4",
      "lr_schedule.min_lr=3e-4"],
     dict(style="inverse-square-root", warmup=4, init_lr=2e-4, min_lr=3e-4, decay=STEPS, previous=False)),
    # Batch-size ramp-up 1 -> 4 over 12 samples (Megatron's --rampup-batch-size 1 1 12): the run is
    # STEPS x 4 samples, the schedules count samples in units of the full batch of 4.
    ("rampup-cosine-previous",
     ["batch.micro=1", "batch.rampup_start=1", "batch.rampup_increment=1", "batch.rampup_samples=12",
      "lr_schedule.plugin=cosine", "lr_schedule.warmup_steps=3", "lr_schedule.min_lr=1e-4",
      "lr_schedule.step_of_lr=previous"],
     dict(style="cosine", warmup=3, init_lr=0.0, min_lr=1e-4, decay=STEPS, previous=True, rampup=(1, 1, 12))),
]

from parity_report import finish, report  # noqa: E402  (the script's folder is on sys.path)


try:
    import torch
except Exception as e:  # noqa: BLE001
    report(False, "import torch", f"{type(e).__name__}: {e} (install Debian's python3-torch)")
    finish()

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpt2_reference import GPT2, decays, read_safetensors  # noqa: E402


class MegatronScheduler:
    """Megatron's lr and weight-decay rules, in samples (the description, not weft's code)."""

    def __init__(self, cfg, max_lr, base_wd, global_batch, train_iters):
        g = global_batch
        self.cfg, self.max_lr, self.base_wd = cfg, max_lr, base_wd
        self.decay_samples = cfg["decay"] * g
        if "warmup_fraction" in cfg:
            self.warmup_samples = int(cfg["warmup_fraction"] * cfg["decay"]) * g
        else:
            self.warmup_samples = cfg["warmup"] * g
        self.wsd_samples = cfg.get("wsd_decay", 0) * g
        self.wd_samples = train_iters * g
        assert self.warmup_samples < self.decay_samples
        self.samples = 0  # Megatron's num_steps, advanced by the global batch after each update

    def lr(self):
        c, n = self.cfg, self.samples
        if self.warmup_samples > 0 and n <= self.warmup_samples:
            return c["init_lr"] + (self.max_lr - c["init_lr"]) * n / self.warmup_samples
        if n > self.decay_samples:
            return c["min_lr"]
        if c["style"] == "inverse-square-root":
            w = max(self.warmup_samples, 1)
            return max(c["min_lr"], self.max_lr * math.sqrt(w) / math.sqrt(max(n, 1)))
        if c["style"] == "wsd":
            start = self.decay_samples - self.wsd_samples
            if n <= start:
                coeff = 1.0
            else:
                a = (n - start) / self.wsd_samples
                coeff = {"linear": 1 - a, "cosine": 0.5 * (math.cos(math.pi * a) + 1),
                         "exponential": 2 * 0.5 ** a - 1, "minus_sqrt": 1 - math.sqrt(a)}[c["wsd_style"]]
        else:
            ratio = (n - self.warmup_samples) / (self.decay_samples - self.warmup_samples)
            coeff = 1 - ratio if c["style"] == "linear" else 0.5 * (math.cos(math.pi * ratio) + 1)
        return c["min_lr"] + coeff * (self.max_lr - c["min_lr"])

    def wd(self):
        if "wd" not in self.cfg:
            return self.base_wd
        style, start, end = self.cfg["wd"]
        if self.samples > self.wd_samples:
            return end
        r = self.samples / self.wd_samples
        coeff = r if style == "linear" else 0.5 * (math.cos(math.pi * (1 - r)) + 1)
        return start + coeff * (end - start)


def run(cmd, cwd):
    res = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    if res.returncode != 0:
        print(res.stdout)
        raise RuntimeError(f"{' '.join(cmd)} exited {res.returncode}")


def read_metrics(path):
    with open(path) as f:
        return {int(r["step"]): r for r in (json.loads(x) for x in f if x.strip())}


def rampup_batch(rampup, global_batch, consumed):
    """Megatron's ramp-up: the global batch of the iteration after `consumed` samples."""
    start, inc, samples = rampup
    if consumed > samples:
        return global_batch
    per_increment = samples / ((global_batch - start) // inc)
    return min(global_batch, start + int(consumed / per_increment) * inc)


def torch_replay(cfg, init, batches, sched_cfg, steps):
    """Losses, applied lrs, batch sizes and final params of AdamW driven by the reference scheduler."""
    mc, oc = cfg["model"], cfg["optimizer"]
    G, T = cfg["batch"]["global"], mc["seq_length"]
    model = GPT2.from_config(mc)
    model.load_weights(init)
    decay = [p for n, p in model.named_parameters() if decays(n)]
    no_decay = [p for n, p in model.named_parameters() if not decays(n)]
    opt = torch.optim.AdamW([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=oc["lr"], betas=(oc["beta1"], oc["beta2"]), eps=oc["eps"])
    sched = MegatronScheduler(sched_cfg, oc["lr"], oc["weight_decay"], G, steps)
    # The sample order as one [N,T+1] tensor: step s of the dump holds samples (s-1)G .. sG-1.
    order = torch.cat([batches[f"step{s}"] for s in range(1, len(batches) + 1)]).round().to(torch.int64)
    losses, lrs, sizes = [], [], []
    consumed = 0
    while consumed < steps * G:  # Megatron's --train-samples
        g = rampup_batch(sched_cfg["rampup"], G, consumed) if "rampup" in sched_cfg else G
        # "previous" (Megatron): read before advancing; "current": the position after this step's samples.
        if not sched_cfg["previous"]:
            sched.samples += g
        lr, wd = sched.lr(), sched.wd()
        opt.param_groups[0]["lr"] = opt.param_groups[1]["lr"] = lr
        opt.param_groups[0]["weight_decay"] = wd
        tok = order[consumed:consumed + g]  # [g,T+1]
        opt.zero_grad(set_to_none=True)
        l = model.token_losses(model(tok[:, :T]), tok[:, 1:])  # [g,T]
        (l.sum() / (g * T)).backward()
        losses.append(l.detach().double().mean().item())
        torch.nn.utils.clip_grad_norm_(model.parameters(), oc["clip_grad_norm"])
        opt.step()
        if sched_cfg["previous"]:
            sched.samples += g
        consumed += g
        lrs.append(lr)
        sizes.append(g)
    return losses, lrs, sizes, {n: p.detach().clone() for n, p in model.named_parameters()}


def weft_train(weft_exe, recipe, work, label, overrides, log_interval=1):
    out_dir = os.path.join(work, "run-" + label)
    cmd = [weft_exe, "train", recipe]
    for s in [f"run.out_dir={out_dir}", f"run.steps={STEPS}", f"log.interval={log_interval}"] + overrides:
        cmd += ["--set", s]
    run(cmd, work)
    return out_dir


def update_error(final, init, ref, C):
    """Worst ||dW_weft - dW_torch|| / ||dW_torch|| over params (the key bias slice left out, as test_parity.py)."""
    worst = (0.0, "")
    for name, r in ref.items():
        dw = (final[name] - init[name]).double()
        dt = (r - init[name]).double()
        if name.endswith("attn.qkv.bias"):
            keep = torch.ones(dt.shape[0], dtype=torch.bool)
            keep[C:2 * C] = False
            dw, dt = dw[keep], dt[keep]
        worst = max(worst, (((dw - dt).norm() / max(dt.norm().item(), 1e-30)).item(), name))
    return worst


def check_variant(cfg, init, batches, weft_exe, recipe, work, label, overrides, sched_cfg):
    out_dir = weft_train(weft_exe, recipe, work, label, overrides)
    metrics = read_metrics(os.path.join(out_dir, "metrics.jsonl"))
    ref_losses, ref_lrs, ref_sizes, ref_params = torch_replay(cfg, init, batches, sched_cfg, STEPS)
    steps = len(ref_losses)
    report(sorted(metrics) == list(range(1, steps + 1)), f"{label} steps",
           f"weft logged {len(metrics)} steps, the reference took {steps}")
    if "rampup" in sched_cfg:
        got = [int(metrics[s]["global_batch"]) for s in sorted(metrics)]
        report(got == ref_sizes, f"{label} global batch of every step", f"weft {got[:12]}..., reference {ref_sizes[:12]}...")
    worst_lr = worst_loss = 0.0
    for s in range(1, steps + 1):
        r = metrics[s]
        lr_err = abs(r["lr"] - ref_lrs[s - 1]) / max(abs(ref_lrs[s - 1]), 1e-30)
        if ref_lrs[s - 1] == 0:
            lr_err = abs(r["lr"])
        worst_lr = max(worst_lr, lr_err)
        worst_loss = max(worst_loss, abs(r["loss_step"] - ref_losses[s - 1]) / abs(ref_losses[s - 1]))
    print(f"  {label}: lr weft {[round(metrics[s]['lr'], 7) for s in (1, 2, 6, steps)]} "
          f"ref {[round(ref_lrs[s - 1], 7) for s in (1, 2, 6, steps)]} (steps 1, 2, 6, {steps})")
    report(worst_lr <= TOL_LR, f"{label} lr of every step", f"worst rel {worst_lr:.2e} (tol {TOL_LR:.0e})")
    report(worst_loss <= TOL_TRAIN_LOSS, f"{label} loss_step of every step",
           f"worst rel {worst_loss:.2e} (tol {TOL_TRAIN_LOSS:.0e})")
    final, _ = read_safetensors(os.path.join(out_dir, "checkpoints", f"step_{steps}", "model.safetensors"))
    err, name = update_error(final, init, ref_params, cfg["model"]["hidden"])
    report(err <= TOL_FINAL_UPDATE, f"{label} param updates after {steps} steps",
           f"worst {name} L2 rel {err:.3e} (tol {TOL_FINAL_UPDATE:.0e})")
    return ref_losses


def check_interval_mean(weft_exe, recipe, work, overrides, ref_losses):
    """log.interval 5: `loss` = mean of the reference step losses since the last record, `loss_step` the step's."""
    out_dir = weft_train(weft_exe, recipe, work, "interval5", overrides, log_interval=5)
    metrics = read_metrics(os.path.join(out_dir, "metrics.jsonl"))
    report(sorted(metrics) == list(range(5, STEPS + 1, 5)), "interval5 logged steps", f"{sorted(metrics)}")
    worst = 0.0
    for s in range(5, STEPS + 1, 5):
        mean = sum(ref_losses[s - 5:s]) / 5
        worst = max(worst, abs(metrics[s]["loss"] - mean) / mean,
                    abs(metrics[s]["loss_step"] - ref_losses[s - 1]) / ref_losses[s - 1])
    spread = abs(ref_losses[4] - sum(ref_losses[0:5]) / 5) / ref_losses[4]
    report(worst <= TOL_TRAIN_LOSS, "interval5 loss = mean over the interval, loss_step = the step's",
           f"worst rel {worst:.2e} (tol {TOL_TRAIN_LOSS:.0e}; step 5 alone differs from the mean by {spread:.2e})")


def main():
    dump_exe, build_root, source_dir = (os.path.abspath(a) for a in sys.argv[1:4])
    recipe = os.path.join(source_dir, "gpt-parity.toml")
    weft_exe = os.path.join(build_root, "weft")
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory(prefix="weft-schedules-") as work:
        dump = os.path.join(work, "dump")
        # One batch more than the run: a ramp-up's last step may read past STEPS x G samples.
        run([dump_exe, build_root, recipe, dump, "--steps", str(STEPS + 1)], work)
        with open(os.path.join(dump, "config.json")) as f:
            cfg = json.load(f)
        init, _ = read_safetensors(os.path.join(dump, "init.safetensors"))
        batches, _ = read_safetensors(os.path.join(dump, "batches.safetensors"))
        losses = {}
        for label, overrides, sched_cfg in VARIANTS:
            try:
                losses[label] = check_variant(cfg, init, batches, weft_exe, recipe, work, label, overrides, sched_cfg)
            except Exception as e:  # noqa: BLE001
                report(False, label, f"raised {type(e).__name__}: {e}")
        if "cosine-previous" in losses:
            try:
                check_interval_mean(weft_exe, recipe, work, VARIANTS[0][1], losses["cosine-previous"])
            except Exception as e:  # noqa: BLE001
                report(False, "interval5", f"raised {type(e).__name__}: {e}")
    finish()


if __name__ == "__main__":
    main()
