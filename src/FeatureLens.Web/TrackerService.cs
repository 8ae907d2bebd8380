using FeatureLens.Analysis;

namespace FeatureLens.Web;

/// <summary>POST /api/track body. Missing fields take the defaults of <see cref="TrackOptions"/>.</summary>
public sealed record TrackRequest(string? Set, string? Text, int? Top = null, string? RankBy = null, int? TokenIndex = null, double? Threshold = null);

/// <summary>/api/feature query or body: feature <see cref="Feature"/> of the SAE named <see cref="Sae"/> ("L2 resid_post" or its hook) on <see cref="Text"/>.</summary>
public sealed record FeatureRequest(string? Set, string? Sae, int? Feature, string? Text);

/// <summary>GET /api/sets: what the server offers and the limits of a request.</summary>
public sealed record SetsResponse(IReadOnlyList<SetInfo> Sets, RequestLimits Limits);

/// <summary>A set as the page sees it; <see cref="TranscoderSet"/> names the set that holds its transcoders (null when it has none).</summary>
public sealed record SetInfo(string Name, string? Model, string Architecture, int Layers, int DModel, int NCtx, int Labels, IReadOnlyList<SaeInfo> Saes,
    string? TranscoderSet = null);

public sealed record SaeInfo(int Index, string Name, string Hook, int Layer, int DSae, string Architecture, int K);

public sealed record RequestLimits(int MaxTextChars, long MaxRequestBytes, int TopMin, int TopMax, double ThresholdMin, double ThresholdMax);

/// <summary>/api/feature: one feature on one text, with its label and its evolution across the set's other SAEs.</summary>
public sealed record FeatureResponse
{
    public required string Set { get; init; }
    public required string Id { get; init; }
    public required int SaeIndex { get; init; }
    public required string Sae { get; init; }
    public required string Hook { get; init; }
    public required int Layer { get; init; }
    public required int Feature { get; init; }
    public required string[] Tokens { get; init; }
    /// <summary>Activation at every token (BOS included).</summary>
    public required float[] PerToken { get; init; }
    public required double Max { get; init; }
    public required double Mean { get; init; }
    public FeatureLabel? Label { get; init; }
    /// <summary>Its best matches in the other SAEs and its chain of decoder matches with their activations on the text.</summary>
    public required EvolutionResult Evolution { get; init; }
}

/// <summary>The API's work: validates requests against the limits and calls the analysis library. One request at a time per set (a model's forward pass is not shared between threads).</summary>
internal sealed class TrackerService(TrackerAppOptions options)
{
    public const int TopMin = 5, TopMax = 20;
    public const double ThresholdMin = 0.1, ThresholdMax = 0.9;

    readonly Dictionary<string, (TrackerSet Set, object Gate)> _sets = AllSets(options.Sets);

    /// <summary>The sets, and for each set with transcoders a set of its transcoders (sharing its model and so its lock).</summary>
    static Dictionary<string, (TrackerSet Set, object Gate)> AllSets(IReadOnlyList<TrackerSet> sets)
    {
        var all = new Dictionary<string, (TrackerSet Set, object Gate)>(StringComparer.OrdinalIgnoreCase);
        foreach (var s in sets) all[s.Name] = (s, new object());
        foreach (var s in sets)
        {
            if (s.Transcoders is not { Count: > 0 } tcs || s.TracksTranscoders) continue;
            if (all.ContainsKey(s.TranscoderSetName)) throw new ArgumentException($"the set '{s.TranscoderSetName}' clashes with the transcoders of set '{s.Name}': rename one");
            var derived = new TrackerSet { Name = s.TranscoderSetName, Set = new SaeSet(s.Set.Model, tcs), Labels = s.Labels, ModelSource = s.ModelSource };
            all[derived.Name] = (derived, all[s.Name].Gate);
        }
        return all;
    }

    /// <summary>Every set the tracker offers: the configured ones, each followed by its transcoders' set.</summary>
    IEnumerable<TrackerSet> Listed => options.Sets.SelectMany(s => s.Transcoders is { Count: > 0 } && !s.TracksTranscoders ? new[] { s, _sets[s.TranscoderSetName].Set } : [s]);

    public SetsResponse Describe() => new(
        Listed.Select(s => new SetInfo(s.Name, s.ModelSource, s.Set.Model.Config.Architecture.ToString(), s.Set.Model.Config.NLayers,
            s.Set.Model.Config.DModel, s.Set.Model.Config.NCtx, s.Labels?.Count ?? 0,
            s.Set.Saes.Select((sae, i) => new SaeInfo(i, s.Set.Names[i], s.Set.Hooks[i], s.Set.Layers[i], sae.DSae, sae.Config.Architecture.ToString(), sae.Config.K)).ToList(),
            s.Transcoders is { Count: > 0 } ? s.TranscoderSetName : null)).ToList(),
        new RequestLimits(options.MaxTextChars, options.MaxRequestBytes, TopMin, TopMax, ThresholdMin, ThresholdMax));

    public TrackResult Track(TrackRequest req)
    {
        var (set, gate) = FindSet(req.Set);
        string text = CheckText(set, req.Text);
        int top = req.Top ?? 10;
        if (top is < TopMin or > TopMax) throw new ApiException(400, $"top must be between {TopMin} and {TopMax} (got {top})");
        double threshold = req.Threshold ?? 0.5;
        if (!(threshold >= ThresholdMin && threshold <= ThresholdMax)) throw new ApiException(400, $"threshold must be between {ThresholdMin} and {ThresholdMax} (got {threshold})");
        var rankBy = ParseRankBy(req.RankBy);
        if (rankBy == RankBy.AtToken && req.TokenIndex is null) throw new ApiException(400, "rankBy atToken needs tokenIndex (the token position to rank by)");
        var opts = new TrackOptions { TopN = top, RankBy = rankBy, TokenIndex = req.TokenIndex, CorrelationThreshold = threshold };
        lock (gate) return FeatureTracker.Track(set.Set, text, opts, set.Labels);
    }

    public FeatureResponse Feature(FeatureRequest req)
    {
        var (set, gate) = FindSet(req.Set);
        string text = CheckText(set, req.Text);
        if (string.IsNullOrWhiteSpace(req.Sae)) throw new ApiException(400, "sae is missing: give the SAE's name (e.g. \"L2 resid_post\") or its hook");
        int saeIndex = FindSae(set, req.Sae);
        int dSae = set.Set.Saes[saeIndex].DSae;
        if (req.Feature is not int feature) throw new ApiException(400, "feature is missing: give the feature index");
        if (feature < 0 || feature >= dSae) throw new ApiException(400, $"{set.Set.Names[saeIndex]} has no feature {feature} (its features are 0..{dSae - 1})");
        lock (gate) return Details(set, text, saeIndex, feature);
    }

    static FeatureResponse Details(TrackerSet set, string text, int saeIndex, int feature)
    {
        var evolution = FeatureEvolution.Analyze(set.Set, saeIndex, feature, text, labels: set.Labels);
        // the tracked feature is the chain link of its own SAE
        var self = evolution.Chain.First(c => c.SaeIndex == saeIndex);
        return new FeatureResponse
        {
            Set = set.Name, Id = CorrelationNetwork.NodeId(set.Set, saeIndex, feature), SaeIndex = saeIndex, Sae = set.Set.Names[saeIndex],
            Hook = set.Set.Hooks[saeIndex], Layer = set.Set.Layers[saeIndex], Feature = feature, Tokens = evolution.Tokens,
            PerToken = self.PerToken, Max = self.Max, Mean = self.Mean, Label = evolution.Label, Evolution = evolution,
        };
    }

    /// <summary>The set named <paramref name="name"/> (the first when none is named) and the lock its requests take.</summary>
    internal (TrackerSet Set, object Gate) FindSet(string? name)
    {
        if (options.Sets.Count == 0) throw new ApiException(400, "this server has no model + SAE sets (it serves feature databases only; start it with --model and --sae to use the tracker)");
        if (string.IsNullOrWhiteSpace(name)) return _sets[options.Sets[0].Name];
        return _sets.TryGetValue(name, out var s) ? s
            : throw new ApiException(400, $"unknown set '{name}' (this server has: {string.Join(", ", Listed.Select(x => x.Name))})");
    }

    internal static int FindSae(TrackerSet set, string name)
    {
        for (int i = 0; i < set.Set.Saes.Count; i++)
            if (string.Equals(set.Set.Names[i], name, StringComparison.OrdinalIgnoreCase) || set.Set.Hooks[i] == name) return i;
        throw new ApiException(400, $"unknown SAE '{name}' in set '{set.Name}' (have: {string.Join(", ", set.Set.Names)})");
    }

    /// <summary>Checks a prompt against the limits (empty, too many characters, longer than the model's context).</summary>
    internal string CheckText(TrackerSet set, string? text)
    {
        if (string.IsNullOrWhiteSpace(text)) throw new ApiException(400, "the text is empty: type a prompt to analyse");
        if (text.Length > options.MaxTextChars)
            throw new ApiException(413, $"the text is {text.Length} characters; the limit is {options.MaxTextChars}");
        var model = set.Set.Model;
        var tok = model.Tokenizer ?? throw new ApiException(400, $"the model of set '{set.Name}' has no tokenizer, so it cannot read text");
        int n = tok.Encode(text, addBos: true).Length;
        if (n > model.Config.NCtx)
            throw new ApiException(413, $"the text is {n} tokens; this model reads at most {model.Config.NCtx}");
        return text;
    }

    static RankBy ParseRankBy(string? s) => s?.Trim().ToLowerInvariant() switch
    {
        null or "" or "max" => RankBy.Max,
        "mean" => RankBy.Mean,
        "attoken" or "at_token" or "token" => RankBy.AtToken,
        _ => throw new ApiException(400, $"rankBy must be max, mean or atToken (got '{s}')"),
    };
}
