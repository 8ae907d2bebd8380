using FeatureLens.Runtime.Models;
using FeatureLens.Runtime.Tensors;

namespace FeatureLens.Connections;

/// <summary>How node effects are estimated.</summary>
public enum AttributionMethod { Gradient, IntegratedGradients, Exact }

/// <summary>Which nodes an attribution or patching run covers.</summary>
public sealed class NodeSelection
{
    /// <summary>Every SAE's feature and error nodes.</summary>
    public bool Saes { get; init; } = true;
    /// <summary>Component hooks (hook_resid_pre/mid/post, attn.hook_z — one node per head —, hook_mlp_out).</summary>
    public IReadOnlyList<string> Components { get; init; } = [];
    /// <summary>Attention heads as one node over every position (TransformerLens's all-position head sweep) instead of one per position.</summary>
    public bool HeadsAllPositions { get; init; }
}

/// <summary>Node effects for a metric, with the metric on the clean and corrupt runs.</summary>
public sealed class EffectsResult
{
    public required string Metric { get; init; }
    public required double Clean { get; init; }
    /// <summary>The metric on the corrupt prompts (null for ablations).</summary>
    public double? Corrupt { get; init; }
    public required AttributionMethod Method { get; init; }
    public int? Steps { get; init; }
    public required IReadOnlyList<NodeEffect> Nodes { get; init; }
}

/// <summary>
/// Attribution patching (CONNECTIONS.md "Effects"): effect(n) ≈ m(clean with n set to its corrupt value) − m(clean), by the
/// gradient at the clean run, (a′ − a)·∂m/∂a, or by integrated gradients (each SAE hook — latents and error together — or
/// component hook on its own: its nodes set to a + α(a′ − a), α = k/N for k = 0 … N−1, the gradient averaged). Every feature
/// active on the clean or corrupt run and every error/component node is reported, effects summed over the prompts.
/// </summary>
public static class Attribution
{
    /// <summary>Node effects by gradient or integrated gradients; <c>progress</c> is called with (done, total) gradient passes.</summary>
    public static EffectsResult Run(CircuitContext ctx, NodeSelection select, AttributionMethod method, int steps = 10, Action<int, int>? progress = null)
    {
        if (method == AttributionMethod.Exact) throw new ArgumentException("exact effects come from Patching.Run");
        if (method == AttributionMethod.IntegratedGradients && steps < 1) throw new ArgumentException($"--steps must be at least 1 (got {steps})");
        var groups = Groups(ctx, select);
        var acc = new EffectAccumulator();
        var objective = Metric.PerSequence(ctx.Metrics);
        double clean;
        if (method == AttributionMethod.Gradient)
        {
            var hooks = new HashSet<string>(groups.SelectMany(g => g), StringComparer.Ordinal);
            using var r = ctx.Model.RunWithGradients(ctx.Clean, objective, new GradientOptions
            {
                CacheFilter = hooks.Contains, Splices = ctx.Splices, ActiveLatentGradients = ctx.ActiveLatentsFor([.. Enumerable.Range(0, ctx.Clean.Length)]),
            });
            progress?.Invoke(1, 1);
            clean = r.Value;
            for (int b = 0; b < ctx.Clean.Length; b++)
                foreach (var hook in hooks)
                    Accumulate(ctx, select, acc, hook, b, Rows(r.Activations[hook], b, ctx.Clean[b].Length), Rows(r.Gradients[hook], b, ctx.Clean[b].Length), ctx.CorruptRows(hook, b));
        }
        else
        {
            clean = ctx.CleanMetricValues().Sum(v => (double)v);
            int done = 0, total = groups.Count * ctx.Clean.Length;
            foreach (var group in groups)
                for (int b = 0; b < ctx.Clean.Length; b++)
                {
                    var (a, g) = IntegratedGradient(ctx, group, b, steps);
                    foreach (var hook in group) Accumulate(ctx, select, acc, hook, b, a[hook], g[hook], ctx.CorruptRows(hook, b));
                    progress?.Invoke(++done, total);
                }
        }
        return new EffectsResult
        {
            Metric = MetricName(ctx), Clean = clean, Corrupt = CorruptMetric(ctx), Method = method,
            Steps = method == AttributionMethod.IntegratedGradients ? steps : null, Nodes = acc.Results(),
        };
    }

    /// <summary>
    /// Integrated gradients of one hook group for clean prompt <paramref name="b"/>: N copies of the prompt, copy k with the
    /// group's values set to a + (k/N)(a′ − a), in one batched forward and backward; returns the clean rows and the mean gradient.
    /// </summary>
    public static (Dictionary<string, float[]> Clean, Dictionary<string, float[]> MeanGradient) IntegratedGradient(CircuitContext ctx, IReadOnlyList<string> group, int b, int steps)
    {
        int len = ctx.Clean[b].Length;
        var corrupt = group.ToDictionary(h => h, h => ctx.CorruptRows(h, b), StringComparer.Ordinal);
        var clean = new Dictionary<string, float[]>(StringComparer.Ordinal);
        var sums = group.ToDictionary(h => h, h => new float[corrupt[h].Length], StringComparer.Ordinal);
        int perRun = Math.Max(1, Math.Min(steps, 4096 / len));
        for (int k0 = 0; k0 < steps; k0 += perRun)
        {
            int n = Math.Min(perRun, steps - k0);
            var tokens = Enumerable.Repeat(ctx.Clean[b], n).ToArray();
            int first = k0;
            var hooks = Interpolation(group, corrupt, len, c => (float)(first + c) / steps, (h, rows) => clean.TryAdd(h, rows));
            var set = new HashSet<string>(group, StringComparer.Ordinal);
            using var r = ctx.Model.RunWithGradients(tokens, Metric.PerSequence(Enumerable.Repeat(ctx.Metrics[b], n).ToList()),
                new GradientOptions { Hooks = hooks, GradFilter = set.Contains, Splices = ctx.Splices, ActiveLatentGradients = ctx.ActiveLatentsFor(Enumerable.Repeat(b, n).ToArray()) });
            foreach (var h in group)
                for (int c = 0; c < n; c++)
                {
                    var g = Rows(r.Gradients[h], c, len);
                    var s = sums[h];
                    for (int i = 0; i < s.Length; i++) s[i] += g[i];
                }
        }
        foreach (var s in sums.Values) for (int i = 0; i < s.Length; i++) s[i] /= steps;
        return (clean, sums);
    }

    /// <summary>
    /// Hook functions that set <paramref name="group"/>'s values in copy c of a batch of copies of one prompt (of
    /// <paramref name="len"/> tokens) to a + α(c)·(a′ − a), a′ being <paramref name="corrupt"/>'s rows; <paramref name="onClean"/>
    /// sees each hook's clean rows (of copy 0, before they change).
    /// </summary>
    internal static List<(string, HookFunction)> Interpolation(IReadOnlyList<string> group, IReadOnlyDictionary<string, float[]> corrupt, int len,
        Func<int, float> alpha, Action<string, float[]>? onClean = null) =>
        group.Select(h => (h, (HookFunction)((t, _) =>
        {
            int copies = t.Shape[0], T = t.Shape[1], width = (int)(t.Length / ((long)copies * T));
            var a1 = corrupt[h];
            for (int c = 0; c < copies; c++)
            {
                float al = alpha(c);
                var rows = t.Data.AsSpan(c * T * width, len * width);
                if (c == 0) onClean?.Invoke(h, rows.ToArray());
                for (int i = 0; i < rows.Length; i++) rows[i] += al * (a1[i] - rows[i]);
            }
            return null;
        }))).ToList();

    /// <summary>The hook groups interpolated together: each SAE's latents with its error, each component hook alone.</summary>
    public static List<string[]> Groups(CircuitContext ctx, NodeSelection select)
    {
        var groups = new List<string[]>();
        if (select.Saes) groups.AddRange(ctx.Saes.Select(s => new[] { s.ActsPostHook, s.InputHook + ".hook_sae_error" }));
        foreach (var c in select.Components)
        {
            Node.CheckComponentHook(ctx.Model, c);
            groups.Add([c]);
        }
        if (groups.Count == 0) throw new ArgumentException("no nodes selected: give SAEs (--sae) or component hooks (--components)");
        return groups;
    }

    /// <summary>(len, width) rows of sequence <paramref name="b"/> of a [B, T, width] tensor.</summary>
    internal static float[] Rows(Tensor t, int b, int len)
    {
        int T = t.Shape[1];
        long width = t.Length / ((long)t.Shape[0] * T);
        var rows = new float[len * width];
        Array.Copy(t.Data, b * T * width, rows, 0, len * width);
        return rows;
    }

    /// <summary>Adds the effects of every node at <paramref name="hook"/> for prompt b: (a′ − a)·g over the node's columns.</summary>
    static void Accumulate(CircuitContext ctx, NodeSelection select, EffectAccumulator acc, string hook, int b, float[] a, float[] g, float[] a1)
    {
        int width = a.Length / ctx.Clean[b].Length;
        foreach (var (node, effect) in NodeDots(ctx, select, hook, ctx.Clean[b].Length, a, g, a1))
        {
            bool feature = node.Kind == NodeKind.Feature;
            int i = feature ? node.Pos * width + node.Index!.Value : 0;
            acc.Add(node, effect, feature ? a[i] : null, feature ? a1[i] : null);
        }
    }

    /// <summary>
    /// (a′ − a)·g over each node's columns, for every node of <paramref name="hook"/> over <paramref name="len"/> positions:
    /// features active on the clean or corrupt run, the error, or the component's rows (or heads) — a head node over all
    /// positions appears once per position, to be summed.
    /// </summary>
    internal static IEnumerable<(Node Node, double Dot)> NodeDots(CircuitContext ctx, NodeSelection select, string hook, int len, float[] a, float[] g, float[] a1)
    {
        int width = a.Length / len;
        var sae = ctx.Saes.FirstOrDefault(s => s.ActsPostHook == hook || s.InputHook + ".hook_sae_error" == hook);
        if (sae != null && hook == sae.ActsPostHook)
        {
            for (int p = 0; p < len; p++)
                for (int j = 0; j < width; j++)
                {
                    int i = p * width + j;
                    if (a[i] == 0 && a1[i] == 0) continue;
                    yield return (new Node(NodeKind.Feature, sae.InputHook, p, j), ((double)a1[i] - a[i]) * g[i]);
                }
            yield break;
        }
        var kind = sae != null ? NodeKind.Error : Node.ComponentKind(hook)!.Value;
        string nodeHook = sae != null ? sae.InputHook : hook;
        int hs = ctx.Model.Config.DHead;
        int units = kind == NodeKind.Attn ? ctx.Model.Config.NHeads : 1;
        for (int p = 0; p < len; p++)
            for (int u = 0; u < units; u++)
            {
                var node = new Node(kind, nodeHook, kind == NodeKind.Attn && select.HeadsAllPositions ? -1 : p, kind == NodeKind.Attn ? u : null);
                var (c0, cn) = node.Columns(width, hs);
                double e = 0;
                for (int c = c0; c < c0 + cn; c++) { int i = p * width + c; e += ((double)a1[i] - a[i]) * g[i]; }
                yield return (node, e);
            }
    }

    internal static string MetricName(CircuitContext ctx)
    {
        var names = ctx.Metrics.Select(m => m.ToString()).Distinct().ToList();
        return names.Count == 1 ? names[0] : string.Join(" + ", names);
    }

    /// <summary>The metric on the corrupt prompts, summed (null for ablations).</summary>
    internal static double? CorruptMetric(CircuitContext ctx) => ctx.CorruptMetricValues()?.Sum(v => (double)v);
}

/// <summary>Effects summed over prompts per node, in first-seen order.</summary>
internal sealed class EffectAccumulator
{
    readonly Dictionary<Node, (double Effect, double? Clean, double? Corrupt)> _effects = [];
    readonly List<Node> _order = [];

    public void Add(Node node, double effect, double? clean, double? corrupt)
    {
        if (_effects.TryGetValue(node, out var e))
            _effects[node] = (e.Effect + effect, Sum(e.Clean, clean), Sum(e.Corrupt, corrupt));
        else { _effects[node] = (effect, clean, corrupt); _order.Add(node); }
    }

    public bool Contains(Node node) => _effects.ContainsKey(node);

    static double? Sum(double? x, double? y) => x is null && y is null ? null : (x ?? 0) + (y ?? 0);

    public List<NodeEffect> Results() => _order.Select(n => { var e = _effects[n]; return new NodeEffect(n, e.Effect, e.Clean, e.Corrupt); }).ToList();
}
