using FeatureLens.Runtime.Models;
using FeatureLens.Runtime.Tensors;

namespace FeatureLens.Connections;

/// <summary>An edge u → d with its attribution weight (∂m/∂d)·(∂d/∂u)·(u′ − u).</summary>
public sealed record Edge(Node Source, Node Target, double Weight);

/// <summary>
/// Edges between nodes (CONNECTIONS.md "Edges"): for a downstream node d and an upstream node u,
/// edge(u→d) = (∂m/∂d)·(∂d/∂u)·(u′ − u), d's dependence on u through every path of the spliced model (SAEs with their error
/// terms pass gradients as the real model does). Between SAE nodes these are Sparse Feature Circuits' feature→feature edges
/// (error nodes included); between component nodes they are edge attribution patching. One backward pass per downstream
/// node, batched: copy k of the clean prompt carries the seed ∂m/∂d_k at d_k's hook.
/// <para>Gradient version: both factors at the clean run. Integrated-gradients version (N steps): ∂m/∂d is d's hook group's
/// IG mean gradient (the one its node effect uses), and ∂d/∂u is averaged over the same path as u's node effect — u's hook
/// group (an SAE's latents and error together, or one component hook) set to u + (k/N)(u′ − u), k = 0 … N−1, the rest of the
/// model computed normally. With N = 1 the two versions coincide.</para>
/// </summary>
public static class Edges
{
    /// <summary>Rows (sequences × positions) per batched backward.</summary>
    public static int RowBudget { get; set; } = 2048;

    /// <summary>
    /// Edges into each of <c>targets</c> from every node of <c>select</c> at an earlier hook (features active on the clean or
    /// corrupt run, errors, components), summed over prompts; the <c>maxEdges</c> of largest |weight| are kept.
    /// <c>progress</c> is called with (targets done, total).
    /// </summary>
    public static List<Edge> Run(CircuitContext ctx, NodeSelection select, IReadOnlyList<Node> targets, int maxEdges = 1000, Action<int, int>? progress = null,
        AttributionMethod method = AttributionMethod.Gradient, int steps = 10)
    {
        if (maxEdges <= 0) throw new ArgumentException($"--max-edges must be positive (got {maxEdges})");
        if (method == AttributionMethod.Exact) throw new ArgumentException("edges are estimated by gradient or ig, not exactly");
        if (method == AttributionMethod.IntegratedGradients && steps < 1) throw new ArgumentException($"--steps must be at least 1 (got {steps})");
        bool ig = method == AttributionMethod.IntegratedGradients;
        var groups = Attribution.Groups(ctx, select);
        var valueHooks = groups.SelectMany(g => g).ToList();
        var order = ctx.Model.HookPointNames.Concat(ctx.Saes.SelectMany(s => s.HookNames)).Distinct().ToList();
        int Rank(string hook) => ctx.Saes.FirstOrDefault(s => s.ActsPostHook == hook || s.InputHook + ".hook_sae_error" == hook) is { } s
            ? order.IndexOf(s.InputHook) : order.IndexOf(hook);
        foreach (var t in targets)
            if (!valueHooks.Contains(t.ValueHook)) throw new ArgumentException($"edge target {t} is not among the selected nodes' hooks");
        string[] GroupOf(string hook) => groups.First(g => g.Contains(hook));

        // ∂m/∂(value hook): at the clean run, or the IG mean gradient of the target's group (computed once per group and prompt)
        var set = new HashSet<string>(valueHooks, StringComparer.Ordinal);
        var clean = ig ? null : ctx.Model.RunWithGradients(ctx.Clean, Metric.PerSequence(ctx.Metrics), new GradientOptions { CacheFilter = set.Contains, Splices = ctx.Splices });
        var igGradients = new Dictionary<(string[], int), Dictionary<string, float[]>>();
        float[] DmDd(Node d, int b, int len)
        {
            if (!ig) return Attribution.Rows(clean!.Gradients[d.ValueHook], b, len);
            var g = GroupOf(d.ValueHook);
            if (!igGradients.TryGetValue((g, b), out var mean)) igGradients[(g, b)] = mean = Attribution.IntegratedGradient(ctx, g, b, steps).MeanGradient;
            return mean[d.ValueHook];
        }

        int hs = ctx.Model.Config.DHead;
        var weights = new Dictionary<(Node, Node), double>();
        int done = 0, total = targets.Count * ctx.Clean.Length;
        for (int b = 0; b < ctx.Clean.Length; b++)
        {
            int len = ctx.Clean[b].Length;
            var here = targets.Where(t => t.Pos < len).ToList();
            // gradient: one pass per chunk reads every upstream hook; IG: one pass per chunk and upstream group, N copies per target
            var passes = ig ? groups.Select(g => (IReadOnlyList<string>)g).ToList() : [valueHooks];
            int copiesPerTarget = ig ? steps : 1;
            foreach (var chunk in here.Chunk(Math.Max(1, RowBudget / (len * copiesPerTarget))))
            {
                foreach (var pass in passes)
                {
                    var upstream = pass.Where(h => chunk.Any(d => Rank(h) < Rank(d.ValueHook))).ToList();
                    if (upstream.Count == 0) continue;
                    int copies = chunk.Length * copiesPerTarget;
                    var seeds = new SeedObjective(copies);
                    for (int k = 0; k < chunk.Length; k++)
                    {
                        var d = chunk[k];
                        var g = DmDd(d, b, len);
                        int width = g.Length / len;
                        var (c0, cn) = d.Columns(width, hs);
                        if (!seeds.Seeds.TryGetValue(d.ValueHook, out var buf)) seeds.Seeds[d.ValueHook] = buf = new float[(long)copies * len * width];
                        int p0 = d.Pos < 0 ? 0 : d.Pos, p1 = d.Pos < 0 ? len : d.Pos + 1;
                        for (int s = 0; s < copiesPerTarget; s++)
                            for (int p = p0; p < p1; p++)
                                Array.Copy(g, (long)p * width + c0, buf, ((long)(k * copiesPerTarget + s) * len + p) * width + c0, cn);
                    }
                    var up = new HashSet<string>(upstream, StringComparer.Ordinal);
                    var hooks = ig ? Attribution.Interpolation(pass, pass.ToDictionary(h => h, h => ctx.CorruptRows(h, b), StringComparer.Ordinal), len,
                        c => (float)(c % steps) / steps) : [];
                    using var r = ctx.Model.RunWithGradients(Enumerable.Repeat(ctx.Clean[b], copies).ToArray(), seeds, new GradientOptions
                    {
                        Hooks = hooks, GradFilter = up.Contains, Splices = ctx.Splices, ActiveLatentGradients = ctx.ActiveLatentsFor(Enumerable.Repeat(b, copies).ToArray()),
                    });
                    foreach (var hook in upstream)
                    {
                        var a = ctx.CleanRows(hook, b);
                        var a1 = ctx.CorruptRows(hook, b);
                        for (int k = 0; k < chunk.Length; k++)
                        {
                            if (Rank(hook) >= Rank(chunk[k].ValueHook)) continue;
                            var g = Attribution.Rows(r.Gradients[hook], k * copiesPerTarget, len);
                            for (int s = 1; s < copiesPerTarget; s++)
                            {
                                var gs = Attribution.Rows(r.Gradients[hook], k * copiesPerTarget + s, len);
                                for (int i = 0; i < g.Length; i++) g[i] += gs[i];
                            }
                            if (copiesPerTarget > 1) for (int i = 0; i < g.Length; i++) g[i] /= copiesPerTarget;
                            foreach (var (u, w) in Attribution.NodeDots(ctx, select, hook, len, a, g, a1))
                                if (w != 0) weights[(u, chunk[k])] = weights.GetValueOrDefault((u, chunk[k])) + w;
                        }
                    }
                }
                progress?.Invoke(done += chunk.Length, total);
            }
        }
        clean?.Dispose();
        return weights.Select(kv => new Edge(kv.Key.Item1, kv.Key.Item2, kv.Value))
            .OrderByDescending(e => Math.Abs(e.Weight)).Take(maxEdges).ToList();
    }

    /// <summary>An objective that is only seeds at hooks: its value is 0, its gradient the seeds.</summary>
    sealed class SeedObjective(int sequences) : IObjective
    {
        public Dictionary<string, float[]> Seeds { get; } = new(StringComparer.Ordinal);
        public IReadOnlyCollection<string> ReadsHooks => [];
        public void Validate(ModelConfig config, int[][] tokens, IReadOnlyCollection<string> hookNames) { }
        public ObjectiveGradient Evaluate(Tensor logits, ActivationCache reads, int[][] tokens)
        {
            var g = new ObjectiveGradient { Values = new float[sequences] };
            // seeds are (copies, len, width) and every copy is the same prompt, so they are the hook's (B, T, width) buffer
            foreach (var (hook, seed) in Seeds) g.HookSeeds[hook] = seed;
            return g;
        }
    }
}
