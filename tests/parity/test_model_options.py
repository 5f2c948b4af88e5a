"""Document masks and Megatron's model knobs vs an independent PyTorch model (Meson suite 'parity').

    python3 test_model_options.py PARITY_DUMP BUILD_ROOT SOURCE_DIR

gpt-parity.toml on a text corpus of short documents (each sample of 33 bytes
holds several, separated by the byte tokenizer's end-of-text 256). For each
variant, `weft train` runs 4 steps and a PyTorch GPT written here from the
options' descriptions replays them on weft's initial parameters and batches
(parity_dump): every step's loss and gradient norm, and the 4-step update of
every parameter, at test_parity.py's tolerances.

- "documents": data.eod_mask_loss, reset_position_ids and reset_attention_mask
  on, two microbatches of 2: the loss is sum(mask * token loss) / sum(mask)
  over the global batch, positions restart after each end-of-text, and a token
  attends only to its own document (masks computed here from the tokens).
- "knobs": model.untie_embeddings (output.weight), bias = false,
  norm_eps = 1e-3, gelu = "erf", max_position_embeddings = 48.

Prints one line per check and "N passed, M failed"; exits 1 when anything failed.
"""

import json
import math
import os
import subprocess
import sys
import tempfile

STEPS = 4
EOT = 256  # the byte tokenizer's end-of-text
TOL_TRAIN_LOSS = 1e-4
TOL_GRAD_NORM = 1e-4
TOL_FINAL_UPDATE = 1e-3

VARIANTS = [
    ("documents",
     ["data.eod_mask_loss=true", "data.reset_position_ids=true", "data.reset_attention_mask=true", "batch.micro=2"],
     dict(eod_mask_loss=True, reset_position_ids=True, reset_attention_mask=True, micro=2)),
    ("knobs",
     ["model.untie_embeddings=true", "model.bias=false", "model.norm_eps=1e-3", "model.gelu=erf",
      "model.max_position_embeddings=48"],
     dict(untie=True, bias=False, norm_eps=1e-3, gelu="erf", positions=48)),
]

from parity_report import finish, report  # noqa: E402  (the script's folder is on sys.path)


try:
    import torch
    import torch.nn.functional as F
except Exception as e:  # noqa: BLE001
    report(False, "import torch", f"{type(e).__name__}: {e} (install Debian's python3-torch)")
    finish()

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpt2_reference import decays, read_safetensors  # noqa: E402


def document_masks(ids, opts):
    """ids [B,T] -> (doc_start [B,T], positions [B,T], loss mask [B,T]) as Megatron describes them."""
    B, T = ids.shape
    doc_start = torch.zeros(B, T, dtype=torch.int64)
    for b in range(B):
        start = 0
        for t in range(T):
            doc_start[b, t] = start
            if ids[b, t] == EOT:
                start = t + 1  # the end-of-text token closes its document
    if not opts.get("reset_attention_mask"):
        starts_for_mask = torch.zeros_like(doc_start)
    else:
        starts_for_mask = doc_start
    pos = torch.arange(T).expand(B, T)
    positions = pos - doc_start if opts.get("reset_position_ids") else pos
    mask = (ids != EOT).double() if opts.get("eod_mask_loss") else torch.ones(B, T, dtype=torch.float64)
    return starts_for_mask, positions, mask


def gelu(x, style):
    if style == "erf":
        return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def forward(P, cfg, opts, ids):
    """Per-token losses [B,T] (before masking) of the GPT described by the options, for ids [B,T+1]."""
    mc = cfg["model"]
    L, C, H, V = mc["layers"], mc["hidden"], mc["heads"], mc["vocab"]
    eps, style, bias = opts.get("norm_eps", 1e-5), opts.get("gelu", "tanh"), opts.get("bias", True)
    x_ids, targets = ids[:, :-1], ids[:, 1:]
    B, T = x_ids.shape
    doc_start, positions, _ = document_masks(x_ids, opts)
    x = P["wte.weight"][x_ids] + P["wpe.weight"][positions]

    def linear(h, name):
        y = h @ P[name + ".weight"].t()
        return y + P[name + ".bias"] if bias else y

    def norm(h, name):
        return F.layer_norm(h, (C,), P[name + ".weight"], P[name + ".bias"], eps)

    j = torch.arange(T)
    allowed = (j[None, None, :] <= j[None, :, None]) & (j[None, None, :] >= doc_start[:, :, None])  # [B,T,T]
    hs = C // H
    for i in range(L):
        p = f"blocks.{i}."
        q, k, v = linear(norm(x, p + "ln1"), p + "attn.qkv").split(C, dim=-1)
        q, k, v = (u.view(B, T, H, hs).transpose(1, 2) for u in (q, k, v))  # [B,H,T,hs]
        s = (q @ k.transpose(-2, -1)) / math.sqrt(hs)
        s = s.masked_fill(~allowed[:, None], float("-inf"))
        y = (torch.softmax(s, dim=-1) @ v).transpose(1, 2).reshape(B, T, C)
        x = x + linear(y, p + "attn.proj")
        x = x + linear(gelu(linear(norm(x, p + "ln2"), p + "mlp.fc"), style), p + "mlp.proj")
    out = P["output.weight"] if opts.get("untie") else P["wte.weight"]
    logits = norm(x, "lnf") @ out.t()
    return F.cross_entropy(logits[..., :V].reshape(B * T, V), targets.reshape(B * T), reduction="none").view(B, T)


def torch_train(cfg, init, batches, opts):
    oc = cfg["optimizer"]
    G = cfg["batch"]["global"]
    micro = opts.get("micro", G)
    P = {n: t.clone().requires_grad_(True) for n, t in init.items()}
    opt = torch.optim.AdamW([{"params": [P[n] for n in P if decays(n)], "weight_decay": oc["weight_decay"]},
                             {"params": [P[n] for n in P if not decays(n)], "weight_decay": 0.0}],
                            lr=oc["lr"], betas=(oc["beta1"], oc["beta2"]), eps=oc["eps"])
    losses, norms = [], []
    for s in range(1, STEPS + 1):
        tok = batches[f"step{s}"].round().to(torch.int64)  # [G,T+1]
        _, _, mask = document_masks(tok[:, :-1], opts)
        counted = mask.sum()  # the global batch's targets that count
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for m0 in range(0, G, micro):
            l = forward(P, cfg, opts, tok[m0:m0 + micro])
            (l * mask[m0:m0 + micro].float()).sum().div(float(counted)).backward()
            total += (l.detach().double() * mask[m0:m0 + micro]).sum().item()
        losses.append(total / counted.item())
        norms.append(float(torch.nn.utils.clip_grad_norm_(list(P.values()), oc["clip_grad_norm"])))
        opt.step()
    return losses, norms, {n: t.detach() for n, t in P.items()}


def run(cmd, cwd):
    res = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    if res.returncode != 0:
        print(res.stdout)
        raise RuntimeError(f"{' '.join(cmd)} exited {res.returncode}")


def check_variant(dump_exe, build_root, weft_exe, recipe, work, label, sets, opts):
    dump = os.path.join(work, "dump-" + label)
    cmd = [dump_exe, build_root, recipe, dump, "--steps", str(STEPS)]
    for s in sets:
        cmd += ["--set", s]
    run(cmd, work)
    with open(os.path.join(dump, "config.json")) as f:
        cfg = json.load(f)
    init, _ = read_safetensors(os.path.join(dump, "init.safetensors"))
    batches, _ = read_safetensors(os.path.join(dump, "batches.safetensors"))
    eots = sum(int((batches[f"step{s}"] == EOT).sum()) for s in range(1, STEPS + 1))
    report(eots >= 2 * STEPS * cfg["batch"]["global"], f"{label} batches hold several documents",
           f"{eots} end-of-text tokens in {STEPS} batches")
    if opts.get("untie"):
        report("output.weight" in init, f"{label} output.weight", "present" if "output.weight" in init else "missing")
    if "positions" in opts:
        shape = tuple(init["wpe.weight"].shape)
        report(shape[0] == opts["positions"], f"{label} wpe rows", f"{shape}")

    out_dir = os.path.join(work, "run-" + label)
    cmd = [weft_exe, "train", recipe]
    for s in [f"run.out_dir={out_dir}", f"run.steps={STEPS}", "log.interval=1"] + sets:
        cmd += ["--set", s]
    run(cmd, work)
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        metrics = {int(r["step"]): r for r in (json.loads(x) for x in f if x.strip())}
    ref_losses, ref_norms, ref_params = torch_train(cfg, init, batches, opts)
    worst_l = max(abs(metrics[s]["loss_step"] - ref_losses[s - 1]) / ref_losses[s - 1] for s in range(1, STEPS + 1))
    worst_n = max(abs(metrics[s]["grad_norm"] - ref_norms[s - 1]) / ref_norms[s - 1] for s in range(1, STEPS + 1))
    print(f"  {label}: losses weft {[round(metrics[s]['loss_step'], 6) for s in range(1, STEPS + 1)]} "
          f"torch {[round(x, 6) for x in ref_losses]}")
    report(worst_l <= TOL_TRAIN_LOSS, f"{label} loss of every step", f"worst rel {worst_l:.2e} (tol {TOL_TRAIN_LOSS:.0e})")
    report(worst_n <= TOL_GRAD_NORM, f"{label} grad_norm of every step", f"worst rel {worst_n:.2e} (tol {TOL_GRAD_NORM:.0e})")
    final, _ = read_safetensors(os.path.join(out_dir, "checkpoints", f"step_{STEPS}", "model.safetensors"))
    C = cfg["model"]["hidden"]
    worst = (0.0, "")
    for name, ref in ref_params.items():
        dw = (final[name] - init[name]).double()
        dt = (ref - init[name]).double()
        if name.endswith("attn.qkv.bias"):  # the key bias: an analytically zero gradient (test_parity.py)
            keep = torch.ones(dt.shape[0], dtype=torch.bool)
            keep[C:2 * C] = False
            dw, dt = dw[keep], dt[keep]
        worst = max(worst, (((dw - dt).norm() / max(dt.norm().item(), 1e-30)).item(), name))
    report(worst[0] <= TOL_FINAL_UPDATE, f"{label} param updates after {STEPS} steps",
           f"worst {worst[1]} L2 rel {worst[0]:.3e} (tol {TOL_FINAL_UPDATE:.0e}) over {len(ref_params)} params")


def main():
    dump_exe, build_root, source_dir = (os.path.abspath(a) for a in sys.argv[1:4])
    recipe = os.path.join(source_dir, "gpt-parity.toml")
    weft_exe = os.path.join(build_root, "weft")
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory(prefix="weft-model-options-") as work:
        corpus = os.path.join(work, "docs.txt")
        with open(corpus, "w") as f:  # documents of 3..14 bytes, one "%" line between them
            for i in range(400):
                f.write(("doc %d " % i + "ab" * (i % 5)).strip() + "\n%\n")
        data = [f"data.plugin=text", f"data.files={corpus}", "data.documents=percent-line"]
        for label, sets, opts in VARIANTS:
            try:
                check_variant(dump_exe, build_root, weft_exe, recipe, work, label, data + sets, opts)
            except Exception as e:  # noqa: BLE001
                report(False, label, f"raised {type(e).__name__}: {e}")
    finish()


if __name__ == "__main__":
    main()
