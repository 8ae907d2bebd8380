using System.Text.Json;
using FeatureLens.Analysis;
using FeatureLens.Runtime.Models;
using FeatureLens.Saes;
using FeatureLens.Tests.Saes;
using Tensor = FeatureLens.Runtime.Tensors.Tensor;

namespace FeatureLens.Tests.Analysis;

/// <summary>stories260K with random SAEs, and the direct oracle: the clean model's cached activations encoded by each SAE.</summary>
internal static class AnalysisTestData
{
    /// <summary>The web app's JSON conventions (camelCase), shared by the serialization round trips.</summary>
    public static readonly JsonSerializerOptions WebJson = new(JsonSerializerDefaults.Web);

    public static string Stories => Path.Combine(TestPaths.Shared, "models", "stories260K", "stories260K.bin");

    static readonly Lazy<HookedTransformer> model = new(() => HookedTransformer.Load(Stories));
    public static HookedTransformer Model => model.Value;

    public const string Prompt = "Once upon a time, there was a little girl named Lily. She loved to play with her big red ball in the park.";

    /// <summary>Random SAEs at blocks.{layers}.hook_resid_post (d_in 64).</summary>
    public static SaeSet Set(Random rng, int dSae, SaeArchitecture arch = SaeArchitecture.Standard, int k = 0, params int[] layers)
    {
        if (layers.Length == 0) layers = [0, 2, 4];
        return new SaeSet(Model, layers.Select(l => SaeTestData.Random(rng, arch, 64, dSae, $"blocks.{l}.hook_resid_post", k: k)));
    }

    /// <summary>Each SAE's latents (T, d_sae) for one sequence, from the unspliced model's cache.</summary>
    public static float[][] DirectLatents(SaeSet set, int[] tokens)
    {
        var hooks = new HashSet<string>(set.Hooks);
        var (_, cache) = set.Model.RunWithCache([tokens], hooks.Contains);
        return set.Saes.Select((s, i) => s.Encode(cache.Sequence(set.Hooks[i], 0)).Data).ToArray();
    }
}

public class TrackerTests
{
    static SaeSet NewSet(out int seed, int dSae = 128, SaeArchitecture arch = SaeArchitecture.Standard, int k = 0)
    {
        seed = Random.Shared.Next();
        return AnalysisTestData.Set(new Random(seed), dSae, arch, k);
    }

    [Theory]
    [InlineData(RankBy.Max)]
    [InlineData(RankBy.Mean)]
    [InlineData(RankBy.AtToken)]
    public void TopFeaturesAndPerTokenValuesMatchDirectEncoding(RankBy rankBy)
    {
        var set = NewSet(out int seed, arch: rankBy == RankBy.Mean ? SaeArchitecture.TopK : SaeArchitecture.Standard, k: 12);
        var tokens = FeatureTracker.Encode(set, AnalysisTestData.Prompt);
        int T = tokens.Length, at = 1 + new Random(seed).Next(T - 1);
        var options = new TrackOptions { TopN = 7, RankBy = rankBy, TokenIndex = rankBy == RankBy.AtToken ? at : null };
        var result = FeatureTracker.Track(set, AnalysisTestData.Prompt, options);
        var direct = AnalysisTestData.DirectLatents(set, tokens);

        Assert.Equal(tokens, result.TokenIds);
        Assert.Equal(set.Model.Tokenizer!.BosId, tokens[0]);
        Assert.Equal(T, result.Tokens.Length);
        Assert.Equal(set.Model.Tokenizer.Decode([tokens[3]]), result.Tokens[3]);
        Assert.Equal(3, result.Layers.Count);
        for (int s = 0; s < 3; s++)
        {
            int d = set.Saes[s].DSae;
            var acts = direct[s];
            // the reference statistics over positions 1..T-1 (BOS skipped)
            var max = new double[d]; var mean = new double[d]; int active = 0; long l0 = 0;
            for (int j = 0; j < d; j++)
            {
                for (int t = 1; t < T; t++) { float v = acts[t * d + j]; max[j] = Math.Max(max[j], v); mean[j] += v; if (v > 0) l0++; }
                mean[j] /= T - 1;
                if (max[j] > 0) active++;
            }
            double[] score = rankBy switch { RankBy.Max => max, RankBy.Mean => mean, _ => Enumerable.Range(0, d).Select(j => (double)acts[at * d + j]).ToArray() };
            var expected = Enumerable.Range(0, d).Where(j => score[j] > 0).OrderByDescending(j => score[j]).Take(7).ToArray();
            var layer = result.Layers[s];
            Assert.Equal(set.Hooks[s], layer.Hook);
            Assert.Equal(active, layer.ActiveFeatures);
            Assert.Equal((double)l0 / (T - 1), layer.MeanL0, 9);
            Assert.Equal(expected.Length, layer.Top.Count);
            for (int i = 0; i < expected.Length; i++)
            {
                var f = layer.Top[i];
                // near-ties may swap under float32 rounding; the score at each rank must agree
                Assert.True(Math.Abs(f.Score - score[expected[i]]) <= 1e-5 * Math.Max(1, Math.Abs(score[expected[i]])),
                    $"seed {seed} SAE {s} rank {i}: score {f.Score} vs direct {score[expected[i]]}");
                Assert.True(Math.Abs(f.Score - score[f.Feature]) <= 1e-5 * Math.Max(1, score[f.Feature]), $"seed {seed}: feature {f.Feature}");
                Assert.True(Math.Abs((double)(max[f.Feature]) - (double)(f.Max)) <= 1e-4 * (1 + Math.Abs((double)(max[f.Feature]))), $"{max[f.Feature]} vs {f.Max}");
                Assert.True(Math.Abs((double)(mean[f.Feature]) - (double)(f.Mean)) <= 1e-4 * (1 + Math.Abs((double)(mean[f.Feature]))), $"{mean[f.Feature]} vs {f.Mean}");
                var column = Enumerable.Range(0, T).Select(t => acts[t * d + f.Feature]).ToArray();
                Assert.True(Compare.RelativeError(f.PerToken, column, "per-token") <= 1e-5, $"seed {seed} SAE {s} feature {f.Feature}");
            }
            for (int i = 1; i < layer.Top.Count; i++) Assert.True(layer.Top[i - 1].Score >= layer.Top[i].Score);
        }
    }

    [Fact]
    public void HeatmapAndPromptNetworkFollowTheTopFeatures()
    {
        var set = NewSet(out int seed);
        var result = FeatureTracker.Track(set, AnalysisTestData.Prompt, new TrackOptions { TopN = 8, CorrelationThreshold = 0.3 });
        var shown = result.Layers.SelectMany(l => l.Top.Select(f => (l.SaeIndex, f))).ToList();
        Assert.Equal(set.Names, result.Heatmap.Rows);
        Assert.Equal(shown.Count, result.Heatmap.Columns.Count);
        for (int c = 0; c < shown.Count; c++)
        {
            Assert.Equal($"{set.Names[shown[c].SaeIndex]}:{shown[c].f.Feature}", result.Heatmap.Columns[c]);
            for (int r = 0; r < set.Saes.Count; r++)
                Assert.Equal(r == shown[c].SaeIndex ? shown[c].f.Score : 0, result.Heatmap.Values[r][c]);
        }
        // network: every shown feature is a node; edges are exactly the cross-SAE pairs with |r| ≥ 0.3 (direct two-pass r)
        var net = result.Network;
        Assert.Equal(shown.Count, net.Nodes.Count);
        Assert.Equal(result.TokenIds.Length - 1, net.Tokens);
        var edges = net.Edges.ToDictionary(e => (e.Source, e.Target), e => e.R);
        int expectedEdges = 0;
        for (int i = 0; i < shown.Count; i++)
            for (int j = i + 1; j < shown.Count; j++)
            {
                if (shown[i].SaeIndex == shown[j].SaeIndex) continue;
                double r = DirectPearson(shown[i].f.PerToken[1..], shown[j].f.PerToken[1..]);
                if (double.IsNaN(r) || Math.Abs(r) < 0.3) continue;
                expectedEdges++;
                string a = result.Heatmap.Columns[i], b = result.Heatmap.Columns[j];
                Assert.True(edges.TryGetValue((a, b), out double got), $"seed {seed}: edge {a} — {b} (r {r}) missing");
                Assert.True(Math.Abs(got - r) <= 1e-6 * Math.Abs(r), $"seed {seed}: r {got} vs {r}");
            }
        Assert.Equal(expectedEdges, net.Edges.Count);
        foreach (var n in net.Nodes) Assert.Equal(net.Edges.Count(e => e.Source == n.Id || e.Target == n.Id), n.Degree);
    }

    internal static double DirectPearson(float[] x, float[] y)
    {
        int n = x.Length;
        double mx = x.Average(v => (double)v), my = y.Average(v => (double)v), sxy = 0, sxx = 0, syy = 0;
        for (int t = 0; t < n; t++) { sxy += (x[t] - mx) * (y[t] - my); sxx += (x[t] - mx) * (x[t] - mx); syy += (y[t] - my) * (y[t] - my); }
        return sxx == 0 || syy == 0 ? double.NaN : sxy / Math.Sqrt(sxx * syy);
    }

    [Fact]
    public void ConstantFeaturesGetNoEdgesAndLabelsAreAttached()
    {
        var set = NewSet(out int seed);
        var labels = new FeatureLabelLookup();
        var probe = FeatureTracker.Track(set, AnalysisTestData.Prompt, new TrackOptions { TopN = 5, CorrelationThreshold = 0 });
        var f0 = probe.Layers[1].Top[0];
        labels.Set(set.Hooks[1], f0.Feature, new FeatureLabel { Label = "girls", F1 = 0.75, Source = "csv" });
        var result = FeatureTracker.Track(set, AnalysisTestData.Prompt, new TrackOptions { TopN = 5, CorrelationThreshold = 0 }, labels);
        Assert.Equal("girls", result.Layers[1].Top[0].Label?.Label);
        Assert.Equal(0.75, result.Layers[1].Top[0].Label?.F1);
        Assert.Null(result.Layers[0].Top[0].Label);
        Assert.Equal("girls", result.Network.Nodes.Single(n => n.Id == CorrelationNetwork.NodeId(set, 1, f0.Feature)).Label);
        // with threshold 0, every non-constant cross-SAE pair is an edge; constant features (if any) have none
        foreach (var n in result.Network.Nodes)
        {
            var f = result.Layers[n.SaeIndex].Top.Single(x => x.Feature == n.Feature);
            bool constant = f.PerToken[1..].Distinct().Count() == 1;
            if (constant) Assert.Equal(0, n.Degree);
        }
        Assert.True(result.Network.Edges.Count > 0, $"seed {seed}");
    }

    [Fact]
    public void AFeatureConstantOverThePromptHasNoEdges()
    {
        // a zero encoder column and a positive bias make a feature constant: its activation is b_enc on every token
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        var saes = new[] { 0, 3 }.Select(l => SaeTestData.Random(rng, SaeArchitecture.Standard, 64, 32, $"blocks.{l}.hook_resid_post")).ToArray();
        var s0 = saes[0];
        for (int i = 0; i < 64; i++) s0.WEnc[i * 32 + 5] = 0;
        s0.BEnc[5] = 100f;   // feature 5 of the first SAE is 100 everywhere: the strongest, and constant
        var set = new SaeSet(AnalysisTestData.Model, saes);
        var result = FeatureTracker.Track(set, AnalysisTestData.Prompt, new TrackOptions { TopN = 5, CorrelationThreshold = 0 });
        Assert.Equal(5, result.Layers[0].Top[0].Feature);
        Assert.Equal(100.0, result.Layers[0].Top[0].Max, 4);
        Assert.Equal(0, result.Network.Nodes.Single(n => n.Id == CorrelationNetwork.NodeId(set, 0, 5)).Degree);
        Assert.DoesNotContain(result.Network.Edges, e => e.Source.EndsWith(":5", StringComparison.Ordinal) && e.Source.StartsWith(set.Names[0], StringComparison.Ordinal));
        Assert.True(result.Network.Edges.Count > 0, $"seed {seed}");
    }

    [Fact]
    public void BadInputsGiveClearErrors()
    {
        var set = NewSet(out _, dSae: 64);
        Assert.Contains("empty", Assert.Throws<ArgumentException>(() => FeatureTracker.Track(set, "  ")).Message);
        string longText = string.Concat(Enumerable.Repeat("Once upon a time there was a dog. ", 120));
        var e = Assert.Throws<ArgumentException>(() => FeatureTracker.Track(set, longText));
        Assert.Contains("512", e.Message);
        Assert.Matches(@"is \d+ tokens long", e.Message);
        Assert.Contains("TopN", Assert.ThrowsAny<ArgumentException>(() => FeatureTracker.Track(set, "Hi", new TrackOptions { TopN = 0 })).Message);
        Assert.Contains("d_sae = 64", Assert.ThrowsAny<ArgumentException>(() => FeatureTracker.Track(set, "Hi", new TrackOptions { TopN = 65 })).Message);
        var t = Assert.ThrowsAny<ArgumentException>(() => FeatureTracker.Track(set, "Hi there", new TrackOptions { RankBy = RankBy.AtToken, TokenIndex = 40 }));
        Assert.Contains("TokenIndex 40", t.Message);
        Assert.Contains("TokenIndex", Assert.ThrowsAny<ArgumentException>(() => FeatureTracker.Track(set, "Hi", new TrackOptions { RankBy = RankBy.AtToken })).Message);
        Assert.ThrowsAny<ArgumentException>(() => FeatureTracker.Track(set, "Hi", new TrackOptions { CorrelationThreshold = 1.5 }));
        Assert.Contains("vocabulary", Assert.ThrowsAny<ArgumentException>(() => FeatureTracker.Track(set, new[] { 1, 9999 })).Message);
    }

    [Fact]
    public void ResultSerialisesToJson()
    {
        var set = NewSet(out _);
        var result = FeatureTracker.Track(set, "Tom had a red ball.", new TrackOptions { TopN = 3 });
        var json = JsonSerializer.Serialize(result, AnalysisTestData.WebJson);
        var root = JsonDocument.Parse(json).RootElement;
        Assert.Equal("Tom had a red ball.", root.GetProperty("text").GetString());
        Assert.Equal("Max", root.GetProperty("options").GetProperty("rankBy").GetString());
        var layer = root.GetProperty("layers")[0];
        Assert.Equal(set.Hooks[0], layer.GetProperty("hook").GetString());
        Assert.Equal(result.TokenIds.Length, layer.GetProperty("top")[0].GetProperty("perToken").GetArrayLength());
        Assert.Equal(3, root.GetProperty("heatmap").GetProperty("rows").GetArrayLength());
        Assert.True(root.GetProperty("network").TryGetProperty("hubs", out _));
        var back = JsonSerializer.Deserialize<TrackResult>(json, AnalysisTestData.WebJson)!;
        Assert.Equal(result.Layers[2].Top[0].PerToken, back.Layers[2].Top[0].PerToken);
    }
}
