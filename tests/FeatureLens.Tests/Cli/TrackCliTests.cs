using System.Text.Json;
using FeatureLens.Analysis;
using FeatureLens.Runtime.Models;
using FeatureLens.Saes;
using FeatureLens.Saes.Formats;
using FeatureLens.Tests.Saes;

namespace FeatureLens.Tests.Cli;

/// <summary>featurelens track and correlate, end to end on stories260K with random SAEs saved in SAELens format.</summary>
public class TrackCliTests
{
    static string Stories => Path.Combine(TestPaths.Shared, "models", "stories260K", "stories260K.bin");

    static string SaveSaes(TempDir dir, Random rng, SaeArchitecture arch, int k, params int[] layers)
    {
        string root = dir.File("saes");
        foreach (int l in layers)
            SaeWriter.Save(SaeTestData.Random(rng, arch, 64, 64, $"blocks.{l}.hook_resid_post", k: k), Path.Combine(root, $"blocks.{l}.hook_resid_post"));
        return root;
    }

    [Fact]
    public void TrackPrintsTablesWritesJsonAndUsesLabels()
    {
        using var dir = new TempDir();
        int seed = Random.Shared.Next();
        string saes = SaveSaes(dir, new Random(seed), SaeArchitecture.Standard, 0, 0, 2, 4);
        const string text = "Lily saw a big dog in the park.";
        using var model = HookedTransformer.Load(Stories);
        var set = new SaeSet(model, SaeLoader.LoadAll(saes));
        var expected = FeatureTracker.Track(set, text, new TrackOptions { TopN = 4, RankBy = RankBy.Mean });
        int labelled = expected.Layers[1].Top[0].Feature;
        File.WriteAllText(dir.File("labels.csv"), $"layer,feature,label,f1,specialization\n2,{labelled},animals,0.8,0.6\n");

        string json = dir.File("track.json");
        var r = CliTests.Run("track", "--model", Stories, "--sae", saes, "--text", text, "--top", "4", "--rank", "mean", "--threshold", "0.4",
            "--labels", dir.File("labels.csv"), "--json", json);
        Assert.True(r.ExitCode == 0, $"seed {seed}: {r.Stderr}{r.Text}");
        foreach (var name in set.Names) Assert.Contains(name, r.Text);
        Assert.Contains("animals", r.Text);
        Assert.Contains("correlation network", r.Text);
        var top = expected.Layers[0].Top[0];
        Assert.Contains(TrackCommand_Highlight(expected.Tokens, top.PerToken), r.Text);

        var root = JsonDocument.Parse(File.ReadAllText(json)).RootElement;
        Assert.Equal(text, root.GetProperty("text").GetString());
        Assert.Equal("Mean", root.GetProperty("options").GetProperty("rankBy").GetString());
        var layers = root.GetProperty("layers");
        Assert.Equal(3, layers.GetArrayLength());
        for (int s = 0; s < 3; s++)
            Assert.Equal(expected.Layers[s].Top.Select(f => f.Feature), layers[s].GetProperty("top").EnumerateArray().Select(f => f.GetProperty("feature").GetInt32()));
        var first = layers[1].GetProperty("top")[0];
        Assert.Equal("animals", first.GetProperty("label").GetProperty("label").GetString());
        Assert.Equal(0.8, first.GetProperty("label").GetProperty("f1").GetDouble());
        Assert.Equal(0.4, root.GetProperty("network").GetProperty("threshold").GetDouble());
    }

    /// <summary>The "fires on" column's format: tokens where the feature fires in brackets.</summary>
    static string TrackCommand_Highlight(string[] tokens, float[] perToken) =>
        string.Concat(tokens.Select((t, i) => perToken[i] > 0 ? $"[{t}]" : t));

    [Fact]
    public void CorrelateWritesTheNetworkWithComponentsAndHubs()
    {
        using var dir = new TempDir();
        int seed = Random.Shared.Next();
        string saes = SaveSaes(dir, new Random(seed), SaeArchitecture.TopK, 6, 1, 3);
        string corpus = dir.File("corpus.txt");
        File.WriteAllText(corpus, string.Join("\n\n", Enumerable.Range(0, 60).Select(i =>
            $"Once upon a time, there was a girl named Lily. She had {i} red balls. One day she went to the park with her dog.")));
        string outPath = dir.File("net.json");
        var r = CliTests.Run("correlate", "--model", Stories, "--sae", saes, "--corpus", corpus, "--tokens", "2000", "--context", "64",
            "--threshold", "0.3", "--min-fires", "5", "--out", outPath);
        Assert.True(r.ExitCode == 0, $"seed {seed}: {r.Stderr}{r.Text}");
        Assert.Contains("tokens/s", r.Text);
        Assert.Contains("hubs", r.Text);
        var root = JsonDocument.Parse(File.ReadAllText(outPath)).RootElement;
        Assert.Equal(0.3, root.GetProperty("threshold").GetDouble());
        Assert.InRange(root.GetProperty("tokens").GetInt64(), 1800, 2000);   // 2000 tokens read, less the BOS of each window
        var edges = root.GetProperty("edges");
        Assert.True(edges.GetArrayLength() > 0, $"seed {seed}: no edges");
        foreach (var e in edges.EnumerateArray())
        {
            Assert.True(Math.Abs(e.GetProperty("r").GetDouble()) >= 0.3);
            Assert.StartsWith("L1 ", e.GetProperty("source").GetString());
            Assert.StartsWith("L3 ", e.GetProperty("target").GetString());
        }
        Assert.True(root.GetProperty("components").GetArrayLength() > 0);
        Assert.True(root.GetProperty("hubs").GetArrayLength() > 0);
    }

    [Fact]
    public void BadArgumentsFailWithAClearMessage()
    {
        using var dir = new TempDir();
        string saes = SaveSaes(dir, new Random(Random.Shared.Next()), SaeArchitecture.Standard, 0, 1);
        var r = CliTests.Run("track", "--model", Stories, "--sae", saes, "--text", "Hi", "--top", "100");
        Assert.Equal(1, r.ExitCode);
        Assert.Contains("TopN", r.Stderr);
        r = CliTests.Run("track", "--model", Stories, "--sae", saes, "--text", "Hi", "--rank", "token");
        Assert.Equal(1, r.ExitCode);
        Assert.Contains("--token", r.Stderr);
        r = CliTests.Run("track", "--model", Stories, "--sae", saes, "--text", "Hi", "--rank", "token", "--token", "9");
        Assert.Equal(1, r.ExitCode);
        Assert.Contains("TokenIndex 9", r.Stderr);
        r = CliTests.Run("track", "--model", Stories, "--sae", saes, "--text", "");
        Assert.Equal(1, r.ExitCode);
        Assert.Contains("empty", r.Stderr);
        r = CliTests.Run("correlate", "--model", Stories, "--sae", saes, "--corpus", dir.File("missing.txt"), "--out", dir.File("x.json"));
        Assert.Equal(1, r.ExitCode);
        Assert.Contains("missing.txt", r.Stderr);
        Assert.DoesNotContain("   at ", r.Stderr);
    }
}
