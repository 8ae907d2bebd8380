using FeatureLens.Runtime.Models;
using FeatureLens.Runtime.Tensors;

namespace FeatureLens.Connections;

/// <summary>An edge u → d with its attribution weight (∂m/∂d)·(∂d/∂u)·(u′ − u).</summary>
public sealed record Edge(Node Source, Node Target, double Weight);

/// <summary>
/// Edges between nodes (CONNECTIONS.md "Edges", gradient version): for a downstream node d and an upstream node u,
/// edge(u→d) = (∂m/∂d)·(∂d/∂u)·(u′ − u), d's dependence on u through every path of the spliced model at the clean run (SAEs
/// with their error terms pass gradients as the real model does). Between SAE nodes these are Sparse Feature Circuits'
/// feature→feature edges (error nodes included); between component nodes they are edge attribution patching. One backward
/// pass per downstream node, batched: copy k of the clean prompt carries the seed ∂m/∂d_k at d_k's hook.
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
    public static List<Edge> Run(CircuitContext ctx, NodeSelection select, IReadOnlyList<Node> targets, int maxEdges = 1000, Action<int, int>? progress = null)
    {
        if (maxEdges <= 0) throw new ArgumentException($"--max-edges must be positive (got {maxEdges})");
        var groups = Attribution.Groups(ctx, select);
        var valueHooks = groups.SelectMany(g => g).ToList();
        var order = ctx.Model.HookPointNames.Concat(ctx.Saes.SelectMany(s => s.HookNames)).Distinct().ToList();
        int Rank(string hook) => ctx.Saes.FirstOrDefault(s => s.ActsPostHook == hook || s.InputHook + ".hook_sae_error" == hook) is { } s
            ? order.IndexOf(s.InputHook) : order.IndexOf(hook);
        foreach (var t in targets)
            if (!valueHooks.Contains(t.ValueHook)) throw new ArgumentException($"edge target {t} is not among the selected nodes' hooks");

        // ∂m/∂(value hook) at the clean run
        var set = new HashSet<string>(valueHooks, StringComparer.Ordinal);
        var clean = ctx.Model.RunWithGradients(ctx.Clean, Metric.PerSequence(ctx.Metrics), new GradientOptions { CacheFilter = set.Contains, Splices = ctx.Splices });
        int hs = ctx.Model.Config.DHead;
        var weights = new Dictionary<(Node, Node), double>();
        int done = 0;
        for (int b = 0; b < ctx.Clean.Length; b++)
        {
            int len = ctx.Clean[b].Length;
            var here = targets.Where(t => t.Pos < len).ToList();
            foreach (var chunk in here.Chunk(Math.Max(1, RowBudget / len)))
            {
                var seeds = new SeedObjective(chunk.Length);
                for (int k = 0; k < chunk.Length; k++)
                {
                    var d = chunk[k];
                    var g = Attribution.Rows(clean.Gradients[d.ValueHook], b, len);
                    int width = g.Length / len;
                    var (c0, cn) = d.Columns(width, hs);
                    if (!seeds.Seeds.TryGetValue(d.ValueHook, out var buf)) seeds.Seeds[d.ValueHook] = buf = new float[(long)chunk.Length * len * width];
                    int p0 = d.Pos < 0 ? 0 : d.Pos, p1 = d.Pos < 0 ? len : d.Pos + 1;
                    for (int p = p0; p < p1; p++)
                        Array.Copy(g, (long)p * width + c0, buf, ((long)k * len + p) * width + c0, cn);
                }
                var upstream = valueHooks.Where(h => chunk.Any(d => Rank(h) < Rank(d.ValueHook))).ToList();
                var up = new HashSet<string>(upstream, StringComparer.Ordinal);
                var r = ctx.Model.RunWithGradients(Enumerable.Repeat(ctx.Clean[b], chunk.Length).ToArray(), seeds,
                    new GradientOptions { GradFilter = up.Contains, Splices = ctx.Splices, ActiveLatentGradients = ctx.ActiveLatentsFor(Enumerable.Repeat(b, chunk.Length).ToArray()) });
                foreach (var hook in upstream)
                {
                    var a = ctx.CleanRows(hook, b);
                    var a1 = ctx.CorruptRows(hook, b);
                    for (int k = 0; k < chunk.Length; k++)
                    {
                        if (Rank(hook) >= Rank(chunk[k].ValueHook)) continue;
                        var g = Attribution.Rows(r.Gradients[hook], k, len);
                        foreach (var (u, w) in Attribution.NodeDots(ctx, select, hook, len, a, g, a1))
                            if (w != 0) weights[(u, chunk[k])] = weights.GetValueOrDefault((u, chunk[k])) + w;
                    }
                }
                progress?.Invoke(done += chunk.Length, targets.Count * ctx.Clean.Length);
            }
        }
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
