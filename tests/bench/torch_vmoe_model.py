"""The vmoe_tiny model of moe-ep in PyTorch (imported by torch_vmoe_reference.py, which sets the
threading environment before torch is imported). See torch_vmoe_reference.py for the maths and
where each choice comes from."""
import math
import os
import sys

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_moe_reference as moeref  # noqa: E402

# launcher/configs/vmoe_tiny.pbtxt: width, MLP/expert width, heads, blocks, experts, top-k
D, H, HEADS, LAYERS, E, K = 64, 128, 4, 4, 8, 2
T, P = 16, 49  # tokens per image (4x4 patches of 7x7), pixels per patch
CF_TRAIN, CF_EVAL, AUX_WEIGHT = 1.05, 1.25, 0.005


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv, self.proj = nn.Linear(D, 3 * D), nn.Linear(D, D)
        # sizes as attributes, not globals, so that torch.jit.script can compile it
        self.dim, self.tokens, self.heads = D, T, HEADS
        self.scale = 1.0 / math.sqrt(D // HEADS)

    def forward(self, x):  # [B, T, D]
        b, t, d, nh = x.shape[0], self.tokens, self.dim, self.heads
        qkv = self.qkv(x).view(b, t, 3, nh, d // nh).permute(2, 0, 3, 1, 4)
        q, kk, v = qkv[0], qkv[1], qkv[2]  # [B, heads, T, hd]
        a = torch.softmax(torch.matmul(q, kk.transpose(-1, -2)) * self.scale, dim=-1)
        return self.proj(torch.matmul(a, v).transpose(1, 2).reshape(b, t, d))


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(D, H), nn.Linear(H, D)

    def forward(self, x):
        return self.fc2(torch.nn.functional.gelu(self.fc1(x)))


class MoeMlp(nn.Module):
    """E experts D->H->D over routing groups of group_images images; noisy top-2, BPR."""

    def __init__(self, group_images):
        super().__init__()
        lim = math.sqrt(6.0 / (D + H))  # Xavier-uniform, as models/moe/expert_bank.cc
        self.router = nn.Parameter(torch.randn(D, E) * 0.02)
        self.w1 = nn.Parameter(torch.empty(E, D, H).uniform_(-lim, lim))
        self.b1 = nn.Parameter(torch.zeros(E, H))
        self.w2 = nn.Parameter(torch.empty(E, H, D).uniform_(-lim, lim))
        self.b2 = nn.Parameter(torch.zeros(E, D))
        self.group = group_images * T
        self.aux = None

    def forward(self, x):  # [B, T, D] -> rows [B*T, D]
        rows = x.reshape(-1, D)
        noise = 1.0 if self.training else 0.0
        clean, noisy, probs = moeref.router_probs(torch, rows, self.router, E, noise, None)
        cf = CF_TRAIN if self.training else CF_EVAL
        plan = moeref.plan_routes(torch, probs, K, self.group, cf, bpr=True)
        y = moeref.experts_combine(torch, "bmm", rows, plan, rows.shape[0] // self.group,
                                   self.w1, self.b1, self.w2, self.b2)
        if self.training:
            self.aux = AUX_WEIGHT * (importance_loss(clean, self.group)
                                     + load_loss(clean, noisy, K, 1.0 / E, self.group))
        return y.view_as(x)


class Block(nn.Module):
    def __init__(self, moe, group_images):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(D, eps=1e-6), nn.LayerNorm(D, eps=1e-6)
        self.attn = Attention()
        self.mlp = MoeMlp(group_images) if moe else Mlp()

    def script(self):  # the dense sub-modules only: the MoE's routing stays eager
        self.attn = torch.jit.script(self.attn)
        if isinstance(self.mlp, Mlp):
            self.mlp = torch.jit.script(self.mlp)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class Vit(nn.Module):
    """MoE blocks are 1 and 3 (placement EVERY_2: the odd blocks)."""

    def __init__(self, group_images, jit=False):
        super().__init__()
        self.embed = nn.Linear(P, D)
        self.pos_embed = nn.Parameter(torch.randn(T, D) * 0.02)
        self.blocks = nn.ModuleList([Block(i % 2 == 1, group_images) for i in range(LAYERS)])
        self.final_ln = nn.LayerNorm(D, eps=1e-6)
        self.head = nn.Linear(D, 10)
        for m in self.modules():  # Xavier-uniform weights, zero biases (models/layers/linear.cc)
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        if jit:  # after the initialisation, which looks for nn.Linear modules
            for blk in self.blocks:
                blk.script()

    def forward(self, images):  # [B, 1, 28, 28] -> patches [B, 16, 49], row-major 4x4 grid
        b = images.shape[0]
        patches = images.view(b, 4, 7, 4, 7).permute(0, 1, 3, 2, 4).reshape(b, T, P)
        x = self.embed(patches) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.final_ln(x).mean(dim=1))

    def aux_loss(self):
        return sum(b.mlp.aux for b in self.blocks if isinstance(b.mlp, MoeMlp))


def cv_squared(v):
    """CV(v)^2 per row of v [groups, E], population variance."""
    return v.var(dim=1, unbiased=False) / v.mean(dim=1).square()


def importance_loss(clean, group):
    """Mean over groups of CV(sum over rows of softmax(clean logits))^2."""
    imp = torch.softmax(clean, dim=-1).view(-1, group, clean.shape[1]).sum(dim=1)
    return cv_squared(imp).mean()


def load_loss(clean, noisy, k, sigma, group):
    """Mean over groups of CV(load)^2: load_e = mean over rows of P(e stays in the row's top k
    under a fresh noise draw) = 1 - Phi((t - h_e) / sigma), t the k-th largest noisy logit."""
    threshold = torch.topk(noisy, k, dim=-1).values[:, k - 1:k]
    p = 0.5 * torch.erfc((threshold - clean) / (sigma * math.sqrt(2.0)))
    return cv_squared(p.view(-1, group, clean.shape[1]).mean(dim=1)).mean()
