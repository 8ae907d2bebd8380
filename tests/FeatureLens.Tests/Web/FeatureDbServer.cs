using FeatureLens.Analysis;
using FeatureLens.Database;
using FeatureLens.Runtime.Models;
using FeatureLens.Saes;
using FeatureLens.Tests.Analysis;
using FeatureLens.Tests.Database;
using FeatureLens.Web;
using Microsoft.AspNetCore.Builder;

namespace FeatureLens.Tests.Web;

/// <summary>
/// A small real feature database and the web app serving it on a free loopback port: a scan of a random corpus through
/// stories260K with ScanTestData's three random SAEs (64 latents each, so the browser has two pages of 50), labels drawn
/// at random for about 70 % of the features (words that share prefixes, for the FTS5 search), and a tracker set over the
/// same SAEs (its own copy of the model) so the tracker's feature panel can link to the feature pages.
/// </summary>
public sealed class FeatureDbServer : IAsyncLifetime, IDisposable
{
    public const string SetName = "scan-set";
    public static readonly string[] LabelWords = ["animal", "animals", "names", "naming", "weather", "sunny", "food", "family", "play", "playground"];

    readonly TempDir dir = new();
    public int Seed { get; } = Random.Shared.Next();
    public string DbPath => dir.File("scan.sqlite");
    /// <summary>The database's name in the app (its file name without the extension).</summary>
    public const string DbName = "scan";
    public FeatureStore Store { get; private set; } = null!;
    public IReadOnlyList<Sae> Saes { get; private set; } = null!;
    HookedTransformer model = null!;
    public WebApplication App { get; private set; } = null!;
    public string Url { get; private set; } = "";

    public async Task InitializeAsync()
    {
        var rng = new Random(Seed);
        string corpus = ScanTestData.Corpus(rng, dir.Path, documents: 80);
        Saes = ScanTestData.Saes(rng, dSae: 64);
        var set = ScanTestData.Set(Saes);
        var labels = new FeatureLabelLookup();
        foreach (var sae in Saes)
            for (int f = 0; f < sae.DSae; f++)
                if (rng.NextDouble() < 0.7)
                    labels.Set(sae.Config.Metadata.HookName, f, new FeatureLabel
                    {
                        Label = $"{LabelWords[rng.Next(LabelWords.Length)]} {LabelWords[rng.Next(LabelWords.Length)]} {f}",
                        F1 = rng.NextDouble(), Precision = rng.NextDouble(), Recall = rng.NextDouble(), Specialization = rng.NextDouble(), Source = "computed",
                    });
        var settings = ScanTestData.Settings(rng) with { TopExamples = rng.Next(4, 9), Partners = rng.Next(3, 6) };
        CorpusScan.Run(set, [], [corpus], settings, ShardSpec.All, DbPath, labels);
        Store = FeatureStore.Open(DbPath);
        model = HookedTransformer.Load(AnalysisTestData.Stories);
        App = TrackerApp.Build(new TrackerAppOptions
        {
            Sets = [new TrackerSet { Name = SetName, Set = new SaeSet(model, Saes.Take(2)), ModelSource = AnalysisTestData.Stories }],
            Databases = [DbPath],
            Urls = ["http://127.0.0.1:0"],
        });
        await App.StartAsync();
        Url = App.Urls.Single();
    }

    public async Task DisposeAsync()
    {
        if (App != null) await App.DisposeAsync();
        Store?.Dispose();
        model?.Dispose();
        Dispose();
    }

    public void Dispose() => dir.Dispose();

    /// <summary>
    /// The oracle for the browser: every feature of <paramref name="sae"/> from its dashboard (not the features table),
    /// with whether any top example fired on a token whose text is <paramref name="token"/>.
    /// </summary>
    public List<(int Feature, double Frequency, double Max, string? Label, bool FiresOn)> AllFeatures(StoreSae sae, string? token = null) =>
        [.. Enumerable.Range(0, sae.DSae).Select(f =>
        {
            var d = Store.Dashboard(sae, f);
            return (f, d.Frequency, d.Max, d.Label?.Label, token != null && d.Top.Any(e => e.Text[e.Pos] == token));
        })];
}

[CollectionDefinition(Name)]
public sealed class FeatureDbServerCollection : ICollectionFixture<FeatureDbServer>
{
    public const string Name = "feature database web app";
}
