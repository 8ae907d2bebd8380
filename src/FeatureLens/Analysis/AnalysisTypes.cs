using System.Text.Json.Serialization;
using FeatureLens.Runtime.Models;
using FeatureLens.Saes;

namespace FeatureLens.Analysis;

/// <summary>
/// A model with SAEs at several hook points — the unit every analysis works on. SAEs are ordered by layer
/// (then hook name); <see cref="Names"/> gives each a short display name such as "L2 resid_post". Each SAE's
/// encoder is packed for the GEMM once (<see cref="Sae.PrepackEncoder"/>: a second copy of W_enc in memory).
/// </summary>
public sealed class SaeSet
{
    public HookedTransformer Model { get; }
    public IReadOnlyList<Sae> Saes { get; }
    /// <summary>The hook each SAE reads, in the same order.</summary>
    public IReadOnlyList<string> Hooks { get; }
    /// <summary>The block index of each hook (−1 outside blocks).</summary>
    public IReadOnlyList<int> Layers { get; }
    /// <summary>Short display names ("L2 resid_post").</summary>
    public IReadOnlyList<string> Names { get; }

    public SaeSet(HookedTransformer model, IEnumerable<Sae> saes)
    {
        Model = model;
        var list = saes.Select(s => (Sae: s, Splice: new SaeSplice(s))).ToList();
        if (list.Count == 0) throw new ArgumentException("an SAE set needs at least one SAE");
        foreach (var (_, splice) in list) splice.Validate(model);
        list = list.OrderBy(x => LayerOf(x.Splice.InputHook)).ThenBy(x => x.Splice.InputHook, StringComparer.Ordinal).ToList();
        var dup = list.GroupBy(x => x.Splice.InputHook).FirstOrDefault(g => g.Count() > 1);
        if (dup != null) throw new ArgumentException($"two SAEs read the same hook '{dup.Key}'; an SAE set holds one SAE per hook");
        Saes = list.Select(x => x.Sae).ToList();
        Hooks = list.Select(x => x.Splice.InputHook).ToList();
        Layers = Hooks.Select(LayerOf).ToList();
        Names = Hooks.Select(ShortName).ToList();
        // analyses encode a few tokens at a time, again and again: pack each encoder once
        foreach (var sae in Saes) sae.PrepackEncoder();
    }

    /// <summary>Index of the SAE reading <paramref name="hook"/>, or of the SAE named <paramref name="hook"/> ("L2 resid_post").</summary>
    public int IndexOf(string hook)
    {
        for (int i = 0; i < Hooks.Count; i++) if (Hooks[i] == hook || Names[i] == hook) return i;
        throw new ArgumentException($"no SAE in this set reads '{hook}' (have: {string.Join(", ", Hooks)})");
    }

    public static int LayerOf(string hook)
    {
        if (!hook.StartsWith("blocks.", StringComparison.Ordinal)) return -1;
        int dot = hook.IndexOf('.', 7);
        return dot > 7 && int.TryParse(hook.AsSpan(7, dot - 7), NumberStyles.None, CultureInfo.InvariantCulture, out int l) ? l : -1;
    }

    /// <summary>"blocks.2.hook_resid_post" → "L2 resid_post"; "blocks.1.attn.hook_z" → "L1 attn.z".</summary>
    public static string ShortName(string hook)
    {
        int layer = LayerOf(hook);
        string rest = layer >= 0 ? hook[(hook.IndexOf('.', 7) + 1)..] : hook;
        rest = rest.Replace("hook_", "");
        return layer >= 0 ? $"L{layer} {rest}" : rest;
    }
}

/// <summary>How top features are ranked for a prompt.</summary>
[JsonConverter(typeof(JsonStringEnumConverter<RankBy>))]
public enum RankBy { Max, Mean, AtToken }

/// <summary>A feature's identity and what is known about it.</summary>
public sealed record FeatureRef(int SaeIndex, int Feature);

/// <summary>A label for a feature, imported (Neuronpedia, CSV) or computed from a labelled prompt set.</summary>
public sealed record FeatureLabel
{
    public required string Label { get; init; }
    /// <summary>F1 of "the feature fires" as a detector of <see cref="Label"/>'s category (computed labels, or from CSV).</summary>
    public double? F1 { get; init; }
    public double? Precision { get; init; }
    public double? Recall { get; init; }
    /// <summary>Share of the feature's total activation that falls on its category.</summary>
    public double? Specialization { get; init; }
    /// <summary>"neuronpedia", "csv" or "computed".</summary>
    public required string Source { get; init; }
}

/// <summary>One node of a correlation network: a feature of one SAE.</summary>
public sealed record NetworkNode(string Id, int SaeIndex, string Sae, int Layer, int Feature, double MaxActivation, int Degree, string? Label);

/// <summary>An edge between features of different SAEs with Pearson correlation R (|R| ≥ the threshold).</summary>
public sealed record NetworkEdge(string Source, string Target, double R);

/// <summary>Features as nodes, cross-layer correlations above a threshold as edges, with components and hubs.</summary>
public sealed record CorrelationNetwork
{
    public required double Threshold { get; init; }
    /// <summary>Tokens the correlations were computed over.</summary>
    public required long Tokens { get; init; }
    public required IReadOnlyList<NetworkNode> Nodes { get; init; }
    public required IReadOnlyList<NetworkEdge> Edges { get; init; }
    /// <summary>Connected components (node ids), largest first; isolated nodes are left out.</summary>
    public required IReadOnlyList<IReadOnlyList<string>> Components { get; init; }
    /// <summary>Node ids of the highest-degree nodes, highest first.</summary>
    public required IReadOnlyList<string> Hubs { get; init; }

    /// <summary>The node id of a feature: "{sae name}:{feature}", e.g. "L2 resid_post:431".</summary>
    public static string NodeId(SaeSet set, int saeIndex, int feature) => $"{set.Names[saeIndex]}:{feature}";
}

/// <summary>Options of a tracking run on one prompt.</summary>
public sealed record TrackOptions
{
    /// <summary>Features shown per SAE (the app allows 5–20).</summary>
    public int TopN { get; init; } = 10;
    public RankBy RankBy { get; init; } = RankBy.Max;
    /// <summary>The token position ranked by when <see cref="RankBy"/> is AtToken.</summary>
    public int? TokenIndex { get; init; }
    /// <summary>Minimum |Pearson r| for an edge of the prompt's correlation network (0.1–0.9 in the app).</summary>
    public double CorrelationThreshold { get; init; } = 0.5;
    /// <summary>Leave the BOS position out of rankings and correlations (its activations are outliers).</summary>
    public bool SkipBos { get; init; } = true;
}

/// <summary>A feature as seen on one prompt.</summary>
public sealed record FeatureActivation
{
    public required int Feature { get; init; }
    /// <summary>The value it was ranked by (max, mean, or the activation at the chosen token).</summary>
    public required double Score { get; init; }
    public required double Max { get; init; }
    public required double Mean { get; init; }
    /// <summary>Activation at every token of the prompt (BOS included, 0 where it did not fire).</summary>
    public required float[] PerToken { get; init; }
    public FeatureLabel? Label { get; init; }
}

/// <summary>One SAE's view of the prompt.</summary>
public sealed record LayerActivations
{
    public required int SaeIndex { get; init; }
    public required string Name { get; init; }
    public required string Hook { get; init; }
    public required int Layer { get; init; }
    public required int DSae { get; init; }
    /// <summary>Features that fired anywhere on the prompt.</summary>
    public required int ActiveFeatures { get; init; }
    /// <summary>Mean number of active features per token.</summary>
    public required double MeanL0 { get; init; }
    public required IReadOnlyList<FeatureActivation> Top { get; init; }
}

/// <summary>Layer × feature heatmap: rows are SAEs, columns the union of their top features ("L2 resid_post:431"), values the ranking score (0 where a feature belongs to another SAE).</summary>
public sealed record ActivationHeatmap(IReadOnlyList<string> Rows, IReadOnlyList<string> Columns, double[][] Values);

/// <summary>Everything the tracker shows for one prompt.</summary>
public sealed record TrackResult
{
    public required string Text { get; init; }
    public required int[] TokenIds { get; init; }
    /// <summary>Each token's text, for highlighting.</summary>
    public required string[] Tokens { get; init; }
    public required TrackOptions Options { get; init; }
    public required IReadOnlyList<LayerActivations> Layers { get; init; }
    public required ActivationHeatmap Heatmap { get; init; }
    /// <summary>Correlations over this prompt's tokens between the shown (top) features of different SAEs.</summary>
    public required CorrelationNetwork Network { get; init; }
}
