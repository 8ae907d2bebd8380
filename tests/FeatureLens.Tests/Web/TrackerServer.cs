using FeatureLens.Analysis;
using FeatureLens.Runtime.Models;
using FeatureLens.Saes;
using FeatureLens.Tests.Saes;
using FeatureLens.Web;
using Microsoft.AspNetCore.Builder;

namespace FeatureLens.Tests.Web;

/// <summary>
/// The tracker app on a free loopback port: stories260K with 5 random TopK SAEs (64 → 256, k = 8) at
/// blocks.L.hook_resid_post and a label for every feature. Shared by the API and browser tests.
/// </summary>
public sealed class TrackerServer : IAsyncLifetime
{
    public const string SetName = "stories260K";
    public const int MaxTextChars = 2000;
    public static string ModelPath => Path.Combine(TestPaths.Shared, "models", "stories260K", "stories260K.bin");

    public int Seed { get; } = Random.Shared.Next();
    public HookedTransformer Model { get; private set; } = null!;
    public SaeSet Set { get; private set; } = null!;
    public FeatureLabelLookup Labels { get; } = new();
    public WebApplication App { get; private set; } = null!;
    /// <summary>"http://127.0.0.1:PORT".</summary>
    public string Url { get; private set; } = "";

    public async Task InitializeAsync()
    {
        var rng = new Random(Seed);
        Model = HookedTransformer.Load(ModelPath);
        var saes = Enumerable.Range(0, 5).Select(l => SaeTestData.Random(rng, SaeArchitecture.TopK, 64, 256, $"blocks.{l}.hook_resid_post", k: 8)).ToList();
        Set = new SaeSet(Model, saes);
        string[] topics = ["animals", "names", "weather", "food", "play", "family"];
        for (int s = 0; s < Set.Saes.Count; s++)
            for (int f = 0; f < Set.Saes[s].DSae; f++)
                Labels.Set(Set.Hooks[s], f, new FeatureLabel
                {
                    Label = $"{topics[rng.Next(topics.Length)]} {f % 10}", F1 = rng.NextDouble(), Precision = rng.NextDouble(), Recall = rng.NextDouble(),
                    Specialization = rng.NextDouble(), Source = "computed",
                });
        App = TrackerApp.Build(new TrackerAppOptions
        {
            Sets = [new TrackerSet { Name = SetName, Set = Set, Labels = Labels, ModelSource = ModelPath }],
            Urls = ["http://127.0.0.1:0"],
            MaxTextChars = MaxTextChars,
            MaxRequestBytes = 32 * 1024,
        });
        await App.StartAsync();
        Url = App.Urls.Single();
    }

    public async Task DisposeAsync()
    {
        if (App != null) await App.DisposeAsync();
        Model?.Dispose();
    }
}

[CollectionDefinition(Name)]
public sealed class TrackerServerCollection : ICollectionFixture<TrackerServer>
{
    public const string Name = "tracker web app";
}
