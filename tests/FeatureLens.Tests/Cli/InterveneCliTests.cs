using System.Text.Json;
using FeatureLens.Connections.Graphs;
using FeatureLens.Runtime.Models;
using FeatureLens.Saes;
using FeatureLens.Saes.Formats;
using FeatureLens.Tests.Connections;
using Xunit.Abstractions;

namespace FeatureLens.Tests.Cli;

/// <summary>featurelens intervene on stories260K with random transcoders: the JSON agrees with the library and is self-consistent; bad input exits 1 naming the problem.</summary>
public sealed class InterveneCliTests(ITestOutputHelper output) : IDisposable
{
    static string Stories => Path.Combine(TestPaths.Shared, "models", "stories260K", "stories260K.bin");
    readonly TempDir _dir = new();

    public void Dispose() => _dir.Dispose();

    (string Dir, List<Sae> Tcs) WriteTranscoders(int seed)
    {
        string dir = Path.Combine(_dir.Path, "transcoders");
        using var model = HookedTransformer.Load(Stories);
        var tcs = ReplacementCheck.RandomTranscoders(new Random(seed), model.Config.NLayers, model.Config.DModel);
        foreach (var t in tcs) SaeWriter.Save(t, Path.Combine(dir, t.Config.HookName));
        return (dir, tcs);
    }

    [Fact]
    public void InterveneWritesAllFourModelsAndAgreesWithTheLibrary()
    {
        int seed = Random.Shared.Next();
        output.WriteLine($"seed {seed}");
        var (dir, _) = WriteTranscoders(seed);
        const string prompt = "Lily saw a big dog. She said to";
        using var model = HookedTransformer.Load(Stories);
        var tokens = model.Tokenizer!.Encode(prompt, true);
        var rm = ReplacementModel.Build(model, SaeLoader.LoadAll(dir), tokens);
        var f = rm.Sources[new Random(seed).Next(rm.FeatureCount)];
        string json = Path.Combine(_dir.Path, "iv.json");
        var r = CliTests.Run("intervene", "--model", Stories, "--text", prompt, "--transcoders", dir, "--clamp", $"{f.Layer}:{f.Index}@*=3",
            "--set", $"0:1@-1=2", "--top", "4", "--logit", "5", "--json", json);
        Assert.True(r.ExitCode == 0, r.Stderr + r.Text);
        Assert.Contains("linear prediction", r.Text, StringComparison.Ordinal);

        var lib = GraphInterventions.Run(model, rm, [new FeatureIntervention(InterventionKind.Clamp, f.Layer, f.Index, null, 3), new FeatureIntervention(InterventionKind.Set, 0, 1, -1, 2)]);
        using var doc = JsonDocument.Parse(File.ReadAllText(json));
        var root = doc.RootElement;
        Assert.Equal(lib.Edits.Count, root.GetProperty("edits").GetArrayLength());
        Assert.Equal(tokens, root.GetProperty("tokens").EnumerateArray().Select(t => t.GetInt32()));
        foreach (var m in InterventionJson.Models)
        {
            var list = root.GetProperty("predictions").GetProperty(m).EnumerateArray().ToList();
            Assert.Equal(4, list.Count);
            var top = InterventionJson.Top(InterventionJson.Logits(lib, m), 4);
            for (int i = 0; i < 4; i++)
            {
                Assert.Equal(top[i].Token, list[i].GetProperty("token").GetInt32());
                Assert.True(Math.Abs(top[i].Prob - list[i].GetProperty("prob").GetDouble()) <= 1e-6, $"{m} #{i} prob (seed {seed})");
            }
        }
        var w = Assert.Single(root.GetProperty("watched").EnumerateArray());
        Assert.Equal(5, w.GetProperty("token").GetInt32());
        double dRep = w.GetProperty("delta").GetProperty("replacement").GetDouble(), dLin = w.GetProperty("delta").GetProperty("linear").GetDouble();
        Assert.True(Math.Abs(dRep - dLin) <= 1e-4 * Math.Max(1, Math.Abs(w.GetProperty("baseline_logit").GetDouble())), $"Δ replacement {dRep} vs Δ linear {dLin} (seed {seed})");
        Assert.True(Math.Abs(w.GetProperty("delta").GetProperty("real").GetDouble() - (lib.Real[5] - lib.Baseline[5])) <= 1e-5, $"real Δ vs the library (seed {seed})");
        foreach (var g in root.GetProperty("graph_logits").EnumerateArray())
            Assert.True(Math.Abs(g.GetProperty("linear_delta").GetDouble() - g.GetProperty("replacement_delta").GetDouble()) <= 1e-4 * 20, $"graph logit {g} (seed {seed})");
    }

    [Fact]
    public void BadInterventionInputIsAClearError()
    {
        var (dir, tcs) = WriteTranscoders(Random.Shared.Next());
        string o = Path.Combine(_dir.Path, "iv.json");
        void Fails(string expect, params string[] args)
        {
            var r = CliTests.Run(["intervene", "--model", Stories, "--transcoders", dir, .. args, "--json", o]);
            Assert.True(r.ExitCode == 1, $"exit {r.ExitCode} for {string.Join(' ', args)}: {r.Stderr}");
            Assert.Contains(expect, r.Stderr, StringComparison.Ordinal);
            Assert.False(File.Exists(o));
        }
        Fails("at least one --set", "--text", "Lily");
        Fails("layer 9 does not exist", "--text", "Lily", "--set", "9:0@0=1");
        Fails($"d_sae {tcs[0].DSae}", "--text", "Lily", "--set", $"0:{tcs[0].DSae}@0=1");
        Fails("position 7 is outside the prompt's 2 tokens", "--text", "Lily", "--set", "0:0@7=1");
        Fails("--clamp '0:0@1'", "--text", "Lily", "--clamp", "0:0@1");
        Fails("--zero '0:x@1'", "--text", "Lily", "--zero", "0:x@1");
        Fails("--logit", "--text", "Lily", "--set", "0:0@0=1", "--logit", "99999");
        Fails("--top", "--text", "Lily", "--set", "0:0@0=1", "--top", "0");
    }
}
