#!/usr/bin/python3
"""PyTorch peer of the attribution benchmark (bench/FeatureLens.Bench/AttributionBench.cs); prints one JSON line.

attribution_torch.py --model DIR --saes DIR --tokens FILE --threads T [--runs 3]

DIR is the GPT-2-small-shaped float32 folder (read with bench/torch_forward.py's gpt2_prepare, aten
matmuls); --saes holds one SAELens folder per hook (cfg.json + sae_weights.safetensors, TopK, written by
the C# side); FILE is JSON {"clean": [[...]], "corrupt": [[...]], "token_a", "token_b"} (B sequences of T
tokens each).

One iteration, the work of attribution patching with SAEs (feature-circuits style), float32:
  corrupt pass (torch.no_grad): the model on the corrupt tokens with every SAE spliced at its hook,
      keeping each SAE's latents f' (B,T,m) and error e' (B,T,C); it stops after the last hooked block
      (no logits: nothing reads them).
  clean pass (autograd): the same splices on the clean tokens, full logits (B,T,V), the metric
      sum_b logits[b,-1,token_a] - logits[b,-1,token_b], metric.backward(); keeps f, e and their .grad.
      Each splice is
          with torch.no_grad(): f = encode(x)           # SAELens TopK encoder: topk of (x - b_dec) @ W_enc + b_enc, relu
          f.requires_grad_()                            # the latents are graph leaves: f.grad is kept
          x_hat = f @ W_dec + b_dec                     # SAELens's (dense) decoder
          err = x - x_hat.detach(); err.retain_grad()   # the error node
          out = x_hat + err                             # = x (to rounding)
      so the gradient reaches x through the error term as the identity (what feature-circuits gets with
      x.grad = x_recon.grad) and the encoder is never differentiated; f.grad = W_dec . g for every latent.
  effects (no_grad): latents (f' - f) * f.grad (B,T,m); errors sum_C (e' - e) * e.grad (B,T).
Timed: --runs iterations after one warm-up; median seconds. The JSON also carries the metric and a sample
of effects for the C# side to compare: per hook, the 4 latent effects of largest magnitude [b, t, j, value],
the error effects at the last position [b, t, value], and each hook's largest |latent effect|.
OPENBLAS_NUM_THREADS / OMP_NUM_THREADS come from --threads before torch loads (torch_threads.py).
"""

import argparse
import json
import math
import os
import statistics
import sys
import threading
import time

import torch_threads  # noqa: F401  (sets the thread count before torch loads)
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import torch_forward as tf  # noqa: E402  (the GPT-2 folder reader; safetensors_lite on sys.path)
import safetensors_lite as st  # noqa: E402


def watchdog(limit_gib):
    """Stops the process (exit 3) when its RSS passes limit_gib: the machine has 24 GiB."""
    while True:
        with open("/proc/self/status") as f:
            rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 2**20
        if rss > limit_gib:
            print(f"attribution_torch: RSS {rss:.2f} GiB passed {limit_gib} GiB; stopping", file=sys.stderr, flush=True)
            os._exit(3)
        time.sleep(0.05)


class TopKSae:
    """A SAELens TopK SAE read from its folder: W_enc (d,m), b_enc (m), W_dec (m,d), b_dec (d)."""

    def __init__(self, folder):
        with open(os.path.join(folder, "cfg.json")) as f:
            cfg = json.load(f)
        assert cfg["architecture"] == "topk" and not cfg.get("rescale_acts_by_decoder_norm", False), cfg
        w = st.load(os.path.join(folder, "sae_weights.safetensors"))
        self.w_enc, self.b_enc, self.w_dec, self.b_dec = (w[n].float().contiguous() for n in ("W_enc", "b_enc", "W_dec", "b_dec"))
        self.k = cfg["k"]
        self.apply_b_dec = cfg.get("apply_b_dec_to_input", True)
        self.hook = cfg["metadata"]["hook_name"]

    def encode(self, x):
        # x (B,T,d) -> f (B,T,m): the k largest pre-activations, relu'd, zeros elsewhere
        lead = x.shape[:-1]
        sae_in = x - self.b_dec if self.apply_b_dec else x
        pre = torch.addmm(self.b_enc, sae_in.reshape(-1, sae_in.shape[-1]), self.w_enc)
        top = torch.topk(pre, self.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter_(-1, top.indices, top.values.relu()).view(*lead, -1)

    def splice(self, x, grad):
        """The spliced output (= x) and the nodes (f, err); with grad, f is a leaf and err retains its gradient."""
        with torch.no_grad():
            f = self.encode(x)
        if not grad:
            with torch.no_grad():
                x_hat = f @ self.w_dec + self.b_dec
                err = x - x_hat
                return x_hat + err, f, err
        f.requires_grad_()
        x_hat = f @ self.w_dec + self.b_dec
        err = x - x_hat.detach()
        if err.requires_grad:
            err.retain_grad()
        else:  # the first spliced hook: nothing upstream needs a gradient, so the error is a leaf
            err.requires_grad_()
        return x_hat + err, f, err


def forward(cfg, w, saes, idx, grad):
    """GPT-2 forward on idx (B,T) with saes {layer: TopKSae} spliced at blocks.L.hook_resid_post.
    Returns (logits (B,T,V) or None when not grad, {layer: (f, err)})."""
    B, T = idx.shape
    C, NH, eps = cfg["n_embd"], cfg["n_head"], cfg.get("layer_norm_epsilon", 1e-5)
    HS = C // NH
    mask = torch.full((T, T), float("-inf")).triu(1)  # additive causal mask
    scale = 1.0 / math.sqrt(HS)
    last = max(saes) if not grad else len(w["layers"]) - 1  # the corrupt pass needs nothing after the last SAE
    x = F.embedding(idx, w["wte"]) + w["wpe"][:T]
    nodes = {}
    for L, p in enumerate(w["layers"][:last + 1]):
        h = F.layer_norm(x, (C,), p["ln1_w"], p["ln1_b"], eps)
        qkv = F.linear(h, p["qkv_w"], p["qkv_b"]).view(B, T, 3, NH, HS).permute(2, 0, 3, 1, 4)  # (3,B,NH,T,HS)
        q, k, v = (qkv[i].reshape(B * NH, T, HS) for i in range(3))
        att = torch.softmax(torch.baddbmm(mask, q, k.transpose(1, 2), alpha=scale), -1)
        z = torch.bmm(att, v).view(B, NH, T, HS).transpose(1, 2).reshape(B, T, C)
        x = x + F.linear(z, p["o_w"], p["o_b"])
        h = F.layer_norm(x, (C,), p["ln2_w"], p["ln2_b"], eps)
        x = x + F.linear(F.gelu(F.linear(h, p["fc_w"], p["fc_b"]), approximate="tanh"), p["proj_w"], p["proj_b"])
        if L in saes:
            x, f, err = saes[L].splice(x, grad)
            nodes[L] = (f, err)
    if not grad:
        return None, nodes
    logits = F.linear(F.layer_norm(x, (C,), w["lnf_w"], w["lnf_b"], eps), w["wte"])
    return logits, nodes


def iteration(cfg, w, saes, clean, corrupt, tok_a, tok_b):
    with torch.no_grad():
        _, corrupt_nodes = forward(cfg, w, saes, corrupt, grad=False)
    logits, nodes = forward(cfg, w, saes, clean, grad=True)
    values = logits[:, -1, tok_a] - logits[:, -1, tok_b]
    metric = values.sum()
    metric.backward()
    effects = {}
    with torch.no_grad():
        for L, (f, err) in nodes.items():
            fc, ec = corrupt_nodes[L]
            effects[L] = ((fc - f) * f.grad, ((ec - err) * err.grad).sum(-1))
    return float(metric), values.detach().tolist(), effects


def main():
    ap = argparse.ArgumentParser(description="PyTorch attribution-patching benchmark (autograd)")
    ap.add_argument("--model", required=True)
    ap.add_argument("--saes", required=True)
    ap.add_argument("--tokens", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    threading.Thread(target=watchdog, args=(20.0,), daemon=True).start()
    cfg, w = tf.gpt2_prepare(args.model, tf.Linear("aten"))
    saes = {}
    for name in sorted(os.listdir(args.saes)):
        sae = TopKSae(os.path.join(args.saes, name))
        saes[int(sae.hook.split(".")[1])] = sae
    with open(args.tokens) as f:
        tok = json.load(f)
    clean, corrupt = torch.tensor(tok["clean"]), torch.tensor(tok["corrupt"])

    run = lambda: iteration(cfg, w, saes, clean, corrupt, tok["token_a"], tok["token_b"])  # noqa: E731
    result = run()  # warm-up
    samples = []
    for _ in range(args.runs):
        t = time.perf_counter()
        result = run()
        samples.append(time.perf_counter() - t)
    metric, values, effects = result
    sample = []
    B, T = clean.shape
    for L in sorted(effects):
        lat, err = effects[L]
        flat = lat.reshape(-1)
        top = torch.topk(flat.abs(), 4).indices
        m = lat.shape[-1]
        sample.append({
            "hook": saes[L].hook,
            "latent": [[int(i) // (T * m), int(i) // m % T, int(i) % m, float(flat[i])] for i in top],
            "error": [[b, T - 1, float(err[b, T - 1])] for b in range(B)],
            "max_abs_latent": float(flat.abs().max()),
            "max_abs_error": float(err.abs().max()),
        })
    print(json.dumps({"torch": torch.__version__, "threads": args.threads, "median_s": statistics.median(samples),
                      "runs": samples, "peak_rss_gib": tf.peak_rss_gib(), "metric": metric, "values": values, "sample": sample}))


if __name__ == "__main__":
    main()
