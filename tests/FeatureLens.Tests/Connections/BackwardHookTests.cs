using FeatureLens.Connections;
using FeatureLens.Runtime.Models;

namespace FeatureLens.Tests.Connections;

/// <summary>Backward hooks read the gradient the cache keeps, and an edit there reaches every gradient upstream.</summary>
public class BackwardHookTests
{
    static string Bin => Path.Combine(TestPaths.Shared, "models", "stories260K", "stories260K.bin");

    [Fact]
    public void BackwardHooksReadAndEditGradients()
    {
        var rng = new Random(Random.Shared.Next());
        using var model = HookedTransformer.Load(Bin);
        int[][] batch = [[1, .. Enumerable.Range(0, rng.Next(5, 12)).Select(_ => rng.Next(3, 512))], [1, .. Enumerable.Range(0, rng.Next(3, 6)).Select(_ => rng.Next(3, 512))]];
        var metric = Metric.LogProb(rng.Next(512));
        var plain = model.RunWithGradients(batch, metric, new GradientOptions { CacheFilter = _ => true });

        // a read-only hook sees exactly what the gradient cache keeps
        float[]? seen = null;
        var read = model.RunWithGradients(batch, metric, new GradientOptions
        {
            CacheFilter = _ => true,
            BackwardHooks = [("blocks.2.hook_resid_mid", (g, _) => { seen = (float[])g.Data.Clone(); return null; })],
        });
        Assert.Equal(plain.Gradients["blocks.2.hook_resid_mid"].Data, seen);
        Assert.Equal(plain.Gradients["hook_embed"].Data, read.Gradients["hook_embed"].Data);

        // every path to the logits passes through the last block's resid_post: doubling its gradient doubles every gradient upstream
        var doubled = model.RunWithGradients(batch, metric, new GradientOptions
        {
            CacheFilter = _ => true,
            BackwardHooks = [("blocks.4.hook_resid_post", (g, _) => { for (int i = 0; i < g.Data.Length; i++) g.Data[i] *= 2; return null; })],
        });
        foreach (var name in new[] { "blocks.4.hook_resid_post", "blocks.4.hook_mlp_out", "blocks.3.attn.hook_pattern", "blocks.0.ln1.hook_scale", "hook_embed" })
        {
            var a = plain.Gradients[name].Data; var b = doubled.Gradients[name].Data;
            for (int i = 0; i < a.Length; i++) Assert.Equal(2 * a[i], b[i], 1e-6f * (1 + Math.Abs(2 * a[i])));
        }
        // gradients after the hook point (downstream in the forward) are untouched
        Assert.Equal(plain.Gradients["ln_final.hook_normalized"].Data, doubled.Gradients["ln_final.hook_normalized"].Data);

        // returning a replacement works like an in-place edit; a wrong shape is refused naming the hook
        var zeroed = model.RunWithGradients(batch, metric, new GradientOptions
        {
            CacheFilter = _ => true,
            BackwardHooks = [("blocks.4.hook_resid_post", (g, _) => new FeatureLens.Runtime.Tensors.Tensor(g.Shape))],
        });
        Assert.All(zeroed.Gradients["hook_embed"].Data, v => Assert.Equal(0f, v));
        var e = Assert.Throws<InvalidOperationException>(() => model.RunWithGradients(batch, metric, new GradientOptions
        {
            BackwardHooks = [("blocks.1.hook_mlp_out", (g, _) => new FeatureLens.Runtime.Tensors.Tensor(1, 2))],
        }));
        Assert.Contains("blocks.1.hook_mlp_out", e.Message, StringComparison.Ordinal);
        Assert.Throws<ArgumentException>(() => model.RunWithGradients(batch, metric, new GradientOptions { BackwardHooks = [("blocks.9.hook_mlp_out", (g, _) => null)] }));
    }
}
