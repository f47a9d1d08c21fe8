#!/usr/bin/env python3
"""PyTorch eager reference for moe-ep's MoeLayer: the same maths, timed forward + backward.

Maths (models/moe/moe_layer.h; models/moe/README.md, "Token top-k with noisy gate and Batch
Prioritized Routing"), for tokens [N, D] cut into routing groups of
G tokens:
  router    logits = x W_r (W_r [D, E], no bias); in training + N(0, (noise_scale/E)^2) per
            (token, expert); probs = softmax(logits); top-k experts per token
  capacity  C = ceil(k * G * cf / E) per (group, expert), at least 1
  assign    all tokens' 1st choices before any 2nd choice, earlier tokens first (with Batch
            Prioritized Routing, bpr=True: tokens by their largest gate, descending); slot =
            running count - 1; a choice at or past C is dropped (contributes 0)
  dispatch  [E, groups * C, D], expert-major then group then slot (empty slots are zero rows)
  experts   D -> H -> D with biases and exact (erf) GELU
  combine   y_t = sum over kept choices of probs[t, e] * expert_e(x_t) (gates NOT renormalised)
Backward: y.backward(dy) with a fixed random dy; gradients reach x, W_r (through the gates) and
every expert weight.

Two expert implementations: 'eager' (a Python loop, one matmul per expert weight, like moe-ep's
one GEMM per expert weight) and 'bmm' (torch.baddbmm over the stacked [E, C', D] buffer with
stacked expert weights). Both see the same routing (same noise draw) and must agree.
router_probs, plan_routes and experts_combine are also the MoE layer of the whole-model peer
(torch_vmoe_model.py).

Timing: CUDA events around each iteration after warm-up; the median over --iters is printed.
Without CUDA the script exits with a message (status 0) unless --device cpu is given, which runs
on the CPU with wall-clock timing (for checking the script on tiny shapes).

Example (on a GPU machine, sizes for an H100/H200):
  python3 tests/bench/torch_moe_reference.py --tokens 16384 --dim 768 --hidden 3072 \
      --experts 8,32,64 --top_k 1,2 --cf 1.25 --iters 20
"""
import argparse
import math
import statistics
import sys
import time


def parse_int_list(s):
    return [int(v) for v in str(s).split(",") if v.strip()]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=16384, help="tokens N per step")
    p.add_argument("--group_tokens", type=int, default=512,
                   help="tokens per routing group (0: all tokens form one group)")
    p.add_argument("--dim", type=int, default=768, help="model width D")
    p.add_argument("--hidden", type=int, default=3072, help="expert hidden width H")
    p.add_argument("--experts", type=str, default="8,32,64", help="comma-separated E values")
    p.add_argument("--top_k", type=str, default="1,2", help="comma-separated k values")
    p.add_argument("--cf", type=float, default=1.25, help="capacity factor")
    p.add_argument("--noise_scale", type=float, default=1.0,
                   help="router noise std = noise_scale / E (0: no noise)")
    p.add_argument("--iters", type=int, default=20, help="timed iterations")
    p.add_argument("--warmup", type=int, default=3, help="untimed iterations before timing")
    p.add_argument("--impl", type=str, default="eager,bmm", help="comma-separated: eager, bmm")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--tf32", action="store_true",
                   help="allow TF32 matmuls (off by default: moe-ep's GEMMs are plain fp32)")
    p.add_argument("--device", type=str, default="cuda", help="cuda or cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--check", action=argparse.BooleanOptionalAction, default=True,
                   help="compare eager and bmm outputs/gradients once per config")
    p.add_argument("--selftest", action="store_true",
                   help="only check the vectorised maths against case 2 of models/moe/README.md "
                        "and a per-token Python loop in float64 (tiny shapes, any device), then "
                        "exit")
    args = p.parse_args(argv)
    args.experts = parse_int_list(args.experts)
    args.top_k = parse_int_list(args.top_k)
    args.impl = [s.strip() for s in args.impl.split(",") if s.strip()]
    for s in args.impl:
        if s not in ("eager", "bmm"):
            p.error("--impl takes eager and/or bmm, got %r" % s)
    if args.tokens <= 0 or args.dim <= 0 or args.hidden <= 0 or args.iters <= 0:
        p.error("--tokens, --dim, --hidden and --iters must be positive")
    if args.group_tokens <= 0 or args.group_tokens > args.tokens:
        args.group_tokens = args.tokens
    if args.tokens % args.group_tokens != 0:
        p.error("--tokens (%d) must be a multiple of --group_tokens (%d)"
                % (args.tokens, args.group_tokens))
    if args.cf <= 0:
        p.error("--cf must be positive")
    for k in args.top_k:
        for e in args.experts:
            if not 1 <= k <= e:
                p.error("need 1 <= top_k <= experts (k=%d, E=%d)" % (k, e))
    return args


def capacity(k, group_tokens, cf, num_experts):
    # Same guard as models/moe/capacity.cc: a float capacity factor is only within ~6e-8 of the
    # decimal it stands for, so 1e-9 keeps ceil() from rounding an exact product up.
    return max(1, int(math.ceil(k * group_tokens * cf / num_experts - 1e-9)))


def assign_slots(torch, top_e, group_tokens, num_experts):
    """top_e [N, k] (column r = r-th choice). Returns (e_order, pos), both [groups, k * G] in fill
    order (choice rank first, then token): the expert of each choice and its running slot in that
    expert's buffer of its group (0, 1, ...; compare with the capacity to drop)."""
    n, k = top_e.shape
    groups = n // group_tokens
    e_order = top_e.reshape(groups, group_tokens, k).transpose(1, 2).reshape(groups, k * group_tokens)
    onehot = torch.nn.functional.one_hot(e_order, num_experts).to(torch.int32)
    pos = (onehot.cumsum(dim=1) * onehot).sum(dim=-1) - 1
    return e_order, pos


def router_probs(torch, x, w_router, num_experts, noise_scale, gen):
    """Router: clean logits x W_r, noisy logits (+ N(0, (noise_scale/E)^2) per (token, expert)
    when noise_scale > 0) and their softmax. Returns (clean, noisy, probs), all [N, E]."""
    clean = x @ w_router  # [N, E]
    noisy = clean
    if noise_scale > 0:
        noise = torch.randn(clean.shape, generator=gen, device=x.device, dtype=torch.float32)
        noisy = clean + (noise * (noise_scale / num_experts)).to(clean.dtype)
    # at least fp32 (moe-ep's softmax runs in double on fp32 logits)
    probs = torch.softmax(noisy.float() if noisy.element_size() < 4 else noisy, dim=-1)
    return clean, noisy, probs


def fill_order(torch, top_p, group_tokens, bpr):
    """[groups, G] group-local token indices in the order their choices take slots: token order,
    or with Batch Prioritized Routing by the largest gate, descending (stable sort, so ties keep
    the lower token first, as models/moe/slot_assignment.cc)."""
    groups = top_p.shape[0] // group_tokens
    if not bpr:
        return (torch.arange(group_tokens, device=top_p.device).view(1, group_tokens)
                .expand(groups, group_tokens))
    return torch.sort(top_p[:, 0].detach().view(groups, group_tokens), dim=1, descending=True,
                      stable=True).indices


def plan_routes(torch, probs, k, group_tokens, cf, bpr=False):
    """Top-k of probs [N, E], capacity and slot assignment. Returns (gates, token_idx, slot_idx,
    C, dropped fraction) for the kept choices; gates carry the gradient to probs."""
    n, num_experts = probs.shape
    groups = n // group_tokens
    top_p, top_e = torch.topk(probs, k, dim=-1)  # [N, k], k-th choice in column k
    order = fill_order(torch, top_p, group_tokens, bpr)  # [groups, G]
    top_p = top_p.view(groups, group_tokens, k)
    if bpr:  # the choices in fill order (without BPR they already are: no gather to pay)
        pick = order.unsqueeze(-1).expand(groups, group_tokens, k)
        top_e = top_e.view(groups, group_tokens, k).gather(1, pick).reshape(n, k)
        top_p = top_p.gather(1, pick)
    cap = capacity(k, group_tokens, cf, num_experts)
    e_order, pos = assign_slots(torch, top_e, group_tokens, num_experts)
    kept = pos < cap
    gidx = torch.arange(groups, device=probs.device).view(groups, 1).expand_as(pos)
    # Buffer row of each choice: expert-major, then group, then slot.
    slot = e_order * (groups * cap) + gidx * cap + pos
    tok = order.unsqueeze(1).expand(groups, k, group_tokens).reshape(groups, k * group_tokens)
    tok = tok + gidx * group_tokens
    # Gate of each choice, in the same r-major order.
    gate = top_p.transpose(1, 2).reshape(groups, k * group_tokens)
    kept = kept.reshape(-1)
    return (gate.reshape(-1)[kept], tok.reshape(-1)[kept], slot.reshape(-1)[kept], cap,
            1.0 - kept.float().mean())  # dropped fraction, a tensor: no sync in timed code


def route(torch, x, w_router, num_experts, k, group_tokens, cf, noise_scale, gen, bpr=False):
    """Router, top-k and slot assignment. Returns (gates, token_idx, slot_idx, C, dropped)."""
    _, _, probs = router_probs(torch, x, w_router, num_experts, noise_scale, gen)
    return plan_routes(torch, probs, k, group_tokens, cf, bpr)


def experts_combine(torch, impl, x, plan, groups, w1, b1, w2, b2):
    """Dispatch the kept choices into [E, groups * C, D], run the experts (D -> H -> D, exact
    GELU) and combine: y_t = sum over kept choices of gate * expert output."""
    gate, tok, slot, cap, _ = plan
    num_experts = w1.shape[0]
    n, d = x.shape
    rows = groups * cap
    buf = x.new_zeros(num_experts * rows, d).index_copy(0, slot, x.index_select(0, tok))
    buf = buf.view(num_experts, rows, d)
    gelu = torch.nn.functional.gelu  # exact (erf) GELU by default
    if impl == "bmm":
        h = gelu(torch.baddbmm(b1.unsqueeze(1), buf, w1))  # [E, rows, H]
        out = torch.baddbmm(b2.unsqueeze(1), h, w2)  # [E, rows, D]
    else:
        outs = []
        for e in range(num_experts):
            h = gelu(torch.addmm(b1[e], buf[e], w1[e]))
            outs.append(torch.addmm(b2[e], h, w2[e]))
        out = torch.stack(outs, 0)
    contrib = out.reshape(num_experts * rows, d).index_select(0, slot) * gate.to(x.dtype).unsqueeze(1)
    return x.new_zeros(n, d).index_add(0, tok, contrib)


def moe_forward(torch, impl, x, params, num_experts, k, group_tokens, cf, noise_scale, gen,
                bpr=False):
    w_router, w1, b1, w2, b2 = params
    groups = x.shape[0] // group_tokens
    plan = route(torch, x, w_router, num_experts, k, group_tokens, cf, noise_scale, gen, bpr)
    y = experts_combine(torch, impl, x, plan, groups, w1, b1, w2, b2)
    return y, plan[3], plan[4]


def make_params(torch, num_experts, d, h, device, dtype, gen):
    def rnd(*shape, scale):
        return (torch.randn(*shape, generator=gen, device=device) * scale).to(dtype).requires_grad_()
    return [rnd(d, num_experts, scale=1.0 / math.sqrt(d)),
            rnd(num_experts, d, h, scale=1.0 / math.sqrt(d)),
            rnd(num_experts, h, scale=0.02),
            rnd(num_experts, h, d, scale=1.0 / math.sqrt(h)),
            rnd(num_experts, d, scale=0.02)]


class Timer:
    def __init__(self, torch, device):
        self.torch, self.cuda = torch, device.type == "cuda"

    def __call__(self, fn):
        torch = self.torch
        if self.cuda:
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            return start.elapsed_time(stop)
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3


def run_config(torch, args, device, dtype, num_experts, k):
    gen = torch.Generator(device=device)
    gen.manual_seed(args.seed * 1000003 + num_experts * 31 + k)
    x = (torch.randn(args.tokens, args.dim, generator=gen, device=device)).to(dtype).requires_grad_()
    dy = torch.randn(args.tokens, args.dim, generator=gen, device=device).to(dtype)
    params = make_params(torch, num_experts, args.dim, args.hidden, device, dtype, gen)
    leaves = [x] + params
    noise_seed = args.seed + 7

    def step(impl, backward, seed=None):
        g = torch.Generator(device=device)
        g.manual_seed(noise_seed if seed is None else seed)
        for t in leaves:
            t.grad = None
        y, cap, dropped = moe_forward(torch, impl, x, params, num_experts, k, args.group_tokens,
                                      args.cf, args.noise_scale, g)
        if backward:
            y.backward(dy)
        return y, cap, dropped

    result = {"E": num_experts, "k": k}
    check = ""
    if args.check and len(args.impl) == 2:
        y0, _, _ = step("eager", True)
        g0 = [t.grad.detach().clone() for t in leaves]
        y1, _, _ = step("bmm", True)
        g1 = [t.grad.detach().clone() for t in leaves]
        def rel(a, b):
            return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()
        worst = max([rel(y1.detach(), y0.detach())] + [rel(a, b) for a, b in zip(g1, g0)])
        finite = all(torch.isfinite(t).all().item() for t in [y0, y1] + g0 + g1)
        tol = 1e-3 if dtype == torch.float32 and not args.tf32 else 3e-2
        result["check"] = worst
        result["check_ok"] = finite and worst < tol
        check = "%.1e%s" % (worst, "" if result["check_ok"] else " FAIL")
    result["check_str"] = check or "-"
    timer = Timer(torch, device)
    for impl in args.impl:
        for _ in range(args.warmup):
            step(impl, True)
        fwd, fb = [], []
        for it in range(args.iters):
            with torch.no_grad():
                fwd.append(timer(lambda: step(impl, False, noise_seed + it)))
            fb.append(timer(lambda: step(impl, True, noise_seed + it)))
        _, cap, dropped = step(impl, False)
        result["C"], result["dropped"] = cap, float(dropped)
        result[impl + "_fwd"] = statistics.median(fwd)
        result[impl + "_fb"] = statistics.median(fb)
    del x, dy, params, leaves
    return result


def naive_moe(x, params, num_experts, k, group_tokens, cf, noise, bpr=False):
    """Per-token Python loop in float64 (lists of floats): the reference for --selftest. With
    bpr, each pass takes the group's tokens by their largest gate, descending (ties: lower
    token first)."""
    import math as m
    w_r, w1, b1, w2, b2 = [t.detach().double().cpu().tolist() for t in params]
    xs = x.detach().double().cpu().tolist()
    nz = noise.detach().double().cpu().tolist()
    n, d, h = len(xs), len(xs[0]), len(b1[0])
    cap = capacity(k, group_tokens, cf, num_experts)
    y = [[0.0] * d for _ in range(n)]
    for g0 in range(0, n, group_tokens):
        choices = {}
        for t in range(g0, g0 + group_tokens):
            logit = [sum(xs[t][i] * w_r[i][e] for i in range(d)) + nz[t][e]
                     for e in range(num_experts)]
            mx = max(logit)
            ex = [m.exp(v - mx) for v in logit]
            probs = [v / sum(ex) for v in ex]
            order = sorted(range(num_experts), key=lambda e: (-probs[e], e))[:k]
            choices[t] = [(e, probs[e]) for e in order]
        count = [0] * num_experts
        tokens = list(range(g0, g0 + group_tokens))
        if bpr:
            tokens.sort(key=lambda t: (-choices[t][0][1], t))
        for r in range(k):  # all 1st choices, then all 2nd choices
            for t in tokens:
                e, gate = choices[t][r]
                count[e] += 1
                if count[e] > cap:
                    continue  # dropped
                hid = [sum(xs[t][i] * w1[e][i][j] for i in range(d)) + b1[e][j] for j in range(h)]
                hid = [0.5 * v * m.erfc(-v / m.sqrt(2.0)) for v in hid]
                out = [sum(hid[j] * w2[e][j][i] for j in range(h)) + b2[e][i] for i in range(d)]
                for i in range(d):
                    y[t][i] += gate * out[i]
    return y


def selftest(torch, device):
    ok = True
    # Case 2 of models/moe/README.md ("Hand-made test cases"; the messages below call the cases
    # "SEEDS case N", same numbering): gates [[.4,0,.2],[.5,.1,.4],[.3,.2,.6]], k=2, C=2 (vanilla
    # fill).
    gates = torch.tensor([[.4, 0., .2], [.5, .1, .4], [.3, .2, .6]], device=device)
    _, top_e = torch.topk(gates, 2, dim=-1)
    e_order, pos = assign_slots(torch, top_e, 3, 3)
    got = [(int(e), int(p)) for e, p in zip(e_order.view(-1).tolist(), pos.view(-1).tolist())]
    # fill order: t0 1st, t1 1st, t2 1st, t0 2nd, t1 2nd, t2 2nd; slots >= C=2 are dropped
    want = [(0, 0), (0, 1), (2, 0), (2, 1), (2, 2), (0, 2)]
    if got != want or capacity(2, 3, 1.0, 3) != 2:
        print("selftest: SEEDS case 2 slot assignment FAILED: got %s want %s" % (got, want))
        ok = False
    else:
        print("selftest: SEEDS case 2 slot assignment ok")
    if capacity(1, 8, 1.0, 4) != 2 or capacity(1, 8, 1.05, 4) != 3:
        print("selftest: SEEDS case 1 capacity (ceil) FAILED")
        ok = False
    # Vectorised layer (both impls) vs the per-token loop, float64, routing with drops.
    for num_experts, k, gtok, cf, bpr in [(4, 1, 8, 1.0, False), (4, 2, 6, 0.75, False),
                                          (3, 2, 5, 1.25, False), (4, 2, 8, 0.75, True),
                                          (4, 1, 8, 1.0, True)]:
        n, d, h = 2 * gtok, 5, 7
        gen = torch.Generator(device=device)
        gen.manual_seed(num_experts * 100 + k)
        x = torch.randn(n, d, generator=gen, device=device, dtype=torch.float64)
        params = [t.detach().double() for t in
                  make_params(torch, num_experts, d, h, device, torch.float64, gen)]
        params[0] = params[0] * 3.0  # sharper router: more collisions, so drops happen
        noise_scale = 1.0
        g = torch.Generator(device=device)
        g.manual_seed(5)
        noise = torch.randn(n, num_experts, generator=g, device=device) * (noise_scale / num_experts)
        ref = torch.tensor(naive_moe(x, params, num_experts, k, gtok, cf, noise, bpr),
                           dtype=torch.float64)
        for impl in ("eager", "bmm"):
            g = torch.Generator(device=device)
            g.manual_seed(5)
            y, cap, dropped = moe_forward(torch, impl, x, params, num_experts, k, gtok, cf,
                                          noise_scale, g, bpr)
            err = ((y.cpu() - ref).norm() / ref.norm()).item()
            good = err < 1e-10
            ok = ok and good
            print("selftest: E=%d k=%d G=%d cf=%g bpr=%d C=%d dropped=%.2f %s rel err %.1e %s"
                  % (num_experts, k, gtok, cf, bpr, cap, float(dropped), impl, err,
                     "ok" if good else "FAILED"))
    # Gradients flow to x, the router and every expert weight (finite, some non-zero).
    x = torch.randn(16, 5, device=device, dtype=torch.float64, requires_grad=True)
    gen = torch.Generator(device=device)
    gen.manual_seed(1)
    params = make_params(torch, 4, 5, 7, device, torch.float64, gen)
    y, _, _ = moe_forward(torch, "bmm", x, params, 4, 2, 8, 1.0, 1.0, gen)
    y.square().sum().backward()
    for name, t in zip(["x", "w_router", "w1", "b1", "w2", "b2"], [x] + params):
        if t.grad is None or not torch.isfinite(t.grad).all() or t.grad.abs().max() == 0:
            print("selftest: gradient of %s missing or zero FAILED" % name)
            ok = False
    print("selftest: %s" % ("passed" if ok else "FAILED"))
    return 0 if ok else 1


def main(argv=None):
    args = parse_args(argv)
    try:
        import torch
    except ImportError as e:
        print("torch_moe_reference: PyTorch is not importable (%s); nothing to run." % e)
        return 0
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("torch_moe_reference: CUDA is not available (torch %s); nothing to run. "
              "Use --device cpu with small shapes to check the script." % torch.__version__)
        return 0
    device = torch.device(args.device)
    if args.selftest:
        return selftest(torch, device)
    dtype = getattr(torch, args.dtype)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
        torch.backends.cudnn.allow_tf32 = args.tf32
        name = torch.cuda.get_device_name(device)
    else:
        name = "cpu"
    print("# torch_moe_reference: torch %s, device %s (%s), dtype %s%s, tokens %d, group %d, "
          "D %d, H %d, cf %g, iters %d (median ms; fwd+bwd = forward, then backward)"
          % (torch.__version__, device, name, args.dtype, " tf32" if args.tf32 else "",
             args.tokens, args.group_tokens, args.dim, args.hidden, args.cf, args.iters))
    cols = ["E", "k", "C", "dropped"]
    for impl in args.impl:
        cols += [impl + " fwd", impl + " fwd+bwd"]
    cols.append("eager~bmm")
    rows = []
    failed = False
    for e in args.experts:
        for k in args.top_k:
            try:
                r = run_config(torch, args, device, dtype, e, k)
            except RuntimeError as err:  # e.g. out of memory: report and go on
                print("E=%d k=%d failed: %s" % (e, k, str(err).splitlines()[0]))
                failed = True
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            if r.get("check_ok") is False:
                failed = True
            row = [str(e), str(k), str(r["C"]), "%.3f" % r["dropped"]]
            for impl in args.impl:
                row += ["%.3f" % r[impl + "_fwd"], "%.3f" % r[impl + "_fb"]]
            row.append(r["check_str"])
            rows.append(row)
            print("  done E=%d k=%d" % (e, k), flush=True)
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c)
              for i, c in enumerate(cols)]
    print(" | ".join(c.rjust(w) for c, w in zip(cols, widths)))
    print("-+-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(v.rjust(w) for v, w in zip(r, widths)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
