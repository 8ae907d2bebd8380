using FeatureLens.Clustering;
using FeatureLens.Connections.Graphs;
using FeatureLens.Runtime.Models;
using FeatureLens.Saes;
using FeatureLens.Tests.Connections;
using FeatureLens.Tests.Saes;
using Xunit.Abstractions;

namespace FeatureLens.Tests.Clustering;

/// <summary>
/// Connection profiles, cosines and clustering against brute force: virtual weights vs a dense double-precision product,
/// prompt profiles vs every row of the replacement model computed directly, sparse cosines vs dense ones, average linkage vs
/// an O(n³) reference, planted groups recovered (ARI ≥ 0.9) deterministically, and bad input. Fresh random inputs each run;
/// the seed is printed in every failure message.
/// </summary>
public sealed class ClusteringTests(ITestOutputHelper output)
{
    static string Stories => Path.Combine(TestPaths.Shared, "models", "stories260K", "stories260K.bin");

    /// <summary>V[(l, i) → (m, j)] in double precision: (Σ_{k=l}^{m−1} W_dec(l → k)[i]) · W_enc^m[:, j].</summary>
    static double Virtual(CrossLayerTranscoder t, int l, int i, int m, int j)
    {
        int C = t.Layers[0].DIn;
        double s = 0;
        for (int k = l; k < m; k++)
        {
            var w = t.Decoder(l, k);
            if (w == null) continue;
            double scale = k == l && t.Layers[l].Config.RescaleActsByDecoderNorm ? 1.0 / t.Layers[l].DecoderNorms[i] : 1;
            var enc = t.Layers[m].WEnc;
            int dm = t.Layers[m].DSae;
            for (int c = 0; c < C; c++) s += scale * w[i * C + c] * (double)enc[c * dm + j];
        }
        return s;
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void VirtualWeightProfilesMatchADenseDoubleProduct(bool crossLayer)
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        int L = rng.Next(3, 5), C = rng.Next(8, 24);
        var t = crossLayer ? CltCheck.Random(rng, L, C, "ln2.hook_normalized", jump: false)
            : CrossLayerTranscoder.FromPerLayer([.. Enumerable.Range(0, L).Select(l => SaeTestData.Random(rng, new[] { SaeArchitecture.Transcoder, SaeArchitecture.SkipTranscoder, SaeArchitecture.JumpReluTranscoder }[rng.Next(3)], C, rng.Next(16, 40),
                $"blocks.{l}.ln2.hook_normalized", dOut: C, hookOut: $"blocks.{l}.hook_mlp_out"))]);
        int topK = rng.Next(3, 9);
        string ctx = $"seed {seed}, L={L}, C={C}, topK={topK}, crossLayer={crossLayer}";
        foreach (int k in new[] { 1000, topK })
        {
            var set = ConnectionProfiles.FromWeights(t, topK: k, blockRows: rng.Next(1, 12));
            Assert.Equal(Enumerable.Range(0, L).Sum(l => t.Layers[l].DSae), set.Count);
            double worst = 0;
            for (int f = 0; f < set.Count; f++)
            {
                var (l, i) = (set.Features[f].Layer, set.Features[f].Latent);
                var dense = new List<(long Code, double V)>();
                for (int m = l + 1; m < L; m++)
                    for (int j = 0; j < t.Layers[m].DSae; j++) dense.Add((new ProfilePartner(true, GraphNodeKind.Feature, m, j).Code, Virtual(t, l, i, m, j)));
                var up = new List<(long Code, double V)>();
                for (int m = 0; m < l; m++)
                    for (int j = 0; j < t.Layers[m].DSae; j++) up.Add((new ProfilePartner(false, GraphNodeKind.Feature, m, j).Code, Virtual(t, m, j, l, i)));
                var expected = dense.OrderByDescending(e => Math.Abs(e.V)).Take(k).Concat(up.OrderByDescending(e => Math.Abs(e.V)).Take(k)).ToDictionary(e => e.Code, e => e.V);
                double scale = expected.Values.Select(Math.Abs).DefaultIfEmpty(1).Max();
                Assert.Equal(expected.Count, set.Codes[f].Length);
                for (int e = 0; e < set.Codes[f].Length; e++)
                {
                    Assert.True(expected.TryGetValue(set.Codes[f][e], out double v), $"feature {l}:{i}: partner {ProfilePartner.FromCode(set.Codes[f][e])} is not among the dense top {k} ({ctx})");
                    double err = Math.Abs(v - set.Values[f][e]) / scale;
                    worst = Math.Max(worst, err);
                    Assert.True(err <= 1e-5, $"feature {l}:{i} → {ProfilePartner.FromCode(set.Codes[f][e])}: {set.Values[f][e]:E6} vs dense {v:E6} ({ctx})");
                }
            }
            output.WriteLine($"{ctx}, k={k}: {set.Count} features, worst relative error {worst:E2}");
        }
    }

    [Fact]
    public void PromptProfilesMatchEveryRowComputedDirectly()
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        using var model = HookedTransformer.Load(Stories);
        var tcs = ReplacementCheck.RandomTranscoders(rng, model.Config.NLayers, model.Config.DModel);
        var prompts = Enumerable.Range(0, rng.Next(2, 4)).Select(_ => (int[])[1, .. Enumerable.Range(0, rng.Next(4, 8)).Select(_ => rng.Next(3, model.Config.VocabSize))]).ToList();
        string ctx = $"seed {seed}, prompts {string.Join(" | ", prompts.Select(p => string.Join(",", p)))}";
        var graphs = new List<AttributionGraph>();
        var expected = new Dictionary<ClusterFeature, Dictionary<long, double>>();
        var activeOn = new Dictionary<ClusterFeature, int>();
        foreach (var p in prompts)
        {
            var rm = ReplacementModel.Build(model, tcs, p);
            graphs.Add(GraphBuilder.Build(rm, new GraphBuildOptions { MaxFeatureNodes = int.MaxValue, BatchSize = rng.Next(4, 40) }));
            var (rows, _, _, targets) = ReplacementCheck.AllRows(rm, 16);
            int S = rm.Sources.Count;
            foreach (var f in rm.Sources.Take(rm.FeatureCount).Select(n => new ClusterFeature(n.Layer, n.Index)).Distinct())
                activeOn[f] = activeOn.GetValueOrDefault(f) + 1;
            void Add(ClusterFeature f, long code, double v)
            {
                if (!expected.TryGetValue(f, out var d)) expected[f] = d = [];
                d[code] = d.GetValueOrDefault(code) + v;
            }
            for (int t = 0; t < targets.Count; t++)
                for (int s = 0; s < S; s++)
                {
                    double a = rows[(long)t * S + s];
                    if (a == 0) continue;
                    if (targets[t].Kind == GraphNodeKind.Feature)
                        Add(new ClusterFeature(targets[t].Layer, targets[t].Index), ProfilePartner.Of(PartnerKey.Of(rm.Sources[s]), false).Code, a);
                    if (rm.Sources[s].Kind == GraphNodeKind.Feature)
                        Add(new ClusterFeature(rm.Sources[s].Layer, rm.Sources[s].Index), ProfilePartner.Of(PartnerKey.Of(targets[t]), true).Code, a);
                }
        }
        var set = ConnectionProfiles.FromGraphs(graphs);
        Assert.Equal(activeOn.Count, set.Count);
        double worst = 0;
        for (int f = 0; f < set.Count; f++)
        {
            var want = expected[set.Features[f]];
            double scale = want.Values.Select(Math.Abs).Max() / activeOn[set.Features[f]];
            var got = set.Codes[f].Zip(set.Values[f]).ToDictionary(x => x.First, x => (double)x.Second);
            foreach (var (code, v) in want)
            {
                double e = v / activeOn[set.Features[f]];
                double g = got.GetValueOrDefault(code);
                double err = Math.Abs(e - g) / scale;
                worst = Math.Max(worst, err);
                Assert.True(err <= 1e-5, $"feature {set.Features[f]}, partner {ProfilePartner.FromCode(code)}: {g:E6} vs direct {e:E6} ({ctx})");
            }
            Assert.True(got.Keys.All(want.ContainsKey), $"feature {set.Features[f]} has a partner with no direct effect ({ctx})");
        }
        Assert.Contains(set.Codes.SelectMany(c => c), c => ProfilePartner.FromCode(c).Kind == GraphNodeKind.Logit);
        output.WriteLine($"{ctx}: {set.Count} features, worst relative error {worst:E2}");

        // cosines: kNN and condensed distances vs dense double-precision vectors over every partner
        var codes = set.Codes.SelectMany(c => c).Distinct().Order().ToList();
        var col = codes.Select((c, i) => (c, i)).ToDictionary(x => x.c, x => x.i);
        var dense = set.Codes.Select((c, f) => { var v = new double[codes.Count]; for (int e = 0; e < c.Length; e++) v[col[c[e]]] = set.Values[f][e]; return v; }).ToArray();
        double Cos(int a, int b) => dense[a].Zip(dense[b]).Sum(x => x.First * x.Second) / Math.Sqrt(dense[a].Sum(x => x * x) * dense[b].Sum(x => x * x));
        var cond = ProfileSimilarity.Condensed(set);
        int n = set.Count;
        for (int a = 0; a < n; a++)
            for (int b = a + 1; b < n; b++)
                Assert.True(Math.Abs(1 - Cos(a, b) - cond[ProfileSimilarity.CondensedIndex(n, a, b)]) <= 1e-5, $"cosine {a},{b}: {1 - cond[ProfileSimilarity.CondensedIndex(n, a, b)]} vs dense {Cos(a, b)} ({ctx})");
        int k = rng.Next(1, 6);
        var knn = ProfileSimilarity.Knn(set, k);
        for (int a = 0; a < n; a++)
        {
            var best = Enumerable.Range(0, n).Where(b => b != a && Cos(a, b) > 1e-9).OrderByDescending(b => Cos(a, b)).Take(k).ToList();
            Assert.Equal(best.Count, knn[a].Index.Length);
            for (int r = 0; r < best.Count; r++)
                Assert.True(Math.Abs(Cos(a, knn[a].Index[r]) - Cos(a, best[r])) <= 1e-5 && Math.Abs(knn[a].Cosine[r] - Cos(a, best[r])) <= 1e-5,
                    $"feature {a}: neighbour {r} is {knn[a].Index[r]} (cos {knn[a].Cosine[r]}), dense says {best[r]} (cos {Cos(a, best[r])}) ({ctx})");
        }
    }

    [Fact]
    public void EmptyPromptSetIsAClearError()
    {
        var e = Assert.Throws<ArgumentException>(() => ConnectionProfiles.FromGraphs([]));
        Assert.Contains("prompt set is empty", e.Message, StringComparison.Ordinal);
    }
}
