"""weft export --format hf and [model] init_from against PyTorch models that
read the exported folder by Hugging Face's names (Meson suite 'parity').

    python3 test_hf_interop.py PARITY_DUMP BUILD_ROOT SOURCE_DIR

For each variant (GPT-2 tied; GPT-2 untied with the erf GeLU; Llama with
grouped-query attention and an untied head; Qwen2's shape with q/k/v biases,
one kv head and a tied head):
1. `weft train` runs 2 steps of the parity recipe and `weft export` writes its
   checkpoint as a Hugging Face folder.
2. PARITY_DUMP builds the same recipe with model.init_from = the folder: its
   init.safetensors (weft's names) must equal the checkpoint bit for bit
   (the vocabulary's padding rows, which the folder lacks, 0), and its
   step-1 logits are weft's on the batch of step 1.
3. gpt2_from_hf / llama_from_hf below compute the logits of the same ids from
   the folder alone: config.json and model.safetensors by Hugging Face's
   names, with Hugging Face's conventions written from the architecture
   descriptions (GPT-2: Conv1D y = x W + b with W [in, out], c_attn = q | k | v
   along the output, gelu_new = the tanh approximation; Llama: RMSNorm,
   rotate-half RoPE, repeat_kv for grouped-query attention, SwiGLU), in
   float64. They must equal weft's first V logit columns (rel 1e-4).
Exits 1 when anything failed (torch missing counts as a failure).
"""

import json
import math
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from parity_report import finish, report  # noqa: E402

try:
    import torch
    import torch.nn.functional as F
except Exception as e:  # noqa: BLE001
    report(False, "import torch", f"{type(e).__name__}: {e} (install Debian's python3-torch)")
    finish()

from gpt2_reference import read_safetensors  # noqa: E402

TOL_LOGITS = 1e-4
V = 257  # the byte tokenizer's vocabulary

# (label, recipe, overrides)
VARIANTS = [
    ("gpt2", "gpt-parity.toml", []),
    ("gpt2_untied_erf", "gpt-parity.toml", ["model.untie_embeddings=true", "model.gelu=erf"]),
    ("llama_gqa", "llama-parity.toml", []),
    ("qwen2", "llama-parity.toml", ["model.qkv_bias=true", "model.tie_embeddings=true", "model.kv_heads=1",
                                    "model.norm_eps=1e-6", "model.rope_theta=1000000.0"]),
]


def run(cmd, cwd):
    res = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    if res.returncode != 0:
        print(res.stdout)
        raise RuntimeError(f"{' '.join(cmd)} exited {res.returncode}")
    return res.stdout


def causal_attention(q, k, v):
    """q, k, v [B, H, T, D] -> [B, T, H*D], softmax(q k^T / sqrt(D)) v under the causal mask."""
    B, H, T, D = q.shape
    s = (q @ k.transpose(-1, -2)) / math.sqrt(D)
    s = s.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    return (torch.softmax(s, dim=-1) @ v).transpose(1, 2).reshape(B, T, H * D)


def gpt2_from_hf(cfg, t, ids):
    """GPT2LMHeadModel's forward: logits [B, T, vocab_size]."""
    C, H, L, eps = cfg["n_embd"], cfg["n_head"], cfg["n_layer"], cfg["layer_norm_epsilon"]
    assert cfg.get("n_inner") is None
    if cfg["activation_function"] == "gelu_new":  # tanh approximation
        def act(x):
            return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))
    else:
        assert cfg["activation_function"] == "gelu", cfg["activation_function"]

        def act(x):
            return F.gelu(x)

    def conv1d(x, name):  # Hugging Face's Conv1D: y = x W + b, W [in, out]
        return x @ t[name + ".weight"] + t[name + ".bias"]

    def ln(x, name):
        return F.layer_norm(x, (C,), t[name + ".weight"], t[name + ".bias"], eps)

    B, T = ids.shape
    x = t["transformer.wte.weight"][ids] + t["transformer.wpe.weight"][:T]
    for i in range(L):
        p = f"transformer.h.{i}."
        q, k, v = conv1d(ln(x, p + "ln_1"), p + "attn.c_attn").split(C, dim=-1)
        q, k, v = (z.view(B, T, H, C // H).transpose(1, 2) for z in (q, k, v))
        x = x + conv1d(causal_attention(q, k, v), p + "attn.c_proj")
        x = x + conv1d(act(conv1d(ln(x, p + "ln_2"), p + "mlp.c_fc")), p + "mlp.c_proj")
    x = ln(x, "transformer.ln_f")
    tied = cfg.get("tie_word_embeddings", True)
    return x @ (t["transformer.wte.weight"] if tied else t["lm_head.weight"]).t()


def llama_from_hf(cfg, t, ids):
    """LlamaForCausalLM / Qwen2ForCausalLM's forward: logits [B, T, vocab_size]."""
    C, H, L = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_hidden_layers"]
    KV = cfg.get("num_key_value_heads", H)
    D = cfg.get("head_dim", C // H)
    eps, theta = cfg["rms_norm_eps"], cfg.get("rope_theta", 10000.0)
    assert cfg.get("hidden_act", "silu") == "silu" and cfg.get("rope_scaling") is None

    def rms(x, name):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * t[name + ".weight"]

    def linear(x, name):  # nn.Linear: y = x W^T (+ b), W [out, in]
        y = x @ t[name + ".weight"].t()
        return y + t[name + ".bias"] if name + ".bias" in t else y

    B, T = ids.shape
    inv_freq = 1.0 / (theta ** (torch.arange(0, D, 2, dtype=torch.float64) / D))
    emb = torch.outer(torch.arange(T, dtype=torch.float64), inv_freq)
    emb = torch.cat((emb, emb), dim=-1)  # [T, D]
    cos, sin = emb.cos(), emb.sin()

    def rotate_half(x):
        return torch.cat((-x[..., D // 2:], x[..., :D // 2]), dim=-1)

    def repeat_kv(x):  # [B, KV, T, D] -> [B, H, T, D]: kv head j serves heads j*n .. (j+1)*n - 1
        n = H // KV
        return x[:, :, None].expand(B, KV, n, T, D).reshape(B, KV * n, T, D)

    x = t["model.embed_tokens.weight"][ids]
    for i in range(L):
        p = f"model.layers.{i}."
        h = rms(x, p + "input_layernorm")
        q = linear(h, p + "self_attn.q_proj").view(B, T, H, D).transpose(1, 2)
        k = linear(h, p + "self_attn.k_proj").view(B, T, KV, D).transpose(1, 2)
        v = linear(h, p + "self_attn.v_proj").view(B, T, KV, D).transpose(1, 2)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        x = x + linear(causal_attention(q, repeat_kv(k), repeat_kv(v)), p + "self_attn.o_proj")
        h = rms(x, p + "post_attention_layernorm")
        x = x + linear(F.silu(linear(h, p + "mlp.gate_proj")) * linear(h, p + "mlp.up_proj"), p + "mlp.down_proj")
    x = rms(x, "model.norm")
    tied = cfg.get("tie_word_embeddings", False)
    return x @ (t["model.embed_tokens.weight"] if tied else t["lm_head.weight"]).t()


def rel_err(a, b):
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    if a.shape != b.shape:
        return float("inf")
    return ((a - b).abs().max() / max(b.abs().max().item(), 1e-30)).item()


def export_and_dump(label, recipe, overrides, dump_exe, build_root, weft, work):
    """Trains 2 steps, exports the checkpoint, dumps weft's step-1 logits from the folder.
    Returns (run folder, Hugging Face folder, its config, dump folder, ids [G, T], weft's logits [G, T, V])."""
    sets = []
    for o in overrides:
        sets += ["--set", o]
    out = os.path.join(work, "run-" + label)
    run([weft, "train", recipe, "--set", f"run.out_dir={out}", "--set", "run.steps=2"] + sets, work)
    hf = os.path.join(work, "hf-" + label)
    run([weft, "export", "--checkpoint", out, "--format", "hf", hf], work)
    with open(os.path.join(hf, "config.json")) as f:
        cfg = json.load(f)
    dump = os.path.join(work, "dump-" + label)
    run([dump_exe, build_root, recipe, dump, "--steps", "1", "--set", f"model.init_from={hf}"] + sets, work)
    batches, _ = read_safetensors(os.path.join(dump, "batches.safetensors"))
    step1, _ = read_safetensors(os.path.join(dump, "step1.safetensors"))
    with open(os.path.join(dump, "config.json")) as f:
        T = json.load(f)["model"]["seq_length"]
    ids = batches["step1"].round().to(torch.int64)[:, :T]
    return out, hf, cfg, dump, ids, step1["logits"][..., :V]


def check_variant(label, recipe, overrides, dump_exe, build_root, weft, work):
    out, hf, cfg, dump, ids, weft_logits = export_and_dump(label, recipe, overrides, dump_exe, build_root, weft, work)
    arch = cfg["architectures"][0]
    print(f"  {label}: {arch} {json.dumps(cfg)}")

    # init_from -> the checkpoint, bit for bit.
    saved, _ = read_safetensors(os.path.join(out, "checkpoints", "step_2", "model.safetensors"))
    loaded, _ = read_safetensors(os.path.join(dump, "init.safetensors"))
    bad = []
    for name, want in saved.items():
        got = loaded.get(name)
        if got is None or got.shape != want.shape:
            bad.append(f"{name} missing or of another shape")
            continue
        real = V if name in ("wte.weight", "output.weight", "embed.weight", "head.weight") else want.shape[0]
        if not torch.equal(got[:real], want[:real]) or bool((got[real:] != 0).any()):
            bad.append(name)
    report(not bad and len(loaded) == len(saved), f"{label} init_from equals the checkpoint",
           f"differ: {bad}" if bad else f"{len(saved)} tensors bit for bit, padding rows 0")

    # The folder alone, by Hugging Face's names and conventions -> weft's logits.
    tensors, meta = read_safetensors(os.path.join(hf, "model.safetensors"))
    report(meta.get("format") == "pt" and cfg["vocab_size"] == V, f"{label} folder metadata",
           f"format {meta.get('format')}, vocab_size {cfg['vocab_size']}")
    t = {n: x.double() for n, x in tensors.items()}
    if arch == "GPT2LMHeadModel":
        logits = gpt2_from_hf(cfg, t, ids)
    else:
        logits = llama_from_hf(cfg, t, ids)
    err = rel_err(weft_logits, logits)
    report(err <= TOL_LOGITS, f"{label} logits of the folder read as {arch} vs weft's", f"rel {err:.3e} "
           f"(tol {TOL_LOGITS:.0e})")
    if label == "llama_gqa":
        check_bf16_folder(label, recipe, hf, tensors, dump_exe, build_root, work)


def check_bf16_folder(label, recipe, hf, tensors, dump_exe, build_root, work):
    """A BF16 copy of the folder (torch's round to nearest even, as transformers saves bf16 models): init_from
    loads each value widened to the float32 torch gives."""
    bf16 = os.path.join(work, "hf-bf16-" + label)
    os.makedirs(bf16)
    shutil.copy(os.path.join(hf, "config.json"), bf16)
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, x in tensors.items():
        raw = x.to(torch.bfloat16).view(torch.int16).numpy().tobytes()
        header[name] = {"dtype": "BF16", "shape": list(x.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    with open(os.path.join(bf16, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head + b"".join(blobs))
    dump = os.path.join(work, "dump-bf16-" + label)
    run([dump_exe, build_root, recipe, dump, "--steps", "1", "--set", f"model.init_from={bf16}"], work)
    loaded, _ = read_safetensors(os.path.join(dump, "init.safetensors"))
    names = {"model.embed_tokens.weight": "embed.weight", "lm_head.weight": "head.weight",
             "model.norm.weight": "norm.weight", "model.layers.1.self_attn.k_proj.weight": "blocks.1.attn.k.weight",
             "model.layers.0.mlp.down_proj.weight": "blocks.0.mlp.down.weight"}
    bad = [w for h, w in names.items()
           if not torch.equal(loaded[w][:tensors[h].shape[0]], tensors[h].to(torch.bfloat16).float())]
    report(not bad, f"{label} init_from a BF16 folder widens its values exactly",
           f"differ: {bad}" if bad else f"{len(names)} tensors checked")


def for_each_variant(script, check):
    """The scripts' main: check(label, recipe, overrides, dump_exe, build_root, weft, work) for every variant, then
    the tally (a variant that raises fails)."""
    if len(sys.argv) != 4:
        print(f"usage: {script} PARITY_DUMP BUILD_ROOT SOURCE_DIR", file=sys.stderr)
        sys.exit(2)
    dump_exe, build_root, source_dir = (os.path.abspath(a) for a in sys.argv[1:])
    weft = os.path.join(build_root, "weft")
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory(prefix="weft-hf-") as work:
        for label, recipe, overrides in VARIANTS:
            try:
                check(label, os.path.join(source_dir, recipe), overrides, dump_exe, build_root, weft, work)
            except Exception:  # noqa: BLE001
                traceback.print_exc()
                report(False, label, "raised")
    finish()


if __name__ == "__main__":
    for_each_variant("test_hf_interop.py", check_variant)
