"""An independent PyTorch Llama / Qwen2 for weft's parity suite.

Written from the architecture as Hugging Face's LlamaForCausalLM and
Qwen2ForCausalLM define it (docs/models.md): token embedding [Vp, C], no
position table; L pre-norm blocks h = x + o(attn(rope(q(n1(x))), rope(k(n1(x))),
v(n1(x)))), y = h + down(silu(gate(n2(h))) * up(n2(h))); RMSNorm
x / sqrt(mean(x^2) + eps) * w; rotary embeddings in the rotate-half layout
(cos/sin of position * theta^(-2i/D) for i < D/2, repeated over both halves);
grouped-query attention where head i reads kv head i // (H / KV); causal
softmax scaled by 1/sqrt(D); final RMSNorm; logits = x @ W^T over all Vp rows
with W the head's own table or, tied, the embedding's; cross entropy over the
first V columns.

A mixture-of-experts block (moe_experts E > 0, blocks i % moe_every == 0)
replaces the MLP with gpt2_reference.MoE (router, top-k, capacity, aux and z
losses) over E SwiGLU experts of width F ("mlp.router.weight",
"mlp.experts.<e>.{gate,up,down}.weight").

Parameter names equal weft's logical names (embed.weight,
blocks.0.attn.q.weight, ...), so weights load from weft's safetensors by name.
Everything is float32.
"""

import math

import torch
import torch.nn as nn

from gpt2_reference import MoE


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rope(x, theta):
    """x [B, H, T, D] rotated by position t = 0..T-1."""
    T, D = x.shape[2], x.shape[3]
    inv_freq = 1.0 / (theta ** (torch.arange(0, D, 2, dtype=torch.float64) / D))
    freqs = torch.outer(torch.arange(T, dtype=torch.float64), inv_freq)  # [T, D/2]
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
    return x * cos + rotate_half(x) * sin


class Attention(nn.Module):
    def __init__(self, C, H, KV, bias, theta):
        super().__init__()
        self.H, self.KV, self.D, self.theta = H, KV, C // H, theta
        self.q = nn.Linear(C, H * self.D, bias=bias)
        self.k = nn.Linear(C, KV * self.D, bias=bias)
        self.v = nn.Linear(C, KV * self.D, bias=bias)
        self.o = nn.Linear(H * self.D, C, bias=False)

    def forward(self, x):
        B, T, _ = x.shape
        q = self.q(x).view(B, T, self.H, self.D).transpose(1, 2)
        k = self.k(x).view(B, T, self.KV, self.D).transpose(1, 2)
        v = self.v(x).view(B, T, self.KV, self.D).transpose(1, 2)
        q, k = rope(q, self.theta), rope(k, self.theta)
        rep = self.H // self.KV
        k = k.repeat_interleave(rep, dim=1)  # head i reads kv head i // rep
        v = v.repeat_interleave(rep, dim=1)
        s = (q @ k.transpose(-1, -2)) / math.sqrt(self.D)
        mask = torch.ones(T, T, dtype=torch.bool).tril()
        s = s.masked_fill(~mask, float("-inf"))
        y = torch.softmax(s, dim=-1) @ v  # [B, H, T, D]
        return self.o(y.transpose(1, 2).reshape(B, T, self.H * self.D))


class MLP(nn.Module):
    def __init__(self, C, F):
        super().__init__()
        self.gate = nn.Linear(C, F, bias=False)
        self.up = nn.Linear(C, F, bias=False)
        self.down = nn.Linear(F, C, bias=False)

    def forward(self, x):
        return self.down(nn.functional.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    def __init__(self, c, moe=False):
        super().__init__()
        C, F = c["hidden"], c["ffn_hidden"]
        self.attn_norm = RMSNorm(C, c["norm_eps"])
        self.attn = Attention(C, c["heads"], c["kv_heads"], c["qkv_bias"], c["rope_theta"])
        self.mlp_norm = RMSNorm(C, c["norm_eps"])
        if moe:
            self.mlp = MoE(C, c["moe_experts"], c["moe_top_k"], c["moe_capacity_factor"], c["moe_aux_loss_coef"],
                           c["moe_z_loss_coef"], make_expert=lambda: MLP(C, F))
        else:
            self.mlp = MLP(C, F)

    def forward(self, x):
        h = x + self.attn(self.attn_norm(x))
        return h + self.mlp(self.mlp_norm(h))


class Llama(nn.Module):
    """c: hidden, heads, kv_heads, ffn_hidden, layers, norm_eps, rope_theta, qkv_bias,
    tie_embeddings, vocab (V), padded_vocab (Vp); optionally moe_experts (0 = dense),
    moe_top_k, moe_every, moe_capacity_factor, moe_aux_loss_coef, moe_z_loss_coef."""

    def __init__(self, c):
        super().__init__()
        self.V, Vp, C = c["vocab"], c["padded_vocab"], c["hidden"]
        self.embed = nn.Embedding(Vp, C)
        E, every = c.get("moe_experts", 0), c.get("moe_every", 1)
        self.blocks = nn.ModuleList(Block(c, E > 0 and i % every == 0) for i in range(c["layers"]))
        self.norm = RMSNorm(C, c["norm_eps"])
        self.tied = c["tie_embeddings"]
        if not self.tied:
            self.head = nn.Linear(C, Vp, bias=False)

    def forward(self, ids):
        x = self.embed(ids)
        for b in self.blocks:
            x = b(x)
        w = self.embed.weight if self.tied else self.head.weight
        return self.norm(x) @ w.t()  # [B, T, Vp]

    def moe_loss(self):
        """The MoE blocks' aux + z losses of the last forward (0 for a dense model)."""
        return sum((b.mlp.loss for b in self.blocks if isinstance(b.mlp, MoE)), torch.zeros(()))

    def token_losses(self, logits, targets):
        V = self.V
        return nn.functional.cross_entropy(logits[..., :V].reshape(-1, V), targets.reshape(-1),
                                           reduction="none").view(targets.shape)

    def load_weights(self, tensors):
        with torch.no_grad():
            for n, p in self.named_parameters():
                p.copy_(tensors[n])


def decays(name):
    """Weight decay on matrices and tables, not on biases nor RMSNorm weights."""
    if name.endswith(".bias"):
        return False
    return not name.rsplit(".", 2)[-2].endswith("norm")
