namespace FeatureLens.Analysis;

/// <summary>
/// Labels of features, keyed by the hook an SAE reads (e.g. "blocks.2.hook_resid_post") and the feature index.
/// Filled by the importers and the label computation (<c>FeatureLabels</c>); read by the tracker, the network
/// builder and the web app. Reads are safe from several threads once filling is done.
/// </summary>
public sealed class FeatureLabelLookup
{
    readonly Dictionary<(string Hook, int Feature), FeatureLabel> _labels = new();

    /// <summary>Number of labelled features.</summary>
    public int Count => _labels.Count;

    /// <summary>The label of <paramref name="feature"/> of the SAE reading <paramref name="hook"/>, or null when it has none.</summary>
    public FeatureLabel? Get(string hook, int feature)
        => _labels.TryGetValue((hook, feature), out var label) ? label : null;

    /// <summary>Sets (or replaces) the label of <paramref name="feature"/> of the SAE reading <paramref name="hook"/>.</summary>
    public void Set(string hook, int feature, FeatureLabel label)
    {
        ArgumentException.ThrowIfNullOrEmpty(hook);
        ArgumentNullException.ThrowIfNull(label);
        if (feature < 0) throw new ArgumentOutOfRangeException(nameof(feature), feature, "a feature index is ≥ 0");
        _labels[(hook, feature)] = label;
    }

    /// <summary>All labels, as (hook, feature, label), ordered by hook then feature.</summary>
    public IEnumerable<(string Hook, int Feature, FeatureLabel Label)> All()
        => _labels.OrderBy(kv => kv.Key.Hook, StringComparer.Ordinal).ThenBy(kv => kv.Key.Feature)
                  .Select(kv => (kv.Key.Hook, kv.Key.Feature, kv.Value));
}
