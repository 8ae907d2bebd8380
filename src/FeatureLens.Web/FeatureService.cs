using System.Collections.Concurrent;
using System.Globalization;
using System.Text.Json.Nodes;
using System.Text.Json.Serialization;
using FeatureLens.Connections;
using FeatureLens.Database;

namespace FeatureLens.Web;

/// <summary>An SAE of a served feature database.</summary>
public sealed record DatabaseSaeInfo(
    [property: JsonPropertyName("index")] int Index,
    [property: JsonPropertyName("hook")] string Hook,
    [property: JsonPropertyName("name")] string Name,
    [property: JsonPropertyName("d_sae")] int DSae,
    [property: JsonPropertyName("architecture")] string Architecture);

/// <summary>A served feature database: what it was scanned from and its SAEs.</summary>
public sealed record DatabaseInfo(
    [property: JsonPropertyName("name")] string Name,
    [property: JsonPropertyName("path")] string Path,
    [property: JsonPropertyName("model")] IReadOnlyDictionary<string, string> Model,
    [property: JsonPropertyName("tokens_scanned")] long TokensScanned,
    [property: JsonPropertyName("context")] int Context,
    [property: JsonPropertyName("corpus")] string Corpus,
    [property: JsonPropertyName("saes")] IReadOnlyList<DatabaseSaeInfo> Saes);

/// <summary>GET /api/databases.</summary>
public sealed record DatabasesResponse(
    [property: JsonPropertyName("databases")] IReadOnlyList<DatabaseInfo> Databases,
    [property: JsonPropertyName("max_page_size")] int MaxPageSize,
    [property: JsonPropertyName("sort_keys")] IReadOnlyList<string> SortKeys);

/// <summary>
/// The feature pages' backend: the feature databases the server was given (<c>featurelens serve --db F.sqlite</c>), opened
/// read-only once, and thin calls into <see cref="FeatureStore"/> (browse pages, dashboards) and <see cref="NeuronpediaExport"/>.
/// A database is named by its file name without the extension. A feature's upstream / downstream features
/// (<see cref="FeatureConnections"/>) are computed with a model + SAE set the server holds whose fingerprints are the
/// database's, under that set's lock, once per (feature, examples, top), and kept in memory.
/// </summary>
internal sealed class FeatureService : IDisposable
{
    public const int ConnectionExamplesMax = 64, ConnectionTopMax = 100;

    readonly Dictionary<string, FeatureStore> _stores = new(StringComparer.OrdinalIgnoreCase);
    readonly List<string> _order = [];
    readonly TrackerService? _tracker;
    readonly IReadOnlyList<TrackerSet> _sets;
    readonly ConcurrentDictionary<(string Db, int Sae, int Feature, int Examples, int Top), Lazy<FeatureConnectionsResult>> _connections = new();
    readonly Dictionary<(string Db, string Set), (FeatureConnections.Sources? Sources, string? Why)> _sources = [];

    public FeatureService(IReadOnlyList<string> paths, TrackerService? tracker = null, IReadOnlyList<TrackerSet>? sets = null)
    {
        _tracker = tracker;
        _sets = sets ?? [];
        try
        {
            foreach (var p in paths)
            {
                string name = Path.GetFileNameWithoutExtension(p);
                if (_stores.TryGetValue(name, out var other)) throw new ArgumentException($"--db: two databases are named '{name}' ({other.Path} and {Path.GetFullPath(p)}); rename one");
                _stores[name] = FeatureStore.Open(p);
                _order.Add(name);
            }
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    public int Count => _order.Count;

    public void Dispose()
    {
        foreach (var s in _stores.Values) s.Dispose();
        _stores.Clear();
    }

    public DatabasesResponse List() => new([.. _order.Select(n => Describe(n, _stores[n]))], FeatureStore.MaxPageSize, FeatureStore.SortKeys);

    static DatabaseInfo Describe(string name, FeatureStore s)
    {
        string corpus = "";
        if (s.Meta.GetValueOrDefault("corpus") is { } c && JsonNode.Parse(c) is JsonArray a)
            corpus = string.Join(", ", a.Select(x => x?["file"]?.GetValue<string>()).Where(x => x != null));
        return new DatabaseInfo(name, s.Path, s.ModelInfo, s.Tokens, s.Settings.Context, corpus,
            [.. s.Saes.Select(x => new DatabaseSaeInfo(x.Index, x.Hook, x.Name, x.DSae, x.Architecture))]);
    }

    /// <summary>The database named <paramref name="name"/> (the only one when none is named).</summary>
    public FeatureStore Find(string? name)
    {
        if (_order.Count == 0) throw new ApiException(404, "this server has no feature databases (start it with featurelens serve --db F.sqlite)");
        if (string.IsNullOrWhiteSpace(name))
            return _order.Count == 1 ? _stores[_order[0]] : throw new ApiException(400, $"db is missing: name one of {string.Join(", ", _order)}");
        return _stores.TryGetValue(name, out var s) ? s : throw new ApiException(404, $"unknown feature database '{name}' (this server has: {string.Join(", ", _order)})");
    }

    static StoreSae FindSae(FeatureStore store, string? sae)
    {
        if (string.IsNullOrWhiteSpace(sae)) throw new ApiException(400, $"sae is missing: give its hook (one of {string.Join(", ", store.Saes.Select(x => x.Hook))})");
        return store.Saes.FirstOrDefault(x => x.Hook == sae) ?? store.Saes.FirstOrDefault(x => string.Equals(x.Name, sae, StringComparison.OrdinalIgnoreCase))
            ?? throw new ApiException(404, $"the database has no SAE '{sae}' (it has {string.Join(", ", store.Saes.Select(x => x.Hook))})");
    }

    public FeaturePage Page(string? db, string? sae, FeatureQuery query)
    {
        var store = Find(db);
        return store.Features(FindSae(store, sae), query);
    }

    public FeatureDashboard Dashboard(string? db, string? sae, int feature)
    {
        var store = Find(db);
        return store.Dashboard(FindSae(store, sae), feature);
    }

    /// <summary>The SAEDashboard / Neuronpedia batch for "1,2,3" or "all" features, and a file name to save it as.</summary>
    public (JsonObject Batch, string FileName) Export(string? db, string? sae, string? features)
    {
        var store = Find(db);
        var s = FindSae(store, sae);
        if (string.IsNullOrWhiteSpace(features)) throw new ApiException(400, "features is missing: give a list like 1,2,3 or all");
        var list = features.Trim() == "all" ? Enumerable.Range(0, s.DSae).ToList() : NeuronpediaExport.ParseFeatures(features, s.DSae);
        string name = $"{Path.GetFileNameWithoutExtension(store.Path)}-{s.Hook}-{(list.Count == 1 ? list[0].ToString(CultureInfo.InvariantCulture) : $"{list.Count}-features")}.json";
        return (NeuronpediaExport.Build(store, s, list), name);
    }

    /// <summary>
    /// The upstream and downstream features of a database feature over its top <paramref name="examples"/> examples (default 8),
    /// the <paramref name="top"/> strongest on each side (default 10): computed once, then served from memory. 409 when the
    /// server holds no model + SAE set the database was scanned with.
    /// </summary>
    public FeatureConnectionsResult Connections(string? db, string? sae, int feature, int? examples, int? top)
    {
        var store = Find(db);
        var s = FindSae(store, sae);
        if (feature < 0 || feature >= s.DSae) throw new ApiException(400, $"feature {feature} is outside [0, {s.DSae}) (d_sae of {s.Hook})");
        int n = examples ?? 8, k = top ?? 10;
        if (n is < 1 or > ConnectionExamplesMax) throw new ApiException(400, $"examples must be between 1 and {ConnectionExamplesMax} (got {n})");
        if (k is < 1 or > ConnectionTopMax) throw new ApiException(400, $"top must be between 1 and {ConnectionTopMax} (got {k})");
        var key = (store.Path, s.Index, feature, n, k);
        var lazy = _connections.GetOrAdd(key, _ => new Lazy<FeatureConnectionsResult>(() => ComputeConnections(store, s, feature, n, k)));
        try { return lazy.Value; }
        catch
        {
            // a failure is not remembered: the next request tries again
            _connections.TryRemove(new KeyValuePair<(string, int, int, int, int), Lazy<FeatureConnectionsResult>>(key, lazy));
            throw;
        }
    }

    FeatureConnectionsResult ComputeConnections(FeatureStore store, StoreSae sae, int feature, int examples, int top)
    {
        var why = new List<string>();
        foreach (var set in _sets)
        {
            var (_, gate) = _tracker!.FindSet(set.Name);
            lock (gate)
            {
                var (sources, reason) = SourcesFor(store, set);
                if (sources == null) { why.Add($"set '{set.Name}': {reason}"); continue; }
                if (sources.BySae[sae.Index] == null) { why.Add($"set '{set.Name}' lacks the SAE at {sae.Hook}"); continue; }
                return FeatureConnections.Compute(store, sae, feature, sources, examples, top);
            }
        }
        string name = Path.GetFileNameWithoutExtension(store.Path);
        throw new ApiException(409, $"start serve with --model and the SAE folders to see connections: they are computed with the model and SAEs {name} was scanned with " +
            (why.Count == 0 ? "(this server has no model loaded)" : $"({string.Join("; ", why)})"));
    }

    /// <summary>The set's SAEs paired with the database's (fingerprints checked once per database and set), or why they do not fit.</summary>
    (FeatureConnections.Sources?, string?) SourcesFor(FeatureStore store, TrackerSet set)
    {
        lock (_sources)
        {
            if (_sources.TryGetValue((store.Path, set.Name), out var hit)) return hit;
            (FeatureConnections.Sources?, string?) r;
            try { r = (FeatureConnections.Match(store, set.Set.Model, set.Set.Saes), null); }
            catch (ArgumentException e) { r = (null, e.Message); }
            _sources[(store.Path, set.Name)] = r;
            return r;
        }
    }
}
