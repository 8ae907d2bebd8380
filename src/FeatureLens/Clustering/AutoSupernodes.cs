using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using FeatureLens.Connections.Graphs;

namespace FeatureLens.Clustering;

/// <summary>
/// Automatic supernodes: the feature nodes of an attribution graph whose layer lies in [<c>from</c>, <c>to</c>] grouped by
/// their cluster (every cluster with at least two such nodes becomes one supernode, named after the cluster), written into
/// the graph JSON's <c>qParams.supernodes</c> as circuit-tracer's frontend reads them ([name, node id, …]). Supernodes already
/// in the file that were not made by this (their name does not start with "cluster ") are kept, so a user's own groups
/// survive; the graph page can regroup them all.
/// </summary>
public static class AutoSupernodes
{
    /// <summary>Parses <c>--layers A-B</c> (or a single layer <c>A</c>).</summary>
    public static (int From, int To) ParseLayers(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        var parts = text.Split('-');
        if (parts.Length is 1 or 2 && parts.All(p => int.TryParse(p, NumberStyles.None, CultureInfo.InvariantCulture, out _)))
        {
            int a = int.Parse(parts[0], CultureInfo.InvariantCulture), b = int.Parse(parts[^1], CultureInfo.InvariantCulture);
            if (a <= b) return (a, b);
        }
        throw new ArgumentException($"--layers '{text}': expected a layer range A-B with A ≤ B (e.g. 1-3)");
    }

    /// <summary>The supernodes ([name, node id, …]) of <paramref name="graph"/> by the clusters of <paramref name="clusters"/>.</summary>
    public static List<List<string>> Compute(GraphFile graph, string graphPath, ClusterFileData clusters, int from, int to)
    {
        ArgumentNullException.ThrowIfNull(graph);
        ArgumentNullException.ThrowIfNull(clusters);
        int L = clusters.DSae.Count;
        if (from < 0 || to >= L) throw new ArgumentException($"--layers {from}-{to}: unknown layer range; {clusters.Path} has transcoders for layers 0–{L - 1}");
        var tl = graph.Metadata.TranscoderList;
        if (tl.Count > 0 && !tl.SequenceEqual(clusters.Transcoders, StringComparer.Ordinal))
            throw new InvalidDataException($"{clusters.Path} was made for another graph's transcoders: it lists [{string.Join(", ", clusters.Transcoders)}], " +
                                           $"{graphPath} was built with [{string.Join(", ", tl)}]");
        var clusterOf = new Dictionary<ClusterFeature, int>();
        foreach (var (f, c, _) in clusters.Features) clusterOf[f] = c;
        var groups = new SortedDictionary<int, List<string>>();
        foreach (var node in graph.Nodes)
        {
            if (node.FeatureType != "cross layer transcoder") continue;
            if (!int.TryParse(node.Layer, NumberStyles.None, CultureInfo.InvariantCulture, out int layer))
                throw new InvalidDataException($"{graphPath}: node {node.NodeId} has layer '{node.Layer}', expected an integer");
            int latent = node.Latent ?? LatentFromId(node.NodeId, graphPath);
            if (layer >= L || latent >= clusters.DSae[layer])
                throw new InvalidDataException($"{clusters.Path} does not fit {graphPath}: node {node.NodeId} is feature {layer}:{latent}, outside the clusters file's transcoders (d_sae {string.Join(", ", clusters.DSae)})");
            if (layer < from || layer > to || !clusterOf.TryGetValue(new ClusterFeature(layer, latent), out int cl)) continue;
            if (!groups.TryGetValue(cl, out var ids)) groups[cl] = ids = [];
            ids.Add(node.NodeId);
        }
        return [.. groups.Where(g => g.Value.Count >= 2).Select(g => (List<string>)[clusters.ClusterNames[g.Key], .. g.Value])];
    }

    static int LatentFromId(string id, string path)
    {
        var parts = id.Split('_');
        return parts.Length == 3 && int.TryParse(parts[1], NumberStyles.None, CultureInfo.InvariantCulture, out int l) ? l
            : throw new InvalidDataException($"{path}: feature node id '{id}' is not LAYER_LATENT_POS");
    }

    /// <summary>Reads <paramref name="graphPath"/>, adds the supernodes, writes <paramref name="outPath"/> (temp file, then moved). Returns them.</summary>
    public static List<List<string>> Apply(string graphPath, ClusterFileData clusters, int from, int to, string outPath)
    {
        ArgumentNullException.ThrowIfNull(outPath);
        var graph = GraphJson.Read(graphPath);
        var auto = Compute(graph, graphPath, clusters, from, to);
        var root = JsonNode.Parse(File.ReadAllText(graphPath))!.AsObject();
        var q = root["qParams"]!.AsObject();
        var kept = graph.QParams.Supernodes.Where(s => s.Count == 0 || !s[0].StartsWith("cluster ", StringComparison.Ordinal));
        q["supernodes"] = new JsonArray([.. kept.Concat(auto).Select(s => (JsonNode)new JsonArray([.. s.Select(x => (JsonNode)JsonValue.Create(x))]))]);
        string full = Path.GetFullPath(outPath);
        string tmp = full + ".tmp-" + Environment.ProcessId.ToString(CultureInfo.InvariantCulture);
        using (var fs = File.Create(tmp))
        using (var w = new Utf8JsonWriter(fs))
            root.WriteTo(w);
        File.Move(tmp, full, overwrite: true);
        return auto;
    }
}
