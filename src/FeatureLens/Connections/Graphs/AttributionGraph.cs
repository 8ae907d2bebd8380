namespace FeatureLens.Connections.Graphs;

/// <summary>
/// An attribution graph over a prompt (CONNECTIONS.md, "Attribution graphs"): nodes in the order
/// [features (sorted by layer, position, latent), error nodes (by layer, position), embedding nodes (by position),
/// logit nodes (by probability)], and the adjacency A[target, source] as one stored row per feature and per logit node
/// (error and embedding nodes have no inputs; logit nodes feed nothing) over the columns
/// [features, errors, embeddings] — the node indices below the first logit.
/// </summary>
public sealed class AttributionGraph
{
    /// <summary>Checks the parts fit together; see the properties for what each holds.</summary>
    public AttributionGraph(IReadOnlyList<GraphNode> nodes, SegmentRows rows, IReadOnlyList<float> activations,
        IReadOnlyList<float> rowInputs, IReadOnlyList<float> rowBiases, IReadOnlyList<float> logitProbabilities, int activeFeatureCount)
    {
        ArgumentNullException.ThrowIfNull(nodes);
        ArgumentNullException.ThrowIfNull(rows);
        Nodes = nodes;
        int k = 0;
        int CountRun(GraphNodeKind kind)
        {
            int start = k;
            while (k < nodes.Count && nodes[k].Kind == kind) k++;
            return k - start;
        }
        FeatureCount = CountRun(GraphNodeKind.Feature);
        ErrorCount = CountRun(GraphNodeKind.Error);
        EmbeddingCount = CountRun(GraphNodeKind.Embedding);
        LogitCount = CountRun(GraphNodeKind.Logit);
        if (k != nodes.Count)
            throw new ArgumentException($"graph nodes must be ordered features, errors, embeddings, logits: node {k} ({nodes[k]}) is out of place", nameof(nodes));
        if (LogitCount == 0) throw new ArgumentException("an attribution graph needs at least one logit node", nameof(nodes));
        if (EmbeddingCount == 0) throw new ArgumentException("an attribution graph needs the embedding node of every position", nameof(nodes));
        if (rows.Columns != FirstLogit) throw new ArgumentException($"rows have {rows.Columns} columns, expected {FirstLogit} (features, errors, embeddings)", nameof(rows));
        if (rows.Count != FeatureCount + LogitCount) throw new ArgumentException($"{rows.Count} rows, expected {FeatureCount + LogitCount} (one per feature and per logit)", nameof(rows));
        if (activations.Count != nodes.Count) throw new ArgumentException($"{activations.Count} activations for {nodes.Count} nodes", nameof(activations));
        if (rowInputs.Count != rows.Count || rowBiases.Count != rows.Count) throw new ArgumentException($"inputs and biases need one value per row ({rows.Count})");
        if (logitProbabilities.Count != LogitCount) throw new ArgumentException($"{logitProbabilities.Count} logit probabilities for {LogitCount} logit nodes", nameof(logitProbabilities));
        if (activeFeatureCount < FeatureCount) throw new ArgumentException($"activeFeatureCount {activeFeatureCount} is below the {FeatureCount} feature nodes", nameof(activeFeatureCount));
        Rows = rows;
        Activations = activations;
        RowInputs = rowInputs;
        RowBiases = rowBiases;
        LogitProbabilities = logitProbabilities;
        ActiveFeatureCount = activeFeatureCount;
        NLayers = nodes[FirstLogit].Layer;
    }

    /// <summary>Every node: features, errors, embeddings, logits.</summary>
    public IReadOnlyList<GraphNode> Nodes { get; }

    /// <summary>One row per feature node (in node order), then one per logit node; columns are node indices below <see cref="FirstLogit"/>.</summary>
    public SegmentRows Rows { get; }

    /// <summary>Per node: the latent's activation for features, the vector's L2 norm for error and embedding nodes, NaN for logits.</summary>
    public IReadOnlyList<float> Activations { get; }

    /// <summary>Per row: the target's input (encoder pre-activation; logit − mean logit). Σ_s A[t, s] + bias_t = input_t over the full graph.</summary>
    public IReadOnlyList<float> RowInputs { get; }

    /// <summary>Per row: what no node carries (encoder bias, decoder biases, model biases, norm offsets).</summary>
    public IReadOnlyList<float> RowBiases { get; }

    /// <summary>The softmax probability of each logit node's token.</summary>
    public IReadOnlyList<float> LogitProbabilities { get; }

    /// <summary>How many features were active on the prompt (the graph holds the <see cref="FeatureCount"/> chosen among them).</summary>
    public int ActiveFeatureCount { get; }

    /// <summary>The model's layer count (the logit nodes' layer).</summary>
    public int NLayers { get; }

    /// <summary>Node counts by kind.</summary>
    public int FeatureCount { get; }

    /// <inheritdoc cref="FeatureCount"/>
    public int ErrorCount { get; }

    /// <inheritdoc cref="FeatureCount"/>
    public int EmbeddingCount { get; }

    /// <inheritdoc cref="FeatureCount"/>
    public int LogitCount { get; }

    /// <summary>Index of the first error node.</summary>
    public int FirstError => FeatureCount;

    /// <summary>Index of the first embedding node.</summary>
    public int FirstEmbedding => FeatureCount + ErrorCount;

    /// <summary>Index of the first logit node (= the number of source columns).</summary>
    public int FirstLogit => FeatureCount + ErrorCount + EmbeddingCount;

    /// <summary>The prompt's length in tokens (one embedding node per position).</summary>
    public int NPos => EmbeddingCount;

    /// <summary>The node whose row is row <paramref name="row"/>.</summary>
    public int RowNode(int row) => row < FeatureCount ? row : FirstLogit + (row - FeatureCount);

    /// <summary>The row of node <paramref name="node"/>, or -1 for error and embedding nodes (which have none).</summary>
    public int NodeRow(int node) => node < FeatureCount ? node : node >= FirstLogit ? FeatureCount + node - FirstLogit : -1;

    /// <summary>A[target, source] (zero where no direct effect is stored).</summary>
    public float Edge(int target, int source)
    {
        int r = NodeRow(target);
        return r < 0 || source >= FirstLogit ? 0 : Rows.Get(r, source);
    }

    /// <summary>How the builder got here (null for graphs assembled directly).</summary>
    public GraphBuildStats? BuildStats { get; internal set; }

    /// <summary>The weight vector w of the influence: logit probabilities on logit nodes, 0 elsewhere.</summary>
    public double[] LogitWeights()
    {
        var w = new double[Nodes.Count];
        for (int i = 0; i < LogitCount; i++) w[FirstLogit + i] = LogitProbabilities[i];
        return w;
    }
}

/// <summary>
/// What building a graph cost: rows computed, influence re-rankings, and the selection-time row store at its largest
/// (<see cref="StoredBytes"/>, exact float32 runs) against the same rows dense over every source (<see cref="DenseBytes"/>).
/// </summary>
public sealed record GraphBuildStats(int RowsComputed, int Rankings, long StoredValues, long StoredRuns, long StoredBytes, long DenseBytes);
