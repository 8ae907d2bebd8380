using FeatureLens.Runtime.Models;
using FeatureLens.Saes;

namespace FeatureLens.Analysis;

/// <summary>Options of a corpus-level correlation run (<see cref="FeatureCorrelation.Corpus"/>).</summary>
public sealed record CorrelationOptions
{
    /// <summary>Minimum |Pearson r| for an edge.</summary>
    public double Threshold { get; init; } = 0.5;
    /// <summary>A feature must fire on at least this many tokens to be considered (rarer features give noisy r).</summary>
    public long MinFires { get; init; } = 10;
    /// <summary>
    /// At most this many features per SAE (the most frequently firing) take part; bounds the memory of the pair sums,
    /// 8·m_a·m_b bytes for every pair of SAEs. When an SAE has more latents the corpus is read twice.
    /// </summary>
    public int MaxFeaturesPerSae { get; init; } = 1024;
    /// <summary>Sequences per forward pass.</summary>
    public int BatchSequences { get; init; } = 8;
    /// <summary>Leave BOS tokens out (their activations are outliers).</summary>
    public bool SkipBos { get; init; } = true;
    /// <summary>Hubs listed in the network.</summary>
    public int Hubs { get; init; } = 10;
}

/// <summary>A feature's place in a correlation network before it becomes a <see cref="NetworkNode"/>.</summary>
public readonly record struct NetworkFeature(int SaeIndex, int Feature, double MaxActivation);

/// <summary>A correlation between two features (indices into the feature list given to <see cref="FeatureCorrelation.Build"/>).</summary>
public readonly record struct FeaturePair(int A, int B, double R);

/// <summary>
/// Sufficient statistics of feature activations over a corpus: per feature n, Σx, Σx², fire count and max; per pair of
/// kept features of different SAEs Σxy. Any Pearson r between kept features follows exactly.
/// </summary>
public sealed class CorrelationStats
{
    internal CorrelationStats(int saes) { Kept = new int[saes][]; SlotOf = new int[saes][]; Fires = new long[saes][]; Sum = new double[saes][]; SumSq = new double[saes][]; Max = new float[saes][]; PairSums = new double[saes, saes][]; }

    /// <summary>Tokens accumulated over.</summary>
    public long Tokens { get; internal set; }
    /// <summary>Per SAE, the features whose pair sums were accumulated (ascending).</summary>
    public int[][] Kept { get; }
    /// <summary>Per SAE, feature → slot in <see cref="Kept"/>, −1 when not kept.</summary>
    internal int[][] SlotOf { get; }
    /// <summary>Per SAE and feature: tokens it fired on, Σx, Σx², max.</summary>
    public long[][] Fires { get; }
    public double[][] Sum { get; }
    public double[][] SumSq { get; }
    public float[][] Max { get; }
    /// <summary>[a, b] for a &lt; b: Σxy as a (|Kept[a]|, |Kept[b]|) row-major matrix.</summary>
    internal double[,][] PairSums { get; }

    /// <summary>Whether feature <paramref name="feature"/> of SAE <paramref name="sae"/> took part in the pair sums.</summary>
    public bool IsKept(int sae, int feature) => SlotOf[sae][feature] >= 0;

    /// <summary>Σxy of two kept features of different SAEs.</summary>
    public double PairSum(int saeA, int featureA, int saeB, int featureB)
    {
        if (saeA == saeB) throw new ArgumentException("pair sums exist only between features of different SAEs");
        if (saeA > saeB) (saeA, featureA, saeB, featureB) = (saeB, featureB, saeA, featureA);
        int i = SlotOf[saeA][featureA], j = SlotOf[saeB][featureB];
        if (i < 0 || j < 0) throw new ArgumentException($"feature {(i < 0 ? featureA : featureB)} was not kept in the correlation statistics (it fired too rarely)");
        return PairSums[saeA, saeB][(long)i * Kept[saeB].Length + j];
    }

    /// <summary>Pearson r of two kept features of different SAEs; NaN when either is constant over the tokens.</summary>
    public double R(int saeA, int featureA, int saeB, int featureB) =>
        FeatureCorrelation.Pearson(Tokens, Sum[saeA][featureA], SumSq[saeA][featureA], Sum[saeB][featureB], SumSq[saeB][featureB],
            PairSum(saeA, featureA, saeB, featureB));

    /// <summary>The kept features of SAE <paramref name="otherSae"/> most correlated with a kept feature, highest r first.</summary>
    public IReadOnlyList<(int Feature, double R)> BestMatches(int sae, int feature, int otherSae, int count)
    {
        if (!IsKept(sae, feature)) return [];
        var list = new List<(int Feature, double R)>();
        foreach (int g in Kept[otherSae])
        {
            double r = R(sae, feature, otherSae, g);
            if (!double.IsNaN(r)) list.Add((g, r));
        }
        return list.OrderByDescending(x => x.R).ThenBy(x => x.Feature).Take(count).ToList();
    }
}

/// <summary>
/// Pearson correlations between features of different SAEs: over a corpus (streamed, exact, from sufficient statistics
/// in double) and the network built from them — nodes, edges above a threshold, degrees, connected components, hubs.
/// </summary>
public static class FeatureCorrelation
{
    /// <summary>
    /// r = (nΣxy − ΣxΣy) / sqrt((nΣx² − (Σx)²)(nΣy² − (Σy)²)); NaN when either variance is (numerically) zero.
    /// Sums may skip tokens where x or y is 0, since those terms are zero.
    /// </summary>
    public static double Pearson(long n, double sx, double sxx, double sy, double syy, double sxy)
    {
        double vx = n * sxx - sx * sx, vy = n * syy - sy * sy;
        // a constant feature has vx = 0 up to rounding of n·Σx² against (Σx)²
        if (vx <= 1e-12 * n * sxx || vy <= 1e-12 * n * syy) return double.NaN;
        double r = (n * sxy - sx * sy) / Math.Sqrt(vx * vy);
        return Math.Clamp(r, -1.0, 1.0);
    }

    /// <summary>Pearson r of two series (two passes, centred, in double); NaN when either is constant.</summary>
    public static double Pearson(ReadOnlySpan<float> x, ReadOnlySpan<float> y)
    {
        if (x.Length != y.Length) throw new ArgumentException($"series have different lengths ({x.Length} and {y.Length})");
        int n = x.Length;
        if (n < 2) return double.NaN;
        double mx = 0, my = 0;
        for (int t = 0; t < n; t++) { mx += x[t]; my += y[t]; }
        mx /= n; my /= n;
        double sxy = 0, sxx = 0, syy = 0;
        for (int t = 0; t < n; t++)
        {
            double dx = x[t] - mx, dy = y[t] - my;
            sxy += dx * dy; sxx += dx * dx; syy += dy * dy;
        }
        if (sxx == 0 || syy == 0) return double.NaN;
        return Math.Clamp(sxy / Math.Sqrt(sxx * syy), -1.0, 1.0);
    }

    /// <summary>How many times <see cref="Accumulate"/> reads the windows: 1 when every SAE's latents all fit in <see cref="CorrelationOptions.MaxFeaturesPerSae"/>, else 2.</summary>
    public static int Passes(SaeSet set, CorrelationOptions options) => set.Saes.All(s => s.DSae <= options.MaxFeaturesPerSae) ? 1 : 2;

    /// <summary>
    /// The corpus-level correlation network: Pearson r over every (non-BOS) token of <paramref name="windows"/> between
    /// features of different SAEs that fire on at least <see cref="CorrelationOptions.MinFires"/> tokens; nodes are the
    /// features with at least one edge.
    /// </summary>
    public static CorrelationNetwork Corpus(SaeSet set, IEnumerable<int[]> windows, CorrelationOptions options,
        IProgress<long>? tokensDone = null, FeatureLabelLookup? labels = null)
    {
        var stats = Accumulate(set, windows, options, tokensDone);
        return Network(set, stats, options, labels);
    }

    /// <summary>The network of accumulated statistics: edges where |r| ≥ the threshold between features firing ≥ MinFires times.</summary>
    public static CorrelationNetwork Network(SaeSet set, CorrelationStats stats, CorrelationOptions options, FeatureLabelLookup? labels = null)
    {
        CheckThreshold(options.Threshold);
        int S = set.Saes.Count;
        var features = new List<NetworkFeature>();
        var index = new Dictionary<(int, int), int>();
        var pairs = new List<FeaturePair>();
        int NodeOf(int s, int f)
        {
            if (!index.TryGetValue((s, f), out int i)) { i = features.Count; index[(s, f)] = i; features.Add(new NetworkFeature(s, f, stats.Max[s][f])); }
            return i;
        }
        long n = stats.Tokens;
        for (int a = 0; a < S; a++)
            for (int b = a + 1; b < S; b++)
            {
                var ka = stats.Kept[a]; var kb = stats.Kept[b]; var sums = stats.PairSums[a, b];
                for (int i = 0; i < ka.Length; i++)
                {
                    int fa = ka[i];
                    if (stats.Fires[a][fa] < options.MinFires) continue;
                    double sx = stats.Sum[a][fa], sxx = stats.SumSq[a][fa];
                    for (int j = 0; j < kb.Length; j++)
                    {
                        int fb = kb[j];
                        if (stats.Fires[b][fb] < options.MinFires) continue;
                        double r = Pearson(n, sx, sxx, stats.Sum[b][fb], stats.SumSq[b][fb], sums[(long)i * kb.Length + j]);
                        if (double.IsNaN(r) || Math.Abs(r) < options.Threshold) continue;
                        pairs.Add(new FeaturePair(NodeOf(a, fa), NodeOf(b, fb), r));
                    }
                }
            }
        // nodes in SAE then feature order
        var order = Enumerable.Range(0, features.Count).OrderBy(i => features[i].SaeIndex).ThenBy(i => features[i].Feature).ToArray();
        var rank = new int[order.Length];
        for (int i = 0; i < order.Length; i++) rank[order[i]] = i;
        var sorted = order.Select(i => features[i]).ToList();
        var sortedPairs = pairs.Select(p => new FeaturePair(rank[p.A], rank[p.B], p.R)).ToList();
        return Build(set, sorted, sortedPairs, options.Threshold, n, labels, keepIsolated: false, hubs: options.Hubs);
    }

    /// <summary>
    /// Streams the windows through the model with every SAE spliced (with the error term, so each SAE sees the clean
    /// model's activation) and accumulates n, Σx, Σx², fires and max of every feature, and Σxy over co-firing pairs of kept
    /// features of different SAEs. When every SAE has at most MaxFeaturesPerSae latents this is one pass keeping every
    /// feature; otherwise a first pass counts fires and keeps each SAE's MaxFeaturesPerSae most frequent features (firing
    /// ≥ MinFires), and a second pass accumulates — <paramref name="windows"/> must then be enumerable twice.
    /// <paramref name="tokensDone"/> reports the tokens read so far, over all passes.
    /// </summary>
    public static CorrelationStats Accumulate(SaeSet set, IEnumerable<int[]> windows, CorrelationOptions options, IProgress<long>? tokensDone = null)
    {
        CheckThreshold(options.Threshold);
        if (options.MaxFeaturesPerSae < 1) throw new ArgumentOutOfRangeException(nameof(options), $"MaxFeaturesPerSae must be at least 1, got {options.MaxFeaturesPerSae}");
        if (options.BatchSequences < 1) throw new ArgumentOutOfRangeException(nameof(options), $"BatchSequences must be at least 1, got {options.BatchSequences}");
        if (options.MinFires < 0) throw new ArgumentOutOfRangeException(nameof(options), $"MinFires must be ≥ 0, got {options.MinFires}");
        int S = set.Saes.Count;
        var stats = new CorrelationStats(S);
        long done = 0;
        for (int s = 0; s < S; s++)
        {
            int d = set.Saes[s].DSae;
            stats.Fires[s] = new long[d]; stats.Sum[s] = new double[d]; stats.SumSq[s] = new double[d]; stats.Max[s] = new float[d];
        }
        bool twoPass = Passes(set, options) == 2;
        if (twoPass)
        {
            // pass 1: fire counts only
            var fires = set.Saes.Select(s => new long[s.DSae]).ToArray();
            foreach (var (batch, acts) in Batches(set, windows, options))
            {
                foreach (var row in Rows(set, batch, acts, options.SkipBos))
                    for (int s = 0; s < S; s++)
                        foreach (int f in row.Active[s].Index) fires[s][f]++;
                done += CountTokens(set, batch, options.SkipBos);
                tokensDone?.Report(done);
            }
            for (int s = 0; s < S; s++)
                stats.Kept[s] = Enumerable.Range(0, fires[s].Length).Where(f => fires[s][f] > 0 && fires[s][f] >= options.MinFires)
                    .OrderByDescending(f => fires[s][f]).ThenBy(f => f).Take(options.MaxFeaturesPerSae).Order().ToArray();
        }
        else
            for (int s = 0; s < S; s++) stats.Kept[s] = Enumerable.Range(0, set.Saes[s].DSae).ToArray();

        for (int s = 0; s < S; s++)
        {
            stats.SlotOf[s] = Enumerable.Repeat(-1, set.Saes[s].DSae).ToArray();
            for (int i = 0; i < stats.Kept[s].Length; i++) stats.SlotOf[s][stats.Kept[s][i]] = i;
        }
        long pairDoubles = 0;
        for (int a = 0; a < S; a++) for (int b = a + 1; b < S; b++) pairDoubles += (long)stats.Kept[a].Length * stats.Kept[b].Length;
        if (pairDoubles > (1L << 28))
            throw new ArgumentException($"correlating {string.Join(" + ", stats.Kept.Select(k => k.Length))} features needs {pairDoubles * 8 / (1 << 20)} MiB of pair sums; lower MaxFeaturesPerSae (now {options.MaxFeaturesPerSae})");
        for (int a = 0; a < S; a++) for (int b = a + 1; b < S; b++) stats.PairSums[a, b] = new double[(long)stats.Kept[a].Length * stats.Kept[b].Length];

        // pass 2 (or the only pass)
        var pairList = new List<(int A, int B)>();
        for (int a = 0; a < S; a++) for (int b = a + 1; b < S; b++) pairList.Add((a, b));
        foreach (var (batch, acts) in Batches(set, windows, options))
        {
            var rows = Rows(set, batch, acts, options.SkipBos).ToList();
            // per-feature sums over all rows (all features, kept or not)
            for (int s = 0; s < S; s++)
            {
                var fires = stats.Fires[s]; var sum = stats.Sum[s]; var sumSq = stats.SumSq[s]; var max = stats.Max[s];
                foreach (var row in rows)
                {
                    var (idx, val) = row.Active[s];
                    for (int e = 0; e < idx.Length; e++)
                    {
                        int f = idx[e]; double v = val[e];
                        fires[f]++; sum[f] += v; sumSq[f] += v * v;
                        if (val[e] > max[f]) max[f] = val[e];
                    }
                }
            }
            // the kept features' slots and values per row and SAE
            var slots = rows.Select(row => Enumerable.Range(0, S).Select(s => KeptOf(row.Active[s], stats.SlotOf[s])).ToArray()).ToArray();
            // Σxy over co-firing pairs; SAE pairs are independent, so they run in parallel
            Parallel.ForEach(pairList, p =>
            {
                var sums = stats.PairSums[p.A, p.B];
                int mb = stats.Kept[p.B].Length;
                foreach (var row in slots)
                {
                    var (ia, va) = row[p.A]; var (ib, vb) = row[p.B];
                    for (int i = 0; i < ia.Length; i++)
                    {
                        double x = va[i];
                        long baseIdx = (long)ia[i] * mb;
                        for (int j = 0; j < ib.Length; j++) sums[baseIdx + ib[j]] += x * vb[j];
                    }
                }
            });
            stats.Tokens += rows.Count;
            done += rows.Count;
            tokensDone?.Report(done);
        }
        return stats;
    }

    static (int[] Slot, double[] Value) KeptOf((int[] Index, float[] Value) active, int[] slotOf)
    {
        int n = 0;
        foreach (int f in active.Index) if (slotOf[f] >= 0) n++;
        var slot = new int[n]; var value = new double[n];
        n = 0;
        for (int e = 0; e < active.Index.Length; e++)
        {
            int s = slotOf[active.Index[e]];
            if (s >= 0) { slot[n] = s; value[n] = active.Value[e]; n++; }
        }
        return (slot, value);
    }

    /// <summary>One token's active features per SAE.</summary>
    sealed record TokenRow((int[] Index, float[] Value)[] Active);

    static long CountTokens(SaeSet set, int[][] batch, bool skipBos)
    {
        int bos = set.Model.Tokenizer?.BosId ?? -1;
        return batch.Sum(w => (long)(skipBos ? w.Count(t => t != bos) : w.Length));
    }

    /// <summary>Rows (tokens) of a batch with their active features, BOS tokens left out when asked.</summary>
    static IEnumerable<TokenRow> Rows(SaeSet set, int[][] batch, float[][] acts, bool skipBos)
    {
        int bos = set.Model.Tokenizer?.BosId ?? -1;
        int S = set.Saes.Count;
        int T = batch.Max(w => w.Length);
        for (int b = 0; b < batch.Length; b++)
            for (int t = 0; t < batch[b].Length; t++)
            {
                if (skipBos && batch[b][t] == bos) continue;
                var active = new (int[], float[])[S];
                for (int s = 0; s < S; s++)
                {
                    int d = set.Saes[s].DSae;
                    active[s] = Nonzero(new ReadOnlySpan<float>(acts[s], (b * T + t) * d, d));
                }
                yield return new TokenRow(active);
            }
    }

    static (int[] Index, float[] Value) Nonzero(ReadOnlySpan<float> row)
    {
        int n = 0;
        foreach (float v in row) if (v != 0) n++;
        var idx = new int[n]; var val = new float[n];
        n = 0;
        for (int j = 0; j < row.Length; j++) if (row[j] != 0) { idx[n] = j; val[n] = row[j]; n++; }
        return (idx, val);
    }

    /// <summary>Batches of windows with each SAE's latents, (B, T, d_sae) per SAE (T the longest window; padding is zero).</summary>
    static IEnumerable<(int[][] Batch, float[][] Acts)> Batches(SaeSet set, IEnumerable<int[]> windows, CorrelationOptions options)
    {
        var batch = new List<int[]>(options.BatchSequences);
        foreach (var w in windows)
        {
            if (w is null || w.Length == 0) continue;
            batch.Add(w);
            if (batch.Count == options.BatchSequences) { yield return (batch.ToArray(), FeatureTracker.RunLatents(set, batch.ToArray())); batch.Clear(); }
        }
        if (batch.Count > 0) yield return (batch.ToArray(), FeatureTracker.RunLatents(set, batch.ToArray()));
    }

    static void CheckThreshold(double threshold)
    {
        if (!(threshold >= 0 && threshold <= 1)) throw new ArgumentOutOfRangeException(nameof(threshold), $"correlation threshold must be in [0, 1], got {threshold}");
    }

    /// <summary>
    /// Builds a network from features and their correlations: keeps pairs of different SAEs with |r| ≥
    /// <paramref name="threshold"/> (NaN never), computes degrees, connected components (union-find; largest first, ties by
    /// first member; isolated nodes left out) and the <paramref name="hubs"/> highest-degree nodes (ties by max activation,
    /// then order). Nodes without edges are kept only when <paramref name="keepIsolated"/>.
    /// </summary>
    public static CorrelationNetwork Build(SaeSet set, IReadOnlyList<NetworkFeature> features, IEnumerable<FeaturePair> correlations,
        double threshold, long tokens, FeatureLabelLookup? labels = null, bool keepIsolated = true, int hubs = 10)
    {
        CheckThreshold(threshold);
        int N = features.Count;
        foreach (var f in features)
            if ((uint)f.SaeIndex >= (uint)set.Saes.Count || (uint)f.Feature >= (uint)set.Saes[f.SaeIndex].DSae)
                throw new ArgumentException($"feature {f.Feature} of SAE {f.SaeIndex} is not in this SAE set");
        var degree = new int[N];
        var parent = Enumerable.Range(0, N).ToArray();
        int Find(int i) { while (parent[i] != i) { parent[i] = parent[parent[i]]; i = parent[i]; } return i; }
        var kept = new List<FeaturePair>();
        foreach (var p in correlations)
        {
            if ((uint)p.A >= (uint)N || (uint)p.B >= (uint)N) throw new ArgumentException($"correlation ({p.A}, {p.B}) names a feature outside the {N} given");
            if (double.IsNaN(p.R) || Math.Abs(p.R) < threshold || features[p.A].SaeIndex == features[p.B].SaeIndex) continue;
            kept.Add(p);
            degree[p.A]++; degree[p.B]++;
            int ra = Find(p.A), rb = Find(p.B);
            if (ra != rb) parent[Math.Max(ra, rb)] = Math.Min(ra, rb);
        }
        string Id(int i) => CorrelationNetwork.NodeId(set, features[i].SaeIndex, features[i].Feature);
        var nodes = new List<NetworkNode>();
        for (int i = 0; i < N; i++)
        {
            if (!keepIsolated && degree[i] == 0) continue;
            var f = features[i];
            nodes.Add(new NetworkNode(Id(i), f.SaeIndex, set.Names[f.SaeIndex], set.Layers[f.SaeIndex], f.Feature, f.MaxActivation, degree[i],
                labels?.Get(set.Hooks[f.SaeIndex], f.Feature)?.Label));
        }
        var edges = kept.Select(p => features[p.A].SaeIndex <= features[p.B].SaeIndex
            ? new NetworkEdge(Id(p.A), Id(p.B), p.R) : new NetworkEdge(Id(p.B), Id(p.A), p.R)).ToList();
        var components = Enumerable.Range(0, N).Where(i => degree[i] > 0).GroupBy(Find)
            .Select(g => g.ToList()).OrderByDescending(g => g.Count).ThenBy(g => g[0])
            .Select(g => (IReadOnlyList<string>)g.Select(Id).ToList()).ToList();
        var hubList = Enumerable.Range(0, N).Where(i => degree[i] > 0)
            .OrderByDescending(i => degree[i]).ThenByDescending(i => features[i].MaxActivation).ThenBy(i => i)
            .Take(Math.Max(0, hubs)).Select(Id).ToList();
        return new CorrelationNetwork { Threshold = threshold, Tokens = tokens, Nodes = nodes, Edges = edges, Components = components, Hubs = hubList };
    }
}
