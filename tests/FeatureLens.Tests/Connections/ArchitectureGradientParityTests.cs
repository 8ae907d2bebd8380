using FeatureLens.Connections;
using FeatureLens.Runtime.Checkpoints;
using FeatureLens.Runtime.Models;
using FeatureLens.Saes;
using FeatureLens.Tests.Models;
using FeatureLens.Tests.Saes;
using Xunit.Abstractions;

namespace FeatureLens.Tests.Connections;

/// <summary>
/// <see cref="HookedTransformer.RunWithGradients"/> on the architectures of issue 12 (Gemma 2, GPT-NeoX parallel and
/// sequential, Llama with scaled rope and head_dim ≠ hidden/heads, Qwen 2, Mistral, GPT-2 activations) agrees with torch
/// autograd in float64 (python/grad_reference.py running python/arch_reference.py's forward with every hook a graph node):
/// every hook's activation and gradient, logits and metric, with the tolerances of <see cref="GradientCheck"/> (1e-4), on
/// fresh random checkpoints (f32 and bf16 weights), batches of unequal lengths and a random metric of each kind.
/// </summary>
public class ArchitectureGradientParityTests(ITestOutputHelper output)
{
    static readonly string[] MetricKinds = ["logprob", "loss", "logit-diff", "prob", "logit"];

    /// <summary>Each case with the weight dtype its forward check does not use, and a metric kind (all five covered).</summary>
    public static TheoryData<string, string, string> Cases
    {
        get
        {
            var d = new TheoryData<string, string, string>();
            for (int i = 0; i < ArchitectureCases.All.Length; i++)
            {
                string c = ArchitectureCases.All[i];
                d.Add(c, ArchitectureCases.Other(ArchitectureCases.ForwardDType(c)), MetricKinds[i % MetricKinds.Length]);
            }
            d.Add("llama-plain", "bf16", "logit-diff"); // a config the runtime ran before issue 12: a control for this test's own plumbing
            return d;
        }
    }

    /// <summary>Runs the gradient oracle (writing the random folder first in the same Python start when makeConfig is given).</summary>
    internal static string RunOracle(string model, int[][] batch, string metric, string outPath,
        string? makeConfig = null, string dtype = "f32", int seed = 0, string qkGain = "1", string? saes = null, bool extraHooks = false)
    {
        var args = new List<string>
        {
            "--model", model, "--tokens", ArchitectureCases.WriteJson(outPath + ".tokens.json", batch), "--metric", metric, "--out", outPath,
            "--hooks", "all", "--rope-len", batch.Max(s => s.Length).ToString(CultureInfo.InvariantCulture),
        };
        if (makeConfig != null)
            args.AddRange(["--make-config", makeConfig, "--make-dtype", dtype, "--make-seed", seed.ToString(CultureInfo.InvariantCulture), "--make-qk-gain", qkGain]);
        if (saes != null) args.AddRange(["--saes", saes]);
        if (extraHooks) args.Add("--extra-hooks");
        TorchReference.RunPython(GradReference.Script, [.. args]);
        return outPath;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void RandomCheckpointGradientsMatchTorch(string kase, string dtype, string metricKind)
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        using var dir = new TempDir();
        var cfg = ArchitectureCases.RandomConfig(rng, kase);
        int vocab = ArchitectureCases.Vocab(cfg);
        var batch = GradientCheck.Batch(rng, rng.Next(2, 4), vocab, 3, 14);
        string metric = GradientCheck.RandomMetric(rng, metricKind, vocab, batch);
        string context = $"seed {seed}, {kase} {dtype}, metric {metric}, lengths [{string.Join(",", batch.Select(s => s.Length))}], config {cfg.ToJsonString()}";
        output.WriteLine(context);
        string modelDir = dir.File("model");
        string refPath = RunOracle(modelDir, batch, metric, dir.File("grad.safetensors"),
            makeConfig: ArchitectureCases.WriteJson(dir.File("config-in.json"), cfg), dtype: dtype, seed: seed, qkGain: ArchitectureCases.QkGain(cfg));

        using var model = HookedTransformer.Load(modelDir);
        var r = model.RunWithGradients(batch, Metric.Parse(metric), new GradientOptions { CacheFilter = _ => true, GradFilter = _ => true });
        using var reference = SafetensorsFile.Open(refPath);
        var worst = GradientCheck.CompareAll(r, reference, batch, model.HookPointNames, context);
        output.WriteLine("worst: " + GradientCheck.Describe(worst));
    }

    /// <summary>
    /// SAEs spliced with the error term on Gemma 2 and GPT-NeoX (parallel): a standard/gated SAE on the residual stream, a
    /// TopK on hook_mlp_out, a head-indexed JumpReLU on hook_z, and a transcoder — on Gemma 2 circuit-tracer's
    /// blocks.L.mlp.hook_in → blocks.L.mlp.hook_out (before ln2_post), on NeoX ln2.hook_normalized → hook_mlp_out — with an
    /// ordinary or a feature metric (drawn from the seed). Every model hook (with the extra mlp.hook_in/hook_out on Gemma 2) and every SAE hook is
    /// checked against the oracle. Inputs are redrawn while an SAE decision lies within 1e-5 of its boundary.
    /// </summary>
    [Theory]
    [InlineData("gemma2")]
    [InlineData("neox-parallel")]
    public void SplicedSaeGradientsMatchTorch(string kase)
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        bool featureMetric = rng.Next(2) == 0;
        using var dir = new TempDir();
        var cfg = ArchitectureCases.RandomConfig(rng, kase);
        int vocab = ArchitectureCases.Vocab(cfg);
        bool gemma = kase == "gemma2";
        string modelDir = dir.File("model");
        TorchReference.Run("make", "--arch", "hf", "--config", ArchitectureCases.WriteJson(dir.File("config-in.json"), cfg), "--dtype", "f32",
            "--seed", seed.ToString(CultureInfo.InvariantCulture), "--out", modelDir, "--qk-gain", ArchitectureCases.QkGain(cfg));
        using var model = HookedTransformer.Load(modelDir);
        var mc = model.Config;
        int C = mc.DModel, L = mc.NLayers, NH = mc.NHeads, HS = mc.DHead;
        int Pick(int avoid = -1) { int l; do l = rng.Next(L); while (l == avoid && L > 1); return l; }
        int dSae() => rng.Next(24, 80);
        int lt = Pick(), lm = Pick(lt), lz = Pick();
        var saes = new List<Sae>
        {
            SaeTestData.Random(rng, gemma ? SaeArchitecture.Standard : SaeArchitecture.Gated, C, dSae(), "blocks.0.hook_resid_pre", applyBDec: rng.Next(2) == 0),
            SaeTestData.Random(rng, SaeArchitecture.Standard, C, dSae(), $"blocks.{L - 1}.hook_resid_post"),
            gemma
                ? SaeTestData.Random(rng, SaeArchitecture.Transcoder, C, dSae(), $"blocks.{lt}.mlp.hook_in", dOut: C, hookOut: $"blocks.{lt}.mlp.hook_out")
                : SaeTestData.Random(rng, SaeArchitecture.SkipTranscoder, C, dSae(), $"blocks.{lt}.ln2.hook_normalized", dOut: C, hookOut: $"blocks.{lt}.hook_mlp_out"),
        };
        if (lm != lt || gemma) saes.Add(SaeTestData.Random(rng, SaeArchitecture.TopK, C, dSae(), $"blocks.{lm}.hook_mlp_out", k: rng.Next(1, 12)));
        var headSae = SaeTestData.Random(rng, SaeArchitecture.JumpRelu, HS, dSae(), $"blocks.{lz}.attn.hook_z", inputScale: 0.5f);
        headSae.Config.Metadata.HookHeadIndex = rng.Next(NH);
        saes.Add(headSae);
        string saePath = dir.File("saes.safetensors");
        GradReference.WriteSaes(saePath, saes);
        var splices = saes.Select(s => new SaeSplice(s, useErrorTerm: true)).ToList();
        string saeList = string.Join(", ", saes.Select(s => $"{SaeConfig.ArchitectureName(s.Config.Architecture)}@{s.Config.Metadata.HookName}" +
            (s.Config.Metadata.HookHeadIndex is int h ? $"[head {h}]" : "") + (s.Config.IsTranscoder ? $"→{s.Config.Metadata.HookNameOut}" : "")));
        var modelNames = gemma ? model.HookPointNames.Concat(HookNames.ExtraFor(mc)).ToList() : model.HookPointNames.ToList();

        for (int attempt = 0; ; attempt++)
        {
            var batch = GradientCheck.Batch(rng, rng.Next(2, 4), vocab, 3, 14);
            string metric = featureMetric ? GradientCheck.FeatureMetric(rng, model, splices, batch)
                : GradientCheck.RandomMetric(rng, new[] { "logit-diff", "loss", "logprob" }[rng.Next(3)], vocab, batch);
            string context = $"seed {seed}, {kase}, attempt {attempt}, metric {metric}, lengths [{string.Join(",", batch.Select(s => s.Length))}], " +
                             $"config {cfg.ToJsonString()}, SAEs {saeList}";
            output.WriteLine(context);
            string refPath = RunOracle(modelDir, batch, metric, dir.File($"grad{attempt}.safetensors"), saes: saePath, extraHooks: gemma);
            using var reference = SafetensorsFile.Open(refPath);
            float margin = Enumerable.Range(0, batch.Length).Min(b => reference.ReadF32($"{b}/sae_margin").Data[0]);
            if (margin < 1e-5f)
            {
                Assert.True(attempt < 5, $"no inputs with SAE decisions clear of their boundaries in 6 draws ({context})");
                output.WriteLine($"an SAE decision is {margin:E1} from its boundary; redrawing the inputs");
                continue;
            }
            var names = modelNames.Concat(splices.SelectMany(s => s.HookNames)).ToList();
            // a filter that names the hooks (the extra mlp.hook_in/out are cached only when named, not by a catch-all filter)
            var wanted = new HashSet<string>(names, StringComparer.Ordinal);
            var r = model.RunWithGradients(batch, Metric.Parse(metric), new GradientOptions { CacheFilter = wanted.Contains, GradFilter = wanted.Contains, Splices = [.. splices] });
            var worst = GradientCheck.CompareAll(r, reference, batch, names, context);
            output.WriteLine($"SAE decision margin {margin:E1}; worst: " + GradientCheck.Describe(worst));
            return;
        }
    }

    /// <summary>The extra hooks' gradients (Gemma 2: mlp.hook_out sits before ln2_post, so its gradient differs from hook_mlp_out's).</summary>
    [Fact]
    public void ExtraMlpHookGradientsMatchTorch()
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        using var dir = new TempDir();
        var cfg = ArchitectureCases.RandomConfig(rng, "gemma2");
        int vocab = ArchitectureCases.Vocab(cfg);
        var batch = GradientCheck.Batch(rng, 2, vocab, 3, 14);
        string metric = GradientCheck.RandomMetric(rng, "logprob", vocab, batch);
        string context = $"seed {seed}, gemma2, metric {metric}, lengths [{string.Join(",", batch.Select(s => s.Length))}], config {cfg.ToJsonString()}";
        output.WriteLine(context);
        string modelDir = dir.File("model");
        string refPath = RunOracle(modelDir, batch, metric, dir.File("grad.safetensors"), makeConfig: ArchitectureCases.WriteJson(dir.File("config-in.json"), cfg),
            seed: seed, qkGain: ArchitectureCases.QkGain(cfg), extraHooks: true);
        using var model = HookedTransformer.Load(modelDir);
        var names = model.HookPointNames.Concat(HookNames.ExtraFor(model.Config)).ToList();
        var wanted = new HashSet<string>(names, StringComparer.Ordinal);
        var r = model.RunWithGradients(batch, Metric.Parse(metric), new GradientOptions { CacheFilter = wanted.Contains, GradFilter = wanted.Contains });
        using var reference = SafetensorsFile.Open(refPath);
        var worst = GradientCheck.CompareAll(r, reference, batch, names, context);
        output.WriteLine("worst: " + GradientCheck.Describe(worst));
        // a catch-all filter keeps TransformerLens's names only
        var all = model.RunWithGradients(batch, Metric.Parse(metric), new GradientOptions { CacheFilter = _ => true, GradFilter = _ => true });
        Assert.DoesNotContain(all.Activations.Keys, HookNames.IsExtra);
        Assert.DoesNotContain(all.Gradients.Keys, HookNames.IsExtra);
    }
}
