using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace FeatureLens.Clustering;

/// <summary>What a clusters file says about each feature, beside its cluster.</summary>
public sealed record ClusterAnnotations
{
    /// <summary>The hook each layer's transcoder reads (the graph JSON's transcoder_list).</summary>
    public required IReadOnlyList<string> Transcoders { get; init; }
    /// <summary>d_transcoder of each layer.</summary>
    public required IReadOnlyList<int> DSae { get; init; }
    /// <summary>A feature's label, or null.</summary>
    public Func<ClusterFeature, string?>? Label { get; init; }
    /// <summary>A feature's top activating tokens (from a feature database), or null.</summary>
    public Func<ClusterFeature, IReadOnlyList<string>?>? TopTokens { get; init; }
    /// <summary>How many members of each cluster get their top tokens looked up.</summary>
    public int TopTokenMembers { get; init; } = 8;
    /// <summary>Prompts the profiles were aggregated over (null for weight profiles).</summary>
    public int? Prompts { get; init; }
}

/// <summary>A clusters file as read back: features with their cluster and label, and each cluster's name.</summary>
public sealed record ClusterFileData(string Path, IReadOnlyList<string> Transcoders, IReadOnlyList<int> DSae,
    IReadOnlyList<(ClusterFeature Feature, int Cluster, string? Label)> Features, IReadOnlyList<string> ClusterNames);

/// <summary>
/// The clusters JSON (<c>featurelens cluster --out</c>): <c>schema</c> "featurelens.clusters", <c>version</c> 1, <c>source</c>,
/// <c>method</c>, <c>cut</c>, <c>knn</c>, <c>seed</c>, <c>resolution</c>, <c>transcoders</c>, <c>d_sae</c>, <c>prompts</c>,
/// <c>features</c> [{layer, latent, cluster, label, top_tokens}], <c>clusters</c> [{id, name, size, members (feature indices),
/// labels, top_tokens}], <c>score</c> {labelled, purity, nmi, label_word}, <c>modularity</c>, <c>dendrogram</c> [[a, b, distance,
/// size]] (scipy's linkage rows) and <c>heatmap</c> {features, cosine}.
/// </summary>
public static class ClusterFile
{
    public const string Schema = "featurelens.clusters";
    public const int Version = 1;

    /// <summary>Writes the file (to a temporary file, then moved into place).</summary>
    public static void Write(string path, ClusterResult result, ClusterAnnotations notes)
    {
        ArgumentNullException.ThrowIfNull(path);
        ArgumentNullException.ThrowIfNull(result);
        ArgumentNullException.ThrowIfNull(notes);
        var p = result.Profiles;
        int n = p.Count;
        var labels = p.Features.Select(f => notes.Label?.Invoke(f)).ToArray();
        var members = Enumerable.Range(0, result.ClusterCount).Select(c => new List<int>()).ToArray();
        for (int i = 0; i < n; i++) members[result.Assignment[i]].Add(i);
        var tokens = new IReadOnlyList<string>?[n];
        if (notes.TopTokens != null)
            foreach (var m in members)
                foreach (int i in m.Take(notes.TopTokenMembers)) tokens[i] = notes.TopTokens(p.Features[i]);
        var score = FeatureClustering.LabelScore(result.Assignment, labels);

        string full = System.IO.Path.GetFullPath(path);
        string tmp = full + ".tmp-" + Environment.ProcessId.ToString(CultureInfo.InvariantCulture);
        using (var fs = File.Create(tmp))
        using (var w = new Utf8JsonWriter(fs))
        {
            w.WriteStartObject();
            w.WriteString("schema", Schema);
            w.WriteNumber("version", Version);
            w.WriteString("source", p.Source);
            w.WriteString("method", result.Options.Method);
            w.WriteStartObject("cut");
            if (result.Options.Method == "hierarchical")
            {
                if (result.Options.CutCount is int k) w.WriteNumber("k", k);
                else w.WriteNumber("distance", result.Options.CutDistance ?? 0.5);
            }
            w.WriteEndObject();
            w.WriteNumber("knn", result.Options.Knn);
            w.WriteNumber("seed", result.Options.Seed);
            w.WriteNumber("resolution", result.Options.Resolution);
            w.WriteStartArray("transcoders");
            foreach (var t in notes.Transcoders) w.WriteStringValue(t);
            w.WriteEndArray();
            w.WriteStartArray("d_sae");
            foreach (int d in notes.DSae) w.WriteNumberValue(d);
            w.WriteEndArray();
            if (notes.Prompts is int np) w.WriteNumber("prompts", np); else w.WriteNull("prompts");
            w.WriteStartArray("features");
            for (int i = 0; i < n; i++)
            {
                w.WriteStartObject();
                w.WriteNumber("layer", p.Features[i].Layer);
                w.WriteNumber("latent", p.Features[i].Latent);
                w.WriteNumber("cluster", result.Assignment[i]);
                if (labels[i] != null) w.WriteString("label", labels[i]); else w.WriteNull("label");
                if (tokens[i] != null) { w.WriteStartArray("top_tokens"); foreach (var t in tokens[i]!) w.WriteStringValue(t); w.WriteEndArray(); }
                w.WriteEndObject();
            }
            w.WriteEndArray();
            w.WriteStartArray("clusters");
            for (int c = 0; c < members.Length; c++)
            {
                w.WriteStartObject();
                w.WriteNumber("id", c);
                w.WriteString("name", Name(c, members[c], labels));
                w.WriteNumber("size", members[c].Count);
                w.WriteStartArray("members"); foreach (int i in members[c]) w.WriteNumberValue(i); w.WriteEndArray();
                w.WriteStartArray("labels");
                foreach (var l in members[c].Select(i => labels[i]).Where(l => l != null).GroupBy(l => l!).OrderByDescending(g => g.Count()).ThenBy(g => g.Key, StringComparer.Ordinal).Take(10))
                    w.WriteStringValue(l.Key);
                w.WriteEndArray();
                w.WriteStartArray("top_tokens");
                foreach (var t in members[c].Where(i => tokens[i] != null).SelectMany(i => tokens[i]!).GroupBy(t => t).OrderByDescending(g => g.Count()).ThenBy(g => g.Key, StringComparer.Ordinal).Take(10))
                    w.WriteStringValue(t.Key);
                w.WriteEndArray();
                w.WriteEndObject();
            }
            w.WriteEndArray();
            w.WriteStartObject("score");
            w.WriteNumber("labelled", score.Labelled);
            if (score.Labelled > 0) { w.WriteNumber("purity", score.Purity); w.WriteNumber("nmi", score.Nmi); }
            else { w.WriteNull("purity"); w.WriteNull("nmi"); }
            w.WriteString("label_word", "the label's first word, lower-cased");
            w.WriteEndObject();
            if (result.Modularity is double q) w.WriteNumber("modularity", q); else w.WriteNull("modularity");
            w.WriteStartArray("dendrogram");
            foreach (var m in result.Merges ?? [])
            {
                w.WriteStartArray();
                w.WriteNumberValue(m.A); w.WriteNumberValue(m.B); w.WriteNumberValue(Math.Round(m.Distance, 7)); w.WriteNumberValue(m.Size);
                w.WriteEndArray();
            }
            w.WriteEndArray();
            w.WriteStartObject("heatmap");
            w.WriteStartArray("features"); foreach (int i in result.HeatmapOrder) w.WriteNumberValue(i); w.WriteEndArray();
            w.WriteStartArray("cosine");
            int h = result.HeatmapOrder.Length;
            for (int a = 0; a < h; a++)
            {
                w.WriteStartArray();
                for (int b = 0; b < h; b++) w.WriteNumberValue(MathF.Round(result.Heatmap[a * h + b], 5));
                w.WriteEndArray();
            }
            w.WriteEndArray();
            w.WriteEndObject();
            w.WriteEndObject();
        }
        File.Move(tmp, full, overwrite: true);
    }

    /// <summary>A cluster's name: "cluster C" and its most common label word, when any member has a label.</summary>
    static string Name(int c, List<int> members, string?[] labels)
    {
        var word = members.Select(i => FeatureClustering.LabelWord(labels[i])).Where(x => x != null).GroupBy(x => x!)
            .OrderByDescending(g => g.Count()).ThenBy(g => g.Key, StringComparer.Ordinal).FirstOrDefault()?.Key;
        return word == null ? Inv($"cluster {c}") : Inv($"cluster {c}: {word}");
    }

    static string Inv(FormattableString s) => s.ToString(CultureInfo.InvariantCulture);

    /// <summary>Reads a clusters file; a missing or mistyped field is an <see cref="InvalidDataException"/> naming the file and the field.</summary>
    public static ClusterFileData Read(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        if (!File.Exists(path)) throw new FileNotFoundException($"{path}: no such clusters file", path);
        JsonNode? root;
        try { root = JsonNode.Parse(File.ReadAllText(path)); }
        catch (JsonException e) { throw new InvalidDataException($"{path}: not valid JSON ({e.Message})", e); }
        if (root is not JsonObject o) throw new InvalidDataException($"{path}: expected a JSON object at the top level");
        if (Str(o, "schema", path) != Schema) throw new InvalidDataException($"{path}: 'schema' is not \"{Schema}\": not a FeatureLens clusters file");
        int version = Int(o["version"], path, "version");
        if (version > Version) throw new InvalidDataException($"{path}: version {version}; this FeatureLens reads up to {Version}");
        var transcoders = Arr(o, "transcoders", path).Select((x, i) => x is JsonValue v && v.TryGetValue(out string? s) ? s : throw Bad(path, $"transcoders[{i}]", "a string")).ToList();
        var dSae = Arr(o, "d_sae", path).Select((x, i) => Int(x, path, $"d_sae[{i}]")).ToList();
        if (dSae.Count != transcoders.Count) throw new InvalidDataException($"{path}: {transcoders.Count} transcoders but {dSae.Count} d_sae entries");
        var features = new List<(ClusterFeature, int, string?)>();
        int k = 0;
        foreach (var f in Arr(o, "features", path))
        {
            string at = Inv($"features[{k}]");
            if (f is not JsonObject fo) throw Bad(path, at, "an object");
            int layer = Int(fo["layer"], path, at + ".layer"), latent = Int(fo["latent"], path, at + ".latent"), cluster = Int(fo["cluster"], path, at + ".cluster");
            if ((uint)layer >= (uint)dSae.Count) throw new InvalidDataException($"{path}: {at}.layer {layer} is outside the file's {dSae.Count} transcoder layers");
            if ((uint)latent >= (uint)dSae[layer]) throw new InvalidDataException($"{path}: {at}.latent {latent} is outside layer {layer}'s d_sae {dSae[layer]}");
            if (cluster < 0) throw new InvalidDataException($"{path}: {at}.cluster is negative");
            string? label = fo["label"] is JsonValue lv && lv.TryGetValue(out string? ls) ? ls : null;
            features.Add((new ClusterFeature(layer, latent), cluster, label));
            k++;
        }
        var names = new List<string>();
        k = 0;
        foreach (var c in Arr(o, "clusters", path))
        {
            if (c is not JsonObject co) throw Bad(path, Inv($"clusters[{k}]"), "an object");
            names.Add(Str(co, "name", path));
            k++;
        }
        foreach (var (f, c, _) in features)
            if (c >= names.Count) throw new InvalidDataException($"{path}: feature {f} is in cluster {c}, but the file lists {names.Count} clusters");
        return new ClusterFileData(path, transcoders, dSae, features, names);
    }

    static InvalidDataException Bad(string path, string field, string what) => new($"{path}: '{field}' must be {what}");

    static string Str(JsonObject o, string name, string path) =>
        o[name] is JsonValue v && v.TryGetValue(out string? s) ? s : throw Bad(path, name, "a string");

    static JsonArray Arr(JsonObject o, string name, string path) => o[name] as JsonArray ?? throw Bad(path, name, "an array");

    static int Int(JsonNode? n, string path, string field)
    {
        if (n is JsonValue v && v.TryGetValue(out double d) && d == Math.Floor(d) && d >= int.MinValue && d <= int.MaxValue) return (int)d;
        throw Bad(path, field, "an integer");
    }
}
