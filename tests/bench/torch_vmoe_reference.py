#!/usr/bin/env python3
"""PyTorch peer of moe-ep's whole vmoe_tiny training step on real Fashion-MNIST, CPU, timed.

The model and recipe are launcher/configs/vmoe_tiny.pbtxt's (models/nets/vision_transformer.cc):
  ViT on 28x28x1 images, 7x7 patches -> 16 tokens, linear patch embedding + learned position
  embedding, D=64, 4 pre-norm blocks (LN eps 1e-6; 4-head self-attention with qkv and output
  projections; MLP D->128->D with exact GELU), final LayerNorm, mean pool over tokens (no class
  token), linear head to 10 classes.
  Blocks 1 and 3: MoE MLP, E=8 experts D->128->D (exact GELU), router W_r [D, E] without bias,
  noise N(0, (1/E)^2) in training, top-2 of softmax, gates not renormalised, routing groups of
  8 images (128 tokens), capacity ceil(k*G*1.05/E), Batch Prioritized Routing; importance and
  load losses (0.005 each, per group, averaged over the groups). The routing maths is
  tests/bench/torch_moe_reference.py's (router_probs, plan_routes, experts_combine): the experts
  run as two batched baddbmm over the [E, groups*C, D] buffer, no Python loop per token or expert.
  AdamW (betas 0.9/0.999, eps 1e-8, decoupled decay 1e-4 on weights only: not on biases,
  LayerNorms or the position embedding), linear warm-up then cosine decay of the learning rate,
  gradient clipping at global norm 1.0, batch 32, softmax cross-entropy.
  Pixels: (p / 255 - 0.2860) / 0.3530, as moe-ep's loader.

The model is tests/bench/torch_vmoe_model.py. Tuning: torch.set_num_threads(--threads) with
OMP_NUM_THREADS and OPENBLAS_NUM_THREADS set to the same number before torch is imported (the
GEMMs run in OpenBLAS), OMP_WAIT_POLICY=PASSIVE unless set (see main), one inter-op thread,
torch.set_flush_denormal(True), nothing computed that the step does not need (no input
gradient, no metrics but the loss). --jit scripts the dense sub-blocks with torch.jit.script.

Timing: --warmup untimed steps, then --steps timed steps (wall clock around the whole loop: batch
gather, forward, backward, clipping, AdamW); prints `torch_vmoe: ... images_per_s=X`.
Also prints the parameter count (moe-ep prints params= in its summary line), the loss at step 0
(about ln 10 = 2.30 at initialisation) and, after timing, the accuracy on --eval_images test
images (not timed).
"""
import argparse
import gzip
import math
import os
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

DATA_DIR = "/usr/share/datasets/fashion-mnist"
PIXEL_MEAN, PIXEL_STD = 0.2860, 0.3530


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--steps", type=int, default=200, help="timed training steps")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps before timing")
    p.add_argument("--batch", type=int, default=32, help="images per step")
    p.add_argument("--group_images", type=int, default=8, help="images per routing group")
    p.add_argument("--eval_images", type=int, default=1000,
                   help="test images evaluated after timing (0: none)")
    p.add_argument("--lr", type=float, default=0.002)
    p.add_argument("--lr_warmup_steps", type=int, default=100)
    p.add_argument("--min_lr_ratio", type=float, default=0.02)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--data_dir", default=DATA_DIR)
    p.add_argument("--jit", action="store_true",
                   help="torch.jit.script the attention and dense MLP sub-blocks")
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.threads < 1:
        p.error("--steps and --threads must be >= 1, --warmup >= 0")
    if args.batch % args.group_images:
        p.error("--batch (%d) must be a multiple of --group_images (%d)"
                % (args.batch, args.group_images))
    return args


def read_idx(path):
    """An idx file (gzip): uint8 array with its dimensions, as a numpy array."""
    import numpy as np
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic = struct.unpack(">I", data[:4])[0]
    if magic >> 8 != 0x08:  # 0x0000 08 NN: unsigned bytes, NN dimensions
        raise ValueError("%s: not an unsigned-byte idx file (magic 0x%08x)" % (path, magic))
    ndim = magic & 0xFF
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise ValueError("%s: %d bytes of data for dimensions %s" % (path, arr.size, dims))
    return arr.reshape(dims)


def load_split(torch, data_dir, prefix):
    images = read_idx(os.path.join(data_dir, prefix + "-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(data_dir, prefix + "-labels-idx1-ubyte.gz"))
    x = torch.from_numpy(images.astype("float32") / 255.0)
    x = ((x - PIXEL_MEAN) / PIXEL_STD).reshape(-1, 1, 28, 28).contiguous()
    return x, torch.from_numpy(labels.astype("int64"))


def make_optimizer(torch, model, lr):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        # models' DecayApplies: no decay for biases, LayerNorms, the position embedding
        skip = name.split(".")[-1] in ("bias", "b1", "b2") or "ln" in name or "pos_embed" in name
        (no_decay if skip else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": 1e-4},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.999), eps=1e-8)


def warmup_cosine(step, total, warmup, peak, min_ratio):
    """core/optim/lr_schedule.cc's WarmupCosineLr."""
    last, lo = total - 1, peak * min_ratio
    if step >= last:
        return lo
    if warmup > 0 and step < warmup:
        return peak * (1.0 / warmup + (1.0 - 1.0 / warmup) * step / warmup)
    w = max(warmup, 0)
    return lo + (peak - lo) * 0.5 * (1.0 + math.cos(math.pi * (step - w) / (last - w)))


def evaluate(torch, model, x, y, n, batch):
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, n, batch):
            correct += int((model(x[i:i + batch]).argmax(dim=1) == y[i:i + batch]).sum())
    model.train()
    return correct / n


def train(torch, args, model, train_x, train_y):
    """Warm-up, then timed steps. Returns (first loss, last loss, seconds of the timed steps)."""
    F = torch.nn.functional
    opt = make_optimizer(torch, model, args.lr)
    params = [p for p in model.parameters()]
    gen = torch.Generator().manual_seed(args.seed)
    total = args.warmup + args.steps
    order = torch.randperm(train_x.shape[0], generator=gen)
    first = last = None
    t0 = 0.0
    for step in range(total):
        if step == args.warmup:
            t0 = time.perf_counter()
        at = (step * args.batch) % (order.numel() - args.batch + 1)
        idx = order[at:at + args.batch]
        for g in opt.param_groups:
            g["lr"] = warmup_cosine(step, total, args.lr_warmup_steps, args.lr, args.min_lr_ratio)
        logits = model(train_x.index_select(0, idx))
        loss = F.cross_entropy(logits, train_y.index_select(0, idx))
        opt.zero_grad(set_to_none=True)
        (loss + model.aux_loss()).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step == 0:
            first = float(loss)
    last = float(loss)
    return first, last, time.perf_counter() - t0


def main(argv=None):
    args = parse_args(argv)
    # Before torch starts its OpenMP and OpenBLAS pools: as many threads as asked in both (the
    # GEMMs run in OpenBLAS), and idle OpenMP threads sleep instead of spinning. Spinning
    # threads on a machine with more runnable threads than cores (a shared box) made 2 threads
    # 10-25x slower than 1; PASSIVE removes that and costs nothing measurable on 1 thread.
    os.environ["OMP_NUM_THREADS"] = os.environ["OPENBLAS_NUM_THREADS"] = str(args.threads)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        import torch
        import torch_vmoe_model
    except ImportError as e:
        print("torch_vmoe: PyTorch is not importable (%s); install python3-torch." % e)
        return 2
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    torch.set_flush_denormal(True)
    torch.manual_seed(args.seed)
    train_x, train_y = load_split(torch, args.data_dir, "train")
    test_x, test_y = load_split(torch, args.data_dir, "t10k")
    model = torch_vmoe_model.Vit(args.group_images, jit=args.jit)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    expert_params = sum(p.numel() for n, p in model.named_parameters()
                        if n.split(".")[-1] in ("w1", "b1", "w2", "b2"))
    first, last, seconds = train(torch, args, model, train_x, train_y)
    # whole routing groups only
    n_eval = min(args.eval_images, test_x.shape[0]) // args.group_images * args.group_images
    acc = evaluate(torch, model, test_x, test_y, n_eval, args.batch) if n_eval else float("nan")
    print("torch_vmoe: torch=%s threads=%d jit=%d params=%d expert_params=%d batch=%d "
          "warmup=%d steps=%d loss_step0=%.4f loss_last=%.4f train_s=%.2f images_per_s=%.1f "
          "test_accuracy=%.4f (on %d test images)"
          % (torch.__version__, args.threads, int(args.jit), n_params, expert_params, args.batch,
             args.warmup, args.steps, first, last, seconds, args.steps * args.batch / seconds,
             acc, n_eval))
    return 0


if __name__ == "__main__":
    sys.exit(main())
