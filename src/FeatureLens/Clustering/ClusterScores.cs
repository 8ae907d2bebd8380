namespace FeatureLens.Clustering;

/// <summary>Agreement between two flat partitions of the same items (cluster ids per item).</summary>
public static class ClusterScores
{
    static (long[,] Table, long[] Rows, long[] Cols, long N) Contingency(IReadOnlyList<int> a, IReadOnlyList<int> b)
    {
        ArgumentNullException.ThrowIfNull(a);
        ArgumentNullException.ThrowIfNull(b);
        if (a.Count != b.Count) throw new ArgumentException($"the partitions cover {a.Count} and {b.Count} items");
        var ra = Dense(a, out int na);
        var rb = Dense(b, out int nb);
        var t = new long[na, nb];
        var rows = new long[na];
        var cols = new long[nb];
        for (int i = 0; i < a.Count; i++) { t[ra[i], rb[i]]++; rows[ra[i]]++; cols[rb[i]]++; }
        return (t, rows, cols, a.Count);
    }

    static int[] Dense(IReadOnlyList<int> x, out int count)
    {
        var map = new Dictionary<int, int>();
        var r = new int[x.Count];
        for (int i = 0; i < x.Count; i++)
        {
            if (!map.TryGetValue(x[i], out int c)) map[x[i]] = c = map.Count;
            r[i] = c;
        }
        count = map.Count;
        return r;
    }

    static double Pairs(long n) => n * (n - 1) / 2.0;

    /// <summary>Hubert and Arabie's adjusted Rand index: 1 for identical partitions, about 0 for independent ones.</summary>
    public static double AdjustedRandIndex(IReadOnlyList<int> a, IReadOnlyList<int> b)
    {
        var (t, rows, cols, n) = Contingency(a, b);
        double sum = 0;
        foreach (long v in t) sum += Pairs(v);
        double sa = rows.Sum(Pairs), sb = cols.Sum(Pairs), total = Pairs(n);
        double expected = total == 0 ? 0 : sa * sb / total, max = (sa + sb) / 2;
        return max == expected ? 1 : (sum - expected) / (max - expected);
    }

    /// <summary>Normalised mutual information I(a; b) / √(H(a) H(b)) (1 when both partitions are a single identical cluster).</summary>
    public static double NormalizedMutualInformation(IReadOnlyList<int> a, IReadOnlyList<int> b)
    {
        var (t, rows, cols, n) = Contingency(a, b);
        if (n == 0) return 1;
        double H(long[] c) => -c.Where(v => v > 0).Sum(v => v / (double)n * Math.Log(v / (double)n));
        double mi = 0;
        for (int i = 0; i < rows.Length; i++)
            for (int j = 0; j < cols.Length; j++)
                if (t[i, j] > 0) mi += t[i, j] / (double)n * Math.Log(t[i, j] * (double)n / (rows[i] * (double)cols[j]));
        double ha = H(rows), hb = H(cols);
        return ha == 0 && hb == 0 ? 1 : ha == 0 || hb == 0 ? 0 : Math.Max(0, mi / Math.Sqrt(ha * hb));
    }

    /// <summary>Purity of clusters a against classes b: the fraction of items in their cluster's most common class.</summary>
    public static double Purity(IReadOnlyList<int> clusters, IReadOnlyList<int> classes)
    {
        var (t, rows, cols, n) = Contingency(clusters, classes);
        if (n == 0) return 1;
        long sum = 0;
        for (int i = 0; i < rows.Length; i++)
        {
            long best = 0;
            for (int j = 0; j < cols.Length; j++) best = Math.Max(best, t[i, j]);
            sum += best;
        }
        return sum / (double)n;
    }
}
