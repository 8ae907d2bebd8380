using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using FeatureLens.Analysis;
using FeatureLens.Connections.Graphs;

namespace FeatureLens.Web;

/// <summary>POST /api/graphs body: the attribution graph of <see cref="Prompt"/> over the set's transcoders (missing options take <see cref="GraphRunOptions"/>'s defaults).</summary>
public sealed record GraphComputeRequest(string? Set, string? Prompt, int? MaxFeatureNodes = null, double? NodeThreshold = null, double? EdgeThreshold = null);

/// <summary>
/// POST /api/graphs/{id}/qparams body: the pinned node ids and the supernodes, each <c>[name, nodeId, nodeId, …]</c> as
/// circuit-tracer's frontend stores them in the graph JSON's qParams.
/// </summary>
public sealed record GraphQParamsRequest(IReadOnlyList<string>? PinnedIds, IReadOnlyList<IReadOnlyList<string>>? Supernodes);

/// <summary>One saved graph file of the graphs folder (<see cref="Error"/> set, and the rest empty, when the file is not a readable graph).</summary>
public sealed record GraphSummary(string Id, string Slug, string Prompt, int Nodes, int Links, double? NodeThreshold, long Bytes, DateTime Modified, bool Cached, string? Error);

/// <summary>What the graph page may ask for.</summary>
public sealed record GraphLimits(int MaxFeatureNodesMax, int MaxFeatureNodesDefault, double DefaultNodeThreshold, double DefaultEdgeThreshold);

/// <summary>GET /api/graphs: the folder, its graph files (newest first) and the limits.</summary>
public sealed record GraphListResponse(string Folder, IReadOnlyList<GraphSummary> Graphs, GraphLimits Limits);

/// <summary>GET /api/graphs/progress: the graph being computed for a set (its builder's phase and rows done of total).</summary>
public sealed record GraphProgressResponse(string Set, bool Running, string? Phase, int Done, int Total, double ElapsedSeconds);

/// <summary>GET /api/graphs/{id} and POST /api/graphs: the graph re-pruned at <see cref="NodeThreshold"/>/<see cref="EdgeThreshold"/>, in the graph file's shape.</summary>
public sealed record GraphView
{
    public required string Id { get; init; }
    /// <summary>The file it is saved in.</summary>
    public required string File { get; init; }
    /// <summary>The set it was computed with in this server (null for a file read from disk).</summary>
    public string? Set { get; init; }
    /// <summary>
    /// True when the server holds the full (unpruned) graph, so re-pruning is exact; false for a file saved pruned, whose
    /// re-pruning works on the nodes and links it holds and so can only make it sparser.
    /// </summary>
    public required bool Full { get; init; }
    /// <summary>The node threshold the saved file was pruned at (null for an unpruned file).</summary>
    public double? FileNodeThreshold { get; init; }
    public required double NodeThreshold { get; init; }
    public required double EdgeThreshold { get; init; }
    /// <summary>Nodes of the held graph (before this pruning) and the feature nodes among them.</summary>
    public required int HeldNodes { get; init; }
    public required int HeldFeatures { get; init; }
    public required GraphFileMetadata Metadata { get; init; }
    public required GraphFileQParams QParams { get; init; }
    public required IReadOnlyList<GraphFileNode> Nodes { get; init; }
    public required IReadOnlyList<GraphFileLink> Links { get; init; }
}

/// <summary>
/// The graph page's backend: lists the graph files of a folder, computes new graphs with <see cref="GraphRun.Compute"/>
/// (saved into the folder), and re-prunes with <see cref="GraphPruning.Prune"/> the graphs it holds in a small LRU —
/// the full graph for those computed here, and for files the graph the file holds (rebuilt from its nodes and links).
/// Saving pins and supernodes rewrites only the file's qParams, through a temporary file that is read back before it
/// replaces the original.
/// </summary>
internal sealed partial class GraphService
{
    readonly TrackerService tracker;
    readonly TrackerAppOptions options;
    readonly LinkedList<GraphEntry> lru = new();   // most recently used first
    readonly Lock cacheLock = new();
    readonly Dictionary<string, Running> running = new(StringComparer.OrdinalIgnoreCase);
    readonly Dictionary<string, (DateTime Time, long Bytes, GraphSummary Summary)> summaries = new(StringComparer.Ordinal);

    public GraphService(TrackerService tracker, TrackerAppOptions options)
    {
        this.tracker = tracker;
        this.options = options;
        Folder = Path.GetFullPath(options.GraphsFolder ?? Path.Combine(Path.GetTempPath(), "featurelens-graphs", Environment.ProcessId.ToString(CultureInfo.InvariantCulture)));
        if (options.GraphsFolder != null && !Directory.Exists(Folder))
            throw new DirectoryNotFoundException($"the graphs folder {options.GraphsFolder} does not exist");
        Directory.CreateDirectory(Folder);
    }

    /// <summary>Where graph files are listed from and computed graphs are saved.</summary>
    public string Folder { get; }

    sealed class GraphEntry
    {
        public required string Id { get; init; }
        public required AttributionGraph Graph { get; init; }
        public required GraphJsonInfo Info { get; init; }
        public required bool Full { get; init; }
        public double? FileNodeThreshold { get; init; }
        public string? Set { get; init; }
        public required double DefaultNodeThreshold { get; init; }
        public required double DefaultEdgeThreshold { get; init; }
        public required HashSet<string> NodeIds { get; init; }
        public required GraphFileQParams QParams { get; set; }
        public required DateTime FileTime { get; set; }
    }

    sealed class Running : IProgress<GraphBuildProgress>
    {
        public DateTime Started { get; } = DateTime.UtcNow;
        public volatile string? Phase;
        public volatile int Done, Total;
        public void Report(GraphBuildProgress value) { Phase = value.Phase; Total = value.Total; Done = value.Done; }
    }

    // ---------- listing ----------

    public GraphListResponse List()
    {
        var list = new List<GraphSummary>();
        foreach (var file in new DirectoryInfo(Folder).EnumerateFiles("*.json").OrderByDescending(f => f.LastWriteTimeUtc).ThenBy(f => f.Name, StringComparer.Ordinal))
        {
            string id = Path.GetFileNameWithoutExtension(file.Name);
            if (!IdPattern().IsMatch(id)) continue;
            bool cached;
            lock (cacheLock) cached = lru.Any(e => e.Id == id);
            GraphSummary summary;
            lock (summaries)
            {
                if (summaries.TryGetValue(id, out var s) && s.Time == file.LastWriteTimeUtc && s.Bytes == file.Length) summary = s.Summary;
                else
                {
                    summary = Summarise(id, file);
                    summaries[id] = (file.LastWriteTimeUtc, file.Length, summary);
                }
            }
            list.Add(summary with { Cached = cached });
        }
        var limits = new GraphLimits(options.MaxGraphFeatureNodes, Math.Min(options.MaxGraphFeatureNodes, new GraphRunOptions().MaxFeatureNodes),
            GraphPruning.DefaultNodeThreshold, GraphPruning.DefaultEdgeThreshold);
        return new GraphListResponse(Folder, list, limits);
    }

    static GraphSummary Summarise(string id, FileInfo file)
    {
        try
        {
            var g = GraphJson.Read(file.FullName);
            return new GraphSummary(id, g.Metadata.Slug, g.Metadata.Prompt, g.Nodes.Count, g.Links.Count, g.Metadata.NodeThreshold, file.Length, file.LastWriteTimeUtc, false, null);
        }
        catch (Exception e) when (e is InvalidDataException or IOException or UnauthorizedAccessException)
        {
            return new GraphSummary(id, "", "", 0, 0, null, file.Length, file.LastWriteTimeUtc, false, e.Message);
        }
    }

    // ---------- computing ----------

    public GraphProgressResponse Progress(string? setName)
    {
        var (set, _) = tracker.FindSet(setName);
        Running? r;
        lock (running) running.TryGetValue(set.Name, out r);
        return r is null ? new GraphProgressResponse(set.Name, false, null, 0, 0, 0)
            : new GraphProgressResponse(set.Name, true, r.Phase, r.Done, r.Total, (DateTime.UtcNow - r.Started).TotalSeconds);
    }

    public GraphView Compute(GraphComputeRequest req, CancellationToken ct)
    {
        var (set, gate) = tracker.FindSet(req.Set);
        if (set.Transcoders is not { Count: > 0 } transcoders)
            throw new ApiException(400, $"set '{set.Name}' has no transcoders, so it cannot build attribution graphs: start the server with --transcoders DIR for it");
        string prompt;
        try { prompt = tracker.CheckText(set, req.Prompt); }
        catch (ApiException e) { throw new ApiException(e.Status, $"prompt: {e.Message}"); }
        int maxFeatures = req.MaxFeatureNodes ?? Math.Min(options.MaxGraphFeatureNodes, new GraphRunOptions().MaxFeatureNodes);
        if (maxFeatures < 1 || maxFeatures > options.MaxGraphFeatureNodes)
            throw new ApiException(400, $"maxFeatureNodes must be between 1 and {options.MaxGraphFeatureNodes} (got {maxFeatures})");
        double nt = req.NodeThreshold ?? GraphPruning.DefaultNodeThreshold, et = req.EdgeThreshold ?? GraphPruning.DefaultEdgeThreshold;
        CheckThresholds(nt, et);
        var runOptions = new GraphRunOptions { MaxFeatureNodes = maxFeatures, NodeThreshold = nt, EdgeThreshold = et };
        int[] ids = FeatureTracker.Encode(set.Set, prompt);

        var progress = new Running();
        GraphRunResult result;
        lock (gate)
        {
            lock (running) running[set.Name] = progress;
            try
            {
                result = GraphRun.Compute(set.Set.Model, transcoders, ids, runOptions, set.Labels, progress: progress, ct: ct);
            }
            finally
            {
                lock (running) running.Remove(set.Name);
            }
        }

        string id = NewId(result.Info.Slug);
        string path = PathOf(id);
        result.Write(path);
        var entry = new GraphEntry
        {
            Id = id, Graph = result.Graph, Info = result.Info, Full = true, Set = set.Name,
            DefaultNodeThreshold = nt, DefaultEdgeThreshold = et, NodeIds = NodeIds(result.Graph),
            QParams = EmptyQParams, FileTime = File.GetLastWriteTimeUtc(path),
        };
        Remember(entry);
        return Render(entry, result.Pruned, nt, et);
    }

    static readonly GraphFileQParams EmptyQParams = new([], [], "both", "", "");

    string NewId(string slug)
    {
        string stamp = DateTime.Now.ToString("yyyyMMdd-HHmmss", CultureInfo.InvariantCulture);
        string id = $"{slug}-{stamp}";
        for (int k = 2; File.Exists(PathOf(id)); k++) id = $"{slug}-{stamp}-{k}";
        return id;
    }

    // ---------- loading and re-pruning ----------

    /// <summary>The graph <paramref name="id"/> pruned at the thresholds (default: those it was computed with; for a file, everything it holds unless it is unpruned).</summary>
    public GraphView Load(string id, double? nodeThreshold, double? edgeThreshold)
    {
        var entry = Entry(id);
        double nt = nodeThreshold ?? entry.DefaultNodeThreshold, et = edgeThreshold ?? entry.DefaultEdgeThreshold;
        CheckThresholds(nt, et);
        return Render(entry, GraphPruning.Prune(entry.Graph, nt, et), nt, et);
    }

    static void CheckThresholds(double nt, double et)
    {
        if (!(nt >= 0 && nt <= 1)) throw new ApiException(400, $"nodeThreshold must be between 0 and 1 (got {nt.ToString(CultureInfo.InvariantCulture)})");
        if (!(et >= 0 && et <= 1)) throw new ApiException(400, $"edgeThreshold must be between 0 and 1 (got {et.ToString(CultureInfo.InvariantCulture)})");
    }

    /// <summary>The held graph of <paramref name="id"/>: from the LRU while its file is unchanged, else rebuilt from the file.</summary>
    GraphEntry Entry(string id)
    {
        string path = PathOf(id);
        if (!File.Exists(path)) throw new ApiException(404, $"unknown graph '{id}': there is no {id}.json in {Folder}");
        DateTime time = File.GetLastWriteTimeUtc(path);
        lock (cacheLock)
        {
            var node = lru.First;
            while (node != null && node.Value.Id != id) node = node.Next;
            if (node != null)
            {
                if (node.Value.FileTime == time)
                {
                    lru.Remove(node);
                    lru.AddFirst(node);
                    return node.Value;
                }
                lru.Remove(node);   // the file was replaced behind our back: read it again
            }
        }
        GraphFile file;
        try { file = GraphJson.Read(path); }
        catch (InvalidDataException e) { throw new ApiException(400, $"graph '{id}' cannot be read: {e.Message}"); }
        var entry = FromFile(id, file, time);
        Remember(entry);
        return entry;
    }

    void Remember(GraphEntry entry)
    {
        lock (cacheLock)
        {
            for (var n = lru.First; n != null; n = n.Next)
                if (n.Value.Id == entry.Id) { lru.Remove(n); break; }
            lru.AddFirst(entry);
            while (lru.Count > options.GraphCacheSize) lru.RemoveLast();
        }
    }

    static HashSet<string> NodeIds(AttributionGraph g) => g.Nodes.Select(n => GraphJson.NodeId(n, g.NLayers)).ToHashSet(StringComparer.Ordinal);

    /// <summary>The pruned graph in the file's shape: written by <see cref="GraphJson.Write"/> to a temporary file and read back, so the page sees exactly what a saved file holds.</summary>
    static GraphView Render(GraphEntry entry, PruneResult pruned, double nt, double et)
    {
        string tmp = Path.Combine(Path.GetTempPath(), $"featurelens-graph-view-{Guid.NewGuid():N}.json");
        GraphFile file;
        try
        {
            GraphJson.Write(tmp, entry.Graph, pruned, entry.Info);
            file = GraphJson.Read(tmp);
        }
        finally
        {
            File.Delete(tmp);
        }
        return new GraphView
        {
            Id = entry.Id, File = entry.Id + ".json", Set = entry.Set, Full = entry.Full, FileNodeThreshold = entry.FileNodeThreshold,
            NodeThreshold = nt, EdgeThreshold = et, HeldNodes = entry.Graph.Nodes.Count, HeldFeatures = entry.Graph.FeatureCount,
            Metadata = file.Metadata, QParams = entry.QParams, Nodes = file.Nodes, Links = file.Links,
        };
    }

    /// <summary>
    /// The graph a file holds, as an <see cref="AttributionGraph"/>: its nodes by kind in graph order, its links as the
    /// rows, activations, inputs, biases and logit probabilities from the nodes. For a file written unpruned this is the
    /// full graph; for a pruned file, the kept subgraph.
    /// </summary>
    static GraphEntry FromFile(string id, GraphFile file, DateTime time)
    {
        string where = $"graph '{id}'";
        var typed = new List<(GraphNode Node, GraphFileNode File)>();
        int? nLayers = null;
        foreach (var n in file.Nodes)
        {
            (GraphNodeKind kind, int layer, int latent) = n.FeatureType switch
            {
                "embedding" => (GraphNodeKind.Embedding, -1, EmbeddingToken(n, where)),
                "logit" => (GraphNodeKind.Logit, Layer(n, where) - 1, checked((int)n.Feature)),
                "mlp reconstruction error" => (GraphNodeKind.Error, Layer(n, where), -1),
                _ => (GraphNodeKind.Feature, Layer(n, where), n.Latent ?? checked((int)n.Feature)),
            };
            if (kind == GraphNodeKind.Logit)
            {
                if (nLayers is int l && l != layer) throw new ApiException(400, $"{where}: logit nodes disagree on the layer count ({l + 1} and {layer + 1})");
                nLayers = layer;
            }
            typed.Add((new GraphNode(kind, layer, n.CtxIdx, latent), n));
        }
        if (nLayers is null) throw new ApiException(400, $"{where} has no logit nodes, so it cannot be shown as an attribution graph");
        var ordered = typed.Where(t => t.Node.Kind == GraphNodeKind.Feature).OrderBy(t => t.Node.Layer).ThenBy(t => t.Node.Pos).ThenBy(t => t.Node.Index)
            .Concat(typed.Where(t => t.Node.Kind == GraphNodeKind.Error).OrderBy(t => t.Node.Layer).ThenBy(t => t.Node.Pos))
            .Concat(typed.Where(t => t.Node.Kind == GraphNodeKind.Embedding).OrderBy(t => t.Node.Pos))
            .Concat(typed.Where(t => t.Node.Kind == GraphNodeKind.Logit).OrderByDescending(t => t.File.TokenProb))
            .ToList();
        var nodes = ordered.Select(t => t.Node).ToList();
        var index = new Dictionary<string, int>(StringComparer.Ordinal);
        for (int i = 0; i < ordered.Count; i++) index[ordered[i].File.NodeId] = i;
        int nF = nodes.Count(n => n.Kind == GraphNodeKind.Feature);
        int firstLogit = nodes.Count(n => n.Kind != GraphNodeKind.Logit);
        int RowOf(int node) => node < nF ? node : node >= firstLogit ? nF + node - firstLogit : -1;

        int nRows = nF + (nodes.Count - firstLogit);
        var dense = new float[nRows][];
        foreach (var link in file.Links)
        {
            int t = index[link.Target], s = index[link.Source];
            int r = RowOf(t);
            if (r < 0) throw new ApiException(400, $"{where}: link {link.Source} → {link.Target} ends at a node that has no inputs");
            if (s >= firstLogit) throw new ApiException(400, $"{where}: link {link.Source} → {link.Target} starts at a logit node");
            (dense[r] ??= new float[firstLogit])[s] += (float)link.Weight;
        }
        var rows = new SegmentRows(firstLogit);
        var empty = new float[firstLogit];
        for (int r = 0; r < nRows; r++) rows.Add(dense[r] ?? empty, $"{where} row {r}");
        var activations = ordered.Select(t => (float)(t.File.Activation ?? double.NaN)).ToList();
        var rowFiles = ordered.Take(nF).Concat(ordered.Skip(firstLogit)).Select(t => t.File).ToList();
        var graph = new AttributionGraph(nodes, rows, activations,
            rowFiles.Select(f => (float)(f.Input ?? 0)).ToList(), rowFiles.Select(f => (float)(f.Bias ?? 0)).ToList(),
            ordered.Skip(firstLogit).Select(t => (float)t.File.TokenProb).ToList(), nF);

        var clerps = ordered.Take(nF).GroupBy(t => (t.Node.Layer, t.Node.Index)).ToDictionary(g => g.Key, g => g.First().File.Clerp);
        var info = new GraphJsonInfo
        {
            Slug = file.Metadata.Slug, Scan = file.Metadata.Scan, TranscoderList = file.Metadata.TranscoderList,
            PromptTokens = file.Metadata.PromptTokens.Count == graph.NPos ? file.Metadata.PromptTokens
                : throw new ApiException(400, $"{where}: metadata.prompt_tokens has {file.Metadata.PromptTokens.Count} tokens, the embedding nodes cover {graph.NPos} positions"),
            Prompt = file.Metadata.Prompt,
            LogitTokens = ordered.Skip(firstLogit).Select(t => LogitToken(t.File)).ToList(),
            Label = (layer, latent) => clerps.TryGetValue((layer, latent), out var c) && c.Length > 0 ? c : null,
        };
        bool full = file.Metadata.NodeThreshold is null;
        return new GraphEntry
        {
            Id = id, Graph = graph, Info = info, Full = full, FileNodeThreshold = file.Metadata.NodeThreshold,
            DefaultNodeThreshold = full ? GraphPruning.DefaultNodeThreshold : 1, DefaultEdgeThreshold = full ? GraphPruning.DefaultEdgeThreshold : 1,
            NodeIds = [.. file.Nodes.Select(n => n.NodeId)], QParams = file.QParams, FileTime = time,
        };
    }

    static int Layer(GraphFileNode n, string where) =>
        int.TryParse(n.Layer, NumberStyles.None, CultureInfo.InvariantCulture, out int l) ? l
            : throw new ApiException(400, $"{where}: node {n.NodeId} has layer '{n.Layer}', expected a layer number");

    /// <summary>An embedding node's token id, from its id <c>E_{token}_{pos}</c>.</summary>
    static int EmbeddingToken(GraphFileNode n, string where)
    {
        var parts = n.NodeId.Split('_');
        return parts.Length == 3 && int.TryParse(parts[1], NumberStyles.None, CultureInfo.InvariantCulture, out int t) ? t
            : throw new ApiException(400, $"{where}: embedding node id '{n.NodeId}' is not E_<token>_<position>");
    }

    /// <summary>A logit node's token as the file shows it: from its clerp <c>Output "tok" (p=…)</c>, else its token id.</summary>
    static string LogitToken(GraphFileNode n)
    {
        var m = LogitClerp().Match(n.Clerp);
        return m.Success ? m.Groups[1].Value : n.Feature.ToString(CultureInfo.InvariantCulture);
    }

    [GeneratedRegex("^Output \"(.*)\" \\(p=[^)]*\\)$", RegexOptions.Singleline)]
    private static partial Regex LogitClerp();

    [GeneratedRegex("^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")]
    private static partial Regex IdPattern();

    string PathOf(string id)
    {
        if (string.IsNullOrEmpty(id) || !IdPattern().IsMatch(id))
            throw new ApiException(400, $"'{id}' is not a graph id (a file name without .json: letters, digits, '.', '_' and '-')");
        return Path.Combine(Folder, id + ".json");
    }

    // ---------- pins and supernodes ----------

    public const int MaxSupernodes = 1000, MaxIds = 20000, MaxNameChars = 200;

    /// <summary>Saves the pinned ids and supernodes into the file's qParams (every other byte of the file's JSON kept).</summary>
    public GraphFileQParams SaveQParams(string id, GraphQParamsRequest req)
    {
        var entry = Entry(id);
        var pinned = req.PinnedIds ?? [];
        var supernodes = req.Supernodes ?? [];
        if (supernodes.Count > MaxSupernodes) throw new ApiException(400, $"at most {MaxSupernodes} supernodes (got {supernodes.Count})");
        int total = pinned.Count + supernodes.Sum(s => s?.Count ?? 0);
        if (total > MaxIds) throw new ApiException(400, $"at most {MaxIds} node ids in pins and supernodes together (got {total})");
        for (int i = 0; i < pinned.Count; i++)
            if (pinned[i] is null || !entry.NodeIds.Contains(pinned[i]))
                throw new ApiException(400, $"pinnedIds[{i}] '{pinned[i]}' is not a node of graph '{id}'");
        var names = new HashSet<string>(StringComparer.Ordinal);
        for (int i = 0; i < supernodes.Count; i++)
        {
            var s = supernodes[i];
            if (s is null || s.Count < 3) throw new ApiException(400, $"supernodes[{i}] must be [name, nodeId, nodeId, …] with at least two nodes");
            if (string.IsNullOrWhiteSpace(s[0]) || s[0].Length > MaxNameChars) throw new ApiException(400, $"supernodes[{i}]: the name (first entry) must be 1–{MaxNameChars} characters");
            if (!names.Add(s[0])) throw new ApiException(400, $"supernodes[{i}]: the name '{s[0]}' is used twice");
            var members = new HashSet<string>(StringComparer.Ordinal);
            for (int k = 1; k < s.Count; k++)
            {
                if (s[k] is null || !entry.NodeIds.Contains(s[k])) throw new ApiException(400, $"supernodes[{i}][{k}] '{s[k]}' is not a node of graph '{id}'");
                if (!members.Add(s[k])) throw new ApiException(400, $"supernodes[{i}] holds node '{s[k]}' twice");
            }
        }

        string path = PathOf(id);
        lock (entry)
        {
            JsonNode root;
            using (var fs = File.OpenRead(path)) root = JsonNode.Parse(fs) ?? throw new ApiException(400, $"graph '{id}' is empty");
            if (root["qParams"] is not JsonObject q) throw new ApiException(400, $"graph '{id}' has no qParams object");
            q["pinnedIds"] = new JsonArray([.. pinned.Select(p => (JsonNode?)JsonValue.Create(p))]);
            q["supernodes"] = new JsonArray([.. supernodes.Select(s => (JsonNode?)new JsonArray([.. s.Select(x => (JsonNode?)JsonValue.Create(x))]))]);
            string tmp = Path.Combine(Folder, $".{id}.json.{Environment.ProcessId}.{Guid.NewGuid():N}.tmp");
            try
            {
                using (var fs = new FileStream(tmp, FileMode.CreateNew, FileAccess.Write))
                using (var w = new Utf8JsonWriter(fs))
                    root.WriteTo(w);
                var check = GraphJson.Read(tmp);   // never replace the user's file by one that does not read back
                if (check.QParams.PinnedIds.Count != pinned.Count || check.QParams.Supernodes.Count != supernodes.Count)
                    throw new InvalidOperationException($"graph '{id}': the rewritten qParams did not read back");
                File.Move(tmp, path, overwrite: true);
            }
            finally
            {
                if (File.Exists(tmp)) File.Delete(tmp);
            }
            entry.QParams = entry.QParams with { PinnedIds = [.. pinned], Supernodes = [.. supernodes.Select(s => (IReadOnlyList<string>)[.. s])] };
            entry.FileTime = File.GetLastWriteTimeUtc(path);
            return entry.QParams;
        }
    }
}
