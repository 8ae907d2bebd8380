using System.Text.Json;

namespace FeatureLens.Connections;

/// <summary>
/// The node lists of TransformerLens-style patching sweeps — resid_pre by layer × position, head outputs by layer × head
/// (× position), mlp_out by layer × position — of every SAE node, and of the top nodes of an earlier attribution run.
/// </summary>
public static class Sweeps
{
    public static List<Node> ResidPre(CircuitContext ctx) => ByLayer(ctx, l => $"blocks.{l}.hook_resid_pre", NodeKind.Resid);

    public static List<Node> MlpOut(CircuitContext ctx) => ByLayer(ctx, l => $"blocks.{l}.hook_mlp_out", NodeKind.Mlp);

    /// <summary>Every head of every layer, at each position or (<paramref name="allPositions"/>) over all positions at once.</summary>
    public static List<Node> Heads(CircuitContext ctx, bool allPositions)
    {
        var nodes = new List<Node>();
        int len = ctx.Clean.Max(c => c.Length);
        for (int l = 0; l < ctx.Model.Config.NLayers; l++)
            for (int h = 0; h < ctx.Model.Config.NHeads; h++)
                if (allPositions) nodes.Add(new Node(NodeKind.Attn, $"blocks.{l}.attn.hook_z", -1, h));
                else for (int p = 0; p < len; p++) nodes.Add(new Node(NodeKind.Attn, $"blocks.{l}.attn.hook_z", p, h));
        return nodes;
    }

    static List<Node> ByLayer(CircuitContext ctx, Func<int, string> hook, NodeKind kind)
    {
        var nodes = new List<Node>();
        int len = ctx.Clean.Max(c => c.Length);
        for (int l = 0; l < ctx.Model.Config.NLayers; l++)
            for (int p = 0; p < len; p++) nodes.Add(new Node(kind, hook(l), p));
        return nodes;
    }

    /// <summary>Every error node and every feature active (nonzero) on a clean or corrupt run, of every SAE.</summary>
    public static List<Node> SaeNodes(CircuitContext ctx)
    {
        var set = new HashSet<Node>();
        var nodes = new List<Node>();
        foreach (var s in ctx.Saes)
            for (int b = 0; b < ctx.Clean.Length; b++)
            {
                int len = ctx.Clean[b].Length, w = s.Sae.DSae;
                var a = ctx.CleanRows(s.ActsPostHook, b);
                var a1 = ctx.CorruptRows(s.ActsPostHook, b);
                for (int p = 0; p < len; p++)
                {
                    for (int j = 0; j < w; j++)
                        if ((a[p * w + j] != 0 || a1[p * w + j] != 0) && set.Add(new Node(NodeKind.Feature, s.InputHook, p, j))) nodes.Add(new Node(NodeKind.Feature, s.InputHook, p, j));
                    if (set.Add(new Node(NodeKind.Error, s.InputHook, p))) nodes.Add(new Node(NodeKind.Error, s.InputHook, p));
                }
            }
        return nodes;
    }

    /// <summary>The <paramref name="top"/> nodes of largest |effect| in an attribute/patch JSON file.</summary>
    public static List<Node> FromFile(string path, int top)
    {
        if (top <= 0) throw new ArgumentException($"--top must be positive (got {top})");
        var result = EffectsJson.Read(path);
        return result.Nodes.OrderByDescending(n => Math.Abs(n.Effect)).Take(top).Select(n => n.Node).ToList();
    }
}
