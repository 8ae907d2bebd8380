using System.Text.Json;
using FeatureLens.Clustering;
using FeatureLens.Analysis;
using FeatureLens.Connections.Graphs;
using FeatureLens.Database;
using FeatureLens.Tests.Database;
using FeatureLens.Runtime.Models;
using FeatureLens.Saes;
using FeatureLens.Saes.Formats;
using FeatureLens.Tests.Cli;
using FeatureLens.Tests.Connections;
using Xunit.Abstractions;

namespace FeatureLens.Tests.Clustering;

/// <summary>
/// featurelens cluster as a user runs it on stories260K with small random transcoders: --weights and --prompts write every
/// field of the clusters JSON, consistent with the library run on the same transcoders (assignment, dendrogram, heatmap,
/// cluster members and names); --graph writes the library's supernodes into the graph; bad options exit 1 with a message
/// and write nothing. Fresh random transcoders and options each run; the seed is printed.
/// </summary>
public sealed class ClusterCliTests(ITestOutputHelper output) : IDisposable
{
    static string Stories => Path.Combine(TestPaths.Shared, "models", "stories260K", "stories260K.bin");
    readonly TempDir _dir = new();

    public void Dispose() => _dir.Dispose();

    (string Dir, List<Sae> Saes) WriteTranscoders(Random rng, HookedTransformer model)
    {
        string dir = Path.Combine(_dir.Path, "transcoders");
        var tcs = ReplacementCheck.RandomTranscoders(rng, model.Config.NLayers, model.Config.DModel);
        foreach (var t in tcs) SaeWriter.Save(t, Path.Combine(dir, t.Config.HookName));
        return (dir, tcs);
    }

    static readonly string[] Fields = ["schema", "version", "source", "method", "cut", "knn", "seed", "resolution", "transcoders", "d_sae", "prompts", "features", "clusters", "score", "modularity", "dendrogram", "heatmap"];

    /// <summary>The file agrees with <paramref name="expected"/> (the library's result on the same profiles).</summary>
    static void AssertFileIs(string path, ClusterResult expected, CrossLayerTranscoder clt, string ctx)
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(path));
        var root = doc.RootElement;
        foreach (var f in Fields) Assert.True(root.TryGetProperty(f, out _), $"missing field '{f}' ({ctx})");
        Assert.Equal(ClusterFile.Schema, root.GetProperty("schema").GetString());
        Assert.Equal(expected.Profiles.Source, root.GetProperty("source").GetString());
        Assert.Equal(clt.Layers.Select(t => t.Config.Metadata.HookName), root.GetProperty("transcoders").EnumerateArray().Select(x => x.GetString()!));
        Assert.Equal(clt.Layers.Select(t => t.DSae), root.GetProperty("d_sae").EnumerateArray().Select(x => x.GetInt32()));
        var features = root.GetProperty("features").EnumerateArray().ToList();
        Assert.Equal(expected.Profiles.Features.Select(f => (f.Layer, f.Latent)), features.Select(f => (f.GetProperty("layer").GetInt32(), f.GetProperty("latent").GetInt32())));
        Assert.True(expected.Assignment.SequenceEqual(features.Select(f => f.GetProperty("cluster").GetInt32())), $"assignment differs from the library's ({ctx})");
        var clusters = root.GetProperty("clusters").EnumerateArray().ToList();
        Assert.Equal(expected.ClusterCount, clusters.Count);
        for (int c = 0; c < clusters.Count; c++)
        {
            var members = clusters[c].GetProperty("members").EnumerateArray().Select(x => x.GetInt32()).ToList();
            Assert.Equal(Enumerable.Range(0, expected.Assignment.Length).Where(i => expected.Assignment[i] == c), members);
            Assert.Equal(members.Count, clusters[c].GetProperty("size").GetInt32());
            Assert.Equal(c, clusters[c].GetProperty("id").GetInt32());
            Assert.StartsWith($"cluster {c}", clusters[c].GetProperty("name").GetString(), StringComparison.Ordinal);
        }
        var dendro = root.GetProperty("dendrogram").EnumerateArray().ToList();
        if (expected.Merges is { } merges)
        {
            Assert.Equal(merges.Length, dendro.Count);
            for (int r = 0; r < merges.Length; r++)
            {
                Assert.Equal((merges[r].A, merges[r].B, merges[r].Size), (dendro[r][0].GetInt32(), dendro[r][1].GetInt32(), dendro[r][3].GetInt32()));
                Assert.True(Math.Abs(merges[r].Distance - dendro[r][2].GetDouble()) <= 1e-6, $"merge {r}: distance {dendro[r][2]} vs {merges[r].Distance} ({ctx})");
            }
            Assert.Equal(JsonValueKind.Null, root.GetProperty("modularity").ValueKind);
        }
        else
        {
            Assert.Empty(dendro);
            Assert.True(Math.Abs(expected.Modularity!.Value - root.GetProperty("modularity").GetDouble()) <= 1e-9, ctx);
        }
        var heat = root.GetProperty("heatmap");
        Assert.Equal(expected.HeatmapOrder, heat.GetProperty("features").EnumerateArray().Select(x => x.GetInt32()));
        var cos = heat.GetProperty("cosine").EnumerateArray().ToList();
        int h = expected.HeatmapOrder.Length;
        for (int a = 0; a < h; a++)
            for (int b = 0; b < h; b++)
                Assert.True(Math.Abs(expected.Heatmap[a * h + b] - cos[a][b].GetDouble()) <= 1e-5, $"heatmap[{a},{b}] {cos[a][b]} vs {expected.Heatmap[a * h + b]} ({ctx})");
    }

    [Fact]
    public void DbGivesEachFeatureItsLabelAndTopTokensFromTheDatabase()
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        output.WriteLine($"seed {seed}");
        using var model = HookedTransformer.Load(Stories);
        var (dir, saes) = WriteTranscoders(rng, model);
        var clt = ReplacementModel.OrderByLayer(model, saes);
        // a feature database over the first two layers' transcoders, with labels for some of their features
        var scanned = clt.Layers.Take(2).ToList();
        var set = ScanTestData.Set(scanned);
        string csv = Path.Combine(_dir.Path, "labels.csv");
        var lines = new List<string> { "hook,feature,label" };
        foreach (var t in scanned)
            for (int j = 0; j < t.DSae; j++)
                if (rng.NextDouble() < 0.5) lines.Add($"{t.Config.Metadata.HookName},{j},word{rng.Next(5)} {j}");
        File.WriteAllLines(csv, lines);
        string db = Path.Combine(_dir.Path, "features.sqlite");
        CorpusScan.Run(set, [], [ScanTestData.Corpus(rng, _dir.Path, documents: 30)], ScanTestData.Settings(rng) with { Tokens = 1000 }, ShardSpec.All, db,
            labels: FeatureLabels.Load(csv, set));

        string outPath = Path.Combine(_dir.Path, "withdb.json");
        var r = CliTests.Run("cluster", "--model", Stories, "--transcoders", dir, "--weights", "--cut", $"k={rng.Next(2, 5)}", "--db", db, "--out", outPath);
        Assert.True(r.ExitCode == 0, r.Stderr + r.Text);
        using var store = FeatureStore.Open(db);
        using var doc = JsonDocument.Parse(File.ReadAllText(outPath));
        var hooks = clt.Layers.Select(t => t.Config.Metadata.HookName).ToList();
        int labelled = 0, withTokens = 0, index = -1;
        // top tokens are looked up for the first 8 members of each cluster (what a card shows)
        var shown = doc.RootElement.GetProperty("clusters").EnumerateArray()
            .SelectMany(c => c.GetProperty("members").EnumerateArray().Select(x => x.GetInt32()).Take(8)).ToHashSet();
        foreach (var f in doc.RootElement.GetProperty("features").EnumerateArray())
        {
            index++;
            int layer = f.GetProperty("layer").GetInt32(), latent = f.GetProperty("latent").GetInt32();
            var sae = store.Saes.FirstOrDefault(x => x.Hook == hooks[layer]);
            string? label = f.GetProperty("label").ValueKind == JsonValueKind.Null ? null : f.GetProperty("label").GetString();
            // labels: the database's, for the scanned layers only
            Assert.Equal(sae != null ? store.LabelOf(sae, latent)?.Label : null, label);
            if (label != null) labelled++;
            bool hasTokens = f.TryGetProperty("top_tokens", out var tokens);
            Assert.True(hasTokens == (sae != null && shown.Contains(index)), $"feature {layer}:{latent}: top tokens {(hasTokens ? "present" : "missing")}");
            if (hasTokens)
            {
                var top = store.Dashboard(sae!, latent).Top;
                var expected = top.Where(e => e.Pos < e.Text.Length).Select(e => e.Text[e.Pos]).Distinct().Take(5);
                Assert.Equal(expected, tokens.EnumerateArray().Select(x => x.GetString()!));
                withTokens++;
            }
        }
        Assert.True(labelled > 0, "no feature got the database's label");
        Assert.True(withTokens > 0, "no feature got top tokens from the database");
    }

    [Fact]
    public void WeightsAndPromptsWriteTheLibrarysClustersAndGraphModeWritesSupernodes()
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        using var model = HookedTransformer.Load(Stories);
        var (dir, saes) = WriteTranscoders(rng, model);
        var clt = ReplacementModel.OrderByLayer(model, saes);
        int top = rng.Next(4, 12), k = rng.Next(2, 6), knn = rng.Next(3, 8), lseed = rng.Next(1000);
        string ctx = $"seed {seed}, top-partners {top}, k={k}, knn {knn}, louvain seed {lseed}";
        output.WriteLine(ctx);

        // --weights, hierarchical with a cluster count
        string weightsOut = Path.Combine(_dir.Path, "weights.json");
        var r = CliTests.Run("cluster", "--model", Stories, "--transcoders", dir, "--weights", "--top-partners", $"{top}", "--cut", $"k={k}", "--out", weightsOut);
        Assert.True(r.ExitCode == 0, r.Stderr + r.Text);
        var wSet = ConnectionProfiles.FromWeights(clt, top);
        AssertFileIs(weightsOut, FeatureClustering.Run(wSet, new ClusterOptions { CutCount = k }), clt, ctx + ", --weights");
        using (var doc = JsonDocument.Parse(File.ReadAllText(weightsOut)))
        {
            Assert.Equal(k, doc.RootElement.GetProperty("cut").GetProperty("k").GetInt32());
            Assert.Equal(JsonValueKind.Null, doc.RootElement.GetProperty("prompts").ValueKind);
        }

        // --prompts, Louvain
        var prompts = Enumerable.Range(0, rng.Next(2, 4)).Select(_ => (int[])[1, .. Enumerable.Range(0, rng.Next(5, 9)).Select(_ => rng.Next(3, model.Config.VocabSize))]).ToList();
        string promptsPath = Path.Combine(_dir.Path, "prompts.jsonl"), promptsOut = Path.Combine(_dir.Path, "prompts.json");
        File.WriteAllLines(promptsPath, prompts.Select(p => JsonSerializer.Serialize(new { tokens = p })));
        r = CliTests.Run("cluster", "--model", Stories, "--transcoders", dir, "--prompts", promptsPath, "--method", "louvain", "--knn", $"{knn}", "--seed", $"{lseed}", "--out", promptsOut);
        Assert.True(r.ExitCode == 0, r.Stderr + r.Text);
        var graphs = prompts.Select(p => GraphBuilder.Build(ReplacementModel.Build(model, clt, p), new GraphBuildOptions())).ToList();
        var pSet = ConnectionProfiles.FromGraphs(graphs);
        AssertFileIs(promptsOut, FeatureClustering.Run(pSet, new ClusterOptions { Method = "louvain", Knn = knn, Seed = lseed }), clt, ctx + ", --prompts");
        using (var doc = JsonDocument.Parse(File.ReadAllText(promptsOut)))
            Assert.Equal(prompts.Count, doc.RootElement.GetProperty("prompts").GetInt32());

        // --graph: the library's supernodes written into a copy of the graph
        string graphPath = Path.Combine(_dir.Path, "graph.json"), grouped = Path.Combine(_dir.Path, "grouped.json");
        r = CliTests.Run(["graph", "--model", Stories, "--tokens", string.Join(",", prompts[0]), "--transcoders", dir, "--no-prune", "--out", graphPath]);
        Assert.True(r.ExitCode == 0, r.Stderr + r.Text);
        int L = clt.Layers.Count, from = rng.Next(0, L - 1), to = rng.Next(from, L);
        r = CliTests.Run("cluster", "--graph", graphPath, "--clusters", weightsOut, "--layers", $"{from}-{to}", "--out", grouped);
        Assert.True(r.ExitCode == 0, r.Stderr + r.Text);
        var expected = AutoSupernodes.Compute(GraphJson.Read(graphPath), graphPath, ClusterFile.Read(weightsOut), from, to);
        var written = GraphJson.Read(grouped).QParams.Supernodes;
        Assert.Equal(expected.Select(s => string.Join("|", s)), written.Select(s => string.Join("|", s)));
        Assert.True(expected.Count > 0 || GraphJson.Read(graphPath).Nodes.Count(n => n.FeatureType == "cross layer transcoder") < 2, $"no supernodes ({ctx}, layers {from}-{to})");
        Assert.Equal(GraphJson.Read(graphPath).Nodes.Count, GraphJson.Read(grouped).Nodes.Count);
        output.WriteLine($"{ctx}: {wSet.Count} weight-profile features, {pSet.Count} prompt-profile features, {expected.Count} supernodes over layers {from}-{to}");
    }

    [Fact]
    public void BadOptionsExitOneWithAMessageAndWriteNothing()
    {
        var rng = new Random(Random.Shared.Next());
        string dir;
        using (var model = HookedTransformer.Load(Stories)) dir = WriteTranscoders(rng, model).Dir;
        string o = Path.Combine(_dir.Path, "out.json");
        string badPrompts = Path.Combine(_dir.Path, "bad.jsonl");
        File.WriteAllText(badPrompts, "{\"tokens\": [1, \"x\"]}\n");
        string notClusters = Path.Combine(_dir.Path, "not-clusters.json");
        File.WriteAllText(notClusters, "{\"schema\": \"other\"}");
        var cases = new (string[] Args, string Message)[]
        {
            (["--transcoders", dir, "--weights"], "give --model with --transcoders"),
            (["--model", Stories, "--weights"], "--transcoders is required"),
            (["--model", Stories, "--transcoders", dir], "give exactly one of --prompts F.jsonl or --weights"),
            (["--model", Stories, "--transcoders", dir, "--weights", "--prompts", badPrompts], "give exactly one of --prompts F.jsonl or --weights"),
            (["--model", Stories, "--transcoders", dir, "--weights", "--method", "kmeans"], "kmeans"),
            (["--model", Stories, "--transcoders", dir, "--weights", "--cut", "k=0"], "--cut 'k=0': expected"),
            (["--model", Stories, "--transcoders", dir, "--weights", "--cut", "3.5"], "cosine distance"),
            (["--model", Stories, "--transcoders", dir, "--prompts", badPrompts], "\"tokens\" must be a list of integer ids"),
            (["--model", Stories, "--transcoders", dir, "--prompts", Path.Combine(_dir.Path, "missing.jsonl")], "no such file"),
            (["--graph", o + ".g", "--layers", "0-1"], "--graph needs --clusters"),
            (["--graph", o + ".g", "--clusters", notClusters, "--layers", "2-1"], "expected a layer range A-B"),
            (["--graph", o + ".g", "--clusters", notClusters, "--layers", "0-1"], "not a FeatureLens clusters file"),
        };
        foreach (var (args, message) in cases)
        {
            var r = CliTests.Run(["cluster", .. args, "--out", o]);
            Assert.True(r.ExitCode == 1, $"{string.Join(" ", args)}: exit {r.ExitCode}, {r.Stderr}{r.Text}");
            Assert.True(r.Stderr.Contains(message, StringComparison.Ordinal), $"{string.Join(" ", args)}: expected '{message}' in: {r.Stderr}");
            Assert.False(File.Exists(o), $"{string.Join(" ", args)} wrote {o}");
            Assert.Empty(Directory.GetFiles(_dir.Path, "out.json*"));
        }
        // serve: a missing or bad clusters file stops it before it listens
        var serve = CliTests.Run("serve", "--clusters", Path.Combine(_dir.Path, "none.json"), "--port", "0");
        Assert.Equal(1, serve.ExitCode);
        Assert.Contains("--clusters: " + Path.Combine(_dir.Path, "none.json") + ": no such clusters file", serve.Stderr, StringComparison.Ordinal);
        serve = CliTests.Run("serve", "--clusters", notClusters, "--port", "0");
        Assert.Equal(1, serve.ExitCode);
        Assert.Contains(notClusters + ": 'schema' is not", serve.Stderr, StringComparison.Ordinal);
        var missing = CliTests.Run("cluster", "--model", Stories, "--transcoders", dir, "--weights", "--out", Path.Combine(_dir.Path, "nowhere", "x.json"));
        Assert.Equal(1, missing.ExitCode);
        Assert.Contains("does not exist", missing.Stderr, StringComparison.Ordinal);
    }
}
