using FeatureLens.Analysis;

namespace FeatureLens.Web;

/// <summary>A model with its SAEs as the app offers it: a name to pick it by, and the labels known for its features.</summary>
public sealed record TrackerSet
{
    /// <summary>The name the page and the API use ("stories260K").</summary>
    public required string Name { get; init; }
    public required SaeSet Set { get; init; }
    public FeatureLabelLookup? Labels { get; init; }
    /// <summary>Where the model was loaded from, shown on the page.</summary>
    public string? ModelSource { get; init; }
    /// <summary>
    /// One transcoder per layer (reading the MLP's input, writing blocks.L.hook_mlp_out) for attribution graphs; null
    /// when the set has none. The tracker also offers them as a set of their own, named <see cref="TranscoderSetName"/>.
    /// </summary>
    public IReadOnlyList<FeatureLens.Saes.Sae>? Transcoders { get; init; }

    /// <summary>True when the set's SAEs are its transcoders (a set served with transcoders only).</summary>
    public bool TracksTranscoders => Transcoders is { Count: > 0 } t && t.All(x => Set.Saes.Contains(x));

    /// <summary>The name of the tracker set holding this set's transcoders: its own, or "stories260K transcoders".</summary>
    public string TranscoderSetName => TracksTranscoders ? Name : Name + " transcoders";
}

/// <summary>What the tracker app serves and how it listens.</summary>
public sealed record TrackerAppOptions
{
    /// <summary>The model + SAE sets the user chooses between; the first is the default (none when only databases are served).</summary>
    public IReadOnlyList<TrackerSet> Sets { get; init; } = [];
    /// <summary>Feature databases (featurelens scan) whose feature pages the app serves; each is named by its file name without the extension.</summary>
    public IReadOnlyList<string> Databases { get; init; } = [];
    /// <summary>Clusters files (featurelens cluster --out) the cluster view shows; each is named by its file name without the extension.</summary>
    public IReadOnlyList<string> Clusters { get; init; } = [];
    /// <summary>Addresses to listen on; port 0 picks a free port (read it from <c>app.Urls</c> after start).</summary>
    public IReadOnlyList<string> Urls { get; init; } = ["http://127.0.0.1:8600"];
    /// <summary>Longest prompt accepted, in characters (longer gets 413).</summary>
    public int MaxTextChars { get; init; } = 4000;
    /// <summary>Largest request body accepted, in bytes (larger gets 413).</summary>
    public long MaxRequestBytes { get; init; } = 64 * 1024;
    /// <summary>The folder of index.html, app.js (and its modules under js/), app.css and lib/ (default: wwwroot beside this assembly).</summary>
    public string? WebRoot { get; init; }
    /// <summary>The folder of saved graph files the graph page lists, where computed graphs are saved (default: a folder under the system's temp folder).</summary>
    public string? GraphsFolder { get; init; }
    /// <summary>How many graphs the server holds in memory for exact re-pruning (least recently used dropped first).</summary>
    public int GraphCacheSize { get; init; } = 4;
    /// <summary>The largest max-feature-nodes a compute request may ask for.</summary>
    public int MaxGraphFeatureNodes { get; init; } = 7500;
}
