using System.Text.Json.Nodes;
using FeatureLens.Connections.Graphs;
using Xunit.Abstractions;

namespace FeatureLens.Tests.Connections.Graphs;

/// <summary>
/// The graph JSON: written files read back to the same nodes, fields and links; an unpruned file satisfies completeness
/// (Σ incoming weights + bias = input) from the file alone; python/graph_schema_check.py checks the field names and
/// types against circuit-tracer's frontend schema; malformed files give errors naming the field.
/// </summary>
public class GraphJsonTests(ITestOutputHelper output)
{
    static string SchemaCheck => Path.Combine(AppContext.BaseDirectory, "python", "graph_schema_check.py");

    static (SyntheticAttributionRows Model, AttributionGraph Graph, GraphJsonInfo Info) Make(Random rng)
    {
        var model = new SyntheticAttributionRows(rng, rng.Next(2, 5), rng.Next(3, 8), rng.Next(2, 5), 0.3 + 0.7 * rng.NextDouble(), 0.1);
        var graph = GraphBuilder.Build(model, new GraphBuildOptions { MaxFeatureNodes = Math.Max(1, model.NActive - rng.Next(0, 4)), BatchSize = 4 });
        var info = new GraphJsonInfo
        {
            Slug = "test-graph", Scan = "custom-1234",
            TranscoderList = [.. Enumerable.Range(0, model.NLayers).Select(l => $"tc/layer{l}")],
            PromptTokens = [.. Enumerable.Range(0, model.NPos).Select(p => GraphJson.DisplayToken(p == 1 ? "a\nb\t\"q\"" : $"tok{p}"))],
            Prompt = "a prompt \"quoted\"\nwith lines",
            LogitTokens = [.. model.Logits.Select((_, i) => $"out{i}")],
            Label = (layer, latent) => latent % 3 == 0 ? $"label {layer}/{latent} ⏎" : null,
        };
        return (model, graph, info);
    }

    [Fact]
    public void PrunedGraphRoundTripsAndMatchesTheFrontendSchema()
    {
        int seed = GraphSeed.Next();
        var (_, graph, info) = Make(new Random(seed));
        var prune = GraphPruning.Prune(graph);
        using var dir = new TempDir();
        string path = dir.File("g.json");
        GraphJson.Write(path, graph, prune, info);
        Assert.Empty(Directory.GetFiles(dir.Path, "*.tmp"));
        var file = GraphJson.Read(path);
        output.WriteLine($"seed {seed}: {file.Nodes.Count} nodes, {file.Links.Count} links; {TorchReference.RunPython(SchemaCheck, path).Trim()}");

        Assert.Equal("test-graph", file.Metadata.Slug);
        Assert.Equal("custom-1234", file.Metadata.Scan);
        Assert.Equal(info.TranscoderList, file.Metadata.TranscoderList);
        Assert.Equal(info.PromptTokens, file.Metadata.PromptTokens);
        Assert.Contains("⏎", file.Metadata.PromptTokens[1], StringComparison.Ordinal);
        Assert.Equal(info.Prompt, file.Metadata.Prompt);
        Assert.Equal(0.8, file.Metadata.NodeThreshold);
        Assert.Equal(GraphJson.SchemaVersion, file.Metadata.SchemaVersion);
        Assert.Equal("both", file.QParams.LinkType);
        Assert.Empty(file.QParams.PinnedIds);

        var kept = Enumerable.Range(0, graph.Nodes.Count).Where(i => prune.NodeKept[i]).ToList();
        Assert.Equal(kept.Count, file.Nodes.Count);
        var byId = file.Nodes.ToDictionary(n => n.NodeId);
        foreach (int i in kept)
        {
            var node = graph.Nodes[i];
            var f = byId[GraphJson.NodeId(node, graph.NLayers)];
            Assert.Equal(node.Pos, f.CtxIdx);
            Assert.Equal(prune.CumulativeInfluence[i], f.Influence);
            int row = graph.NodeRow(i);
            switch (node.Kind)
            {
                case GraphNodeKind.Feature:
                    Assert.Equal($"{node.Layer}_{node.Index}_{node.Pos}", f.NodeId);
                    Assert.Equal(("cross layer transcoder", node.Layer.ToString(CultureInfo.InvariantCulture), (long)node.Index, node.Index), (f.FeatureType, f.Layer, f.Feature, f.Latent!.Value));
                    Assert.Equal(info.Label!(node.Layer, node.Index) ?? "", f.Clerp);
                    Assert.Equal(graph.Activations[i], (float)f.Activation!.Value);
                    Assert.Equal(graph.RowInputs[row], (float)f.Input!.Value);
                    Assert.Equal(graph.RowBiases[row], (float)f.Bias!.Value);
                    Assert.Equal($"{node.Layer}_{node.Index}-0", f.JsNodeId);
                    break;
                case GraphNodeKind.Error:
                    Assert.Equal(($"{node.Layer}_-1_{node.Pos}", "mlp reconstruction error", -1L), (f.NodeId, f.FeatureType, f.Feature));
                    Assert.Null(f.Latent); Assert.Null(f.Input); Assert.Null(f.Bias);
                    Assert.Equal(graph.Activations[i], (float)f.Activation!.Value);
                    break;
                case GraphNodeKind.Embedding:
                    Assert.Equal(($"E_{node.Index}_{node.Pos}", "embedding", "E", (long)node.Pos), (f.NodeId, f.FeatureType, f.Layer, f.Feature));
                    break;
                default:
                    int li = i - graph.FirstLogit;
                    Assert.Equal(($"{graph.NLayers + 1}_{node.Index}_{node.Pos}", "logit", (long)node.Index, li == 0), (f.NodeId, f.FeatureType, f.Feature, f.IsTargetLogit));
                    Assert.Equal(graph.LogitProbabilities[li], (float)f.TokenProb);
                    Assert.StartsWith($"Output \"out{li}\" (p=", f.Clerp, StringComparison.Ordinal);
                    Assert.Null(f.Activation);
                    Assert.Equal(graph.RowInputs[row], (float)f.Input!.Value);
                    break;
            }
        }
        var edges = new HashSet<(string, string)>();
        for (int r = 0; r < graph.Rows.Count; r++)
        {
            int t = graph.RowNode(r);
            if (!prune.NodeKept[t]) continue;
            foreach (int s in prune.KeptSources![r])
                edges.Add((GraphJson.NodeId(graph.Nodes[s], graph.NLayers), GraphJson.NodeId(graph.Nodes[t], graph.NLayers)));
        }
        Assert.Equal(edges.Count, file.Links.Count);
        foreach (var link in file.Links)
        {
            Assert.Contains((link.Source, link.Target), edges);
            int s = graph.Nodes.ToList().FindIndex(n => GraphJson.NodeId(n, graph.NLayers) == link.Source);
            int t = graph.Nodes.ToList().FindIndex(n => GraphJson.NodeId(n, graph.NLayers) == link.Target);
            Assert.Equal(graph.Edge(t, s), (float)link.Weight);
        }
    }

    [Fact]
    public void UnprunedFileHoldsEveryEdgeAndCompletenessHoldsFromTheFile()
    {
        int seed = GraphSeed.Next();
        var rng = new Random(seed);
        var model = new SyntheticAttributionRows(rng, rng.Next(2, 5), rng.Next(3, 8), rng.Next(2, 5), 0.3 + 0.7 * rng.NextDouble());
        var graph = GraphBuilder.Build(model, new GraphBuildOptions { MaxFeatureNodes = model.NActive });
        var info = new GraphJsonInfo
        {
            Slug = "full", Scan = "custom-x", PromptTokens = [.. Enumerable.Range(0, model.NPos).Select(p => $"t{p}")], Prompt = "p",
            LogitTokens = [.. model.Logits.Select((_, i) => $"o{i}")],
        };
        using var dir = new TempDir();
        string path = dir.File("full.json");
        GraphJson.Write(path, graph, GraphPruning.Full(graph), info);
        output.WriteLine($"seed {seed}: {TorchReference.RunPython(SchemaCheck, path).Trim()}");
        var file = GraphJson.Read(path);
        Assert.Null(file.Metadata.NodeThreshold);
        Assert.Equal(graph.Nodes.Count, file.Nodes.Count);
        long nonzero = model.Rows.Sum(r => (long)r.Count(v => v != 0));
        Assert.Equal(nonzero, file.Links.Count);
        var incoming = file.Links.GroupBy(l => l.Target).ToDictionary(g => g.Key, g => g.ToList());
        foreach (var n in file.Nodes.Where(n => n.Input != null))
        {
            var links = incoming.GetValueOrDefault(n.NodeId) ?? [];
            double sum = n.Bias!.Value, scale = Math.Abs(n.Bias.Value);
            foreach (var l in links) { sum += l.Weight; scale += Math.Abs(l.Weight); }
            Assert.True(Math.Abs(sum - n.Input!.Value) <= 1e-5 * (1 + scale), $"seed {seed}: {n.NodeId}: Σ weights + bias = {sum}, input {n.Input}");
        }
    }

    [Theory]
    [InlineData("not json", "not valid JSON")]
    [InlineData("[]", "the top level: expected an object")]
    [InlineData("drop:metadata.prompt", "metadata.prompt is missing")]
    [InlineData("set:nodes.0.ctx_idx=\"3\"", "nodes[0].ctx_idx: expected a number, got a string")]
    [InlineData("set:nodes.1.node_id=copy0", "nodes[1].node_id")]
    [InlineData("set:links.0.source=\"nowhere\"", "links[0].source 'nowhere' is not a node")]
    [InlineData("set:metadata.schema_version=99", "schema_version is 99")]
    [InlineData("set:nodes.0.feature=1.5", "nodes[0].feature: expected an integer")]
    [InlineData("drop:links", "links is missing")]
    public void MalformedFilesAreRefusedNamingTheField(string edit, string message)
    {
        var (_, graph, info) = Make(new Random(GraphSeed.Next()));
        using var dir = new TempDir();
        string path = dir.File("g.json");
        GraphJson.Write(path, graph, GraphPruning.Full(graph), info);
        if (!edit.Contains(':', StringComparison.Ordinal) || edit == "[]") File.WriteAllText(path, edit);
        else
        {
            var root = JsonNode.Parse(File.ReadAllText(path))!;
            string[] parts = edit.Split(':', 2);
            string target = parts[1].Split('=')[0];
            var keys = target.Split('.');
            JsonNode parent = root;
            foreach (var k in keys[..^1]) parent = int.TryParse(k, out int i) ? parent[i]! : parent[k]!;
            if (parts[0] == "drop") parent.AsObject().Remove(keys[^1]);
            else
            {
                string value = parts[1].Split('=', 2)[1];
                parent[keys[^1]] = value == "copy0" ? root["nodes"]![0]!["node_id"]!.DeepClone() : JsonNode.Parse(value);
            }
            File.WriteAllText(path, root.ToJsonString());
        }
        var e = Assert.Throws<InvalidDataException>(() => GraphJson.Read(path));
        Assert.Contains(message, e.Message, StringComparison.Ordinal);
        Assert.Contains("g.json", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void WriteRefusesInconsistentInfoAndAMissingFolder()
    {
        var (_, graph, info) = Make(new Random(GraphSeed.Next()));
        using var dir = new TempDir();
        Assert.Throws<ArgumentException>(() => GraphJson.Write(dir.File("a.json"), graph, GraphPruning.Full(graph), info with { PromptTokens = ["x"] }));
        Assert.Throws<DirectoryNotFoundException>(() => GraphJson.Write(dir.File("no/such/a.json"), graph, GraphPruning.Full(graph), info));
        Assert.Empty(Directory.GetFiles(dir.Path));
    }
}
