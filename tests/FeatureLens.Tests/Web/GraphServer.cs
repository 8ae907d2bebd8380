using FeatureLens.Analysis;
using FeatureLens.Connections.Graphs;
using FeatureLens.Runtime.Models;
using FeatureLens.Saes;
using FeatureLens.Tests.Connections;
using FeatureLens.Tests.Saes;
using FeatureLens.Web;
using Microsoft.AspNetCore.Builder;

namespace FeatureLens.Tests.Web;

/// <summary>
/// The web app for the Graph page on a free loopback port: stories260K with one random transcoder per layer
/// (ReplacementCheck.RandomTranscoders) and a random resid SAE (so the transcoders form a tracker set of their own), a
/// label for every transcoder feature, a second set without transcoders, and a graphs folder holding one graph saved
/// unpruned (<see cref="UnprunedId"/>) and one saved pruned (<see cref="PrunedId"/>) of <see cref="SavedPrompt"/>.
/// </summary>
public sealed class GraphServer : IAsyncLifetime, IDisposable
{
    public const string SetName = "stories260K", PlainSet = "plain", UnprunedId = "saved-unpruned", PrunedId = "saved-pruned";
    public const string SavedPrompt = "Tom and Lily went to the park. Tom saw a big dog. He said to";
    public const int MaxTextChars = 500, SavedMaxFeatures = 60;

    readonly TempDir dir = new();
    public int Seed { get; } = Random.Shared.Next();
    public HookedTransformer Model { get; private set; } = null!;
    HookedTransformer plainModel = null!;
    public IReadOnlyList<Sae> Transcoders { get; private set; } = null!;
    /// <summary>The SAE set of <see cref="SetName"/> (its resid SAE; the transcoders are served beside it).</summary>
    public SaeSet Set { get; private set; } = null!;
    public FeatureLabelLookup Labels { get; } = new();
    /// <summary>The graph of the saved files (unpruned).</summary>
    public AttributionGraph SavedGraph { get; private set; } = null!;
    public string Folder => dir.Path;
    public WebApplication App { get; private set; } = null!;
    public string Url { get; private set; } = "";

    public int[] Encode(string text) => Model.Tokenizer!.Encode(text, addBos: true);

    public async Task InitializeAsync()
    {
        var rng = new Random(Seed);
        Model = HookedTransformer.Load(TrackerServer.ModelPath);
        plainModel = HookedTransformer.Load(TrackerServer.ModelPath);
        Transcoders = ReplacementCheck.RandomTranscoders(rng, Model.Config.NLayers, Model.Config.DModel);
        string[] topics = ["animals", "names", "weather", "food", "play", "family"];
        foreach (var t in Transcoders)
            for (int f = 0; f < t.DSae; f++)
                Labels.Set(t.Config.Metadata.HookName, f, new FeatureLabel { Label = $"{topics[rng.Next(topics.Length)]} {f}", Source = "computed" });
        var sae = SaeTestData.Random(rng, SaeArchitecture.TopK, 64, 128, "blocks.2.hook_resid_post", k: 8);
        var plainSae = SaeTestData.Random(rng, SaeArchitecture.TopK, 64, 128, "blocks.1.hook_resid_post", k: 8);

        Set = new SaeSet(Model, [sae]);
        var run = GraphRun.Compute(Model, Transcoders, Encode(SavedPrompt), new GraphRunOptions { MaxFeatureNodes = SavedMaxFeatures, Prune = false }, Labels);
        SavedGraph = run.Graph;
        run.Write(Path.Combine(Folder, UnprunedId + ".json"));
        GraphJson.Write(Path.Combine(Folder, PrunedId + ".json"), run.Graph, GraphPruning.Prune(run.Graph), run.Info);

        App = TrackerApp.Build(new TrackerAppOptions
        {
            Sets =
            [
                new TrackerSet { Name = SetName, Set = Set, Labels = Labels, ModelSource = TrackerServer.ModelPath, Transcoders = Transcoders },
                new TrackerSet { Name = PlainSet, Set = new SaeSet(plainModel, [plainSae]), ModelSource = TrackerServer.ModelPath },
            ],
            Urls = ["http://127.0.0.1:0"],
            MaxTextChars = MaxTextChars,
            GraphsFolder = Folder,
            GraphCacheSize = 3,
        });
        await App.StartAsync();
        Url = App.Urls.Single();
    }

    public async Task DisposeAsync()
    {
        if (App != null) await App.DisposeAsync();
        Model?.Dispose();
        plainModel?.Dispose();
        Dispose();
    }

    public void Dispose() => dir.Dispose();
}

[CollectionDefinition(Name)]
public sealed class GraphServerCollection : ICollectionFixture<GraphServer>
{
    public const string Name = "graph web app";
}
