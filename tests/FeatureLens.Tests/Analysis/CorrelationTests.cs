using System.Globalization;
using FeatureLens.Analysis;
using FeatureLens.Runtime.Tokenizers;
using FeatureLens.Saes;
using FeatureLens.Tests.Saes;

namespace FeatureLens.Tests.Analysis;

public class CorrelationTests
{
    static readonly string[] Stories =
    [
        "Once upon a time, there was a little girl named Lily. She loved to play outside in the sun.",
        "Tom had a big red ball. He liked to throw it to his dog, Max. Max ran fast and brought it back.",
        "One day, a bird flew into the garden. The bird was sad because it lost its way home.",
        "Sue and her mom went to the park. They saw a big tree and sat under it to eat.",
        "The cat was hungry. It looked for food in the kitchen, but there was none. Then it saw a fish.",
    ];

    static List<int[]> Windows(SaeSet set, int context) =>
        Corpus.Windows(Stories.Concat(Stories.Reverse()), set.Model.Tokenizer!, context, prependBos: true).ToList();

    /// <summary>Rows (non-BOS tokens of all windows) of each SAE's latents, from the unspliced model.</summary>
    static List<float[]>[] DirectRows(SaeSet set, List<int[]> windows)
    {
        int bos = set.Model.Tokenizer!.BosId!.Value;
        var rows = set.Saes.Select(_ => new List<float[]>()).ToArray();
        foreach (var w in windows)
        {
            var lat = AnalysisTestData.DirectLatents(set, w);
            for (int s = 0; s < set.Saes.Count; s++)
            {
                int d = set.Saes[s].DSae;
                for (int t = 0; t < w.Length; t++) if (w[t] != bos) rows[s].Add(lat[s].AsSpan(t * d, d).ToArray());
            }
        }
        return rows;
    }

    /// <summary>
    /// The same rows from the spliced pass the accumulator runs, batch by batch as it batches them — identical float32
    /// activations, so the statistics can be checked to 1e-6 (the clean model differs from them by rounding only).
    /// </summary>
    static List<float[]>[] SplicedRows(SaeSet set, List<int[]> windows, int batchSequences)
    {
        int bos = set.Model.Tokenizer!.BosId!.Value;
        var rows = set.Saes.Select(_ => new List<float[]>()).ToArray();
        foreach (var batch in windows.Chunk(batchSequences))
        {
            var lat = FeatureTracker.RunLatents(set, batch);
            int T = batch.Max(w => w.Length);
            for (int s = 0; s < set.Saes.Count; s++)
            {
                int d = set.Saes[s].DSae;
                for (int b = 0; b < batch.Length; b++)
                    for (int t = 0; t < batch[b].Length; t++)
                        if (batch[b][t] != bos) rows[s].Add(lat[s].AsSpan((b * T + t) * d, d).ToArray());
            }
        }
        return rows;
    }

    static float[] Column(List<float[]> rows, int f) => rows.Select(r => r[f]).ToArray();

    [Fact]
    public void CorpusAccumulationEqualsTheOneShotComputationOverAllTokens()
    {
        int seed = Random.Shared.Next();
        var set = AnalysisTestData.Set(new Random(seed), 96, SaeArchitecture.TopK, k: 10, 0, 2, 4);
        var windows = Windows(set, 32);
        var options = new CorrelationOptions { Threshold = 0.3, MinFires = 3, BatchSequences = 3 };
        long reported = 0;
        var stats = FeatureCorrelation.Accumulate(set, windows, options, new SyncProgress(n => reported = n));
        var rows = SplicedRows(set, windows, 3);
        var clean = DirectRows(set, windows);
        int N = rows[0].Count;
        Assert.Equal(clean[0].Count, N);
        Assert.Equal(N, stats.Tokens);
        Assert.Equal(N, reported);
        Assert.Equal(1, FeatureCorrelation.Passes(set, options));
        int checkedPairs = 0;
        for (int a = 0; a < 3; a++)
        {
            for (int f = 0; f < 96; f++)
            {
                var x = Column(rows[a], f);
                Assert.Equal(x.Count(v => v > 0), stats.Fires[a][f]);
                Assert.True(Math.Abs(stats.Sum[a][f] - x.Sum(v => (double)v)) <= 1e-4 * Math.Max(1, Math.Abs(stats.Sum[a][f])), $"seed {seed}");
            }
            for (int b = a + 1; b < 3; b++)
                for (int fa = 0; fa < 96; fa++)
                    for (int fb = 0; fb < 96; fb += 7)
                    {
                        double direct = TrackerTests.DirectPearson(Column(rows[a], fa), Column(rows[b], fb));
                        double r = stats.R(a, fa, b, fb);
                        if (double.IsNaN(direct)) { Assert.True(double.IsNaN(r), $"seed {seed}: r of a constant feature should be NaN, got {r}"); continue; }
                        Assert.True(Math.Abs(r - direct) <= 1e-6 * Math.Max(Math.Abs(direct), 0.01), $"seed {seed} ({a}:{fa}, {b}:{fb}): r {r} vs two-pass {direct}");
                        // the clean model's activations differ from the spliced pass's by float32 rounding only
                        double cleanR = TrackerTests.DirectPearson(Column(clean[a], fa), Column(clean[b], fb));
                        Assert.True(Math.Abs(r - cleanR) <= 1e-4 * Math.Max(Math.Abs(cleanR), 0.01), $"seed {seed} ({a}:{fa}, {b}:{fb}): r {r} vs clean {cleanR}");
                        checkedPairs++;
                    }
        }
        Assert.True(checkedPairs > 500, $"seed {seed}: only {checkedPairs} pairs");

        // the network: exactly the pairs with |r| ≥ 0.3 among features firing ≥ 3 times
        var net = FeatureCorrelation.Network(set, stats, options);
        int expected = 0;
        for (int a = 0; a < 3; a++)
            for (int b = a + 1; b < 3; b++)
                for (int fa = 0; fa < 96; fa++)
                    for (int fb = 0; fb < 96; fb++)
                    {
                        if (stats.Fires[a][fa] < 3 || stats.Fires[b][fb] < 3) continue;
                        double r = stats.R(a, fa, b, fb);
                        if (!double.IsNaN(r) && Math.Abs(r) >= 0.3) expected++;
                    }
        Assert.Equal(expected, net.Edges.Count);
        Assert.All(net.Nodes, n => Assert.True(n.Degree > 0));
        Assert.Equal(N, net.Tokens);
        // the same through Corpus
        var viaCorpus = FeatureCorrelation.Corpus(set, windows, options);
        Assert.Equal(net.Edges.Select(e => (e.Source, e.Target)), viaCorpus.Edges.Select(e => (e.Source, e.Target)));
    }

    /// <summary>An IProgress that reports synchronously (Progress&lt;T&gt; posts to the thread pool).</summary>
    sealed class SyncProgress(Action<long> report) : IProgress<long> { public void Report(long value) => report(value); }

    [Fact]
    public void PearsonMatchesTorchCorrcoef()
    {
        int seed = Random.Shared.Next();
        var set = AnalysisTestData.Set(new Random(seed), 48, SaeArchitecture.Standard, 0, 1, 3);
        var windows = Windows(set, 24).Take(6).ToList();
        var stats = FeatureCorrelation.Accumulate(set, windows, new CorrelationOptions { MinFires = 0, BatchSequences = 4 });
        var rows = SplicedRows(set, windows, 4);
        using var dir = new TempDir();
        // (N, 96): both SAEs' latents side by side, as the oracle's input
        string csv = dir.File("acts.csv");
        File.WriteAllLines(csv, Enumerable.Range(0, rows[0].Count).Select(t =>
            string.Join(",", rows[0][t].Concat(rows[1][t]).Select(v => ((double)v).ToString("R", CultureInfo.InvariantCulture)))));
        string script = dir.File("corr.py");
        File.WriteAllText(script, """
            import sys, torch
            rows = [[float(v) for v in line.split(',')] for line in open(sys.argv[1]) if line.strip()]
            x = torch.tensor(rows, dtype=torch.float64)
            c = torch.corrcoef(x.T)
            for row in c[:48, 48:].tolist():
                print(','.join(repr(v) for v in row))
            """);
        var lines = TorchReference.RunPython(script, csv).Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(48, lines.Length);
        int compared = 0;
        double worst = 0;
        for (int i = 0; i < 48; i++)
        {
            var refRow = lines[i].Split(',').Select(v => double.Parse(v, CultureInfo.InvariantCulture)).ToArray();
            for (int j = 0; j < 48; j++)
            {
                double r = stats.R(0, i, 1, j);
                if (double.IsNaN(refRow[j])) { Assert.True(double.IsNaN(r), $"seed {seed}: ({i},{j}) constant in torch, r {r} here"); continue; }
                // torch correlates the same float32 activations, written exactly (as doubles: a float32's shortest string parses to another double)
                double err = Math.Abs(r - refRow[j]) / Math.Max(Math.Abs(refRow[j]), 0.01);
                worst = Math.Max(worst, err);
                compared++;
            }
        }
        Assert.True(compared > 1000, $"seed {seed}: {compared}");
        Assert.True(worst <= 1e-6, $"seed {seed}: worst relative error {worst}");
    }

    [Fact]
    public void ExactAgainstTheSameActivations()
    {
        // the sufficient-statistics formula against two-pass r over identical float32 data: 1e-6 relative
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        int n = 5000;
        var x = new float[n]; var y = new float[n];
        for (int t = 0; t < n; t++)
        {
            x[t] = rng.NextDouble() < 0.2 ? (float)(rng.NextDouble() * 3) : 0f;
            y[t] = x[t] > 0 && rng.NextDouble() < 0.7 ? x[t] * 0.5f + (float)rng.NextDouble() : (rng.NextDouble() < 0.1 ? (float)rng.NextDouble() : 0f);
        }
        double sx = 0, sxx = 0, sy = 0, syy = 0, sxy = 0;
        for (int t = 0; t < n; t++)
        {
            sx += x[t]; sxx += (double)x[t] * x[t]; sy += y[t]; syy += (double)y[t] * y[t];
            if (x[t] != 0 && y[t] != 0) sxy += (double)x[t] * y[t];   // co-firing only
        }
        double r = FeatureCorrelation.Pearson(n, sx, sxx, sy, syy, sxy), direct = TrackerTests.DirectPearson(x, y);
        Assert.True(Math.Abs(r - direct) <= 1e-6 * Math.Abs(direct), $"seed {seed}: {r} vs {direct}");
        Assert.Equal(direct, FeatureCorrelation.Pearson(x, y), 12);
        Assert.True(double.IsNaN(FeatureCorrelation.Pearson(n, 5.0 * n, 25.0 * n, sy, syy, 5 * sy)));   // a constant 5
    }

    [Fact]
    public void TwoPassModeKeepsTheMostFrequentFeatures()
    {
        int seed = Random.Shared.Next();
        var set = AnalysisTestData.Set(new Random(seed), 64, SaeArchitecture.TopK, k: 6, 1, 4);
        var windows = Windows(set, 32);
        var options = new CorrelationOptions { MaxFeaturesPerSae = 20, MinFires = 2, BatchSequences = 2, Threshold = 0.2 };
        Assert.Equal(2, FeatureCorrelation.Passes(set, options));
        long reported = 0;
        var stats = FeatureCorrelation.Accumulate(set, windows, options, new SyncProgress(n => reported = n));
        Assert.Equal(2 * stats.Tokens, reported);
        var rows = SplicedRows(set, windows, 2);
        for (int s = 0; s < 2; s++)
        {
            var fires = Enumerable.Range(0, 64).Select(f => Column(rows[s], f).Count(v => v > 0)).ToArray();
            var kept = stats.Kept[s];
            Assert.True(kept.Length <= 20);
            Assert.All(kept, f => Assert.True(fires[f] >= 2));
            // every dropped feature fires no more often than the least frequent kept one
            int least = kept.Min(f => fires[f]);
            var dropped = Enumerable.Range(0, 64).Except(kept).Where(f => fires[f] >= 2);
            Assert.All(dropped, f => Assert.True(fires[f] <= least, $"seed {seed}: dropped feature {f} fires {fires[f]} > {least}"));
        }
        foreach (int fa in stats.Kept[0])
            foreach (int fb in stats.Kept[1])
            {
                double direct = TrackerTests.DirectPearson(Column(rows[0], fa), Column(rows[1], fb));
                double r = stats.R(0, fa, 1, fb);
                Assert.True(double.IsNaN(direct) ? double.IsNaN(r) : Math.Abs(r - direct) <= 1e-6 * Math.Max(Math.Abs(direct), 0.01), $"seed {seed}: {r} vs {direct}");
            }
        Assert.Throws<ArgumentException>(() => stats.R(0, Enumerable.Range(0, 64).Except(stats.Kept[0]).First(), 1, stats.Kept[1][0]));
    }

    [Fact]
    public void BuildFindsComponentsAndHubsOfAHandMadeNetwork()
    {
        var set = AnalysisTestData.Set(new Random(Random.Shared.Next()), 16, SaeArchitecture.Standard, 0, 0, 1, 2);
        // features: 0..2 in SAE 0, 3..5 in SAE 1, 6..7 in SAE 2
        NetworkFeature F(int s, int f, double max) => new(s, f, max);
        var features = new List<NetworkFeature> { F(0, 1, 1), F(0, 2, 2), F(0, 3, 3), F(1, 4, 4), F(1, 5, 5), F(1, 6, 6), F(2, 7, 7), F(2, 8, 8) };
        var pairs = new List<FeaturePair>
        {
            new(0, 3, 0.9), new(0, 4, -0.8), new(0, 6, 0.7),   // node 0: degree 3
            new(3, 6, 0.6),                                    // component {0, 3, 4, 6}
            new(2, 5, 0.95),                                   // component {2, 5}
            new(1, 7, 0.2),                                    // below threshold: 1 and 7 isolated
            new(4, 5, double.NaN),                             // ignored
            new(3, 4, 0.99),                                   // same SAE: ignored
        };
        var net = FeatureCorrelation.Build(set, features, pairs, 0.5, 100, hubs: 3);
        string Id(int i) => CorrelationNetwork.NodeId(set, features[i].SaeIndex, features[i].Feature);
        Assert.Equal(8, net.Nodes.Count);
        Assert.Equal(5, net.Edges.Count);
        Assert.Equal(new[] { 3, 0, 1, 2, 1, 1, 2, 0 }, net.Nodes.Select(n => n.Degree).ToArray());
        Assert.Equal(2, net.Components.Count);
        Assert.Equal(new[] { Id(0), Id(3), Id(4), Id(6) }, net.Components[0]);
        Assert.Equal(new[] { Id(2), Id(5) }, net.Components[1]);
        // hubs: degree 3 (node 0), then degree 2 by max activation (node 6 max 7 before node 3 max 4)
        Assert.Equal(new[] { Id(0), Id(6), Id(3) }, net.Hubs);
        Assert.Contains(net.Edges, e => e.Source == Id(0) && e.Target == Id(4) && e.R == -0.8);
        Assert.Equal("L0 resid_post:1", Id(0));
        var sparse = FeatureCorrelation.Build(set, features, pairs, 0.5, 100, keepIsolated: false);
        Assert.Equal(6, sparse.Nodes.Count);
        var strict = FeatureCorrelation.Build(set, features, pairs, 0.85, 100);
        Assert.Equal(2, strict.Edges.Count);
        Assert.Throws<ArgumentException>(() => FeatureCorrelation.Build(set, [F(0, 99, 1)], [], 0.5, 1));
        Assert.ThrowsAny<ArgumentException>(() => FeatureCorrelation.Build(set, features, pairs, 1.5, 1));
    }
}
