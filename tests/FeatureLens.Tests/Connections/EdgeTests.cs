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
            CheckTarget(d, gd, [.. gf.Select(v => (double)v)], [.. ge.Select(v => (double)v)], [.. gx.Select(v => (double)v)], (a, a1), (e, e1), (x, x1), C, byPair, seed, "");
        }
    }

    /// <summary>
    /// Integrated-gradient edges: ∂m/∂d is d's group's IG mean gradient and ∂d/∂u is averaged over u's group interpolated to
    /// the corrupt run; checked against single-target runs (a feature metric on d with u's group set to each step's
    /// interpolation), against the gradient version at N = 1, and against the residual-stream node the SAE reconstructs
    /// (latents and error interpolated together interpolate the residual stream linearly, so the sums still agree).
    /// </summary>
    [Fact]
    public void IntegratedGradientEdgesMatchSingleTargetRunsAlongThePath()
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        using var model = HookedTransformer.Load(Bin);
        int C = model.Config.DModel, steps = rng.Next(2, 5);
        var up = SaeTestData.Random(rng, SaeArchitecture.Standard, C, 96, "blocks.0.hook_resid_post");
        var down = SaeTestData.Random(rng, SaeArchitecture.TopK, C, 80, "blocks.2.hook_resid_post", k: 8);
        int len = rng.Next(6, 12);
        int[] clean = [1, .. Enumerable.Range(1, len - 1).Select(_ => rng.Next(3, 512))];
        int[] corrupt = [1, .. Enumerable.Range(1, len - 1).Select(_ => rng.Next(3, 512))];
        var metric = Metric.LogitDiff(rng.Next(512), rng.Next(512));
        var ctx = new CircuitContext(model, [up, down], [clean], [metric], [corrupt]);
        var select = new NodeSelection { Components = ["blocks.0.hook_resid_post"] };
        var effects = Attribution.Run(ctx, select, AttributionMethod.IntegratedGradients, steps);
        // the largest, preferring latents active on the clean run (a latent off on the clean run has no gradient edges)
        var targets = effects.Nodes.Where(n => n.Node.Hook == "blocks.2.hook_resid_post" && n.Node.Kind == NodeKind.Feature)
            .OrderByDescending(n => n.Clean > 0).ThenByDescending(n => Math.Abs(n.Effect)).Take(3).Select(n => n.Node).ToList();
        Assert.NotEmpty(targets);
        var edges = Edges.Run(ctx, select, targets, maxEdges: 1_000_000, method: AttributionMethod.IntegratedGradients, steps: steps);
        var byPair = edges.ToDictionary(x => (x.Source, x.Target), x => x.Weight);
        output.WriteLine($"seed {seed}: {steps} steps, {edges.Count} edges into {targets.Count} targets");

        // N = 1 is the gradient version
        var one = Edges.Run(ctx, select, targets, maxEdges: 1_000_000, method: AttributionMethod.IntegratedGradients, steps: 1).ToDictionary(x => (x.Source, x.Target), x => x.Weight);
        var grad = Edges.Run(ctx, select, targets, maxEdges: 1_000_000).ToDictionary(x => (x.Source, x.Target), x => x.Weight);
        double gScale = grad.Count == 0 ? 0 : grad.Values.Max(Math.Abs);
        Assert.Equal(grad.Count, one.Count);
        foreach (var (k, w) in grad) Assert.True(Math.Abs(one.GetValueOrDefault(k) - w) <= 1e-5 * gScale, $"N = 1 edge {k}: {one.GetValueOrDefault(k):E6} vs gradient {w:E6} (seed {seed})");

        var spliceUp = ctx.SaeAt("blocks.0.hook_resid_post");
        string errHook = "blocks.0.hook_resid_post.hook_sae_error";
        string[] group = [spliceUp.ActsPostHook, errHook];
        var corruptRows = group.ToDictionary(h => h, h => ctx.CorruptRows(h, 0), StringComparer.Ordinal);
        var a = ctx.CleanRows(spliceUp.ActsPostHook, 0); var a1 = corruptRows[spliceUp.ActsPostHook];
        var e = ctx.CleanRows(errHook, 0); var e1 = corruptRows[errHook];
        var x = ctx.CleanRows("blocks.0.hook_resid_post", 0); var x1 = ctx.CorruptRows("blocks.0.hook_resid_post", 0);
        var spliceDown = ctx.SaeAt("blocks.2.hook_resid_post");
        var dmdd = Attribution.IntegratedGradient(ctx, [spliceDown.ActsPostHook, "blocks.2.hook_resid_post.hook_sae_error"], 0, steps).MeanGradient[spliceDown.ActsPostHook];
        foreach (var d in targets)
        {
            double gd = dmdd[d.Pos * 80 + d.Index!.Value];
            var gf = new double[a.Length]; var ge = new double[e.Length]; var gx = new double[x.Length];
            for (int s = 0; s < steps; s++)
            {
                float alpha = (float)s / steps;
                var r = model.RunWithGradients([clean], Metric.OfFeature(d.Hook, d.Index!.Value, d.Pos), new GradientOptions
                {
                    Hooks = Attribution.Interpolation(group, corruptRows, len, _ => alpha), GradFilter = n => n.StartsWith("blocks.0.hook_resid_post", StringComparison.Ordinal), Splices = ctx.Splices,
                });
                var f = r.Gradients.Sequence(spliceUp.ActsPostHook, 0).Data; var er = r.Gradients.Sequence(errHook, 0).Data;
                for (int i = 0; i < gf.Length; i++) gf[i] += f[i] / steps;
                for (int i = 0; i < ge.Length; i++) ge[i] += er[i] / steps;
                // the residual node's own path: resid_post alone interpolated
                var rx = model.RunWithGradients([clean], Metric.OfFeature(d.Hook, d.Index!.Value, d.Pos), new GradientOptions
                {
                    Hooks = Attribution.Interpolation(["blocks.0.hook_resid_post"], new Dictionary<string, float[]> { ["blocks.0.hook_resid_post"] = x1 }, len, _ => alpha),
                    GradFilter = n => n == "blocks.0.hook_resid_post", Splices = ctx.Splices,
                });
                var gxs = rx.Gradients.Sequence("blocks.0.hook_resid_post", 0).Data;
                for (int i = 0; i < gx.Length; i++) gx[i] += gxs[i] / steps;
            }
            CheckTarget(d, gd, gf, ge, gx, (a, a1), (e, e1), (x, x1), C, byPair, seed, "IG ");
        }
    }

    /// <summary>
    /// The edges into target d from the upstream SAE's features (96 latents), its error and the residual-stream node at
    /// each position ≤ d's, against gd·g·(u′ − u) from the given gradients of d (gf latents, ge error, gx residual), each
    /// within 1e-4 of the target's largest edge (float32 sums of many terms: an edge a thousandth of the largest carries that
    /// one's rounding); and Σ over the SAE's nodes = Σ over the residual node's (features + error reconstruct it exactly).
    /// </summary>
    void CheckTarget(Node d, double gd, double[] gf, double[] ge, double[] gx, (float[] Clean, float[] Corrupt) latents, (float[] Clean, float[] Corrupt) error,
        (float[] Clean, float[] Corrupt) resid, int C, Dictionary<(Node, Node), double> byPair, int seed, string what)
    {
        var (a, a1) = latents; var (e, e1) = error; var (x, x1) = resid;
        double worst = 0, scale = 0, sumSae = 0, sumResid = 0;
        var vectorEdges = new List<(string What, double Ours, double Expected)>();
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
            double res = byPair.GetValueOrDefault((new Node(NodeKind.Resid, "blocks.0.hook_resid_post", p), d));
            vectorEdges.Add(($"{what}error edge at pos {p} into {d}", err, expErr));
            vectorEdges.Add(($"{what}resid edge at pos {p} into {d}", res, expResid));
            sumSae += err; sumResid += res;
        }
        scale = Math.Max(scale, vectorEdges.Count == 0 ? 0 : vectorEdges.Max(v => Math.Abs(v.Expected)));
        foreach (var (label, o, want) in vectorEdges)
            Assert.True(Math.Abs(o - want) <= 1e-4 * Math.Max(scale, 1e-3), $"{label}: {o:E5} vs {want:E5} (target's largest edge {scale:E3}; seed {seed})");
        Assert.True(worst <= 1e-4 * Math.Max(scale, 1e-3), $"{what}feature edges into {d}: worst difference {worst:E3} (largest {scale:E3}; seed {seed})");
        Assert.True(Math.Abs(sumSae - sumResid) <= 1e-4 * Math.Max(Math.Abs(sumResid), 1e-3), $"Σ SAE-node {what}edges {sumSae:E6} vs resid {what}edges {sumResid:E6} into {d} (seed {seed})");
        output.WriteLine($"{d}: Σ SAE {what}edges {sumSae:E6}, Σ resid {what}edges {sumResid:E6}");
    }
}
