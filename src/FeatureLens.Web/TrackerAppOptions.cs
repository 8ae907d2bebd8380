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
}

/// <summary>What the tracker app serves and how it listens.</summary>
public sealed record TrackerAppOptions
{
    /// <summary>The model + SAE sets the user chooses between; the first is the default.</summary>
    public required IReadOnlyList<TrackerSet> Sets { get; init; }
    /// <summary>Addresses to listen on; port 0 picks a free port (read it from <c>app.Urls</c> after start).</summary>
    public IReadOnlyList<string> Urls { get; init; } = ["http://127.0.0.1:8600"];
    /// <summary>Longest prompt accepted, in characters (longer gets 413).</summary>
    public int MaxTextChars { get; init; } = 4000;
    /// <summary>Largest request body accepted, in bytes (larger gets 413).</summary>
    public long MaxRequestBytes { get; init; } = 64 * 1024;
    /// <summary>The folder of index.html, app.js (and its modules under js/), app.css and lib/ (default: wwwroot beside this assembly).</summary>
    public string? WebRoot { get; init; }
}
