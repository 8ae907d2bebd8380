using FeatureLens.Connections;
using FeatureLens.Runtime.Checkpoints;
using FeatureLens.Runtime.Kernels;
using FeatureLens.Runtime.Models;
using FeatureLens.Runtime.Tensors;
using FeatureLens.Tests.Cli;
using FeatureLens.Tests.Kernels;
using Xunit.Abstractions;

namespace FeatureLens.Tests.Models;

/// <summary>
/// <c>--compute bf16</c> (<see cref="ComputeMode.BFloat16"/>) on small random bf16 models: logits against the same model's
/// float32 compute, sequences bit-identical alone and in a batch, float32 unchanged, gradients in float32, and the clear
/// refusals (float32 weights, --grad).
/// </summary>
/// <remarks>
/// Tolerance: each weight product rounds its float32 input to bf16 (relative error ≤ 2⁻⁹ per element, random in sign), so
/// a product's output moves by about 2⁻⁹·‖x‖‖w‖/√K, and the layers add these up. On these models (2–3 blocks, d_model
/// 64–128) that is well under 1 % of the logits' spread: the test requires max |Δlogit| ≤ 0.05·std(logits) and
/// mean |Δlogit| ≤ 0.01·std(logits) and prints the measured values and the top-1 agreement.
/// </remarks>
public class Bf16ComputeTests(ITestOutputHelper output)
{
    static ModelConfig RandomConfig(Architecture arch, Random rng)
    {
        var tiny = SyntheticModel.Preset(arch, "tiny");
        int heads = 4, dHead = 8 * rng.Next(2, 5);
        return tiny with
        {
            DModel = heads * dHead,
            NHeads = heads,
            NKvHeads = arch == Architecture.Llama ? 2 : heads,
            NLayers = rng.Next(2, 4),
            DMlp = 16 * rng.Next(4, 12) + rng.Next(0, 2) * 7, // sometimes odd: an odd K for the down projection
        };
    }

    static int[][] RandomBatch(Random rng, int vocab) =>
        [.. Enumerable.Range(0, 2).Select(_ => Enumerable.Range(0, rng.Next(5, 40)).Select(_ => rng.Next(vocab)).ToArray())];

    [Theory]
    [InlineData(Architecture.Llama)]
    [InlineData(Architecture.Gpt2)]
    public void LogitsCloseToFloat32AndBatchInvariant(Architecture arch)
    {
        if (!GemmBf16.IsSupported) { output.WriteLine($"skipped: {GemmBf16.UnsupportedReason}"); return; }
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        var config = RandomConfig(arch, rng);
        using var dir = new TempDir();
        SyntheticModel.Write(dir.Path, config, DType.BF16, seed);
        using var m = HookedTransformer.Load(dir.Path);
        var tokens = RandomBatch(rng, config.VocabSize);
        string what = $"seed {seed}, {arch} d_model {config.DModel} d_mlp {config.DMlp} layers {config.NLayers}, lengths {tokens[0].Length},{tokens[1].Length}";

        var f32 = m.Forward(tokens);
        m.Compute = ComputeMode.BFloat16;
        var bf = m.Forward(tokens);
        var alone = m.Forward(tokens[1]);
        m.Compute = ComputeMode.Float32;
        var f32Again = m.Forward(tokens);

        int V = config.VocabSize, T = tokens.Max(t => t.Length);
        Assert.True(f32.Data.AsSpan().SequenceEqual(f32Again.Data), $"{what}: float32 logits changed after a bf16 run");
        Assert.True(alone.Data.AsSpan().SequenceEqual(bf.Data.AsSpan(T * V, tokens[1].Length * V)), $"{what}: bf16 logits of sequence 1 differ alone and in the batch");

        var (maxAbs, meanRel, top1, positions) = Compare(f32.Data, bf.Data, tokens, T, V);
        output.WriteLine($"{what}: max |Δlogit| {maxAbs.Abs:E3} = {maxAbs.Rel:F4} std, mean |Δlogit| {meanRel:F5} std, top-1 agreement {top1}/{positions}");
        Assert.True(maxAbs.Abs > 0, $"{what}: bf16 logits equal float32's bit for bit: the bf16 path did not run");
        Assert.True(maxAbs.Rel <= 0.05, $"{what}: max |Δlogit| {maxAbs.Rel:F4} std > 0.05");
        Assert.True(meanRel <= 0.01, $"{what}: mean |Δlogit| {meanRel:F5} std > 0.01");
        Assert.True(top1 >= positions - Math.Max(1, positions / 10), $"{what}: top-1 agrees at only {top1} of {positions} positions");
    }

    /// <summary>max |Δ| (absolute and over the float32 logits' std), mean |Δ| over the std, and top-1 agreement, over the real (unpadded) positions.</summary>
    internal static ((double Abs, double Rel) Max, double MeanRel, int Top1, int Positions) Compare(float[] reference, float[] test, int[][] tokens, int T, int V)
    {
        double sum = 0, sumSq = 0, maxAbs = 0, sumAbs = 0;
        long n = 0;
        int top1 = 0, positions = 0;
        for (int b = 0; b < tokens.Length; b++)
            for (int t = 0; t < tokens[b].Length; t++)
            {
                var r = reference.AsSpan((b * T + t) * V, V);
                var x = test.AsSpan((b * T + t) * V, V);
                for (int v = 0; v < V; v++)
                {
                    sum += r[v]; sumSq += (double)r[v] * r[v]; n++;
                    double d = Math.Abs((double)x[v] - r[v]);
                    maxAbs = Math.Max(maxAbs, d); sumAbs += d;
                }
                positions++;
                if (System.Numerics.Tensors.TensorPrimitives.IndexOfMax(r) == System.Numerics.Tensors.TensorPrimitives.IndexOfMax(x)) top1++;
            }
        double std = Math.Sqrt(Math.Max(0, sumSq / n - sum / n * (sum / n)));
        return ((maxAbs, maxAbs / std), sumAbs / n / std, top1, positions);
    }

    /// <summary>Gradient passes ignore the mode: the recorded forward runs in float32 either way.</summary>
    [Fact]
    public void GradientsStayFloat32()
    {
        if (!GemmBf16.IsSupported) { output.WriteLine($"skipped: {GemmBf16.UnsupportedReason}"); return; }
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        var config = RandomConfig(Architecture.Llama, rng);
        using var dir = new TempDir();
        SyntheticModel.Write(dir.Path, config, DType.BF16, seed);
        using var m = HookedTransformer.Load(dir.Path);
        int[][] tokens = [RandomBatch(rng, config.VocabSize)[0]];
        using var f32 = m.RunWithGradients(tokens, Metric.Parse("loss"), new GradientOptions { GradFilter = n => n == "blocks.0.hook_resid_post" });
        m.Compute = ComputeMode.BFloat16;
        using var bf = m.RunWithGradients(tokens, Metric.Parse("loss"), new GradientOptions { GradFilter = n => n == "blocks.0.hook_resid_post" });
        Assert.True(f32.Logits.Data.AsSpan().SequenceEqual(bf.Logits.Data), $"seed {seed}: logits of the gradient pass changed with the compute mode");
        Assert.True(f32.Gradients["blocks.0.hook_resid_post"].Data.AsSpan().SequenceEqual(bf.Gradients["blocks.0.hook_resid_post"].Data), $"seed {seed}: gradients changed with the compute mode");
    }

    [Fact]
    public void Float32WeightsAreRefused()
    {
        int seed = Random.Shared.Next();
        using var dir = new TempDir();
        SyntheticModel.Write(dir.Path, Architecture.Llama, "tiny", DType.F32, seed);
        using var m = HookedTransformer.Load(dir.Path);
        var e = Assert.Throws<ArgumentException>(() => m.Compute = ComputeMode.BFloat16);
        Assert.Contains("bf16 compute needs bf16 weights", e.Message);
        Assert.Contains("stores float32", e.Message);
        Assert.Equal(ComputeMode.Float32, m.Compute);
    }

    [Fact]
    public void CliRefusesBf16OnFloat32WeightsAndWithGrad()
    {
        using var dir = new TempDir();
        string f32 = Path.Combine(dir.Path, "f32"), bf16 = Path.Combine(dir.Path, "bf16");
        int seed = Random.Shared.Next();
        SyntheticModel.Write(f32, Architecture.Llama, "tiny", DType.F32, seed);
        SyntheticModel.Write(bf16, Architecture.Llama, "tiny", DType.BF16, seed);
        var r = CliTests.Run("run", "--model", f32, "--tokens", "1,5,9", "--compute", "bf16", "--out", dir.File("a.safetensors"));
        Assert.True(r.ExitCode == 1, $"exit {r.ExitCode}: {r.Stderr}");
        Assert.Contains("--compute bf16 needs bf16 weights", r.Stderr);
        Assert.Contains("stores float32", r.Stderr);
        var g = CliTests.Run("run", "--model", bf16, "--tokens", "1,5,9", "--compute", "bf16", "--grad", "loss", "--out", dir.File("b.safetensors"));
        Assert.True(g.ExitCode == 1, $"exit {g.ExitCode}: {g.Stderr}");
        Assert.Contains("--compute bf16 applies to forward passes only", g.Stderr);
        Assert.False(File.Exists(dir.File("a.safetensors")) || File.Exists(dir.File("b.safetensors")));
        if (!GemmBf16.IsSupported) return;
        var ok = CliTests.Run("run", "--model", bf16, "--tokens", "1,5,9", "--compute", "bf16", "--logits", "--out", dir.File("c.safetensors"));
        Assert.True(ok.ExitCode == 0, ok.Stderr);
        using var st = SafetensorsFile.Open(dir.File("c.safetensors"));
        Assert.True(st.Contains("logits"));
    }
}
