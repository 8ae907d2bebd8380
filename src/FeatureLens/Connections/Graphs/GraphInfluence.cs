namespace FeatureLens.Connections.Graphs;

/// <summary>
/// Influence on the logits (CONNECTIONS.md, "Attribution graphs"): Â = |A| with each row normalised to sum 1, and
/// influence = w·(Â + Â² + …), w the logit probabilities on logit nodes. Computed as circuit-tracer does, by
/// propagating the vector (x ← x·Â, summing every step) until it is exactly zero: A of a replacement model is a DAG
/// (sources sit at lower layers than their targets), so Â is nilpotent and the series ends after at most
/// depth + 1 steps; a cycle is reported instead of looping.
/// </summary>
/// <remarks>
/// Choices: a row whose |A| sums to 0 contributes nothing (circuit-tracer divides by max(sum, 1e-10), which for a
/// non-zero sum below that clamp gives a row that sums to less than 1; here every non-zero row sums to exactly 1, as
/// the definition says). Sums and the propagated vector are double; A stays float32 as stored.
/// </remarks>
public static class GraphInfluence
{
    /// <summary>
    /// influence[n] for every node n. <paramref name="rows"/>: the stored rows; row r is node <paramref name="rowNode"/>[r]'s
    /// row; columns are node indices (below <paramref name="nodeCount"/>). <paramref name="weights"/>: w (length nodeCount).
    /// <paramref name="keep"/> (optional, length nodeCount): restrict A to rows and columns of kept nodes (the pruned
    /// matrix: rows normalised over kept columns only).
    /// </summary>
    public static double[] Compute(SegmentRows rows, ReadOnlySpan<int> rowNode, int nodeCount, ReadOnlySpan<double> weights, ReadOnlySpan<bool> keep = default)
    {
        ArgumentNullException.ThrowIfNull(rows);
        if (rowNode.Length != rows.Count) throw new ArgumentException($"{rowNode.Length} row nodes for {rows.Count} rows", nameof(rowNode));
        if (weights.Length != nodeCount) throw new ArgumentException($"{weights.Length} weights for {nodeCount} nodes", nameof(weights));
        if (rows.Columns > nodeCount) throw new ArgumentException($"rows have {rows.Columns} columns but there are only {nodeCount} nodes", nameof(rows));
        if (!keep.IsEmpty && keep.Length != nodeCount) throw new ArgumentException($"{keep.Length} keep flags for {nodeCount} nodes", nameof(keep));
        bool[]? keepArr = keep.IsEmpty ? null : keep.ToArray();
        int[] nodeOf = rowNode.ToArray();

        // 1 / Σ|A[r, ·]| over (kept) columns; 0 for rows that are dropped or sum to 0
        var scale = new double[rows.Count];
        for (int r = 0; r < rows.Count; r++)
        {
            if (nodeOf[r] < 0 || nodeOf[r] >= nodeCount) throw new ArgumentException($"row {r} names node {nodeOf[r]}, outside [0, {nodeCount})", nameof(rowNode));
            if (keepArr != null && !keepArr[nodeOf[r]]) continue;
            double sum = keepArr == null ? rows.AbsSum(r) : KeptAbsSum(rows, r, keepArr);
            scale[r] = sum > 0 ? 1 / sum : 0;
        }

        var influence = new double[nodeCount];
        var current = weights.ToArray();
        int threads = Math.Max(1, Math.Min(Environment.ProcessorCount, (int)Math.Min(rows.Count, 1 + rows.StoredValues / (1 << 16))));
        var partials = new double[threads][];
        for (int t = 0; t < threads; t++) partials[t] = new double[rows.Columns];
        var bounds = Partition(rows, threads);
        for (int step = 0; ; step++)
        {
            if (step > nodeCount + 1) throw new InvalidDataException($"influence does not converge after {step} steps: the adjacency has a cycle (an attribution graph must be a DAG)");
            var x = current;
            Parallel.For(0, threads, new ParallelOptions { MaxDegreeOfParallelism = threads }, t =>
            {
                var acc = partials[t];
                Array.Clear(acc);
                for (int r = bounds[t]; r < bounds[t + 1]; r++)
                {
                    double f = x[nodeOf[r]] * scale[r];
                    if (f == 0) continue;
                    foreach (var (start, vals) in rows.Runs(r))
                    {
                        var dst = acc.AsSpan(start, vals.Length);
                        if (keepArr == null)
                            for (int j = 0; j < vals.Length; j++) dst[j] += f * Math.Abs(vals[j]);
                        else
                            for (int j = 0; j < vals.Length; j++)
                                if (keepArr[start + j]) dst[j] += f * Math.Abs(vals[j]);
                    }
                }
            });
            var next = new double[nodeCount];
            bool any = false;
            for (int c = 0; c < rows.Columns; c++)
            {
                double s = 0;
                for (int t = 0; t < threads; t++) s += partials[t][c];
                next[c] = s;
                influence[c] += s;
                any |= s != 0;
            }
            if (!any) return influence;
            current = next;
        }
    }

    static double KeptAbsSum(SegmentRows rows, int r, bool[] keep)
    {
        double sum = 0;
        foreach (var (start, vals) in rows.Runs(r))
            for (int j = 0; j < vals.Length; j++)
                if (keep[start + j]) sum += Math.Abs(vals[j]);
        return sum;
    }

    /// <summary>Contiguous row ranges holding about equal numbers of stored values.</summary>
    static int[] Partition(SegmentRows rows, int parts)
    {
        var bounds = new int[parts + 1];
        long total = 0;
        var sizes = new long[rows.Count];
        for (int r = 0; r < rows.Count; r++)
        {
            long n = 0;
            foreach (var (_, vals) in rows.Runs(r)) n += vals.Length;
            sizes[r] = n + 1;
            total += n + 1;
        }
        long acc = 0;
        int p = 1;
        for (int r = 0; r < rows.Count && p < parts; r++)
        {
            acc += sizes[r];
            while (p < parts && acc >= total * p / parts) bounds[p++] = r + 1;
        }
        while (p <= parts) bounds[p++] = rows.Count;
        return bounds;
    }
}
