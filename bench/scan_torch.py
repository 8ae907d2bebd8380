#!/usr/bin/python3
"""PyTorch peer of the corpus-scan benchmark (bench/FeatureLens.Bench/ScanBench.cs); prints one JSON line.

scan_torch.py --model DIR --saes DIR --windows FILE --threads T [--runs 1] [--block-windows 16] [--top 20]
              [--per-bin 5] [--partner-tokens 32768] [--partners 10] [--logit-tokens 10]

DIR is the GPT-2-small-shaped float32 folder (bench/torch_forward.py's gpt2_prepare and gpt2_forward, oneDNN linears);
--saes holds one SAELens TopK folder per blocks.L.hook_resid_post (attribution_torch.TopKSae); FILE is JSON
{"context": C, "bos": id, "windows": [[ids...], ...]}: the token windows FeatureLens's scan reads (so tokenization is not
timed here). The statistics are those of FeatureLens's scan (src/FeatureLens/Database), computed independently with torch:

  per block of --block-windows windows: one forward with every resid_post kept, then per SAE
    encode: pre = (x - b_dec) @ W_enc + b_enc, topk(k), relu (the window's BOS positions are encoded too: example values
            hold them; statistics skip every position whose token is BOS);
    events (latent j, activation a > 0, stream token index = window * C + position) at counted positions:
      count (bincount), fixed-point sum round(a * 2^32) (int64 index_add), max (scatter_reduce amax),
      log10 histogram of 10 bins per decade over [1e-6, 1e6) (bin = floor(10 log10 a) + 60, clamped to [0, 120));
    top examples: per latent the --top largest activations (ties: earlier token), merged with the kept ones each block
      (a sort by (latent, -activation, token) and a rank cut; only latents with a candidate above their current
      --top-th activation take part);
    sampled examples: per latent and sampling bin (2 histogram bins each) the --per-bin lowest priorities (ties: earlier
      token), priority = splitmix64 of (SAE, latent, token) computed in numpy uint64, merged the same way;
    each newly kept example stores the latent's activations over its whole window (nonzero positions);
    the partner sample: the (global latent, value) entries of every counted position of the first
      ceil(--partner-tokens / C) windows.
  at the end
    partners: Pearson r over the sample's positions, for each latent against every latent it fires together with at
      least once (any other pair has r <= 0): sxy by index_add into a dense (chunk x all latents) accumulator over the
      co-firing pairs (expanded from a row-sorted copy of the sample), r from the sums, r > 0 kept, the --partners best
      per latent (topk over each latent's padded pair list);
    decoder logit lens: (W_dec rows - their mean) * ln_f.weight @ W_U, topk and bottom-k per latent (--logit-tokens).
Timed: everything above, --runs times (median seconds); the JSON also carries per-SAE checksums and, for two latents of
every SAE (its most frequent one and latent (7919 (s + 1)) mod d_sae), everything the database stores about them, for the
C# side to compare. OPENBLAS_NUM_THREADS / OMP_NUM_THREADS come from --threads before torch loads (torch_threads.py).
"""

import argparse
import json
import os
import statistics
import sys
import threading
import time

import torch_threads  # noqa: F401  (sets the thread count before torch loads)
import numpy as np  # noqa: E402
import torch  # noqa: E402

import torch_forward as tf  # noqa: E402
from attribution_torch import TopKSae, watchdog  # noqa: E402

BINS, SBINS, MIN_EXP, BINS_PER_DECADE = 120, 60, -6, 10
I64_MAX = torch.iinfo(torch.int64).max


def mix(z):
    """splitmix64's finaliser on numpy uint64 (wrapping arithmetic)."""
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def priority(sae, feature, token):
    """Sampling priority of (SAE, latent, token) as a signed int64 with the same order as the uint64 (sign bit flipped)."""
    with np.errstate(over="ignore"):
        f = feature.numpy().astype(np.uint64)
        t = token.numpy().astype(np.uint64)
        z = mix(t + np.uint64(0x9E3779B97F4A7C15) * np.uint64(sae + 1))
        p = mix(z ^ (f * np.uint64(0xD6E8FEB86659FD93)))
    return torch.from_numpy((p ^ np.uint64(1 << 63)).view(np.int64))


def rank_in_group(group):
    """For a sorted group key: each entry's index within its run of equal keys."""
    n = group.numel()
    idx = torch.arange(n)
    start = torch.ones(n, dtype=torch.bool)
    start[1:] = group[1:] != group[:-1]
    first = torch.cummax(torch.where(start, idx, torch.zeros_like(idx)), 0).values
    return idx - first


def lexsort(keys):
    """Indices sorting by keys[0] first, then keys[1], ... (stable sorts from the least significant key)."""
    order = torch.arange(keys[0].numel())
    for k in reversed(keys):
        order = order[torch.sort(k[order], stable=True).indices]
    return order


class Kept:
    """A set of kept examples: parallel columns; vref -1 marks an example from the current block (values not taken yet)."""

    def __init__(self, cols):
        self.c = cols

    @staticmethod
    def empty(names):
        return Kept({n: torch.zeros(0, dtype=torch.float32 if n == "act" else torch.int64) for n in names})

    def select(self, idx):
        return Kept({n: v[idx] for n, v in self.c.items()})

    def cat(self, other):
        return Kept({n: torch.cat([v, other.c[n]]) for n, v in self.c.items()})


class SaeState:
    def __init__(self, s, sae, args):
        m = sae.w_enc.shape[1]
        self.s, self.sae, self.m, self.args = s, sae, m, args
        self.count = torch.zeros(m, dtype=torch.int64)
        self.fsum = torch.zeros(m, dtype=torch.int64)
        self.max = torch.zeros(m)
        self.hist = torch.zeros(m * BINS, dtype=torch.int64)
        self.top = Kept.empty(["lat", "act", "tok", "vref"])
        self.top_n = torch.zeros(m, dtype=torch.int64)       # kept per latent
        self.top_thr = torch.zeros(m)                        # the worst kept activation (when full)
        self.smp = Kept.empty(["lat", "sbin", "pri", "tok", "act", "vref"])
        self.smp_n = torch.zeros(m * SBINS, dtype=torch.int64)
        self.smp_thr = torch.full((m * SBINS,), I64_MAX, dtype=torch.int64)
        self.vals = []      # per captured example batch: (starts, lengths, positions, values)
        self.nvals = 0

    def capture(self, dense, C, first_window, kept):
        """Stores the window values of kept examples taken from this block; returns the column with their refs."""
        new = (kept.c["vref"] < 0).nonzero().squeeze(1)
        if new.numel() == 0:
            return kept.c["vref"]
        tok = kept.c["tok"][new]
        w = tok // C - first_window
        v = dense[w, :, kept.c["lat"][new]]                   # (E, T): the latent over the example's window
        e, pos = (v != 0).nonzero(as_tuple=True)
        lengths = torch.bincount(e, minlength=new.numel())
        starts = torch.cumsum(lengths, 0) - lengths
        self.vals.append((starts, lengths, pos, v[e, pos]))
        ref = kept.c["vref"].clone()
        ref[new] = torch.arange(self.nvals, self.nvals + new.numel())
        self.nvals += new.numel()
        return ref

    def values_of(self, ref):
        """(position, value) pairs of a captured example."""
        for starts, lengths, pos, val in self.vals:
            if ref < starts.numel():
                a, n = int(starts[ref]), int(lengths[ref])
                return [[int(p), float(x)] for p, x in zip(pos[a:a + n], val[a:a + n])]
            ref -= starts.numel()
        raise IndexError(ref)

    def block(self, x, idx, counted, first_window, C, sample_rows):
        """One block of B windows: x (B, T, d) at the hook, idx (B, T) tokens, counted (B, T) non-BOS positions."""
        B, T = idx.shape
        sae, m, args = self.sae, self.m, self.args
        sae_in = x.reshape(-1, x.shape[-1]) - sae.b_dec if sae.apply_b_dec else x.reshape(-1, x.shape[-1])
        pre = torch.addmm(sae.b_enc, sae_in, sae.w_enc)
        top = torch.topk(pre, sae.k, dim=-1, sorted=False)
        del pre
        vals = top.values.relu()
        dense = torch.zeros(B * T, m).scatter_(1, top.indices, vals).view(B, T, m)
        fires = (vals > 0) & counted.reshape(-1, 1)
        row, slot = fires.nonzero(as_tuple=True)
        lat = top.indices[row, slot]
        act = vals[row, slot]
        tok = (first_window + row // T) * C + row % T
        # counts, sums, maxima, histograms
        self.count.index_add_(0, lat, torch.ones_like(lat))
        self.fsum.index_add_(0, lat, torch.round(act.double() * 4294967296.0).long())
        self.max.scatter_reduce_(0, lat, act, "amax", include_self=True)
        hbin = (torch.floor(torch.log10(act.double()) * BINS_PER_DECADE).long() - MIN_EXP * BINS_PER_DECADE).clamp(0, BINS - 1)
        self.hist.index_add_(0, lat * BINS + hbin, torch.ones_like(lat))
        # top examples: candidates above their latent's worst kept one (equal: the earlier, kept token wins)
        cand = (self.top_n[lat] < args.top) | (act > self.top_thr[lat])
        new = Kept({"lat": lat[cand], "act": act[cand], "tok": tok[cand], "vref": torch.full((int(cand.sum()),), -1, dtype=torch.int64)})
        touched = torch.zeros(m, dtype=torch.bool)
        touched[new.c["lat"]] = True
        stay = touched[self.top.c["lat"]]
        pool = self.top.select(stay).cat(new)
        order = lexsort([pool.c["lat"], -pool.c["act"], pool.c["tok"]])
        order = order[rank_in_group(pool.c["lat"][order]) < args.top]
        merged = pool.select(order)
        merged.c["vref"] = self.capture(dense, C, first_window, merged)
        self.top = self.top.select(~stay).cat(merged)
        self.top_n.zero_().index_add_(0, self.top.c["lat"], torch.ones_like(self.top.c["lat"]))
        self.top_thr.fill_(float("inf")).scatter_reduce_(0, self.top.c["lat"], self.top.c["act"], "amin", include_self=True)
        # sampled examples: per (latent, sampling bin) the lowest priorities
        sbin = hbin // 2
        key = lat * SBINS + sbin
        pri = priority(self.s, lat, tok)
        cand = (self.smp_n[key] < args.per_bin) | (pri < self.smp_thr[key])
        new = Kept({"lat": lat[cand], "sbin": sbin[cand], "pri": pri[cand], "tok": tok[cand], "act": act[cand],
                    "vref": torch.full((int(cand.sum()),), -1, dtype=torch.int64)})
        touched = torch.zeros(m * SBINS, dtype=torch.bool)
        touched[new.c["lat"] * SBINS + new.c["sbin"]] = True
        skey = self.smp.c["lat"] * SBINS + self.smp.c["sbin"]
        stay = touched[skey]
        pool = self.smp.select(stay).cat(new)
        pkey = pool.c["lat"] * SBINS + pool.c["sbin"]
        order = lexsort([pkey, pool.c["pri"], pool.c["tok"]])
        order = order[rank_in_group(pkey[order]) < args.per_bin]
        merged = pool.select(order)
        merged.c["vref"] = self.capture(dense, C, first_window, merged)
        self.smp = self.smp.select(~stay).cat(merged)
        skey = self.smp.c["lat"] * SBINS + self.smp.c["sbin"]
        self.smp_n.zero_().index_add_(0, skey, torch.ones_like(skey))
        self.smp_thr.fill_(I64_MAX).scatter_reduce_(0, skey, self.smp.c["pri"], "amax", include_self=False)
        # the partner sample: counted positions of the first windows
        if sample_rows is not None:
            r_of, in_sample = sample_rows            # (B*T) row id in the sample, (B*T) bool
            sel = in_sample[row]
            return r_of[row[sel]], lat[sel] + self.s * m, act[sel]
        return None


def partners(rows, lats, vals, n, G, count, chunk=512):
    """Per global latent its `count` best partners by Pearson r > 0 over n sample rows: {g: [(h, r), ...]}."""
    out_g, out_h, out_r = [], [], []
    if n < 2 or count == 0:
        return out_g, out_h, out_r
    v64 = vals.double()
    sx = torch.zeros(G, dtype=torch.float64).index_add_(0, lats, v64)
    sxx = torch.zeros(G, dtype=torch.float64).index_add_(0, lats, v64 * v64)
    # row-sorted copy (CSR) to expand each firing into its row's co-firing latents
    order = torch.sort(rows, stable=True).indices
    c_lat, c_val = lats[order], v64[order]
    row_len = torch.bincount(rows, minlength=n)
    row_ptr = torch.cumsum(row_len, 0) - row_len
    # latent-sorted firings
    order = torch.sort(lats, stable=True).indices
    f_lat, f_row, f_val = lats[order], rows[order], v64[order]
    bounds = torch.searchsorted(f_lat, torch.arange(0, G + chunk, chunk).clamp(max=G))
    acc = torch.zeros(chunk * G, dtype=torch.float64)
    claim = torch.full((chunk * G,), -1, dtype=torch.int64)
    for c in range(bounds.numel() - 1):
        a, b = int(bounds[c]), int(bounds[c + 1])
        if a == b:
            continue
        g0 = c * chunk
        g, r_, x = f_lat[a:b], f_row[a:b], f_val[a:b]
        lens = row_len[r_]
        rep = torch.repeat_interleave(torch.arange(b - a), lens)
        off = torch.arange(rep.numel()) - (torch.cumsum(lens, 0) - lens)[rep]
        pos = row_ptr[r_][rep] + off
        h, gg = c_lat[pos], g[rep]
        keep = h != gg
        h, gg, xy = h[keep], gg[keep], x[rep][keep] * c_val[pos][keep]
        key = (gg - g0) * G + h
        acc.index_add_(0, key, xy)
        ids = torch.arange(key.numel())
        claim[key] = ids
        first = claim[key] == ids                      # one entry per distinct pair
        key, h, gg = key[first], h[first], gg[first]
        sxy = acc[key]
        acc[key] = 0
        claim[key] = -1
        vx = n * sxx[gg] - sx[gg] ** 2
        vy = n * sxx[h] - sx[h] ** 2
        ok = (vx > 1e-12 * n * sxx[gg]) & (vy > 1e-12 * n * sxx[h])
        r = ((n * sxy - sx[gg] * sx[h]) / torch.sqrt(vx * vy)).clamp(-1.0, 1.0)
        keep = ok & (r > 0)
        h, gg, r = h[keep], gg[keep], r[keep]
        if r.numel() == 0:
            continue
        # per latent (gg sorted, contiguous): pad to (latents in chunk, longest list) and take the top `count`
        local = gg - g0
        per = torch.bincount(local, minlength=chunk)
        slot = torch.arange(r.numel()) - (torch.cumsum(per, 0) - per)[local]
        width = int(per.max())
        R = torch.full((chunk, width), float("-inf"), dtype=torch.float64)
        H = torch.zeros((chunk, width), dtype=torch.int64)
        R[local, slot] = r
        H[local, slot] = h
        k = min(count, width)
        best = torch.topk(R, k, dim=1)
        bh = torch.gather(H, 1, best.indices)
        valid = best.values > float("-inf")
        li, ki = valid.nonzero(as_tuple=True)
        out_g.append(li + g0)
        out_h.append(bh[li, ki])
        out_r.append(best.values[li, ki])
    return torch.cat(out_g), torch.cat(out_h), torch.cat(out_r)


def logit_lens(sae, w, k, chunk=1024):
    """Top and bottom k tokens (ids, values) of every latent: (W_dec - row means) * ln_f.weight @ W_U."""
    m = sae.w_dec.shape[0]
    tops, topv, bots, botv = [], [], [], []
    wu_t = w["wte"].t().contiguous()
    for a in range(0, m, chunk):
        d = sae.w_dec[a:a + chunk]
        d = (d - d.mean(1, keepdim=True)) * w["lnf_w"]
        logits = d @ wu_t
        t = torch.topk(logits, k, dim=1)
        bt = torch.topk(logits, k, dim=1, largest=False)
        tops.append(t.indices)
        topv.append(t.values)
        bots.append(bt.indices)
        botv.append(bt.values)
    return torch.cat(tops), torch.cat(topv), torch.cat(bots), torch.cat(botv)


def scan(cfg, w, lin, saes, windows, bos, args, stages):
    C = windows.shape[1]
    nwin = windows.shape[0]
    states = [SaeState(s, sae, args) for s, sae in enumerate(saes)]
    sample_windows = -(-args.partner_tokens // C)
    s_rows, s_lat, s_val = [], [], []
    n_sample = 0
    for w0 in range(0, nwin, args.block_windows):
        idx = windows[w0:w0 + args.block_windows]
        B, T = idx.shape
        t0 = time.perf_counter()
        _, cache = tf.gpt2_forward(cfg, w, idx, True, False, lin)
        stages["forward"] += time.perf_counter() - t0
        counted = idx != bos
        sample_rows = None
        if w0 < sample_windows:
            in_sample = (counted & (torch.arange(w0, w0 + B) < sample_windows).reshape(B, 1)).reshape(-1)
            r_of = torch.cumsum(in_sample.long(), 0) - 1 + n_sample
            n_sample += int(in_sample.sum())
            sample_rows = (r_of, in_sample)
        for st in states:
            got = st.block(cache[int(st.sae.hook.split(".")[1])], idx, counted, w0, C, sample_rows)
            if got is not None:
                s_rows.append(got[0])
                s_lat.append(got[1])
                s_val.append(got[2])
        del cache
        stages["encode_and_statistics"] += time.perf_counter() - t0
        print(f"scan_torch: block at window {w0}: {json.dumps(stages)}", file=sys.stderr, flush=True)
    stages["encode_and_statistics"] -= stages["forward"]
    G = sum(st.m for st in states)
    t0 = time.perf_counter()
    pg, ph, pr = partners(torch.cat(s_rows), torch.cat(s_lat), torch.cat(s_val), n_sample, G, args.partners)
    stages["partners"] += time.perf_counter() - t0
    t0 = time.perf_counter()
    lens = [logit_lens(st.sae, w, args.logit_tokens) for st in states]
    stages["logit_lens"] += time.perf_counter() - t0
    print(f"scan_torch: {json.dumps(stages)}", file=sys.stderr, flush=True)
    return states, (pg, ph, pr), lens


def report(states, part, lens, C, tokens):
    pg, ph, pr = part
    out_saes, out_latents = [], []
    offset = 0
    for st in states:
        m = st.m
        out_saes.append({"hook": st.sae.hook, "count": int(st.count.sum()), "sum": float(st.fsum.sum()) / 4294967296.0,
                         "max": float(st.max.max()), "firing": int((st.count > 0).sum()),
                         "top_examples": int(st.top.c["lat"].numel()), "sampled_examples": int(st.smp.c["lat"].numel())})
        for j in sorted({int(torch.argmax(st.count)), 7919 * (st.s + 1) % m}):
            t = st.top.c["lat"] == j
            order = lexsort([-st.top.c["act"][t], st.top.c["tok"][t]])
            top_act, top_tok, top_ref = (st.top.c[n][t][order] for n in ("act", "tok", "vref"))
            sm = st.smp.c["lat"] == j
            mine = (pg == j + offset).nonzero().squeeze(1)
            hist = st.hist[j * BINS:(j + 1) * BINS]
            lt, lv, lb, lbv = (x[j] for x in lens[st.s])
            out_latents.append({
                "sae": st.sae.hook, "feature": j, "count": int(st.count[j]), "sum": int(st.fsum[j]) / 4294967296.0,
                "max": float(st.max[j]), "frequency": int(st.count[j]) / tokens,
                "histogram": {str(b): int(hist[b]) for b in hist.nonzero().squeeze(1).tolist()},
                "top": [[float(a), int(k)] for a, k in zip(top_act, top_tok)],
                "top1_values": st.values_of(int(top_ref[0])) if top_ref.numel() else [],
                "top1_window": int(top_tok[0]) // C if top_tok.numel() else -1,
                "samples": sorted([int(b), int(k), float(a)] for b, k, a in zip(st.smp.c["sbin"][sm], st.smp.c["tok"][sm], st.smp.c["act"][sm])),
                "partners": [[int(ph[i]), float(pr[i])] for i in mine],
                "logits_top": [[int(a), float(b)] for a, b in zip(lt, lv)],
                "logits_bottom": [[int(a), float(b)] for a, b in zip(lb, lbv)],
            })
        offset += m
    return out_saes, out_latents


def main():
    ap = argparse.ArgumentParser(description="PyTorch corpus-scan benchmark (the statistics of FeatureLens's feature database)")
    ap.add_argument("--model", required=True)
    ap.add_argument("--saes", required=True)
    ap.add_argument("--windows", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--block-windows", type=int, default=16)
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--per-bin", type=int, default=5)
    ap.add_argument("--partner-tokens", type=int, default=32768)
    ap.add_argument("--partners", type=int, default=10)
    ap.add_argument("--logit-tokens", type=int, default=10)
    ap.add_argument("--sae-count", type=int, default=0, help="only the SAEs of the first N layers (0: all)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    threading.Thread(target=watchdog, args=(20.0,), daemon=True).start()
    lin = tf.Linear("mkldnn")
    cfg, w = tf.gpt2_prepare(args.model, lin)
    saes = []
    for name in os.listdir(args.saes):
        saes.append(TopKSae(os.path.join(args.saes, name)))
    saes.sort(key=lambda s: int(s.hook.split(".")[1]))
    if args.sae_count > 0:
        saes = saes[:args.sae_count]
    with open(args.windows) as f:
        spec = json.load(f)
    windows = torch.tensor(spec["windows"], dtype=torch.int64)
    C, bos = spec["context"], spec["bos"]
    assert windows.shape[1] == C, "every window must hold --context tokens"
    tokens = int((windows != bos).sum())
    samples, result, all_stages = [], None, []
    for _ in range(args.runs):
        stages = dict.fromkeys(["forward", "encode_and_statistics", "partners", "logit_lens"], 0.0)
        t = time.perf_counter()
        result = scan(cfg, w, lin, saes, windows, bos, args, stages)
        samples.append(time.perf_counter() - t)
        all_stages.append(stages)
    out_saes, out_latents = report(*result, C, tokens)
    print(json.dumps({"torch": torch.__version__, "threads": args.threads, "median_s": statistics.median(samples), "runs": samples,
                      "tokens": tokens, "windows": int(windows.shape[0]), "peak_rss_gib": tf.peak_rss_gib(),
                      "stages": all_stages[samples.index(statistics.median_low(samples))],
                      "saes": out_saes, "latents": out_latents}))


if __name__ == "__main__":
    main()
