using System.Globalization;
using System.Text.Json.Nodes;
using System.Text.Json.Serialization;
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
/// A database is named by its file name without the extension.
/// </summary>
internal sealed class FeatureService : IDisposable
{
    readonly Dictionary<string, FeatureStore> _stores = new(StringComparer.OrdinalIgnoreCase);
    readonly List<string> _order = [];

    public FeatureService(IReadOnlyList<string> paths)
    {
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
}
