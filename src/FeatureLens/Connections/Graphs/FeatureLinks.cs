namespace FeatureLens.Connections.Graphs;

/// <summary>One direct effect between a feature and a partner node on one prompt: A[target, source] of the replacement model.</summary>
public readonly record struct FeatureLink(GraphNode Partner, float Effect, float PartnerActivation);

/// <summary>A feature at one position of one prompt, its strongest upstream sources and downstream targets (by |direct effect|).</summary>
public sealed class FeatureLinksAt
{
    /// <summary>The feature node (layer, position, latent).</summary>
    public required GraphNode Feature { get; init; }
    public required float Activation { get; init; }
    /// <summary>Every source with a non-zero entry in the feature's row A[feature, ·] (features, errors, embeddings), by decreasing |effect|.</summary>
    public required IReadOnlyList<FeatureLink> Upstream { get; init; }
    /// <summary>Every active feature (later layer, position ≥ the feature's) whose row has a non-zero entry for it, by decreasing |effect|.</summary>
    public required IReadOnlyList<FeatureLink> Downstream { get; init; }
}

/// <summary>A partner aggregated over prompts: features by (layer, latent), error nodes by layer, embeddings by token.</summary>
public readonly record struct PartnerKey(GraphNodeKind Kind, int Layer, int Index)
{
    public static PartnerKey Of(GraphNode n) => n.Kind switch
    {
        GraphNodeKind.Feature => new(n.Kind, n.Layer, n.Index),
        GraphNodeKind.Error => new(n.Kind, n.Layer, -1),
        _ => new(n.Kind, -1, n.Index),
    };
}

/// <summary>
/// One partner over a prompt set. On each prompt where the feature and the partner are both active, the partner's effect is
/// the sum of its direct effects over every (feature position, partner position) pair of that prompt; <see cref="MeanAbsEffect"/>
/// and <see cref="MeanEffect"/> average it over those <see cref="Prompts"/> prompts; <see cref="SignConsistency"/> is the
/// fraction of them where its sign equals the sign of <see cref="MeanEffect"/> (a zero mean counts every prompt as disagreeing).
/// </summary>
public sealed record AggregatedLink(PartnerKey Partner, double MeanAbsEffect, double MeanEffect, double SignConsistency, int Prompts);

/// <summary>A feature's connections over a prompt set.</summary>
public sealed record AggregatedLinks(int Layer, int Latent, int PromptsTotal, int PromptsActive, IReadOnlyList<AggregatedLink> Upstream, IReadOnlyList<AggregatedLink> Downstream);

/// <summary>
/// Upstream/downstream dashboards of a transcoder feature from the direct effects of the local replacement model
/// (CONNECTIONS.md "Attribution graphs"). Upstream = the feature's own row, one backward. Downstream = the feature's column in the
/// rows of the features that can depend on it (later layers, positions at or after its position), computed in batches of
/// <c>batchSize</c> targets — never all latents × all latents.
/// </summary>
public static class FeatureLinks
{
    /// <summary>The feature's links at <paramref name="pos"/> (negative: from the end), or at every position where it is active when null.</summary>
    public static IReadOnlyList<FeatureLinksAt> OnPrompt(ReplacementModel rm, int layer, int latent, int? pos = null, int batchSize = 64)
    {
        ArgumentNullException.ThrowIfNull(rm);
        int L = rm.Config.NLayers, T = rm.Tokens.Count;
        if ((uint)layer >= (uint)L) throw new ArgumentException($"feature {layer}:{latent}: layer {layer} does not exist (the model has layers 0–{L - 1})");
        int dSae = rm.Transcoders[layer].DSae;
        if ((uint)latent >= (uint)dSae) throw new ArgumentException($"feature {layer}:{latent}: latent {latent} is outside layer {layer}'s transcoder (d_sae {dSae})");
        if (batchSize <= 0) throw new ArgumentException($"batch size must be positive (got {batchSize})", nameof(batchSize));
        IEnumerable<int> positions;
        if (pos is int p)
        {
            if (p < -T || p >= T) throw new ArgumentException($"--pos {p} is outside the prompt's {T} tokens (0–{T - 1}, or −{T}–−1 from the end)");
            int q = p < 0 ? T + p : p;
            var node = new GraphNode(GraphNodeKind.Feature, layer, q, latent);
            if (rm.SourceIndex(node) < 0) throw new ArgumentException($"feature {layer}:{latent} is not active at position {q} of the prompt");
            positions = [q];
        }
        else positions = Enumerable.Range(0, T).Where(q => rm.SourceIndex(new GraphNode(GraphNodeKind.Feature, layer, q, latent)) >= 0);
        var result = new List<FeatureLinksAt>();
        foreach (int q in positions) result.Add(At(rm, new GraphNode(GraphNodeKind.Feature, layer, q, latent), batchSize));
        return result;
    }

    static FeatureLinksAt At(ReplacementModel rm, GraphNode feature, int batchSize)
    {
        int S = rm.Sources.Count, s = rm.SourceIndex(feature);
        var row = new float[S];
        rm.ComputeRows([feature], row, new float[1], new float[1]);
        var up = new List<FeatureLink>();
        for (int i = 0; i < S; i++)
            if (row[i] != 0) up.Add(new FeatureLink(rm.Sources[i], row[i], rm.SourceActivations[i]));

        var targets = rm.Sources.Take(rm.FeatureCount).Where(n => n.Layer > feature.Layer && n.Pos >= feature.Pos).ToList();
        var down = new List<FeatureLink>();
        var rows = new float[(long)Math.Min(batchSize, Math.Max(1, targets.Count)) * S];
        for (int i = 0; i < targets.Count; i += batchSize)
        {
            int n = Math.Min(batchSize, targets.Count - i);
            rm.ComputeRows(targets.GetRange(i, n), rows.AsSpan(0, n * S), new float[n], new float[n]);
            for (int t = 0; t < n; t++)
            {
                float e = rows[(long)t * S + s];
                if (e != 0) down.Add(new FeatureLink(targets[i + t], e, rm.SourceActivations[rm.SourceIndex(targets[i + t])]));
            }
        }
        return new FeatureLinksAt
        {
            Feature = feature, Activation = rm.SourceActivations[s],
            Upstream = [.. up.OrderByDescending(l => Math.Abs(l.Effect))],
            Downstream = [.. down.OrderByDescending(l => Math.Abs(l.Effect))],
        };
    }

    /// <summary>
    /// Aggregates per-prompt links (one entry per prompt: the feature's links at each active position, empty when it is inactive)
    /// per partner (<see cref="PartnerKey"/>), sorted by decreasing mean |effect|.
    /// </summary>
    public static AggregatedLinks Aggregate(int layer, int latent, IReadOnlyList<IReadOnlyList<FeatureLinksAt>> perPrompt)
    {
        ArgumentNullException.ThrowIfNull(perPrompt);
        return new AggregatedLinks(layer, latent, perPrompt.Count, perPrompt.Count(p => p.Count > 0),
            Side(perPrompt, a => a.Upstream), Side(perPrompt, a => a.Downstream));
    }

    static List<AggregatedLink> Side(IReadOnlyList<IReadOnlyList<FeatureLinksAt>> perPrompt, Func<FeatureLinksAt, IReadOnlyList<FeatureLink>> links)
    {
        var effects = new Dictionary<PartnerKey, List<double>>();
        foreach (var prompt in perPrompt)
        {
            var sum = new Dictionary<PartnerKey, double>();
            foreach (var at in prompt)
                foreach (var l in links(at))
                {
                    var k = PartnerKey.Of(l.Partner);
                    sum[k] = sum.GetValueOrDefault(k) + l.Effect;
                }
            foreach (var (k, v) in sum)
            {
                if (!effects.TryGetValue(k, out var list)) effects[k] = list = [];
                list.Add(v);
            }
        }
        return effects.Select(kv =>
        {
            var e = kv.Value;
            double mean = e.Average(), meanAbs = e.Average(Math.Abs);
            double agree = e.Count(x => mean != 0 && Math.Sign(x) == Math.Sign(mean)) / (double)e.Count;
            return new AggregatedLink(kv.Key, meanAbs, mean, agree, e.Count);
        }).OrderByDescending(a => a.MeanAbsEffect).ThenBy(a => a.Partner.Kind).ThenBy(a => a.Partner.Layer).ThenBy(a => a.Partner.Index).ToList();
    }
}
