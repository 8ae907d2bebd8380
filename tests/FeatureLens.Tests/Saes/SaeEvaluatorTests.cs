using FeatureLens.Analysis;
using FeatureLens.Runtime.Models;
using FeatureLens.Saes;
using Tensor = FeatureLens.Runtime.Tensors.Tensor;

namespace FeatureLens.Tests.Saes;

/// <summary>The evaluator's metrics against a direct two-pass computation from the definitions (in double precision).</summary>
public class SaeEvaluatorTests
{
    static HookedTransformer Stories() => HookedTransformer.Load(Path.Combine(TestPaths.Shared, "models", "stories260K", "stories260K.bin"));

    [Fact]
    public void MetricsMatchTheirDefinitions()
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        using var m = Stories();
        string hook = $"blocks.{rng.Next(5)}.hook_resid_post";
        var sae = SaeTestData.Random(rng, SaeArchitecture.TopK, 64, 150, hook, k: 6 + rng.Next(6), applyBDec: true);
        var windows = Enumerable.Range(0, 5).Select(_ => new[] { 1 }.Concat(Enumerable.Range(0, 20 + rng.Next(10)).Select(_ => 3 + rng.Next(500))).ToArray()).ToList();
        var r = SaeEvaluator.Evaluate(m, [sae], windows, new SaeEvalOptions { BatchSequences = 2 })[0];

        // reference: one sequence at a time, straight from the definitions
        double ceClean = 0, ceSae = 0, ceZero = 0, sse = 0; long positions = 0, n = 0;
        var rows = new List<float[]>();
        var fires = new long[sae.DSae]; double l0 = 0;
        foreach (var w in windows)
        {
            var (logits, cache) = m.RunWithCache([w], name => name == hook);
            var x = cache.Sequence(hook, 0);
            var (acts, output) = sae.Forward(x);
            var spliced = m.RunWithHooks([w], (hook, (t, _) => output.Reshape(t.Shape)));
            var zero = m.RunWithHooks([w], (hook, (t, _) => new Tensor(t.Shape)));
            for (int t = 0; t + 1 < w.Length; t++)
            {
                ceClean += Nll(logits, t, w[t + 1]); ceSae += Nll(spliced, t, w[t + 1]); ceZero += Nll(zero, t, w[t + 1]);
                positions++;
            }
            for (int t = 1; t < w.Length; t++) // BOS (position 0) excluded
            {
                var row = x.Data.AsSpan(t * 64, 64).ToArray();
                rows.Add(row);
                for (int d = 0; d < 64; d++) { double e = row[d] - output.Data[t * 64 + d]; sse += e * e; }
                for (int j = 0; j < sae.DSae; j++) if (acts.Data[t * sae.DSae + j] > 0) { fires[j]++; l0++; }
                n++;
            }
        }
        var mean = new double[64];
        foreach (var row in rows) for (int d = 0; d < 64; d++) mean[d] += row[d] / (double)n;
        double sst = rows.Sum(row => Enumerable.Range(0, 64).Sum(d => (row[d] - mean[d]) * (row[d] - mean[d])));
        string ctx = $"seed {seed}";
        Assert.Equal(n, r.Tokens);
        Assert.True(Math.Abs(r.CeClean - ceClean / positions) < 1e-5, ctx);
        Assert.True(Math.Abs(r.CeSpliced - ceSae / positions) < 1e-4, ctx);
        Assert.True(Math.Abs(r.CeZeroAblated - ceZero / positions) < 1e-5, ctx);
        Assert.True(Math.Abs(r.LossRecovered - (ceZero - ceSae) / (ceZero - ceClean)) < 1e-3, ctx);
        Assert.True(Math.Abs(r.Mse - sse / (n * 64.0)) <= 1e-5 * (sse / (n * 64.0)), ctx);
        Assert.True(Math.Abs(r.ExplainedVariance - (1 - sse / sst)) < 1e-6, ctx);
        Assert.True(Math.Abs(r.L0 - l0 / n) < 1e-9, ctx);
        Assert.Equal(fires.Count(f => f == 0), r.DeadLatents);
        Assert.Equal(sae.DSae - r.DeadLatents, r.Histogram.Sum(b => b.Count));
        for (int j = 0; j < sae.DSae; j++) Assert.Equal((double)fires[j] / n, r.FeatureFrequency[j], 12);
    }

    static double Nll(Tensor logits, int t, int target)
    {
        int V = logits.Shape[2];
        var row = logits.Data.AsSpan(t * V, V);
        double max = double.NegativeInfinity;
        foreach (float v in row) max = Math.Max(max, v);
        double sum = 0;
        foreach (float v in row) sum += Math.Exp(v - max);
        return Math.Log(sum) + max - row[target];
    }

    [Fact]
    public void TopExamplesAreEachLatentsLargestActivations()
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        using var m = Stories();
        var sae = SaeTestData.Random(rng, SaeArchitecture.Standard, 64, 40, "blocks.1.hook_resid_post");
        var seqs = Enumerable.Range(0, 4).Select(_ => new[] { 1 }.Concat(Enumerable.Range(0, 15).Select(_ => 3 + rng.Next(500))).ToArray()).ToList();
        var top = TopExamples.Collect(m, [sae], seqs, topN: 3, batchSequences: 3)[0];
        var all = new List<(int S, int P, int J, float V)>();
        for (int s = 0; s < seqs.Count; s++)
        {
            var (_, cache) = m.RunWithCache([seqs[s]], n => n == "blocks.1.hook_resid_post");
            var acts = sae.Encode(cache.Sequence("blocks.1.hook_resid_post", 0));
            for (int p = 1; p < seqs[s].Length; p++)
                for (int j = 0; j < 40; j++) if (acts.Data[p * 40 + j] > 0) all.Add((s, p, j, acts.Data[p * 40 + j]));
        }
        for (int j = 0; j < 40; j++)
        {
            var expected = all.Where(a => a.J == j).OrderByDescending(a => a.V).Take(3).ToList();
            Assert.Equal(all.Count(a => a.J == j), top.FireCounts[j]);
            Assert.Equal(expected.Count, top.Examples[j].Length);
            for (int i = 0; i < expected.Count; i++)
            {
                Assert.True(Math.Abs(expected[i].V - top.Examples[j][i].Activation) <= 1e-5f * expected[i].V, $"seed {seed} latent {j}");
            }
        }
    }
}
