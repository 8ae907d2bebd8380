using FeatureLens.Analysis;
using FeatureLens.Clustering;
using FeatureLens.Connections.Graphs;
using FeatureLens.Database;
using FeatureLens.Saes;
using FeatureLens.Tests.Analysis;
using FeatureLens.Tests.Connections;
using FeatureLens.Tests.Database;
using FeatureLens.Web;
using Microsoft.AspNetCore.Builder;

namespace FeatureLens.Tests.Web;

/// <summary>
/// The cluster view's server: random transcoders for stories260K (one per layer), clustered by the library from their
/// virtual-weight profiles into two clusters files (hierarchical with a random cut into k clusters, and Louvain), random
/// labels and top tokens for about 60 % of the features, and a real feature database scanned over the first two layers'
/// transcoders only, so members of those layers link to feature pages and the others do not.
/// </summary>
public sealed class ClusterServer : IAsyncLifetime, IDisposable
{
    public const string DbName = "tcscan";
    readonly TempDir dir = new();
    public int Seed { get; } = Random.Shared.Next();
    public string Hierarchical => dir.File("hier.json");
    public string Louvain => dir.File("louv.json");
    public string DbPath => dir.File(DbName + ".sqlite");
    public IReadOnlyList<Sae> Transcoders { get; private set; } = null!;
    public WebApplication App { get; private set; } = null!;
    public string Url { get; private set; } = "";

    public async Task InitializeAsync()
    {
        var rng = new Random(Seed);
        var model = AnalysisTestData.Model;
        Transcoders = ReplacementCheck.RandomTranscoders(rng, model.Config.NLayers, model.Config.DModel);
        var clt = ReplacementModel.OrderByLayer(model, Transcoders);
        var profiles = ConnectionProfiles.FromWeights(clt, topK: rng.Next(6, 16));
        var hooks = clt.Layers.Select(t => t.Config.Metadata.HookName).ToList();
        string[] words = ["animal", "names", "weather", "food", "family", "play"];
        var labels = profiles.Features.ToDictionary(f => f, f => rng.NextDouble() < 0.6 ? $"{words[rng.Next(words.Length)]} {f.Layer}.{f.Latent}" : null);
        var tokens = profiles.Features.ToDictionary(f => f, f => (IReadOnlyList<string>)[.. Enumerable.Range(0, rng.Next(1, 4)).Select(_ => " " + words[rng.Next(words.Length)])]);
        var notes = new ClusterAnnotations { Transcoders = hooks, DSae = [.. clt.Layers.Select(t => t.DSae)], Label = f => labels[f], TopTokens = f => tokens[f] };
        ClusterFile.Write(Hierarchical, FeatureClustering.Run(profiles, new ClusterOptions { Method = "hierarchical", CutCount = rng.Next(3, 7), HeatmapFeatures = rng.Next(40, 120) }), notes);
        ClusterFile.Write(Louvain, FeatureClustering.Run(profiles, new ClusterOptions { Method = "louvain", Knn = rng.Next(4, 10), Seed = rng.Next(100) }), notes);

        string corpus = ScanTestData.Corpus(rng, dir.Path, documents: 40);
        var settings = ScanTestData.Settings(rng) with { Tokens = 1200 };
        CorpusScan.Run(ScanTestData.Set(clt.Layers.Take(2)), [], [corpus], settings, ShardSpec.All, DbPath);
        App = TrackerApp.Build(new TrackerAppOptions { Databases = [DbPath], Clusters = [Hierarchical, Louvain], Urls = ["http://127.0.0.1:0"] });
        await App.StartAsync();
        Url = App.Urls.Single();
    }

    public async Task DisposeAsync()
    {
        if (App != null) await App.DisposeAsync();
        Dispose();
    }

    public void Dispose() => dir.Dispose();
}

[CollectionDefinition(Name)]
public sealed class ClusterServerCollection : ICollectionFixture<ClusterServer>
{
    public const string Name = "cluster view web app";
}
