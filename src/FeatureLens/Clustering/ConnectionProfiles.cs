using System.Numerics.Tensors;
using FeatureLens.Connections.Graphs;
using FeatureLens.Runtime.Kernels;
using FeatureLens.Saes;

namespace FeatureLens.Clustering;

/// <summary>A transcoder feature: (layer, latent).</summary>
public readonly record struct ClusterFeature(int Layer, int Latent)
{
    public override string ToString() => $"{Layer}:{Latent}";
}

/// <summary>
/// One coordinate of a connection profile: a partner node on the upstream or downstream side. Partners are features by
/// (layer, latent), error nodes by layer, embeddings by token and logits by token (the coarse partners), as
/// <see cref="PartnerKey"/> groups them, plus the side.
/// </summary>
public readonly record struct ProfilePartner(bool Downstream, GraphNodeKind Kind, int Layer, int Index)
{
    /// <summary>A sortable 64-bit code: side (bit 62), kind (bits 56–59), layer + 1 (bits 32–47), index + 1 (bits 0–31).</summary>
    public long Code => ((Downstream ? 1L : 0L) << 62) | ((long)Kind << 56) | ((long)(ushort)(Layer + 1) << 32) | (uint)(Index + 1);

    public static ProfilePartner FromCode(long code) =>
        new(((code >> 62) & 1) != 0, (GraphNodeKind)((code >> 56) & 0xF), (int)((code >> 32) & 0xFFFF) - 1, (int)(uint)code - 1);

    public static ProfilePartner Of(PartnerKey key, bool downstream) => new(downstream, key.Kind, key.Layer, key.Index);
}

/// <summary>
/// The connection profiles of a set of features: per feature a sparse vector over <see cref="ProfilePartner"/> codes
/// (sorted by code, no zeros). Where they came from is in <see cref="Source"/>: <c>prompts</c>
/// (<see cref="ConnectionProfiles.FromGraphs"/>) or <c>weights</c> (<see cref="ConnectionProfiles.FromWeights"/>).
/// </summary>
public sealed class ProfileSet
{
    public ProfileSet(string source, IReadOnlyList<ClusterFeature> features, long[][] codes, float[][] values)
    {
        ArgumentNullException.ThrowIfNull(features);
        ArgumentNullException.ThrowIfNull(codes);
        ArgumentNullException.ThrowIfNull(values);
        if (codes.Length != features.Count || values.Length != features.Count)
            throw new ArgumentException($"{features.Count} features but {codes.Length} code rows and {values.Length} value rows");
        for (int i = 0; i < codes.Length; i++)
        {
            if (codes[i].Length != values[i].Length) throw new ArgumentException($"feature {features[i]}: {codes[i].Length} codes but {values[i].Length} values");
            for (int k = 1; k < codes[i].Length; k++)
                if (codes[i][k] <= codes[i][k - 1]) throw new ArgumentException($"feature {features[i]}: partner codes must be strictly increasing");
            foreach (float v in values[i])
                if (!float.IsFinite(v)) throw new ArgumentException($"feature {features[i]}: profile value {v} is not finite");
        }
        Source = source;
        Features = features;
        Codes = codes;
        Values = values;
    }

    /// <summary><c>prompts</c> or <c>weights</c> (or anything a caller names).</summary>
    public string Source { get; }
    public IReadOnlyList<ClusterFeature> Features { get; }
    /// <summary>Per feature: partner codes (<see cref="ProfilePartner.Code"/>), strictly increasing.</summary>
    public long[][] Codes { get; }
    /// <summary>Per feature: the profile value of each partner code.</summary>
    public float[][] Values { get; }
    public int Count => Features.Count;
}

/// <summary>Connection profiles from attribution graphs over a prompt set, or from the transcoders' weights alone.</summary>
public static class ConnectionProfiles
{
    /// <summary>
    /// Profiles from attribution graphs (one per prompt, as <see cref="GraphBuilder.Build"/> gives them). For a feature
    /// (layer, latent) and a partner, the effect on one prompt is the sum of the direct effects A between every node of the
    /// feature and every node of the partner on that prompt (upstream: A[feature, partner]; downstream: A[partner, feature],
    /// logit rows included); the profile value is the mean of that effect over the prompts where the feature is a node of
    /// the graph (<see cref="AggregatedLink.MeanEffect"/> of <see cref="FeatureLinks"/>, with logits as downstream partners).
    /// Features that are a node of no graph are left out.
    /// </summary>
    public static ProfileSet FromGraphs(IReadOnlyList<AttributionGraph> graphs)
    {
        ArgumentNullException.ThrowIfNull(graphs);
        if (graphs.Count == 0) throw new ArgumentException("the prompt set is empty: connection profiles need at least one prompt");
        var totals = new Dictionary<ClusterFeature, Dictionary<long, double>>();
        var active = new Dictionary<ClusterFeature, int>();
        foreach (var g in graphs) Accumulate(g, totals, active);
        var features = totals.Keys.OrderBy(f => f.Layer).ThenBy(f => f.Latent).ToList();
        var codes = new long[features.Count][];
        var values = new float[features.Count][];
        for (int i = 0; i < features.Count; i++)
        {
            var entries = totals[features[i]].Where(kv => kv.Value != 0).OrderBy(kv => kv.Key).ToList();
            int n = active[features[i]];
            codes[i] = [.. entries.Select(kv => kv.Key)];
            values[i] = [.. entries.Select(kv => (float)(kv.Value / n))];
        }
        return new ProfileSet("prompts", features, codes, values);
    }

    static void Accumulate(AttributionGraph g, Dictionary<ClusterFeature, Dictionary<long, double>> totals, Dictionary<ClusterFeature, int> active)
    {
        var nodes = g.Nodes;
        Dictionary<long, double> Of(int node)
        {
            var f = new ClusterFeature(nodes[node].Layer, nodes[node].Index);
            if (!totals.TryGetValue(f, out var d)) totals[f] = d = [];
            return d;
        }
        var seen = new HashSet<ClusterFeature>();
        for (int i = 0; i < g.FeatureCount; i++)
        {
            var f = new ClusterFeature(nodes[i].Layer, nodes[i].Index);
            if (seen.Add(f)) active[f] = active.GetValueOrDefault(f) + 1;
            Of(i);
        }
        for (int r = 0; r < g.Rows.Count; r++)
        {
            int target = g.RowNode(r);
            var targetKey = PartnerKey.Of(nodes[target]);
            long downCode = ProfilePartner.Of(targetKey, downstream: true).Code;
            var up = target < g.FeatureCount ? Of(target) : null;
            foreach (var (start, vals) in g.Rows.Runs(r))
                for (int j = 0; j < vals.Length; j++)
                {
                    float a = vals[j];
                    if (a == 0) continue;
                    int source = start + j;
                    if (up != null)
                    {
                        long c = ProfilePartner.Of(PartnerKey.Of(nodes[source]), downstream: false).Code;
                        up[c] = up.GetValueOrDefault(c) + a;
                    }
                    if (source < g.FeatureCount)
                    {
                        var down = Of(source);
                        down[downCode] = down.GetValueOrDefault(downCode) + a;
                    }
                }
        }
    }

    /// <summary>
    /// The input-invariant profiles from the weights alone (virtual weights through the residual stream, as in the transcoder
    /// paper, norms and attention left out): V[(l, i) → (m, j)] = (Σ_{k=l}^{m−1} W_dec(l → k)[i]) · W_enc^m[:, j] for m &gt; l,
    /// W_dec rows divided by their norm where the transcoder rescales by decoder norms. A feature's downstream part is its
    /// <paramref name="topK"/> largest |V| over later features, its upstream part the <paramref name="topK"/> largest |V| over
    /// earlier features (ties by partner code). Computed in blocks of <paramref name="blockRows"/> source rows against one
    /// target layer at a time (never all × all): each block is one GEMM, once for the downstream side and once, transposed,
    /// for the upstream side.
    /// </summary>
    public static ProfileSet FromWeights(CrossLayerTranscoder transcoder, int topK = 32, int blockRows = 256, IProgress<(int Done, int Total)>? progress = null, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(transcoder);
        if (topK < 1) throw new ArgumentException($"--top-partners must be at least 1 (got {topK})");
        if (blockRows < 1) throw new ArgumentException($"block rows must be at least 1 (got {blockRows})");
        int L = transcoder.NLayers;
        if (L < 2) throw new ArgumentException($"weight profiles need transcoders on at least two layers (got {L}): a single layer has no partners");
        var tcs = transcoder.Layers;
        int C = tcs[0].DIn;
        for (int l = 0; l < L; l++)
            if (tcs[l].DIn != C || tcs[l].DOut != C)
                throw new ArgumentException($"layer {l}'s transcoder maps {tcs[l].DIn} → {tcs[l].DOut}; weight profiles need every transcoder to read and write the residual width {C}");

        var heaps = new TopK[L][];                   // per feature: downstream then upstream heap
        var upHeaps = new TopK[L][];
        for (int l = 0; l < L; l++)
        {
            heaps[l] = new TopK[tcs[l].DSae];
            upHeaps[l] = new TopK[tcs[l].DSae];
            for (int i = 0; i < tcs[l].DSae; i++) { heaps[l][i] = new TopK(topK); upHeaps[l][i] = new TopK(topK); }
        }
        int pairs = L * (L - 1) / 2, done = 0;
        for (int l = 0; l < L - 1; l++)
        {
            int dl = tcs[l].DSae;
            var dec = new float[(long)dl * C];      // (d_l, C): Σ of the writes of layer l into layers l … m−1, grown with m
            for (int m = l + 1; m < L; m++)
            {
                ct.ThrowIfCancellationRequested();
                AddWrites(transcoder, l, m - 1, dec);
                var enc = tcs[m].WEnc;               // (C, d_m)
                int dm = tcs[m].DSae;
                // downstream: rows of dec × enc → (rows, d_m)
                SelectBlocks(dec, dl, C, enc, dm, transposeB: false, blockRows, heaps[l], m, downstream: true);
                // upstream: rows of encᵀ × decᵀ → (rows, d_l)
                SelectBlocks(enc, dm, C, dec, dl, transposeB: true, blockRows, upHeaps[m], l, downstream: false);
                progress?.Report((++done, pairs));
            }
        }
        var features = new List<ClusterFeature>();
        var codes = new List<long[]>();
        var values = new List<float[]>();
        for (int l = 0; l < L; l++)
            for (int i = 0; i < tcs[l].DSae; i++)
            {
                var entries = heaps[l][i].Items().Concat(upHeaps[l][i].Items()).Where(e => e.Value != 0).OrderBy(e => e.Code).ToList();
                if (entries.Count == 0) continue;
                features.Add(new ClusterFeature(l, i));
                codes.Add([.. entries.Select(e => e.Code)]);
                values.Add([.. entries.Select(e => e.Value)]);
            }
        return new ProfileSet("weights", features, [.. codes], [.. values]);
    }

    /// <summary>dec (d_l, C) += the rows latents of layer <paramref name="l"/> write into layer <paramref name="k"/> (per unit of activation).</summary>
    static void AddWrites(CrossLayerTranscoder t, int l, int k, float[] dec)
    {
        var w = t.Decoder(l, k);
        if (w == null) return;
        var sae = t.Layers[l];
        int C = sae.DIn;
        bool rescale = k == l && sae.Config.RescaleActsByDecoderNorm;
        for (int i = 0; i < sae.DSae; i++)
        {
            var dst = dec.AsSpan(i * C, C);
            var src = w.AsSpan(i * C, C);
            if (rescale)
            {
                float inv = 1f / sae.DecoderNorms[i];
                TensorPrimitives.MultiplyAdd(src, inv, dst, dst);
            }
            else TensorPrimitives.Add(dst, src, dst);
        }
    }

    /// <summary>
    /// For each row block of A (rows, C), the product with B (C, cols) — or with Bᵀ where B is (cols, C) — and every entry
    /// offered to its row's heap, the partner being (partnerLayer, column).
    /// </summary>
    static void SelectBlocks(float[] a, int rows, int C, float[] b, int cols, bool transposeB, int blockRows, TopK[] heapsOfRows, int partnerLayer, bool downstream)
    {
        int block = (int)Math.Max(1, Math.Min(blockRows, (64L << 20) / Math.Max(1L, (long)cols * sizeof(float))));
        var buf = new float[(long)Math.Min(block, rows) * cols];
        for (int r0 = 0; r0 < rows; r0 += block)
        {
            int n = Math.Min(block, rows - r0);
            var outSpan = buf.AsSpan(0, n * cols);
            if (!transposeB) Gemm.MatMul(a.AsSpan(r0 * C, n * C), b, outSpan, n, C, cols);
            else TransposedBlock(a, rows, C, r0, n, b, cols, outSpan); // a is an encoder (C, rows): its columns r0 … r0+n are the rows
            long codeBase = new ProfilePartner(downstream, GraphNodeKind.Feature, partnerLayer, 0).Code - 1;
            ParallelRows.For(n, cols, (s, e) =>
            {
                for (int r = s; r < e; r++)
                {
                    var heap = heapsOfRows[r0 + r];
                    var row = buf.AsSpan(r * cols, cols);
                    for (int c = 0; c < cols; c++) heap.Offer(codeBase + c + 1, row[c]);
                }
            });
        }
    }

    [ThreadStatic] static float[]? t_slice;

    /// <summary>out (n, cols) = E[:, r0:r0+n]ᵀ · Dᵀ with E (C, rows) and D (cols, C).</summary>
    static void TransposedBlock(float[] e, int rows, int C, int r0, int n, float[] d, int cols, Span<float> output)
    {
        // gather the n encoder columns as rows (n, C), then out = slice · dᵀ
        var slice = t_slice is { } s && s.Length >= n * C ? s : (t_slice = new float[n * C]);
        for (int c = 0; c < C; c++)
        {
            var src = e.AsSpan(c * rows + r0, n);
            for (int i = 0; i < n; i++) slice[i * C + c] = src[i];
        }
        Gemm.MatMulTransB(slice.AsSpan(0, n * C), d, output, n, C, cols);
    }

    /// <summary>A bounded selection of the k entries with the largest |value| (ties: the smaller code wins).</summary>
    sealed class TopK(int k)
    {
        readonly long[] codes = new long[k];
        readonly float[] vals = new float[k];
        int count;

        static bool Before(float va, long ca, float vb, long cb) // a ranks below b (a is the one to evict first)
        {
            float x = Math.Abs(va), y = Math.Abs(vb);
            return x < y || (x == y && ca > cb);
        }

        public void Offer(long code, float value)
        {
            if (value == 0) return;
            if (count < codes.Length)
            {
                codes[count] = code; vals[count] = value;
                SiftUp(count++);
                return;
            }
            if (!Before(vals[0], codes[0], value, code)) return;
            codes[0] = code; vals[0] = value;
            SiftDown(0);
        }

        void SiftUp(int i)
        {
            while (i > 0)
            {
                int p = (i - 1) / 2;
                if (!Before(vals[i], codes[i], vals[p], codes[p])) break;
                Swap(i, p); i = p;
            }
        }

        void SiftDown(int i)
        {
            while (true)
            {
                int l = 2 * i + 1, r = l + 1, m = i;
                if (l < count && Before(vals[l], codes[l], vals[m], codes[m])) m = l;
                if (r < count && Before(vals[r], codes[r], vals[m], codes[m])) m = r;
                if (m == i) return;
                Swap(i, m); i = m;
            }
        }

        void Swap(int a, int b)
        {
            (codes[a], codes[b]) = (codes[b], codes[a]);
            (vals[a], vals[b]) = (vals[b], vals[a]);
        }

        public IEnumerable<(long Code, float Value)> Items()
        {
            for (int i = 0; i < count; i++) yield return (codes[i], vals[i]);
        }
    }
}
