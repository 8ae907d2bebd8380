using System.Text.Json;
using FeatureLens.Connections;
using FeatureLens.Runtime.Checkpoints;
using FeatureLens.Runtime.Models;
using FeatureLens.Saes;
using FeatureLens.Saes.Formats;
using FeatureLens.Tests.Saes;

namespace FeatureLens.Tests.Cli;

/// <summary>run --grad, attribute and patch as a user runs them: the output contracts, agreement with the library, and bad input.</summary>
public sealed class ConnectionsCliTests : IDisposable
{
    static string Stories => Path.Combine(TestPaths.Shared, "models", "stories260K", "stories260K.bin");
    readonly TempDir _dir = new();
    readonly string _saes;
    readonly Random _rng;
    readonly int _seed = Random.Shared.Next();

    public ConnectionsCliTests()
    {
        _rng = new Random(_seed);
        _saes = Path.Combine(_dir.Path, "saes");
        foreach (int l in new[] { 0, 2 })
            SaeWriter.Save(SaeTestData.Random(_rng, l == 0 ? SaeArchitecture.Standard : SaeArchitecture.TopK, 64, 72, $"blocks.{l}.hook_resid_post", k: 8),
                Path.Combine(_saes, $"blocks.{l}.hook_resid_post"));
    }

    public void Dispose() => _dir.Dispose();

    string Out(string name) => Path.Combine(_dir.Path, name);

    [Fact]
    public void RunGradWritesEveryHookWithItsGradientAndTheMetric()
    {
        string file = Out("g.safetensors");
        var r = CliTests.Run("run", "--model", Stories, "--text", "Lily and Tom went to the park", "--hooks", "blocks.*.hook_resid_post,blocks.*.hook_resid_post.hook_sae_acts_post",
            "--sae", _saes, "--sae-error-term", "--grad", "logit-diff:403,407@-2", "--out", file);
        Assert.True(r.ExitCode == 0, r.Stderr);
        using var f = SafetensorsFile.Open(file);
        using var model = HookedTransformer.Load(Stories);
        var ids = model.Tokenizer!.Encode("Lily and Tom went to the park", true);
        var saes = SaeLoader.LoadAll(_saes).Select(s => (IHookSplice)new SaeSplice(s, true)).ToList();
        var lib = model.RunWithGradients([ids], Metric.Parse("logit-diff:403,407@-2"), new GradientOptions { CacheFilter = _ => true, Splices = saes });
        // another process: the same computation up to float32 rounding
        Assert.Equal(lib.Value, f.ReadF32("metric").Data[0], 1e-5 * Math.Abs(lib.Value));
        foreach (var name in new[] { "blocks.0.hook_resid_post", "blocks.4.hook_resid_post", "blocks.2.hook_resid_post.hook_sae_acts_post" })
        {
            Assert.True(Compare.RelativeError(f.ReadF32(name).Data, lib.Activations.Sequence(name, 0).Data, name) <= 1e-5, name);
            Assert.True(Compare.RelativeError(f.ReadF32(name + ".grad").Data, lib.Gradients.Sequence(name, 0).Data, name) <= 1e-5, name + ".grad");
            Assert.Equal(f.ReadF32(name).Shape, f.ReadF32(name + ".grad").Shape);
        }
    }

    [Fact]
    public void AttributeWritesTheContractAndAgreesWithTheLibrary()
    {
        string json = Out("a.json"), csv = Out("a.csv");
        var r = CliTests.Run("attribute", "--model", Stories, "--clean", "Lily had a red ball", "--corrupt", "Tom had a big dog",
            "--metric", "logprob:403", "--sae", _saes, "--components", "blocks.1.hook_mlp_out,blocks.1.attn.hook_z", "--check-exact", "5", "--edges", "3",
            "--out", json, "--csv", csv);
        Assert.True(r.ExitCode == 0, r.Stderr);
        using var doc = JsonDocument.Parse(File.ReadAllText(json));
        var root = doc.RootElement;
        Assert.Equal("gradient", root.GetProperty("method").GetString());
        Assert.Equal("logprob:403@-1", root.GetProperty("metric").GetProperty("name").GetString());
        var nodes = root.GetProperty("nodes").EnumerateArray().ToList();
        Assert.Contains(nodes, n => n.GetProperty("kind").GetString() == "feature" && n.GetProperty("clean").ValueKind == JsonValueKind.Number);
        Assert.Contains(nodes, n => n.GetProperty("kind").GetString() == "error" && n.GetProperty("feature").ValueKind == JsonValueKind.Null);
        Assert.Contains(nodes, n => n.GetProperty("kind").GetString() == "attn" && n.GetProperty("feature").GetInt32() >= 0);
        Assert.Contains(nodes, n => n.GetProperty("kind").GetString() == "mlp");
        foreach (var field in new[] { "hook", "kind", "feature", "pos", "clean", "corrupt", "effect" }) Assert.True(nodes[0].TryGetProperty(field, out _), field);
        Assert.Equal(5, root.GetProperty("check").GetProperty("nodes").GetInt32());
        Assert.True(root.GetProperty("edges").GetArrayLength() > 0);
        Assert.Equal(nodes.Count + 1, File.ReadAllLines(csv).Length);

        using var model = HookedTransformer.Load(Stories);
        var tok = model.Tokenizer!;
        var ctx = new CircuitContext(model, SaeLoader.LoadAll(_saes), [tok.Encode("Lily had a red ball", true)], [Metric.Parse("logprob:403")], [tok.Encode("Tom had a big dog", true)]);
        var lib = Attribution.Run(ctx, new NodeSelection { Components = ["blocks.1.attn.hook_z", "blocks.1.hook_mlp_out"] }, AttributionMethod.Gradient);
        var byId = nodes.ToDictionary(n => n.GetProperty("id").GetString()!, n => n.GetProperty("effect").GetDouble());
        Assert.Equal(lib.Nodes.Count, byId.Count);
        foreach (var n in lib.Nodes) Assert.Equal(n.Effect, byId[n.Node.ToString()]);
    }

    [Fact]
    public void IntegratedGradientEffectsAndEdges()
    {
        string json = Out("ig.json");
        var r = CliTests.Run("attribute", "--model", Stories, "--clean", "Lily had a red ball", "--corrupt", "Tom had a big dog",
            "--metric", "logprob:403", "--sae", _saes, "--method", "ig", "--steps", "3", "--edges", "2", "--out", json);
        Assert.True(r.ExitCode == 0, r.Stderr);
        using var doc = JsonDocument.Parse(File.ReadAllText(json));
        Assert.Equal("ig", doc.RootElement.GetProperty("method").GetString());
        Assert.Equal(3, doc.RootElement.GetProperty("steps").GetInt32());
        var edges = doc.RootElement.GetProperty("edges").EnumerateArray().ToList();
        Assert.NotEmpty(edges);
        Assert.All(edges, e => Assert.True(double.IsFinite(e.GetProperty("weight").GetDouble())));
    }

    [Fact]
    public void PatchSweepsAndTheTopNodesOfAnAttributionRun()
    {
        string a = Out("a.json"), p = Out("p.json"), s = Out("s.json");
        Assert.Equal(0, CliTests.Run("attribute", "--model", Stories, "--clean", "Lily had a red ball", "--ablation", "zero", "--metric", "loss", "--sae", _saes, "--out", a).ExitCode);
        var r = CliTests.Run("patch", "--model", Stories, "--clean", "Lily had a red ball", "--ablation", "zero", "--metric", "loss", "--sae", _saes, "--from", a, "--top", "6", "--out", p);
        Assert.True(r.ExitCode == 0, r.Stderr);
        using (var doc = JsonDocument.Parse(File.ReadAllText(p)))
        {
            Assert.Equal("exact", doc.RootElement.GetProperty("method").GetString());
            Assert.Equal(6, doc.RootElement.GetProperty("nodes").GetArrayLength());
        }
        r = CliTests.Run("patch", "--model", Stories, "--clean-tokens", "1,403,407,410,300", "--corrupt-tokens", "1,403,408,411,301", "--metric", "logit:300@-2",
            "--sweep", "resid_pre,heads,mlp_out", "--out", s);
        Assert.True(r.ExitCode == 0, r.Stderr);
        using var sweep = JsonDocument.Parse(File.ReadAllText(s));
        var nodes = sweep.RootElement.GetProperty("nodes").EnumerateArray().ToList();
        Assert.Equal(5 * 5 + 5 * 8 + 5 * 5, nodes.Count);
        // patching resid_pre of block 0 at every position with the corrupt prompt's... only positions that differ move the metric
        Assert.All(nodes.Where(n => n.GetProperty("kind").GetString() == "resid" && n.GetProperty("pos").GetInt32() <= 1), n => Assert.Equal(0.0, n.GetProperty("effect").GetDouble()));
    }

    [Fact]
    public void PromptPairsFromJsonlSumTheirEffects()
    {
        string pairs = Out("pairs.jsonl");
        File.WriteAllText(pairs, "{\"clean\": \"Lily had a red ball\", \"corrupt\": \"Tom had a big dog\", \"metric\": \"logprob:403\"}\n\n" +
            "{\"clean\": [1, 410, 317, 300], \"corrupt\": [1, 410, 405, 300], \"metric\": \"logit-diff:317,405@-2\"}\n");
        string both = Out("both.json"), one = Out("one.json"), two = Out("two.json");
        Assert.Equal(0, CliTests.Run("attribute", "--model", Stories, "--pairs", pairs, "--sae", _saes, "--out", both).ExitCode);
        Assert.Equal(0, CliTests.Run("attribute", "--model", Stories, "--clean", "Lily had a red ball", "--corrupt", "Tom had a big dog", "--metric", "logprob:403", "--sae", _saes, "--out", one).ExitCode);
        Assert.Equal(0, CliTests.Run("attribute", "--model", Stories, "--clean-tokens", "1,410,317,300", "--corrupt-tokens", "1,410,405,300", "--metric", "logit-diff:317,405@-2", "--sae", _saes, "--out", two).ExitCode);
        var sum = new Dictionary<string, double>();
        foreach (var f in new[] { one, two })
            foreach (var n in EffectsJson.Read(f).Nodes) sum[n.Node.ToString()] = sum.GetValueOrDefault(n.Node.ToString()) + n.Effect;
        var joint = EffectsJson.Read(both);
        Assert.Equal(sum.Count, joint.Nodes.Count);
        foreach (var n in joint.Nodes) Assert.Equal(sum[n.Node.ToString()], n.Effect, 1e-9 + 1e-6 * Math.Abs(n.Effect));
        Assert.Equal(EffectsJson.Read(one).Clean + EffectsJson.Read(two).Clean, joint.Clean, 1e-4);

        File.WriteAllText(pairs, "{\"clean\": \"Lily had a red ball\", \"corrupt\": \"Tom\", \"metric\": \"logprob:403\"}\n{\"clean\": 5}\n");
        var bad = CliTests.Run("attribute", "--model", Stories, "--pairs", pairs, "--sae", _saes, "--out", Out("bad.json"));
        Assert.Equal(1, bad.ExitCode);
        Assert.True(bad.Stderr.Contains("pairs.jsonl:2", StringComparison.Ordinal), bad.Stderr);
    }

    public static TheoryData<string[], string> BadInput => new()
    {
        { ["attribute", "--clean-tokens", "1,403,9999", "--corrupt-tokens", "1,403,407", "--metric", "logit:5"], "outside the vocabulary" },
        { ["attribute", "--clean-tokens", "1,403,407", "--corrupt-tokens", "1,403,407", "--metric", "logit:5@7"], "position 7 is outside" },
        { ["attribute", "--clean-tokens", "1,403,407", "--corrupt-tokens", "1,403", "--metric", "logit:5"], "same token length" },
        { ["attribute", "--clean-tokens", "1,403,407", "--ablation", "zero", "--metric", "logit:5", "--components", "blocks.9.hook_mlp_out"], "matches no hook" },
        { ["attribute", "--clean-tokens", "1,403,407", "--ablation", "zero", "--metric", "feature:blocks.3.hook_resid_post:4"], "no SAE is spliced there" },
        { ["attribute", "--clean-tokens", "1,403,407", "--ablation", "zero", "--metric", "logit:5", "--method", "magic"], "--method 'magic'" },
        { ["attribute", "--clean-tokens", "1,403,407", "--ablation", "median", "--metric", "logit:5"], "--ablation 'median'" },
        { ["attribute", "--clean-tokens", "1,403,407", "--ablation", "mean", "--metric", "logit:5"], "--mean-corpus" },
        { ["patch", "--clean-tokens", "1,403,407", "--ablation", "zero", "--metric", "logit:5", "--sweep", "everything"], "--sweep 'everything'" },
        { ["patch", "--clean-tokens", "1,403,407", "--ablation", "zero", "--metric", "logit:5", "--from", "/nonexistent/a.json"], "/nonexistent/a.json" },
        { ["run", "--tokens", "1,403,407", "--grad", "logprob:403@-9"], "position -9 is outside" },
        { ["run", "--tokens", "1,403,407", "--grad", "prob"], "not a token id" },
    };

    [Theory]
    [MemberData(nameof(BadInput))]
    public void BadInputIsOneClearLineAndWritesNothing(string[] args, string expected)
    {
        string output = Out("bad.json");
        bool run = args[0] == "run";
        var r = CliTests.Run([.. args, "--model", Stories, "--out", run ? output + ".safetensors" : output]);
        Assert.Equal(1, r.ExitCode);
        Assert.Contains(expected, r.Stderr, StringComparison.Ordinal);
        Assert.DoesNotContain("   at ", r.Stderr, StringComparison.Ordinal);
        Assert.False(File.Exists(output) || File.Exists(output + ".safetensors"), "nothing is written on bad input");
    }

    [Fact]
    public void MeanAblationCachesTheCorpusMeansAndRefusesNonFiniteOnesByName()
    {
        string corpus = Out("corpus.txt");
        File.WriteAllText(corpus, "Lily went to the park. She saw a big dog.\n\nTom had a red ball and a little cat.\n");
        var env = new Dictionary<string, string> { ["XDG_CACHE_HOME"] = Out("cache") };
        string[] args = ["attribute", "--model", Stories, "--clean", "Lily had a red ball", "--ablation", "mean", "--mean-corpus", corpus, "--metric", "loss", "--sae", _saes];
        var first = CliTests.RunWithEnv(env, [.. args, "--out", Out("m1.json")]);
        Assert.True(first.ExitCode == 0, first.Stderr);
        string cached = Directory.GetFiles(Path.Combine(Out("cache"), "featurelens", "means")).Single();
        var second = CliTests.RunWithEnv(env, [.. args, "--out", Out("m2.json")]);
        Assert.True(second.ExitCode == 0, second.Stderr);
        Assert.Contains("corpus means from", second.Stderr, StringComparison.Ordinal);
        Assert.Equal(File.ReadAllText(Out("m1.json")), File.ReadAllText(Out("m2.json")));

        // a damaged cache (NaN in one mean) is named, not used
        using (var f = SafetensorsFile.Open(cached))
        {
            var w = new SafetensorsWriter();
            foreach (var name in f.Names)
            {
                var t = f.ReadF32(name);
                if (name == "blocks.2.hook_resid_post.hook_sae_error") t.Data[3] = float.NaN;
                w.Add(name, t);
            }
            w.Write(cached + ".new", f.Metadata);
        }
        File.Move(cached + ".new", cached, overwrite: true);
        var bad = CliTests.RunWithEnv(env, [.. args, "--out", Out("m3.json")]);
        Assert.Equal(1, bad.ExitCode);
        Assert.True(bad.Stderr.Contains("blocks.2.hook_resid_post.hook_sae_error", StringComparison.Ordinal) && bad.Stderr.Contains("not finite", StringComparison.Ordinal), bad.Stderr);
        Assert.False(File.Exists(Out("m3.json")));
    }
}
