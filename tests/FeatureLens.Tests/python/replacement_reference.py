#!/usr/bin/python3
"""FeatureLens replacement-model oracle: adjacency rows of an attribution graph by torch autograd.

Run it with /usr/bin/python3 (Debian python3-torch 1.13, CPU). It borrows checkpoint loading and the clean
forward pass from torch_reference.py (load_model, forward: the validated model oracle, here in float64) and
SAE loading from grad_reference.py (load_saes); the local replacement model itself is written here.

Usage
  replacement_reference.py --model PATH --tokens TOKENS.json --saes SAES.safetensors --out OUT.safetensors
                           [--features N] [--seed S] [--qk LAYER,HEAD,QPOS,KPOS]

TOKENS.json: one token-id list (the prompt). SAES: grad_reference.py's layout, one transcoder per layer
(transcoder | jumprelu_transcoder | skip_transcoder; hook_name blocks.L.ln2.hook_normalized, blocks.L.hook_mlp_in
or blocks.L.hook_resid_mid; hook_name_out blocks.L.hook_mlp_out).

The replacement model (CONNECTIONS.md, "Attribution graphs"), all float64:
  clean run: the model's own forward records every hook; attention patterns and every norm's scale
      (ln1/ln2/ln_final hook_scale) are taken from it and DETACHED (constants).
  transcoder of layer L on its clean input x: pre = (x - b_dec if apply_b_dec_to_input) @ W_enc + b_enc,
      f = relu(pre) (jumprelu: relu(pre) * [pre > threshold]); output = f @ W_dec + b_dec (+ x @ W_skip^T);
      error e = hook_mlp_out - output. Active latents (f != 0) are the feature nodes.
  leaves: F_L (T, d_sae) = f with requires_grad; E (L, T, C) the errors; Emb (T, C) = hook_embed (+ hook_pos_embed).
  frozen forward: resid = Emb; per layer: ln1 with the frozen scale (LayerNorm: (x - mean)/scale * w + b;
      RMSNorm: x/scale * w) -> v = . @ W_V (+ b_V) -> z = pattern @ v (kv heads repeated) -> attn = z @ W_O (+ b_O)
      -> resid_mid; transcoder input tin = frozen ln2 normalisation of resid_mid (no weight/bias) or resid_mid;
      pre_L = as above from tin (recorded: the feature nodes' inputs); mlp_out = F_L @ W_dec + b_dec (+ tin @ W_skip^T)
      + E_L; resid += mlp_out; frozen ln_final; logits = . @ W_U.
  nodes: features sorted by (layer, pos, latent), errors by (layer, pos), embeddings by pos; logit nodes: the most
      likely next tokens at the last position until their probability reaches 0.95, at most 10.
  target inputs: a feature's pre_L[pos, latent]; a logit node's logit[-1, v] - mean(logit[-1]).
  rows: A[t, s] = a_s * d input_t / d a_s for features (a_s = F value), grad_E[l,p] . E[l,p] for errors,
      grad_Emb[p] . Emb[p] for embeddings (inputs are linear in the leaves). bias_t = input_t evaluated with every leaf
      zero (what no node carries) -- independent of the rows; the script checks sum(row) + bias = input itself.
  --qk L,H,QP,KP: q (after RoPE, head H, pos QP) and k (kv head H // group, pos KP) of layer L in the frozen model,
      each of their d_head components attributed the same way: qk_q/qk_k (S, d_head), qk_qbias/qk_kbias (d_head),
      qk_score = the clean model's q.k/sqrt(d_head).

OUT (float32 unless noted): sources (S,4) int64 [kind 0 feature|1 error|2 embedding, layer, pos, index], activations (S),
targets (Nt,4) int64 [kind 0 feature|3 logit, layer, pos, index], rows (Nt,S), inputs (Nt), biases (Nt),
logits (T,V) of the model, frozen_logits (T,V) of the frozen replacement model at the clean node values,
logit_probs (n_logits), margin [1] (smallest relative distance of a transcoder decision to its boundary: pre vs 0,
pre vs threshold, relative to the row's largest |pre|).
"""

import argparse
import json
import math
import os
import random
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import safetensors_lite as st  # noqa: E402
from torch_reference import load_model, forward, Recorder, rope  # noqa: E402
from grad_reference import load_saes  # noqa: E402

DT = torch.float64


class Keep(Recorder):
    """Keeps every hook value in float64, detached."""

    def __call__(self, name, t):
        self.cache[name] = t.detach().to(DT).clone()


def layer_of(hook, what):
    parts = hook.split(".")
    if len(parts) < 3 or parts[0] != "blocks":
        raise ValueError(f"{what}: hook {hook!r} is not a block hook")
    return int(parts[1]), ".".join(parts[2:])


def frozen_norm(x, scale, layer_norm):
    xc = x - x.mean(dim=-1, keepdim=True) if layer_norm else x
    return xc / scale


def attn_weights(model, L):
    """(W_V (C, NKV*HS), b_V or None, W_O (NH*HS, C), b_O or None, W_Q (C, NH*HS), b_Q, W_K (C, NKV*HS), b_K)."""
    w, C = model["w"], model["cfg"]["d_model"]
    if model["arch"] == "gpt2":
        Wqkv, bqkv = w[f"{L}.W_qkv"], w[f"{L}.b_qkv"]
        return (Wqkv[:, 2 * C:], bqkv[2 * C:], w[f"{L}.W_o"], w[f"{L}.b_o"], Wqkv[:, :C], bqkv[:C], Wqkv[:, C:2 * C], bqkv[C:2 * C])
    return (w[f"{L}.wv"].t(), None, w[f"{L}.wo"].t(), None, w[f"{L}.wq"].t(), None, w[f"{L}.wk"].t(), None)


def ln1_params(model, L):
    w = model["w"]
    if model["arch"] == "gpt2":
        return w[f"{L}.ln1_w"], w[f"{L}.ln1_b"]
    return w[f"{L}.rms1"], None


def final_params(model):
    w = model["w"]
    if model["arch"] == "gpt2":
        return w["lnf_w"], w["lnf_b"], w["wte"].t()
    return w["norm"], None, w["lm_head"].t()


class Replacement:
    def __init__(self, model, saes, tokens):
        self.model, self.tokens = model, tokens
        cfg = model["cfg"]
        self.L, self.C, self.NH, self.NKV = cfg["n_layers"], cfg["d_model"], cfg["n_heads"], cfg["n_kv_heads"]
        self.HS = self.C // self.NH
        self.T = len(tokens)
        self.layer_norm = model["arch"] == "gpt2"
        rec = Keep()
        with torch.no_grad():
            self.logits = forward(model, tokens, rec).detach().to(DT)
        c = self.cache = rec.cache
        self.tc = [None] * self.L
        for s in saes:
            layer, rest = layer_of(s["hook_name"], s["name"])
            if rest not in ("ln2.hook_normalized", "hook_mlp_in", "hook_resid_mid"):
                raise ValueError(f"{s['name']}: reads {s['hook_name']}, not an MLP input")
            if s.get("hook_name_out") != f"blocks.{layer}.hook_mlp_out":
                raise ValueError(f"{s['name']}: must write blocks.{layer}.hook_mlp_out")
            if self.tc[layer] is not None:
                raise ValueError(f"two transcoders for layer {layer}")
            self.tc[layer] = s
        if any(s is None for s in self.tc):
            raise ValueError("a layer has no transcoder")
        self.emb = c["hook_embed"] + (c["hook_pos_embed"] if "hook_pos_embed" in c else 0)
        self.acts, self.errors, self.margin = [], [], math.inf
        for L, s in enumerate(self.tc):
            x = c[s["hook_name"]]
            pre = self.pre_acts(s, x)
            f = self.activate(s, pre)
            out = f @ s["t"]["W_dec"] + s["t"]["b_dec"]
            if s["architecture"] == "skip_transcoder":
                out = out + x @ s["t"]["W_skip"].t()
            self.acts.append(f)
            self.errors.append(c[f"blocks.{L}.hook_mlp_out"] - out)
        # nodes
        self.sources = []
        for L in range(self.L):
            nz = (self.acts[L] != 0).nonzero().tolist()
            for p, j in sorted(nz):
                self.sources.append((0, L, p, j))
        self.n_features = len(self.sources)
        self.sources += [(1, L, p, -1) for L in range(self.L) for p in range(self.T)]
        self.sources += [(2, -1, p, tokens[p]) for p in range(self.T)]
        last = self.logits[-1]
        probs = torch.softmax(last, dim=-1)
        order = sorted(range(last.numel()), key=lambda v: (-probs[v].item(), v))
        self.logit_nodes, self.logit_probs, cum = [], [], 0.0
        for v in order:
            if cum >= 0.95 or len(self.logit_nodes) >= 10:
                break
            self.logit_nodes.append(v)
            self.logit_probs.append(probs[v].item())
            cum += probs[v].item()

    def pre_acts(self, s, x):
        t = s["t"]
        xin = x - t["b_dec"] if s.get("apply_b_dec_to_input", False) else x
        return xin @ t["W_enc"] + t["b_enc"]

    def activate(self, s, pre):
        pd = pre.detach()
        scale = pd.abs().max(dim=-1, keepdim=True).values.clamp_min(1e-30)
        self.margin = min(self.margin, (pd.abs() / scale).min().item())
        if s["architecture"] == "jumprelu_transcoder":
            th = s["t"]["threshold"]
            self.margin = min(self.margin, ((pd - th).abs() / scale).min().item())
            return torch.relu(pre) * (pre > th).to(DT)
        return torch.relu(pre)

    def leaves(self, zero=False):
        F = [(torch.zeros_like(a) if zero else a.clone()).requires_grad_(True) for a in self.acts]
        E = [(torch.zeros_like(e) if zero else e.clone()).requires_grad_(True) for e in self.errors]
        Emb = (torch.zeros_like(self.emb) if zero else self.emb.clone()).requires_grad_(True)
        return F, E, Emb

    def run(self, F, E, Emb, qk=None):
        """Frozen forward; returns (pre per layer, logits, (q, k) for qk=(layer, head, qpos, kpos) or None)."""
        m, c, T, NH, NKV, HS = self.model, self.cache, self.T, self.NH, self.NKV, self.HS
        x = Emb
        pres, qkv = [], None
        for L in range(self.L):
            b = f"blocks.{L}."
            Wv, bv, Wo, bo, Wq, bq, Wk, bk = attn_weights(m, L)
            w1, b1 = ln1_params(m, L)
            h = frozen_norm(x, c[b + "ln1.hook_scale"], self.layer_norm) * w1 + (b1 if b1 is not None else 0)
            if qk is not None and qk[0] == L:
                _, head, qp, kp = qk
                q = (h @ Wq + (bq if bq is not None else 0)).reshape(T, NH, HS)
                k = (h @ Wk + (bk if bk is not None else 0)).reshape(T, NKV, HS)
                if m["arch"] == "llama":
                    q = rope(q, m["cfg"]["rope_theta"], m["cfg"]["rope_layout"])
                    k = rope(k, m["cfg"]["rope_theta"], m["cfg"]["rope_layout"])
                qkv = (q[qp, head], k[kp, head // (NH // NKV)])
            v = (h @ Wv + (bv if bv is not None else 0)).reshape(T, NKV, HS).repeat_interleave(NH // NKV, dim=1)
            pattern = c[b + "attn.hook_pattern"]  # (NH, T, T), a constant
            z = torch.matmul(pattern, v.transpose(0, 1)).transpose(0, 1).reshape(T, NH * HS)
            x = x + z @ Wo + (bo if bo is not None else 0)
            s = self.tc[L]
            _, rest = layer_of(s["hook_name"], s["name"])
            tin = frozen_norm(x, c[b + "ln2.hook_scale"], self.layer_norm) if rest == "ln2.hook_normalized" else x
            pres.append(self.pre_acts(s, tin))
            out = F[L] @ s["t"]["W_dec"] + s["t"]["b_dec"] + E[L]
            if s["architecture"] == "skip_transcoder":
                out = out + tin @ s["t"]["W_skip"].t()
            x = x + out
        wf, bf, WU = final_params(m)
        h = frozen_norm(x, c["ln_final.hook_scale"], self.layer_norm) * wf + (bf if bf is not None else 0)
        return pres, h @ WU, qkv

    def row(self, y, F, E, Emb):
        gF = torch.autograd.grad(y, F + E + [Emb], retain_graph=True, allow_unused=True)
        gF = [g if g is not None else torch.zeros_like(t) for g, t in zip(gF, F + E + [Emb])]
        out = []
        for kind, L, p, j in self.sources:
            if kind == 0:
                out.append((F[L][p, j] * gF[L][p, j]).item())
            elif kind == 1:
                out.append((E[L][p] * gF[self.L + L][p]).sum().item())
            else:
                out.append((Emb[p] * gF[-1][p]).sum().item())
        return out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--tokens", required=True)
    ap.add_argument("--saes", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--features", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--qk")
    a = ap.parse_args(argv)
    torch.set_grad_enabled(True)
    model = load_model(a.model, DT)
    with open(a.tokens) as f:
        tokens = json.load(f)
    r = Replacement(model, load_saes(a.saes), tokens)
    F, E, Emb = r.leaves()
    pres, logits, _ = r.run(F, E, Emb)
    F0, E0, Emb0 = r.leaves(zero=True)
    pres0, logits0, _ = r.run(F0, E0, Emb0)

    feats = list(range(r.n_features))
    random.Random(a.seed).shuffle(feats)
    targets = [r.sources[i] for i in sorted(feats[:a.features])] + [(3, r.L, r.T - 1, v) for v in r.logit_nodes]
    rows, inputs, biases = [], [], []
    for kind, L, p, j in targets:
        if kind == 0:
            y, y0 = pres[L][p, j], pres0[L][p, j].item()
        else:
            y = logits[-1, j] - logits[-1].mean()
            y0 = (logits0[-1, j] - logits0[-1].mean()).item()
        row = r.row(y, F, E, Emb)
        gap = abs(sum(row) + y0 - y.item())
        if gap > 1e-9 * max(1.0, max(abs(x) for x in row)):
            raise AssertionError(f"oracle completeness fails for target {(kind, L, p, j)}: gap {gap}")
        rows.append(row)
        inputs.append(y.item())
        biases.append(y0)
    out = {
        "sources": torch.tensor(r.sources, dtype=torch.int64),
        "activations": torch.tensor([(F[L][p, j].item() if k == 0 else (E[L][p].norm().item() if k == 1 else Emb[p].norm().item()))
                                     for k, L, p, j in r.sources], dtype=torch.float32),
        "targets": torch.tensor(targets, dtype=torch.int64),
        "rows": torch.tensor(rows, dtype=torch.float32).reshape(len(targets), len(r.sources)),
        "inputs": torch.tensor(inputs, dtype=torch.float32),
        "biases": torch.tensor(biases, dtype=torch.float32),
        "logits": r.logits.to(torch.float32),
        "frozen_logits": logits.detach().to(torch.float32),
        "logit_probs": torch.tensor(r.logit_probs, dtype=torch.float32),
        "margin": torch.tensor([r.margin], dtype=torch.float32),
    }
    if a.qk:
        L, head, qp, kp = (int(x) for x in a.qk.split(","))
        _, _, (q, k) = r.run(F, E, Emb, qk=(L, head, qp, kp))
        _, _, (q0, k0) = r.run(F0, E0, Emb0, qk=(L, head, qp, kp))
        for name, vec, vec0 in (("q", q, q0), ("k", k, k0)):
            contrib = torch.tensor([r.row(vec[d], F, E, Emb) for d in range(r.HS)], dtype=DT)  # (HS, S)
            gap = (contrib.sum(dim=1) + vec0.detach() - vec.detach()).abs().max().item()
            if gap > 1e-9 * max(1.0, contrib.abs().max().item()):
                raise AssertionError(f"oracle {name} completeness gap {gap}")
            out[f"qk_{name}"] = contrib.t().contiguous().to(torch.float32)
            out[f"qk_{name}bias"] = vec0.detach().to(torch.float32)
        b = f"blocks.{L}.attn."
        rq = r.cache[b + ("hook_rot_q" if model["arch"] == "llama" else "hook_q")][qp, head]
        rk = r.cache[b + ("hook_rot_k" if model["arch"] == "llama" else "hook_k")][kp, head // (r.NH // r.NKV)]
        out["qk_score"] = torch.tensor([(rq @ rk).item() / math.sqrt(r.HS)], dtype=torch.float32)
        out["qk_score_hook"] = r.cache[b + "hook_attn_scores"][head, qp, kp].reshape(1).to(torch.float32)
    st.save(a.out, out)


if __name__ == "__main__":
    main()
