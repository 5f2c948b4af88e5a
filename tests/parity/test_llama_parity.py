"""weft's llama model vs an independent PyTorch Llama / Qwen2 (Meson suite 'parity').

    python3 test_llama_parity.py PARITY_DUMP BUILD_ROOT SOURCE_DIR

For each variant of llama-parity.toml (grouped-query attention with an untied
head; Qwen2's shape with q/k/v biases, one kv head, a tied head, eps 1e-6 and
RoPE base 1e6; the first again at init_std 0.02; mixture-of-experts MLPs of
SwiGLU experts, top-2 and top-1 with capacity drops):
1. PARITY_DUMP writes weft's initial params, the token batches of steps 1..10
   and, for the batch of step 1, weft's logits, per-token losses, mean loss
   and every param's gradient (dloss_scale = 1/(G*T)).
2. llama_reference.Llama loads the same params; logits, losses, loss and every
   gradient (torch autograd) are compared.
3. For the training variants, `weft train` runs 10 steps; every step's loss
   and grad_norm and every param's 10-step update are compared with 10 steps of
   torch.optim.AdamW + clip_grad_norm_ on the same batches.
Tolerances are the GPT-2 parity suite's (test_parity.py). Exits 1 when
anything failed (torch missing counts as a failure, never a skip).
"""

import json
import os
import subprocess
import sys
import tempfile
import tomllib
import traceback

TOL_LOGITS = 1e-5
TOL_GRAD = 1e-4
TOL_TRAIN_LOSS = 1e-4
TOL_GRAD_NORM = 1e-4
TOL_FINAL_UPDATE = 1e-3
# The key bias's gradient is nearly zero: it adds q . R(j - i) b_k to the score
# of key j, which varies with j only through the rotation, and not at all in
# the low-frequency dimensions (rope_theta 1e6). Adam's m/sqrt(v) turns the
# rounding noise of those elements into steps of up to lr, so its 10-step
# update gets a looser bound (observed 1.8e-3).
TOL_KEY_BIAS_UPDATE = 1e-2
STEPS = 10

QWEN2 = ["model.qkv_bias=true", "model.tie_embeddings=true", "model.kv_heads=1", "model.norm_eps=1e-6",
         "model.rope_theta=1000000.0"]
MOE = ["model.moe_experts=4", "model.moe_z_loss_coef=0.001"]
# (label, overrides, train: None or the batch.micro values to train with)
VARIANTS = [
    ("llama_gqa", [], [4, 2]),
    ("qwen2", QWEN2, [4]),
    ("llama_init002", ["model.init_std=0.02"], None),
    # SwiGLU experts: top-2 in every other block (10 steps), and top-1 with capacity drops in every
    # block (step 1 only: over 10 steps a token at the capacity cut-off goes to another expert in
    # weft than in torch after step 4, a discrete flip that rounding decides, not a difference).
    ("llama_moe_top2", MOE + ["model.moe_top_k=2", "model.moe_every=2"], [4, 2]),
    ("llama_moe_top1_drop", MOE + ["model.moe_top_k=1", "model.moe_capacity_factor=0.5"], None),
]
MOE_KEYS = ("moe_experts", "moe_top_k", "moe_every", "moe_capacity_factor", "moe_aux_loss_coef", "moe_z_loss_coef")

from parity_report import finish, report  # noqa: E402  (the script's folder is on sys.path)


try:
    import torch
except Exception as e:  # noqa: BLE001
    report(False, "import torch", f"{type(e).__name__}: {e} (install Debian's python3-torch)")
    finish()

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpt2_reference import read_safetensors  # noqa: E402
from llama_reference import Llama, decays  # noqa: E402


def rel_err(a, b):
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    if a.shape != b.shape:
        return float("inf")
    return ((a - b).abs().max() / max(b.abs().max().item(), 1e-30)).item()


def check_close(name, got, want, tol):
    err = rel_err(got, want)
    report(err <= tol, name, f"rel {err:.3e} (tol {tol:.0e})")


def run(cmd, cwd):
    res = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    if res.returncode != 0:
        print(res.stdout)
        raise RuntimeError(f"{' '.join(cmd)} exited {res.returncode}")


def model_config(cfg):
    """The reference's sizes from the dump's config.json ([model] options as TOML literals)."""
    o = {k: tomllib.loads(f"x = {v}")["x"] for k, v in cfg["model_options"].items()}
    c = dict(cfg["model"])
    c.update({k: o[k] for k in ("kv_heads", "ffn_hidden", "norm_eps", "rope_theta", "qkv_bias", "tie_embeddings")})
    c.update({k: o[k] for k in MOE_KEYS if k in o})
    if c["kv_heads"] == 0:
        c["kv_heads"] = c["heads"]
    return c


def tokens(batch):
    return batch.round().to(torch.int64)


def check_step1(cfg, dump, label):
    mc = model_config(cfg)
    init, _ = read_safetensors(os.path.join(dump, "init.safetensors"))
    batches, _ = read_safetensors(os.path.join(dump, "batches.safetensors"))
    step1, _ = read_safetensors(os.path.join(dump, "step1.safetensors"))
    model = Llama(mc)
    torch_names = {n: tuple(p.shape) for n, p in model.named_parameters()}
    weft_names = {p["name"]: tuple(p["shape"]) for p in cfg["params"]}
    report(torch_names == weft_names, f"{label} param names and shapes",
           f"{len(weft_names)} weft, {len(torch_names)} torch; only weft "
           f"{sorted(set(weft_names.items()) - set(torch_names.items()))}, only torch "
           f"{sorted(set(torch_names.items()) - set(weft_names.items()))}")
    wd_wrong = [p["name"] for p in cfg["params"] if p["weight_decay"] != decays(p["name"])]
    report(not wd_wrong, f"{label} weight_decay flags", f"differ for {wd_wrong}" if wd_wrong else "matrices only")
    model.load_weights(init)
    G, T = cfg["batch"]["global"], mc["seq_length"]
    tok = tokens(batches["step1"])
    ids, targets = tok[:, :T], tok[:, 1:]
    logits = model(ids)
    losses = model.token_losses(logits, targets)
    loss = losses.mean()
    moe_loss = model.moe_loss()  # aux + z losses, weight 1 for one microbatch of the whole batch
    (loss + moe_loss).backward()
    if mc.get("moe_experts", 0) > 0:
        check_close(f"{label} step1 MoE aux + z loss", step1["moe_loss"], moe_loss.detach().reshape(1), TOL_LOGITS)
    check_close(f"{label} step1 logits [G,T,Vp]", step1["logits"], logits.detach(), TOL_LOGITS)
    check_close(f"{label} step1 per-token losses", step1["losses"], losses.detach(), TOL_LOGITS)
    check_close(f"{label} step1 mean loss", step1["loss"], loss.detach().reshape(1), TOL_LOGITS)
    print(f"  {label} step1 loss weft {step1['loss'].item():.9g} torch {loss.item():.9g}")
    for name, p in model.named_parameters():
        if "grad." + name not in step1:
            report(False, f"{label} grad {name}", "missing from weft's dump")
            continue
        check_close(f"{label} grad {name} {tuple(p.shape)}", step1["grad." + name], p.grad, TOL_GRAD)


def torch_train(mc, oc, G, init, batches, micro):
    T = mc["seq_length"]
    model = Llama(mc)
    model.load_weights(init)
    named = list(model.named_parameters())
    opt = torch.optim.AdamW([{"params": [p for n, p in named if decays(n)], "weight_decay": oc["weight_decay"]},
                             {"params": [p for n, p in named if not decays(n)], "weight_decay": 0.0}],
                            lr=oc["lr"], betas=(oc["beta1"], oc["beta2"]), eps=oc["eps"])
    losses, norms = [], []
    for s in range(1, STEPS + 1):
        tok = tokens(batches[f"step{s}"])
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for m0 in range(0, G, micro):
            chunk = tok[m0:m0 + micro]
            l = model.token_losses(model(chunk[:, :T]), chunk[:, 1:])
            (l.sum() / (G * T) + model.moe_loss() * (len(chunk) / G)).backward()
            total += l.detach().double().sum().item()
        losses.append(total / (G * T))
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), oc["clip_grad_norm"])))
        opt.step()
    return losses, norms, {n: p.detach().clone() for n, p in model.named_parameters()}


def check_training(cfg, dump, weft, recipe, work, label, overrides, micro):
    mc, oc, G = model_config(cfg), cfg["optimizer"], cfg["batch"]["global"]
    init, _ = read_safetensors(os.path.join(dump, "init.safetensors"))
    batches, _ = read_safetensors(os.path.join(dump, "batches.safetensors"))
    out = os.path.join(work, f"run-{label}-micro{micro}")
    cmd = [weft, "train", recipe]
    for s in [f"run.out_dir={out}", f"run.steps={STEPS}", "log.interval=1", f"batch.micro={micro}"] + overrides:
        cmd += ["--set", s]
    run(cmd, work)
    metrics = {}
    with open(os.path.join(out, "metrics.jsonl")) as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                metrics[int(r["step"])] = r
    ref_losses, ref_norms, ref_params = torch_train(mc, oc, G, init, batches, micro)
    name = f"{label} micro{micro}"
    for s in range(1, STEPS + 1):
        r = metrics.get(s)
        if r is None:
            report(False, f"{name} step {s}", "missing from metrics.jsonl")
            continue
        lerr = abs(r["loss"] - ref_losses[s - 1]) / abs(ref_losses[s - 1])
        nerr = abs(r["grad_norm"] - ref_norms[s - 1]) / ref_norms[s - 1]
        print(f"  {name} step {s:2d}: loss weft {r['loss']:.9f} torch {ref_losses[s - 1]:.9f} | grad_norm "
              f"weft {r['grad_norm']:.6g} torch {ref_norms[s - 1]:.6g}")
        report(lerr <= TOL_TRAIN_LOSS, f"{name} step {s} loss", f"rel {lerr:.3e} (tol {TOL_TRAIN_LOSS:.0e})")
        report(nerr <= TOL_GRAD_NORM, f"{name} step {s} grad_norm", f"rel {nerr:.3e} (tol {TOL_GRAD_NORM:.0e})")
    final, _ = read_safetensors(os.path.join(out, "checkpoints", f"step_{STEPS}", "model.safetensors"))
    worst = (0.0, "")
    for pname, ref in ref_params.items():
        if pname not in final:
            worst = max(worst, (float("inf"), pname + " (missing)"))
            continue
        dw, dt = (final[pname] - init[pname]).double(), (ref - init[pname]).double()
        err = ((dw - dt).norm() / max(dt.norm().item(), 1e-30)).item() if dw.shape == dt.shape else float("inf")
        if pname.endswith("attn.k.bias"):
            report(err <= TOL_KEY_BIAS_UPDATE, f"{name} {pname} update after {STEPS} steps",
                   f"L2 rel {err:.3e} (tol {TOL_KEY_BIAS_UPDATE:.0e})")
            continue
        worst = max(worst, (err, pname))
    report(worst[0] <= TOL_FINAL_UPDATE, f"{name} param updates after {STEPS} steps",
           f"worst {worst[1]} L2 rel {worst[0]:.3e} (tol {TOL_FINAL_UPDATE:.0e}) over {len(ref_params)} params")


def main():
    if len(sys.argv) != 4:
        print("usage: test_llama_parity.py PARITY_DUMP BUILD_ROOT SOURCE_DIR", file=sys.stderr)
        sys.exit(2)
    dump_exe, build_root, source_dir = (os.path.abspath(a) for a in sys.argv[1:])
    recipe = os.path.join(source_dir, "llama-parity.toml")
    weft = os.path.join(build_root, "weft")
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory(prefix="weft-llama-parity-") as work:
        for label, overrides, micros in VARIANTS:
            dump = os.path.join(work, "dump-" + label)
            try:
                cmd = [dump_exe, build_root, recipe, dump, "--steps", str(STEPS)]
                for o in overrides:
                    cmd += ["--set", o]
                run(cmd, work)
                with open(os.path.join(dump, "config.json")) as f:
                    cfg = json.load(f)
                ok = (cfg["model"]["plugin"] == "llama" and cfg["world"] == 1 and cfg["precision"] == "fp32"
                      and cfg["lr_schedule"]["plugin"] == "constant" and cfg["optimizer"]["plugin"] == "adamw")
                report(ok, f"{label} recipe", json.dumps(model_config(cfg)))
                check_step1(cfg, dump, label)
                for micro in micros or []:
                    check_training(cfg, dump, weft, recipe, work, label, overrides, micro)
            except Exception:  # noqa: BLE001
                traceback.print_exc()
                report(False, label, "raised")
    finish()


if __name__ == "__main__":
    main()
