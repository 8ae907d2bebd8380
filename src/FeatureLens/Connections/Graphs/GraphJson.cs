using System.Text.Json;

namespace FeatureLens.Connections.Graphs;

/// <summary>What a graph file says about its prompt and transcoders (beyond the graph itself).</summary>
public sealed record GraphJsonInfo
{
    /// <summary>The graph's name (circuit-tracer's slug; the frontend lists graphs by it).</summary>
    public required string Slug { get; init; }

    /// <summary>The transcoder set's identifier. circuit-tracer names a set of individual transcoders "custom-…" and the frontend then reads <see cref="TranscoderList"/> by layer.</summary>
    public required string Scan { get; init; }

    /// <summary>One entry per layer: the transcoder used there (a path or name).</summary>
    public IReadOnlyList<string> TranscoderList { get; init; } = [];

    /// <summary>The prompt's tokens as display strings, one per position (see <see cref="GraphJson.DisplayToken"/>).</summary>
    public required IReadOnlyList<string> PromptTokens { get; init; }

    /// <summary>The prompt text.</summary>
    public required string Prompt { get; init; }

    /// <summary>Each logit node's token as a display string (same order as the graph's logit nodes).</summary>
    public required IReadOnlyList<string> LogitTokens { get; init; }

    /// <summary>A feature's label (clerp) by (layer, latent), or null when it has none.</summary>
    public Func<int, int, string?>? Label { get; init; }
}

/// <summary>A graph file's <c>metadata</c>.</summary>
public sealed record GraphFileMetadata(string Slug, string Scan, IReadOnlyList<string> TranscoderList, IReadOnlyList<string> PromptTokens,
    string Prompt, double? NodeThreshold, int? SchemaVersion);

/// <summary>A graph file's <c>qParams</c> (the frontend's view state).</summary>
public sealed record GraphFileQParams(IReadOnlyList<string> PinnedIds, IReadOnlyList<IReadOnlyList<string>> Supernodes, string LinkType, string ClickedId, string SgPos);

/// <summary>One node of a graph file: circuit-tracer's fields, then FeatureLens's <c>latent</c>, <c>input</c> and <c>bias</c> (null where they do not apply or the file lacks them).</summary>
public sealed record GraphFileNode(string NodeId, long Feature, string Layer, int CtxIdx, string FeatureType, double TokenProb, bool IsTargetLogit,
    int RunIdx, int ReverseCtxIdx, string JsNodeId, string Clerp, double? Influence, double? Activation, int? Latent, double? Input, double? Bias);

/// <summary>One link of a graph file: a direct effect A[target, source].</summary>
public sealed record GraphFileLink(string Source, string Target, double Weight);

/// <summary>A graph file as read back by <see cref="GraphJson.Read"/>.</summary>
public sealed record GraphFile(GraphFileMetadata Metadata, GraphFileQParams QParams, IReadOnlyList<GraphFileNode> Nodes, IReadOnlyList<GraphFileLink> Links);

/// <summary>
/// The graph JSON (CONNECTIONS.md, "Contracts"): what circuit-tracer's frontend reads (its graph_models.py:
/// <c>metadata</c> {slug, scan, transcoder_list, prompt_tokens, prompt, node_threshold}, <c>qParams</c> {pinnedIds,
/// supernodes, linkType, clickedId, sg_pos}, <c>nodes</c>, <c>links</c> [{source, target, weight}]) plus
/// <c>metadata.schema_version</c> and, per node, FeatureLens's <c>latent</c>, <c>input</c> and <c>bias</c>.
/// </summary>
/// <remarks>
/// Node fields as circuit-tracer writes them: ids feature <c>{layer}_{latent}_{pos}</c>, error <c>{layer}_-1_{pos}</c>,
/// embedding <c>E_{token}_{pos}</c>, logit <c>{n_layers+1}_{token}_{pos}</c>; <c>feature</c> the latent, -1, the position
/// and the token id respectively; <c>layer</c> a string ("E" for embeddings); <c>jsNodeId</c> <c>{layer}_{latent}-0</c>,
/// <c>{layer}_{pos}-0</c>, <c>E_{token}-{pos}</c>, <c>L_{token}-{pos}</c>; <c>clerp</c> the feature's label ("" if none),
/// <c>Output "tok" (p=0.123)</c> on logits (the frontend reads the logit's token from it); <c>influence</c> the
/// cumulative influence fraction (<see cref="PruneResult.CumulativeInfluence"/>: the frontend's slider keeps nodes with
/// influence ≤ its threshold); <c>activation</c> the latent's activation, the vector's L2 norm for error and embedding
/// nodes, null for logits; <c>token_prob</c> and <c>is_target_logit</c> (the most likely token) on logits.
/// <c>input</c> and <c>bias</c> on features and logits (null elsewhere): Σ over the node's incoming links of the full graph
/// (<c>--no-prune</c>) + bias = input. Links: <c>weight</c> = A[target, source] (float32). A pruned file holds the kept
/// nodes and the kept edges between them.
/// </remarks>
public static class GraphJson
{
    /// <summary>The schema version this FeatureLens writes (metadata.schema_version).</summary>
    public const int SchemaVersion = 1;

    /// <summary>A token as circuit-tracer shows it: newline ⏎, tab →, carriage return ↵.</summary>
    public static string DisplayToken(string token)
    {
        ArgumentNullException.ThrowIfNull(token);
        return token.Replace("\n", "⏎", StringComparison.Ordinal).Replace("\t", "→", StringComparison.Ordinal).Replace("\r", "↵", StringComparison.Ordinal);
    }

    /// <summary>The node id of node <paramref name="node"/> (layer count <paramref name="nLayers"/>).</summary>
    public static string NodeId(GraphNode node, int nLayers) => node.Kind switch
    {
        GraphNodeKind.Feature => Inv($"{node.Layer}_{node.Index}_{node.Pos}"),
        GraphNodeKind.Error => Inv($"{node.Layer}_-1_{node.Pos}"),
        GraphNodeKind.Embedding => Inv($"E_{node.Index}_{node.Pos}"),
        _ => Inv($"{nLayers + 1}_{node.Index}_{node.Pos}"),
    };

    static string Inv(FormattableString s) => s.ToString(CultureInfo.InvariantCulture);

    /// <summary>Writes the kept nodes and edges of <paramref name="graph"/> (to a temporary file, then moved into place).</summary>
    public static void Write(string path, AttributionGraph graph, PruneResult prune, GraphJsonInfo info)
    {
        ArgumentNullException.ThrowIfNull(path);
        ArgumentNullException.ThrowIfNull(graph);
        ArgumentNullException.ThrowIfNull(prune);
        ArgumentNullException.ThrowIfNull(info);
        int n = graph.Nodes.Count;
        if (prune.NodeKept.Count != n) throw new ArgumentException($"the prune result covers {prune.NodeKept.Count} nodes, the graph has {n}", nameof(prune));
        if (info.PromptTokens.Count != graph.NPos) throw new ArgumentException($"{info.PromptTokens.Count} prompt tokens for a graph over {graph.NPos} positions", nameof(info));
        if (info.LogitTokens.Count != graph.LogitCount) throw new ArgumentException($"{info.LogitTokens.Count} logit tokens for {graph.LogitCount} logit nodes", nameof(info));
        string full = Path.GetFullPath(path);
        string dir = Path.GetDirectoryName(full)!;
        if (!Directory.Exists(dir)) throw new DirectoryNotFoundException($"{path}: the folder {dir} does not exist");
        var ids = new string[n];
        for (int i = 0; i < n; i++) ids[i] = NodeId(graph.Nodes[i], graph.NLayers);

        string tmp = Path.Combine(dir, $".{Path.GetFileName(full)}.{Environment.ProcessId}.tmp");
        try
        {
            using (var fs = new FileStream(tmp, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 16))
            using (var w = new Utf8JsonWriter(fs, new JsonWriterOptions { Indented = false }))
            {
                w.WriteStartObject();
                WriteMetadata(w, info, prune);
                w.WriteStartObject("qParams");
                w.WriteStartArray("pinnedIds"); w.WriteEndArray();
                w.WriteStartArray("supernodes"); w.WriteEndArray();
                w.WriteString("linkType", "both");
                w.WriteString("clickedId", "");
                w.WriteString("sg_pos", "");
                w.WriteEndObject();
                w.WriteStartArray("nodes");
                for (int i = 0; i < n; i++)
                {
                    if (!prune.NodeKept[i]) continue;
                    WriteNode(w, graph, prune, info, i, ids[i]);
                    if (w.BytesPending > 1 << 20) w.Flush();
                }
                w.WriteEndArray();
                w.WriteStartArray("links");
                for (int r = 0; r < graph.Rows.Count; r++)
                {
                    int t = graph.RowNode(r);
                    if (!prune.NodeKept[t]) continue;
                    if (prune.KeptSources is { } kept)
                    {
                        foreach (int s in kept[r])
                            if (prune.NodeKept[s]) WriteLink(w, ids[s], ids[t], graph.Rows.Get(r, s));
                    }
                    else
                    {
                        foreach (var (start, vals) in graph.Rows.Runs(r))
                            for (int j = 0; j < vals.Length; j++)
                                if (vals[j] != 0 && prune.NodeKept[start + j]) WriteLink(w, ids[start + j], ids[t], vals[j]);
                    }
                    if (w.BytesPending > 1 << 20) w.Flush();
                }
                w.WriteEndArray();
                w.WriteEndObject();
            }
            File.Move(tmp, full, overwrite: true);
        }
        catch
        {
            File.Delete(tmp);
            throw;
        }
    }

    static void WriteMetadata(Utf8JsonWriter w, GraphJsonInfo info, PruneResult prune)
    {
        w.WriteStartObject("metadata");
        w.WriteString("slug", info.Slug);
        w.WriteString("scan", info.Scan);
        w.WriteStartArray("transcoder_list");
        foreach (var t in info.TranscoderList) w.WriteStringValue(t);
        w.WriteEndArray();
        w.WriteStartArray("prompt_tokens");
        foreach (var t in info.PromptTokens) w.WriteStringValue(t);
        w.WriteEndArray();
        w.WriteString("prompt", info.Prompt);
        if (prune.NodeThreshold is double nt) w.WriteNumber("node_threshold", nt); else w.WriteNull("node_threshold");
        w.WriteNumber("schema_version", SchemaVersion);
        w.WriteEndObject();
    }

    static void WriteNode(Utf8JsonWriter w, AttributionGraph g, PruneResult prune, GraphJsonInfo info, int i, string id)
    {
        var node = g.Nodes[i];
        int row = g.NodeRow(i);
        bool isLogit = node.Kind == GraphNodeKind.Logit;
        int logit = isLogit ? i - g.FirstLogit : -1;
        w.WriteStartObject();
        w.WriteString("node_id", id);
        w.WriteNumber("feature", node.Kind switch
        {
            GraphNodeKind.Feature => node.Index,
            GraphNodeKind.Error => -1,
            GraphNodeKind.Embedding => node.Pos,
            _ => node.Index,
        });
        w.WriteString("layer", node.Kind switch
        {
            GraphNodeKind.Embedding => "E",
            GraphNodeKind.Logit => (g.NLayers + 1).ToString(CultureInfo.InvariantCulture),
            _ => node.Layer.ToString(CultureInfo.InvariantCulture),
        });
        w.WriteNumber("ctx_idx", node.Pos);
        w.WriteString("feature_type", node.Kind switch
        {
            GraphNodeKind.Feature => "cross layer transcoder",
            GraphNodeKind.Error => "mlp reconstruction error",
            GraphNodeKind.Embedding => "embedding",
            _ => "logit",
        });
        float prob = isLogit ? g.LogitProbabilities[logit] : 0f;
        w.WriteNumber("token_prob", prob);
        w.WriteBoolean("is_target_logit", logit == 0);
        w.WriteNumber("run_idx", 0);
        w.WriteNumber("reverse_ctx_idx", 0);
        w.WriteString("jsNodeId", node.Kind switch
        {
            GraphNodeKind.Feature => Inv($"{node.Layer}_{node.Index}-0"),
            GraphNodeKind.Error => Inv($"{node.Layer}_{node.Pos}-0"),
            GraphNodeKind.Embedding => Inv($"E_{node.Index}-{node.Pos}"),
            _ => Inv($"L_{node.Index}-{node.Pos}"),
        });
        w.WriteString("clerp", node.Kind switch
        {
            GraphNodeKind.Feature => info.Label?.Invoke(node.Layer, node.Index) ?? "",
            GraphNodeKind.Logit => Inv($"Output \"{info.LogitTokens[logit]}\" (p={prob:F3})"),
            _ => "",
        });
        w.WriteNumber("influence", prune.CumulativeInfluence[i]);
        if (isLogit) w.WriteNull("activation"); else w.WriteNumber("activation", g.Activations[i]);
        if (node.Kind == GraphNodeKind.Feature) w.WriteNumber("latent", node.Index); else w.WriteNull("latent");
        if (row >= 0) { w.WriteNumber("input", g.RowInputs[row]); w.WriteNumber("bias", g.RowBiases[row]); }
        else { w.WriteNull("input"); w.WriteNull("bias"); }
        w.WriteEndObject();
    }

    static void WriteLink(Utf8JsonWriter w, string source, string target, float weight)
    {
        w.WriteStartObject();
        w.WriteString("source", source);
        w.WriteString("target", target);
        w.WriteNumber("weight", weight);
        w.WriteEndObject();
    }

    /// <summary>
    /// Reads a graph file (FeatureLens's or circuit-tracer's: <c>schema_version</c>, <c>latent</c>, <c>input</c> and
    /// <c>bias</c> may be absent). Throws <see cref="InvalidDataException"/> naming the file and the field when the file
    /// is not such a graph: a missing or mistyped required field, a duplicate node id, a link to an unknown node, a
    /// non-finite number, a newer schema version.
    /// </summary>
    public static GraphFile Read(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        if (!File.Exists(path)) throw new FileNotFoundException($"{path}: no such graph file", path);
        JsonDocument doc;
        try
        {
            using var fs = File.OpenRead(path);
            doc = JsonDocument.Parse(fs, new JsonDocumentOptions { MaxDepth = 16 });
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{path}: not valid JSON ({e.Message})", e);
        }
        using (doc)
        {
            var p = new FieldReader(path);
            var root = doc.RootElement;
            p.Expect(root, JsonValueKind.Object, "the top level");
            var md = p.Object(root, "metadata", "metadata");
            int? schema = p.OptionalInt(md, "schema_version", "metadata.schema_version");
            if (schema > SchemaVersion) throw new InvalidDataException($"{path}: metadata.schema_version is {schema}; this FeatureLens reads up to {SchemaVersion}");
            var metadata = new GraphFileMetadata(p.String(md, "slug", "metadata.slug"), p.String(md, "scan", "metadata.scan"),
                p.Strings(md, "transcoder_list", "metadata.transcoder_list"), p.Strings(md, "prompt_tokens", "metadata.prompt_tokens"),
                p.String(md, "prompt", "metadata.prompt"), p.OptionalNumber(md, "node_threshold", "metadata.node_threshold"), schema);
            var q = p.Object(root, "qParams", "qParams");
            var supernodes = new List<IReadOnlyList<string>>();
            int k = 0;
            foreach (var sn in p.Array(q, "supernodes", "qParams.supernodes"))
            {
                supernodes.Add(p.StringList(sn, $"qParams.supernodes[{k}]"));
                k++;
            }
            var qParams = new GraphFileQParams(p.Strings(q, "pinnedIds", "qParams.pinnedIds"), supernodes, p.String(q, "linkType", "qParams.linkType"),
                p.String(q, "clickedId", "qParams.clickedId"), p.String(q, "sg_pos", "qParams.sg_pos"));

            var nodes = new List<GraphFileNode>();
            var ids = new HashSet<string>(StringComparer.Ordinal);
            k = 0;
            foreach (var e in p.Array(root, "nodes", "nodes"))
            {
                string at = Inv($"nodes[{k}]");
                p.Expect(e, JsonValueKind.Object, at);
                var node = new GraphFileNode(
                    p.String(e, "node_id", at + ".node_id"), p.Long(e, "feature", at + ".feature"), p.String(e, "layer", at + ".layer"),
                    p.Int(e, "ctx_idx", at + ".ctx_idx"), p.String(e, "feature_type", at + ".feature_type"),
                    p.OptionalNumber(e, "token_prob", at + ".token_prob") ?? 0, p.OptionalBool(e, "is_target_logit", at + ".is_target_logit") ?? false,
                    p.OptionalInt(e, "run_idx", at + ".run_idx") ?? 0, p.OptionalInt(e, "reverse_ctx_idx", at + ".reverse_ctx_idx") ?? 0,
                    p.String(e, "jsNodeId", at + ".jsNodeId"), p.OptionalString(e, "clerp", at + ".clerp") ?? "",
                    p.OptionalNumber(e, "influence", at + ".influence"), p.OptionalNumber(e, "activation", at + ".activation"),
                    p.OptionalInt(e, "latent", at + ".latent"), p.OptionalNumber(e, "input", at + ".input"), p.OptionalNumber(e, "bias", at + ".bias"));
                if (node.CtxIdx < 0) throw new InvalidDataException($"{path}: {at}.ctx_idx is {node.CtxIdx}; positions are ≥ 0");
                if (!ids.Add(node.NodeId)) throw new InvalidDataException($"{path}: {at}.node_id '{node.NodeId}' appears twice");
                nodes.Add(node);
                k++;
            }
            var links = new List<GraphFileLink>();
            k = 0;
            foreach (var e in p.Array(root, "links", "links"))
            {
                string at = Inv($"links[{k}]");
                p.Expect(e, JsonValueKind.Object, at);
                var link = new GraphFileLink(p.String(e, "source", at + ".source"), p.String(e, "target", at + ".target"), p.Number(e, "weight", at + ".weight"));
                if (!ids.Contains(link.Source)) throw new InvalidDataException($"{path}: {at}.source '{link.Source}' is not a node of the file");
                if (!ids.Contains(link.Target)) throw new InvalidDataException($"{path}: {at}.target '{link.Target}' is not a node of the file");
                links.Add(link);
                k++;
            }
            return new GraphFile(metadata, qParams, nodes, links);
        }
    }

    /// <summary>Typed field access with errors naming the file and the field.</summary>
    sealed class FieldReader(string path)
    {
        public void Expect(JsonElement e, JsonValueKind kind, string at)
        {
            if (e.ValueKind != kind) throw new InvalidDataException($"{path}: {at}: expected {Name(kind)}, got {Name(e.ValueKind)}");
        }

        static string Name(JsonValueKind k) => k switch
        {
            JsonValueKind.Object => "an object",
            JsonValueKind.Array => "an array",
            JsonValueKind.String => "a string",
            JsonValueKind.Number => "a number",
            JsonValueKind.True or JsonValueKind.False => "a boolean",
            JsonValueKind.Null => "null",
            _ => "nothing",
        };

        JsonElement Get(JsonElement obj, string name, string at) =>
            obj.TryGetProperty(name, out var v) ? v : throw new InvalidDataException($"{path}: {at} is missing");

        public JsonElement Object(JsonElement obj, string name, string at)
        {
            var v = Get(obj, name, at);
            Expect(v, JsonValueKind.Object, at);
            return v;
        }

        public JsonElement.ArrayEnumerator Array(JsonElement obj, string name, string at)
        {
            var v = Get(obj, name, at);
            Expect(v, JsonValueKind.Array, at);
            return v.EnumerateArray();
        }

        public string String(JsonElement obj, string name, string at)
        {
            var v = Get(obj, name, at);
            Expect(v, JsonValueKind.String, at);
            return v.GetString()!;
        }

        public string? OptionalString(JsonElement obj, string name, string at) =>
            obj.TryGetProperty(name, out var v) && v.ValueKind != JsonValueKind.Null ? String(obj, name, at) : null;

        public List<string> Strings(JsonElement obj, string name, string at) => StringList(Get(obj, name, at), at);

        public List<string> StringList(JsonElement v, string at)
        {
            Expect(v, JsonValueKind.Array, at);
            var list = new List<string>();
            int i = 0;
            foreach (var s in v.EnumerateArray())
            {
                Expect(s, JsonValueKind.String, Inv($"{at}[{i++}]"));
                list.Add(s.GetString()!);
            }
            return list;
        }

        public double Number(JsonElement obj, string name, string at)
        {
            var v = Get(obj, name, at);
            Expect(v, JsonValueKind.Number, at);
            double d = v.GetDouble();
            if (!double.IsFinite(d)) throw new InvalidDataException($"{path}: {at} is not finite");
            return d;
        }

        public double? OptionalNumber(JsonElement obj, string name, string at) =>
            obj.TryGetProperty(name, out var v) && v.ValueKind != JsonValueKind.Null ? Number(obj, name, at) : null;

        public long Long(JsonElement obj, string name, string at)
        {
            var v = Get(obj, name, at);
            Expect(v, JsonValueKind.Number, at);
            return v.TryGetInt64(out long l) ? l : throw new InvalidDataException($"{path}: {at}: expected an integer, got {v.GetRawText()}");
        }

        public int Int(JsonElement obj, string name, string at)
        {
            long l = Long(obj, name, at);
            return l is >= int.MinValue and <= int.MaxValue ? (int)l : throw new InvalidDataException($"{path}: {at}: {l} is out of range");
        }

        public int? OptionalInt(JsonElement obj, string name, string at) =>
            obj.TryGetProperty(name, out var v) && v.ValueKind != JsonValueKind.Null ? Int(obj, name, at) : null;

        public bool? OptionalBool(JsonElement obj, string name, string at)
        {
            if (!obj.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null) return null;
            return v.ValueKind switch
            {
                JsonValueKind.True => true,
                JsonValueKind.False => false,
                _ => throw new InvalidDataException($"{path}: {at}: expected a boolean, got {Name(v.ValueKind)}"),
            };
        }
    }
}
