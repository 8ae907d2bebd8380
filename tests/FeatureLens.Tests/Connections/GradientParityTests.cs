using System.Text.Json;
using FeatureLens.Connections;
using FeatureLens.Runtime.Checkpoints;
using FeatureLens.Runtime.Models;
using FeatureLens.Saes;
using FeatureLens.Tests.Saes;
using Xunit.Abstractions;

namespace FeatureLens.Tests.Connections;

/// <summary>
/// How <see cref="HookedTransformer.RunWithGradients"/> is judged against the autograd oracle
/// (python/grad_reference.py, float64).
/// <list type="bullet">
/// <item>Every gradient and every cached activation, per sequence and hook:
/// ‖ours − torch‖ ≤ 1e-4 · max(‖torch‖, F), F = 1e-4 × the largest ‖torch‖ of that kind (gradients, or
/// activations) over the sequence's hooks (a norm's hook_scale gradient: max(‖torch‖, ‖Σ_c|g·n|/s‖), see
/// <see cref="ScaleTermsNorm"/>). The floor only matters for tensors that are (nearly) exactly 0 in
/// torch — e.g. every hook downstream of a feature metric's SAE, where ours must then be ≤ 1e-8·F' in norm.
/// Infinite entries (masked attention scores) must coincide.</item>
/// <item>Logits: relative error ≤ 1e-5 (the forward contract). Metric per sequence and total:
/// |ours − torch| ≤ 1e-4 · max(|torch|, 1e-2).</item>
/// </list>
/// </summary>
internal static class GradientCheck
{
    public const double Tolerance = 1e-4;
    public const double FloorFraction = 1e-4;

    static (double Num, double Den) Distance(ReadOnlySpan<float> ours, ReadOnlySpan<float> theirs, string what)
    {
        if (ours.Length != theirs.Length) throw new Xunit.Sdk.XunitException($"{what}: {ours.Length} elements vs torch {theirs.Length}");
        double num = 0, den = 0;
        for (int i = 0; i < ours.Length; i++)
        {
            float a = ours[i], b = theirs[i];
            if (float.IsInfinity(a) || float.IsInfinity(b))
            {
                if (a != b) throw new Xunit.Sdk.XunitException($"{what}: element {i} is {a}, torch {b}");
                continue;
            }
            if (float.IsNaN(a) || float.IsNaN(b)) throw new Xunit.Sdk.XunitException($"{what}: NaN at element {i} (ours {a}, torch {b})");
            num += (double)(a - b) * (a - b);
            den += (double)b * b;
        }
        return (Math.Sqrt(num), Math.Sqrt(den));
    }

    /// <summary>Checks metric, logits, and every named hook's activation and gradient; returns the worst errors seen.</summary>
    public static Dictionary<string, (double Err, string At)> CompareAll(GradientResult r, SafetensorsFile reference, int[][] batch,
        IReadOnlyList<string> names, string context)
    {
        var failures = new List<string>();
        var worst = new Dictionary<string, (double, string)> { ["grad"] = (0, ""), ["activation"] = (0, ""), ["logits"] = (0, ""), ["metric"] = (0, "") };
        void Note(string kind, double err, string at)
        {
            if (err > worst[kind].Item1) worst[kind] = (err, at);
        }
        double total = reference.ReadF32("metric").Data[0];
        double mErr = Math.Abs(r.Value - total) / Math.Max(Math.Abs(total), 1e-2);
        Note("metric", mErr, "total");
        Assert.True(mErr <= Tolerance, $"metric total {r.Value} vs torch {total} ({context})");
        Assert.Equal(batch.Length, r.Values.Length);
        for (int b = 0; b < batch.Length; b++)
        {
            int len = batch[b].Length;
            double m = reference.ReadF32($"{b}/metric").Data[0];
            double e = Math.Abs(r.Values[b] - m) / Math.Max(Math.Abs(m), 1e-2);
            Note("metric", e, $"sequence {b}");
            Assert.True(e <= Tolerance, $"sequence {b}: metric {r.Values[b]} vs torch {m} ({context})");

            var logits = HookNames.SliceSequence("logits", r.Logits, b, len);
            double le = Compare.RelativeError(logits.Data, reference.ReadF32($"{b}/logits").Data, $"{b}/logits ({context})");
            Note("logits", le, $"{b}/logits");
            Assert.True(le <= 1e-5, $"{b}/logits: relative error {le:E2} > 1e-5 ({context})");

            foreach (var (kind, suffix) in new[] { ("grad", ".grad"), ("activation", "") })
            {
                var refs = new Dictionary<string, FeatureLens.Runtime.Tensors.Tensor>();
                foreach (string name in names)
                {
                    string key = $"{b}/{name}{suffix}";
                    Assert.True(reference.Contains(key), $"the oracle wrote no {key} ({context})");
                    refs[name] = reference.ReadF32(key);
                }
                double scale = refs.Values.Max(t => Distance(t.Data, t.Data, "").Den); // infinities are skipped
                double floor = FloorFraction * scale;
                foreach (string name in names)
                {
                    var theirs = refs[name];
                    var ours = kind == "grad" ? r.Gradients.Sequence(name, b) : r.Activations.Sequence(name, b);
                    string what = $"{b}/{name}{suffix}";
                    Assert.True(ours.Shape.AsSpan().SequenceEqual(theirs.Shape),
                        $"{what}: shape [{string.Join(",", ours.Shape)}] vs torch [{string.Join(",", theirs.Shape)}] ({context})");
                    var (num, den) = Distance(ours.Data, theirs.Data, $"{what} ({context})");
                    if (kind == "grad" && name.EndsWith(".hook_scale", StringComparison.Ordinal))
                        den = Math.Max(den, ScaleTermsNorm(refs, reference, name, b));
                    double err = num / Math.Max(den, floor);
                    Note(kind, err, what);
                    if (err > Tolerance)
                        failures.Add($"{what}: ‖ours − torch‖ = {num:E3}, ‖torch‖ = {den:E3}, ‖ours‖ = {Distance(ours.Data, ours.Data, "").Den:E3} (floor {floor:E2}): error {err:E3}");
                }
            }
        }
        Assert.True(failures.Count == 0, $"{failures.Count} tensors beyond {Tolerance:E0} ({context}):\n" + string.Join("\n", failures.Take(40)) +
                                         (failures.Count > 40 ? $"\n... and {failures.Count - 40} more" : ""));
        return worst;
    }

    /// <summary>
    /// A norm's scale gradient is a sum that cancels: ∂m/∂s_r = −Σ_c g_rc·n_rc / s_r (g = hook_normalized's gradient,
    /// n = hook_normalized). An error ε relative to g moves it by up to ε·Σ_c |g_rc·n_rc| / s_r, however small the sum,
    /// so it is judged against the norm over rows of that sum of magnitudes (torch's float64 values), not against the
    /// (possibly far smaller) result — the same 1e-4 tolerance its inputs are held to.
    /// </summary>
    static double ScaleTermsNorm(Dictionary<string, FeatureLens.Runtime.Tensors.Tensor> gradRefs, SafetensorsFile reference, string scaleName, int b)
    {
        string normalized = scaleName[..^"hook_scale".Length] + "hook_normalized";
        if (!gradRefs.TryGetValue(normalized, out var g) || !reference.Contains($"{b}/{normalized}") || !reference.Contains($"{b}/{scaleName}"))
            return 0;
        var n = reference.ReadF32($"{b}/{normalized}").Data;
        var s = reference.ReadF32($"{b}/{scaleName}").Data;
        int rows = s.Length, C = n.Length / Math.Max(rows, 1);
        if (rows == 0 || n.Length != rows * C || g.Data.Length != n.Length) return 0;
        double total = 0;
        for (int r = 0; r < rows; r++)
        {
            double m = 0;
            for (int c = 0; c < C; c++) m += Math.Abs((double)g.Data[r * C + c] * n[r * C + c]);
            m /= Math.Abs((double)s[r]);
            total += m * m;
        }
        return Math.Sqrt(total);
    }

    /// <summary>feature:HOOK:I@POS for a random SAE and a latent active at POS in some sequence (found with a plain spliced run).</summary>
    public static string FeatureMetric(Random rng, HookedTransformer model, List<SaeSplice> splices, int[][] batch)
    {
        var cache = new ActivationCache { Lengths = batch.Select(s => s.Length).ToArray() };
        model.Run(batch, new RunOptions { Splices = [.. splices], CacheFilter = n => n.EndsWith(".hook_sae_acts_post", StringComparison.Ordinal), Cache = cache });
        foreach (var splice in splices.OrderBy(_ => rng.Next()))
        {
            string pos = GradientCheck.Position(rng, batch);
            int dSae = splice.Sae.DSae;
            var sums = new double[dSae];
            for (int b = 0; b < batch.Length; b++)
            {
                var acts = cache.Sequence(splice.ActsPostHook, b);
                int len = batch[b].Length;
                int p = pos == "" ? -1 : int.Parse(pos[1..], CultureInfo.InvariantCulture);
                if (p < 0) p += len;
                for (int j = 0; j < dSae; j++) sums[j] += acts.Data[p * dSae + j];
            }
            int best = Array.IndexOf(sums, sums.Max());
            if (sums[best] > 0) return $"feature:{splice.InputHook}:{best}{pos}";
        }
        throw new InvalidOperationException("no SAE has an active latent at the chosen positions");
    }

    public static string Describe(Dictionary<string, (double Err, string At)> worst) =>
        string.Join("; ", worst.Select(kv => $"{kv.Key} {kv.Value.Err:E2} at {kv.Value.At}"));

    /// <summary>Sequences of distinct random lengths in [minLen, maxLen].</summary>
    public static int[][] Batch(Random rng, int count, int vocab, int minLen, int maxLen, int firstToken = -1)
    {
        var lengths = Enumerable.Range(minLen, maxLen - minLen + 1).OrderBy(_ => rng.Next()).Take(count).ToArray();
        return lengths.Select(n => Enumerable.Range(0, n).Select(i => i == 0 && firstToken >= 0 ? firstToken : rng.Next(vocab)).ToArray()).ToArray();
    }

    /// <summary>"@POS" valid for every sequence (negative half the time), or "" for the default last position.</summary>
    public static string Position(Random rng, int[][] batch)
    {
        int min = batch.Min(s => s.Length);
        return rng.Next(4) switch
        {
            0 => "",
            1 => $"@{-1 - rng.Next(min)}",
            _ => $"@{rng.Next(min)}",
        };
    }

    public static string RandomMetric(Random rng, string kind, int vocab, int[][] batch)
    {
        int t1 = rng.Next(vocab), t2 = (t1 + 1 + rng.Next(vocab - 1)) % vocab;
        return kind switch
        {
            "logit" => $"logit:{t1}{Position(rng, batch)}",
            "logit-diff" => $"logit-diff:{t1},{t2}{Position(rng, batch)}",
            "logprob" => $"logprob:{t1}{Position(rng, batch)}",
            "prob" => $"prob:{t1}{Position(rng, batch)}",
            "loss" => "loss",
            _ => throw new ArgumentException(kind),
        };
    }

    /// <summary>A fresh small config (d_model ≤ 64, ≤ 3 layers, even head size, grouped-query attention for llama).</summary>
    public static Dictionary<string, object> RandomConfig(Random rng, string arch, int minLayers = 1)
    {
        // llama: always grouped-query attention (2 or 4 query heads per kv head)
        int nHeads = arch == "llama" ? 2 * rng.Next(1, 3) : rng.Next(2, 5);
        int group = arch == "llama" ? new[] { 2, 4 }.Where(g => nHeads % g == 0).OrderBy(_ => rng.Next()).First() : 1;
        int dHead = 2 * rng.Next(2, 65 / (2 * nHeads) + 1);
        return new Dictionary<string, object>
        {
            ["d_model"] = nHeads * dHead, ["n_layers"] = rng.Next(minLayers, 4), ["n_heads"] = nHeads, ["n_kv_heads"] = nHeads / group,
            ["d_mlp"] = rng.Next(17, 90), ["vocab"] = rng.Next(50, 200), ["n_ctx"] = 32,
            ["tied"] = rng.Next(2) == 0, ["rope_theta"] = rng.Next(2) == 0 ? 10000.0 : 500.0,
        };
    }
}

/// <summary>
/// <see cref="HookedTransformer.RunWithGradients"/> agrees with torch autograd (float64) on fresh random models for
/// every hook point, both RoPE layouts, f32 and bf16 weights, batches of unequal lengths and each metric kind
/// (tolerances: <see cref="GradientCheck"/>).
/// </summary>
public class GradientParityTests(ITestOutputHelper output)
{
    public static TheoryData<string, string, string> Cases => new()
    {
        // with the stories260K case (logit) every metric kind is covered; each case ≈ 3.5 s (two Python starts)
        { "gpt2", "f32", "logit-diff" }, { "gpt2", "bf16", "loss" }, { "llama", "f32", "logprob" }, { "llama", "bf16", "prob" },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void RandomModelGradientsMatchTorch(string arch, string dtype, string metricKind)
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        using var dir = new TempDir();
        var cfg = GradientCheck.RandomConfig(rng, arch);
        int vocab = (int)cfg["vocab"];
        var batch = GradientCheck.Batch(rng, rng.Next(2, 4), vocab, 2, 14);
        string metric = GradientCheck.RandomMetric(rng, metricKind, vocab, batch);
        string context = $"seed {seed}, {arch} {dtype}, metric {metric}, lengths [{string.Join(",", batch.Select(s => s.Length))}], config {JsonSerializer.Serialize(cfg)}";
        output.WriteLine(context);
        string modelDir = TorchReference.MakeModel(dir.Path, arch, cfg, dtype, seed);
        string refPath = GradReference.Run(modelDir, batch, metric, dir.File("grad.safetensors"));

        using var model = HookedTransformer.Load(modelDir);
        var r = model.RunWithGradients(batch, Metric.Parse(metric), new GradientOptions { CacheFilter = _ => true, GradFilter = _ => true });
        using var reference = SafetensorsFile.Open(refPath);
        var worst = GradientCheck.CompareAll(r, reference, batch, model.HookPointNames, context);
        output.WriteLine("worst: " + GradientCheck.Describe(worst));
    }

    /// <summary>stories260K (llama2.c .bin: interleaved RoPE, 5 layers, GQA 8/4 heads) with a logit metric at a random position.</summary>
    [Fact]
    public void Stories260KGradientsMatchTorch()
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        using var dir = new TempDir();
        string bin = Path.Combine(TestPaths.Shared, "models", "stories260K", "stories260K.bin");
        var batch = GradientCheck.Batch(rng, 2, 512, 3, 16, firstToken: 1);
        string metric = GradientCheck.RandomMetric(rng, "logit", 512, batch);
        string context = $"seed {seed}, stories260K, metric {metric}, lengths [{string.Join(",", batch.Select(s => s.Length))}]";
        output.WriteLine(context);
        string refPath = GradReference.Run(bin, batch, metric, dir.File("grad.safetensors"));
        using var model = HookedTransformer.Load(bin);
        var r = model.RunWithGradients(batch, Metric.Parse(metric), new GradientOptions { CacheFilter = _ => true, GradFilter = _ => true });
        using var reference = SafetensorsFile.Open(refPath);
        var worst = GradientCheck.CompareAll(r, reference, batch, model.HookPointNames, context);
        output.WriteLine("worst: " + GradientCheck.Describe(worst));
    }

    [Theory]
    [InlineData("")]
    [InlineData("logit")]
    [InlineData("logit:")]
    [InlineData("logit:abc")]
    [InlineData("logit-diff:5")]
    [InlineData("logit-diff:5,6,7")]
    [InlineData("logit:5@x")]
    [InlineData("loss@3")]
    [InlineData("feature:blocks.0.hook_resid_post")]
    [InlineData("entropy:3")]
    public void MalformedMetricsAreClearErrors(string text)
    {
        var e = Assert.ThrowsAny<ArgumentException>(() => Metric.Parse(text));
        Assert.False(string.IsNullOrWhiteSpace(e.Message));
    }

    [Theory]
    [InlineData("logit:5")]
    [InlineData("logit-diff:5,7@-2")]
    [InlineData("logprob:0@3")]
    [InlineData("prob:12@-1")]
    [InlineData("loss")]
    [InlineData("feature:blocks.1.hook_resid_post:17@-3")]
    [InlineData("feature:blocks.0.attn.hook_z:4")]
    public void WellFormedMetricsParse(string text) => Assert.NotNull(Metric.Parse(text));
}

/// <summary>
/// Gradients with SAEs spliced with the error term (standard, jumprelu, topk, gated; at resid_pre, resid_post,
/// mlp_out, hook_z whole and head-indexed; one transcoder ln2.hook_normalized → hook_mlp_out) agree with torch
/// autograd for every model hook and every SAE hook (hook_sae_input/acts_pre/acts_post/recons/error/output), with
/// ordinary and <c>feature:HOOK:I</c> metrics. The oracle's semantics: ∂m/∂f = W_dec·g, ∂m/∂e = g, ∂m/∂(model hook)
/// as without the SAE, ∂m/∂sae_input through the encoder (see grad_reference.py). Inputs are redrawn while some SAE
/// activation decision lies within 1e-5 (relative) of its boundary, where float32 rounding could flip it.
/// </summary>
public class SaeGradientParityTests(ITestOutputHelper output)
{
    const float MinDecisionMargin = 1e-5f;

    /// <summary>Random SAEs covering every architecture, a head-indexed one and a transcoder, on distinct hooks.</summary>
    static List<Sae> RandomSaes(Random rng, string arch, Dictionary<string, object> cfg)
    {
        int C = (int)cfg["d_model"], L = (int)cfg["n_layers"], NH = (int)cfg["n_heads"], HS = C / NH;
        int Pick(int avoid = -1) { int l; do l = rng.Next(L); while (l == avoid && L > 1); return l; }
        int dSae() => rng.Next(24, 80);
        int lm = Pick(), lt = Pick(lm), lz = Pick(), lz2 = Pick(lz);
        var tcArch = new[] { SaeArchitecture.Transcoder, SaeArchitecture.JumpReluTranscoder, SaeArchitecture.SkipTranscoder }[rng.Next(3)];
        var list = new List<Sae>
        {
            SaeTestData.Random(rng, arch == "gpt2" ? SaeArchitecture.Standard : SaeArchitecture.Gated, C, dSae(), "blocks.0.hook_resid_pre", applyBDec: rng.Next(2) == 0),
            SaeTestData.Random(rng, SaeArchitecture.TopK, C, dSae(), $"blocks.{lm}.hook_mlp_out", k: rng.Next(1, 12)),
            SaeTestData.Random(rng, arch == "gpt2" ? SaeArchitecture.Gated : SaeArchitecture.Standard, C, dSae(), $"blocks.{L - 1}.hook_resid_post"),
            SaeTestData.Random(rng, tcArch, C, dSae(), $"blocks.{lt}.ln2.hook_normalized", dOut: C, hookOut: $"blocks.{lt}.hook_mlp_out"),
        };
        var headSae = SaeTestData.Random(rng, SaeArchitecture.JumpRelu, HS, dSae(), $"blocks.{lz}.attn.hook_z", inputScale: 0.5f);
        headSae.Config.Metadata.HookHeadIndex = rng.Next(NH);
        list.Add(headSae);
        if (lz2 != lz) // the whole of hook_z (NH·HS wide) in another layer
            list.Add(SaeTestData.Random(rng, SaeArchitecture.JumpRelu, C, dSae(), $"blocks.{lz2}.attn.hook_z", inputScale: 0.5f));
        if (lt == lm) list.RemoveAt(1); // one layer only: the transcoder owns hook_mlp_out
        return list;
    }

    public static TheoryData<string, bool> Cases => new() { { "gpt2", false }, { "gpt2", true }, { "llama", false }, { "llama", true } };

    [Theory]
    [MemberData(nameof(Cases))]
    public void SplicedSaeGradientsMatchTorch(string arch, bool featureMetric)
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        using var dir = new TempDir();
        var cfg = GradientCheck.RandomConfig(rng, arch, minLayers: 2);
        int vocab = (int)cfg["vocab"];
        string modelDir = TorchReference.MakeModel(dir.Path, arch, cfg, "f32", seed);
        using var model = HookedTransformer.Load(modelDir);
        var saes = RandomSaes(rng, arch, cfg);
        string saePath = dir.File("saes.safetensors");
        GradReference.WriteSaes(saePath, saes);
        var splices = saes.Select(s => new SaeSplice(s, useErrorTerm: true)).ToList();
        string saeList = string.Join(", ", saes.Select(s => $"{SaeConfig.ArchitectureName(s.Config.Architecture)}@{s.Config.Metadata.HookName}" +
            (s.Config.Metadata.HookHeadIndex is int h ? $"[head {h}]" : "") + (s.Config.IsTranscoder ? $"→{s.Config.Metadata.HookNameOut}" : "") +
            $" d_sae={s.DSae}" + (s.Config.K > 0 ? $" k={s.Config.K}" : "")));

        for (int attempt = 0; ; attempt++)
        {
            var batch = GradientCheck.Batch(rng, rng.Next(2, 4), vocab, 3, 14);
            string metric = featureMetric ? GradientCheck.FeatureMetric(rng, model, splices, batch) : GradientCheck.RandomMetric(rng, new[] { "logit-diff", "loss", "logprob" }[rng.Next(3)], vocab, batch);
            string context = $"seed {seed}, {arch}, attempt {attempt}, metric {metric}, lengths [{string.Join(",", batch.Select(s => s.Length))}], " +
                             $"config {JsonSerializer.Serialize(cfg)}, SAEs {saeList}";
            output.WriteLine(context);
            string refPath = GradReference.Run(modelDir, batch, metric, dir.File($"grad{attempt}.safetensors"), saePath);
            using var reference = SafetensorsFile.Open(refPath);
            float margin = Enumerable.Range(0, batch.Length).Min(b => reference.ReadF32($"{b}/sae_margin").Data[0]);
            if (margin < MinDecisionMargin)
            {
                Assert.True(attempt < 5, $"no inputs with SAE decisions clear of their boundaries in 6 draws ({context})");
                output.WriteLine($"an SAE decision is {margin:E1} from its boundary; redrawing the inputs");
                continue;
            }
            var r = model.RunWithGradients(batch, Metric.Parse(metric), new GradientOptions { CacheFilter = _ => true, GradFilter = _ => true, Splices = [.. splices] });
            var names = model.HookPointNames.Concat(splices.SelectMany(s => s.HookNames)).ToList();
            var worst = GradientCheck.CompareAll(r, reference, batch, names, context);
            output.WriteLine($"SAE decision margin {margin:E1}; worst: " + GradientCheck.Describe(worst));
            return;
        }
    }
}

/// <summary>The gradient oracle checks itself: finite differences at every hook, SAE identities, forward values.</summary>
public class GradReferenceSelfCheck
{
    [Fact]
    public void GradientOracleAgreesWithFiniteDifferences()
    {
        string output = TorchReference.RunPython(GradReference.Script, "--selfcheck", "--shared", TestPaths.Shared);
        Assert.Contains("\n0 failures", output);
    }
}
