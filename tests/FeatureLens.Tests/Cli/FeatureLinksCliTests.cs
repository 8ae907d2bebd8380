using System.Text.Json;
using FeatureLens.Connections.Graphs;
using FeatureLens.Runtime.Models;
using FeatureLens.Saes;
using FeatureLens.Saes.Formats;
using FeatureLens.Tests.Connections;
using Xunit.Abstractions;

namespace FeatureLens.Tests.Cli;

/// <summary>featurelens feature-links on stories260K with random transcoders: the JSON's aggregate equals the library's; bad input exits 1.</summary>
public sealed class FeatureLinksCliTests(ITestOutputHelper output) : IDisposable
{
    static string Stories => Path.Combine(TestPaths.Shared, "models", "stories260K", "stories260K.bin");
    readonly TempDir _dir = new();

    public void Dispose() => _dir.Dispose();

    [Fact]
    public void PromptSetJsonAgreesWithTheLibraryAndBadInputFails()
    {
        int seed = Random.Shared.Next();
        output.WriteLine($"seed {seed}");
        string dir = Path.Combine(_dir.Path, "transcoders");
        using var model = HookedTransformer.Load(Stories);
        var tcs = ReplacementCheck.RandomTranscoders(new Random(seed), model.Config.NLayers, model.Config.DModel);
        foreach (var t in tcs) SaeWriter.Save(t, Path.Combine(dir, t.Config.HookName));
        string[] texts = ["Lily saw a big dog.", "Tom went to the park and", "She said hello to"];
        string prompts = Path.Combine(_dir.Path, "p.jsonl"), json = Path.Combine(_dir.Path, "fl.json");
        File.WriteAllLines(prompts, texts.Select(t => JsonSerializer.Serialize(new { text = t })));
        var loaded = SaeLoader.LoadAll(dir);
        var rms = texts.Select(t => ReplacementModel.Build(model, loaded, model.Tokenizer!.Encode(t, true))).ToList();
        var f = rms[0].Sources.First(n => n.Kind == GraphNodeKind.Feature && n.Layer == 1);
        var r = CliTests.Run("feature-links", "--model", Stories, "--transcoders", dir, "--prompts", prompts, "--feature", $"1:{f.Index}", "--top", "1000", "--json", json);
        Assert.True(r.ExitCode == 0, r.Stderr + r.Text);
        var agg = FeatureLinks.Aggregate(1, f.Index, rms.Select(rm => FeatureLinks.OnPrompt(rm, 1, f.Index)).ToList());
        using var doc = JsonDocument.Parse(File.ReadAllText(json));
        var root = doc.RootElement;
        Assert.Equal(agg.PromptsActive, root.GetProperty("prompts_active").GetInt32());
        foreach (var (side, list) in new[] { ("upstream", agg.Upstream), ("downstream", agg.Downstream) })
        {
            var got = root.GetProperty(side).EnumerateArray().ToList();
            Assert.Equal(list.Count, got.Count);
            for (int i = 0; i < list.Count; i++)
            {
                Assert.Equal(list[i].Partner.Index, got[i].GetProperty("partner").GetProperty("index").GetInt32());
                Assert.Equal(list[i].MeanEffect, got[i].GetProperty("mean_effect").GetDouble(), 12);
                Assert.Equal(list[i].Prompts, got[i].GetProperty("prompts").GetInt32());
            }
        }

        void Fails(string expect, params string[] args)
        {
            File.Delete(json);
            var b = CliTests.Run(["feature-links", "--model", Stories, "--transcoders", dir, .. args, "--json", json]);
            Assert.True(b.ExitCode == 1, $"exit {b.ExitCode} for {string.Join(' ', args)}: {b.Stderr}");
            Assert.Contains(expect, b.Stderr, StringComparison.Ordinal);
            Assert.False(File.Exists(json));
        }
        Fails("--feature '1-2'", "--text", "Lily", "--feature", "1-2");
        Fails("layer 7 does not exist", "--text", "Lily", "--feature", "7:0");
        Fails("--pos 9 is outside", "--text", "Lily", "--feature", "0:0", "--pos", "9");
        Fails("not both", "--text", "Lily", "--prompts", prompts, "--feature", "0:0");
        string bad = Path.Combine(_dir.Path, "bad.jsonl");
        File.WriteAllText(bad, "{\"text\": \"ok\"}\n[1, 2]\n");
        Fails("line 2", "--prompts", bad, "--feature", "0:0");
        Fails("--corpus", "--text", "Lily", "--feature", $"1:{f.Index}", "--corpus", Path.Combine(_dir.Path, "missing.txt"));
    }
}
