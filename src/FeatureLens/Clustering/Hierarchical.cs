namespace FeatureLens.Clustering;

/// <summary>One merge of a dendrogram, as scipy's linkage matrix row: clusters A and B (ids below n are features, n + s the cluster of merge s), their distance, the merged size.</summary>
public readonly record struct Merge(int A, int B, double Distance, int Size);

/// <summary>
/// Average-linkage (UPGMA) agglomerative clustering: the distance of two clusters is the mean distance over all pairs of
/// their members. Computed with the nearest-neighbour chain algorithm in O(n²) time over the condensed distance matrix
/// (updated in place by the Lance–Williams rule), then the merges sorted by distance (stable) and numbered as scipy's
/// <c>linkage(method="average")</c> does, so the result does not depend on the order in which the chain found them.
/// Ties are broken by the smaller cluster index, so the result is deterministic.
/// </summary>
public static class AverageLinkage
{
    /// <summary>The n − 1 merges of the <paramref name="n"/> items whose distances are <paramref name="condensed"/> (overwritten).</summary>
    public static Merge[] Cluster(float[] condensed, int n, IProgress<int>? mergesDone = null)
    {
        ArgumentNullException.ThrowIfNull(condensed);
        if (n < 1) throw new ArgumentException("hierarchical clustering needs at least one feature");
        if (condensed.LongLength != (long)n * (n - 1) / 2) throw new ArgumentException($"{condensed.LongLength} distances for {n} items, expected {(long)n * (n - 1) / 2}");
        var size = new int[n];
        Array.Fill(size, 1);
        var alive = new bool[n];
        Array.Fill(alive, true);
        var raw = new List<(int A, int B, double D)>(n - 1);   // merges in chain order; a cluster keeps the smaller slot of its two
        var chain = new int[n];
        int top = 0;
        float D(int i, int j) => i < j ? condensed[ProfileSimilarity.CondensedIndex(n, i, j)] : condensed[ProfileSimilarity.CondensedIndex(n, j, i)];

        for (int step = 0; step < n - 1; step++)
        {
            if (top == 0)
            {
                int first = 0;
                while (!alive[first]) first++;
                chain[top++] = first;
            }
            int a, b;
            while (true)
            {
                a = chain[top - 1];
                int prev = top >= 2 ? chain[top - 2] : -1;
                b = prev;
                float best = prev >= 0 ? D(a, prev) : float.PositiveInfinity;
                for (int x = 0; x < n; x++)
                {
                    if (!alive[x] || x == a) continue;
                    float d = D(a, x);
                    if (d < best || (d == best && x < b && b != prev)) { best = d; b = x; }
                }
                if (b == prev) break;
                chain[top++] = b;
            }
            top -= 2;
            int lo = Math.Min(a, b), hi = Math.Max(a, b);
            double dist = D(lo, hi);
            raw.Add((lo, hi, dist));
            // Lance–Williams for average linkage: d(k, lo ∪ hi) = (n_lo d(k, lo) + n_hi d(k, hi)) / (n_lo + n_hi)
            int nl = size[lo], nh = size[hi];
            for (int x = 0; x < n; x++)
            {
                if (!alive[x] || x == lo || x == hi) continue;
                double d = (nl * (double)D(x, lo) + nh * (double)D(x, hi)) / (nl + nh);
                condensed[x < lo ? ProfileSimilarity.CondensedIndex(n, x, lo) : ProfileSimilarity.CondensedIndex(n, lo, x)] = (float)d;
            }
            alive[hi] = false;
            size[lo] = nl + nh;
            if (mergesDone != null && (step & 255) == 0) mergesDone.Report(step + 1);
        }
        return Relabel(raw, n);
    }

    /// <summary>Sorts the merges by distance (stable) and names clusters as scipy: features 0 … n−1, merge s makes n + s.</summary>
    static Merge[] Relabel(List<(int A, int B, double D)> raw, int n)
    {
        var order = Enumerable.Range(0, raw.Count).OrderBy(i => raw[i].D).ThenBy(i => i).ToArray();
        var parent = new int[n];
        var clusterId = new int[n];
        var sizes = new int[n];
        for (int i = 0; i < n; i++) { parent[i] = i; clusterId[i] = i; sizes[i] = 1; }
        int Find(int x)
        {
            while (parent[x] != x) { parent[x] = parent[parent[x]]; x = parent[x]; }
            return x;
        }
        var merges = new Merge[raw.Count];
        for (int s = 0; s < order.Length; s++)
        {
            var (a, b, d) = raw[order[s]];
            int ra = Find(a), rb = Find(b);
            int ia = clusterId[ra], ib = clusterId[rb];
            merges[s] = new Merge(Math.Min(ia, ib), Math.Max(ia, ib), d, sizes[ra] + sizes[rb]);
            parent[rb] = ra;
            sizes[ra] += sizes[rb];
            clusterId[ra] = n + s;
        }
        return merges;
    }

    /// <summary>Flat clusters from a dendrogram: every merge at distance ≤ <paramref name="threshold"/> applied.</summary>
    public static int[] CutAtDistance(IReadOnlyList<Merge> merges, int n, double threshold) =>
        Apply(merges, n, merges.TakeWhile(m => m.Distance <= threshold).Count());

    /// <summary>Flat clusters from a dendrogram: the first n − <paramref name="k"/> merges applied (k clusters).</summary>
    public static int[] CutToCount(IReadOnlyList<Merge> merges, int n, int k)
    {
        ArgumentNullException.ThrowIfNull(merges);
        if (k < 1 || k > n) throw new ArgumentException($"--cut k={k}: the number of clusters must be between 1 and the {n} features");
        return Apply(merges, n, n - k);
    }

    static int[] Apply(IReadOnlyList<Merge> merges, int n, int count)
    {
        var parent = Enumerable.Range(0, 2 * n).ToArray();
        int Find(int x)
        {
            while (parent[x] != x) { parent[x] = parent[parent[x]]; x = parent[x]; }
            return x;
        }
        for (int s = 0; s < count; s++)
        {
            parent[Find(merges[s].A)] = n + s;
            parent[Find(merges[s].B)] = n + s;
        }
        return Partition.Canonical([.. Enumerable.Range(0, n).Select(Find)]);
    }
}

/// <summary>Flat partitions: a cluster id per item.</summary>
public static class Partition
{
    /// <summary>Renumbers cluster ids 0, 1, … by decreasing size, ties by the smallest member.</summary>
    public static int[] Canonical(IReadOnlyList<int> labels)
    {
        ArgumentNullException.ThrowIfNull(labels);
        var groups = Enumerable.Range(0, labels.Count).GroupBy(i => labels[i]).OrderByDescending(g => g.Count()).ThenBy(g => g.Min()).ToList();
        var result = new int[labels.Count];
        for (int c = 0; c < groups.Count; c++)
            foreach (int i in groups[c]) result[i] = c;
        return result;
    }
}
