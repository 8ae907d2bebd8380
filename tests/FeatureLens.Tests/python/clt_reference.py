#!/usr/bin/python3
"""FeatureLens cross-layer-transcoder oracle: a circuit-tracer CLT folder read and run independently in float64 torch.

Run it with /usr/bin/python3 (Debian python3-torch 1.13, CPU).

The CLT folder (circuit-tracer's load_clt layout), read here directly with safetensors_lite:
  config.yaml: model_kind: cross_layer_transcoder, feature_input_hook, feature_output_hook (flat "key: value" lines)
  W_enc_{i}.safetensors: W_enc_{i} (d_tc, d_model), b_enc_{i} (d_tc), b_dec_{i} (d_model), optional threshold_{i} (d_tc)
  W_dec_{i}.safetensors: W_dec_{i} (d_tc, n_layers - i, d_model)
CLT semantics (as circuit-tracer's CrossLayerTranscoder): pre_i = x_i @ W_enc_i^T + b_enc_i;
  f_i = pre_i * [pre_i > threshold_i] (JumpReLU) or relu(pre_i); recon_j = sum_{i <= j} f_i @ W_dec_i[:, j - i, :] + b_dec_j.

Modes
  --recon IN.safetensors --clt DIR --out OUT.safetensors
      IN: x (L, n, d_model), layer i's encoder input. OUT: acts (L, n, d_tc), recon (L, n, d_model), margin [1].
  --model PATH --tokens TOKENS.json --clt DIR --out OUT.safetensors [--features N] [--seed S]
      The local replacement model of the prompt with the CLT (CONNECTIONS.md, "Attribution graphs"), written here:
      clean forward with torch_reference.forward (float64); attention patterns and norm scales detached;
      layer i's CLT input = blocks.i.hook_resid_mid (feature_input_hook hook_resid_mid or hook_mlp_in) or its frozen ln2
      normalisation (ln2.hook_normalized); error_j = hook_mlp_out_j - recon_j. Leaves: features F_i (T, d_tc), errors
      E_j (T, C), embeddings. Frozen forward: mlp_out_j = sum_{i <= j} F_i @ W_dec_i[:, j - i] + b_dec_j + E_j.
      Rows A[t, s] = a_s * d input_t / d a_s by autograd (a feature's value sums over every layer it writes),
      grad . value for error and embedding nodes; bias_t = input_t with every leaf zero.
      OUT as replacement_reference.py: sources, activations, targets, rows, inputs, biases, logits, frozen_logits, margin.
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
from torch_reference import load_model, forward  # noqa: E402
from replacement_reference import Keep, frozen_norm, attn_weights, ln1_params, final_params  # noqa: E402

DT = torch.float64


def read_clt(folder):
    cfg = {}
    with open(os.path.join(folder, "config.yaml")) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if ":" in line:
                k, v = line.split(":", 1)
                cfg[k.strip()] = v.strip().strip('"').strip("'")
    if cfg.get("model_kind") != "cross_layer_transcoder":
        raise ValueError(f"{folder}: not a cross-layer transcoder")
    n = 0
    while os.path.exists(os.path.join(folder, f"W_enc_{n}.safetensors")):
        n += 1
    layers = []
    for i in range(n):
        e = st.load(os.path.join(folder, f"W_enc_{i}.safetensors"))
        d = st.load(os.path.join(folder, f"W_dec_{i}.safetensors"))
        W_dec = d[f"W_dec_{i}"].to(DT)
        if W_dec.shape[1] != n - i:
            raise ValueError(f"W_dec_{i} has {W_dec.shape[1]} output layers, expected {n - i}")
        layers.append({
            "W_enc": e[f"W_enc_{i}"].to(DT), "b_enc": e[f"b_enc_{i}"].to(DT), "b_dec": e[f"b_dec_{i}"].to(DT),
            "threshold": e[f"threshold_{i}"].to(DT) if f"threshold_{i}" in e else None, "W_dec": W_dec,
        })
    return cfg, layers


class Clt:
    def __init__(self, folder):
        self.cfg, self.layers = read_clt(folder)
        self.n = len(self.layers)
        self.margin = math.inf

    def pre(self, i, x):
        lay = self.layers[i]
        return x @ lay["W_enc"].t() + lay["b_enc"]

    def act(self, i, pre):
        pd = pre.detach()
        scale = pd.abs().max(dim=-1, keepdim=True).values.clamp_min(1e-30)
        self.margin = min(self.margin, (pd.abs() / scale).min().item())
        th = self.layers[i]["threshold"]
        if th is None:
            return torch.relu(pre)
        self.margin = min(self.margin, ((pd - th).abs() / scale).min().item())
        return pre * (pre > th).to(DT)

    def write(self, j, F):
        """recon_j from the features of every layer i <= j."""
        out = self.layers[j]["b_dec"].clone()
        for i in range(j + 1):
            out = out + F[i] @ self.layers[i]["W_dec"][:, j - i, :]
        return out


def recon_mode(a):
    clt = Clt(a.clt)
    x = st.load(a.recon)["x"].to(DT)
    acts = [clt.act(i, clt.pre(i, x[i])) for i in range(clt.n)]
    recon = torch.stack([clt.write(j, acts) for j in range(clt.n)])
    st.save(a.out, {"acts": torch.stack(acts).to(torch.float32), "recon": recon.to(torch.float32),
                    "margin": torch.tensor([clt.margin], dtype=torch.float32)})


class Replacement:
    def __init__(self, model, clt, tokens):
        self.model, self.clt, self.tokens = model, clt, tokens
        cfg = model["cfg"]
        self.L, self.C, self.NH, self.NKV = cfg["n_layers"], cfg["d_model"], cfg["n_heads"], cfg["n_kv_heads"]
        self.HS, self.T = self.C // self.NH, len(tokens)
        if clt.n != self.L:
            raise ValueError(f"the CLT has {clt.n} layers, the model {self.L}")
        self.layer_norm = model["arch"] == "gpt2"
        self.inp = clt.cfg["feature_input_hook"]
        if self.inp not in ("hook_resid_mid", "hook_mlp_in", "ln2.hook_normalized"):
            raise ValueError(f"unsupported feature_input_hook {self.inp}")
        rec = Keep()
        with torch.no_grad():
            self.logits = forward(model, tokens, rec).detach().to(DT)
        c = self.cache = rec.cache
        self.emb = c["hook_embed"] + (c["hook_pos_embed"] if "hook_pos_embed" in c else 0)
        self.acts = [clt.act(i, clt.pre(i, self.clt_input(i, c[f"blocks.{i}.hook_resid_mid"]))) for i in range(self.L)]
        self.errors = [c[f"blocks.{j}.hook_mlp_out"] - clt.write(j, self.acts) for j in range(self.L)]
        self.sources = []
        for i in range(self.L):
            for p, j in sorted((self.acts[i] != 0).nonzero().tolist()):
                self.sources.append((0, i, p, j))
        self.n_features = len(self.sources)
        self.sources += [(1, j, p, -1) for j in range(self.L) for p in range(self.T)]
        self.sources += [(2, -1, p, tokens[p]) for p in range(self.T)]
        last = self.logits[-1]
        probs = torch.softmax(last, dim=-1)
        order = sorted(range(last.numel()), key=lambda v: (-probs[v].item(), v))
        self.logit_nodes, cum = [], 0.0
        for v in order:
            if cum >= 0.95 or len(self.logit_nodes) >= 10:
                break
            self.logit_nodes.append(v)
            cum += probs[v].item()

    def clt_input(self, i, resid_mid):
        if self.inp == "ln2.hook_normalized":
            return frozen_norm(resid_mid, self.cache[f"blocks.{i}.ln2.hook_scale"], self.layer_norm)
        return resid_mid

    def leaves(self, zero=False):
        F = [(torch.zeros_like(a) if zero else a.clone()).requires_grad_(True) for a in self.acts]
        E = [(torch.zeros_like(e) if zero else e.clone()).requires_grad_(True) for e in self.errors]
        Emb = (torch.zeros_like(self.emb) if zero else self.emb.clone()).requires_grad_(True)
        return F, E, Emb

    def run(self, F, E, Emb):
        m, c, T, NH, NKV, HS = self.model, self.cache, self.T, self.NH, self.NKV, self.HS
        x, pres = Emb, []
        for L in range(self.L):
            b = f"blocks.{L}."
            Wv, bv, Wo, bo, _, _, _, _ = attn_weights(m, L)
            w1, b1 = ln1_params(m, L)
            h = frozen_norm(x, c[b + "ln1.hook_scale"], self.layer_norm) * w1 + (b1 if b1 is not None else 0)
            v = (h @ Wv + (bv if bv is not None else 0)).reshape(T, NKV, HS).repeat_interleave(NH // NKV, dim=1)
            z = torch.matmul(c[b + "attn.hook_pattern"], v.transpose(0, 1)).transpose(0, 1).reshape(T, NH * HS)
            x = x + z @ Wo + (bo if bo is not None else 0)
            pres.append(self.clt.pre(L, self.clt_input(L, x)))
            x = x + self.clt.write(L, F) + E[L]
        wf, bf, WU = final_params(m)
        h = frozen_norm(x, c["ln_final.hook_scale"], self.layer_norm) * wf + (bf if bf is not None else 0)
        return pres, h @ WU

    def row(self, y, F, E, Emb):
        leaves = F + E + [Emb]
        g = torch.autograd.grad(y, leaves, retain_graph=True, allow_unused=True)
        g = [gi if gi is not None else torch.zeros_like(t) for gi, t in zip(g, leaves)]
        out = []
        for kind, L, p, j in self.sources:
            if kind == 0:
                out.append((F[L][p, j] * g[L][p, j]).item())
            elif kind == 1:
                out.append((E[L][p] * g[self.L + L][p]).sum().item())
            else:
                out.append((Emb[p] * g[-1][p]).sum().item())
        return out


def graph_mode(a):
    model = load_model(a.model, DT)
    with open(a.tokens) as f:
        tokens = json.load(f)
    r = Replacement(model, Clt(a.clt), tokens)
    F, E, Emb = r.leaves()
    pres, logits = r.run(F, E, Emb)
    pres0, logits0 = r.run(*r.leaves(zero=True))
    feats = list(range(r.n_features))
    random.Random(a.seed).shuffle(feats)
    targets = [r.sources[i] for i in sorted(feats[:a.features])] + [(3, r.L, r.T - 1, v) for v in r.logit_nodes]
    rows, inputs, biases = [], [], []
    for kind, L, p, j in targets:
        if kind == 0:
            y, y0 = pres[L][p, j], pres0[L][p, j].item()
        else:
            y, y0 = logits[-1, j] - logits[-1].mean(), (logits0[-1, j] - logits0[-1].mean()).item()
        row = r.row(y, F, E, Emb)
        gap = abs(sum(row) + y0 - y.item())
        if gap > 1e-9 * max(1.0, max(abs(x) for x in row)):
            raise AssertionError(f"oracle completeness fails for target {(kind, L, p, j)}: gap {gap}")
        rows.append(row)
        inputs.append(y.item())
        biases.append(y0)
    st.save(a.out, {
        "sources": torch.tensor(r.sources, dtype=torch.int64),
        "activations": torch.tensor([(F[L][p, j].item() if k == 0 else (E[L][p].norm().item() if k == 1 else Emb[p].norm().item()))
                                     for k, L, p, j in r.sources], dtype=torch.float32),
        "targets": torch.tensor(targets, dtype=torch.int64),
        "rows": torch.tensor(rows, dtype=torch.float32).reshape(len(targets), len(r.sources)),
        "inputs": torch.tensor(inputs, dtype=torch.float32),
        "biases": torch.tensor(biases, dtype=torch.float32),
        "logits": r.logits.to(torch.float32),
        "frozen_logits": logits.detach().to(torch.float32),
        "margin": torch.tensor([r.clt.margin], dtype=torch.float32),
    })


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--clt", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--recon")
    ap.add_argument("--model")
    ap.add_argument("--tokens")
    ap.add_argument("--features", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    torch.set_grad_enabled(True)
    if a.recon:
        recon_mode(a)
    else:
        graph_mode(a)


if __name__ == "__main__":
    main()
