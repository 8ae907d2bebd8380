using FeatureLens.Connections;
using FeatureLens.Runtime.Models;
using FeatureLens.Runtime.Tensors;
using Xunit.Abstractions;

namespace FeatureLens.Tests.Connections;

/// <summary>
/// Gradients on the real stories260K model against central finite differences: for a random direction u at a hook
/// point, (m(x + εu) − m(x − εu)) / 2ε must equal ∇m·u. The forward is float32, so the check is about 1e-3 accurate
/// (relative to |∇m|·|u|, plus the float32 noise of the difference); it catches any wrong term of the hand-written backward, which torch parity pins to 1e-4.
/// </summary>
public class FiniteDifferenceTests(ITestOutputHelper output)
{
    static string Bin => Path.Combine(TestPaths.Shared, "models", "stories260K", "stories260K.bin");

    [Fact]
    public void DirectionalDerivativesMatchFiniteDifferencesAtEveryHookKind()
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        using var model = HookedTransformer.Load(Bin);
        int[][] batch = [Enumerable.Range(0, rng.Next(8, 20)).Select(i => i == 0 ? 1 : rng.Next(3, 512)).ToArray(),
                         Enumerable.Range(0, rng.Next(4, 8)).Select(i => i == 0 ? 1 : rng.Next(3, 512)).ToArray()];
        var metrics = new[] { Metric.LogitDiff(rng.Next(512), rng.Next(512), -1), Metric.LogProb(rng.Next(512), -2), Metric.Loss() };
        string[] hooks = ["hook_embed", "blocks.0.hook_resid_pre", "blocks.1.ln1.hook_scale", "blocks.1.ln1.hook_normalized", "blocks.2.attn.hook_q",
            "blocks.2.attn.hook_k", "blocks.2.attn.hook_v", "blocks.3.attn.hook_rot_q", "blocks.3.attn.hook_rot_k", "blocks.1.attn.hook_attn_scores",
            "blocks.1.attn.hook_pattern", "blocks.2.attn.hook_z", "blocks.2.hook_attn_out", "blocks.3.hook_resid_mid", "blocks.3.hook_mlp_in",
            "blocks.3.ln2.hook_normalized", "blocks.3.mlp.hook_pre", "blocks.3.mlp.hook_pre_linear", "blocks.3.mlp.hook_post", "blocks.4.hook_mlp_out",
            "blocks.4.hook_resid_post", "ln_final.hook_scale", "ln_final.hook_normalized", "blocks.0.attn.hook_result"];
        output.WriteLine($"seed {seed}, lengths {batch[0].Length},{batch[1].Length}");
        foreach (var metric in metrics)
        {
            var r = model.RunWithGradients(batch, metric, new GradientOptions { CacheFilter = hooks.Contains });
            foreach (var hook in hooks)
            {
                var x = r.Activations[hook];
                var g = r.Gradients[hook];
                // half along the gradient, half random: a direction the metric moves along, so the difference is well above rounding
                var u = new float[x.Length];
                for (int i = 0; i < u.Length; i++) u[i] = (float)(rng.NextDouble() * 2 - 1);
                ZeroPadding(hook, u, x.Shape, batch);
                double rn = Math.Sqrt(u.Sum(v => (double)v * v)), gn = Math.Sqrt(g.Data.Sum(v => (double)v * v));
                if (gn > 0) for (int i = 0; i < u.Length; i++) u[i] = (float)(u[i] / rn + g.Data[i] / gn);
                double predicted = 0, gNorm = 0, uNorm = 0;
                for (int i = 0; i < u.Length; i++) { predicted += (double)g.Data[i] * u[i]; gNorm += (double)g.Data[i] * g.Data[i]; uNorm += (double)u[i] * u[i]; }
                double xNorm = Math.Sqrt(x.Data.Where(float.IsFinite).Sum(v => (double)v * v));
                // attention queries, keys and scores move the softmax sharply: a smaller step keeps the curvature out
                bool sharp = hook.Contains("hook_q", StringComparison.Ordinal) || hook.Contains("hook_k", StringComparison.Ordinal)
                    || hook.Contains("rot_", StringComparison.Ordinal) || hook.EndsWith("scores", StringComparison.Ordinal);
                float eps = (float)((sharp ? 1e-4 : 1e-3) * Math.Max(xNorm, 1e-3) / Math.Sqrt(uNorm));
                double Shifted(float sign) => Value(model, batch, metric, hook, u, sign * eps);
                double fd = (Shifted(1) - Shifted(-1)) / (2 * eps);
                // float32 rounding of the metric (~1e-5 on logits of order 10) divided by the step bounds the difference's own noise
                double scale = Math.Sqrt(gNorm * uNorm) + 2e-5 / eps / 5e-3;
                double err = Math.Abs(fd - predicted) / scale;
                output.WriteLine($"{metric} {hook}: grad·u {predicted:E4}, finite difference {fd:E4}, error {err:E2} of |g||u|");
                Assert.True(err < 5e-3, $"{metric} at {hook}: grad·u = {predicted:E5} but finite difference {fd:E5} (error {err:E2} of |g||u| + noise; seed {seed})");
            }
        }
    }

    static double Value(HookedTransformer model, int[][] batch, Metric metric, string hook, float[] u, float eps)
    {
        var logits = model.Run(batch, new RunOptions
        {
            Hooks = [(hook, (t, _) => { for (int i = 0; i < u.Length; i++) t.Data[i] += eps * u[i]; return null; })],
            CacheFilter = hook.EndsWith("hook_result", StringComparison.Ordinal) ? n => n == hook : null,
            Cache = hook.EndsWith("hook_result", StringComparison.Ordinal) ? new ActivationCache { Lengths = batch.Select(b => b.Length).ToArray() } : null,
        })!;
        return metric.Evaluate(logits, new ActivationCache(), batch).Values.Sum(v => (double)v);
    }

    /// <summary>Padding entries do not exist: no direction there (and above the causal diagonal of the scores, which are −∞).</summary>
    static void ZeroPadding(string hook, float[] u, int[] shape, int[][] batch)
    {
        int B = batch.Length, T = shape[HookNames.IsAttentionMatrix(hook) ? 2 : 1];
        if (HookNames.IsAttentionMatrix(hook))
        {
            int NH = shape[1];
            for (int b = 0; b < B; b++)
                for (int h = 0; h < NH; h++)
                    for (int i = 0; i < T; i++)
                        for (int j = 0; j < T; j++)
                            if (i >= batch[b].Length || j >= batch[b].Length || (hook.EndsWith("scores", StringComparison.Ordinal) && j > i))
                                u[(((b * NH) + h) * T + i) * T + j] = 0;
            return;
        }
        int inner = u.Length / (B * T);
        for (int b = 0; b < B; b++) Array.Clear(u, (b * T + batch[b].Length) * inner, (T - batch[b].Length) * inner);
    }
}
