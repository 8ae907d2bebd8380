using FeatureLens.Analysis;
using FeatureLens.Connections;

namespace FeatureLens.Web;

/// <summary>POST /api/predictions body: the model's most likely next tokens after <see cref="Text"/> (<see cref="Top"/> of them, default 10).</summary>
public sealed record PredictionsRequest(string? Set, string? Text, int? Top = null);

/// <summary>One candidate next token: its id, text, probability and logit at the prompt's last position.</summary>
public sealed record Prediction(int Id, string Token, double Probability, double Logit);

/// <summary>/api/predictions: the prompt's tokens (BOS first) and the top next-token predictions after its last one.</summary>
public sealed record PredictionsResponse(string Set, string[] Tokens, int Position, IReadOnlyList<Prediction> Predictions);

/// <summary>
/// POST /api/attribute body: node effects of every SAE of the set on <see cref="Metric"/> (the CLI's metric grammar),
/// corrupting to <see cref="Corrupt"/> (same token length as <see cref="Clean"/>) or, with <see cref="Ablation"/> "zero",
/// to zero; <see cref="Method"/> "gradient" (default) or "ig" with <see cref="Steps"/>; the <see cref="Top"/> nodes by |effect|.
/// </summary>
public sealed record AttributeRequest(string? Set, string? Clean, string? Corrupt = null, string? Ablation = null, string? Metric = null,
    string? Method = null, int? Steps = null, int? Top = null);

/// <summary>The metric on the clean run and on the corrupt run (null under zero ablation).</summary>
public sealed record MetricValues(string Name, double Clean, double? Corrupt);

/// <summary>A node of the ranked table: an SAE latent (<see cref="Feature"/> set) or an SAE's error term at a position.</summary>
public sealed record CircuitNode(string Hook, string Sae, int SaeIndex, string Kind, int? Feature, int Pos, int Layer, string Token,
    double Effect, double? Clean, double? Corrupt, FeatureLabel? Label);

/// <summary>
/// The heatmap: one row per SAE hook (<see cref="Rows"/> its display name), one column per clean token; <see cref="Abs"/> sums
/// |effect| over the hook's nodes (latents and error) at that position, <see cref="Sum"/> sums the signed effects (for the
/// gradient method the signed sum is the attribution of patching that position's whole activation at the hook).
/// </summary>
public sealed record EffectGrid(IReadOnlyList<string> Rows, IReadOnlyList<string> Hooks, IReadOnlyList<int> Layers, double[][] Abs, double[][] Sum);

/// <summary>/api/attribute: the metric, the clean prompt's tokens, the top nodes by |effect| and the layer × position grid.</summary>
public sealed record AttributeResponse
{
    public required string Set { get; init; }
    public required MetricValues Metric { get; init; }
    /// <summary>"gradient" or "ig".</summary>
    public required string Method { get; init; }
    public int? Steps { get; init; }
    /// <summary>"corrupt" or "zero".</summary>
    public required string Ablation { get; init; }
    /// <summary>The clean prompt's tokens (BOS first); node positions index them.</summary>
    public required string[] Tokens { get; init; }
    /// <summary>The corrupt prompt's tokens (null under zero ablation).</summary>
    public string[]? CorruptTokens { get; init; }
    /// <summary>How many nodes attribution reported (every latent active on either run and every error node).</summary>
    public required int TotalNodes { get; init; }
    /// <summary>Σ effect over every node (for the gradient method, the linear estimate of m(corrupt) − m(clean) through the SAE hooks).</summary>
    public required double TotalEffect { get; init; }
    /// <summary>The <c>top</c> nodes by |effect|, largest first.</summary>
    public required IReadOnlyList<CircuitNode> Nodes { get; init; }
    public required EffectGrid Grid { get; init; }
}

/// <summary>
/// The Circuits view's work: next-token predictions for the metric picker, and attribution patching over a set's SAEs
/// (<see cref="Attribution.Run"/>, SAEs spliced with their error terms). Requests take the set's lock, as the tracker's do.
/// </summary>
internal sealed class CircuitService(TrackerService tracker)
{
    public const int PredictionsMin = 1, PredictionsMax = 50, TopNodesMin = 1, TopNodesMax = 500, StepsMin = 1, StepsMax = 64;

    public PredictionsResponse Predictions(PredictionsRequest req)
    {
        var (set, gate) = tracker.FindSet(req.Set);
        string text = Checked(set, req.Text, "text");
        int top = req.Top ?? 10;
        if (top is < PredictionsMin or > PredictionsMax) throw new ApiException(400, $"top must be between {PredictionsMin} and {PredictionsMax} (got {top})");
        var ids = FeatureTracker.Encode(set.Set, text);
        float[] last;
        lock (gate)
        {
            var logits = set.Set.Model.Forward(ids);
            int vocab = logits.Shape[^1];
            last = logits.Data.AsSpan((ids.Length - 1) * vocab, vocab).ToArray();
        }
        double max = last.Max(), z = last.Sum(l => Math.Exp(l - max));
        var tok = set.Set.Model.Tokenizer!;
        var best = Enumerable.Range(0, last.Length).OrderByDescending(i => last[i]).ThenBy(i => i).Take(top)
            .Select(i => new Prediction(i, tok.Decode([i]), Math.Exp(last[i] - max) / z, last[i])).ToList();
        return new PredictionsResponse(set.Name, FeatureTracker.TokenTexts(set.Set, ids), ids.Length - 1, best);
    }

    public AttributeResponse Attribute(AttributeRequest req)
    {
        var (set, gate) = tracker.FindSet(req.Set);
        var method = req.Method?.Trim().ToLowerInvariant() switch
        {
            null or "" or "gradient" => AttributionMethod.Gradient,
            "ig" or "integrated-gradients" => AttributionMethod.IntegratedGradients,
            _ => throw new ApiException(400, $"method must be gradient or ig (got '{req.Method}')"),
        };
        int steps = req.Steps ?? 10;
        if (steps is < StepsMin or > StepsMax) throw new ApiException(400, $"steps must be between {StepsMin} and {StepsMax} (got {steps})");
        int top = req.Top ?? 50;
        if (top is < TopNodesMin or > TopNodesMax) throw new ApiException(400, $"top must be between {TopNodesMin} and {TopNodesMax} (got {top})");
        var ablation = req.Ablation?.Trim().ToLowerInvariant() switch
        {
            null or "" or "corrupt" or "none" => AblationKind.Corrupt,
            "zero" => AblationKind.Zero,
            "mean" => throw new ApiException(400, "ablation 'mean' needs corpus means, which the web app does not load: give a corrupt prompt or ablation \"zero\""),
            _ => throw new ApiException(400, $"ablation must be zero (or left out, with a corrupt prompt) (got '{req.Ablation}')"),
        };
        if (string.IsNullOrWhiteSpace(req.Clean)) throw new ApiException(400, "clean is empty: type the clean prompt");
        string clean = Checked(set, req.Clean, "clean");
        string? corrupt = null;
        if (ablation == AblationKind.Corrupt)
        {
            if (string.IsNullOrWhiteSpace(req.Corrupt))
                throw new ApiException(400, "corrupt is empty: type a corrupt prompt of the same token length as the clean one, or set ablation to \"zero\"");
            corrupt = Checked(set, req.Corrupt, "corrupt");
        }
        else if (!string.IsNullOrWhiteSpace(req.Corrupt))
            throw new ApiException(400, "corrupt and ablation \"zero\" were both given: choose one");
        if (string.IsNullOrWhiteSpace(req.Metric)) throw new ApiException(400, "metric is missing: give one such as logit-diff:T1,T2 (token ids)");
        Metric metric;
        try { metric = Connections.Metric.Parse(req.Metric); }
        catch (ArgumentException e) { throw new ApiException(400, e.Message); }

        var cleanIds = FeatureTracker.Encode(set.Set, clean);
        var corruptIds = corrupt is null ? null : FeatureTracker.Encode(set.Set, corrupt);
        if (corruptIds != null && corruptIds.Length != cleanIds.Length)
            throw new ApiException(400, $"clean and corrupt must have the same token length: clean is {cleanIds.Length} tokens, corrupt is {corruptIds.Length} (BOS included)");

        EffectsResult result;
        lock (gate)
        {
            var ctx = new CircuitContext(set.Set.Model, set.Set.Saes, [cleanIds], [metric], corruptIds is null ? null : [corruptIds], ablation);
            result = Attribution.Run(ctx, new NodeSelection { Saes = true }, method, steps);
        }
        return Shape(set, result, ablation, cleanIds, corruptIds, top);
    }

    /// <summary>The response: nodes ranked by |effect| (ties in the library's order), labels, and the hook × position grid.</summary>
    static AttributeResponse Shape(TrackerSet set, EffectsResult result, AblationKind ablation, int[] cleanIds, int[]? corruptIds, int top)
    {
        var s = set.Set;
        string[] tokens = FeatureTracker.TokenTexts(s, cleanIds);
        var saeOf = Enumerable.Range(0, s.Hooks.Count).ToDictionary(i => s.Hooks[i], StringComparer.Ordinal);
        int len = cleanIds.Length;
        var abs = s.Hooks.Select(_ => new double[len]).ToArray();
        var sum = s.Hooks.Select(_ => new double[len]).ToArray();
        foreach (var n in result.Nodes)
        {
            if (!saeOf.TryGetValue(n.Node.Hook, out int i) || n.Node.Pos < 0 || n.Node.Pos >= len) continue;
            abs[i][n.Node.Pos] += Math.Abs(n.Effect);
            sum[i][n.Node.Pos] += n.Effect;
        }
        var nodes = result.Nodes.OrderByDescending(n => Math.Abs(n.Effect)).Take(top).Select(n =>
        {
            int i = saeOf[n.Node.Hook];
            var label = n.Node.Kind == NodeKind.Feature && n.Node.Index is int f ? set.Labels?.Get(n.Node.Hook, f) : null;
            return new CircuitNode(n.Node.Hook, s.Names[i], i, n.Node.KindName, n.Node.Index, n.Node.Pos, s.Layers[i], tokens[n.Node.Pos],
                n.Effect, n.Clean, n.Corrupt, label);
        }).ToList();
        return new AttributeResponse
        {
            Set = set.Name,
            Metric = new MetricValues(result.Metric, result.Clean, result.Corrupt),
            Method = EffectsJson.MethodName(result.Method),
            Steps = result.Steps,
            Ablation = ablation == AblationKind.Zero ? "zero" : "corrupt",
            Tokens = tokens,
            CorruptTokens = corruptIds is null ? null : FeatureTracker.TokenTexts(s, corruptIds),
            TotalNodes = result.Nodes.Count,
            TotalEffect = result.Nodes.Sum(n => n.Effect),
            Nodes = nodes,
            Grid = new EffectGrid(s.Names, s.Hooks, s.Layers, abs, sum),
        };
    }

    /// <summary>The tracker's text checks (empty, too long, beyond the context), their message naming the field.</summary>
    string Checked(TrackerSet set, string? text, string field)
    {
        try { return tracker.CheckText(set, text); }
        catch (ApiException e) { throw new ApiException(e.Status, $"{field}: {e.Message}"); }
    }
}
