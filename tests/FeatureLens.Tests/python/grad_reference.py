#!/usr/bin/python3
"""FeatureLens gradient oracle: d(metric)/d(every hook activation) with torch autograd.

Run it with /usr/bin/python3 (Debian python3-torch 1.13, CPU). It borrows only checkpoint LOADING
from torch_reference.py (load_model: HF folder or llama2.c .bin, weights as a dict); the forward
pass is rebuilt here with every hook activation as a node of the autograd graph, and the
gradients are whatever torch.autograd gives for that graph.

Usage
  grad_reference.py --model PATH --tokens TOKENS.json --metric METRIC --out OUT.safetensors
                    [--saes SAES.safetensors] [--hooks all|h1,h2,...]
  grad_reference.py --selfcheck [--shared /work/shared]
  Options: --extra-hooks (blocks.L.mlp.hook_in / mlp.hook_out as graph nodes; SAEs may read/write them),
  --rope-len L (dynamic rope_scaling's run length), --generic (gpt2/llama folders through arch_reference.py),
  --make-config CFG.json [--make-dtype D --make-seed S --make-qk-gain G] (first write --model with
  torch_reference make --arch hf). Families beyond the legacy gpt2/llama below run arch_reference.forward
  with this file's Graph.hook, so every hook is a graph node there too.

TOKENS.json: a list of token-id lists. Each sequence runs alone (no padding); the total metric is
the sum over sequences, so sequence b's gradients are those of its own metric.

METRIC (CONNECTIONS.md):
  logit:T | logit-diff:T1,T2 | logprob:T | prob:T | feature:HOOK:I   each with optional @POS
      (default @-1 = last position; a negative POS counts from the end of that sequence)
  loss        mean next-token cross-entropy over positions 0..T-2 predicting tokens 1..T-1
  feature:HOOK:I is HOOK.hook_sae_acts_post[pos, I] of the SAE spliced at HOOK (needs --saes).

OUT (float32): for each sequence b and each written hook h: "{b}/{h}" (forward value, the
TransformerLens shape without the batch dim) and "{b}/{h}.grad" (same shape; zeros where the
metric does not depend on h at all); "{b}/logits" and "{b}/logits.grad"; "{b}/metric" [1];
"metric" [1] (the sum); with SAEs also "{b}/sae_margin" [1]: the smallest distance of any SAE
activation decision (pre vs 0, pre vs threshold, gate vs 0, k-th vs (k+1)-th ranked pre) to its
boundary, relative to the largest |pre| (resp. |gate|) of that row -- a caller comparing a float32
implementation should redraw inputs when it is below ~1e-4, since rounding could flip a decision.

Numerics: weights (f32/bf16/f16) are upcast exactly to float64 and everything runs in float64, so
the oracle's own rounding (~1e-15 relative) is negligible; outputs are rounded to float32 once.
RoPE angles follow the model's definition (Hugging Face / llama2.c): inv_freq = 1/theta^(2i/HS)
and angle = pos*inv_freq are computed in float32, then cos/sin in float64 of those angles.

Hooks and wiring (as TransformerLens; each hook is an identity node whose output is what flows on):
  hook_embed, hook_pos_embed (gpt2)  -> summed into blocks.0.hook_resid_pre
  ln: centred x (LayerNorm) or x (RMSNorm) -> hook_scale = sqrt(mean(x^2)+eps);
      hook_normalized = x / hook_scale; the norm's output = hook_normalized * w (+ b)
  attn.hook_q/hook_k/hook_v (k/v with NKV heads) -> RoPE -> hook_rot_q/hook_rot_k (llama)
      -> k/v repeated to NH heads -> hook_attn_scores (q.k/sqrt(HS), -inf above the diagonal)
      -> softmax -> hook_pattern -> hook_z = pattern @ v
      -> hook_result[t,h] = z[t,h] @ W_O[h] (when written) and attn_out = sum_h result + b_O,
         otherwise attn_out = z.flatten() @ W_O + b_O -> hook_attn_out
  hook_resid_mid = resid_pre + attn_out; hook_mlp_in = copy of resid_mid feeding ln2;
  mlp.hook_pre (, hook_pre_linear) -> mlp.hook_post -> hook_mlp_out;
  hook_resid_post = resid_mid + mlp_out; ln_final; logits.
So e.g. hook_attn_scores' gradient is 0 at the masked entries and hook_pattern's is generally
nonzero above the diagonal (d z / d pattern = v).

SAEs (--saes): a safetensors file whose __metadata__ "saes" is a JSON list, one object per SAE:
  {"name": N, "hook_name": H, "architecture": standard|jumprelu|topk|gated|transcoder|
   jumprelu_transcoder|skip_transcoder, "apply_b_dec_to_input": bool (default false),
   "k": int (topk), "hook_head_index": int (optional: SAE on one head of a per-head hook such as
   attn.hook_z), "hook_name_out": H2 (transcoders: the hook written)}
and tensors "N/W_enc" (d_in, d_sae), "N/b_enc" (d_sae; not gated), "N/W_dec" (d_sae, d_out),
"N/b_dec" (d_out), "N/threshold" (d_sae; jumprelu*), "N/b_gate", "N/r_mag", "N/b_mag" (gated),
"N/W_skip" (d_out, d_in; skip_transcoder). Any float dtype; upcast to float64. No input
normalisation, no rescale_acts_by_decoder_norm. Formulas (as sae_reference.py / SAELens):
  sae_in = x (- b_dec if apply_b_dec_to_input); pre = sae_in W_enc + b_enc;
  standard/transcoder: f = relu(pre); jumprelu*: f = relu(pre)[pre > threshold];
  topk: f = relu of the k largest pre, 0 elsewhere;
  gated: gate = sae_in W_enc + b_gate, pre = sae_in (W_enc * exp(r_mag)) + b_mag, f = [gate>0] relu(pre)
  recons = f W_dec + b_dec; sae output = recons (+ x W_skip^T for skip_transcoder).
Every SAE is spliced WITH its error term. Hooks under "{H}.": hook_sae_input (= x),
hook_sae_acts_pre, hook_sae_acts_post (= f), hook_sae_recons, hook_sae_error,
hook_sae_output (replaces the activation at H, or at hook_name_out for a transcoder).
The graph (CONNECTIONS.md; it is also what editing a hook does in FeatureLens's splice, which
recomputes the error from the unedited input):
  x            the model's activation at H (for a transcoder: its input hook's activation)
  sae_input    a node with x's value read by the encoder: x -> sae_input -> pre -> f -> recons
  clean        = decode(encode(x)): a SECOND branch of the graph from x, not through the nodes
               above (editing sae_input/pre/f/recons does not move it; editing x does)
  error e      = actual - clean; actual = x (SAE) or the model's own hook_name_out value
               (transcoder)
  output       = sae output (recons, + sae_input W_skip^T for skip transcoders) + e
So d m/d output = g, d m/d e = g, d m/d recons = g, d m/d f = W_dec g for every latent (active or
not), d m/d pre = the activation's Jacobian^T (W_dec g), d m/d sae_input = W_enc (d m/d pre)
(+ W_skip^T g), and x receives J^T g (through sae_input) + g (through e) - J^T g (through
clean) = g: the identity, exactly the unspliced model's gradient (for a transcoder the input
hook's gradient is the MLP's own; hook_name_out's is g). A feature metric's gradient reaches x
and everything upstream through the encoder. (A "literal" e = x - recons, recons being the node
f feeds, would give d m/d recons = g - g = 0 and d m/d f = 0; the separate clean branch is what
gives the contract's d m/d f = W_dec g.)

--selfcheck: finite differences (float64, central, step 1e-6) against autograd at random entries
of many hooks (model hooks and SAE hooks, every metric kind), the SAE identities above, forward
values against torch_reference.py's own forward, and masked/causal gradient structure. Prints
"N failures" last and exits non-zero when N > 0.
"""

import argparse
import json
import math
import os
import random
import sys
import tempfile

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import arch_reference as ar  # noqa: E402  (the forward of the families the legacy paths below do not cover)
import safetensors_lite as st  # noqa: E402
from torch_reference import load_model  # noqa: E402  (checkpoint loading only)

DT = torch.float64
TRANSCODERS = ("transcoder", "jumprelu_transcoder", "skip_transcoder")
SAE_ARCHS = ("standard", "jumprelu", "topk", "gated") + TRANSCODERS
SAE_HOOKS = ("hook_sae_input", "hook_sae_acts_pre", "hook_sae_acts_post", "hook_sae_recons",
             "hook_sae_error", "hook_sae_output")

# ----------------------------------------------------------------------------------------------
# Metrics


def parse_metric(text):
    """Returns a dict {"kind", "tokens": [...], "hook", "latent", "pos"}; raises ValueError."""
    s = text.strip()
    if s == "loss":
        return {"kind": "loss"}
    pos = -1
    body = s
    if "@" in s:
        body, p = s.rsplit("@", 1)
        try:
            pos = int(p)
        except ValueError:
            raise ValueError(f"metric {text!r}: position {p!r} is not an integer")
    kind, sep, arg = body.partition(":")
    if not sep:
        raise ValueError(f"metric {text!r}: expected KIND:ARGS (logit, logit-diff, logprob, prob, feature) or loss")
    if kind in ("logit", "logprob", "prob"):
        return {"kind": kind, "tokens": [int(arg)], "pos": pos}
    if kind == "logit-diff":
        parts = arg.split(",")
        if len(parts) != 2:
            raise ValueError(f"metric {text!r}: logit-diff needs two token ids T1,T2")
        return {"kind": kind, "tokens": [int(parts[0]), int(parts[1])], "pos": pos}
    if kind == "feature":
        hook, sep2, latent = arg.rpartition(":")
        if not sep2 or not hook:
            raise ValueError(f"metric {text!r}: expected feature:HOOK:LATENT")
        return {"kind": kind, "hook": hook, "latent": int(latent), "pos": pos}
    raise ValueError(f"metric {text!r}: unknown kind {kind!r}")


def resolve_pos(pos, T, text):
    p = pos + T if pos < 0 else pos
    if not 0 <= p < T:
        raise ValueError(f"metric {text}: position {pos} outside a sequence of {T} tokens")
    return p


def metric_value(metric, text, logits, tokens, graph):
    T, V = logits.shape
    kind = metric["kind"]
    if kind == "loss":
        if T < 2:
            raise ValueError("metric loss needs sequences of at least 2 tokens")
        lp = torch.log_softmax(logits[:-1], dim=-1)
        tgt = torch.tensor(tokens[1:], dtype=torch.long)
        return -lp.gather(1, tgt[:, None]).mean()
    p = resolve_pos(metric["pos"], T, text)
    if kind == "feature":
        name = metric["hook"] + ".hook_sae_acts_post"
        if name not in graph.nodes:
            raise ValueError(f"metric {text}: no SAE spliced at {metric['hook']}")
        f = graph.nodes[name]
        if not 0 <= metric["latent"] < f.shape[-1]:
            raise ValueError(f"metric {text}: latent {metric['latent']} outside d_sae {f.shape[-1]}")
        return f[p, metric["latent"]]
    for t in metric["tokens"]:
        if not 0 <= t < V:
            raise ValueError(f"metric {text}: token {t} outside the vocabulary of {V}")
    row = logits[p]
    if kind == "logit":
        return row[metric["tokens"][0]]
    if kind == "logit-diff":
        return row[metric["tokens"][0]] - row[metric["tokens"][1]]
    if kind == "logprob":
        return torch.log_softmax(row, dim=-1)[metric["tokens"][0]]
    if kind == "prob":
        return torch.softmax(row, dim=-1)[metric["tokens"][0]]
    raise AssertionError(kind)


# ----------------------------------------------------------------------------------------------
# SAEs


def load_saes(path):
    _, meta, _ = st.read_header(path)
    if "saes" not in meta:
        raise ValueError(f"{path}: no 'saes' entry in the metadata")
    specs = json.loads(meta["saes"])
    tensors = st.load(path)
    saes = []
    for spec in specs:
        name = spec["name"]
        arch = spec["architecture"]
        if arch not in SAE_ARCHS:
            raise ValueError(f"{path}: SAE {name}: unknown architecture {arch!r}")
        t = {k[len(name) + 1:]: v.to(DT) for k, v in tensors.items() if k.startswith(name + "/")}
        need = ["W_enc", "W_dec", "b_dec"] + (["b_gate", "r_mag", "b_mag"] if arch == "gated" else ["b_enc"])
        need += ["threshold"] if arch.startswith("jumprelu") else []
        need += ["W_skip"] if arch == "skip_transcoder" else []
        for n in need:
            if n not in t:
                raise ValueError(f"{path}: SAE {name} ({arch}) lacks tensor {name}/{n}")
        if arch in TRANSCODERS and not spec.get("hook_name_out"):
            raise ValueError(f"{path}: transcoder {name} needs hook_name_out")
        if arch == "topk" and int(spec.get("k", 0)) <= 0:
            raise ValueError(f"{path}: topk SAE {name} needs k > 0")
        saes.append({**spec, "t": t})
    hooks = [s["hook_name"] for s in saes]
    if len(set(hooks)) != len(hooks):
        raise ValueError(f"{path}: two SAEs read the same hook")
    return saes


def sae_encode(sae, sae_in):
    """Returns (pre, f, margin). margin: smallest relative distance of a decision to its boundary."""
    t, arch = sae["t"], sae["architecture"]
    x = sae_in - t["b_dec"] if sae.get("apply_b_dec_to_input", False) else sae_in

    def rel_margin(d, ref):
        scale = ref.abs().max(dim=-1, keepdim=True).values.clamp_min(1e-30)
        return (d.abs() / scale).min().item() if d.numel() else math.inf

    if arch == "gated":
        gate = x @ t["W_enc"] + t["b_gate"]
        pre = x @ (t["W_enc"] * t["r_mag"].exp()) + t["b_mag"]
        f = (gate > 0).to(DT) * torch.relu(pre)
        margin = min(rel_margin(gate.detach(), gate.detach()), rel_margin(pre.detach(), pre.detach()))
        return pre, f, margin
    pre = x @ t["W_enc"] + t["b_enc"]
    pd = pre.detach()
    margin = rel_margin(pd, pd)
    if arch in ("standard", "transcoder", "skip_transcoder"):
        f = torch.relu(pre)
    elif arch in ("jumprelu", "jumprelu_transcoder"):
        f = torch.relu(pre) * (pre > t["threshold"]).to(DT)
        margin = min(margin, rel_margin(pd - t["threshold"], pd))
    elif arch == "topk":
        k = int(sae["k"])
        top = torch.topk(pre, k=k, dim=-1)
        f = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
        if k < pre.shape[-1]:
            srt = torch.sort(pd, dim=-1, descending=True).values
            margin = min(rel_margin(srt[:, k - 1] - srt[:, k], pd), rel_margin(srt[:, :k], pd))
        else:
            margin = rel_margin(pd, pd)
    else:
        raise AssertionError(arch)
    return pre, f, margin


def sae_decode(sae, f, sae_in):
    """(recons, output before the error term)."""
    t = sae["t"]
    recons = f @ t["W_dec"] + t["b_dec"]
    out = recons + sae_in @ t["W_skip"].t() if sae["architecture"] == "skip_transcoder" else recons
    return recons, out


# ----------------------------------------------------------------------------------------------
# The forward graph


class Graph:
    """Records hook nodes (identity nodes with retain_grad) and applies SAE splices.

    hook(name, t) returns the tensor that flows on. `deltas` (name -> tensor) are added to a hook's
    value before it flows on: the finite-difference self-check edits hooks this way. `edits`
    (name -> function of the hook's value returning the value that flows on instead, applied after
    the delta) let a caller patch or interpolate a hook (effects_reference.py); a returned tensor
    that requires grad has its gradient retained like any hook node."""

    def __init__(self, saes=(), deltas=None, want_result=True, edits=None):
        self.nodes = {}
        self.deltas = deltas or {}
        self.edits = edits or {}
        self.want_result = want_result
        self.margin = math.inf
        self.by_in = {s["hook_name"]: s for s in saes}
        self.by_out = {s["hook_name_out"]: s for s in saes if s["architecture"] in TRANSCODERS}
        self.pending = {}  # transcoder output hook -> (sae, sae output node, clean output)

    def node(self, name, t):
        if name in self.nodes:
            raise AssertionError(f"hook {name} recorded twice")
        n = t.clone()
        if name in self.deltas:
            n = n + self.deltas[name]
        if name in self.edits:
            n = self.edits[name](n)
        if n.requires_grad:
            n.retain_grad()
        self.nodes[name] = n
        return n

    def hook(self, name, t):
        n = self.node(name, t)
        if name in self.by_in:
            n = self._splice_in(self.by_in[name], n)
        if name in self.by_out:
            n = self._splice_out(name, n)
        return n

    def _splice_in(self, sae, x_full):
        h = sae.get("hook_head_index")
        # one head of a per-head hook, or the whole hook flattened to (T, width) (hook_z: NH*HS)
        x = x_full[:, h, :] if h is not None else x_full.reshape(x_full.shape[0], -1)
        p = sae["hook_name"] + "."
        # the encoder reads its own node (x's value); the clean output is a second, separate
        # branch of the graph from x itself, so edits of sae_input/pre/f/recons do not reach it
        sae_in = self.node(p + "hook_sae_input", x)
        _, f0, margin = sae_encode(sae, x)
        _, clean = sae_decode(sae, f0, x)
        self.margin = min(self.margin, margin)
        pre, _, _ = sae_encode(sae, sae_in)
        pre = self.node(p + "hook_sae_acts_pre", pre)
        # the activation function applied to the (possibly edited) pre node
        f = self._activate(sae, sae_in, pre)
        f = self.node(p + "hook_sae_acts_post", f)
        recons, _ = sae_decode(sae, f, sae_in)
        recons = self.node(p + "hook_sae_recons", recons)
        out = recons + sae_in @ sae["t"]["W_skip"].t() if sae["architecture"] == "skip_transcoder" else recons
        if sae["architecture"] in TRANSCODERS:
            self.pending[sae["hook_name_out"]] = (sae, out, clean)
            return x_full
        return self._finish(sae, x_full, out, x, clean)

    def _activate(self, sae, sae_in, pre):
        t, arch = sae["t"], sae["architecture"]
        if arch == "gated":
            x = sae_in - t["b_dec"] if sae.get("apply_b_dec_to_input", False) else sae_in
            gate = (x.detach() @ t["W_enc"] + t["b_gate"]) > 0
            return gate.to(DT) * torch.relu(pre)
        if arch in ("standard", "transcoder", "skip_transcoder"):
            return torch.relu(pre)
        if arch in ("jumprelu", "jumprelu_transcoder"):
            return torch.relu(pre) * (pre.detach() > t["threshold"]).to(DT)
        top = torch.topk(pre.detach(), k=int(sae["k"]), dim=-1).indices
        return torch.zeros_like(pre).scatter(-1, top, torch.relu(pre.gather(-1, top)))

    def _splice_out(self, name, actual_full):
        if name not in self.pending:
            raise ValueError(f"transcoder output hook {name} comes before its input hook")
        sae, out, clean = self.pending.pop(name)
        return self._finish(sae, actual_full, out, actual_full.reshape(actual_full.shape[0], -1), clean)

    def _finish(self, sae, target_full, out, actual, clean):
        p = sae["hook_name"] + "."
        e = self.node(p + "hook_sae_error", actual - clean)
        o = self.node(p + "hook_sae_output", out + e)
        h = sae.get("hook_head_index")
        if h is None:
            return o.reshape(target_full.shape)
        heads = list(target_full.unbind(1))
        heads[h] = o
        return torch.stack(heads, 1)


def layer_norm(g, x, w, b, eps, prefix):
    xc = x - x.mean(dim=-1, keepdim=True)
    scale = g.hook(prefix + ".hook_scale", torch.sqrt((xc * xc).mean(dim=-1, keepdim=True) + eps))
    normalized = g.hook(prefix + ".hook_normalized", xc / scale)
    return normalized * w + b


def rms_norm(g, x, w, eps, prefix):
    scale = g.hook(prefix + ".hook_scale", torch.sqrt((x * x).mean(dim=-1, keepdim=True) + eps))
    normalized = g.hook(prefix + ".hook_normalized", x / scale)
    return normalized * w


def rope_tables(T, HS, theta, f64_angles=False):
    if f64_angles:
        inv = 1.0 / (theta ** (torch.arange(0, HS, 2, dtype=torch.float64) / HS))
        angle = torch.arange(T, dtype=torch.float64)[:, None] * inv[None, :]
    else:  # the model's definition: float32 inverse frequencies and angles
        inv = 1.0 / (theta ** (torch.arange(0, HS, 2, dtype=torch.int64).float() / HS))
        angle = torch.arange(T, dtype=torch.int64).float()[:, None] * inv[None, :]
    angle = angle.to(DT)
    return torch.cos(angle)[:, None, :], torch.sin(angle)[:, None, :]  # (T,1,HS/2)


def apply_rope(x, cos, sin, layout):
    HS = x.shape[-1]
    if layout == "rotate_half":
        a, b = x[..., :HS // 2], x[..., HS // 2:]
        return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)
    a, b = x[..., 0::2], x[..., 1::2]
    return torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).reshape(x.shape)


def attention(g, q, k, v, prefix):
    T, NH, HS = q.shape
    rep = NH // k.shape[1]
    k = k.repeat_interleave(rep, dim=1)
    v = v.repeat_interleave(rep, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(HS)
    future = torch.ones(T, T, dtype=torch.bool).triu(diagonal=1)
    scores = g.hook(prefix + ".hook_attn_scores", scores.masked_fill(future, float("-inf")))
    pattern = g.hook(prefix + ".hook_pattern", torch.softmax(scores, dim=-1))
    return g.hook(prefix + ".hook_z", torch.einsum("hqk,khd->qhd", pattern, v))


def attn_output(g, z, W_o, b_o, prefix):
    """W_o: (NH*HS, C) with rows grouped by head; b_o may be None."""
    T, NH, HS = z.shape
    if g.want_result:
        result = g.hook(prefix + ".hook_result", torch.einsum("thd,hdc->thc", z, W_o.reshape(NH, HS, -1)))
        out = result.sum(dim=1)
    else:
        out = z.reshape(T, NH * HS) @ W_o
    return out + b_o if b_o is not None else out


def forward(model, tokens, g, f64_angles=False):
    if model["arch"] == "generic":  # gpt2 variants, llama/mistral/qwen2, gemma2, gpt_neox (arch_reference.py)
        logits = ar.forward(model, tokens, g.hook, want_result=g.want_result, extra=model.get("extra", False),
                            f64_angles=f64_angles)
        if g.pending:
            raise ValueError(f"transcoder output hooks never reached: {sorted(g.pending)}")
        return g.node("logits", logits)
    cfg, w = model["cfg"], model["w"]
    T, NH, C = len(tokens), cfg["n_heads"], cfg["d_model"]
    if T > cfg["n_ctx"]:
        raise ValueError(f"sequence of {T} tokens is longer than the context {cfg['n_ctx']}")
    if any(t < 0 or t >= cfg["vocab"] for t in tokens):
        raise ValueError(f"token id outside [0, {cfg['vocab']})")
    idx = torch.tensor(tokens, dtype=torch.long)
    gpt2 = model["arch"] == "gpt2"
    if gpt2:
        HS = C // NH
        x = g.hook("hook_embed", w["wte"][idx].clone().requires_grad_(True))
        x = x + g.hook("hook_pos_embed", w["wpe"][:T].clone().requires_grad_(True))
    else:
        NKV, HS = cfg["n_kv_heads"], cfg["head_dim"]
        x = g.hook("hook_embed", w["embed"][idx].clone().requires_grad_(True))
        cos, sin = rope_tables(T, HS, cfg["rope_theta"], f64_angles)
    for L in range(cfg["n_layers"]):
        b = f"blocks.{L}"
        x = g.hook(b + ".hook_resid_pre", x)
        if gpt2:
            h = layer_norm(g, x, w[f"{L}.ln1_w"], w[f"{L}.ln1_b"], cfg["eps"], b + ".ln1")
            qkv = h @ w[f"{L}.W_qkv"] + w[f"{L}.b_qkv"]
            q, k, v = [t.reshape(T, NH, HS) for t in qkv.split(C, dim=-1)]
            q = g.hook(b + ".attn.hook_q", q)
            k = g.hook(b + ".attn.hook_k", k)
            v = g.hook(b + ".attn.hook_v", v)
            W_o, b_o = w[f"{L}.W_o"], w[f"{L}.b_o"]
        else:
            h = rms_norm(g, x, w[f"{L}.rms1"], cfg["eps"], b + ".ln1")
            q = g.hook(b + ".attn.hook_q", (h @ w[f"{L}.wq"].t()).reshape(T, NH, HS))
            k = g.hook(b + ".attn.hook_k", (h @ w[f"{L}.wk"].t()).reshape(T, NKV, HS))
            v = g.hook(b + ".attn.hook_v", (h @ w[f"{L}.wv"].t()).reshape(T, NKV, HS))
            q = g.hook(b + ".attn.hook_rot_q", apply_rope(q, cos, sin, cfg["rope_layout"]))
            k = g.hook(b + ".attn.hook_rot_k", apply_rope(k, cos, sin, cfg["rope_layout"]))
            W_o, b_o = w[f"{L}.wo"].t(), None
        z = attention(g, q, k, v, b + ".attn")
        attn_out = g.hook(b + ".hook_attn_out", attn_output(g, z, W_o, b_o, b + ".attn"))
        resid_mid = g.hook(b + ".hook_resid_mid", x + attn_out)
        mlp_in = g.hook(b + ".hook_mlp_in", resid_mid)
        if gpt2:
            h = layer_norm(g, mlp_in, w[f"{L}.ln2_w"], w[f"{L}.ln2_b"], cfg["eps"], b + ".ln2")
            pre = g.hook(b + ".mlp.hook_pre", h @ w[f"{L}.W_fc"] + w[f"{L}.b_fc"])
            post = 0.5 * pre * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (pre + 0.044715 * pre ** 3)))
            post = g.hook(b + ".mlp.hook_post", post)
            mlp_out = post @ w[f"{L}.W_proj"] + w[f"{L}.b_proj"]
        else:
            h = rms_norm(g, mlp_in, w[f"{L}.rms2"], cfg["eps"], b + ".ln2")
            pre = g.hook(b + ".mlp.hook_pre", h @ w[f"{L}.w_gate"].t())
            lin = g.hook(b + ".mlp.hook_pre_linear", h @ w[f"{L}.w_up"].t())
            post = g.hook(b + ".mlp.hook_post", pre * torch.sigmoid(pre) * lin)
            mlp_out = post @ w[f"{L}.w_down"].t()
        mlp_out = g.hook(b + ".hook_mlp_out", mlp_out)
        x = g.hook(b + ".hook_resid_post", resid_mid + mlp_out)
    if gpt2:
        h = layer_norm(g, x, w["lnf_w"], w["lnf_b"], cfg["eps"], "ln_final")
        logits = h @ w["wte"].t()
    else:
        h = rms_norm(g, x, w["norm"], cfg["eps"], "ln_final")
        logits = h @ w["lm_head"].t()
    if g.pending:
        raise ValueError(f"transcoder output hooks never reached: {sorted(g.pending)}")
    return g.node("logits", logits)


def run_sequence(model, tokens, metric, text, saes=(), deltas=None, want_result=True, f64_angles=False, backward=True,
                 edits=None):
    """Returns (metric value tensor, Graph) after backward. `edits`: see Graph."""
    for s in saes:
        if s.get("hook_head_index") is not None and not s["hook_name"].endswith(("attn.hook_z", "attn.hook_q", "attn.hook_v",
                                                                                  "attn.hook_k", "attn.hook_result")):
            raise ValueError(f"SAE {s['name']}: hook_head_index on a hook without heads ({s['hook_name']})")
    g = Graph(saes, deltas, want_result, edits)
    logits = forward(model, [int(t) for t in tokens], g, f64_angles)
    missing = set(g.by_in) - set(h.rsplit(".hook_sae_", 1)[0] for h in g.nodes if ".hook_sae_" in h)
    if missing:
        raise ValueError(f"SAE hooks not found in a {model['arch']} model: {sorted(missing)}")
    m = metric_value(metric, text, logits, tokens, g)
    if backward:
        m.backward()
    return m, g


def cmd_run(args):
    model = load_model(args.model, DT, generic=getattr(args, "generic", False))
    if getattr(args, "extra_hooks", False):
        if model["arch"] != "generic":
            raise ValueError("--extra-hooks (mlp.hook_in / mlp.hook_out) needs a model arch_reference runs (--generic)")
        model["extra"] = True
    if getattr(args, "rope_len", None):
        model["rope_len"] = args.rope_len
    with open(args.tokens) as f:
        batch = json.load(f)
    if not isinstance(batch, list) or not all(isinstance(s, list) and s for s in batch):
        raise ValueError(f"{args.tokens}: expected a list of non-empty lists of token ids")
    metric = parse_metric(args.metric)
    saes = load_saes(args.saes) if args.saes else []
    if metric["kind"] == "feature" and metric["hook"] not in {s["hook_name"] for s in saes}:
        raise ValueError(f"metric {args.metric}: no SAE in --saes reads {metric['hook']}")
    names = None if args.hooks == "all" else [h.strip() for h in args.hooks.split(",") if h.strip()]
    want_result = names is None or any(n.endswith("attn.hook_result") for n in names)
    out, total = {}, 0.0
    for b, seq in enumerate(batch):
        m, g = run_sequence(model, seq, metric, args.metric, saes, want_result=want_result)
        total += m.item()
        keys = list(g.nodes) if names is None else names + ["logits"]
        for name in keys:
            if name not in g.nodes:
                raise ValueError(f"unknown hook {name} for a {model['arch']} model" + (" with these SAEs" if saes else ""))
            n = g.nodes[name]
            out[f"{b}/{name}"] = n.detach().to(torch.float32).contiguous()
            grad = n.grad if n.grad is not None else torch.zeros_like(n)
            out[f"{b}/{name}.grad"] = grad.detach().to(torch.float32).contiguous()
        out[f"{b}/metric"] = torch.tensor([m.item()], dtype=torch.float32)
        if saes:
            out[f"{b}/sae_margin"] = torch.tensor([g.margin], dtype=torch.float32)
    out["metric"] = torch.tensor([total], dtype=torch.float32)
    st.save(args.out, out, {"format": "pt", "metric": args.metric, "compute": "f64"})
    print(json.dumps({"metric": total, "sequences": len(batch), "tensors": len(out)}))


# ----------------------------------------------------------------------------------------------
# Self-check

failures = []


def check(cond, msg):
    print(("ok   " if cond else "FAIL ") + msg)
    if not cond:
        failures.append(msg)


def make_model(tmp, arch, cfg, seed, dtype="f32"):
    import torch_reference as tr
    cpath = os.path.join(tmp, f"{arch}-{seed}.json")
    with open(cpath, "w") as f:
        json.dump(cfg, f)
    out = os.path.join(tmp, f"{arch}-{seed}")
    tr.cmd_make(argparse.Namespace(arch=arch, config=cpath, dtype=dtype, seed=seed, out=out, prefix=False,
                                   max_shard_mb=None))
    return out


def random_sae(rng, name, hook, arch, d_in, d_sae, d_out=None, head=None, hook_out=None, k=0, bdec=False):
    d_out = d_out or d_in
    t = {"W_enc": torch.randn(d_in, d_sae, generator=rng) / math.sqrt(d_in),
         "W_dec": torch.randn(d_sae, d_out, generator=rng) * 0.5 / math.sqrt(d_out),
         "b_dec": torch.randn(d_out, generator=rng) * 0.1}
    if arch == "gated":
        t.update(b_gate=torch.randn(d_sae, generator=rng) * 0.1, r_mag=torch.randn(d_sae, generator=rng) * 0.2,
                 b_mag=torch.randn(d_sae, generator=rng) * 0.1)
    else:
        t["b_enc"] = torch.randn(d_sae, generator=rng) * 0.1
    if arch.startswith("jumprelu"):
        t["threshold"] = 0.05 + 0.2 * torch.rand(d_sae, generator=rng)
    if arch == "skip_transcoder":
        t["W_skip"] = torch.randn(d_out, d_in, generator=rng) * 0.1 / math.sqrt(d_in)
    spec = {"name": name, "hook_name": hook, "architecture": arch, "apply_b_dec_to_input": bdec}
    if head is not None:
        spec["hook_head_index"] = head
    if hook_out:
        spec["hook_name_out"] = hook_out
    if k:
        spec["k"] = k
    return {**spec, "t": {n: v.to(torch.float32).to(DT) for n, v in t.items()}}


def fd_check(model, tokens, metric_text, saes, label, n_entries=3, skip=()):
    """Central differences at random entries of every hook vs autograd."""
    metric = parse_metric(metric_text)
    m, g = run_sequence(model, tokens, metric, metric_text, saes)
    rng = random.Random(hash((label, metric_text)) & 0xFFFF)
    eps = 1e-6
    worst, worst_at, n = 0.0, "", 0
    scale = max((n_.grad.abs().max().item() for n_ in g.nodes.values() if n_.grad is not None), default=1.0)
    for name, node in g.nodes.items():
        if name in skip:
            continue
        grad = node.grad if node.grad is not None else torch.zeros_like(node)
        flat = node.detach().reshape(-1)
        finite = [i for i in range(flat.numel()) if math.isfinite(flat[i].item())]
        if not finite:
            continue
        picks = rng.sample(finite, min(n_entries, len(finite)))
        # also one entry with the largest gradient
        gflat = grad.reshape(-1)
        picks.append(max(finite, key=lambda i: abs(gflat[i].item())))
        for i in picks:
            vals = []
            for s in (+1, -1):
                d = torch.zeros(flat.numel(), dtype=DT)
                d[i] = s * eps
                with torch.no_grad():
                    mv, _ = run_sequence(model, tokens, metric, metric_text, saes, deltas={name: d.reshape(node.shape)},
                                         backward=False)
                vals.append(mv.item())
            fd = (vals[0] - vals[1]) / (2 * eps)
            err = abs(fd - gflat[i].item()) / scale
            n += 1
            if err > worst:
                worst, worst_at = err, f"{name}[{i}] fd {fd:.6e} autograd {gflat[i].item():.6e}"
    check(worst < 1e-6, f"{label}, {metric_text}: {n} finite differences vs autograd, worst |diff|/max|grad| {worst:.1e} {worst_at}")
    return m, g


def close(a, b, tol=1e-12):
    a, b = a.detach(), b.detach()
    d = (a - b).norm().item()
    return d <= tol * max(1.0, b.norm().item()), d


def selfcheck(args):
    import torch_reference as tr
    torch.manual_seed(0)
    rng = torch.Generator().manual_seed(1234)
    tmp = tempfile.mkdtemp(prefix="grad_reference_selfcheck_")
    gpt2 = load_model(make_model(tmp, "gpt2", dict(d_model=12, n_layers=2, n_heads=3, d_mlp=20, vocab=23, n_ctx=16), 5), DT)
    llama = load_model(make_model(tmp, "llama", dict(d_model=16, n_layers=2, n_heads=4, n_kv_heads=2, d_mlp=24, vocab=29,
                                                     n_ctx=16, tied=False, rope_theta=500.0), 6), DT)
    toks = [3, 7, 1, 9, 4, 11, 2]

    # 1. forward values equal torch_reference's forward (float64, same angles)
    for label, model in (("gpt2", gpt2), ("llama", llama)):
        rec = tr.Recorder(None)
        with torch.no_grad():
            tr.forward(model, toks, rec)
        _, g = run_sequence(model, toks, parse_metric("logit:1"), "logit:1", f64_angles=True, backward=False)
        worst = 0.0
        for name, ref in rec.cache.items():
            ours = g.nodes[name].detach().float()
            fin = torch.isfinite(ref)
            same_inf = bool((torch.isfinite(ours) == fin).all() and (ours[~fin] == ref[~fin]).all())
            worst = max(worst, ((ours[fin] - ref[fin]).norm() / ref[fin].norm().clamp_min(1e-30)).item(), 0 if same_inf else math.inf)
        check(set(rec.cache) == set(g.nodes), f"{label}: same hook names as torch_reference ({len(rec.cache)})")
        check(worst < 1e-6, f"{label}: forward values match torch_reference (f32 rounding), worst relative {worst:.1e}")

    # 2. finite differences at every hook for each metric kind
    for label, model in (("gpt2", gpt2), ("llama", llama)):
        for mt in ("logit:5", "logit-diff:3,8@-3", "logprob:2@1", "prob:4@-2", "loss"):
            _, g = fd_check(model, toks, mt, [], label, n_entries=1)
        # masked score entries get exactly 0, pattern entries above the diagonal generally not
        _, g = run_sequence(model, toks, parse_metric("loss"), "loss")
        sg = g.nodes["blocks.0.attn.hook_attn_scores"].grad
        pg = g.nodes["blocks.0.attn.hook_pattern"].grad
        mask = torch.ones(len(toks), len(toks), dtype=torch.bool).triu(1)
        check(bool((sg[:, mask] == 0).all()), f"{label}: hook_attn_scores gradient is 0 at masked entries")
        check(bool((pg[:, mask] != 0).all()), f"{label}: hook_pattern gradient is nonzero above the diagonal")
        ge = g.nodes["hook_embed"].grad
        check(close(ge, g.nodes["blocks.0.hook_resid_pre"].grad)[0], f"{label}: d/d hook_embed = d/d resid_pre[0]")
        # metric at position p: nothing after p matters
        _, g = run_sequence(model, toks, parse_metric("logit:2@3"), "logit:2@3")
        check(bool((g.nodes["blocks.1.hook_resid_post"].grad[4:] == 0).all()), f"{label}: gradient is 0 after the metric's position")

    # 3. llama2.c interleaved layout (stories260K) if available
    if args.shared:
        binp = os.path.join(args.shared, "models", "stories260K", "stories260K.bin")
        if os.path.exists(binp):
            stories = load_model(binp, DT)
            fd_check(stories, [1, 40, 77, 300, 12, 5], "logprob:17@-2", [], "stories260K (interleaved)", n_entries=1)

    # 4. SAEs of every architecture, spliced with the error term
    C = gpt2["cfg"]["d_model"]
    HS = C // gpt2["cfg"]["n_heads"]
    saes = [random_sae(rng, "s0", "blocks.0.hook_resid_pre", "standard", C, 30, bdec=True),
            random_sae(rng, "s1", "blocks.0.attn.hook_z", "jumprelu", HS, 10, head=1),
            random_sae(rng, "s2", "blocks.0.hook_mlp_out", "topk", C, 25, k=4),
            random_sae(rng, "s3", "blocks.1.hook_resid_post", "gated", C, 28),
            random_sae(rng, "s4", "blocks.1.ln2.hook_normalized", "skip_transcoder", C, 26, hook_out="blocks.1.hook_mlp_out"),
            random_sae(rng, "s5", "blocks.0.hook_resid_post", "jumprelu", C, 20)]
    base, gb = run_sequence(gpt2, toks, parse_metric("logprob:6@-2"), "logprob:6@-2")
    sp, gs = fd_check(gpt2, toks, "logprob:6@-2", saes, "gpt2 + 6 SAEs", n_entries=2)
    check(abs(sp.item() - base.item()) < 1e-12, f"spliced metric equals the unspliced one ({sp.item():.15f} vs {base.item():.15f})")
    for name, n in gb.nodes.items():
        if name.endswith("hook_attn_scores"):
            continue
        ok, d = close(gs.nodes[name].grad, n.grad, 1e-11)
        if not ok:
            check(False, f"spliced model's gradient at {name} differs from the unspliced one by {d:.1e}")
            break
    else:
        check(True, "every model hook's gradient is unchanged by splicing with the error term")
    for s in saes:
        p = s["hook_name"] + "."
        gout = gs.nodes[p + "hook_sae_output"].grad
        ok1 = close(gs.nodes[p + "hook_sae_error"].grad, gout)[0]
        ok2 = close(gs.nodes[p + "hook_sae_recons"].grad, gout)[0]
        ok3 = close(gs.nodes[p + "hook_sae_acts_post"].grad, gout @ s["t"]["W_dec"].t())[0]
        x = gs.nodes[s.get("hook_name_out") or s["hook_name"]]
        xv = x[:, s["hook_head_index"], :] if s.get("hook_head_index") is not None else x.reshape(x.shape[0], -1)
        xg = x.grad[:, s["hook_head_index"], :] if s.get("hook_head_index") is not None else x.grad.reshape(x.shape[0], -1)
        ok4 = close(xg, gout)[0]
        ok5 = close(gs.nodes[p + "hook_sae_output"], xv, 1e-12)[0]
        check(ok1 and ok2 and ok3 and ok4 and ok5,
              f"{s['architecture']} at {s['hook_name']}: d/de = d/drecons = d/doutput = d/dx, d/df = W_dec g, output = x "
              f"({ok1}, {ok2}, {ok3}, {ok4}, {ok5})")
    # feature metrics: the gradient of a latent reaches upstream hooks through the encoder only
    for hook, pos in (("blocks.1.hook_resid_post", -1), ("blocks.0.attn.hook_z", 4), ("blocks.1.ln2.hook_normalized", 2),
                      ("blocks.0.hook_resid_pre", -2)):
        f = gs.nodes[hook + ".hook_sae_acts_post"][pos]
        fd_check(gpt2, toks, f"feature:{hook}:{int(f.argmax())}@{pos}", saes, "gpt2 + 6 SAEs", n_entries=2)
    Cl = llama["cfg"]["d_model"]
    lsaes = [random_sae(rng, "t0", "blocks.1.hook_resid_pre", "topk", Cl, 40, k=6),
             random_sae(rng, "t1", "blocks.0.attn.hook_z", "standard", Cl // 4, 12, head=3),
             random_sae(rng, "t2", "blocks.0.ln2.hook_normalized", "transcoder", Cl, 30, hook_out="blocks.0.hook_mlp_out"),
             random_sae(rng, "t3", "blocks.1.attn.hook_z", "gated", Cl, 20)]
    fd_check(llama, toks, "loss", lsaes, "llama + 4 SAEs", n_entries=2)
    _, gl = run_sequence(llama, toks, parse_metric("loss"), "loss", lsaes)
    for hook, pos in (("blocks.0.ln2.hook_normalized", -3), ("blocks.1.hook_resid_pre", 5), ("blocks.0.attn.hook_z", -1)):
        f = gl.nodes[hook + ".hook_sae_acts_post"][pos]
        fd_check(llama, toks, f"feature:{hook}:{int(f.argmax())}@{pos}", lsaes, "llama + 4 SAEs", n_entries=2)

    # 5. the CLI end to end: per-sequence metric sums, SAE file layout
    tok_path = os.path.join(tmp, "tokens.json")
    with open(tok_path, "w") as f:
        json.dump([toks, toks[:4]], f)
    sae_path = os.path.join(tmp, "saes.safetensors")
    st.save(sae_path, {f"{s['name']}/{k}": v.to(torch.float32) for s in saes for k, v in s["t"].items()},
            {"saes": json.dumps([{k: v for k, v in s.items() if k != "t"} for s in saes])})
    out_path = os.path.join(tmp, "out.safetensors")
    cmd_run(argparse.Namespace(model=os.path.join(tmp, "gpt2-5"), tokens=tok_path, metric="prob:3", out=out_path,
                               saes=sae_path, hooks="all"))
    o = st.load(out_path)
    m0, _ = run_sequence(gpt2, toks[:4], parse_metric("prob:3"), "prob:3", saes)
    check(abs(o["1/metric"].item() - m0.item()) < 1e-6 and abs(o["metric"].item() - o["0/metric"].item() - o["1/metric"].item()) < 1e-6,
          "CLI: per-sequence metrics and their sum")
    check(o["1/blocks.0.attn.hook_pattern.grad"].shape == (3, 4, 4) and
          o["0/blocks.0.attn.hook_z.hook_sae_acts_post.grad"].shape == (7, 10), "CLI: TL shapes without batch")
    check(o["0/sae_margin"].item() > 0, f"CLI: SAE decision margin written ({o['0/sae_margin'].item():.1e})")
    print(f"{len(failures)} failures")
    return 1 if failures else 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model")
    ap.add_argument("--tokens")
    ap.add_argument("--metric")
    ap.add_argument("--out")
    ap.add_argument("--saes")
    ap.add_argument("--hooks", default="all")
    ap.add_argument("--extra-hooks", action="store_true", help="also blocks.L.mlp.hook_in / mlp.hook_out (graph nodes)")
    ap.add_argument("--rope-len", type=int, default=None,
                    help="dynamic rope_scaling: the run's length L for every sequence (default: each sequence's own)")
    ap.add_argument("--generic", action="store_true", help="run gpt2/llama folders through arch_reference too")
    ap.add_argument("--make-config", default=None, help="first write --model from this config.json (torch_reference make --arch hf)")
    ap.add_argument("--make-dtype", choices=["f32", "bf16", "f16"], default="f32")
    ap.add_argument("--make-seed", type=int, default=0)
    ap.add_argument("--make-qk-gain", type=float, default=1.0)
    ap.add_argument("--selfcheck", action="store_true")
    ap.add_argument("--shared", default=None, help="selfcheck: the shared data folder (stories260K)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.selfcheck:
        sys.exit(selfcheck(args))
    for k in ("model", "tokens", "metric", "out"):
        if getattr(args, k) is None:
            ap.error(f"--{k} is required")
    if args.make_config:  # one Python start for make + gradients: write the HF folder --model first
        import torch_reference as tr
        tr.cmd_make(argparse.Namespace(arch="hf", config=args.make_config, dtype=args.make_dtype, seed=args.make_seed,
                                       out=args.model, prefix=False, max_shard_mb=None, qk_gain=args.make_qk_gain))
    cmd_run(args)


if __name__ == "__main__":
    main()
