using FeatureLens.Clustering;
using FeatureLens.Connections.Graphs;
using FeatureLens.Runtime.Models;
using FeatureLens.Tests.Connections;
using Xunit.Abstractions;

namespace FeatureLens.Tests.Clustering;

/// <summary>
/// Average linkage vs an O(n³) brute force, ARI vs pair counting, planted groups in a synthetic connection graph recovered
/// by both methods (ARI ≥ 0.9) and deterministic for a seed, automatic supernodes and their bad input.
/// </summary>
public sealed class ClusterMethodTests(ITestOutputHelper output)
{
    /// <summary>Planted groups: each group shares partners with group-specific weights; members add noise and a few stray partners.</summary>
    static (ProfileSet Set, int[] Truth) Planted(Random rng, int groups, int perGroup)
    {
        var features = new List<ClusterFeature>(); var codes = new List<long[]>(); var values = new List<float[]>(); var truth = new List<int>();
        for (int g = 0; g < groups; g++)
        {
            var shared = Enumerable.Range(0, 12).Select(_ => (new ProfilePartner(rng.Next(2) == 0, GraphNodeKind.Feature, rng.Next(6), rng.Next(5000)).Code, (float)(rng.NextDouble() * 2 - 1))).ToList();
            for (int m = 0; m < perGroup; m++)
            {
                var d = new Dictionary<long, float>();
                foreach (var (c, v) in shared) d[c] = v * (float)(0.7 + 0.6 * rng.NextDouble()) + (float)(0.1 * (rng.NextDouble() - 0.5));
                for (int s = 0; s < 3; s++) d[new ProfilePartner(true, GraphNodeKind.Logit, -1, rng.Next(100000)).Code] = (float)(0.2 * rng.NextDouble());
                var e = d.OrderBy(x => x.Key).ToList();
                features.Add(new ClusterFeature(g % 6, features.Count)); codes.Add([.. e.Select(x => x.Key)]); values.Add([.. e.Select(x => x.Value)]); truth.Add(g);
            }
        }
        var perm = Enumerable.Range(0, features.Count).ToArray();
        rng.Shuffle(perm);
        return (new ProfileSet("synthetic", [.. perm.Select(i => features[i])], [.. perm.Select(i => codes[i])], [.. perm.Select(i => values[i])]), [.. perm.Select(i => truth[i])]);
    }

    [Fact]
    public void AverageLinkageMakesTheSameMergesAsBruteForce()
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        int n = rng.Next(8, 40);
        var x = Enumerable.Range(0, n).Select(_ => Enumerable.Range(0, 4).Select(_ => rng.NextDouble()).ToArray()).ToArray();
        double Dist(int a, int b) => Math.Sqrt(x[a].Zip(x[b]).Sum(p => (p.First - p.Second) * (p.First - p.Second)));
        var cond = new float[n * (n - 1) / 2];
        for (int a = 0; a < n; a++) for (int b = a + 1; b < n; b++) cond[ProfileSimilarity.CondensedIndex(n, a, b)] = (float)Dist(a, b);
        var merges = AverageLinkage.Cluster(cond, n);

        // brute force: repeatedly merge the closest pair of clusters by the mean of all member distances (double precision)
        var clusters = Enumerable.Range(0, n).Select(i => (Id: i, Members: new List<int> { i })).ToList();
        for (int s = 0; s < n - 1; s++)
        {
            double best = double.MaxValue; int bi = -1, bj = -1;
            for (int i = 0; i < clusters.Count; i++)
                for (int j = i + 1; j < clusters.Count; j++)
                {
                    double d = clusters[i].Members.SelectMany(a => clusters[j].Members.Select(b => Dist(a, b))).Average();
                    if (d < best) { best = d; bi = i; bj = j; }
                }
            var m = merges[s];
            var want = new[] { clusters[bi].Id, clusters[bj].Id }.Order().ToArray();
            Assert.True(want[0] == m.A && want[1] == m.B && Math.Abs(best - m.Distance) <= 1e-5,
                $"merge {s}: ({m.A}, {m.B}) at {m.Distance:F7}, brute force ({want[0]}, {want[1]}) at {best:F7} (seed {seed}, n {n})");
            Assert.Equal(clusters[bi].Members.Count + clusters[bj].Members.Count, m.Size);
            var merged = (Id: n + s, Members: clusters[bi].Members.Concat(clusters[bj].Members).ToList());
            clusters.RemoveAt(bj); clusters.RemoveAt(bi); clusters.Add(merged);
        }
        int k = rng.Next(1, n + 1);
        Assert.Equal(k, AverageLinkage.CutToCount(merges, n, k).Distinct().Count());
        output.WriteLine($"seed {seed}: {n} points, {n - 1} merges equal; cut k={k}");
    }

    [Fact]
    public void AdjustedRandIndexMatchesPairCounting()
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        int n = rng.Next(20, 60);
        var a = Enumerable.Range(0, n).Select(_ => rng.Next(4)).ToArray();
        var b = Enumerable.Range(0, n).Select(i => rng.Next(3) == 0 ? rng.Next(5) : a[i] + 10).ToArray();
        double same = 0, sa = 0, sb = 0, total = n * (n - 1) / 2.0;
        for (int i = 0; i < n; i++)
            for (int j = i + 1; j < n; j++)
            {
                bool x = a[i] == a[j], y = b[i] == b[j];
                if (x) sa++;
                if (y) sb++;
                if (x && y) same++;
            }
        double expected = sa * sb / total, ari = (same - expected) / ((sa + sb) / 2 - expected);
        Assert.True(Math.Abs(ari - ClusterScores.AdjustedRandIndex(a, b)) <= 1e-12, $"ARI {ClusterScores.AdjustedRandIndex(a, b)} vs pair counting {ari} (seed {seed})");
        Assert.Equal(1, ClusterScores.AdjustedRandIndex(a, [.. a.Select(v => 7 - v)]), 12);
        Assert.Equal(1, ClusterScores.NormalizedMutualInformation(a, [.. a.Select(v => 7 - v)]), 12);
    }

    [Fact]
    public void BothMethodsRecoverPlantedGroupsDeterministically()
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        int groups = rng.Next(4, 9);
        var (set, truth) = Planted(rng, groups, rng.Next(10, 25));
        int louvainSeed = rng.Next();
        var h = FeatureClustering.Run(set, new ClusterOptions { Method = "hierarchical", CutCount = groups });
        var l1 = FeatureClustering.Run(set, new ClusterOptions { Method = "louvain", Knn = 10, Seed = louvainSeed });
        var l2 = FeatureClustering.Run(set, new ClusterOptions { Method = "louvain", Knn = 10, Seed = louvainSeed });
        double ah = ClusterScores.AdjustedRandIndex(h.Assignment, truth), al = ClusterScores.AdjustedRandIndex(l1.Assignment, truth);
        string ctx = $"seed {seed}, {groups} groups of {truth.Length / groups}, louvain seed {louvainSeed}";
        output.WriteLine($"{ctx}: ARI hierarchical {ah:F4}, louvain {al:F4} ({l1.ClusterCount} clusters, modularity {l1.Modularity:F4})");
        Assert.True(ah >= 0.9, $"hierarchical ARI {ah} ({ctx})");
        Assert.True(al >= 0.9, $"louvain ARI {al} ({ctx})");
        Assert.Equal(l1.Assignment, l2.Assignment);
        Assert.Equal(h.Assignment, FeatureClustering.Run(set, new ClusterOptions { Method = "hierarchical", CutCount = groups }).Assignment);
    }

    [Fact]
    public void SupernodesGroupGraphNodesByClusterAndBadInputIsClear()
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        using var model = HookedTransformer.Load(Path.Combine(TestPaths.Shared, "models", "stories260K", "stories260K.bin"));
        var tcs = ReplacementCheck.RandomTranscoders(rng, model.Config.NLayers, model.Config.DModel);
        int[] tokens = [1, .. Enumerable.Range(0, rng.Next(4, 8)).Select(_ => rng.Next(3, model.Config.VocabSize))];
        var run = GraphRun.Compute(model, tcs, tokens, new GraphRunOptions { Prune = false });
        using var dir = new TempDir();
        string g = Path.Combine(dir.Path, "g.json"), c = Path.Combine(dir.Path, "c.json"), g2 = Path.Combine(dir.Path, "g2.json");
        run.Write(g);
        var set = ConnectionProfiles.FromGraphs([run.Graph]);
        var result = FeatureClustering.Run(set, new ClusterOptions { Method = "hierarchical", CutDistance = 0.9 });
        var hooks = run.Replacement.Transcoders.Select(t => t.Config.Metadata.HookName).ToList();
        ClusterFile.Write(c, result, new ClusterAnnotations { Transcoders = hooks, DSae = [.. run.Replacement.Transcoders.Select(t => t.DSae)], Label = f => $"L{f.Layer} thing" });
        var file = ClusterFile.Read(c);
        int L = model.Config.NLayers, from = rng.Next(L), to = rng.Next(from, L);
        var sn = AutoSupernodes.Apply(g, file, from, to, g2);
        var back = GraphJson.Read(g2);
        Assert.Equal(sn.Count, back.QParams.Supernodes.Count);
        var clusterOf = file.Features.ToDictionary(x => x.Feature, x => x.Cluster);
        var expected = back.Nodes.Where(n => n.FeatureType == "cross layer transcoder" && int.Parse(n.Layer, System.Globalization.CultureInfo.InvariantCulture) is int l && l >= from && l <= to)
            .GroupBy(n => clusterOf[new ClusterFeature(int.Parse(n.Layer, System.Globalization.CultureInfo.InvariantCulture), n.Latent!.Value)]).Where(gr => gr.Count() >= 2).ToList();
        Assert.Equal(expected.Count, sn.Count);
        foreach (var s in back.QParams.Supernodes)
        {
            var grp = Assert.Single(expected, e => file.ClusterNames[e.Key] == s[0]);
            Assert.Equal(grp.Select(n => n.NodeId).Order(), s.Skip(1).Order());
        }
        output.WriteLine($"seed {seed}: {set.Count} features, {result.ClusterCount} clusters, layers {from}-{to}: {sn.Count} supernodes");

        var e1 = Assert.Throws<ArgumentException>(() => AutoSupernodes.Apply(g, file, 0, L + 2, g2));
        Assert.Contains("unknown layer range", e1.Message, StringComparison.Ordinal);
        Assert.Throws<ArgumentException>(() => AutoSupernodes.ParseLayers("3-1"));
        var other = file with { Transcoders = [.. hooks.Select(h => h.Replace("blocks.", "model.", StringComparison.Ordinal))] };
        var e2 = Assert.Throws<InvalidDataException>(() => AutoSupernodes.Apply(g, other, 0, L - 1, g2));
        Assert.Contains("another graph", e2.Message, StringComparison.Ordinal);
        var small = file with { DSae = [.. file.DSae.Select(_ => 1)] };
        var e3 = Assert.Throws<InvalidDataException>(() => AutoSupernodes.Apply(g, small, 0, L - 1, g2));
        Assert.Contains("does not fit", e3.Message, StringComparison.Ordinal);
        File.WriteAllText(c, "{\"schema\": \"something else\"}");
        Assert.Throws<InvalidDataException>(() => ClusterFile.Read(c));
    }
}
