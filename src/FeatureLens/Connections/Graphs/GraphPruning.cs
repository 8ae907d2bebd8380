namespace FeatureLens.Connections.Graphs;

/// <summary>
/// Which nodes and edges of an <see cref="AttributionGraph"/> to show. <see cref="KeptSources"/>[row] lists the source
/// columns of the kept edges into that row's node (ascending), or is null when every non-zero entry is kept (no pruning).
/// </summary>
public sealed class PruneResult
{
    internal PruneResult(bool[] nodeKept, int[][]? keptSources, double[] influence, double[] cumulative, double? nodeThreshold, double? edgeThreshold)
    {
        NodeKept = nodeKept;
        KeptSources = keptSources;
        NodeInfluence = influence;
        CumulativeInfluence = cumulative;
        NodeThreshold = nodeThreshold;
        EdgeThreshold = edgeThreshold;
    }

    /// <summary>Per node: kept or not.</summary>
    public IReadOnlyList<bool> NodeKept { get; }

    /// <summary>Per row of the graph: the kept edges' source columns, ascending; null when every non-zero entry of a kept row is kept.</summary>
    public IReadOnlyList<int[]>? KeptSources { get; }

    /// <summary>Per node: influence on the logits in the unpruned graph, w·(Â + Â² + …).</summary>
    public IReadOnlyList<double> NodeInfluence { get; }

    /// <summary>
    /// Per node, as circuit-tracer's graph JSON holds it in <c>influence</c>: the fraction of total influence held by the
    /// nodes at least as influential as this one (nodes sorted by influence, descending, ties by node index; 0 when the
    /// total is 0). The frontend's pruning slider keeps nodes whose value is ≤ its threshold.
    /// </summary>
    public IReadOnlyList<double> CumulativeInfluence { get; }

    /// <summary>The thresholds used (null for an unpruned graph).</summary>
    public double? NodeThreshold { get; }

    /// <inheritdoc cref="NodeThreshold"/>
    public double? EdgeThreshold { get; }

    /// <summary>Number of kept nodes.</summary>
    public int KeptNodeCount => NodeKept.Count(k => k);
}

/// <summary>
/// Pruning of an attribution graph (CONNECTIONS.md, "Attribution graphs"; defaults as circuit-tracer's prune_graph):
/// <list type="number">
/// <item>node influence on the full graph; keep the fewest nodes, taken by decreasing influence, whose influence reaches
/// <c>node_threshold</c> of the total (every node tied with the last one taken is kept too: ties are values within
/// <see cref="TieTolerance"/> relative, so that rounding cannot split values that are equal in exact arithmetic, as
/// happens for a node that is the only source of its only target); embedding and logit nodes are
/// always kept;</item>
/// <item>A restricted to kept nodes (rows and columns of dropped nodes zeroed, rows renormalised over what is left);
/// edge score[t, s] = Â′[t, s] · (influence′[t] + w[t]); keep the fewest edges, by decreasing score, reaching
/// <c>edge_threshold</c> of the total score (ties kept, as for nodes);</item>
/// <item>until nothing changes: drop feature and error nodes with no kept outgoing edge, feature nodes with no kept
/// incoming edge, and the edges of dropped nodes.</item>
/// </list>
/// </summary>
/// <remarks>
/// Choices where circuit-tracer's code and CONNECTIONS.md are silent or differ: edges are the non-zero entries of A
/// (circuit-tracer thresholds every entry of the dense matrix, so at threshold 1.0, or when the total score is 0, it
/// marks the structural zeros as kept edges of weight 0; here they never are). When the total influence (or score) is 0
/// every candidate is kept (circuit-tracer's NaN cumulative sum has the same outcome). Ties: circuit-tracer keeps scores
/// ≥ the cut exactly; here within 1e-9 relative of it. Sums are double.
/// </remarks>
public static class GraphPruning
{
    /// <summary>circuit-tracer's default node threshold.</summary>
    public const double DefaultNodeThreshold = 0.8;

    /// <summary>circuit-tracer's default edge threshold.</summary>
    public const double DefaultEdgeThreshold = 0.98;

    /// <summary>Throws an <see cref="ArgumentException"/> naming the option unless 0 ≤ <paramref name="value"/> ≤ 1.</summary>
    public static void CheckThreshold(double value, string option)
    {
        if (!(value >= 0 && value <= 1))
            throw new ArgumentException($"{option} must be between 0 and 1 (got {value.ToString(CultureInfo.InvariantCulture)})");
    }

    /// <summary>Prunes <paramref name="graph"/> by the rules above.</summary>
    public static PruneResult Prune(AttributionGraph graph, double nodeThreshold = DefaultNodeThreshold, double edgeThreshold = DefaultEdgeThreshold)
    {
        ArgumentNullException.ThrowIfNull(graph);
        CheckThreshold(nodeThreshold, "--node-threshold");
        CheckThreshold(edgeThreshold, "--edge-threshold");
        int n = graph.Nodes.Count, nF = graph.FeatureCount, firstAlways = graph.FirstEmbedding;
        var rowNode = RowNodes(graph);
        var w = graph.LogitWeights();
        var influence = GraphInfluence.Compute(graph.Rows, rowNode, n, w);

        // 1. nodes
        double nodeCut = ThresholdScore([.. influence], nodeThreshold);
        var keep = new bool[n];
        for (int i = 0; i < n; i++) keep[i] = i >= firstAlways || influence[i] >= nodeCut;

        // 2. edges of the pruned matrix
        var prunedInfluence = GraphInfluence.Compute(graph.Rows, rowNode, n, w, keep);
        var rows = graph.Rows;
        var rowScale = new double[rows.Count];
        long candidates = 0;
        for (int r = 0; r < rows.Count; r++)
        {
            int t = rowNode[r];
            if (!keep[t]) continue;
            double sum = 0;
            foreach (var (start, vals) in rows.Runs(r))
                for (int j = 0; j < vals.Length; j++)
                    if (vals[j] != 0 && keep[start + j]) { sum += Math.Abs(vals[j]); candidates++; }
            rowScale[r] = sum > 0 ? (prunedInfluence[t] + w[t]) / sum : 0;
        }
        if (candidates > Array.MaxLength) throw new InvalidOperationException($"{candidates} candidate edges are more than one array can sort");
        var scores = new double[candidates];
        long k = 0;
        for (int r = 0; r < rows.Count; r++)
        {
            if (!keep[rowNode[r]]) continue;
            foreach (var (start, vals) in rows.Runs(r))
                for (int j = 0; j < vals.Length; j++)
                    if (vals[j] != 0 && keep[start + j]) scores[k++] = Math.Abs(vals[j]) * rowScale[r];
        }
        double edgeCut = ThresholdScore((double[])scores.Clone(), edgeThreshold);
        var kept = new List<int>[rows.Count];
        k = 0;
        for (int r = 0; r < rows.Count; r++)
        {
            kept[r] = [];
            if (!keep[rowNode[r]]) continue;
            foreach (var (start, vals) in rows.Runs(r))
                for (int j = 0; j < vals.Length; j++)
                    if (vals[j] != 0 && keep[start + j])
                        if (scores[k++] >= edgeCut) kept[r].Add(start + j);
        }

        // 3. drop feature/error nodes without outgoing edges and features without incoming ones, until stable
        while (true)
        {
            var hasOut = new bool[n];
            var hasIn = new bool[n];
            for (int r = 0; r < rows.Count; r++)
            {
                int t = rowNode[r];
                if (!keep[t]) { kept[r].Clear(); continue; }
                kept[r].RemoveAll(s => !keep[s]);
                if (kept[r].Count > 0) hasIn[t] = true;
                foreach (int s in kept[r]) hasOut[s] = true;
            }
            bool changed = false;
            for (int i = 0; i < firstAlways; i++)
            {
                bool stay = keep[i] && hasOut[i] && (i >= nF || hasIn[i]);
                if (stay != keep[i]) { keep[i] = stay; changed = true; }
            }
            if (!changed) break;
        }
        return new PruneResult(keep, [.. kept.Select(l => l.ToArray())], influence, Cumulative(influence), nodeThreshold, edgeThreshold);
    }

    /// <summary>The unpruned graph (<c>--no-prune</c>): every node and every non-zero edge, with the influences.</summary>
    public static PruneResult Full(AttributionGraph graph)
    {
        ArgumentNullException.ThrowIfNull(graph);
        var influence = GraphInfluence.Compute(graph.Rows, RowNodes(graph), graph.Nodes.Count, graph.LogitWeights());
        var keep = new bool[graph.Nodes.Count];
        Array.Fill(keep, true);
        return new PruneResult(keep, null, influence, Cumulative(influence), null, null);
    }

    internal static int[] RowNodes(AttributionGraph graph)
    {
        var rowNode = new int[graph.Rows.Count];
        for (int r = 0; r < rowNode.Length; r++) rowNode[r] = graph.RowNode(r);
        return rowNode;
    }

    /// <summary>Scores within this relative distance count as tied (so that rounding cannot split values equal in exact arithmetic).</summary>
    public const double TieTolerance = 1e-9;

    /// <summary>
    /// The smallest score to keep so that the kept scores are the fewest, by decreasing score, whose sum reaches
    /// <paramref name="fraction"/> of the total, plus every score tied with the last one taken (within
    /// <see cref="TieTolerance"/>). +∞ (keep none) for no scores; 0 (keep all) when the total is 0.
    /// Sorts <paramref name="scores"/> in place.
    /// </summary>
    internal static double ThresholdScore(double[] scores, double fraction)
    {
        if (scores.Length == 0) return double.PositiveInfinity;
        Array.Sort(scores);
        double total = 0;
        for (int i = scores.Length - 1; i >= 0; i--) total += scores[i];
        if (!(total > 0)) return 0;
        double cum = 0;
        for (int i = scores.Length - 1; i >= 0; i--)
        {
            cum += scores[i];
            if (cum / total >= fraction) return scores[i] * (1 - TieTolerance);
        }
        return scores[0] * (1 - TieTolerance);
    }

    /// <summary>Per node: Σ influence of the nodes at least as influential (ties within <see cref="TieTolerance"/> included) / total; 0 when the total is 0.</summary>
    static double[] Cumulative(double[] influence)
    {
        var sorted = influence.Select(x => -x).ToArray();   // ascending order of −influence
        Array.Sort(sorted);
        var prefix = new double[sorted.Length + 1];
        for (int i = 0; i < sorted.Length; i++) prefix[i + 1] = prefix[i] - sorted[i];
        double total = prefix[^1];
        var cum = new double[influence.Length];
        if (!(total > 0)) return cum;
        for (int i = 0; i < influence.Length; i++)
        {
            // count of nodes with influence ≥ influence[i]·(1 − tol), i.e. −influence ≤ −influence[i]·(1 − tol)
            double bound = -influence[i] * (1 - TieTolerance);
            int lo = 0, hi = sorted.Length;
            while (lo < hi)
            {
                int mid = (lo + hi) >>> 1;
                if (sorted[mid] <= bound) lo = mid + 1; else hi = mid;
            }
            cum[i] = prefix[lo] / total;
        }
        return cum;
    }
}
