using System.Globalization;
using System.Text.Json.Nodes;
using System.Text.Json.Serialization;
using FeatureLens.Clustering;

namespace FeatureLens.Web;

/// <summary>One served clusters file (GET /api/clusters).</summary>
public sealed record ClusterFileInfo(
    [property: JsonPropertyName("id")] string Id,
    [property: JsonPropertyName("path")] string Path,
    [property: JsonPropertyName("source")] string Source,
    [property: JsonPropertyName("method")] string Method,
    [property: JsonPropertyName("features")] int Features,
    [property: JsonPropertyName("clusters")] int Clusters,
    [property: JsonPropertyName("transcoders")] IReadOnlyList<string> Transcoders);

/// <summary>GET /api/clusters: the clusters files the server was started with.</summary>
public sealed record ClusterListResponse([property: JsonPropertyName("files")] IReadOnlyList<ClusterFileInfo> Files);

/// <summary>
/// The cluster view's backend: the clusters files (<c>featurelens cluster --out</c>) given to <c>featurelens serve --clusters
/// FILE...</c>, read once at startup with <see cref="ClusterFile.Read"/> plus the checks the view relies on (the heatmap's
/// features and square cosine matrix, the dendrogram's linkage rows, each cluster's members), so a bad file stops the
/// server with a message naming the file and the field. Each file is named by its file name without the extension and
/// served as its own bytes.
/// </summary>
internal sealed class ClusterService
{
    readonly Dictionary<string, (ClusterFileInfo Info, string Text)> _files = new(StringComparer.OrdinalIgnoreCase);
    readonly List<string> _order = [];

    public ClusterService(IReadOnlyList<string> paths)
    {
        foreach (var p in paths)
        {
            string id = System.IO.Path.GetFileNameWithoutExtension(p);
            if (_files.TryGetValue(id, out var other))
                throw new ArgumentException($"--clusters: two clusters files are named '{id}' ({other.Info.Path} and {System.IO.Path.GetFullPath(p)}); rename one");
            var data = ClusterFile.Read(p);
            string text = File.ReadAllText(p);
            var root = (JsonObject)JsonNode.Parse(text)!;
            CheckViewFields(p, root, data.Features.Count);
            string Str(string name) => root[name] is JsonValue v && v.TryGetValue(out string? s) ? s : throw new InvalidDataException($"{p}: '{name}' must be a string");
            _files[id] = (new ClusterFileInfo(id, System.IO.Path.GetFullPath(p), Str("source"), Str("method"), data.Features.Count, data.ClusterNames.Count, data.Transcoders), text);
            _order.Add(id);
        }
    }

    public int Count => _order.Count;

    public ClusterListResponse List() => new([.. _order.Select(id => _files[id].Info)]);

    /// <summary>The file's JSON exactly as it is on disk.</summary>
    public string Get(string? id)
    {
        if (string.IsNullOrEmpty(id)) throw new ApiException(400, "id is missing: give a clusters file's name (GET /api/clusters lists them)");
        return _files.TryGetValue(id, out var f) ? f.Text
            : throw new ApiException(404, $"unknown clusters file '{id}'; served: {(_order.Count == 0 ? "none (start the server with --clusters FILE)" : string.Join(", ", _order))}");
    }

    /// <summary>The fields the view draws from, beyond what <see cref="ClusterFile.Read"/> checks.</summary>
    static void CheckViewFields(string path, JsonObject root, int n)
    {
        InvalidDataException Bad(string field, string what) => new($"{path}: '{field}' must be {what}");
        static bool IsInt(JsonNode? x, out long v)
        {
            v = 0;
            if (x is not JsonValue jv || !jv.TryGetValue(out double d) || d != Math.Floor(d) || Math.Abs(d) > 1e15) return false;
            v = (long)d;
            return true;
        }
        static bool IsNumber(JsonNode? x) => x is JsonValue jv && jv.TryGetValue(out double d) && double.IsFinite(d);
        string At(string field, int i) => string.Create(CultureInfo.InvariantCulture, $"{field}[{i}]");

        var clusters = (JsonArray)root["clusters"]!;
        for (int c = 0; c < clusters.Count; c++)
        {
            if (clusters[c]!["members"] is not JsonArray members) throw Bad(At("clusters", c) + ".members", "an array of feature indices");
            foreach (var m in members)
                if (!IsInt(m, out long i) || i < 0 || i >= n) throw Bad(At("clusters", c) + ".members", $"feature indices in [0, {n})");
        }
        if (root["heatmap"] is not JsonObject heat) throw Bad("heatmap", "an object {features, cosine}");
        if (heat["features"] is not JsonArray hf) throw Bad("heatmap.features", "an array of feature indices");
        foreach (var f in hf)
            if (!IsInt(f, out long i) || i < 0 || i >= n) throw Bad("heatmap.features", $"feature indices in [0, {n})");
        if (heat["cosine"] is not JsonArray cos || cos.Count != hf.Count) throw Bad("heatmap.cosine", $"a {hf.Count}×{hf.Count} matrix (one row per heatmap feature)");
        for (int r = 0; r < cos.Count; r++)
            if (cos[r] is not JsonArray row || row.Count != hf.Count || !row.All(IsNumber)) throw Bad(At("heatmap.cosine", r), $"a row of {hf.Count} numbers");
        if (root["dendrogram"] is not JsonArray dendro) throw Bad("dendrogram", "an array of linkage rows [a, b, distance, size]");
        if (dendro.Count != 0 && dendro.Count != n - 1) throw Bad("dendrogram", $"empty or {n - 1} linkage rows for {n} features (has {dendro.Count})");
        for (int r = 0; r < dendro.Count; r++)
        {
            if (dendro[r] is not JsonArray row || row.Count != 4 || !IsInt(row[0], out long a) || !IsInt(row[1], out long b) || !IsNumber(row[2]) || !IsInt(row[3], out long size)
                || a < 0 || b < 0 || a >= n + r || b >= n + r || size < 2 || size > n)
                throw Bad(At("dendrogram", r), $"a linkage row [a, b, distance, size] whose a and b are earlier nodes (below {n + r})");
        }
    }
}
