using System.Globalization;

namespace FeatureLens.Saes;

/// <summary>A human-readable description of an SAE: what <c>sae inspect</c> prints.</summary>
public static class SaeInspector
{
    /// <summary>
    /// (key, value) rows: format, path, architecture, hooks, model, sizes, k or threshold summary, input
    /// handling, storage dtype, decoder-norm summary, dataset, context size, Neuronpedia id.
    /// </summary>
    public static IReadOnlyList<(string Key, string Value)> Describe(Sae sae)
    {
        var c = sae.Config;
        var md = c.Metadata;
        var rows = new List<(string, string)>
        {
            ("format", string.IsNullOrEmpty(c.Format) ? "in memory" : c.Format),
            ("path", sae.SourcePath ?? "none"),
            ("architecture", SaeConfig.ArchitectureName(c.Architecture)),
            ("hook", string.IsNullOrEmpty(md.HookName) ? "not stated (set it before splicing)" : md.HookName + (md.HookHeadIndex is int h ? $" (head {h})" : "")),
        };
        if (c.IsTranscoder) rows.Add(("hook out", string.IsNullOrEmpty(md.HookNameOut) ? "not stated" : md.HookNameOut!));
        if (md.Extra.TryGetPropertyValue("sparsify_hookpoint", out var hp) && hp is not null) rows.Add(("sparsify hook point", hp.ToString()));
        rows.Add(("model", string.IsNullOrEmpty(md.ModelName) ? "not stated" : md.ModelName!));
        rows.Add(("d_in", Int(c.DIn)));
        rows.Add(("d_sae", Int(c.DSae)));
        if (c.IsTranscoder) rows.Add(("d_out", Int(c.DOut)));
        if (c.IsTopK)
        {
            rows.Add(("k", Int(c.K)));
            rows.Add(("rescale_acts_by_decoder_norm", c.RescaleActsByDecoderNorm ? "yes" : "no"));
        }
        if (c.HasThreshold && sae.Threshold is { } t) rows.Add(("threshold (min / median / max)", Summary(t)));
        rows.Add(("apply_b_dec_to_input", c.ApplyBDecToInput ? "yes" : "no"));
        rows.Add(("normalization", SaeConfig.NormalizationName(c.Normalization)));
        rows.Add(("reshape", c.ReshapeHookZ ? "hook_z (heads flattened)" : "none"));
        rows.Add(("storage dtype", c.StorageDType));
        rows.Add(("decoder norm (min / median / max)", Summary(sae.DecoderNorms)));
        rows.Add(("dataset", md.DatasetPath ?? "not stated"));
        rows.Add(("context size", md.ContextSize is int cs ? Int(cs) : "not stated"));
        rows.Add(("neuronpedia id", md.NeuronpediaId ?? "not stated"));
        return rows;
    }

    static string Int(int v) => v.ToString(CultureInfo.InvariantCulture);

    /// <summary>"min / median / max" of a vector (the median of an even count is the lower middle value).</summary>
    static string Summary(float[] values)
    {
        if (values.Length == 0) return "empty";
        var sorted = (float[])values.Clone();
        Array.Sort(sorted);
        return string.Join(" / ", new[] { sorted[0], sorted[(sorted.Length - 1) / 2], sorted[^1] }.Select(v => v.ToString("G5", CultureInfo.InvariantCulture)));
    }
}
