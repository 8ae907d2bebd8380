"""Writes random SAEs in the folder layouts released for Llama 3, Pythia and Gemma 2, for SaeModelFormatTests.

usage: sae_model_formats.py --out DIR --seed S

Layouts (each as its own library writes it; small random tensors):
  * Llama Scope / lm_saes: NAME/hyperparams.json + NAME/checkpoints/final.safetensors with torch Linear weights
    encoder.weight [d_sae, d_model], encoder.bias, decoder.weight [d_model, d_sae], decoder.bias, stored in the
    normalised space lm_saes trains in.
  * sparsify runs: RUN/config.json ({"model": ...}) + RUN/<hookpoint>/cfg.json + sae.safetensors, including
    transcoders (transcode, skip_connection with W_skip [d_in, d_in]).
  * circuit-tracer transcoder sets: config.yaml + layer_N.safetensors (Llama 3.2 style, mlp.hook_in -> mlp.hook_out),
    and a Gemma 2 style set whose config.yaml lists hf:// references to Gemma Scope params.npz files, resolved in a
    Hugging Face hub cache folder written here (hub/models--google--gemma-scope-2b-pt-transcoders/...).

For every case, DIR/expected.safetensors holds NAME/x (inputs in the model's units), NAME/acts (the latent activations
the format's own library reports) and NAME/out (its reconstruction / prediction), computed here in float64 from the
stored (rounded) weights by the format's equations written out directly, with nothing folded:

  lm_saes (as released with Llama Scope): s_in = sqrt(d_model)/norm_in, s_out = sqrt(d_model)/norm_out (1 unless
  norm_activation is dataset-wise); z = s_in*x (- b_dec if apply_decoder_bias_to_pre_encoder, after lm_saes rescales
  b_dec to s_in/s_out... see below); pre = z W_e^T + b_e; the reported activation of latent j is
  r_j = pre_j * c_j with c_j = ||W_d[:, j]|| / s_out if sparsity_include_decoder_norm else 1 / s_in;
  jumprelu keeps r_j > threshold; topk keeps the top_k largest positive r_j; relu keeps r_j > 0;
  out = (sum_j [kept] pre_j W_d[:, j] + b_d) / s_out.
  (lm_saes's from_config standardises the weights for inference -- b_e/s_in, b_d/s_out, W_d*s_in/s_out, then unit
  decoder columns -- which gives exactly r_j and out above; with apply_decoder_bias_to_pre_encoder it subtracts the
  standardised b_d/s_out from x, i.e. z = s_in*(x - b_d/s_out).)

  sparsify: pre = relu(x W^T + b) with x - b_dec first unless transcoding; top-k; out = acts W_dec + b_dec (+ x W_skip^T).
  circuit-tracer / Gemma Scope npz: pre = x W_enc + b_enc; acts = pre * (pre > threshold); out = acts W_dec + b_dec.

Inputs are drawn so that no kept/dropped decision sits within a small margin of its boundary (threshold or k-th value).
DIR/manifest.json maps each case to the path to load and what the loader must report.
"""

import argparse
import json
import math
import os
import zipfile

import torch

from safetensors_lite import save
from sae_formats import npy_bytes

DT = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def stored(t, dtype):
    return t.to(DT[dtype]).contiguous()


def pick_rows(g, n, d, scale, score, margin_ok):
    """n rows x ~ scale * N(0, 1/d) whose scores pass margin_ok."""
    rows = []
    for _ in range(4000):
        x = torch.randn(1, d, generator=g, dtype=torch.float64) * scale / math.sqrt(d)
        if margin_ok(score(x)[0]):
            rows.append(x)
            if len(rows) == n:
                return torch.cat(rows)
    raise SystemExit("could not draw inputs away from the activation boundaries; rerun with another seed")


def topk_margin_ok(k):
    def ok(r):
        top = torch.topk(r, k=min(k + 1, r.numel())).values
        scale = float(r.abs().max()) + 1e-12
        return bool(top[k - 1] > 1e-3 * scale and (k >= r.numel() or top[k - 1] - top[k] > 1e-3 * scale))
    return ok


def threshold_margin_ok(theta):
    def ok(r):
        return bool(((r - theta).abs() > 1e-3 * (abs(theta) + float(r.abs().max()))).all())
    return ok


# ───────────────────────────── Llama Scope / lm_saes ─────────────────────────────

def llama_scope(root, m, exp, g, name, rel, *, hook_in, hook_out, act_fn, dtype="F32", dataset_wise=True, same_norm=True,
                include=True, b_dec_in=False, use_d_sae=True, threshold_pos=True, ckpt="checkpoints/final.safetensors",
                keyed_norms=False):
    d = int(torch.randint(12, 28, (1,), generator=g))
    ef = int(torch.randint(2, 5, (1,), generator=g))
    d_sae = d * ef
    folder = os.path.join(root, rel)
    os.makedirs(os.path.dirname(os.path.join(folder, ckpt)), exist_ok=True)
    w_e = stored(torch.randn(d_sae, d, generator=g) / math.sqrt(d), dtype)
    b_e = stored(torch.randn(d_sae, generator=g) * 0.3, dtype)
    w_d = stored(torch.randn(d, d_sae, generator=g) * (0.2 + torch.rand(1, d_sae, generator=g)), dtype)
    b_d = stored(torch.randn(d, generator=g) * 0.5, dtype)
    save(os.path.join(folder, ckpt), {"encoder.weight": w_e, "encoder.bias": b_e, "decoder.weight": w_d, "decoder.bias": b_d})

    norm_in = float(torch.empty(1).uniform_(2, 60, generator=g))
    norm_out = norm_in if same_norm else float(torch.empty(1).uniform_(0.5, 10, generator=g))
    s_in, s_out = (math.sqrt(d) / norm_in, math.sqrt(d) / norm_out) if dataset_wise else (1.0, 1.0)
    W_e, B_e, W_d, B_d = (t.to(torch.float64) for t in (w_e, b_e, w_d, b_d))
    c = (W_d.norm(dim=0) / s_out) if include else torch.full((d_sae,), 1 / s_in, dtype=torch.float64)

    def pre_of(x):
        z = s_in * (x - B_d / s_out) if b_dec_in else s_in * x
        return z @ W_e.T + B_e

    def reported(x):
        return pre_of(x) * c

    top_k = int(torch.randint(2, 6, (1,), generator=g))
    # a threshold at a typical positive reported activation, so some latents fire and some do not
    probe = reported(torch.randn(64, d, generator=g, dtype=torch.float64) * norm_in / math.sqrt(d))
    theta = float(probe[probe > 0].median()) if threshold_pos else 0.0
    jump = act_fn == "jumprelu" or (act_fn == "topk" and theta > 0)
    if jump:
        ok = threshold_margin_ok(theta)
    elif act_fn == "topk":
        ok = topk_margin_ok(top_k)
    else:
        ok = threshold_margin_ok(0.0)
    x = pick_rows(g, 6, d, norm_in, reported, ok)
    r = reported(x)
    if jump:
        keep = r > theta
    elif act_fn == "topk":
        idx = torch.topk(r, k=top_k, dim=-1).indices
        keep = torch.zeros_like(r, dtype=torch.bool).scatter_(-1, idx, True) & (r > 0)
    else:
        keep = r > 0
    acts = torch.where(keep, r, torch.zeros_like(r))
    out = (torch.where(keep, pre_of(x), torch.zeros_like(r)) @ W_d.T + B_d) / s_out

    hp = {"device": "cuda:0", "seed": 42, "dtype": "torch.bfloat16", "hook_point_in": hook_in, "hook_point_out": hook_out,
          "use_decoder_bias": True, "apply_decoder_bias_to_pre_encoder": b_dec_in, "expansion_factor": ef, "d_model": d,
          "bias_init_method": "all_zero", "act_fn": act_fn, "jump_relu_threshold": theta,
          "norm_activation": "dataset-wise" if dataset_wise else "inference",
          "decoder_exactly_fixed_norm": False, "sparsity_include_decoder_norm": include, "use_glu_encoder": False,
          "init_decoder_norm": 0.5, "init_encoder_norm": None, "init_encoder_with_decoder_transpose": True, "lp": 1,
          "l1_coefficient": 8e-05, "top_k": top_k, "use_batch_norm_mse": True, "use_ghost_grads": False, "tp_size": 1, "ddp_size": 1}
    if use_d_sae:
        hp["d_sae"] = d_sae
    if dataset_wise:
        # Llama Scope keys the norms "in"/"out"; later lm_saes versions key them by hook name
        hp["dataset_average_activation_norm"] = {hook_in: norm_in, hook_out: norm_out} if keyed_norms else {"in": norm_in, "out": norm_out}
    with open(os.path.join(folder, "hyperparams.json"), "w") as f:
        json.dump(hp, f, indent=4)

    transcoder = hook_in != hook_out
    base = "jumprelu" if jump else ("topk" if act_fn == "topk" else "standard")
    arch = {"standard": "transcoder", "jumprelu": "jumprelu_transcoder", "topk": "topk_transcoder"}[base] if transcoder else base
    m[name] = {"path": rel, "architecture": arch, "hook_name": hook_in, "hook_name_out": hook_out if transcoder else None,
               "d_in": d, "d_sae": d_sae, "d_out": d, "k": 0 if jump or act_fn != "topk" else top_k, "apply_b_dec": b_dec_in}
    exp[f"{name}/x"], exp[f"{name}/acts"], exp[f"{name}/out"] = x.float(), acts.float(), out.float()


# ───────────────────────────── sparsify ─────────────────────────────

def sparsify(root, m, exp, g, name, run, hookpoint, *, expect_in, expect_out, transcode=False, skip=False, dtype="F32", model=None):
    d = int(torch.randint(10, 24, (1,), generator=g))
    n = d * int(torch.randint(2, 4, (1,), generator=g))
    k = int(torch.randint(2, 6, (1,), generator=g))
    folder = os.path.join(root, run, hookpoint)
    os.makedirs(folder, exist_ok=True)
    if model is not None:
        with open(os.path.join(root, run, "config.json"), "w") as f:
            json.dump({"model": model, "dataset": "EleutherAI/fineweb-edu-dedup-10b", "hookpoints": [hookpoint]}, f)
    t = {"encoder.weight": stored(torch.randn(n, d, generator=g) / math.sqrt(d), dtype),
         "encoder.bias": stored(torch.randn(n, generator=g) * 0.2, dtype),
         "W_dec": stored(torch.randn(n, d, generator=g), dtype),
         "b_dec": stored(torch.randn(d, generator=g) * 0.3, dtype)}
    if skip:
        t["W_skip"] = stored(torch.randn(d, d, generator=g) * 0.1, dtype)
    save(os.path.join(folder, "sae.safetensors"), t)
    with open(os.path.join(folder, "cfg.json"), "w") as f:
        json.dump({"activation": "topk", "expansion_factor": 32, "normalize_decoder": True, "num_latents": n, "k": k,
                   "multi_topk": False, "skip_connection": skip, "transcode": transcode, "d_in": d}, f)
    W, B, Wd, Bd = (t[s].to(torch.float64) for s in ("encoder.weight", "encoder.bias", "W_dec", "b_dec"))

    def pre(x):
        return torch.relu((x if transcode else x - Bd) @ W.T + B)

    x = pick_rows(g, 6, d, 3.0 * math.sqrt(d), pre, topk_margin_ok(k))
    p = pre(x)
    idx = torch.topk(p, k=k, dim=-1).indices
    acts = torch.zeros_like(p).scatter_(-1, idx, p.gather(-1, idx))
    out = acts @ Wd + Bd
    if skip:
        out = out + x @ t["W_skip"].to(torch.float64).T
    arch = ("topk_skip_transcoder" if skip else "topk_transcoder") if transcode else "topk"
    m[name] = {"path": os.path.join(run, hookpoint), "architecture": arch, "hook_name": expect_in, "hook_name_out": expect_out,
               "d_in": d, "d_sae": n, "d_out": d, "k": k, "apply_b_dec": not transcode}
    exp[f"{name}/x"], exp[f"{name}/acts"], exp[f"{name}/out"] = x.float(), acts.float(), out.float()


# ───────────────────────────── circuit-tracer ─────────────────────────────

def jump_case(g, d, n, x_scale):
    """Random Gemma-Scope-shaped JumpReLU transcoder parameters (W_enc [d, n]) and inputs away from the thresholds."""
    w_enc = torch.randn(d, n, generator=g) / math.sqrt(d)
    b_enc = torch.randn(n, generator=g) * 0.1
    thr = torch.rand(n, generator=g) * 0.8 + 0.05
    w_dec = torch.randn(n, d, generator=g)
    b_dec = torch.randn(d, generator=g) * 0.2
    P = [t.to(torch.float64) for t in (w_enc, b_enc, thr, w_dec, b_dec)]

    def pre(x):
        return x @ P[0] + P[1]

    def ok(r):
        return bool(((r - P[2]).abs() > 1e-3).all())

    x = pick_rows(g, 5, d, x_scale, pre, ok)
    p = pre(x)
    acts = p * (p > P[2])
    out = acts @ P[3] + P[4]
    return (w_enc, b_enc, thr, w_dec, b_dec), x, acts, out


def circuit_tracer_llama(root, m, exp, g, rel, layers):
    d = int(torch.randint(10, 20, (1,), generator=g))
    n = int(torch.randint(24, 48, (1,), generator=g))
    folder = os.path.join(root, rel)
    os.makedirs(folder, exist_ok=True)
    for layer in range(layers):
        (w_enc, b_enc, thr, w_dec, b_dec), x, acts, out = jump_case(g, d, n, 2.0 * math.sqrt(d))
        w_skip = torch.randn(d, d, generator=g) * 0.1
        out = out + x @ w_skip.to(torch.float64).T
        # circuit-tracer's own layout: W_enc [d_transcoder, d_model] (F.linear), threshold inside the activation module
        save(os.path.join(folder, f"layer_{layer}.safetensors"),
             {"W_enc": w_enc.T.contiguous(), "b_enc": b_enc, "W_dec": w_dec, "b_dec": b_dec,
              "activation_function.threshold": thr, "W_skip": w_skip})
        name = f"ct_llama_{layer}"
        m[name] = {"path": rel, "layer": layer, "architecture": "jumprelu_skip_transcoder", "hook_name": f"blocks.{layer}.mlp.hook_in",
                   "hook_name_out": f"blocks.{layer}.mlp.hook_out", "d_in": d, "d_sae": n, "d_out": d, "k": 0, "apply_b_dec": False}
        exp[f"{name}/x"], exp[f"{name}/acts"], exp[f"{name}/out"] = x.float(), acts.float(), out.float()
    with open(os.path.join(folder, "config.yaml"), "w") as f:
        f.write('model_name: "meta-llama/Llama-3.2-1B"\nmodel_kind: transcoder_set\n'
                'feature_input_hook: "mlp.hook_in"\nfeature_output_hook: "mlp.hook_out"\n')


def circuit_tracer_gemma(root, m, exp, g, rel, hub, layers):
    d = int(torch.randint(10, 20, (1,), generator=g))
    n = int(torch.randint(24, 48, (1,), generator=g))
    repo = os.path.join(hub, "models--google--gemma-scope-2b-pt-transcoders")
    commit = "%040x" % int(torch.randint(1, 2 ** 62, (1,), generator=g))
    os.makedirs(os.path.join(repo, "refs"), exist_ok=True)
    with open(os.path.join(repo, "refs", "main"), "w") as f:
        f.write(commit)
    uris = []
    for layer in range(layers):
        (w_enc, b_enc, thr, w_dec, b_dec), x, acts, out = jump_case(g, d, n, 2.0 * math.sqrt(d))
        inside = f"layer_{layer}/width_16k/average_l0_{int(torch.randint(10, 200, (1,), generator=g))}/params.npz"
        path = os.path.join(repo, "snapshots", commit, inside)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
            for nm, t in (("W_enc", w_enc), ("W_dec", w_dec), ("b_enc", b_enc), ("b_dec", b_dec), ("threshold", thr)):
                z.writestr(nm + ".npy", npy_bytes(t, "<f4", False, (1, 0))[0])
        uris.append(f"hf://google/gemma-scope-2b-pt-transcoders/{inside}")
        name = f"ct_gemma_{layer}"
        m[name] = {"path": rel, "layer": layer, "architecture": "jumprelu_transcoder", "hook_name": f"blocks.{layer}.mlp.hook_in",
                   "hook_name_out": f"blocks.{layer}.hook_mlp_out", "d_in": d, "d_sae": n, "d_out": d, "k": 0, "apply_b_dec": False}
        exp[f"{name}/x"], exp[f"{name}/acts"], exp[f"{name}/out"] = x.float(), acts.float(), out.float()
    folder = os.path.join(root, rel)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.yaml"), "w") as f:
        f.write('model_kind: transcoder_set\nmodel_name: "google/gemma-2-2b"\n'
                'feature_input_hook: "mlp.hook_in"\nfeature_output_hook: "hook_mlp_out"\ntranscoders:\n')
        for u in uris:
            f.write(f'  - "{u}"\n')


def gemma_scope(root, m, exp, g, name, rel, hook, hook_out=None, arch="jumprelu"):
    """A Gemma Scope params.npz at a release path (the hooks come from the path)."""
    d = int(torch.randint(10, 20, (1,), generator=g))
    n = int(torch.randint(24, 48, (1,), generator=g))
    (w_enc, b_enc, thr, w_dec, b_dec), x, acts, out = jump_case(g, d, n, 2.0 * math.sqrt(d))
    path = os.path.join(root, rel, "params.npz")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for nm, t in (("W_enc", w_enc), ("W_dec", w_dec), ("b_enc", b_enc), ("b_dec", b_dec), ("threshold", thr)):
            z.writestr(nm + ".npy", npy_bytes(t, "<f4", False, (1, 0))[0])
    m[name] = {"path": os.path.join(rel, "params.npz"), "architecture": arch, "hook_name": hook, "hook_name_out": hook_out,
               "d_in": d, "d_sae": n, "d_out": d, "k": 0, "apply_b_dec": False}
    exp[f"{name}/x"], exp[f"{name}/acts"], exp[f"{name}/out"] = x.float(), acts.float(), out.float()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, required=True)
    a = ap.parse_args()
    g = torch.Generator().manual_seed(a.seed)
    root, m, exp = a.out, {}, {}
    L = int(torch.randint(0, 30, (1,), generator=g))
    ls = "llama_scope/Llama3_1-8B-Base-LXR-8x"
    llama_scope(root, m, exp, g, "ls_R", f"{ls}/Llama3_1-8B-Base-L{L}R-8x", hook_in=f"blocks.{L}.hook_resid_post",
                hook_out=f"blocks.{L}.hook_resid_post", act_fn="jumprelu", dtype="BF16")
    llama_scope(root, m, exp, g, "ls_A", f"llama_scope/LXA/Llama3_1-8B-Base-L{L}A-8x", hook_in=f"blocks.{L}.hook_attn_out",
                hook_out=f"blocks.{L}.hook_attn_out", act_fn="jumprelu")
    llama_scope(root, m, exp, g, "ls_M", f"llama_scope/LXM/Llama3_1-8B-Base-L{L}M-32x", hook_in=f"blocks.{L}.hook_mlp_out",
                hook_out=f"blocks.{L}.hook_mlp_out", act_fn="jumprelu", dtype="F16", use_d_sae=False)
    llama_scope(root, m, exp, g, "ls_TC", f"llama_scope/LXTC/Llama3_1-8B-Base-L{L}TC-8x", hook_in=f"blocks.{L}.ln2.hook_normalized",
                hook_out=f"blocks.{L}.hook_mlp_out", act_fn="jumprelu", same_norm=False)
    llama_scope(root, m, exp, g, "ls_TC_keyed_norms", "lm_saes/transcoder_keyed_norms", hook_in="blocks.4.ln2.hook_normalized",
                hook_out="blocks.4.hook_mlp_out", act_fn="jumprelu", same_norm=False, keyed_norms=True)
    llama_scope(root, m, exp, g, "ls_topk_converted", "lm_saes/topk_with_threshold", hook_in="blocks.2.hook_resid_post",
                hook_out="blocks.2.hook_resid_post", act_fn="topk", ckpt="sae_weights.safetensors")
    llama_scope(root, m, exp, g, "ls_topk", "lm_saes/topk", hook_in="blocks.1.hook_resid_mid", hook_out="blocks.1.hook_resid_mid",
                act_fn="topk", threshold_pos=False, include=False, b_dec_in=True)
    llama_scope(root, m, exp, g, "ls_relu_inference", "lm_saes/relu", hook_in="blocks.0.hook_resid_pre", hook_out="blocks.0.hook_resid_pre",
                act_fn="relu", threshold_pos=False, dataset_wise=False, ckpt="checkpoints/pruned.safetensors")

    sparsify(root, m, exp, g, "sp_pythia_layers", "sae-pythia-160m-32k", "layers.4", expect_in="blocks.4.hook_resid_post",
             expect_out=None, model="EleutherAI/pythia-160m", dtype="BF16")
    sparsify(root, m, exp, g, "sp_pythia_mlp", "sae-pythia-160m-32k", "layers.4.mlp", expect_in="blocks.4.hook_mlp_out",
             expect_out=None, model="EleutherAI/pythia-160m")
    sparsify(root, m, exp, g, "sp_llama_skip_transcoder", "skip-transcoder-Llama-3.2-1B-131k", "layers.7.mlp",
             expect_in="blocks.7.mlp.hook_in", expect_out="blocks.7.mlp.hook_out", transcode=True, skip=True,
             model="meta-llama/Llama-3.2-1B")
    sparsify(root, m, exp, g, "sp_block_transcoder", "block-transcoders", "layers.2", expect_in="blocks.2.hook_resid_pre",
             expect_out="blocks.2.hook_resid_post", transcode=True, dtype="F16")
    sparsify(root, m, exp, g, "sp_gemma2_mlp", "sae-gemma-2-2b", "layers.5.mlp", expect_in="blocks.5.mlp.hook_out",
             expect_out=None, model="google/gemma-2-2b")

    circuit_tracer_llama(root, m, exp, g, "transcoder-Llama-3.2-1B", int(torch.randint(1, 4, (1,), generator=g)))
    circuit_tracer_gemma(root, m, exp, g, "gemma-scope-transcoders", os.path.join(root, "hub"), int(torch.randint(1, 4, (1,), generator=g)))

    gl = int(torch.randint(0, 26, (1,), generator=g))
    gemma_scope(root, m, exp, g, "gs_res", f"gemma-scope-2b-pt-res/layer_{gl}/width_16k/average_l0_82", f"blocks.{gl}.hook_resid_post")
    gemma_scope(root, m, exp, g, "gs_mlp", f"hub/models--google--gemma-scope-9b-it-mlp/snapshots/{'ab' * 20}/layer_{gl}/width_131k/average_l0_19",
                f"blocks.{gl}.hook_mlp_out")
    gemma_scope(root, m, exp, g, "gs_att", f"gemma-scope-2b-pt-att/layer_{gl}/width_16k/average_l0_40", f"blocks.{gl}.attn.hook_z")
    gemma_scope(root, m, exp, g, "gs_transcoder", f"gemma-scope-2b-pt-transcoders/layer_{gl}/width_16k/average_l0_76",
                f"blocks.{gl}.mlp.hook_in", f"blocks.{gl}.hook_mlp_out", arch="jumprelu_transcoder")

    save(os.path.join(root, "expected.safetensors"), exp)
    with open(os.path.join(root, "manifest.json"), "w") as f:
        json.dump(m, f, indent=1)


if __name__ == "__main__":
    main()
