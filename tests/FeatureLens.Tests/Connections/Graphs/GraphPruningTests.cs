using System.Text.Json;
using FeatureLens.Connections.Graphs;
using Xunit.Abstractions;

namespace FeatureLens.Tests.Connections.Graphs;

/// <summary>
/// Influence and pruning against python/graph_reference.py (numpy float64, influence by (I − Â)⁻¹ − I, pruning by the
/// written rules) on small random graphs with fresh seeds: the same kept nodes and edges, influences within 1e-5.
/// </summary>
public class GraphPruningTests(ITestOutputHelper output)
{
    static string Script => Path.Combine(AppContext.BaseDirectory, "python", "graph_reference.py");

    [Fact]
    public void InfluenceAndPruningMatchTheDirectDefinitions()
    {
        int seed = GraphSeed.Next();
        var rng = new Random(seed);
        const int Cases = 24;
        var graphs = new List<(SyntheticAttributionRows Model, AttributionGraph Graph, double Nt, double Et)>();
        for (int c = 0; c < Cases; c++)
        {
            var model = new SyntheticAttributionRows(rng, rng.Next(1, 5), rng.Next(2, 7), rng.Next(1, 4), 0.2 + 0.8 * rng.NextDouble(), rng.NextDouble() < 0.5 ? 0.2 : 0);
            double nt = c switch { 0 => 0.8, 1 => 0, 2 => 1, _ => rng.NextDouble() };
            double et = c switch { 0 => 0.98, 1 => 1, 2 => 0, _ => rng.NextDouble() };
            graphs.Add((model, model.DenseGraph(), nt, et));
        }
        using var dir = new TempDir();
        var jobs = graphs.Select(g => new Dictionary<string, object>
        {
            ["A"] = g.Model.DenseAdjacency(),
            ["n_features"] = g.Graph.FeatureCount, ["n_errors"] = g.Graph.ErrorCount,
            ["n_embeddings"] = g.Graph.EmbeddingCount, ["n_logits"] = g.Graph.LogitCount,
            ["probs"] = g.Graph.LogitProbabilities.Select(p => (double)p).ToArray(),
            ["node_threshold"] = g.Nt, ["edge_threshold"] = g.Et,
        }).ToList();
        File.WriteAllText(dir.File("job.json"), JsonSerializer.Serialize(jobs));
        TorchReference.RunPython(Script, "--job", dir.File("job.json"), "--out", dir.File("out.json"));
        using var doc = JsonDocument.Parse(File.ReadAllText(dir.File("out.json")));
        var answers = doc.RootElement.EnumerateArray().ToList();

        for (int c = 0; c < Cases; c++)
        {
            var (model, graph, nt, et) = graphs[c];
            var expect = answers[c];
            string what = $"seed {seed}, case {c} ({graph.FeatureCount} features, {graph.Nodes.Count} nodes, thresholds {nt:R}/{et:R})";
            var pruned = GraphPruning.Prune(graph, nt, et);
            var infl = expect.GetProperty("influence").EnumerateArray().Select(e => e.GetDouble()).ToArray();
            var cum = expect.GetProperty("cumulative").EnumerateArray().Select(e => e.GetDouble()).ToArray();
            for (int i = 0; i < infl.Length; i++)
            {
                Assert.True(Math.Abs(pruned.NodeInfluence[i] - infl[i]) <= 1e-5 * Math.Max(1, Math.Abs(infl[i])), $"{what}: influence of node {i} {pruned.NodeInfluence[i]} vs {infl[i]}");
                Assert.True(Math.Abs(pruned.CumulativeInfluence[i] - cum[i]) <= 1e-5, $"{what}: cumulative influence of node {i} {pruned.CumulativeInfluence[i]} vs {cum[i]}");
            }
            // dead features: exactly zero influence
            foreach (int d in model.Dead) Assert.Equal(0.0, pruned.NodeInfluence[d]);
            var keptNodes = expect.GetProperty("node_kept").EnumerateArray().Select(e => e.GetBoolean()).ToArray();
            Assert.True(keptNodes.SequenceEqual(pruned.NodeKept), $"{what}: kept nodes differ: oracle [{Ones(keptNodes)}], ours [{Ones(pruned.NodeKept)}]");
            var edgesExpected = expect.GetProperty("edges").EnumerateArray().Select(e => (e[0].GetInt32(), e[1].GetInt32())).ToHashSet();
            var edges = new HashSet<(int, int)>();
            for (int r = 0; r < graph.Rows.Count; r++)
                foreach (int s in pruned.KeptSources![r]) edges.Add((graph.RowNode(r), s));
            Assert.True(edgesExpected.SetEquals(edges), $"{what}: kept edges differ: {edgesExpected.Count} in the oracle, {edges.Count} here, {edgesExpected.Except(edges).Count()} missing, {edges.Except(edgesExpected).Count()} extra");
            if (c < 4) output.WriteLine($"{what}: kept {pruned.KeptNodeCount} nodes, {edges.Count} edges");
        }
        output.WriteLine($"seed {seed}: {Cases} random graphs agree with the oracle");
    }

    static string Ones(IEnumerable<bool> mask) => string.Join(",", mask.Select((b, i) => (b, i)).Where(x => x.b).Select(x => x.i));

    [Fact]
    public void FullGraphKeepsEveryNodeAndEdge()
    {
        int seed = GraphSeed.Next();
        var model = new SyntheticAttributionRows(new Random(seed), 3, 4, 3, 0.6);
        var graph = model.DenseGraph();
        var full = GraphPruning.Full(graph);
        Assert.All(full.NodeKept, Assert.True);
        Assert.Null(full.KeptSources);
        Assert.Null(full.NodeThreshold);
        var pruned = GraphPruning.Prune(graph, 0.8, 0.98);
        Assert.Equal(pruned.NodeInfluence, full.NodeInfluence);
    }

    [Theory]
    [InlineData(-0.01, 0.5, "--node-threshold")]
    [InlineData(1.5, 0.5, "--node-threshold")]
    [InlineData(double.NaN, 0.5, "--node-threshold")]
    [InlineData(0.5, -1, "--edge-threshold")]
    [InlineData(0.5, 1.0001, "--edge-threshold")]
    [InlineData(0.5, double.PositiveInfinity, "--edge-threshold")]
    public void ThresholdsOutsideTheUnitIntervalAreRefused(double nt, double et, string option)
    {
        var graph = new SyntheticAttributionRows(new Random(Random.Shared.Next()), 2, 3, 2, 0.5).DenseGraph();
        var e = Assert.Throws<ArgumentException>(() => GraphPruning.Prune(graph, nt, et));
        Assert.Contains(option, e.Message, StringComparison.Ordinal);
        Assert.Contains("between 0 and 1", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void ACycleIsReportedNotLooped()
    {
        // two features feeding each other: not a DAG
        var nodes = new List<GraphNode>
        {
            new(GraphNodeKind.Feature, 0, 0, 1), new(GraphNodeKind.Feature, 1, 0, 2),
            new(GraphNodeKind.Embedding, -1, 0, 7), new(GraphNodeKind.Logit, 2, 0, 9),
        };
        var rows = new SegmentRows(3);
        rows.Add([0, 1, 1], "f0");
        rows.Add([1, 0, 0], "f1");
        rows.Add([0, 1, 0], "logit");
        var g = new AttributionGraph(nodes, rows, [1, 1, 1, float.NaN], [0, 0, 0], [0, 0, 0], [0.9f], 2);
        var e = Assert.Throws<InvalidDataException>(() => GraphPruning.Prune(g));
        Assert.Contains("cycle", e.Message, StringComparison.Ordinal);
    }
}
