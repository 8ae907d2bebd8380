"""PyTorch peer for the SAE benchmark (bench/FeatureLens.Bench/SaeBench.cs); prints one JSON line.

encode: sae_torch.py encode --threads T [--n 4096 --d-in 768 --d-sae 24576 --k 32 --runs 7]
    Times SAELens's encoder on n random tokens, float32, no autograd, for two architectures:
      standard: sae_in = x - b_dec; hidden_pre = sae_in @ W_enc + b_enc; acts = relu(hidden_pre)
      topk:     the same hidden_pre; topk = torch.topk(hidden_pre, k); acts = zeros.scatter(idx, relu(values))
    each written as SAELens writes it ("saelens") and with fewer temporaries ("fused": torch.addmm
    into a preallocated output, in-place relu / scatter into a preallocated zeros buffer).
    Output: {"torch", "threads", "n", "d_in", "d_sae", "k", "seconds": {"standard/saelens": s, ...},
             "runs": {...}} with the median seconds over --runs timed passes after one warm-up.

train: sae_torch.py train --arch standard|topk --threads T [--n 4096 --d-in 768 --d-sae 24576 --k 32 --runs 5]
    One optimiser step on a batch of n tokens, as SaeTrainer defines it (see SaeTrainingOptions):
      forward: pre = x @ W_enc + b_enc (apply_b_dec_to_input off), acts (ReLU or TopK as above),
               x_hat = acts @ W_dec + b_dec, mse = mean_r ||x_hat - x||^2
      standard: loss = mse + l1 * mean_r sum_j acts_rj * ||W_dec_j||
      topk:     loss = mse + aux_coef * min(1, dead/k_aux) * mean_r ||e_hat - (x - x_hat).detach()||^2
                where e_hat = relu(top k_aux = d_in/2 of pre over dead latents) @ W_dec (no b_dec);
                a latent is dead when it has not fired within --dead-after tokens; the gradient of W_dec
                loses its component parallel to each (unit-norm) row before Adam, rows renormalised after.
      backward via autograd, torch.optim.Adam step.
    Output: {"torch", "threads", "arch", "n", "d_in", "d_sae", "k", "median_s", "runs", "dead", "loss"}.
OPENBLAS_NUM_THREADS / OMP_NUM_THREADS are set from --threads before torch is imported (OpenBLAS sizes its
pool at load time; torch.set_num_threads does not reach it).
"""

import argparse
import json
import os
import statistics
import sys
import time


import torch_threads  # noqa: F401,E402  (sets the thread count before torch loads)
import torch  # noqa: E402


def timed(fn, runs):
    fn()  # warm-up
    samples = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples), samples


def encode_bench(args):
    g = torch.Generator().manual_seed(0)
    n, d_in, d_sae, k = args.n, args.d_in, args.d_sae, args.k
    x = torch.randn(n, d_in, generator=g)
    w_enc = torch.randn(d_in, d_sae, generator=g) / d_in ** 0.5
    b_enc = torch.full((d_sae,), -2.8)  # ~60 active latents per token, as the C# side
    b_dec = torch.randn(d_in, generator=g) * 0.1
    out = torch.empty(n, d_sae)
    dense = torch.zeros(n, d_sae)

    def standard_saelens():
        sae_in = x - b_dec
        hidden_pre = sae_in @ w_enc + b_enc
        return torch.relu(hidden_pre)

    def standard_fused():
        torch.addmm(b_enc, x - b_dec, w_enc, out=out)
        return out.relu_()

    def topk_saelens():
        sae_in = x - b_dec
        hidden_pre = sae_in @ w_enc + b_enc
        top = torch.topk(hidden_pre, k, dim=-1)
        result = torch.zeros_like(hidden_pre)
        return result.scatter(-1, top.indices, top.values.relu())

    def topk_fused():
        torch.addmm(b_enc, x - b_dec, w_enc, out=out)
        values, indices = torch.topk(out, k, dim=-1, sorted=False)
        dense.zero_()
        return dense.scatter_(-1, indices, values.relu_())

    seconds, runs = {}, {}
    with torch.no_grad():
        for name, fn in [("standard/saelens", standard_saelens), ("standard/fused", standard_fused),
                         ("topk/saelens", topk_saelens), ("topk/fused", topk_fused)]:
            seconds[name], runs[name] = timed(fn, args.runs)
    return {"seconds": seconds, "runs": runs}


def train_bench(args):
    g = torch.Generator().manual_seed(0)
    n, d_in, d_sae, k = args.n, args.d_in, args.d_sae, args.k
    topk = args.arch == "topk"
    x = torch.randn(n, d_in, generator=g)
    # SAELens-style init: W_dec rows of a fixed norm (1 for topk, 0.1 otherwise), W_enc = W_dec^T, b = 0
    w_dec = torch.randn(d_sae, d_in, generator=g)
    w_dec = w_dec / w_dec.norm(dim=-1, keepdim=True) * (1.0 if topk else 0.1)
    w_dec.requires_grad_(True)
    w_enc = w_dec.detach().t().contiguous().requires_grad_(True)
    b_enc = torch.zeros(d_sae, requires_grad=True)
    b_dec = torch.zeros(d_in, requires_grad=True)
    opt = torch.optim.Adam([w_enc, b_enc, w_dec, b_dec], lr=4e-4, betas=(0.9, 0.999), eps=1e-8)
    since_fired = torch.zeros(d_sae, dtype=torch.long)
    k_aux = d_in // 2
    state = {"dead": 0, "loss": 0.0}

    def step():
        pre = x @ w_enc + b_enc
        if topk:
            top = torch.topk(pre, k, dim=-1)
            acts = torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())
        else:
            acts = torch.relu(pre)
        x_hat = acts @ w_dec + b_dec
        mse = (x_hat - x).pow(2).sum(-1).mean()
        dead_mask = since_fired >= args.dead_after
        dead = int(dead_mask.sum())
        if topk:
            loss = mse
            if dead > 0 and args.aux_coef > 0:
                residual = (x - x_hat).detach()
                masked = torch.where(dead_mask, pre, torch.full_like(pre, float("-inf")))
                aux = torch.topk(masked, min(k_aux, dead), dim=-1)
                aux_acts = torch.zeros_like(pre).scatter(-1, aux.indices, aux.values.relu())
                e_hat = aux_acts @ w_dec
                loss = loss + args.aux_coef * min(1.0, dead / k_aux) * (e_hat - residual).pow(2).sum(-1).mean()
        else:
            loss = mse + args.l1 * (acts * w_dec.norm(dim=1)).sum(-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if topk:
            with torch.no_grad():  # keep unit-norm rows: drop the gradient's radial part
                w_dec.grad -= (w_dec.grad * w_dec).sum(-1, keepdim=True) * w_dec
        opt.step()
        with torch.no_grad():
            if topk:
                w_dec.div_(w_dec.norm(dim=-1, keepdim=True))
            fired = (acts > 0).any(dim=0)
            since_fired.add_(n)
            since_fired[fired] = 0
        state["dead"], state["loss"] = dead, float(loss)

    med, runs = timed(step, args.runs)
    return {"arch": args.arch, "median_s": med, "runs": runs, "dead": state["dead"], "loss": state["loss"]}


def main():
    ap = argparse.ArgumentParser(description="PyTorch SAE encode / training-step benchmark")
    ap.add_argument("mode", choices=["encode", "train"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--d-in", type=int, default=768)
    ap.add_argument("--d-sae", type=int, default=24576)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--arch", choices=["standard", "topk"], default="standard")
    ap.add_argument("--l1", type=float, default=5.0)
    ap.add_argument("--aux-coef", type=float, default=1.0 / 32)
    ap.add_argument("--dead-after", type=int, default=4096)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    result = {"torch": torch.__version__, "threads": args.threads, "n": args.n, "d_in": args.d_in,
              "d_sae": args.d_sae, "k": args.k}
    result.update(encode_bench(args) if args.mode == "encode" else train_bench(args))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
