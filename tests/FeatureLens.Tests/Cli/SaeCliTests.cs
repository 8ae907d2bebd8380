using System.Text.Json;
using FeatureLens.Runtime.Checkpoints;
using FeatureLens.Saes;
using FeatureLens.Saes.Formats;
using FeatureLens.Tests.Saes;

namespace FeatureLens.Tests.Cli;

/// <summary>featurelens sae train | inspect | eval and run --sae, end to end on stories260K.</summary>
public class SaeCliTests
{
    static string Stories => Path.Combine(TestPaths.Shared, "models", "stories260K", "stories260K.bin");

    /// <summary>On-distribution text: 200 stories sampled from stories260K itself (JSONL).</summary>
    static string SmallCorpus(TempDir dir, int seed = 5)
    {
        using var m = Runtime.Models.HookedTransformer.Load(Stories);
        string path = dir.File("corpus.jsonl");
        SaeSuite.SampleCorpus(m, path, 200, 200, seed);
        return path;
    }

    [Fact]
    public void TrainInspectRunAndEvalATopKSae()
    {
        using var dir = new TempDir();
        string corpus = SmallCorpus(dir, Random.Shared.Next()), outDir = dir.File("sae");
        int seed = Random.Shared.Next(1000);
        var train = CliTests.Run("sae", "train", "--model", Stories, "--hook", "blocks.2.hook_resid_post", "--corpus", corpus, "--architecture", "topk",
            "--d-sae", "256", "--k", "8", "--tokens", "61440", "--batch-tokens", "1024", "--context", "64", "--seed", seed.ToString(CultureInfo.InvariantCulture), "--out", outDir);
        Assert.True(train.ExitCode == 0, train.Stderr + train.Text);
        foreach (var f in new[] { "cfg.json", "sae_weights.safetensors", "sparsity.safetensors" }) Assert.True(File.Exists(Path.Combine(outDir, f)), f);
        var cfg = JsonDocument.Parse(File.ReadAllText(Path.Combine(outDir, "cfg.json"))).RootElement;
        Assert.Equal("topk", cfg.GetProperty("architecture").GetString());
        Assert.Equal("blocks.2.hook_resid_post", cfg.GetProperty("metadata").GetProperty("hook_name").GetString());
        Assert.Equal("stories260K.bin", cfg.GetProperty("metadata").GetProperty("model_name").GetString());
        Assert.Contains("corpus.jsonl", cfg.GetProperty("metadata").GetProperty("dataset_path").GetString());

        var inspect = CliTests.Run("sae", "inspect", outDir);
        Assert.True(inspect.ExitCode == 0, inspect.Stderr);
        Assert.Contains("topk", inspect.Text);
        Assert.Contains("blocks.2.hook_resid_post", inspect.Text);
        Assert.Contains("256", inspect.Text);
        Assert.Contains("stories260K.bin", inspect.Text);

        string acts = dir.File("acts.safetensors");
        var run = CliTests.Run("run", "--model", Stories, "--text", "Once upon a time, Lily saw a big dog.", "--sae", outDir, "--hooks", "*.hook_sae_acts_post,blocks.2.hook_resid_post", "--out", acts);
        Assert.True(run.ExitCode == 0, run.Stderr);
        using (var f = SafetensorsFile.Open(acts))
        {
            var e = f.Entry("blocks.2.hook_resid_post.hook_sae_acts_post");
            Assert.Equal(256, e.Shape[1]);
            var a = f.ReadF32("blocks.2.hook_resid_post.hook_sae_acts_post").Data;
            int T = e.Shape[0];
            for (int t = 0; t < T; t++) Assert.InRange(a.AsSpan(t * 256, 256).ToArray().Count(v => v > 0), 1, 8);
            // the exported latents are the SAE's encoding of the exported activation
            var sae = SaeLoader.Load(outDir);
            var x = f.ReadF32("blocks.2.hook_resid_post").Data;
            var expected = sae.Encode(new Runtime.Tensors.Tensor([T, 64], x));
            Assert.True(Compare.RelativeError(a, expected.Data, "acts") <= 1e-5);
        }

        string json = dir.File("eval.json");
        var eval = CliTests.Run("sae", "eval", "--model", Stories, "--sae", outDir, "--corpus", corpus, "--tokens", "4096", "--context", "64", "--json", json);
        Assert.True(eval.ExitCode == 0, eval.Stderr);
        Assert.Contains("loss rec", eval.Text);
        var r = JsonDocument.Parse(File.ReadAllText(json)).RootElement[0];
        Assert.Equal(8.0, r.GetProperty("l0").GetDouble(), 6);
        double ceClean = r.GetProperty("ce_clean").GetDouble(), ceSpliced = r.GetProperty("ce_spliced").GetDouble(), ceZero = r.GetProperty("ce_zero_ablated").GetDouble();
        Assert.True(ceClean < ceSpliced && ceSpliced < ceZero, $"CE clean {ceClean} spliced {ceSpliced} zero {ceZero}");
        Assert.InRange(r.GetProperty("explained_variance").GetDouble(), 0.0, 1.0);
        Assert.Equal(256, r.GetProperty("feature_frequency").GetArrayLength());
    }

    [Fact]
    public void SpliceErrorsNameTheSaeAndTheHook()
    {
        using var dir = new TempDir();
        var rng = new Random(Random.Shared.Next());
        string wrongWidth = dir.File("wrong");
        SaeWriter.Save(SaeTestData.Random(rng, SaeArchitecture.Standard, 48, 64, "blocks.1.hook_resid_post"), wrongWidth);
        var r = CliTests.Run("run", "--model", Stories, "--text", "Hi", "--sae", wrongWidth, "--out", dir.File("x.safetensors"));
        Assert.Equal(1, r.ExitCode);
        Assert.Contains("d_in = 48", r.Stderr);
        Assert.Contains("blocks.1.hook_resid_post", r.Stderr);

        string unknownHook = dir.File("unknown");
        SaeWriter.Save(SaeTestData.Random(rng, SaeArchitecture.Standard, 64, 64, "blocks.7.hook_resid_post"), unknownHook);
        r = CliTests.Run("run", "--model", Stories, "--text", "Hi", "--sae", unknownHook, "--out", dir.File("x.safetensors"));
        Assert.Equal(1, r.ExitCode);
        Assert.Contains("blocks.7.hook_resid_post", r.Stderr);
        Assert.DoesNotContain("   at ", r.Stderr);

        r = CliTests.Run("sae", "train", "--model", Stories, "--hook", "blocks.2.hook_nonsense", "--corpus", SmallCorpus(dir), "--d-sae", "64", "--tokens", "4096", "--out", dir.File("t"));
        Assert.Equal(1, r.ExitCode);
        Assert.Contains("blocks.2.hook_nonsense", r.Stderr);

        r = CliTests.Run("sae", "inspect", dir.File("missing-folder"));
        Assert.Equal(1, r.ExitCode);
        Assert.Contains("missing-folder", r.Stderr);
    }

    [Fact]
    public void SuiteBuildsAndThenResumesWithoutRedoingWork()
    {
        using var dir = new TempDir();
        string outDir = dir.File("suite");
        string[] args = ["sae", "suite", "--model", Stories, "--out", outDir, "--documents", "48", "--document-tokens", "120", "--d-sae", "128", "--k", "8",
            "--tokens", "24576", "--context", "64", "--eval-tokens", "1500", "--seed", Random.Shared.Next(1000).ToString(CultureInfo.InvariantCulture)];
        var r = CliTests.Run(args);
        Assert.True(r.ExitCode == 0, r.Stderr + r.Text);
        Assert.Contains("suite built", r.Text);
        for (int l = 0; l < 5; l++)
        {
            var sae = SaeLoader.Load(Path.Combine(outDir, "saes", $"blocks.{l}.hook_resid_post"));
            Assert.Equal($"blocks.{l}.hook_resid_post", sae.Config.HookName);
            Assert.Equal(128, sae.DSae);
        }
        var eval = JsonDocument.Parse(File.ReadAllText(Path.Combine(outDir, "eval.json"))).RootElement;
        Assert.Equal(5, eval.GetArrayLength());
        var features = JsonDocument.Parse(File.ReadAllText(Path.Combine(outDir, "features.json"))).RootElement;
        Assert.Equal(128, features[0].GetProperty("latents").GetArrayLength());
        var weights = File.ReadAllBytes(Path.Combine(outDir, "saes", "blocks.3.hook_resid_post", "sae_weights.safetensors"));
        var again = CliTests.Run(args);
        Assert.True(again.ExitCode == 0, again.Stderr + again.Text);
        Assert.Contains("reusing", again.Text);
        Assert.Equal(weights, File.ReadAllBytes(Path.Combine(outDir, "saes", "blocks.3.hook_resid_post", "sae_weights.safetensors")));
    }

    [Fact]
    public void TrainsATranscoderWithASkipPath()
    {
        using var dir = new TempDir();
        string corpus = SmallCorpus(dir, Random.Shared.Next()), outDir = dir.File("tc");
        var train = CliTests.Run("sae", "train", "--model", Stories, "--hook", "blocks.1.ln2.hook_normalized", "--hook-out", "blocks.1.hook_mlp_out", "--skip",
            "--corpus", corpus, "--architecture", "topk", "--d-sae", "128", "--k", "8", "--tokens", "20480", "--batch-tokens", "1024", "--context", "64", "--out", outDir);
        Assert.True(train.ExitCode == 0, train.Stderr + train.Text);
        var sae = SaeLoader.Load(outDir);
        Assert.True(sae.Config.IsTranscoder && sae.Config.HasSkip && sae.Config.IsTopK, SaeConfig.ArchitectureName(sae.Config.Architecture));
        Assert.Equal("blocks.1.ln2.hook_normalized", sae.Config.HookName);
        Assert.Equal("blocks.1.hook_mlp_out", sae.Config.OutputHookName);
        Assert.NotNull(sae.WSkip);
        var bad = CliTests.Run("sae", "train", "--model", Stories, "--hook", "blocks.1.hook_resid_post", "--skip", "--corpus", corpus, "--d-sae", "64", "--tokens", "1024", "--out", dir.File("x"));
        Assert.Equal(1, bad.ExitCode);
        Assert.Contains("--skip is for transcoders", bad.Stderr, StringComparison.Ordinal);
    }

    [Fact]
    public void TrainsOnActivationsSavedByRun()
    {
        using var dir = new TempDir();
        string acts = dir.File("acts.safetensors");
        var text = string.Join(" ", Enumerable.Range(0, 30).Select(i => "Once upon a time there was a dog."));
        var run = CliTests.Run("run", "--model", Stories, "--text", text, "--hooks", "blocks.1.hook_resid_post", "--out", acts);
        Assert.True(run.ExitCode == 0, run.Stderr);
        string outDir = dir.File("sae");
        var train = CliTests.Run("sae", "train", "--activations", acts, "--activations-tensor", "blocks.1.hook_resid_post", "--hook", "blocks.1.hook_resid_post",
            "--architecture", "standard", "--d-sae", "96", "--tokens", "2048", "--batch-tokens", "256", "--out", outDir);
        Assert.True(train.ExitCode == 0, train.Stderr + train.Text);
        var sae = SaeLoader.Load(outDir);
        Assert.Equal(SaeArchitecture.Standard, sae.Config.Architecture);
        Assert.Equal(64, sae.DIn);
        var missing = CliTests.Run("sae", "train", "--activations", acts, "--activations-tensor", "nope", "--hook", "blocks.1.hook_resid_post",
            "--d-sae", "96", "--tokens", "2048", "--out", dir.File("sae2"));
        Assert.Equal(1, missing.ExitCode);
        Assert.Contains("nope", missing.Stderr);
    }

    [Fact]
    public void InterruptedTrainingResumesWhereItStopped()
    {
        using var dir = new TempDir();
        string corpus = SmallCorpus(dir, Random.Shared.Next()), outDir = dir.File("sae");
        string[] args = ["sae", "train", "--model", Stories, "--hook", "blocks.1.hook_resid_post", "--corpus", corpus, "--architecture", "topk",
            "--d-sae", "256", "--k", "8", "--tokens", "307200", "--batch-tokens", "1024", "--context", "64", "--out", outDir];
        var psi = CliTests.StartInfo(args);
        using var p = new System.Diagnostics.Process { StartInfo = psi };
        var started = new ManualResetEventSlim();
        var err = new System.Text.StringBuilder();
        // progress lines end in "NN%": interrupt once training is a few percent in
        p.OutputDataReceived += (_, e) =>
        {
            var m = e.Data is null ? null : System.Text.RegularExpressions.Regex.Match(e.Data, @"(\d+)%\s*$");
            if (m is { Success: true } && int.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture) >= 3) started.Set();
        };
        p.ErrorDataReceived += (_, e) => { if (e.Data != null) lock (err) err.AppendLine(e.Data); };
        p.Start(); p.BeginOutputReadLine(); p.BeginErrorReadLine();
        Assert.True(started.Wait(120_000), "training never reported progress");
        using (var kill = System.Diagnostics.Process.Start("kill", ["-INT", p.Id.ToString(CultureInfo.InvariantCulture)])!) kill.WaitForExit();
        Assert.True(p.WaitForExit(60_000), "featurelens did not stop after SIGINT");
        p.WaitForExit();
        Assert.True(p.ExitCode == 130, $"exit {p.ExitCode}: {err}");
        Assert.Contains("interrupted", err.ToString());
        long step;
        using (var f = SafetensorsFile.Open(Path.Combine(outDir, "checkpoints", "latest", "trainer_state.safetensors")))
            step = long.Parse(f.Metadata["step"], CultureInfo.InvariantCulture);
        Assert.True(step > 0 && step < 300, $"checkpoint at step {step}");
        var resumed = CliTests.Run(args);
        Assert.True(resumed.ExitCode == 0, resumed.Stderr);
        Assert.Contains($"resumed from step {step}", resumed.Stderr);
        Assert.Contains("300 steps", resumed.Stderr);
    }
}
