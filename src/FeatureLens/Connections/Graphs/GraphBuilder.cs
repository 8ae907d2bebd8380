namespace FeatureLens.Connections.Graphs;

/// <summary>Options of <see cref="GraphBuilder.Build"/>.</summary>
public sealed record GraphBuildOptions
{
    /// <summary>The most feature nodes the graph holds (<c>--max-feature-nodes</c>); the most influential are chosen.</summary>
    public int MaxFeatureNodes { get; init; } = 7500;

    /// <summary>Targets per <see cref="IAttributionRows.ComputeRows"/> call (capped so one batch of dense rows stays under <see cref="MaxBatchBytes"/>).</summary>
    public int BatchSize { get; init; } = 64;

    /// <summary>Batches computed between two re-rankings of the unvisited features by their estimated influence (circuit-tracer's update_interval).</summary>
    public int UpdateInterval { get; init; } = 4;

    /// <summary>Cap on the dense batch buffer (targets × sources float32).</summary>
    public long MaxBatchBytes { get; init; } = 256L << 20;
}

/// <summary>What <see cref="GraphBuilder.Build"/> is doing: <c>Phase</c> "logits" or "features", and rows done of the phase's total.</summary>
public readonly record struct GraphBuildProgress(string Phase, int Done, int Total);

/// <summary>
/// Chooses the graph's nodes and assembles its adjacency from an <see cref="IAttributionRows"/> (circuit-tracer's
/// attribute: logit rows first, then feature rows in batches, the features taken by their influence estimated from the
/// rows computed so far).
/// </summary>
/// <remarks>
/// <para>Selection. With at most <see cref="GraphBuildOptions.MaxFeatureNodes"/> active features every feature is
/// visited in source order. Otherwise, every <see cref="GraphBuildOptions.UpdateInterval"/> batches the influence of each
/// source is estimated from the rows computed so far (w·(Â + Â² + …) with Â holding only those rows, as circuit-tracer's
/// compute_partial_influences) and the next queue is taken from the unvisited features by decreasing estimate (ties by
/// source index). One departure from circuit-tracer: a queue stops at the first feature whose estimate is 0 when it holds
/// any with a positive estimate (circuit-tracer fills it with zero-estimate features, which can crowd out features whose
/// influence only shows once their successors are visited); features are taken in source order only when none has a
/// positive estimate. Exactly min(MaxFeatureNodes, active features) features are visited; the visited ones are the
/// graph's features.</para>
/// <para>Memory. Rows arrive dense over every source (a batch at a time, at most <see cref="GraphBuildOptions.MaxBatchBytes"/>)
/// and are kept as <see cref="SegmentRows"/> (their non-zero runs, exact float32): for a feature at (layer l, position p)
/// only sources at layers below l and positions up to p can be non-zero, which with sources sorted by (layer, position)
/// are a few contiguous runs. The final rows drop the columns of unvisited features and each selection row is freed as
/// soon as its final row is built.</para>
/// </remarks>
public static class GraphBuilder
{
    /// <summary>Throws an <see cref="ArgumentException"/> naming the option when <paramref name="options"/> is not usable.</summary>
    public static void Check(GraphBuildOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        if (options.MaxFeatureNodes < 1) throw new ArgumentException($"--max-feature-nodes must be at least 1 (got {options.MaxFeatureNodes})");
        if (options.BatchSize < 1) throw new ArgumentException($"the graph batch size must be at least 1 (got {options.BatchSize})");
        if (options.UpdateInterval < 1) throw new ArgumentException($"the graph update interval must be at least 1 (got {options.UpdateInterval})");
        if (options.MaxBatchBytes < 1) throw new ArgumentException($"the graph batch buffer must be at least 1 byte (got {options.MaxBatchBytes})");
    }

    /// <summary>Builds the graph; see the remarks for how features are chosen.</summary>
    public static AttributionGraph Build(IAttributionRows model, GraphBuildOptions? options = null, IProgress<GraphBuildProgress>? progress = null, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(model);
        options ??= new GraphBuildOptions();
        Check(options);
        var sources = model.Sources;
        var logits = model.Logits;
        int nActive = CheckModel(model);
        int S = sources.Count, L = logits.Count;
        int limit = Math.Min(options.MaxFeatureNodes, nActive);
        int batch = (int)Math.Max(1, Math.Min(options.BatchSize, options.MaxBatchBytes / Math.Max(1L, (long)S * sizeof(float))));

        var store = new SegmentRows(S);
        var rowNode = new List<int>();            // node index (sources, then S + logit index) of each stored row
        var inputs = new List<float>();
        var biases = new List<float>();
        var buffer = new float[(long)batch * S];
        var inBuf = new float[batch];
        var biasBuf = new float[batch];

        void Compute(IReadOnlyList<GraphNode> targets, IReadOnlyList<int> nodeIndex)
        {
            ct.ThrowIfCancellationRequested();
            int m = targets.Count;
            var rows = buffer.AsSpan(0, m * S);
            rows.Clear();
            model.ComputeRows(targets, rows, inBuf.AsSpan(0, m), biasBuf.AsSpan(0, m));
            for (int i = 0; i < m; i++)
            {
                store.Add(rows.Slice(i * S, S), $"attribution row of {targets[i]}");
                rowNode.Add(nodeIndex[i]);
                inputs.Add(inBuf[i]);
                biases.Add(biasBuf[i]);
            }
        }

        // logit rows
        for (int i = 0; i < L; i += batch)
        {
            int m = Math.Min(batch, L - i);
            Compute([.. logits.Skip(i).Take(m)], [.. Enumerable.Range(S + i, m)]);
            progress?.Report(new GraphBuildProgress("logits", i + m, L));
        }

        // feature rows
        var visited = new bool[nActive];
        int nVisited = 0, rankings = 0;
        var w = new double[S + L];
        for (int i = 0; i < L; i++) w[S + i] = model.LogitProbabilities[i];
        while (nVisited < limit)
        {
            List<int> queue;
            if (limit == nActive)
                queue = [.. Enumerable.Range(0, nActive)];
            else
            {
                var estimate = GraphInfluence.Compute(store, rowNode.ToArray(), S + L, w);
                rankings++;
                int size = Math.Min(options.UpdateInterval * batch, limit - nVisited);
                var ranked = Enumerable.Range(0, nActive).Where(f => !visited[f]).OrderByDescending(f => estimate[f]).ThenBy(f => f);
                queue = [.. ranked.Take(size)];
                if (estimate[queue[0]] > 0) queue.RemoveAll(f => !(estimate[f] > 0));
            }
            for (int q = 0; q < queue.Count; q += batch)
            {
                var ids = queue.GetRange(q, Math.Min(batch, queue.Count - q));
                Compute([.. ids.Select(f => sources[f])], ids);
                foreach (int f in ids) visited[f] = true;
                nVisited += ids.Count;
                progress?.Report(new GraphBuildProgress("features", nVisited, limit));
            }
        }
        var stats = new GraphBuildStats(store.Count, rankings, store.StoredValues, store.StoredRuns, store.StoredBytes, store.DenseBytes);
        var graph = Assemble(model, store, rowNode, inputs, biases, visited, nActive);
        graph.BuildStats = stats;
        return graph;
    }

    /// <summary>Validates the source and logit lists; returns the number of active features.</summary>
    static int CheckModel(IAttributionRows model)
    {
        var sources = model.Sources;
        if (model.SourceActivations.Count != sources.Count)
            throw new InvalidDataException($"the replacement model gives {model.SourceActivations.Count} source activations for {sources.Count} sources");
        int k = 0;
        while (k < sources.Count && sources[k].Kind == GraphNodeKind.Feature)
        {
            if (k > 0 && Compare(sources[k - 1], sources[k]) >= 0)
                throw new InvalidDataException($"sources {k - 1} ({sources[k - 1]}) and {k} ({sources[k]}) are not sorted by layer, position, latent");
            k++;
        }
        int nActive = k;
        while (k < sources.Count && sources[k].Kind == GraphNodeKind.Error) k++;
        int firstEmbedding = k;
        while (k < sources.Count && sources[k].Kind == GraphNodeKind.Embedding) k++;
        if (k != sources.Count) throw new InvalidDataException($"source {k} ({sources[k]}) is out of place: sources must be features, then errors, then embeddings");
        if (k == firstEmbedding) throw new InvalidDataException("the replacement model gives no embedding sources");
        if (model.Logits.Count == 0) throw new InvalidDataException("the replacement model gives no logit nodes");
        if (model.LogitProbabilities.Count != model.Logits.Count)
            throw new InvalidDataException($"the replacement model gives {model.LogitProbabilities.Count} logit probabilities for {model.Logits.Count} logit nodes");
        for (int i = 0; i < model.Logits.Count; i++)
        {
            if (model.Logits[i].Kind != GraphNodeKind.Logit) throw new InvalidDataException($"logit node {i} ({model.Logits[i]}) is not of kind Logit");
            float p = model.LogitProbabilities[i];
            if (!(p >= 0 && p <= 1)) throw new InvalidDataException($"logit node {i} ({model.Logits[i]}) has probability {p.ToString(CultureInfo.InvariantCulture)}, outside [0, 1]");
        }
        return nActive;
    }

    static int Compare(GraphNode a, GraphNode b) =>
        a.Layer != b.Layer ? a.Layer.CompareTo(b.Layer) : a.Pos != b.Pos ? a.Pos.CompareTo(b.Pos) : a.Index.CompareTo(b.Index);

    /// <summary>The final graph: visited features (source order), errors, embeddings, logits; rows re-indexed to those columns.</summary>
    static AttributionGraph Assemble(IAttributionRows model, SegmentRows store, List<int> rowNode, List<float> inputs, List<float> biases, bool[] visited, int nActive)
    {
        var sources = model.Sources;
        int S = sources.Count, L = model.Logits.Count;
        var column = new int[S];               // source index → graph column, -1 for unvisited features
        var nodes = new List<GraphNode>();
        var activations = new List<float>();
        for (int s = 0; s < S; s++)
        {
            if (s < nActive && !visited[s]) { column[s] = -1; continue; }
            column[s] = nodes.Count;
            nodes.Add(sources[s]);
            activations.Add(model.SourceActivations[s]);
        }
        int nF = nodes.Count - (S - nActive), cols = nodes.Count;
        for (int i = 0; i < L; i++) { nodes.Add(model.Logits[i]); activations.Add(float.NaN); }

        // stored row of each final row: features by source index, then logits
        var rowOf = new int[nF + L];
        for (int r = 0; r < rowNode.Count; r++)
        {
            int node = rowNode[r];
            if (node >= S) rowOf[nF + node - S] = r;
            else rowOf[column[node]] = r;
        }
        var final = new SegmentRows(cols);
        var dense = new float[cols];
        var finalInputs = new float[nF + L];
        var finalBiases = new float[nF + L];
        for (int i = 0; i < nF + L; i++)
        {
            int r = rowOf[i];
            Array.Clear(dense);
            foreach (var (start, vals) in store.Runs(r))
                for (int j = 0; j < vals.Length; j++)
                {
                    int c = column[start + j];
                    if (c >= 0) dense[c] = vals[j];
                }
            final.Add(dense, $"attribution row of {nodes[i < nF ? i : cols + i - nF]}");
            store.Drop(r);
            finalInputs[i] = inputs[r];
            finalBiases[i] = biases[r];
        }
        return new AttributionGraph(nodes, final, activations, finalInputs, finalBiases, [.. model.LogitProbabilities], nActive);
    }
}
