using FeatureLens.Runtime.Kernels;

namespace FeatureLens.Clustering;

/// <summary>A feature's nearest neighbours by cosine similarity: indices into the profile set and their cosines, best first.</summary>
public sealed record Neighbours(int[] Index, float[] Cosine);

/// <summary>
/// Cosine similarity of sparse connection profiles: cos(p, q) = Σ_k p_k q_k / (‖p‖ ‖q‖) over the partner codes both hold.
/// Products go through an inverted index (partner code → the features holding it), so only pairs sharing a partner are
/// touched; pairs sharing none have cosine 0.
/// </summary>
public static class ProfileSimilarity
{
    /// <summary>The profiles scaled to unit L2 norm (double accumulation), and the inverted index over partner codes.</summary>
    sealed class Index
    {
        public readonly float[][] Unit;
        public readonly Dictionary<long, (int[] Rows, float[] Values)> Postings;

        public Index(ProfileSet set)
        {
            Unit = new float[set.Count][];
            var lists = new Dictionary<long, (List<int>, List<float>)>();
            for (int i = 0; i < set.Count; i++)
            {
                double ss = 0;
                foreach (float v in set.Values[i]) ss += (double)v * v;
                if (ss == 0) throw new ArgumentException($"feature {set.Features[i]} has an empty connection profile");
                double inv = 1 / Math.Sqrt(ss);
                Unit[i] = [.. set.Values[i].Select(v => (float)(v * inv))];
                for (int k = 0; k < set.Codes[i].Length; k++)
                {
                    if (!lists.TryGetValue(set.Codes[i][k], out var l)) lists[set.Codes[i][k]] = l = ([], []);
                    l.Item1.Add(i); l.Item2.Add(Unit[i][k]);
                }
            }
            Postings = lists.ToDictionary(kv => kv.Key, kv => (kv.Value.Item1.ToArray(), kv.Value.Item2.ToArray()));
        }

        /// <summary>acc[j] += cos(i, j) for every j sharing a partner with i; touched lists those j once each.</summary>
        public void Row(ProfileSet set, int i, double[] acc, List<int> touched)
        {
            var codes = set.Codes[i];
            var u = Unit[i];
            for (int k = 0; k < codes.Length; k++)
            {
                var (rows, vals) = Postings[codes[k]];
                double a = u[k];
                for (int p = 0; p < rows.Length; p++)
                {
                    int j = rows[p];
                    if (acc[j] == 0) touched.Add(j);
                    acc[j] += a * vals[p];
                    if (acc[j] == 0) acc[j] = double.Epsilon; // keep "touched" exact when a sum cancels to 0
                }
            }
        }
    }

    /// <summary>The cosine of two features' profiles, computed directly (for checks and single pairs).</summary>
    public static double Cosine(ProfileSet set, int a, int b)
    {
        ArgumentNullException.ThrowIfNull(set);
        double dot = 0, na = 0, nb = 0;
        var ca = set.Codes[a]; var cb = set.Codes[b]; var va = set.Values[a]; var vb = set.Values[b];
        foreach (float v in va) na += (double)v * v;
        foreach (float v in vb) nb += (double)v * v;
        for (int i = 0, j = 0; i < ca.Length && j < cb.Length;)
        {
            if (ca[i] == cb[j]) dot += (double)va[i++] * vb[j++];
            else if (ca[i] < cb[j]) i++;
            else j++;
        }
        return na == 0 || nb == 0 ? 0 : dot / Math.Sqrt(na * nb);
    }

    /// <summary>
    /// Each feature's <paramref name="k"/> most similar other features (largest cosine, ties by index; only positive cosines),
    /// computed row by row in parallel.
    /// </summary>
    public static Neighbours[] Knn(ProfileSet set, int k, IProgress<int>? rowsDone = null)
    {
        ArgumentNullException.ThrowIfNull(set);
        if (k < 1) throw new ArgumentException($"--knn must be at least 1 (got {k})");
        var index = new Index(set);
        int n = set.Count;
        var result = new Neighbours[n];
        int done = 0;
        ParallelRows.For(n, 1L << 12, (s, e) =>
        {
            var acc = new double[n];
            var touched = new List<int>();
            for (int i = s; i < e; i++)
            {
                touched.Clear();
                index.Row(set, i, acc, touched);
                var best = touched.Where(j => j != i && acc[j] > 1e-12).OrderByDescending(j => acc[j]).ThenBy(j => j).Take(k).ToArray();
                result[i] = new Neighbours(best, [.. best.Select(j => (float)acc[j])]);
                foreach (int j in touched) acc[j] = 0;
                if (rowsDone != null && (Interlocked.Increment(ref done) & 1023) == 0) rowsDone.Report(done);
            }
        }, minWorkPerThread: 1);
        return result;
    }

    /// <summary>The largest n for which <see cref="Condensed"/> is allowed (its n(n−1)/2 floats stay under 2 GiB).</summary>
    public const int MaxCondensed = 32768;

    /// <summary>
    /// Every pair's cosine distance 1 − cos in condensed order (scipy's pdist layout: pair (i, j), i &lt; j, at
    /// n·i − i(i+1)/2 + j − i − 1).
    /// </summary>
    public static float[] Condensed(ProfileSet set, IProgress<int>? rowsDone = null)
    {
        ArgumentNullException.ThrowIfNull(set);
        int n = set.Count;
        if (n > MaxCondensed) throw new ArgumentException($"hierarchical clustering holds every pair's distance: {n} features is above its limit of {MaxCondensed}; use --method louvain");
        var index = new Index(set);
        var d = new float[(long)n * (n - 1) / 2];
        int done = 0;
        ParallelRows.For(n, Math.Max(1, n / 2), (s, e) =>
        {
            var acc = new double[n];
            var touched = new List<int>();
            for (int i = s; i < e; i++)
            {
                touched.Clear();
                index.Row(set, i, acc, touched);
                long off = CondensedIndex(n, i, i + 1);
                for (int j = i + 1; j < n; j++) d[off + j - i - 1] = 1f;
                foreach (int j in touched)
                {
                    if (j > i) d[off + j - i - 1] = (float)(1 - acc[j]);
                    acc[j] = 0;
                }
                if (rowsDone != null && (Interlocked.Increment(ref done) & 1023) == 0) rowsDone.Report(done);
            }
        }, minWorkPerThread: 1);
        return d;
    }

    /// <summary>Position of pair (i, j), i &lt; j, in the condensed layout.</summary>
    public static long CondensedIndex(int n, int i, int j) => (long)n * i - (long)i * (i + 1) / 2 + j - i - 1;
}
