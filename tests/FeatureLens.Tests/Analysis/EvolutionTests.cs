using System.Text.Json;
using FeatureLens.Analysis;
using FeatureLens.Runtime.Tokenizers;
using FeatureLens.Saes;
using FeatureLens.Tests.Saes;

namespace FeatureLens.Tests.Analysis;

public class EvolutionTests
{
    static double DirectCosine(Sae a, int fa, Sae b, int fb)
    {
        int d = a.DOut;
        double dot = 0, na = 0, nb = 0;
        for (int i = 0; i < d; i++)
        {
            double x = a.WDec[fa * d + i], y = b.WDec[fb * d + i];
            dot += x * y; na += x * x; nb += y * y;
        }
        return dot / Math.Sqrt(na * nb);
    }

    [Fact]
    public void DecoderCosinesMatchTheDirectComputation()
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        var a = SaeTestData.Random(rng, SaeArchitecture.Standard, 64, 200, "blocks.0.hook_resid_post");
        var b = SaeTestData.Random(rng, SaeArchitecture.Standard, 64, 300, "blocks.1.hook_resid_post");
        int f = rng.Next(200);
        var cos = FeatureEvolution.DecoderCosines(a, f, b);
        Assert.Equal(300, cos.Length);
        for (int j = 0; j < 300; j++) Assert.True(Math.Abs(cos[j] - DirectCosine(a, f, b, j)) <= 1e-5, $"seed {seed}: {j}");
        var self = FeatureEvolution.DecoderCosines(a, f, a);
        Assert.True(Math.Abs((double)(1.0) - (double)(self[f])) <= 1e-5 * (1 + Math.Abs((double)(1.0))), $"{1.0} vs {self[f]}");
        Assert.Throws<ArgumentOutOfRangeException>(() => FeatureEvolution.DecoderCosines(a, 200, b));
    }

    [Fact]
    public void MatchesAndChainFollowDecoderCosinesAndPromptCorrelations()
    {
        int seed = Random.Shared.Next();
        var set = AnalysisTestData.Set(new Random(seed), 96, SaeArchitecture.Standard, 0, 0, 1, 2, 3, 4);
        var tokens = FeatureTracker.Encode(set, AnalysisTestData.Prompt);
        var direct = AnalysisTestData.DirectLatents(set, tokens);
        int T = tokens.Length;
        // a feature that fires on the prompt, in the middle SAE
        int start = 2;
        int feature = Enumerable.Range(0, 96).OrderByDescending(j => Enumerable.Range(1, T - 1).Count(t => direct[start][t * 96 + j] > 0) is int c && c < T - 1 ? c : -1).First();
        var result = FeatureEvolution.Analyze(set, start, feature, AnalysisTestData.Prompt, new EvolutionOptions { Matches = 4 });
        Assert.Equal(4, result.Matches.Count);
        Assert.Equal(new[] { 0, 1, 3, 4 }, result.Matches.Select(m => m.SaeIndex));
        float[] Column(int s, int f) => Enumerable.Range(1, T - 1).Select(t => direct[s][t * 96 + f]).ToArray();
        var x = Column(start, feature);
        foreach (var m in result.Matches)
        {
            var cos = Enumerable.Range(0, 96).Select(j => DirectCosine(set.Saes[start], feature, set.Saes[m.SaeIndex], j)).ToArray();
            var best = Enumerable.Range(0, 96).OrderByDescending(j => cos[j]).Take(4).ToArray();
            Assert.Equal(4, m.ByDecoder.Count);
            for (int i = 0; i < 4; i++) Assert.True(Math.Abs((double)(cos[best[i]]) - (double)(m.ByDecoder[i].Score)) <= 1e-5 * (1 + Math.Abs((double)(cos[best[i]]))), $"{cos[best[i]]} vs {m.ByDecoder[i].Score}");
            var r = Enumerable.Range(0, 96).Select(j => TrackerTests.DirectPearson(x, Column(m.SaeIndex, j))).ToArray();
            var bestR = Enumerable.Range(0, 96).Where(j => !double.IsNaN(r[j])).OrderByDescending(j => r[j]).Take(4).ToArray();
            Assert.Equal(bestR.Length, m.ByPrompt.Count);
            for (int i = 0; i < bestR.Length; i++)
                Assert.True(Math.Abs(m.ByPrompt[i].Score - r[bestR[i]]) <= 1e-5 * Math.Max(Math.Abs(r[bestR[i]]), 0.01), $"seed {seed}");
            Assert.Null(m.ByCorpus);
        }
        // the chain: one link per SAE, each the previous link's best decoder match moving away from the start
        Assert.Equal(5, result.Chain.Count);
        Assert.Equal(new[] { 0, 1, 2, 3, 4 }, result.Chain.Select(c => c.SaeIndex));
        Assert.Equal(feature, result.Chain[start].Feature);
        Assert.Equal(1.0, result.Chain[start].Cosine);
        for (int s = 0; s < 5; s++)
        {
            if (s == start) continue;
            var prev = result.Chain[s < start ? s + 1 : s - 1];
            var cos = Enumerable.Range(0, 96).Select(j => DirectCosine(set.Saes[prev.SaeIndex], prev.Feature, set.Saes[s], j)).ToArray();
            int best = Enumerable.Range(0, 96).MaxBy(j => cos[j]);
            Assert.True(Math.Abs((double)(cos[best]) - (double)(result.Chain[s].Cosine)) <= 1e-5 * (1 + Math.Abs((double)(cos[best]))), $"{cos[best]} vs {result.Chain[s].Cosine}");
            Assert.True(Math.Abs((double)(cos[best]) - (double)(cos[result.Chain[s].Feature])) <= 1e-5 * (1 + Math.Abs((double)(cos[best]))), $"{cos[best]} vs {cos[result.Chain[s].Feature]}");
            var column = Enumerable.Range(0, T).Select(t => direct[s][t * 96 + result.Chain[s].Feature]).ToArray();
            Assert.True(Compare.RelativeError(result.Chain[s].PerToken, column, "chain per-token") <= 1e-5 || column.All(v => v == 0) && result.Chain[s].PerToken.All(v => v == 0), $"seed {seed}");
        }
        var json = JsonSerializer.Serialize(result, AnalysisTestData.WebJson);
        var root = JsonDocument.Parse(json).RootElement;
        Assert.Equal(5, root.GetProperty("chain").GetArrayLength());
        Assert.Equal(T, root.GetProperty("chain")[0].GetProperty("perToken").GetArrayLength());
        Assert.True(root.GetProperty("matches")[0].TryGetProperty("byDecoder", out _));
    }

    [Fact]
    public void CorpusMatchesComeFromTheCorrelationStatistics()
    {
        int seed = Random.Shared.Next();
        var set = AnalysisTestData.Set(new Random(seed), 64, SaeArchitecture.TopK, 8, 1, 3);
        var windows = Corpus.Windows([AnalysisTestData.Prompt, "Tom and his dog ran to the park. They played with a ball all day.", AnalysisTestData.Prompt],
            set.Model.Tokenizer!, 24, prependBos: true).ToList();
        var stats = FeatureCorrelation.Accumulate(set, windows, new CorrelationOptions { MinFires = 0 });
        int feature = Enumerable.Range(0, 64).MaxBy(f => stats.Fires[0][f]);
        var result = FeatureEvolution.Analyze(set, 0, feature, "Lily saw a big dog.", new EvolutionOptions { Matches = 3 }, stats);
        Assert.Equal(stats.Tokens, result.CorpusTokens);
        var byCorpus = result.Matches.Single().ByCorpus!;
        var expected = Enumerable.Range(0, 64).Select(g => (g, r: stats.R(0, feature, 1, g))).Where(p => !double.IsNaN(p.r))
            .OrderByDescending(p => p.r).Take(3).ToList();
        Assert.Equal(expected.Select(p => p.g), byCorpus.Select(m => m.Feature));
        Assert.Equal(expected.Select(p => p.r), byCorpus.Select(m => m.Score));
    }

    [Fact]
    public void BadInputsGiveClearErrors()
    {
        var set = AnalysisTestData.Set(new Random(Random.Shared.Next()), 32, SaeArchitecture.Standard, 0, 0, 2);
        Assert.Contains("SAE index 2", Assert.Throws<ArgumentOutOfRangeException>(() => FeatureEvolution.Analyze(set, 2, 0, "Hi")).Message);
        Assert.Contains("feature 32", Assert.Throws<ArgumentOutOfRangeException>(() => FeatureEvolution.Analyze(set, 0, 32, "Hi")).Message);
        Assert.Contains("empty", Assert.Throws<ArgumentException>(() => FeatureEvolution.Analyze(set, 0, 1, "")).Message);
        Assert.ThrowsAny<ArgumentException>(() => FeatureEvolution.Analyze(set, 0, 1, "Hi", new EvolutionOptions { Matches = 0 }));
    }
}
