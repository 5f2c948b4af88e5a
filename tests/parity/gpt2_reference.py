"""An independent PyTorch GPT-2 for weft's parity suite, and a safetensors reader.

The model follows the GPT-2 recipe weft documents (docs/checkpoints.md, models/gpt):
learned token embedding wte [Vp, C] (vocabulary padded to Vp rows) and
position embedding wpe [T, C]; L pre-LN blocks x + attn(ln1(x)), then
x + mlp(ln2(x)); causal multi-head attention from one qkv Linear [3C, C]
whose outputs are q | k | v (C each, the H heads contiguous inside each),
scores scaled by 1/sqrt(C/H); a 4x MLP with the tanh GeLU; a final LayerNorm
lnf (eps 1e-5 everywhere); logits = x @ wte^T over all Vp rows (tied head);
cross entropy over the first V logit columns only.

Parameter names equal weft's logical names (wte.weight, blocks.0.attn.qkv.bias,
lnf.weight, ...), so weights load from weft's safetensors files by name.
Everything is float32.
"""

import json
import math
import struct

import numpy as np
import torch
import torch.nn as nn


# ---------------------------------------------------------------- safetensors

def read_safetensors(path):
    """Returns ({name: float32 torch.Tensor}, metadata) of a safetensors file.

    Layout: an 8-byte little-endian header length n, n bytes of JSON
    {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}},
    then the raw little-endian data; offsets count from the end of the header.
    Only F32 tensors are expected here.
    """
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        raise ValueError(f"{path}: shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", raw[:8])
    if 8 + n > len(raw):
        raise ValueError(f"{path}: header length {n} runs past the end of the file ({len(raw)} bytes)")
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    data = memoryview(raw)[8 + n:]
    metadata = header.pop("__metadata__", {})
    out = {}
    for name, entry in header.items():
        if entry["dtype"] != "F32":
            raise ValueError(f"{path}: {name} has dtype {entry['dtype']}, expected F32")
        begin, end = entry["data_offsets"]
        shape = [int(d) for d in entry["shape"]]
        count = int(np.prod(shape)) if shape else 1
        if end - begin != 4 * count or end > len(data):
            raise ValueError(f"{path}: {name} {shape} has bad data_offsets {begin}..{end}")
        arr = np.frombuffer(data[begin:end], dtype="<f4").astype(np.float32).reshape(shape)
        out[name] = torch.from_numpy(arr.copy())
    return out, metadata


# ---------------------------------------------------------------- model

def gelu_tanh(x):
    # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x)))


class CausalSelfAttention(nn.Module):
    def __init__(self, hidden, heads):
        super().__init__()
        assert hidden % heads == 0
        self.hidden, self.heads = hidden, heads
        self.qkv = nn.Linear(hidden, 3 * hidden)  # weight [3C, C]: rows q | k | v
        self.proj = nn.Linear(hidden, hidden)

    def forward(self, x):  # x [B,T,C]
        B, T, C = x.shape
        H, hs = self.heads, C // self.heads
        qkv = self.qkv(x)  # [B,T,3C]
        q, k, v = qkv.split(C, dim=-1)  # each [B,T,C], head h = columns h*hs .. (h+1)*hs
        q = q.view(B, T, H, hs).transpose(1, 2)  # [B,H,T,hs]
        k = k.view(B, T, H, hs).transpose(1, 2)
        v = v.view(B, T, H, hs).transpose(1, 2)
        scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))  # [B,H,T,T]
        causal = torch.ones(T, T, dtype=torch.bool).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
        att = torch.softmax(scores, dim=-1)
        y = att @ v  # [B,H,T,hs]
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.proj(y)


class MLP(nn.Module):
    def __init__(self, hidden):
        super().__init__()
        self.fc = nn.Linear(hidden, 4 * hidden)
        self.proj = nn.Linear(4 * hidden, hidden)

    def forward(self, x):
        return self.proj(gelu_tanh(self.fc(x)))


class MoE(nn.Module):
    """Mixture-of-experts MLP, written from docs/distributed.md ("Mixture of experts").

    Router z = x Wr^T (Wr [E, C], no bias), p = softmax(z); each token takes its
    k most probable experts (ties to the lower index) weighted by p renormalised
    over those k. With capacity factor f > 0 an expert takes at most
    ceil(f N k / E) of the N tokens' assignments, every token's first choice
    (in token order) before any second choice; dropped assignments add nothing.
    Losses of the microbatch: aux = a E sum_i f_i P_i (f_i: share of the N k
    assignments routed to i before drops, a constant; P_i: mean of p[:, i]) and
    z = b mean_t logsumexp(z_t)^2; forward() leaves their sum in self.loss.
    """

    def __init__(self, hidden, experts, top_k, capacity_factor, aux_coef, z_coef, make_expert=None):
        """make_expert() builds one expert [.., C] -> [.., C]; None: GPT-2's MLP(hidden)."""
        super().__init__()
        self.router = nn.Linear(hidden, experts, bias=False)
        self.experts = nn.ModuleList([make_expert() if make_expert else MLP(hidden) for _ in range(experts)])
        self.E, self.k, self.f, self.a, self.b = experts, top_k, capacity_factor, aux_coef, z_coef
        self.loss = torch.zeros(())

    def forward(self, x):  # x [B,T,C]
        shape, C = x.shape, x.shape[-1]
        xf = x.reshape(-1, C)
        N, E, k = xf.shape[0], self.E, self.k
        z = self.router(xf)  # [N,E]
        p = torch.softmax(z, dim=-1)
        # Descending probability, ties to the lower expert index (a stable sort).
        chosen = torch.sort(-p.detach(), dim=-1, stable=True).indices[:, :k]  # [N,k]
        top = p.gather(1, chosen)  # [N,k]
        w = top / top.sum(dim=-1, keepdim=True)
        cap = math.ceil(self.f * N * k / E) if self.f > 0 else N * k
        taken = [0] * E
        kept = []  # (token, slot)
        for j in range(k):
            for t in range(N):
                e = int(chosen[t, j])
                if taken[e] < cap:
                    taken[e] += 1
                    kept.append((t, j))
        out = torch.zeros_like(xf)
        for e in range(E):
            rows = [(t, j) for (t, j) in kept if int(chosen[t, j]) == e]
            if not rows:
                continue
            ts = torch.tensor([t for t, _ in rows])
            js = torch.tensor([j for _, j in rows])
            y = self.experts[e](xf[ts])  # [rows, C]
            out = out.index_add(0, ts, w[ts, js].unsqueeze(1) * y)
        assigned = torch.bincount(chosen.reshape(-1), minlength=E).to(xf.dtype) / (N * k)  # f_i
        aux = self.a * E * (assigned * p.mean(dim=0)).sum()
        zl = self.b * (torch.logsumexp(z, dim=-1) ** 2).mean()
        self.loss = aux + zl
        return out.view(shape)


class Block(nn.Module):
    def __init__(self, hidden, heads, moe=None):
        super().__init__()
        self.ln1 = nn.LayerNorm(hidden, eps=1e-5)
        self.attn = CausalSelfAttention(hidden, heads)
        self.ln2 = nn.LayerNorm(hidden, eps=1e-5)
        self.mlp = MoE(hidden, **moe) if moe else MLP(hidden)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT2(nn.Module):
    def __init__(self, layers, hidden, heads, seq_length, vocab, padded_vocab, moe=None, moe_every=1):
        """moe: MoE's keyword arguments for blocks i with i % moe_every == 0 (None: dense MLPs)."""
        super().__init__()
        self.vocab, self.padded_vocab, self.seq_length = vocab, padded_vocab, seq_length
        self.wte = nn.Embedding(padded_vocab, hidden)  # [Vp,C], also the output head
        self.wpe = nn.Embedding(seq_length, hidden)    # [T,C]
        self.blocks = nn.ModuleList([Block(hidden, heads, moe if i % moe_every == 0 else None)
                                     for i in range(layers)])
        self.lnf = nn.LayerNorm(hidden, eps=1e-5)

    @classmethod
    def from_config(cls, model_cfg):
        moe = None
        if model_cfg.get("moe_experts", 0) > 0:
            moe = dict(experts=model_cfg["moe_experts"], top_k=model_cfg["moe_top_k"],
                       capacity_factor=model_cfg["moe_capacity_factor"], aux_coef=model_cfg["moe_aux_loss_coef"],
                       z_coef=model_cfg["moe_z_loss_coef"])
        return cls(model_cfg["layers"], model_cfg["hidden"], model_cfg["heads"], model_cfg["seq_length"],
                   model_cfg["vocab"], model_cfg["padded_vocab"], moe, model_cfg.get("moe_every", 1))

    def moe_loss(self):
        """The MoE blocks' aux + z losses of the last forward (0 for a dense model)."""
        return sum((b.mlp.loss for b in self.blocks if isinstance(b.mlp, MoE)), torch.zeros(()))

    def load_weights(self, tensors):
        """Copies weft's params (by logical name) into this model; names and shapes must match exactly."""
        own = dict(self.named_parameters())
        missing = sorted(set(own) - set(tensors))
        extra = sorted(set(tensors) - set(own))
        if missing or extra:
            raise KeyError(f"parameter names differ: missing from weft {missing}, unknown to torch {extra}")
        with torch.no_grad():
            for name, p in own.items():
                src = tensors[name]
                if tuple(src.shape) != tuple(p.shape):
                    raise ValueError(f"{name}: weft shape {tuple(src.shape)}, torch shape {tuple(p.shape)}")
                p.copy_(src)

    def forward(self, ids):
        """ids [B,T] int64 -> logits [B,T,Vp]."""
        B, T = ids.shape
        x = self.wte(ids) + self.wpe(torch.arange(T))[None, :, :]
        for block in self.blocks:
            x = block(x)
        x = self.lnf(x)
        return x @ self.wte.weight.t()  # tied head over all Vp rows

    def token_losses(self, logits, targets):
        """Per-token cross entropy [B,T] over the first V columns of logits [B,T,Vp]."""
        B, T, _ = logits.shape
        real = logits[..., :self.vocab].reshape(B * T, self.vocab)
        return nn.functional.cross_entropy(real, targets.reshape(B * T), reduction="none").view(B, T)


def decays(name):
    """GPT-2 weight-decay rule: every matrix and embedding, not biases nor LayerNorm weights."""
    if name.endswith(".bias"):
        return False
    last_module = name.rsplit(".", 2)[-2]  # blocks.0.ln1.weight -> ln1
    return last_module not in ("ln1", "ln2", "lnf")
