using FeatureLens.Runtime.Models;

namespace FeatureLens.Connections;

/// <summary>
/// Activation patching (exact): effect(n) = m(clean run with node n alone set to its corrupt value) − m(clean). A feature is
/// set by editing its latent before decoding (the error term stays the clean one); an error node by replacing the error at
/// its position; a component by replacing its slice of the hook's activation (all positions for a head node with
/// position −1). Patched runs are batched: each sequence of a batch is the clean prompt with one node patched.
/// </summary>
public static class Patching
{
    /// <summary>Rows (sequences × positions) per batched forward pass.</summary>
    public static int RowBudget { get; set; } = 2048;

    /// <summary>Exact effects of <c>nodes</c>, one patched run each; <c>progress</c> is called with (nodes done, total).</summary>
    public static EffectsResult Run(CircuitContext ctx, IReadOnlyList<Node> nodes, Action<int, int>? progress = null)
    {
        foreach (var n in nodes) Check(ctx, n);
        var clean = ctx.CleanMetricValues();
        var acc = new EffectAccumulator();
        int done = 0, total = nodes.Count * ctx.Clean.Length;
        for (int b = 0; b < ctx.Clean.Length; b++)
        {
            int len = ctx.Clean[b].Length;
            var here = nodes.Where(n => n.Pos < len).ToList();
            int perRun = Math.Max(1, RowBudget / len);
            foreach (var chunk in here.Chunk(perRun))
            {
                var values = PatchedValues(ctx, b, chunk.Select(n => new[] { n }).ToList());
                for (int i = 0; i < chunk.Length; i++)
                {
                    var (cleanValue, corruptValue) = FeatureValues(ctx, b, chunk[i]);
                    acc.Add(chunk[i], (double)values[i] - clean[b], cleanValue, corruptValue);
                }
                progress?.Invoke(done += chunk.Length, total);
            }
            progress?.Invoke(done = (b + 1) * nodes.Count, total);
        }
        foreach (var n in nodes.Where(n => !acc.Contains(n))) acc.Add(n, 0, null, null);
        return new EffectsResult
        {
            Metric = Attribution.MetricName(ctx), Clean = clean.Sum(v => (double)v), Corrupt = Attribution.CorruptMetric(ctx),
            Method = AttributionMethod.Exact, Nodes = acc.Results(),
        };
    }

    /// <summary>
    /// The metric of clean prompt <paramref name="b"/> with each set of nodes patched together (one sequence per set) — e.g.
    /// every node of one hook for an IG completeness check.
    /// </summary>
    public static float[] PatchedValues(CircuitContext ctx, int b, IReadOnlyList<Node[]> patchSets)
    {
        int len = ctx.Clean[b].Length, hs = ctx.Model.Config.DHead;
        var byHook = new Dictionary<string, List<(int Seq, Node Node)>>(StringComparer.Ordinal);
        for (int s = 0; s < patchSets.Count; s++)
            foreach (var n in patchSets[s])
            {
                if (!byHook.TryGetValue(n.ValueHook, out var list)) byHook[n.ValueHook] = list = [];
                list.Add((s, n));
            }
        var hooks = byHook.Select(kv =>
        {
            var corrupt = ctx.CorruptRows(kv.Key, b);
            var edits = kv.Value;
            return (kv.Key, (HookFunction)((t, _) =>
            {
                int T = t.Shape[1], width = (int)(t.Length / ((long)t.Shape[0] * T));
                foreach (var (seq, node) in edits)
                {
                    var (c0, cn) = node.Columns(width, hs);
                    int p0 = node.Pos < 0 ? 0 : node.Pos, p1 = node.Pos < 0 ? len : node.Pos + 1;
                    for (int p = p0; p < p1; p++)
                        Array.Copy(corrupt, (long)p * width + c0, t.Data, ((long)seq * T + p) * width + c0, cn);
                }
                return null;
            }));
        }).ToList();
        var tokens = Enumerable.Repeat(ctx.Clean[b], patchSets.Count).ToArray();
        return ctx.MetricValues(tokens, Enumerable.Repeat(b, patchSets.Count).ToArray(), hooks);
    }

    /// <summary>Clean and corrupt values of a feature node (null for vector nodes).</summary>
    static (double?, double?) FeatureValues(CircuitContext ctx, int b, Node n)
    {
        if (n.Kind != NodeKind.Feature) return (null, null);
        int width = ctx.RowWidth(n.ValueHook);
        int i = n.Pos * width + n.Index!.Value;
        return (ctx.CleanRows(n.ValueHook, b)[i], ctx.CorruptRows(n.ValueHook, b)[i]);
    }

    static void Check(CircuitContext ctx, Node n)
    {
        int maxLen = ctx.Clean.Max(c => c.Length);
        if (n.Pos >= maxLen || n.Pos < -1 || (n.Pos == -1 && n.Kind != NodeKind.Attn))
            throw new ArgumentException($"node {n}: position {n.Pos} is outside the prompt ({maxLen} tokens)");
        switch (n.Kind)
        {
            case NodeKind.Feature:
            {
                var sae = ctx.SaeAt(n.Hook);
                if (n.Index is not int i || i < 0 || i >= sae.Sae.DSae) throw new ArgumentException($"node {n}: latent {n.Index} is outside the SAE at '{n.Hook}' ({sae.Sae.DSae} latents)");
                break;
            }
            case NodeKind.Error: ctx.SaeAt(n.Hook); break;
            default:
            {
                Node.CheckComponentHook(ctx.Model, n.Hook);
                if (Node.ComponentKind(n.Hook) != n.Kind) throw new ArgumentException($"node {n}: '{n.Hook}' holds {Node.ComponentKind(n.Hook)!.Value.ToString().ToLowerInvariant()} nodes, not {n.KindName}");
                if (n.Kind == NodeKind.Attn && (n.Index is not int h || h < 0 || h >= ctx.Model.Config.NHeads))
                    throw new ArgumentException($"node {n}: head {n.Index} is outside the model's {ctx.Model.Config.NHeads} heads");
                break;
            }
        }
    }
}
