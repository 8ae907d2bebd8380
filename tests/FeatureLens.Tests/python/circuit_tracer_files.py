"""Writes a circuit-tracer per-layer transcoder set and its outputs, from circuit-tracer's documented formulas.

Usage: circuit_tracer_files.py DIR SEED N_LAYERS D_MODEL D_TC ACTIVATION SKIP LISTED
  ACTIVATION: relu | jump_relu | topk;  SKIP: 0/1 (W_skip in every file);  LISTED: 0/1 (config.yaml lists the files
  under `transcoders:` with other names, else layer_N.safetensors).

Per layer file (as SingleLayerTranscoder.to_safetensors writes it): W_enc [d_tc, d_model], W_dec [d_tc, d_model],
b_enc [d_tc], b_dec [d_model], `activation_function.threshold` [d_tc] (jump_relu), `k` (int64 scalar, topk),
W_skip [d_model, d_model]. Weights are written in float32 (layer 0 in bfloat16 when SEED is odd, to exercise conversion;
the outputs are then computed from the bfloat16 values).
DIR/expected.safetensors gets, per layer L: "L/x" [n, d_model] random inputs, "L/acts" [n, d_tc] = the activation of
pre = F.linear(x, W_enc, b_enc) (relu; pre * (pre > threshold); topk: pre kept at the k largest, as circuit-tracer),
"L/out" [n, d_model] = acts @ W_dec + b_dec (+ x @ W_skip.T).
"""
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_lite as st  # noqa: E402


def main():
    d, seed, n_layers, d_model, d_tc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    act, skip, listed = sys.argv[6], sys.argv[7] == "1", sys.argv[8] == "1"
    g = torch.Generator().manual_seed(seed)
    k = 1 + seed % 7
    expected = {}
    names = []
    for layer in range(n_layers):
        w_enc = torch.randn(d_tc, d_model, generator=g) / d_model ** 0.5
        b_enc = torch.randn(d_tc, generator=g) * 0.1 + (2.5 if act == "topk" else 0.0)
        w_dec = torch.randn(d_tc, d_model, generator=g) * 0.2
        b_dec = torch.randn(d_model, generator=g) * 0.1
        tensors = {"W_enc": w_enc, "W_dec": w_dec, "b_enc": b_enc, "b_dec": b_dec}
        if act == "jump_relu":
            tensors["activation_function.threshold"] = torch.rand(d_tc, generator=g) * 0.3
        if skip:
            tensors["W_skip"] = torch.randn(d_model, d_model, generator=g) * 0.1
        if layer == 0 and seed % 2 == 1:
            tensors = {nm: t.to(torch.bfloat16) for nm, t in tensors.items()}
        if act == "topk":
            tensors["k"] = torch.tensor(k)
        name = f"tc_{layer}.safetensors" if listed else f"layer_{layer}.safetensors"
        names.append(name)
        st.save(os.path.join(d, name), tensors)

        t = {nm: v.float() for nm, v in tensors.items() if nm != "k"}
        x = torch.randn(7, d_model, generator=g)
        pre = F.linear(x, t["W_enc"], t["b_enc"])
        if act == "topk":
            # no near-tie at the k-th largest (float32 rounding of another GEMM must not change which latents are kept), and
            # k positive pre-activations: circuit-tracer keeps a negative one among the top k, FeatureLens's TopK does not
            # (the documented difference), so the file's values stay where both agree
            rows = []
            for _ in range(7):
                for _ in range(10000):
                    xi = torch.randn(1, d_model, generator=g)
                    top = torch.topk(F.linear(xi, t["W_enc"], t["b_enc"]), k=min(k + 1, d_tc), dim=-1).values[0]
                    if top[k - 1] > 1e-3 and (k >= d_tc or top[k - 1] - top[k] > 1e-3):
                        rows.append(xi)
                        break
                else:
                    raise SystemExit(f"seed {seed}: no input without a near-tie or a negative top-{k} pre-activation")
            x = torch.cat(rows)
            pre = F.linear(x, t["W_enc"], t["b_enc"])
        if act == "relu":
            acts = F.relu(pre)
        elif act == "jump_relu":
            acts = pre * (pre > t["activation_function.threshold"])
        else:
            _, idx = torch.topk(pre, k=k, dim=-1)
            gate = torch.zeros_like(pre).scatter_(-1, idx, 1)
            acts = pre * gate
        out = acts @ t["W_dec"] + t["b_dec"]
        if skip:
            out = out + x @ t["W_skip"].T
        expected[f"{layer}/x"] = x
        expected[f"{layer}/acts"] = acts
        expected[f"{layer}/out"] = out
    with open(os.path.join(d, "config.yaml"), "w") as f:
        f.write("# written by circuit_tracer_files.py\n")
        f.write("model_name: stories260K\nmodel_kind: transcoder_set\n")
        f.write("feature_input_hook: ln2.hook_normalized\nfeature_output_hook: mlp.hook_out   # = hook_mlp_out\n")
        if act == "topk":
            f.write(f"activation: topk\nk: {k}\n")
        if listed:
            f.write("transcoders:\n" + "".join(f"  - \"{nm}\"\n" for nm in names))
    st.save(os.path.join(d, "expected.safetensors"), expected)


if __name__ == "__main__":
    main()
