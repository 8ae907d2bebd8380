#!/usr/bin/python3
"""Independent PyTorch reference for FeatureLens steering (tests/FeatureLens.Tests/Steering).

Usage: steering_reference.py JOBS.json OUT.json

JOBS.json is a list of jobs:
  {"model": PATH (HF folder or llama2.c .bin), "prompt": [ids], "path": [ids] (the continuation to follow),
   "positions": "all"|"prompt"|"new",
   "additions": [{"hook", "vector": [d floats], "coef"}]        x[t] += coef * vector at steered positions t
   "clamps": [{"hook", "latent", "value", "d_in", "d_sae", "W_enc": flat (d_in*d_sae, row-major [d_in, d_sae]),
               "b_enc", "W_dec": flat [d_sae, d_in], "b_dec"}]}  a ReLU SAE spliced with its error term, latent set to value
For every step s = 0 .. len(path) (the full sequence prompt + path[:s] recomputed from scratch, no KV cache) it writes
the last row's logits of the steered model and of the unsteered model, the steered argmax and the gap between its two
largest logits, and the KL(unsteered || steered) of the next-token distributions (float64 from the float32 logits).
The forward pass is torch_reference.py's (the model oracle); the steering edits are applied in place at the hook
values, so everything downstream sees them.
"""
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_reference as ref  # noqa: E402


def covered(where, pos, prompt_len):
    if where == "prompt":
        return pos < prompt_len
    if where == "new":
        return pos >= prompt_len
    return True


class Steer:
    """A hook recorder that edits hook values in place (x is (T, d))."""

    def __init__(self, job, prompt_len):
        self.where = job["positions"]
        self.prompt_len = prompt_len
        self.add = {}
        for a in job.get("additions", []):
            v = torch.tensor(a["vector"], dtype=torch.float32)
            self.add.setdefault(a["hook"], []).append((v, float(a["coef"])))
        self.clamp = {}
        for c in job.get("clamps", []):
            d_in, d_sae = c["d_in"], c["d_sae"]
            sae = {
                "W_enc": torch.tensor(c["W_enc"], dtype=torch.float32).reshape(d_in, d_sae),
                "b_enc": torch.tensor(c["b_enc"], dtype=torch.float32),
                "W_dec": torch.tensor(c["W_dec"], dtype=torch.float32).reshape(d_sae, d_in),
                "b_dec": torch.tensor(c["b_dec"], dtype=torch.float32),
                "latent": int(c["latent"]), "value": float(c["value"]),
            }
            self.clamp.setdefault(c["hook"], []).append(sae)

    def wants(self, name):
        return False

    def __call__(self, name, x):
        T = x.shape[0]
        rows = [t for t in range(T) if covered(self.where, t, self.prompt_len)]
        for v, coef in self.add.get(name, []):
            for t in rows:
                x[t] += coef * v
        for s in self.clamp.get(name, []):
            f = torch.relu(x @ s["W_enc"] + s["b_enc"])          # (T, d_sae)
            recons = f @ s["W_dec"] + s["b_dec"]
            error = x - recons
            g = f.clone()
            g[rows, s["latent"]] = s["value"]
            out = g @ s["W_dec"] + s["b_dec"] + error
            x[rows] = out[rows]


def kl(p_logits, q_logits):
    lp = torch.log_softmax(p_logits.double(), -1)
    lq = torch.log_softmax(q_logits.double(), -1)
    return float((lp.exp() * (lp - lq)).sum())


def run_job(job, cache):
    if job["model"] not in cache:
        cache[job["model"]] = ref.load_model(job["model"], torch.float32)
    model = cache[job["model"]]
    prompt, path = list(job["prompt"]), list(job["path"])
    steps = []
    with torch.no_grad():
        for s in range(len(path) + 1):
            seq = prompt + path[:s]
            steered = ref.forward(model, seq, Steer(job, len(prompt)))[-1]
            plain = ref.forward(model, seq, ref.NoRecord())[-1]
            top2 = torch.topk(steered, 2).values
            steps.append({"logits": steered.tolist(), "plain": plain.tolist(), "argmax": int(torch.argmax(steered)),
                          "gap": float(top2[0] - top2[1]), "kl": kl(plain, steered)})
    return {"steps": steps}


def main():
    with open(sys.argv[1]) as f:
        jobs = json.load(f)
    cache = {}
    out = [run_job(j, cache) for j in jobs]
    with open(sys.argv[2], "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
