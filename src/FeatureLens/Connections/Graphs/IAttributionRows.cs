namespace FeatureLens.Connections.Graphs;

/// <summary>The kinds of node of an attribution graph (CONNECTIONS.md, "Attribution graphs").</summary>
public enum GraphNodeKind
{
    /// <summary>An active transcoder latent at (layer, position).</summary>
    Feature,
    /// <summary>The MLP reconstruction error at (layer, position): true mlp_out − transcoder output.</summary>
    Error,
    /// <summary>The token (+ positional) embedding at a position.</summary>
    Embedding,
    /// <summary>A candidate next token at the last position (its logit minus the mean logit).</summary>
    Logit,
}

/// <summary>
/// One node. <see cref="Layer"/>: the transcoder's layer for features and errors, -1 for embeddings, n_layers for
/// logits. <see cref="Index"/>: the latent for features, the token id for embeddings and logits, -1 for errors.
/// </summary>
public readonly record struct GraphNode(GraphNodeKind Kind, int Layer, int Pos, int Index);

/// <summary>
/// Direct effects of a local replacement model (frozen attention patterns and norm scales, transcoders for MLPs) as
/// rows of the adjacency matrix A[target, source] = a_s · ∂input_t/∂a_s, computed by batched backward passes from the
/// targets. Rows are never materialised for all latents at once: callers ask for batches of targets.
/// </summary>
public interface IAttributionRows
{
    /// <summary>Every source node, in column order: active features (sorted by layer, position, latent), then error
    /// nodes (by layer, position), then embedding nodes (by position).</summary>
    IReadOnlyList<GraphNode> Sources { get; }

    /// <summary>Each source's activation: the latent's activation for features; the L2 norm of the vector for error and embedding nodes.</summary>
    IReadOnlyList<float> SourceActivations { get; }

    /// <summary>Logit nodes: the most likely next tokens at the last position, by probability, until their probability sums to 0.95, at most 10.</summary>
    IReadOnlyList<GraphNode> Logits { get; }

    /// <summary>The softmax probability of each logit node's token (same order as <see cref="Logits"/>).</summary>
    IReadOnlyList<float> LogitProbabilities { get; }

    /// <summary>
    /// For each target (a feature of <see cref="Sources"/> or a node of <see cref="Logits"/>), writes its row A[t, ·]
    /// over every source (targets.Count × Sources.Count, row-major, into <paramref name="rows"/>), its input
    /// (the encoder pre-activation of a feature; logit − mean logit of a logit node) and its bias (what no node carries:
    /// encoder bias, decoder biases, model biases, norm offsets), so that Σ_s A[t, s] + bias_t = input_t.
    /// </summary>
    void ComputeRows(IReadOnlyList<GraphNode> targets, Span<float> rows, Span<float> inputs, Span<float> biases);
}
