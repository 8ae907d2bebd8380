using System.Diagnostics;
using FeatureLens.Runtime.Checkpoints;
using FeatureLens.Runtime.Models;

namespace FeatureLens.Tests.Cli;

/// <summary>The featurelens command as a user (or a script) runs it: a separate process, stdout, stderr, exit code.</summary>
public class CliTests
{
    static string Stories => Path.Combine(TestPaths.Shared, "models", "stories260K", "stories260K.bin");

    internal sealed record Result(int ExitCode, byte[] Stdout, string Stderr)
    {
        public string Text => System.Text.Encoding.UTF8.GetString(Stdout);
    }

    internal static Result Run(params string[] args) => RunWithEnv(null, args);

    /// <summary>Start info for the built featurelens CLI with redirected output. SIGINT is reset to its default
    /// disposition (coreutils env), so Ctrl-C tests work even when the test run was started with SIGINT ignored
    /// (a shell's background job).</summary>
    internal static ProcessStartInfo StartInfo(params string[] args)
    {
        var psi = new ProcessStartInfo("env") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in new[] { "--default-signal=INT", "dotnet", Path.Combine(AppContext.BaseDirectory, "featurelens.dll") }) psi.ArgumentList.Add(a);
        foreach (var a in args) psi.ArgumentList.Add(a);
        return psi;
    }

    internal static Result RunWithEnv(IDictionary<string, string>? env, params string[] args)
    {
        var psi = StartInfo(args);
        if (env != null) foreach (var (k, v) in env) psi.Environment[k] = v;
        using var p = Process.Start(psi)!;
        var ms = new MemoryStream();
        var copy = p.StandardOutput.BaseStream.CopyToAsync(ms);
        var err = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(120_000)) { p.Kill(true); throw new TimeoutException($"featurelens {string.Join(" ", args)} timed out"); }
        copy.Wait();
        return new Result(p.ExitCode, ms.ToArray(), err.Result);
    }

    [Fact]
    public void GeneratePrintsExactlyTheLlama2cReference()
    {
        var r = Run("generate", "--model", Stories, "--max-new-tokens", "200");
        Assert.True(r.ExitCode == 0, r.Stderr);
        Assert.Equal(File.ReadAllBytes(Path.Combine(TestPaths.Shared, "reference", "stories260K", "greedy-n200.txt")), r.Stdout);
    }

    [Fact]
    public void GenerateWithSamplingIsSeededAndContinuesThePrompt()
    {
        string seed = Random.Shared.Next().ToString(CultureInfo.InvariantCulture);
        var a = Run("generate", "--model", Stories, "--prompt", "Tom had a dog", "--max-new-tokens", "30", "--temperature", "0.8", "--top-p", "0.9", "--seed", seed);
        var b = Run("generate", "--model", Stories, "--prompt", "Tom had a dog", "--max-new-tokens", "30", "--temperature", "0.8", "--top-p", "0.9", "--seed", seed);
        Assert.True(a.ExitCode == 0, a.Stderr);
        Assert.Equal(a.Stdout, b.Stdout);
        Assert.DoesNotContain("Tom had a dog", a.Text); // only the generated text is printed
        Assert.True(a.Text.Length > 10);
    }

    [Fact]
    public void TokenizePrintsIdsWithBos()
    {
        var r = Run("tokenize", "--model", Stories, "--text", "Once upon a time");
        Assert.True(r.ExitCode == 0, r.Stderr);
        using var m = HookedTransformer.Load(Stories);
        Assert.Equal(string.Join(",", m.Tokenizer!.Encode("Once upon a time", true)) + "\n", r.Text);
        Assert.StartsWith("1,", r.Text);
        var noBos = Run("tokenize", "--model", Stories, "--text", "Once upon a time", "--no-bos");
        Assert.Equal(r.Text[2..], noBos.Text);
    }

    [Fact]
    public void RunWritesHooksLogitsAndTokensToSafetensors()
    {
        using var dir = new TempDir();
        string outPath = Path.Combine(dir.Path, "acts.safetensors");
        var rng = new Random(Random.Shared.Next());
        int[] ids = [1, .. Enumerable.Range(0, 5 + rng.Next(20)).Select(_ => 3 + rng.Next(509))];
        var r = Run("run", "--model", Stories, "--tokens", string.Join(",", ids), "--hooks", "blocks.*.hook_resid_post,blocks.0.attn.hook_pattern", "--logits", "--out", outPath);
        Assert.True(r.ExitCode == 0, r.Stderr);
        Assert.Empty(r.Stdout);
        using var f = SafetensorsFile.Open(outPath);
        using var m = HookedTransformer.Load(Stories);
        // same hooks as the CLI run (caching hook_result switches attn_out to a per-head sum, a different rounding)
        var (logits, cache) = m.RunWithCache([ids], HookNames.Glob("blocks.*.hook_resid_post,blocks.0.attn.hook_pattern"));
        Assert.Equal(5 + 1 + 2, f.Entries.Count);
        Assert.Equal(ids.Select(i => (long)i).ToArray(), f.ReadInt64("tokens"));
        Assert.Equal([ids.Length, 512], f.Entry("logits").Shape);
        Assert.Equal(logits.Data, f.ReadF32("logits").Data);
        Assert.Equal([ids.Length, 64], f.Entry("blocks.4.hook_resid_post").Shape);
        Assert.Equal(cache.Sequence("blocks.4.hook_resid_post", 0).Data, f.ReadF32("blocks.4.hook_resid_post").Data);
        Assert.Equal([8, ids.Length, ids.Length], f.Entry("blocks.0.attn.hook_pattern").Shape);

        // Python reads it with an independent safetensors parser
        string check = $"import sys; sys.path.insert(0, {Py(Path.GetDirectoryName(TorchReference.Script)!)}); import safetensors_lite as s; t = s.load({Py(outPath)}); print(sorted(t.keys())[0], tuple(t['logits'].shape), int(t['tokens'][0]))";
        var psi = new ProcessStartInfo(TorchReference.Python, ["-c", check]) { RedirectStandardOutput = true, RedirectStandardError = true };
        using var p = Process.Start(psi)!;
        string pyOut = p.StandardOutput.ReadToEnd(); string pyErr = p.StandardError.ReadToEnd(); p.WaitForExit();
        Assert.True(p.ExitCode == 0, pyErr);
        Assert.Equal($"blocks.0.attn.hook_pattern ({ids.Length}, 512) 1", pyOut.Trim());
    }

    static string Py(string s) => "'" + s.Replace("\\", "\\\\").Replace("'", "\\'") + "'";

    [Fact]
    public void InspectAndSynthModel()
    {
        using var dir = new TempDir();
        string m = Path.Combine(dir.Path, "synth");
        var s = Run("synth-model", "--arch", "gpt2", "--preset", "tiny", "--dtype", "bf16", "--seed", "7", "--out", m);
        Assert.True(s.ExitCode == 0, s.Stderr);
        var i = Run("inspect", m);
        Assert.True(i.ExitCode == 0, i.Stderr);
        Assert.Contains("Gpt2", i.Text);
        Assert.Contains("BF16", i.Text);
        var j = Run("inspect", Stories);
        Assert.Contains("Llama", j.Text);
        Assert.Contains("Interleaved", j.Text);
        Assert.Contains("Llama2cTokenizer", j.Text);
    }

    [Fact]
    public void ModelsResolveFromTheHuggingFaceCacheByRepoId()
    {
        using var dir = new TempDir();
        string hub = Path.Combine(dir.Path, "hf", "hub");
        string rev = Convert.ToHexString(Guid.NewGuid().ToByteArray()).ToLowerInvariant() + "00000000";
        // karpathy/tinyllamas with the two files under stories260K/, as on the Hub
        string repo = Path.Combine(hub, "models--karpathy--tinyllamas");
        string snap = Directory.CreateDirectory(Path.Combine(repo, "snapshots", rev, "stories260K")).FullName;
        foreach (var f in new[] { "stories260K.bin", "tok512.bin" })
            File.Copy(Path.Combine(TestPaths.Shared, "models", "stories260K", f), Path.Combine(snap, f));
        Directory.CreateDirectory(Path.Combine(repo, "refs"));
        File.WriteAllText(Path.Combine(repo, "refs", "main"), rev);
        // and a GPT-2 folder as org/tiny-gpt2
        string gptRepo = Path.Combine(hub, "models--org--tiny-gpt2");
        SyntheticModel.Write(Path.Combine(gptRepo, "snapshots", rev), Architecture.Gpt2, "tiny", FeatureLens.Runtime.Tensors.DType.F32, 3);
        Directory.CreateDirectory(Path.Combine(gptRepo, "refs"));
        File.WriteAllText(Path.Combine(gptRepo, "refs", "main"), rev);

        var env = new Dictionary<string, string> { ["HF_HOME"] = Path.Combine(dir.Path, "hf") };
        var g = RunWithEnv(env, "generate", "--model", "karpathy/tinyllamas/stories260K/stories260K.bin", "--max-new-tokens", "200");
        Assert.True(g.ExitCode == 0, g.Stderr);
        Assert.Equal(File.ReadAllBytes(Path.Combine(TestPaths.Shared, "reference", "stories260K", "greedy-n200.txt")), g.Stdout);
        var i = RunWithEnv(env, "inspect", "org/tiny-gpt2");
        Assert.True(i.ExitCode == 0, i.Stderr);
        Assert.Contains("Gpt2", i.Text);
        var missing = RunWithEnv(env, "inspect", "org/not-downloaded");
        Assert.NotEqual(0, missing.ExitCode);
        Assert.Contains("org/not-downloaded", missing.Stderr);
    }

    [Theory]
    [InlineData("generate")]
    [InlineData("run")]
    [InlineData("tokenize")]
    [InlineData("inspect")]
    [InlineData("synth-model")]
    public void EveryCommandHasHelp(string command)
    {
        var r = Run(command, "--help");
        Assert.Equal(0, r.ExitCode);
        Assert.Contains("Usage", r.Text);
    }

    [Fact]
    public void ErrorsGoToStderrWithNonZeroExit()
    {
        var missing = Run("generate", "--model", "/no/such/model", "--max-new-tokens", "3");
        Assert.NotEqual(0, missing.ExitCode);
        Assert.Empty(missing.Stdout);
        Assert.Contains("/no/such/model", missing.Stderr);

        var both = Run("run", "--model", Stories, "--text", "hi", "--tokens", "1,2", "--out", "/tmp/x.safetensors");
        Assert.NotEqual(0, both.ExitCode);
        Assert.Contains("exactly one of --text or --tokens", both.Stderr);

        var badId = Run("run", "--model", Stories, "--tokens", "1,9999", "--out", "/tmp/x.safetensors");
        Assert.NotEqual(0, badId.ExitCode);
        Assert.Contains("9999", badId.Stderr);

        var badHook = Run("run", "--model", Stories, "--tokens", "1,2", "--hooks", "blocks.*.hook_nothing", "--out", "/tmp/x.safetensors");
        Assert.NotEqual(0, badHook.ExitCode);
        Assert.Contains("matches no hook point", badHook.Stderr);

        var empty = Run("tokenize", "--model", Stories, "--text", "", "--no-bos");
        Assert.NotEqual(0, empty.ExitCode);
        Assert.Contains("empty", empty.Stderr);

        var missingOption = Run("generate", "--model", Stories);
        Assert.NotEqual(0, missingOption.ExitCode);
        Assert.Contains("--max-new-tokens", missingOption.Stderr);
    }
}
