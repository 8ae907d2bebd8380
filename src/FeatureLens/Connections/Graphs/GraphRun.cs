using System.Globalization;
using FeatureLens.Analysis;
using FeatureLens.Runtime.Models;
using FeatureLens.Saes;

namespace FeatureLens.Connections.Graphs;

/// <summary>Options of <see cref="GraphRun"/>.Compute (the <c>featurelens graph</c> options).</summary>
public sealed record GraphRunOptions
{
    /// <summary><c>--max-feature-nodes</c>: the most feature nodes the graph holds (the most influential are kept).</summary>
    public int MaxFeatureNodes { get; init; } = 7500;
    /// <summary><c>--node-threshold</c>: the fraction of influence the kept nodes hold.</summary>
    public double NodeThreshold { get; init; } = GraphPruning.DefaultNodeThreshold;
    /// <summary><c>--edge-threshold</c>: the fraction of edge influence the kept edges hold.</summary>
    public double EdgeThreshold { get; init; } = GraphPruning.DefaultEdgeThreshold;
    /// <summary>False for <c>--no-prune</c>: every node and non-zero edge is kept.</summary>
    public bool Prune { get; init; } = true;
    /// <summary>Targets per batched backward pass.</summary>
    public int BatchSize { get; init; } = 64;

    /// <summary>Throws an <see cref="ArgumentException"/> naming the option when a value is out of range.</summary>
    public void Check()
    {
        GraphPruning.CheckThreshold(NodeThreshold, "--node-threshold");
        GraphPruning.CheckThreshold(EdgeThreshold, "--edge-threshold");
        GraphBuilder.Check(new GraphBuildOptions { MaxFeatureNodes = MaxFeatureNodes, BatchSize = BatchSize });
    }
}

/// <summary>A computed attribution graph: the replacement model it came from, the graph, its pruning and what the JSON says about it.</summary>
public sealed class GraphRunResult
{
    public required ReplacementModel Replacement { get; init; }
    public required AttributionGraph Graph { get; init; }
    public required PruneResult Pruned { get; init; }
    public required GraphJsonInfo Info { get; init; }

    /// <summary>Writes the graph JSON (circuit-tracer's schema + FeatureLens's fields) via a temporary file.</summary>
    public void Write(string path) => GraphJson.Write(path, Graph, Pruned, Info);
}

/// <summary>
/// The whole attribution-graph pipeline, as <c>featurelens graph</c> and the web app run it: the local replacement model
/// of the prompt (<see cref="ReplacementModel.Build(HookedTransformer, CrossLayerTranscoder, int[])"/>), node selection by influence over its direct-effect rows
/// (<see cref="GraphBuilder.Build"/>), pruning (<see cref="GraphPruning.Prune"/>, or <see cref="GraphPruning.Full"/>), and the
/// JSON's metadata (token strings, transcoder list, labels as clerps).
/// </summary>
public static class GraphRun
{
    /// <summary>Builds the graph of <paramref name="tokens"/> (BOS included if the model expects it) with one transcoder per layer.</summary>
    public static GraphRunResult Compute(HookedTransformer model, IReadOnlyList<Sae> transcoders, int[] tokens, GraphRunOptions? options = null,
        FeatureLabelLookup? labels = null, string? slug = null, IReadOnlyList<string>? transcoderNames = null,
        IProgress<GraphBuildProgress>? progress = null, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(transcoders);
        ArgumentNullException.ThrowIfNull(tokens);
        options ??= new GraphRunOptions();
        options.Check();
        return Compute(model, ReplacementModel.Build(model, transcoders, tokens), tokens, options, labels, slug, transcoderNames, progress, ct);
    }

    /// <summary>Builds the graph of <paramref name="tokens"/> with a cross-layer transcoder (or a per-layer set as one).</summary>
    public static GraphRunResult Compute(HookedTransformer model, CrossLayerTranscoder transcoder, int[] tokens, GraphRunOptions? options = null,
        FeatureLabelLookup? labels = null, string? slug = null, IReadOnlyList<string>? transcoderNames = null,
        IProgress<GraphBuildProgress>? progress = null, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(transcoder);
        ArgumentNullException.ThrowIfNull(tokens);
        options ??= new GraphRunOptions();
        options.Check();
        return Compute(model, ReplacementModel.Build(model, transcoder, tokens), tokens, options, labels, slug, transcoderNames, progress, ct);
    }

    static GraphRunResult Compute(HookedTransformer model, ReplacementModel replacement, int[] tokens, GraphRunOptions options,
        FeatureLabelLookup? labels, string? slug, IReadOnlyList<string>? transcoderNames, IProgress<GraphBuildProgress>? progress, CancellationToken ct)
    {
        var graph = GraphBuilder.Build(replacement, new GraphBuildOptions { MaxFeatureNodes = options.MaxFeatureNodes, BatchSize = options.BatchSize }, progress, ct);
        var pruned = options.Prune ? GraphPruning.Prune(graph, options.NodeThreshold, options.EdgeThreshold) : GraphPruning.Full(graph);

        var tok = model.Tokenizer;
        string Token(int id) => GraphJson.DisplayToken(tok?.TokenText(id) ?? id.ToString(CultureInfo.InvariantCulture));
        string prompt = tok != null ? tok.Decode(tokens) : string.Join(",", tokens.Select(t => t.ToString(CultureInfo.InvariantCulture)));
        // transcoders by layer, for the labels (keyed by the hook each one reads) and the transcoder list
        var byLayer = replacement.Transcoders;
        var info = new GraphJsonInfo
        {
            Slug = slug ?? Slug(prompt),
            Scan = "custom-featurelens",
            TranscoderList = transcoderNames ?? byLayer.Select(t => t.Config.Metadata.HookName).ToList(),
            PromptTokens = tokens.Select(Token).ToList(),
            Prompt = prompt,
            LogitTokens = replacement.Logits.Select(l => Token(l.Index)).ToList(),
            Label = labels == null ? null : (layer, latent) => labels.Get(byLayer[layer].Config.Metadata.HookName, latent)?.Label,
        };
        return new GraphRunResult { Replacement = replacement, Graph = graph, Pruned = pruned, Info = info };
    }

    /// <summary>A file-name-safe slug from a prompt: lower-case letters and digits joined by '-', at most 48 characters.</summary>
    public static string Slug(string prompt)
    {
        ArgumentNullException.ThrowIfNull(prompt);
        var words = new List<string>();
        var cur = new System.Text.StringBuilder();
        foreach (char c in prompt.ToLowerInvariant())
        {
            if (char.IsAsciiLetterOrDigit(c)) cur.Append(c);
            else if (cur.Length > 0) { words.Add(cur.ToString()); cur.Clear(); }
        }
        if (cur.Length > 0) words.Add(cur.ToString());
        string s = string.Join('-', words);
        if (s.Length > 48) s = s[..48].TrimEnd('-');
        return s.Length == 0 ? "graph" : s;
    }
}
