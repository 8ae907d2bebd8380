using System.Diagnostics;
using System.Globalization;
using FeatureLens.Clustering;
using FeatureLens.Saes;
using Spectre.Console;

namespace FeatureLens.Bench;

/// <summary>
/// Clustering 24576 features by their weight profiles: random TopK transcoders on 4 layers of 6144 latents over a 512-wide
/// residual stream (Gaussian weights, seed 0), virtual-weight profiles (top 32 partners per side, blockwise), then Louvain
/// on the 10-NN cosine graph (and, with --hierarchical, average linkage over all 302 million pairs). Options: --layers L,
/// --latents N, --d-model C, --hierarchical. One run; the last line is "cluster: N.N s for N features".
/// </summary>
public static class ClusterBench
{
    public static int Run(string[] args)
    {
        int layers = 4, latents = 6144, C = 512;
        bool hierarchical = false;
        for (int i = 0; i < args.Length; i++)
            switch (args[i])
            {
                case "--layers": layers = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--latents": latents = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--d-model": C = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--hierarchical": hierarchical = true; break;
                default: throw new ArgumentException($"unknown option {args[i]}");
            }
        var rng = new Random(0);
        var saes = new List<Sae>();
        for (int l = 0; l < layers; l++)
        {
            float[] G(long n, float s) { var a = new float[n]; for (long j = 0; j < n; j++) a[j] = (float)(rng.NextDouble() * 2 - 1) * s; return a; }
            var cfg = new SaeConfig
            {
                Architecture = SaeArchitecture.TopKTranscoder, DIn = C, DSae = latents, DOut = C, K = 32,
                Metadata = new SaeMetadata { HookName = $"blocks.{l}.ln2.hook_normalized", HookNameOut = $"blocks.{l}.hook_mlp_out" },
            };
            saes.Add(new Sae(cfg, G((long)C * latents, 1f / MathF.Sqrt(C)), new float[latents], G((long)latents * C, 1f / MathF.Sqrt(C)), new float[C]));
        }
        var clt = CrossLayerTranscoder.FromPerLayer(saes);
        var table = new Table().Border(TableBorder.Rounded).Title($"clustering {layers * latents} features ({layers} layers × {latents}, d_model {C}) on {BenchSupport.CpuName()}")
            .AddColumns("step", "seconds", "result");
        var total = Stopwatch.StartNew();
        var sw = Stopwatch.StartNew();
        var set = ConnectionProfiles.FromWeights(clt, topK: 32);
        table.AddRow("virtual-weight profiles (top 32 per side)", S(sw), $"{set.Count} profiles, {set.Codes.Sum(c => (long)c.Length)} entries");
        sw.Restart();
        var knn = ProfileSimilarity.Knn(set, 10);
        table.AddRow("10-NN cosines", S(sw), $"{knn.Sum(k => k.Index.Length)} neighbours");
        sw.Restart();
        var graph = WeightedGraph.FromKnn(knn);
        var louvain = Louvain.Cluster(graph, seed: 0);
        table.AddRow("Louvain (seed 0)", S(sw), $"{louvain.Max() + 1} clusters, modularity {graph.Modularity(louvain):F3}");
        double seconds = total.Elapsed.TotalSeconds;
        if (hierarchical)
        {
            sw.Restart();
            var h = FeatureClustering.Run(set, new ClusterOptions { Method = "hierarchical", CutCount = louvain.Max() + 1 });
            table.AddRow("average linkage (all pairs) + cut", S(sw), $"{h.ClusterCount} clusters, ARI vs Louvain {ClusterScores.AdjustedRandIndex(h.Assignment, louvain):F3}");
        }
        AnsiConsole.Write(table);
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"cluster: {seconds:F1} s for {set.Count} features"));
        BenchSummary.Record("cluster", $"{set.Count} features (profiles, 10-NN, Louvain)", string.Create(CultureInfo.InvariantCulture, $"{seconds:F1} s"), "", null);
        return 0;
    }

    static string S(Stopwatch sw) => sw.Elapsed.TotalSeconds.ToString("F2", CultureInfo.InvariantCulture);
}
