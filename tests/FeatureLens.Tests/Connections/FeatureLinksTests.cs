using FeatureLens.Connections.Graphs;
using FeatureLens.Runtime.Models;
using Xunit.Abstractions;

namespace FeatureLens.Tests.Connections;

/// <summary>
/// Feature connection dashboards (<see cref="FeatureLinks"/>) on stories260K with fresh random transcoders and prompts: the upstream
/// list is the feature's graph row, the downstream list is its column in a brute-force computation of every feature's row (and
/// that column is zero outside later layers and positions ≥ the feature's), and the aggregation over prompts equals a direct
/// computation from those brute-force rows. Effects agree to 1e-5 × the largest |entry|.
/// </summary>
public sealed class FeatureLinksTests(ITestOutputHelper output)
{
    static string Stories => Path.Combine(TestPaths.Shared, "models", "stories260K", "stories260K.bin");

    static int[] RandomPrompt(Random rng, int V) => [1, .. Enumerable.Range(0, rng.Next(5, 10)).Select(_ => rng.Next(3, V))];

    /// <summary>From every row: the feature's upstream (its row) and downstream (its column) per partner key, summed over positions.</summary>
    static (Dictionary<PartnerKey, double> Up, Dictionary<PartnerKey, double> Down) Direct(ReplacementModel rm, int layer, int latent, string context)
    {
        var (rows, _, _, targets) = ReplacementCheck.AllRows(rm, 32);
        int S = rm.Sources.Count;
        var up = new Dictionary<PartnerKey, double>(); var down = new Dictionary<PartnerKey, double>();
        for (int t = 0; t < targets.Count; t++)
        {
            var node = targets[t];
            if (node.Kind != GraphNodeKind.Feature) continue;
            if (node.Layer == layer && node.Index == latent)
                for (int s = 0; s < S; s++)
                    if (rows[(long)t * S + s] != 0) up[PartnerKey.Of(rm.Sources[s])] = up.GetValueOrDefault(PartnerKey.Of(rm.Sources[s])) + rows[(long)t * S + s];
            for (int p = 0; p < rm.Tokens.Count; p++)
            {
                int s = rm.SourceIndex(new GraphNode(GraphNodeKind.Feature, layer, p, latent));
                if (s < 0) continue;
                float e = rows[(long)t * S + s];
                if (e == 0) continue;
                Assert.True(node.Layer > layer && node.Pos >= p, $"{node} depends on {layer}:{latent}@{p} ({context})");
                down[PartnerKey.Of(node)] = down.GetValueOrDefault(PartnerKey.Of(node)) + e;
            }
        }
        return (up, down);
    }

    [Fact]
    public void OnePromptMatchesTheGraphRowAndTheBruteForceColumn()
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        using var model = HookedTransformer.Load(Stories);
        var tcs = ReplacementCheck.RandomTranscoders(rng, model.Config.NLayers, model.Config.DModel);
        var tokens = RandomPrompt(rng, model.Config.VocabSize);
        var rm = ReplacementModel.Build(model, tcs, tokens);
        var lower = rm.Sources.Take(rm.FeatureCount).Where(n => n.Layer < model.Config.NLayers - 1).ToList();
        var f = lower[rng.Next(lower.Count)];
        string context = $"seed {seed}, tokens [{string.Join(",", tokens)}], feature {f}";
        var links = Assert.Single(FeatureLinks.OnPrompt(rm, f.Layer, f.Index, f.Pos - tokens.Length, batchSize: rng.Next(1, 9)));
        Assert.Equal(f, links.Feature);

        int S = rm.Sources.Count;
        var row = new float[S];
        rm.ComputeRows([f], row, new float[1], new float[1]);
        var expectedUp = Enumerable.Range(0, S).Where(s => row[s] != 0).ToDictionary(s => rm.Sources[s], s => row[s]);
        Assert.Equal(expectedUp.Count, links.Upstream.Count);
        foreach (var l in links.Upstream) Assert.Equal(expectedUp[l.Partner], l.Effect);
        Assert.True(links.Upstream.Zip(links.Upstream.Skip(1)).All(p => Math.Abs(p.First.Effect) >= Math.Abs(p.Second.Effect)), "upstream sorted by |effect|");

        var (rows, _, _, targets) = ReplacementCheck.AllRows(rm, 32);
        int s0 = rm.SourceIndex(f);
        var column = new Dictionary<GraphNode, float>();
        for (int t = 0; t < targets.Count; t++)
            if (targets[t].Kind == GraphNodeKind.Feature && rows[(long)t * S + s0] != 0) column[targets[t]] = rows[(long)t * S + s0];
        double scale = column.Count == 0 ? 1 : column.Values.Max(v => Math.Abs(v));
        output.WriteLine($"{context}: {links.Upstream.Count} upstream, {links.Downstream.Count} downstream (brute force {column.Count})");
        Assert.True(column.Count > 0, $"nothing downstream ({context})");
        Assert.Equal(column.Count, links.Downstream.Count);
        foreach (var l in links.Downstream)
        {
            Assert.True(l.Partner.Layer > f.Layer && l.Partner.Pos >= f.Pos, $"{l.Partner} cannot depend on {f}");
            Assert.True(Math.Abs(column[l.Partner] - l.Effect) <= 1e-5 * scale, $"{l.Partner}: {l.Effect:E6} vs brute force {column[l.Partner]:E6} ({context})");
        }
        Direct(rm, f.Layer, f.Index, context);   // the causality check on the brute-force column
    }

    [Fact]
    public void AggregationOverPromptsMatchesADirectComputation()
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        using var model = HookedTransformer.Load(Stories);
        var tcs = ReplacementCheck.RandomTranscoders(rng, model.Config.NLayers, model.Config.DModel);
        var prompts = Enumerable.Range(0, 3).Select(_ => RandomPrompt(rng, model.Config.VocabSize)).ToList();
        var rms = prompts.Select(p => ReplacementModel.Build(model, tcs, p)).ToList();
        // a feature of layer 1 active on the first prompt
        var f = rms[0].Sources.Take(rms[0].FeatureCount).Where(n => n.Layer == 1).OrderBy(_ => rng.Next()).First();
        string context = $"seed {seed}, feature {f.Layer}:{f.Index}, prompts {string.Join(" | ", prompts.Select(p => string.Join(",", p)))}";
        var agg = FeatureLinks.Aggregate(f.Layer, f.Index, rms.Select(rm => FeatureLinks.OnPrompt(rm, f.Layer, f.Index)).ToList());
        var direct = rms.Select(rm => Direct(rm, f.Layer, f.Index, context)).ToList();
        Assert.Equal(3, agg.PromptsTotal);
        Assert.Equal(rms.Count(rm => Enumerable.Range(0, rm.Tokens.Count).Any(p => rm.SourceIndex(f with { Pos = p }) >= 0)), agg.PromptsActive);

        void Check(IReadOnlyList<AggregatedLink> got, Func<int, Dictionary<PartnerKey, double>> side, string what)
        {
            var keys = Enumerable.Range(0, 3).SelectMany(i => side(i).Keys).Distinct().ToList();
            Assert.Equal(keys.Count, got.Count);
            double scale = Math.Max(1e-6, got.Max(a => a.MeanAbsEffect));
            foreach (var a in got)
            {
                var e = Enumerable.Range(0, 3).Where(i => side(i).ContainsKey(a.Partner)).Select(i => side(i)[a.Partner]).ToList();
                double mean = e.Average();
                Assert.Equal(e.Count, a.Prompts);
                Assert.True(Math.Abs(a.MeanEffect - mean) <= 1e-5 * scale, $"{what} {a.Partner}: mean {a.MeanEffect:E6} vs {mean:E6} ({context})");
                Assert.True(Math.Abs(a.MeanAbsEffect - e.Average(Math.Abs)) <= 1e-5 * scale, $"{what} {a.Partner}: mean |effect| ({context})");
                if (Math.Abs(mean) > 1e-4 * scale)
                    Assert.Equal(e.Count(x => Math.Sign(x) == Math.Sign(mean)) / (double)e.Count, a.SignConsistency);
            }
            Assert.True(got.Zip(got.Skip(1)).All(p => p.First.MeanAbsEffect >= p.Second.MeanAbsEffect), $"{what} sorted");
        }
        Check(agg.Upstream, i => direct[i].Up, "upstream");
        Check(agg.Downstream, i => direct[i].Down, "downstream");
        output.WriteLine($"{context}: {agg.Upstream.Count} upstream, {agg.Downstream.Count} downstream partners over {agg.PromptsActive} prompts");
    }

    [Fact]
    public void BadFeatureIsAClearError()
    {
        var rng = new Random(Random.Shared.Next());
        using var model = HookedTransformer.Load(Stories);
        var tcs = ReplacementCheck.RandomTranscoders(rng, model.Config.NLayers, model.Config.DModel);
        var rm = ReplacementModel.Build(model, tcs, [1, 50, 60, 70]);
        void Bad(string expect, Action a) => Assert.Contains(expect, Assert.ThrowsAny<ArgumentException>(a).Message, StringComparison.Ordinal);
        Bad("layer 5 does not exist", () => FeatureLinks.OnPrompt(rm, 5, 0));
        Bad($"d_sae {tcs[2].DSae}", () => FeatureLinks.OnPrompt(rm, 2, tcs[2].DSae));
        Bad("--pos 4 is outside", () => FeatureLinks.OnPrompt(rm, 0, 0, 4));
        int inactive = Enumerable.Range(0, tcs[0].DSae).First(j => rm.SourceIndex(new GraphNode(GraphNodeKind.Feature, 0, 0, j)) < 0);
        Bad("not active at position 0", () => FeatureLinks.OnPrompt(rm, 0, inactive, 0));
    }
}
