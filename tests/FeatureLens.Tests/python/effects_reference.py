#!/usr/bin/python3
"""FeatureLens effects oracle: node effects (CONNECTIONS.md "Effects") computed with torch, float64.

Run it with /usr/bin/python3 (Debian python3-torch 1.13, CPU). The model and SAE forward pass is
grad_reference.py's (imported: its Graph records every hook as an autograd node, splices every SAE
with its error term, and takes `edits` that replace a hook's value before it flows on); this file
only adds what an effect is:

  exact     effect(n) = m(clean run with node n alone set to its corrupt value) - m(clean): a
            forward pass per node and prompt, the node's slice of its hook replaced.
  gradient  effect(n) = (a' - a) . dm/da at the clean run (summed over the node's slice).
  ig        for each hook group separately -- an SAE's hook_sae_acts_post AND hook_sae_error
            together, or one component hook -- every value of the group set to a + alpha (a' - a),
            alpha = k/N, k = 0..N-1 (the rest of the model computed normally), a fresh autograd leaf
            each; effect(n) = (a' - a) . mean_k dm/da over the node's slice.
  a'        the corrupt prompt's value of the same hook (an SAE-spliced run of the corrupt prompt),
            or 0 with "ablation": "zero".
  Several prompts: each runs alone with its own metric; effects are summed over prompts (a node
  whose position is outside a prompt contributes nothing for it).

Nodes (JSON objects): {"kind": "feature"|"error"|"resid"|"attn"|"mlp", "hook": H, "pos": P,
"index": I}. feature: latent I of the SAE at H at position P (value hook H.hook_sae_acts_post);
error: H.hook_sae_error row P; resid/mlp: row P of hook H (hook_resid_pre/mid/post, hook_mlp_out);
attn: head I of H (an attn.hook_z) at position P, or at every position when P = -1.

Usage
  effects_reference.py --job JOB.json --out OUT.json
  effects_reference.py --model M --clean CLEAN.json [--corrupt CORRUPT.json | --ablation zero]
                       --metric METRIC --nodes NODES.json --method exact|gradient|ig [--steps N]
                       [--saes SAES.safetensors] --out OUT.json
  effects_reference.py --jobs JOBS.json --out OUT.json     (JOBS.json: a list of jobs; OUT.json: a list of answers)
  effects_reference.py --make-models SPECS.json   (random model folders with torch_reference.py's make, one
                       Python start for several: a list of {"arch", "config": {...}, "dtype", "seed", "out"})
  effects_reference.py --selfcheck

JOB.json: {"model": M, "saes": SAES or null, "clean": [[ids]...], "corrupt": [[ids]...] or null,
"ablation": "corrupt"|"zero", "metric": METRIC or [METRIC per prompt],
"tasks": [{"method": "exact"|"gradient"|"ig", "steps": N, "nodes": [node...]}...]}
(SAES: grad_reference.py's layout; CLEAN/CORRUPT.json: lists of token-id lists.)

OUT.json: {"clean_metric": [per prompt], "corrupt_metric": [per prompt] or null,
"sae_margin": smallest SAE decision margin (grad_reference's definition) over the clean and
corrupt runs, "metric_margin": for a feature metric, the smallest relative distance of the metric
latent's decision (|pre| and, for jumprelu, |pre - threshold|; gated: |gate|; over |pre| resp.
|gate| max of the row) to its boundary over EVERY run made, else null, "runs": forward passes,
"tasks": [{"method", "steps", "effects": [one float per node]}]}. The effects are float64 values;
a caller comparing a float32 implementation should distrust a feature metric whose metric_margin
is below ~1e-5 (a rounding could flip the decision in some patched run).

--selfcheck: consistency checks of the three methods on random models (gradient = exact in the
limit of a small corrupt step, IG with many steps sums to the all-nodes patch, exact effects of
nodes after the metric position are 0, ...). Prints "N failures" last; exits non-zero when N > 0.
"""

import argparse
import json
import math
import os
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import grad_reference as gr  # noqa: E402

DT = gr.DT


def value_hook(node):
    k = node["kind"]
    if k == "feature":
        return node["hook"] + ".hook_sae_acts_post"
    if k == "error":
        return node["hook"] + ".hook_sae_error"
    if k in ("resid", "attn", "mlp"):
        return node["hook"]
    raise ValueError(f"unknown node kind {k!r}")


def group_of(node):
    """The IG hook group of a node: (value hooks interpolated together)."""
    if node["kind"] in ("feature", "error"):
        return (node["hook"] + ".hook_sae_acts_post", node["hook"] + ".hook_sae_error")
    return (node["hook"],)


def node_index(node, T):
    """Index into the value hook's (T, ...) tensor, or None when the node is outside a T-token prompt."""
    k, p = node["kind"], node["pos"]
    if p == -1 and k == "attn":
        return (slice(None), node["index"])
    if not 0 <= p < T:
        if p < -1 or (p == -1 and k != "attn"):
            raise ValueError(f"node {node}: position {p} is invalid")
        return None
    if k == "feature":
        return (p, node["index"])
    if k == "attn":
        return (p, node["index"])
    return (p,)


class Oracle:
    def __init__(self, model, saes, clean, corrupt, ablation, metrics):
        self.model, self.saes, self.clean, self.metrics = model, saes, clean, metrics
        self.parsed = [gr.parse_metric(m) for m in metrics]
        self.runs = 0
        self.metric_margin = math.inf
        self.sae_margin = math.inf
        # clean runs with the gradient (every hook's value and dm/d value)
        self.clean_vals, self.clean_grads, self.clean_metric = [], [], []
        for b, toks in enumerate(clean):
            m, g = self.run(b, backward=True)
            self.sae_margin = min(self.sae_margin, g.margin)
            self.clean_metric.append(m.item())
            self.clean_vals.append({n: v.detach().clone() for n, v in g.nodes.items()})
            self.clean_grads.append({n: (v.grad.detach().clone() if v.grad is not None else torch.zeros_like(v))
                                     for n, v in g.nodes.items()})
        self.corrupt_vals, self.corrupt_metric = [], None
        if ablation == "corrupt":
            if corrupt is None or len(corrupt) != len(clean):
                raise ValueError("ablation 'corrupt' needs one corrupt prompt per clean prompt")
            self.corrupt_metric = []
            for b, toks in enumerate(corrupt):
                if len(toks) != len(clean[b]):
                    raise ValueError(f"prompt {b}: clean and corrupt token lengths differ")
                with torch.no_grad():
                    m, g = self.run(b, tokens=toks)
                self.sae_margin = min(self.sae_margin, g.margin)
                self.corrupt_metric.append(m.item())
                self.corrupt_vals.append({n: v.detach().clone() for n, v in g.nodes.items()})
        elif ablation == "zero":
            self.corrupt_vals = [{n: torch.zeros_like(v) for n, v in cv.items()} for cv in self.clean_vals]
        else:
            raise ValueError(f"unknown ablation {ablation!r} (corrupt or zero)")
        self.corrupt_scale = 1.0  # selfcheck only: a' = a + s (a'_true - a)

    def run(self, b, tokens=None, edits=None, backward=False):
        m, g = gr.run_sequence(self.model, tokens if tokens is not None else self.clean[b], self.parsed[b], self.metrics[b],
                               self.saes, want_result=False, backward=backward, edits=edits)
        self.runs += 1
        self.note_metric_margin(b, g)
        return m, g

    def note_metric_margin(self, b, g):
        met = self.parsed[b]
        if met["kind"] != "feature":
            return
        sae = next(s for s in self.saes if s["hook_name"] == met["hook"])
        T = g.nodes[met["hook"] + ".hook_sae_acts_pre"].shape[0]
        p = gr.resolve_pos(met["pos"], T, self.metrics[b])
        j = met["latent"]
        pre = g.nodes[met["hook"] + ".hook_sae_acts_pre"].detach()[p]
        scale = pre.abs().max().clamp_min(1e-30)
        d = [abs(pre[j].item()) / scale.item()]
        arch, t = sae["architecture"], sae["t"]
        if arch.startswith("jumprelu"):
            d.append(abs(pre[j].item() - t["threshold"][j].item()) / scale.item())
        if arch == "gated":
            x = g.nodes[met["hook"] + ".hook_sae_input"].detach()[p]
            x = x - t["b_dec"] if sae.get("apply_b_dec_to_input", False) else x
            gate = x @ t["W_enc"] + t["b_gate"]
            d.append(abs(gate[j].item()) / gate.abs().max().clamp_min(1e-30).item())
        if arch == "topk":
            srt = torch.sort(pre, descending=True).values
            k = int(sae["k"])
            if k < pre.shape[0]:
                d.append(min(abs(pre[j].item() - srt[k - 1].item()), abs(pre[j].item() - srt[k].item())) / scale.item())
        self.metric_margin = min(self.metric_margin, min(d))

    def a(self, b, hook):
        if hook not in self.clean_vals[b]:
            raise ValueError(f"hook {hook} is not in the model (with these SAEs)")
        return self.clean_vals[b][hook]

    def a1(self, b, hook):
        a = self.a(b, hook)
        return a + self.corrupt_scale * (self.corrupt_vals[b][hook] - a)

    # ------------------------------------------------------------------------------------------

    def gradient(self, nodes):
        out = []
        for n in nodes:
            vh, e = value_hook(n), 0.0
            for b, toks in enumerate(self.clean):
                idx = node_index(n, len(toks))
                if idx is None:
                    continue
                e += ((self.a1(b, vh) - self.a(b, vh)) * self.clean_grads[b][vh])[idx].sum().item()
            out.append(e)
        return out

    def exact(self, nodes):
        out = []
        for n in nodes:
            vh, e = value_hook(n), 0.0
            for b, toks in enumerate(self.clean):
                idx = node_index(n, len(toks))
                if idx is None:
                    continue
                corrupt = self.a1(b, vh)

                def patch(v, idx=idx, corrupt=corrupt):
                    v = v.clone()
                    v[idx] = corrupt[idx]
                    return v
                with torch.no_grad():
                    m, _ = self.run(b, edits={vh: patch})
                e += m.item() - self.clean_metric[b]
            out.append(e)
        return out

    def patch_all(self, b, hooks):
        """m(prompt b with every value of `hooks` set to its corrupt value) - m(clean)."""
        edits = {h: (lambda v, h=h: self.a1(b, h).clone()) for h in hooks}
        with torch.no_grad():
            m, _ = self.run(b, edits=edits)
        return m.item() - self.clean_metric[b]

    def ig_mean_gradients(self, b, group, steps):
        sums = {h: torch.zeros_like(self.a(b, h)) for h in group}
        for k in range(steps):
            alpha = k / steps
            leaves = {}

            def interp(v, h, alpha=alpha, leaves=leaves):
                a = self.a(b, h)
                leaf = (a + alpha * (self.a1(b, h) - a)).detach().requires_grad_(True)
                leaves[h] = leaf
                return leaf
            m, g = self.run(b, edits={h: (lambda v, h=h: interp(v, h)) for h in group}, backward=True)
            for h in group:
                grad = leaves[h].grad
                if grad is not None:
                    sums[h] += grad
        return {h: s / steps for h, s in sums.items()}

    def ig(self, nodes, steps):
        if steps < 1:
            raise ValueError("steps must be at least 1")
        groups = {}
        for i, n in enumerate(nodes):
            groups.setdefault(group_of(n), []).append(i)
        out = [0.0] * len(nodes)
        for group, members in groups.items():
            for b, toks in enumerate(self.clean):
                mean = self.ig_mean_gradients(b, group, steps)
                for i in members:
                    n = nodes[i]
                    idx = node_index(n, len(toks))
                    if idx is None:
                        continue
                    vh = value_hook(n)
                    out[i] += ((self.a1(b, vh) - self.a(b, vh)) * mean[vh])[idx].sum().item()
        return out

    def task(self, t):
        method, nodes = t["method"], t["nodes"]
        if method == "gradient":
            return self.gradient(nodes)
        if method == "exact":
            return self.exact(nodes)
        if method == "ig":
            return self.ig(nodes, int(t.get("steps", 10)))
        raise ValueError(f"unknown method {method!r} (exact, gradient, ig)")


def load_json(path):
    with open(path) as f:
        return json.load(f)


def run_job(job):
    t0 = time.time()
    model = gr.load_model(job["model"], DT)
    saes = gr.load_saes(job["saes"]) if job.get("saes") else []
    clean = job["clean"]
    metric = job["metric"]
    metrics = metric if isinstance(metric, list) else [metric] * len(clean)
    if len(metrics) != len(clean):
        raise ValueError(f"{len(metrics)} metrics for {len(clean)} prompts")
    o = Oracle(model, saes, clean, job.get("corrupt"), job.get("ablation", "corrupt"), metrics)
    tasks = [{"method": t["method"], "steps": t.get("steps"), "effects": o.task(t)} for t in job["tasks"]]
    return {"clean_metric": o.clean_metric, "corrupt_metric": o.corrupt_metric,
            "sae_margin": o.sae_margin if math.isfinite(o.sae_margin) else None,
            "metric_margin": o.metric_margin if math.isfinite(o.metric_margin) else None,
            "runs": o.runs, "seconds": time.time() - t0, "tasks": tasks}


# ----------------------------------------------------------------------------------------------
# Self-check

failures = []


def check(cond, msg):
    print(("ok   " if cond else "FAIL ") + msg)
    if not cond:
        failures.append(msg)


def selfcheck():
    torch.manual_seed(0)
    rng = torch.Generator().manual_seed(77)
    tmp = tempfile.mkdtemp(prefix="effects_reference_selfcheck_")
    gpt2 = gr.load_model(gr.make_model(tmp, "gpt2", dict(d_model=12, n_layers=2, n_heads=3, d_mlp=20, vocab=23, n_ctx=16), 5), DT)
    llama = gr.load_model(gr.make_model(tmp, "llama", dict(d_model=16, n_layers=2, n_heads=4, n_kv_heads=2, d_mlp=24, vocab=29,
                                                           n_ctx=16, tied=False, rope_theta=500.0), 6), DT)
    cases = [
        ("gpt2", gpt2, [gr.random_sae(rng, "s0", "blocks.0.hook_resid_post", "standard", 12, 30),
                        gr.random_sae(rng, "s1", "blocks.1.hook_mlp_out", "topk", 12, 25, k=5)],
         ["blocks.0.hook_resid_pre", "blocks.1.attn.hook_z", "blocks.0.hook_mlp_out"], "logit-diff:3,8", 3),
        ("llama", llama, [gr.random_sae(rng, "t0", "blocks.0.hook_mlp_out", "jumprelu", 16, 30),
                          gr.random_sae(rng, "t1", "blocks.1.hook_resid_pre", "gated", 16, 25)],
         ["blocks.1.hook_resid_post", "blocks.0.attn.hook_z", "blocks.1.hook_mlp_out"], "logprob:2", 4),
    ]
    clean, corrupt = [3, 7, 1, 9, 4, 11, 2], [3, 7, 5, 9, 4, 11, 2]
    for label, model, saes, comps, metric, NH in cases:
        def nodes_of(hook_kind, hook, T=len(clean)):
            if hook_kind == "sae":
                d = saes_by[hook]["t"]["W_dec"].shape[0]
                return [{"kind": "feature", "hook": hook, "pos": p, "index": j} for p in range(T) for j in range(d)] + \
                       [{"kind": "error", "hook": hook, "pos": p} for p in range(T)]
            kind = "attn" if hook.endswith("hook_z") else "mlp" if hook.endswith("mlp_out") else "resid"
            if kind == "attn":
                return [{"kind": kind, "hook": hook, "pos": p, "index": h} for p in range(T) for h in range(NH)]
            return [{"kind": kind, "hook": hook, "pos": p} for p in range(T)]
        saes_by = {s["hook_name"]: s for s in saes}
        o = Oracle(model, saes, [clean], [corrupt], "corrupt", [metric])
        # 1. the spliced clean metric is the unspliced one
        m0, _ = gr.run_sequence(model, clean, gr.parse_metric(metric), metric, backward=False)
        check(abs(m0.item() - o.clean_metric[0]) < 1e-12, f"{label}: spliced clean metric = unspliced metric")
        # 2. gradient = lim exact/s for a' = a + s (a'_true - a), per node kind
        hooks = [s["hook_name"] for s in saes]
        sample = []
        for h in hooks:
            ns = nodes_of("sae", h)
            feats = [n for n in ns if n["kind"] == "feature" and (o.a(0, value_hook(n))[n["pos"], n["index"]] != 0 or
                                                                   o.corrupt_vals[0][value_hook(n)][n["pos"], n["index"]] != 0)]
            sample += feats[:6] + [n for n in ns if n["kind"] == "error"][1:4]
        for c in comps:
            sample += nodes_of("comp", c)[2:6]
        sample.append({"kind": "attn", "hook": [c for c in comps if c.endswith("hook_z")][0], "pos": -1, "index": 1})
        grad = o.gradient(sample)
        scale = max(abs(x) for x in grad)
        for s in (1e-5,):
            o.corrupt_scale = s
            ex = o.exact(sample)
            gs = o.gradient(sample)
            worst = max(abs(e / s - g / s) for e, g in zip(ex, gs)) / (scale)
            check(worst < 1e-3, f"{label}: exact/s -> gradient effects as s -> 0 ({len(sample)} nodes), worst {worst:.1e} of max|effect|")
        o.corrupt_scale = 1.0
        # 3. effects of nodes after the metric's position are exactly 0 (metric at the last position: none) -- use pos 0 ones
        # and sum over the per-position attn nodes = the pos -1 node (gradient is linear)
        hz = [c for c in comps if c.endswith("hook_z")][0]
        per = o.gradient([{"kind": "attn", "hook": hz, "pos": p, "index": 1} for p in range(len(clean))])
        allp = o.gradient([{"kind": "attn", "hook": hz, "pos": -1, "index": 1}])[0]
        check(abs(sum(per) - allp) < 1e-12 * max(1, abs(allp)), f"{label}: gradient of head pos -1 = sum over positions")
        # 4. IG completeness: sum of a hook group's IG effects -> patch of all its nodes
        for h in [hooks[0], comps[0]]:
            ns = nodes_of("sae" if h in saes_by else "comp", h)
            group = group_of(ns[0])
            target = o.patch_all(0, group)
            errs = []
            for steps in (1, 4, 64):
                errs.append(abs(sum(o.ig(ns, steps)) - target))
            check(errs[2] < 0.05 * abs(target) + 1e-9 and errs[2] < errs[0],
                  f"{label}: IG over {h} sums to the all-nodes patch {target:.4e}: |error| at 1, 4, 64 steps {errs[0]:.2e}, {errs[1]:.2e}, {errs[2]:.2e}")
            g1 = o.gradient(ns)
            i1 = o.ig(ns, 1)
            check(max(abs(x - y) for x, y in zip(g1, i1)) < 1e-12 * max(1, max(map(abs, g1))), f"{label}: IG with 1 step = gradient ({h})")
        # 5. patching a node with its own clean value (zero-length step) does nothing; a feature patch leaves the error term
        o.corrupt_scale = 0.0
        z = o.exact(sample[:5])
        check(max(map(abs, z)) < 1e-12, f"{label}: patching nodes with their clean values changes nothing")
        o.corrupt_scale = 1.0
        # 6. zero ablation: exact error-node effect = run with that error row zeroed by hand
        oz = Oracle(model, saes, [clean], None, "zero", [metric])
        n = {"kind": "error", "hook": hooks[0], "pos": 3}
        vh = value_hook(n)

        def zero_row(v):
            v = v.clone()
            v[3] = 0
            return v
        with torch.no_grad():
            mz, _ = gr.run_sequence(model, clean, gr.parse_metric(metric), metric, saes, edits={vh: zero_row}, backward=False)
        check(abs(oz.exact([n])[0] - (mz.item() - oz.clean_metric[0])) < 1e-12, f"{label}: zero ablation of an error node")
    print(f"{len(failures)} failures")
    return 1 if failures else 0


def make_models(specs):
    import torch_reference as tr
    for sp in specs:
        os.makedirs(os.path.dirname(os.path.abspath(sp["out"])), exist_ok=True)
        cpath = sp["out"] + ".make-config.json"
        with open(cpath, "w") as f:
            json.dump(sp["config"], f)
        tr.cmd_make(argparse.Namespace(arch=sp["arch"], config=cpath, dtype=sp.get("dtype", "f32"), seed=int(sp["seed"]),
                                       out=sp["out"], prefix=False, max_shard_mb=None))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--job")
    ap.add_argument("--jobs")
    ap.add_argument("--make-models")
    ap.add_argument("--model")
    ap.add_argument("--saes")
    ap.add_argument("--clean")
    ap.add_argument("--corrupt")
    ap.add_argument("--ablation", default=None, choices=["zero"])
    ap.add_argument("--metric")
    ap.add_argument("--nodes")
    ap.add_argument("--method", choices=["exact", "gradient", "ig"])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--out")
    ap.add_argument("--selfcheck", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.selfcheck:
        sys.exit(selfcheck())
    if args.make_models:
        make_models(load_json(args.make_models))
        return
    if args.jobs:
        if not args.out:
            ap.error("--out is required")
        results = [run_job(j) for j in load_json(args.jobs)]
        with open(args.out, "w") as f:
            json.dump(results, f)
        print(json.dumps({"jobs": len(results), "runs": sum(r["runs"] for r in results),
                          "seconds": round(sum(r["seconds"] for r in results), 2)}))
        return
    if args.job:
        job = load_json(args.job)
    else:
        for k in ("model", "clean", "metric", "nodes", "method"):
            if getattr(args, k) is None:
                ap.error(f"--{k} is required (or give --job)")
        if (args.corrupt is None) == (args.ablation is None):
            ap.error("give --corrupt or --ablation zero")
        job = {"model": args.model, "saes": args.saes, "clean": load_json(args.clean),
               "corrupt": load_json(args.corrupt) if args.corrupt else None, "ablation": args.ablation or "corrupt",
               "metric": args.metric, "tasks": [{"method": args.method, "steps": args.steps, "nodes": load_json(args.nodes)}]}
    if not args.out:
        ap.error("--out is required")
    result = run_job(job)
    with open(args.out, "w") as f:
        json.dump(result, f)
    print(json.dumps({"runs": result["runs"], "seconds": round(result["seconds"], 2), "tasks": len(result["tasks"])}))


if __name__ == "__main__":
    main()
