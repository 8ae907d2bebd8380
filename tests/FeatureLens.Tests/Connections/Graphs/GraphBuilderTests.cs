using FeatureLens.Connections.Graphs;
using Xunit.Abstractions;

namespace FeatureLens.Tests.Connections.Graphs;

/// <summary>
/// Node selection over a synthetic <see cref="IAttributionRows"/> (a random sparse linear DAG with the replacement model's
/// structure): with room for every feature the graph is the full dense graph, bit for bit; with less room the chosen
/// features are the influential ones and their rows and columns stay exact; rows are stored as their non-zero runs.
/// </summary>
public class GraphBuilderTests(ITestOutputHelper output)
{
    [Fact]
    public void WithRoomForEveryFeatureTheGraphIsTheFullDenseGraph()
    {
        int seed = GraphSeed.Next();
        var rng = new Random(seed);
        var model = new SyntheticAttributionRows(rng, rng.Next(2, 5), rng.Next(3, 9), rng.Next(2, 5), 0.3 + 0.7 * rng.NextDouble(), 0.1);
        var options = new GraphBuildOptions { MaxFeatureNodes = model.NActive + rng.Next(0, 4), BatchSize = rng.Next(1, 9) };
        var reports = new List<GraphBuildProgress>();
        var graph = GraphBuilder.Build(model, options, new SyncProgress<GraphBuildProgress>(reports.Add));
        var dense = model.DenseGraph();
        string what = $"seed {seed} ({model.NActive} features, batch {options.BatchSize})";
        output.WriteLine(what);

        Assert.Equal(dense.Nodes, graph.Nodes);
        Assert.Equal(dense.Activations, graph.Activations);
        Assert.Equal(dense.LogitProbabilities, graph.LogitProbabilities);
        Assert.Equal(model.NActive, graph.ActiveFeatureCount);
        Assert.Equal(dense.Rows.Count, graph.Rows.Count);
        var a = new float[dense.Rows.Columns];
        var b = new float[dense.Rows.Columns];
        for (int r = 0; r < dense.Rows.Count; r++)
        {
            dense.Rows.CopyTo(r, a);
            graph.Rows.CopyTo(r, b);
            Assert.True(a.AsSpan().SequenceEqual(b), $"{what}: row {r} differs");
            Assert.Equal(dense.RowInputs[r], graph.RowInputs[r]);
            Assert.Equal(dense.RowBiases[r], graph.RowBiases[r]);
        }
        Assert.True(model.MaxBatch <= options.BatchSize);
        Assert.Equal(model.NActive + model.Logits.Count, model.RowsComputed);
        Assert.Equal(0, graph.BuildStats!.Rankings);
        Assert.Equal(new GraphBuildProgress("features", model.NActive, model.NActive), reports[^1]);
        Assert.Contains(reports, p => p.Phase == "logits" && p.Done == model.Logits.Count);
    }

    [Fact]
    public void WithLessRoomTheInfluentialFeaturesAreChosenAndStayExact()
    {
        int seed = GraphSeed.Next();
        var rng = new Random(seed);
        SyntheticAttributionRows model;
        List<int> live;
        do
        {
            model = new SyntheticAttributionRows(rng, rng.Next(2, 5), rng.Next(3, 9), rng.Next(2, 5), 0.2 + 0.6 * rng.NextDouble(), 0.35);
            var full = GraphPruning.Full(model.DenseGraph());
            live = [.. Enumerable.Range(0, model.NActive).Where(f => full.NodeInfluence[f] > 0)];
        }
        while (live.Count < 2 || live.Count == model.NActive);
        int batch = rng.Next(1, 6), interval = rng.Next(1, 4);
        string what = $"seed {seed} ({model.NActive} features, {live.Count} with influence, batch {batch}, interval {interval})";
        output.WriteLine(what);

        // room for exactly the features with influence: those are the ones chosen
        var graph = GraphBuilder.Build(model, new GraphBuildOptions { MaxFeatureNodes = live.Count, BatchSize = batch, UpdateInterval = interval });
        var chosen = SourceIndices(model, graph);
        Assert.True(live.SequenceEqual(chosen), $"{what}: chose [{string.Join(",", chosen)}], the features with influence are [{string.Join(",", live)}]");
        Assert.True(graph.BuildStats!.Rankings >= 1);

        // room for fewer: every chosen feature has influence, and the graph's entries are the dense rows' restricted to its columns
        int k = rng.Next(1, live.Count);
        graph = GraphBuilder.Build(model, new GraphBuildOptions { MaxFeatureNodes = k, BatchSize = batch, UpdateInterval = interval });
        chosen = SourceIndices(model, graph);
        Assert.Equal(k, chosen.Count);
        Assert.All(chosen, f => Assert.Contains(f, live));
        var column = graph.Nodes.Take(graph.FirstLogit).Select(n => model.Sources.ToList().IndexOf(n)).ToArray();
        for (int r = 0; r < graph.Rows.Count; r++)
        {
            int node = graph.RowNode(r);
            int denseRow = node < graph.FeatureCount ? column[node] : model.NActive + (node - graph.FirstLogit);
            for (int c = 0; c < graph.FirstLogit; c++)
                Assert.Equal(model.Rows[denseRow][column[c]], graph.Rows.Get(r, c));
            Assert.Equal(model.Inputs[denseRow], graph.RowInputs[r]);
        }
    }

    static List<int> SourceIndices(SyntheticAttributionRows model, AttributionGraph graph)
    {
        var index = model.Sources.Select((n, i) => (n, i)).ToDictionary(x => x.n, x => x.i);
        return [.. graph.Nodes.Take(graph.FeatureCount).Select(n => index[n])];
    }

    [Fact]
    public void RowsAreStoredAsTheirStructuralRuns()
    {
        int seed = GraphSeed.Next();
        var rng = new Random(seed);
        // dense within the structure, as real direct effects are
        var model = new SyntheticAttributionRows(rng, 6, 24, 8, density: 1.0);
        var graph = GraphBuilder.Build(model, new GraphBuildOptions { MaxFeatureNodes = model.NActive / 2, BatchSize = 16 });
        var stats = graph.BuildStats!;
        long allowed = 0;
        var sources = model.Sources;
        var targets = graph.Nodes.Take(graph.FeatureCount).Concat(graph.Nodes.Skip(graph.FirstLogit)).ToList();
        foreach (var t in targets)
            foreach (var s in sources)
                if (SyntheticAttributionRows.CanAffect(s, t)) allowed++;
        output.WriteLine($"seed {seed}: {model.Sources.Count} sources, {stats.RowsComputed} rows: stored {stats.StoredValues} values in {stats.StoredRuns} runs " +
            $"({stats.StoredBytes / 1024.0:F0} KiB) against {allowed} structurally possible entries; dense {stats.DenseBytes / 1024.0:F0} KiB; {stats.Rankings} rankings");
        Assert.Equal(targets.Count, stats.RowsComputed);
        Assert.True(stats.StoredValues <= allowed + SegmentRows.MergeGap * stats.StoredRuns, $"seed {seed}: more values stored than the structure allows");
        Assert.True(stats.StoredBytes <= 4 * allowed + 8 * stats.StoredRuns + 4 * SegmentRows.MergeGap * stats.StoredRuns);
        Assert.True(stats.StoredBytes < stats.DenseBytes / 2, $"seed {seed}: {stats.StoredBytes} bytes stored, dense {stats.DenseBytes}");
        // an index+value sparse form would take 8 bytes per stored non-zero
        Assert.True(stats.StoredBytes < 0.6 * 8 * stats.StoredValues);
        // the final graph keeps only the chosen columns
        Assert.True(graph.Rows.StoredValues <= stats.StoredValues);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(-5)]
    public void MaxFeatureNodesBelowOneIsRefused(int max)
    {
        var model = new SyntheticAttributionRows(new Random(GraphSeed.Next()), 2, 3, 2, 0.5);
        var e = Assert.Throws<ArgumentException>(() => GraphBuilder.Build(model, new GraphBuildOptions { MaxFeatureNodes = max }));
        Assert.Contains("--max-feature-nodes", e.Message, StringComparison.Ordinal);
        Assert.Equal(0, model.Calls);
    }

    [Fact]
    public void NonFiniteRowsAreReportedWithTheirTarget()
    {
        var model = new SyntheticAttributionRows(new Random(GraphSeed.Next()), 2, 3, 2, 1.0, nLogits: 2);
        model.Rows[model.NActive][0] = float.NaN;
        var e = Assert.Throws<InvalidDataException>(() => GraphBuilder.Build(model));
        Assert.Contains("Logit", e.Message, StringComparison.Ordinal);
        Assert.Contains("NaN", e.Message, StringComparison.Ordinal);
    }

    /// <summary>An IProgress that reports on the calling thread (Progress&lt;T&gt; posts to the thread pool).</summary>
    sealed class SyncProgress<T>(Action<T> report) : IProgress<T>
    {
        public void Report(T value) => report(value);
    }
}
