using System.Text.Json;
using FeatureLens.Connections.Graphs;
using FeatureLens.Runtime.Models;
using FeatureLens.Saes;
using FeatureLens.Saes.Formats;
using FeatureLens.Tests.Connections;
using Xunit.Abstractions;

namespace FeatureLens.Tests.Cli;

/// <summary>featurelens graph as a user runs it on stories260K with random transcoders: the JSON contract, agreement with the library, completeness from the file, bad input.</summary>
public sealed class GraphCliTests(ITestOutputHelper output) : IDisposable
{
    static string Stories => Path.Combine(TestPaths.Shared, "models", "stories260K", "stories260K.bin");
    readonly TempDir _dir = new();

    public void Dispose() => _dir.Dispose();

    string WriteTranscoders(int seed)
    {
        string dir = Path.Combine(_dir.Path, "transcoders");
        using var model = HookedTransformer.Load(Stories);
        var tcs = ReplacementCheck.RandomTranscoders(new Random(seed), model.Config.NLayers, model.Config.DModel);
        foreach (var t in tcs) SaeWriter.Save(t, Path.Combine(dir, t.Config.HookName));
        return dir;
    }

    [Fact]
    public void GraphWritesTheContractAndTheUnprunedFileIsComplete()
    {
        int seed = Random.Shared.Next();
        output.WriteLine($"seed {seed}");
        string tcs = WriteTranscoders(seed), full = Path.Combine(_dir.Path, "full.json"), pruned = Path.Combine(_dir.Path, "pruned.json");
        const string prompt = "Tom and Lily went to the park. Tom saw a big dog. He said to";
        var r = CliTests.Run("graph", "--model", Stories, "--text", prompt, "--transcoders", tcs, "--no-prune", "--out", full);
        Assert.True(r.ExitCode == 0, r.Stderr + r.Stdout);
        r = CliTests.Run("graph", "--model", Stories, "--text", prompt, "--transcoders", tcs, "--node-threshold", "0.6", "--edge-threshold", "0.9", "--max-feature-nodes", "50", "--out", pruned);
        Assert.True(r.ExitCode == 0, r.Stderr + r.Stdout);

        using var doc = JsonDocument.Parse(File.ReadAllText(full));
        var root = doc.RootElement;
        foreach (var k in new[] { "slug", "scan", "transcoder_list", "prompt_tokens", "prompt", "node_threshold", "schema_version" })
            Assert.True(root.GetProperty("metadata").TryGetProperty(k, out _), "metadata." + k);
        foreach (var k in new[] { "pinnedIds", "supernodes", "linkType", "clickedId", "sg_pos" })
            Assert.True(root.GetProperty("qParams").TryGetProperty(k, out _), "qParams." + k);
        var nodes = root.GetProperty("nodes").EnumerateArray().ToList();
        var types = nodes.Select(n => n.GetProperty("feature_type").GetString()).ToHashSet();
        Assert.Contains("cross layer transcoder", types);
        Assert.Contains("mlp reconstruction error", types);
        Assert.Contains("embedding", types);
        Assert.Contains("logit", types);
        Assert.Contains(nodes, n => n.GetProperty("feature_type").GetString() == "logit" && n.GetProperty("is_target_logit").GetBoolean());

        // completeness from the file alone: Σ incoming weights + bias = input for every feature and logit node
        var incoming = new Dictionary<string, double>(StringComparer.Ordinal);
        foreach (var l in root.GetProperty("links").EnumerateArray())
        {
            string t = l.GetProperty("target").GetString()!;
            incoming[t] = incoming.GetValueOrDefault(t) + l.GetProperty("weight").GetDouble();
        }
        int checkedNodes = 0;
        foreach (var n in nodes)
        {
            if (n.GetProperty("input").ValueKind != JsonValueKind.Number) continue;
            double input = n.GetProperty("input").GetDouble(), bias = n.GetProperty("bias").GetDouble();
            double sum = incoming.GetValueOrDefault(n.GetProperty("node_id").GetString()!) + bias;
            Assert.True(Math.Abs(sum - input) <= 1e-4 * Math.Max(1, Math.Abs(input)), $"{n.GetProperty("node_id").GetString()}: Σ in + bias = {sum:E6}, input {input:E6} (seed {seed})");
            checkedNodes++;
        }
        Assert.True(checkedNodes > 10, $"{checkedNodes} nodes with input");

        // the library gives the same graph (same nodes, same weights)
        using var model = HookedTransformer.Load(Stories);
        var lib = GraphRun.Compute(model, SaeLoader.LoadAll(tcs), model.Tokenizer!.Encode(prompt, true), new GraphRunOptions { Prune = false });
        Assert.Equal(lib.Pruned.KeptNodeCount, nodes.Count);
        var file = GraphJson.Read(pruned);
        Assert.True(file.Nodes.Count(n => n.FeatureType == "cross layer transcoder") <= 50);
        Assert.Equal(0.6, file.Metadata.NodeThreshold);
        Assert.True(file.Nodes.Count < nodes.Count);
    }

    [Fact]
    public void QkSharesSumToTheScoreAndPairsAreTheLibrarys()
    {
        int seed = Random.Shared.Next();
        output.WriteLine($"seed {seed}");
        var rng = new Random(seed);
        string tcs = WriteTranscoders(seed), json = Path.Combine(_dir.Path, "qk.json");
        const string prompt = "Lily had a red ball. She gave the ball to";
        using var model = HookedTransformer.Load(Stories);
        var ids = model.Tokenizer!.Encode(prompt, true);
        int layer = rng.Next(1, model.Config.NLayers), head = rng.Next(model.Config.NHeads), key = rng.Next(ids.Length - 1);
        var r = CliTests.Run("qk", "--model", Stories, "--text", prompt, "--transcoders", tcs, "--layer", $"{layer}", "--head", $"{head}", "--key-pos", $"{key}", "--top", "5", "--json", json);
        Assert.True(r.ExitCode == 0, r.Stderr + r.Stdout);
        using var doc = JsonDocument.Parse(File.ReadAllText(json));
        var root = doc.RootElement;
        double score = root.GetProperty("score").GetDouble();
        Assert.Equal(score, root.GetProperty("sum_of_pairs").GetDouble(), 1e-4 * Math.Max(1, Math.Abs(score)));
        var lib = ReplacementModel.Build(model, SaeLoader.LoadAll(tcs), ids).AttributeScore(layer, head, ids.Length - 1, key);
        Assert.Equal(lib.Score, score, 1e-5 * Math.Max(1, Math.Abs(score)));
        // every query-side share is the library's q_i·k/√d: Σ over all sources of them + the bias share is the score
        int S = lib.Sources.Count, hs = lib.QueryBias.Length;
        double all = Enumerable.Range(0, S).Sum(i => Enumerable.Range(0, hs).Sum(d => (double)lib.QueryContributions[i * hs + d] * lib.CleanKey[d])) / Math.Sqrt(hs);
        Assert.Equal(score, all + root.GetProperty("query_bias_share").GetDouble(), 1e-4 * Math.Max(1, Math.Abs(score)));
        var ids2 = lib.Sources.Select(s => GraphJson.NodeId(s, model.Config.NLayers)).ToList();
        foreach (var p in root.GetProperty("pairs").EnumerateArray())
        {
            int i = ids2.IndexOf(p.GetProperty("query").GetString()!), j = ids2.IndexOf(p.GetProperty("key").GetString()!);
            Assert.Equal(lib.Pair(i, j), p.GetProperty("value").GetDouble(), 1e-5 * Math.Max(1, Math.Abs(score)));
        }
        var bad = CliTests.Run("qk", "--model", Stories, "--text", prompt, "--transcoders", tcs, "--layer", "1", "--head", "0", "--query-pos", "2", "--key-pos", "5");
        Assert.Equal(1, bad.ExitCode);
        Assert.Contains("--key-pos 5 is after --query-pos 2", bad.Stderr, StringComparison.Ordinal);
    }

    [Fact]
    public void BadGraphInputIsAClearError()
    {
        string tcs = WriteTranscoders(Random.Shared.Next()), o = Path.Combine(_dir.Path, "g.json");
        void Fails(string expect, params string[] args)
        {
            var r = CliTests.Run(["graph", "--model", Stories, .. args, "--out", o]);
            Assert.True(r.ExitCode == 1, $"exit {r.ExitCode} for {string.Join(' ', args)}: {r.Stderr}");
            Assert.Contains(expect, r.Stderr, StringComparison.Ordinal);
            Assert.False(File.Exists(o));
        }
        Fails("--node-threshold", "--text", "Lily", "--transcoders", tcs, "--node-threshold", "1.5");
        Fails("--edge-threshold", "--text", "Lily", "--transcoders", tcs, "--edge-threshold", "-0.1");
        Fails("--max-feature-nodes", "--text", "Lily", "--transcoders", tcs, "--max-feature-nodes", "0");
        Fails("--text", "--transcoders", tcs);
        Fails("600 tokens", "--tokens", string.Join(',', Enumerable.Repeat(400, 600)), "--transcoders", tcs);
        // a transcoder set missing a layer
        string partial = Path.Combine(_dir.Path, "partial");
        foreach (var d in Directory.GetDirectories(tcs).Where(d => !d.Contains("blocks.3.", StringComparison.Ordinal)))
            CopyDir(d, Path.Combine(partial, Path.GetFileName(d)));
        Fails("3", "--text", "Lily", "--transcoders", partial);
        // an SAE that is not a transcoder
        string sae = Path.Combine(_dir.Path, "sae");
        SaeWriter.Save(FeatureLens.Tests.Saes.SaeTestData.Random(new Random(1), SaeArchitecture.TopK, 64, 32, "blocks.0.hook_resid_post", k: 4), sae);
        Fails("transcoder", "--text", "Lily", "--transcoders", sae);
    }

    static void CopyDir(string from, string to)
    {
        Directory.CreateDirectory(to);
        foreach (var f in Directory.GetFiles(from)) File.Copy(f, Path.Combine(to, Path.GetFileName(f)));
    }
}
