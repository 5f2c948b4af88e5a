"""weft vs an independent PyTorch GPT-2 (Meson suite 'parity').

    python3 test_parity.py PARITY_DUMP BUILD_ROOT SOURCE_DIR

1. Runs PARITY_DUMP on gpt-parity.toml (and once more with init_std 0.02): weft's initial params, the token
   batches of steps 1..10, and for the batch of step 1 weft's logits, per-token
   losses, mean loss and every param's gradient (dloss_scale = 1/(G*T)).
2. Loads the same params into gpt2_reference.GPT2 and checks logits, losses,
   loss and every gradient (torch autograd) against weft's; and each module
   (embedding, every block's ln1/attn/ln2/mlp and the block, the head) run by
   torch on weft's own input to that module, which names the module at fault.
3. Runs `BUILD_ROOT/weft train` for 10 steps (log.interval 1) for each batch
   layout in VARIANTS and checks every step's loss and grad_norm from
   metrics.jsonl, and the update of every param (final checkpoint - init),
   against 10 steps of torch.optim.AdamW + clip_grad_norm_ on the same batches.

Error measure ("rel"): max|weft - torch| / max|torch| over the whole tensor
(a scalar: |weft - torch| / |torch|); the denominator is floored at 1e-30, so
an all-zero reference needs an all-zero weft tensor. The 10-step param
updates use the L2 form ||weft - torch|| / ||torch|| instead (see there). The
reference is float32 PyTorch, the same precision as weft's fp32 run.

Prints one line per check and a final "N passed, M failed"; exits 1 when
anything failed (torch not importable counts as a failure, never a skip).
"""

import json
import os
import subprocess
import sys
import tempfile
import time
import traceback

TOL_LOGITS = 1e-5      # logits, per-token losses, mean loss at step 1
TOL_MODULE = 5e-6      # each module at step 1 on weft's own input (observed <= 7e-7 over 8 seeds)
TOL_GRAD = 1e-4        # every gradient at step 1
TOL_TRAIN_LOSS = 1e-4  # each step's loss over 10 training steps
TOL_GRAD_NORM = 1e-4   # each step's global gradient norm (before clipping)
# Every param's 10-step update (final - init), L2 relative (see check_training):
# Adam's m/sqrt(v) amplifies last-bit differences of near-zero gradient elements
# (observed <= 4e-5).
TOL_FINAL_UPDATE = 1e-3
STEPS = 10

# (label, extra --set overrides) for the step-1 checks: the recipe (init_std
# 0.1, which exercises the nonlinearities) and GPT-2's usual init_std 0.02.
# Mixture-of-experts variants (4 experts): top-2 dropless in block 0 only, and
# top-1 / top-2 in both blocks at capacity factor 0.5, which drops assignments.
MOE = ["model.moe_experts=4", "model.moe_z_loss_coef=0.001"]
STEP1_VARIANTS = [
    ("recipe", []),
    ("init002", ["model.init_std=0.02"]),
    ("moe_top2", MOE + ["model.moe_top_k=2", "model.moe_every=2"]),
    ("moe_top1_drop", MOE + ["model.moe_top_k=1", "model.moe_capacity_factor=0.5"]),
    ("moe_top2_drop", MOE + ["model.moe_top_k=2", "model.moe_capacity_factor=0.5"]),
]

# (label, step-1 variant whose dump gives the init and batches, extra --set
# overrides) for the 10-step training comparison.
VARIANTS = [
    ("micro4", "recipe", []),                   # G = 4 as one microbatch
    ("micro2", "recipe", ["batch.micro=2"]),    # G = 4 as 2 accumulated microbatches
    ("moe_top2_micro2", "moe_top2", ["batch.micro=2"]),
    ("moe_top1_drop_micro2", "moe_top1_drop", ["batch.micro=2"]),
]

from parity_report import finish, report  # noqa: E402  (the script's folder is on sys.path)


try:
    import numpy as np  # noqa: F401  (gpt2_reference needs it)
    import torch
except Exception as e:  # noqa: BLE001
    report(False, "import torch", f"{type(e).__name__}: {e} (install Debian's python3-torch)")
    finish()

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpt2_reference import GPT2, decays, read_safetensors  # noqa: E402


def rel_err(a, b):
    """max|a-b| / max|b| over the tensor (b = the torch reference)."""
    a = torch.as_tensor(a, dtype=torch.float64)
    b = torch.as_tensor(b, dtype=torch.float64)
    if a.shape != b.shape:
        return float("inf")
    if a.numel() == 0:
        return 0.0
    return ((a - b).abs().max() / max(b.abs().max().item(), 1e-30)).item()


def check_close(name, weft_value, torch_value, tol):
    err = rel_err(weft_value, torch_value)
    report(err <= tol, name, f"rel {err:.3e} (tol {tol:.0e})")
    return err


def run(cmd, cwd=None, timeout=300):
    t0 = time.time()
    res = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         timeout=timeout)
    if res.returncode != 0:
        print(res.stdout)
        raise RuntimeError(f"{' '.join(cmd)} exited {res.returncode}")
    print(f"  ran {os.path.basename(cmd[0])} {cmd[1] if len(cmd) > 1 else ''} in {time.time() - t0:.1f}s",
          flush=True)
    return res.stdout


def tokens_of(batch):
    t = batch.round().to(torch.int64)
    assert torch.equal(t.to(torch.float32), batch), "token batch holds non-integers"
    return t


# ---------------------------------------------------------------- step 1

def check_step1(cfg, dump, label):
    init, _ = read_safetensors(os.path.join(dump, "init.safetensors"))
    batches, _ = read_safetensors(os.path.join(dump, "batches.safetensors"))
    step1, _ = read_safetensors(os.path.join(dump, "step1.safetensors"))
    mc = cfg["model"]
    G, T, V, Vp = cfg["batch"]["global"], mc["seq_length"], mc["vocab"], mc["padded_vocab"]

    model = GPT2.from_config(mc)
    torch_names = {n: tuple(p.shape) for n, p in model.named_parameters()}
    weft_names = {p["name"]: tuple(p["shape"]) for p in cfg["params"]}
    report(torch_names == weft_names, f"{label} param names and shapes",
           f"{len(weft_names)} weft params, {len(torch_names)} torch params"
           + ("" if torch_names == weft_names else
              f"; only weft {sorted(set(weft_names.items()) - set(torch_names.items()))},"
              f" only torch {sorted(set(torch_names.items()) - set(weft_names.items()))}"))
    wd_wrong = [p["name"] for p in cfg["params"] if p["weight_decay"] != decays(p["name"])]
    report(not wd_wrong, f"{label} weight_decay flags", "weft's Param::weight_decay follow the GPT-2 rule"
           if not wd_wrong else f"differ from the GPT-2 rule for {wd_wrong}")
    model.load_weights(init)

    tok = tokens_of(batches["step1"])  # [G,T+1]
    ids, targets = tok[:, :T], tok[:, 1:]
    assert tok.shape == (G, T + 1) and int(tok.max()) < V and int(tok.min()) >= 0

    # Each module on weft's own input (isolated, so a mismatch names its module).
    with torch.no_grad():
        L = len(model.blocks)
        emb = model.wte(ids) + model.wpe(torch.arange(T))[None]
        check_close(f"{label} module embedding", step1["act.0"], emb, TOL_MODULE)
        for i, blk in enumerate(model.blocks):
            n = i + 1  # layer index: 0 is the embedding
            x = step1[f"act.{n - 1}"]
            for what, ref in [("ln1", blk.ln1(x)),
                              ("attn", blk.attn(step1[f"act.{n}.ln1"])),
                              ("ln2", blk.ln2(x + step1[f"act.{n}.attn"])),
                              ("mlp", blk.mlp(step1[f"act.{n}.ln2"]))]:
                check_close(f"{label} module blocks.{i}.{what}", step1[f"act.{n}.{what}"], ref, TOL_MODULE)
            check_close(f"{label} module blocks.{i}", step1[f"act.{n}"], blk(x), TOL_MODULE)
        head = model.lnf(step1[f"act.{L}"]) @ model.wte.weight.t()
        check_close(f"{label} module head (lnf, x @ wte^T)", step1["logits"], head, TOL_MODULE)

    logits = model(ids)  # [G,T,Vp]
    losses = model.token_losses(logits, targets)  # [G,T]
    loss = losses.mean()
    moe_loss = model.moe_loss()  # aux + z losses, weight 1 for one microbatch of the whole batch
    model.zero_grad(set_to_none=True)
    (loss + moe_loss).backward()
    if "moe_loss" in step1 and mc.get("moe_experts", 0) > 0:
        check_close(f"{label} step1 MoE aux + z loss", step1["moe_loss"], moe_loss.detach().reshape(1), TOL_LOGITS)

    check_close(f"{label} step1 logits [G,T,Vp]", step1["logits"], logits.detach(), TOL_LOGITS)
    check_close(f"{label} step1 per-token losses [G,T]", step1["losses"], losses.detach(), TOL_LOGITS)
    check_close(f"{label} step1 mean loss", step1["loss"], loss.detach().reshape(1), TOL_LOGITS)
    print(f"  {label} step1 loss weft {step1['loss'].item():.9g} torch {loss.item():.9g} (ln V = {np.log(V):.6g})")
    worst = (0.0, "")
    for name, p in model.named_parameters():
        key = "grad." + name
        if key not in step1:
            report(False, f"{label} grad {name}", "missing from weft's dump")
            continue
        err = check_close(f"{label} grad {name} {tuple(p.shape)}", step1[key], p.grad, TOL_GRAD)
        worst = max(worst, (err, name))
    print(f"  {label} worst gradient: {worst[1]} rel {worst[0]:.3e}")
    if "grad.wte.weight" in step1:
        pad = step1["grad.wte.weight"][V:]
        report(bool((pad == 0).all()), f"{label} grad wte.weight padded rows [{V}:{Vp}]",
               f"max |grad| {pad.abs().max().item() if pad.numel() else 0.0:.3e} (must be exactly 0)")


# ---------------------------------------------------------------- 10 training steps

def torch_train(cfg, init, batches, micro, steps):
    """Returns ([loss per step], [grad norm per step], final params) of torch training."""
    mc, oc = cfg["model"], cfg["optimizer"]
    G, T = cfg["batch"]["global"], mc["seq_length"]
    model = GPT2.from_config(mc)
    model.load_weights(init)
    decay = [p for n, p in model.named_parameters() if decays(n)]
    no_decay = [p for n, p in model.named_parameters() if not decays(n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": oc["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
        lr=oc["lr"], betas=(oc["beta1"], oc["beta2"]), eps=oc["eps"])
    losses, norms = [], []
    for s in range(1, steps + 1):
        tok = tokens_of(batches[f"step{s}"])  # [G,T+1]
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for m0 in range(0, G, micro):
            chunk = tok[m0:m0 + micro]
            l = model.token_losses(model(chunk[:, :T]), chunk[:, 1:])  # [micro,T]
            # A microbatch's MoE losses count with its share of the step (micro / G).
            (l.sum() / (G * T) + model.moe_loss() * (len(chunk) / G)).backward()
            total += l.detach().double().sum().item()
        losses.append(total / (G * T))
        clip = oc["clip_grad_norm"]
        if clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        else:
            norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
        norms.append(float(norm))
        opt.step()
    return losses, norms, {n: p.detach().clone() for n, p in model.named_parameters()}


def read_metrics(path):
    records = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                r = json.loads(line)
                records[int(r["step"])] = r
    return records


def check_training(cfg, dump, weft_exe, recipe, work, label, overrides):
    """overrides: the dump's own and the variant's (weft trains what was dumped)."""
    init, _ = read_safetensors(os.path.join(dump, "init.safetensors"))
    batches, _ = read_safetensors(os.path.join(dump, "batches.safetensors"))
    out_dir = os.path.join(work, "run-" + label)
    sets = [f"run.out_dir={out_dir}", f"run.steps={STEPS}", "log.interval=1"] + overrides
    cmd = [weft_exe, "train", recipe]
    for s in sets:
        cmd += ["--set", s]
    run(cmd, cwd=work)
    metrics = read_metrics(os.path.join(out_dir, "metrics.jsonl"))
    micro = cfg["batch"]["micro"]
    for o in overrides:
        if o.startswith("batch.micro="):
            micro = int(o.split("=", 1)[1])
    ref_losses, ref_norms, ref_params = torch_train(cfg, init, batches, micro, STEPS)

    report(sorted(metrics) == list(range(1, STEPS + 1)), f"{label} metrics steps",
           f"metrics.jsonl has steps {sorted(metrics)}")
    worst_loss = worst_norm = 0.0
    for s in range(1, STEPS + 1):
        if s not in metrics:
            continue
        r = metrics[s]
        lerr = abs(r["loss"] - ref_losses[s - 1]) / abs(ref_losses[s - 1])
        nerr = abs(r["grad_norm"] - ref_norms[s - 1]) / max(abs(ref_norms[s - 1]), 1e-30)
        worst_loss, worst_norm = max(worst_loss, lerr), max(worst_norm, nerr)
        print(f"  {label} step {s:2d}: loss weft {r['loss']:.9f} torch {ref_losses[s - 1]:.9f} rel {lerr:.2e}"
              f" | grad_norm weft {r['grad_norm']:.6g} torch {ref_norms[s - 1]:.6g} rel {nerr:.2e}"
              f" | lr {r['lr']:g}{' (clipped)' if 0 < cfg['optimizer']['clip_grad_norm'] < ref_norms[s - 1] else ''}")
        report(lerr <= TOL_TRAIN_LOSS, f"{label} step {s} loss", f"rel {lerr:.3e} (tol {TOL_TRAIN_LOSS:.0e})")
        report(nerr <= TOL_GRAD_NORM, f"{label} step {s} grad_norm", f"rel {nerr:.3e} (tol {TOL_GRAD_NORM:.0e})")
        lr_ok = abs(r["lr"] - cfg["optimizer"]["lr"]) <= 1e-12 * cfg["optimizer"]["lr"]
        if not lr_ok:
            report(False, f"{label} step {s} lr", f"weft {r['lr']!r}, constant schedule expects {cfg['optimizer']['lr']!r}")
    print(f"  {label}: worst step loss rel {worst_loss:.3e}, worst grad_norm rel {worst_norm:.3e}")

    # Final params from weft's last checkpoint, measured on the 10-step update
    # (final - init) in L2 norm: ||dW_weft - dW_torch|| / ||dW_torch|| per param.
    # The key slice [C:2C] of each attn.qkv.bias is left out: its gradient is
    # analytically zero (a key bias adds the same q.b_k to every score of a row,
    # which softmax cancels), so both sides hold rounding noise of ~1e-9 that
    # Adam's m/sqrt(v) turns into unrelated steps of up to lr.
    ckpt = os.path.join(out_dir, "checkpoints", f"step_{STEPS}", "model.safetensors")
    final, _ = read_safetensors(ckpt)
    C = cfg["model"]["hidden"]
    worst = (0.0, "")
    for name, ref in ref_params.items():
        if name not in final:
            worst = max(worst, (float("inf"), name + " (missing)"))
            continue
        dw = (final[name] - init[name]).double()
        dt = (ref - init[name]).double()
        if name.endswith("attn.qkv.bias"):
            keep = torch.ones(dt.shape[0], dtype=torch.bool)
            keep[C:2 * C] = False
            dw, dt = dw[keep], dt[keep]
        err = ((dw - dt).norm() / max(dt.norm().item(), 1e-30)).item() if dw.shape == dt.shape else float("inf")
        worst = max(worst, (err, name))
    report(worst[0] <= TOL_FINAL_UPDATE, f"{label} param updates after {STEPS} steps",
           f"worst {worst[1]} L2 rel {worst[0]:.3e} (tol {TOL_FINAL_UPDATE:.0e}) over {len(ref_params)} params")

    # Capacity acts per microbatch: eval's batches would drop other assignments
    # than one torch batch of every window, so only dropless models are compared.
    if cfg["model"].get("moe_capacity_factor", 0) == 0:
        check_eval(cfg, weft_exe, out_dir, final, work, label)


def check_eval(cfg, weft_exe, out_dir, final, work, label):
    """`weft eval` on the trained checkpoint against the torch model loaded from it."""
    text_path = os.path.join(work, f"eval-{label}.txt")
    text = "".join(f"Line {i}: the parity of weft and torch, {i * i} % {i + 7}.\n" for i in range(60))
    with open(text_path, "w") as f:
        f.write(text)
    res = subprocess.run([weft_exe, "eval", "--checkpoint", out_dir, "--text", text_path],
                         capture_output=True, text=True, timeout=300)
    if res.returncode != 0:
        report(False, f"{label} eval", f"exited {res.returncode}: {res.stderr.strip()}")
        return
    answer = json.loads(res.stdout)
    mc = cfg["model"]
    model = GPT2.from_config(mc)
    model.load_weights(final)
    ids = torch.tensor(list(text.encode("utf-8")), dtype=torch.int64)  # byte tokenizer
    T = mc["seq_length"]
    windows = (len(ids) - 1) // T
    with torch.no_grad():
        x = ids[:windows * T].view(windows, T)
        y = ids[1:windows * T + 1].view(windows, T)
        ref = model.token_losses(model(x), y).double().mean().item()
    err = abs(answer["loss"] - ref) / abs(ref)
    print(f"  {label} eval: weft {answer['loss']:.9f} torch {ref:.9f} rel {err:.2e} over {windows} windows")
    report(answer["windows"] == windows and answer["tokens"] == windows * T, f"{label} eval windows",
           f"weft {answer['windows']} windows / {answer['tokens']} tokens, expected {windows} / {windows * T}")
    report(err <= TOL_LOGITS, f"{label} eval loss", f"rel {err:.3e} (tol {TOL_LOGITS:.0e})")


def main():
    if len(sys.argv) != 4:
        print("usage: test_parity.py PARITY_DUMP BUILD_ROOT SOURCE_DIR", file=sys.stderr)
        sys.exit(2)
    dump_exe, build_root, source_dir = (os.path.abspath(a) for a in sys.argv[1:])
    recipe = os.path.join(source_dir, "gpt-parity.toml")
    weft_exe = os.path.join(build_root, "weft")
    torch.set_num_threads(2)
    print(f"torch {torch.__version__}, weft {weft_exe}, recipe {recipe}", flush=True)

    with tempfile.TemporaryDirectory(prefix="weft-parity-") as work:
        dumps = {}  # label -> (config, dump folder, overrides)
        for label, overrides in STEP1_VARIANTS:
            dump = os.path.join(work, "dump-" + label)
            try:
                cmd = [dump_exe, build_root, recipe, dump, "--steps", str(STEPS)]
                for o in overrides:
                    cmd += ["--set", o]
                run(cmd, cwd=work)
                with open(os.path.join(dump, "config.json")) as f:
                    cfg = json.load(f)
                mc = cfg["model"]
                ok = (mc["plugin"] == "gpt" and cfg["optimizer"]["plugin"] == "adamw" and cfg["world"] == 1
                      and cfg["lr_schedule"]["plugin"] == "constant" and cfg["lr_schedule"]["warmup_steps"] == 0
                      and cfg["precision"] == "fp32")
                report(ok, f"{label} recipe",
                       f"gpt L{mc['layers']} C{mc['hidden']} H{mc['heads']} T{mc['seq_length']} init_std "
                       f"{mc['init_std']:g} V{mc['vocab']} Vp{mc['padded_vocab']}, G {cfg['batch']['global']}, "
                       f"{cfg['optimizer']['plugin']} lr {cfg['optimizer']['lr']}, {cfg['lr_schedule']['plugin']} "
                       f"schedule, {cfg['precision']}")
                dumps[label] = (cfg, dump, overrides)
            except Exception:  # noqa: BLE001
                traceback.print_exc()
                report(False, f"{label} parity_dump", "did not produce its files")
                continue
            try:
                check_step1(cfg, dump, label)
            except Exception:  # noqa: BLE001
                traceback.print_exc()
                report(False, f"{label} step1", "raised")

        for label, source, overrides in VARIANTS:
            if source not in dumps:
                report(False, f"{label} training", f"no dump of variant {source}")
                continue
            cfg, dump, dumped_with = dumps[source]
            try:
                check_training(cfg, dump, weft_exe, recipe, work, label, dumped_with + overrides)
            except Exception:  # noqa: BLE001
                traceback.print_exc()
                report(False, f"{label} training", "raised")
    finish()


if __name__ == "__main__":
    main()
