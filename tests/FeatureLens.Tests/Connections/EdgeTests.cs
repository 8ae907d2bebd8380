using FeatureLens.Connections;
using FeatureLens.Runtime.Models;
using FeatureLens.Saes;
using FeatureLens.Tests.Saes;
using Xunit.Abstractions;

namespace FeatureLens.Tests.Connections;

/// <summary>
/// Edges (u→d) = (∂m/∂d)·(∂d/∂u)·(u′ − u) from the batched seeded backward passes agree with the same product built from
/// single-target gradient runs (a feature metric on d, whose gradients torch parity pins), and the edges from one upstream
/// SAE's features and error sum to the edge from the residual-stream node they reconstruct.
/// </summary>
public class EdgeTests(ITestOutputHelper output)
{
    static string Bin => Path.Combine(TestPaths.Shared, "models", "stories260K", "stories260K.bin");

    [Fact]
    public void EdgesMatchSingleTargetGradientsAndSumOverAnUpstreamHook()
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        using var model = HookedTransformer.Load(Bin);
        int C = model.Config.DModel;
        var up = SaeTestData.Random(rng, SaeArchitecture.Standard, C, 96, "blocks.0.hook_resid_post");
        var down = SaeTestData.Random(rng, SaeArchitecture.TopK, C, 80, "blocks.2.hook_resid_post", k: 8);
        int len = rng.Next(6, 12);
        int[] clean = [1, .. Enumerable.Range(1, len - 1).Select(_ => rng.Next(3, 512))];
        int[] corrupt = [1, .. Enumerable.Range(1, len - 1).Select(_ => rng.Next(3, 512))];
        var metric = Metric.LogitDiff(rng.Next(512), rng.Next(512));
        var ctx = new CircuitContext(model, [up, down], [clean], [metric], [corrupt]);
        var select = new NodeSelection { Components = ["blocks.0.hook_resid_post"] };
        var effects = Attribution.Run(ctx, select, AttributionMethod.Gradient);
        var targets = effects.Nodes.Where(n => n.Node.Hook == "blocks.2.hook_resid_post").OrderByDescending(n => Math.Abs(n.Effect)).Take(4).Select(n => n.Node).ToList();
        Assert.NotEmpty(targets);
        var edges = Edges.Run(ctx, select, targets, maxEdges: 1_000_000);
        output.WriteLine($"seed {seed}: {edges.Count} edges into {targets.Count} targets");

        var spliceUp = ctx.SaeAt("blocks.0.hook_resid_post");
        var a = ctx.CleanRows(spliceUp.ActsPostHook, 0); var a1 = ctx.CorruptRows(spliceUp.ActsPostHook, 0);
        var e = ctx.CleanRows("blocks.0.hook_resid_post.hook_sae_error", 0); var e1 = ctx.CorruptRows("blocks.0.hook_resid_post.hook_sae_error", 0);
        var x = ctx.CleanRows("blocks.0.hook_resid_post", 0); var x1 = ctx.CorruptRows("blocks.0.hook_resid_post", 0);
        var dmdd = model.RunWithGradients([clean], metric, new GradientOptions { CacheFilter = n => n.EndsWith("hook_sae_acts_post", StringComparison.Ordinal) || n.EndsWith("hook_sae_error", StringComparison.Ordinal), Splices = ctx.Splices });
        var byPair = edges.ToDictionary(x => (x.Source, x.Target), x => x.Weight);
        foreach (var d in targets)
        {
            double worst = 0;   // per target, against that target's largest edge
            // ∂m/∂d at the clean run, and ∂d/∂(upstream) from a run whose metric is d itself
            double gd = d.Kind == NodeKind.Feature ? dmdd.Gradients.Sequence(d.ValueHook, 0).Data[d.Pos * 80 + d.Index!.Value] : double.NaN;
            if (d.Kind != NodeKind.Feature) continue;
            var r = model.RunWithGradients([clean], Metric.OfFeature(d.Hook, d.Index!.Value, d.Pos), new GradientOptions
            {
                CacheFilter = n => n.StartsWith("blocks.0.hook_resid_post", StringComparison.Ordinal), Splices = ctx.Splices,
            });
            var gf = r.Gradients.Sequence(spliceUp.ActsPostHook, 0).Data;
            var ge = r.Gradients.Sequence("blocks.0.hook_resid_post.hook_sae_error", 0).Data;
            var gx = r.Gradients.Sequence("blocks.0.hook_resid_post", 0).Data;
            double scale = 0, sumSae = 0, sumResid = 0;
            for (int p = 0; p <= d.Pos; p++)
            {
                for (int j = 0; j < 96; j++)
                {
                    int i = p * 96 + j;
                    if (a[i] == 0 && a1[i] == 0) continue;
                    double expected = gd * gf[i] * (a1[i] - a[i]);
                    double ours = byPair.GetValueOrDefault((new Node(NodeKind.Feature, "blocks.0.hook_resid_post", p, j), d));
                    scale = Math.Max(scale, Math.Abs(expected));
                    worst = Math.Max(worst, Math.Abs(ours - expected));
                    sumSae += ours;
                }
                double expErr = 0, expResid = 0;
                for (int c = 0; c < C; c++) { expErr += gd * ge[p * C + c] * (e1[p * C + c] - e[p * C + c]); expResid += gd * gx[p * C + c] * (x1[p * C + c] - x[p * C + c]); }
                double err = byPair.GetValueOrDefault((new Node(NodeKind.Error, "blocks.0.hook_resid_post", p), d));
                double resid = byPair.GetValueOrDefault((new Node(NodeKind.Resid, "blocks.0.hook_resid_post", p), d));
                Assert.True(Math.Abs(err - expErr) <= 1e-4 * Math.Max(Math.Abs(expErr), 1e-3), $"error edge at pos {p} into {d}: {err:E5} vs {expErr:E5} (seed {seed})");
                Assert.True(Math.Abs(resid - expResid) <= 1e-4 * Math.Max(Math.Abs(expResid), 1e-3), $"resid edge at pos {p} into {d}: {resid:E5} vs {expResid:E5} (seed {seed})");
                sumSae += err; sumResid += resid;
            }
            Assert.True(worst <= 1e-4 * Math.Max(scale, 1e-3), $"feature edges into {d}: worst difference {worst:E3} (largest {scale:E3}; seed {seed})");
            // features + error reconstruct the residual stream exactly, so their edges sum to the residual node's
            Assert.True(Math.Abs(sumSae - sumResid) <= 1e-4 * Math.Max(Math.Abs(sumResid), 1e-3), $"Σ SAE-node edges {sumSae:E6} vs resid edges {sumResid:E6} into {d} (seed {seed})");
            output.WriteLine($"{d}: Σ SAE edges {sumSae:E6}, Σ resid edges {sumResid:E6}");
        }
    }
}
