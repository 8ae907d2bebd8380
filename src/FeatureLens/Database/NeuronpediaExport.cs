using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;

namespace FeatureLens.Database;

/// <summary>
/// Exports dashboards of a feature database as one SAEDashboard "batch" file, the JSON that SAEDashboard's Neuronpedia
/// runner writes and Neuronpedia's importer reads, so a user can still upload features scanned here. Field names are
/// pinned from:
/// <list type="bullet">
/// <item>jbloomAus/SAEDashboard <c>sae_dashboard/neuronpedia/neuronpedia_dashboard.py</c> (NeuronpediaDashboardBatch,
/// NeuronpediaDashboardFeature, NeuronpediaDashboardActivation <c>to_dict</c>: the keys of the batch, of a feature and of
/// an activation) and <c>neuronpedia_converter.py</c> (what each key holds: top examples with bin_min −1, bin_max the max
/// activation and bin_contains −1; interval examples with the interval's range and its share of firings; frac_nonzero a
/// fraction; the activation histogram as parallel bar values and heights);</item>
/// <item>hijohnnylin/neuronpedia <c>utils/neuronpedia-utils/neuronpedia_utils/convert-saedashboard-to-neuronpedia-export.py</c>
/// (<c>_process_batch</c>: reads every feature key above by name, and per activation <c>tokens</c>, <c>values</c>,
/// <c>bin_min</c>, <c>bin_max</c>, <c>bin_contains</c> and <c>qualifying_token_index</c>).</item>
/// </list>
/// What the database does not hold is written empty: neuron alignment, correlated neurons, the logit histogram, decoder
/// weight distribution and the partners' decoder cosine similarity (<c>correlated_features_l1</c>). Correlated features
/// are the partners in the same SAE (Neuronpedia indexes features within one SAE).
/// </summary>
public static class NeuronpediaExport
{
    /// <summary>The keys of every feature object, in SAEDashboard's order.</summary>
    public static readonly IReadOnlyList<string> FeatureKeys =
    [
        "feature_index", "neuron_alignment_indices", "neuron_alignment_values", "neuron_alignment_l1", "correlated_neurons_indices",
        "correlated_neurons_l1", "correlated_neurons_pearson", "correlated_features_indices", "correlated_features_l1",
        "correlated_features_pearson", "neg_str", "neg_values", "pos_str", "pos_values", "frac_nonzero", "freq_hist_data_bar_values",
        "freq_hist_data_bar_heights", "logits_hist_data_bar_heights", "logits_hist_data_bar_values", "n_prompts_total",
        "n_tokens_in_prompt", "dataset", "decoder_weights_dist", "activations",
    ];

    /// <summary>The keys of every activation (example) object.</summary>
    public static readonly IReadOnlyList<string> ActivationKeys = ["bin_min", "bin_max", "bin_contains", "tokens", "values", "qualifying_token_index"];

    /// <summary>The layer Neuronpedia files an SAE under: the block number of its hook (0 for hooks outside the blocks).</summary>
    public static int LayerOf(string hook)
    {
        var m = Regex.Match(hook, @"^blocks\.(\d+)\.");
        return m.Success ? int.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture) : 0;
    }

    /// <summary>
    /// The batch JSON for <paramref name="features"/> of <paramref name="sae"/> (each feature once, in the order given).
    /// <paramref name="saeSet"/> is Neuronpedia's SAE set name (default "featurelens"), <paramref name="modelId"/> its
    /// model id (default: the scan's model name).
    /// </summary>
    public static JsonObject Build(FeatureStore store, StoreSae sae, IReadOnlyList<int> features, string? saeSet = null, string? modelId = null)
    {
        ArgumentNullException.ThrowIfNull(store);
        ArgumentNullException.ThrowIfNull(features);
        if (features.Count == 0) throw new ArgumentException("--features: give at least one feature (or --all)");
        var dup = features.GroupBy(f => f).FirstOrDefault(g => g.Count() > 1);
        if (dup != null) throw new ArgumentException($"--features: feature {dup.Key} is listed twice");
        string model = modelId ?? store.ModelInfo.GetValueOrDefault("name") ?? "model";
        long prompts = long.TryParse(store.Meta.GetValueOrDefault("stream_windows"), NumberStyles.None, CultureInfo.InvariantCulture, out long w) ? w
            : (store.Tokens + store.Settings.Context - 1) / store.Settings.Context;
        string dataset = CorpusNames(store);
        var list = new JsonArray();
        foreach (int f in features)
        {
            var d = store.Dashboard(sae, f);
            list.Add(Feature(d, sae, prompts, store.Settings.Context, dataset));
        }
        return new JsonObject
        {
            ["model_id"] = model,
            ["layer"] = LayerOf(sae.Hook),
            ["sae_set"] = saeSet ?? "featurelens",
            ["features"] = list,
        };
    }

    static string CorpusNames(FeatureStore store)
    {
        if (store.Meta.GetValueOrDefault("corpus") is not { } c || JsonNode.Parse(c) is not JsonArray a) return "";
        return string.Join(",", a.Select(x => x?["file"]?.GetValue<string>()).Where(x => x != null));
    }

    static JsonObject Feature(FeatureDashboard d, StoreSae sae, long prompts, int context, string dataset)
    {
        var sameSae = d.Partners.Where(p => p.Sae == sae.Hook).ToList();
        var edges = d.Histogram.Edges;
        var o = new JsonObject
        {
            ["feature_index"] = d.Feature,
            ["neuron_alignment_indices"] = new JsonArray(),
            ["neuron_alignment_values"] = new JsonArray(),
            ["neuron_alignment_l1"] = new JsonArray(),
            ["correlated_neurons_indices"] = new JsonArray(),
            ["correlated_neurons_l1"] = new JsonArray(),
            ["correlated_neurons_pearson"] = new JsonArray(),
            ["correlated_features_indices"] = Numbers(sameSae.Select(p => (double)p.Feature), integer: true),
            ["correlated_features_l1"] = new JsonArray(),
            ["correlated_features_pearson"] = Numbers(sameSae.Select(p => p.R)),
            ["neg_str"] = Strings(d.Logits?.Bottom.Select(t => t.Text) ?? []),
            ["neg_values"] = Numbers(d.Logits?.Bottom.Select(t => (double)t.Value) ?? []),
            ["pos_str"] = Strings(d.Logits?.Top.Select(t => t.Text) ?? []),
            ["pos_values"] = Numbers(d.Logits?.Top.Select(t => (double)t.Value) ?? []),
            ["frac_nonzero"] = d.Frequency,
            // parallel arrays: each bar's centre and its count (edges has one more entry than counts)
            ["freq_hist_data_bar_values"] = Numbers(d.Histogram.Counts.Select((_, i) => 0.5 * (edges[i] + edges[i + 1]))),
            ["freq_hist_data_bar_heights"] = Numbers(d.Histogram.Counts.Select(c => (double)c), integer: true),
            ["logits_hist_data_bar_heights"] = new JsonArray(),
            ["logits_hist_data_bar_values"] = new JsonArray(),
            ["n_prompts_total"] = prompts,
            ["n_tokens_in_prompt"] = context,
            ["dataset"] = dataset,
            ["decoder_weights_dist"] = new JsonArray(),
        };
        var acts = new JsonArray();
        foreach (var e in d.Top) acts.Add(Activation(e, -1, d.Max, -1));
        foreach (var e in d.Quantiles)
        {
            var iv = d.Intervals[e.Interval ?? throw new InvalidDataException($"quantile example of {d.Sae} {d.Feature} has no interval")];
            acts.Add(Activation(e, iv.Lower, iv.Upper, iv.Fraction));
        }
        o["activations"] = acts;
        return o;
    }

    static JsonObject Activation(DashboardExample e, double binMin, double binMax, double binContains) => new()
    {
        ["bin_min"] = binMin,
        ["bin_max"] = binMax,
        ["bin_contains"] = binContains,
        ["tokens"] = Strings(e.Text),
        ["values"] = Numbers(e.Values.Select(v => (double)v)),
        ["qualifying_token_index"] = e.Pos,
    };

    static JsonArray Strings(IEnumerable<string> xs) => new([.. xs.Select(x => (JsonNode)JsonValue.Create(x))]);

    static JsonArray Numbers(IEnumerable<double> xs, bool integer = false) =>
        new([.. xs.Select(x => (JsonNode)(integer ? JsonValue.Create((long)x) : JsonValue.Create(x)))]);

    /// <summary>Writes the batch to <paramref name="path"/> (a temporary file beside it, moved into place).</summary>
    public static void Write(string path, JsonObject batch)
    {
        ArgumentNullException.ThrowIfNull(batch);
        string full = Path.GetFullPath(path);
        string dir = Path.GetDirectoryName(full)!;
        if (!Directory.Exists(dir)) throw new DirectoryNotFoundException($"--out: folder {dir} does not exist");
        string tmp = full + ".tmp";
        File.WriteAllText(tmp, batch.ToJsonString(new JsonSerializerOptions { WriteIndented = false }));
        File.Move(tmp, full, overwrite: true);
    }

    /// <summary>Parses "1,2,3" into feature indices of an SAE of <paramref name="dSae"/> latents, with a clear error.</summary>
    public static List<int> ParseFeatures(string text, int dSae)
    {
        ArgumentNullException.ThrowIfNull(text);
        var list = new List<int>();
        foreach (var part in text.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries))
        {
            if (!int.TryParse(part, NumberStyles.None, CultureInfo.InvariantCulture, out int f))
                throw new ArgumentException($"--features: '{part}' is not a feature index (give a list like 1,2,3)");
            if (f >= dSae) throw new ArgumentException($"--features: feature {f} is outside [0, {dSae})");
            list.Add(f);
        }
        if (list.Count == 0) throw new ArgumentException("--features: the list is empty (give a list like 1,2,3, or --all)");
        return list;
    }
}
