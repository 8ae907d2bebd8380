using System.Globalization;
using FeatureLens.Runtime.Models;

namespace FeatureLens.Connections;

/// <summary>The kinds of node of CONNECTIONS.md.</summary>
public enum NodeKind { Feature, Error, Resid, Attn, Mlp }

/// <summary>
/// A node: an SAE latent at a position (<see cref="NodeKind.Feature"/>, <see cref="Hook"/> = the SAE's hook), an SAE's error
/// term at a position (<see cref="NodeKind.Error"/>), or a component at a position — the residual stream at a
/// hook_resid_pre/mid/post (<see cref="NodeKind.Resid"/>), one head's hook_z (<see cref="NodeKind.Attn"/>, <see cref="Index"/> = the
/// head) or hook_mlp_out (<see cref="NodeKind.Mlp"/>).
/// </summary>
public sealed record Node(NodeKind Kind, string Hook, int Pos, int? Index = null)
{
    /// <summary>The hook whose activation holds the node's value.</summary>
    public string ValueHook => Kind switch
    {
        NodeKind.Feature => Hook + ".hook_sae_acts_post",
        NodeKind.Error => Hook + ".hook_sae_error",
        _ => Hook,
    };

    /// <summary>True for nodes whose value is a vector (errors and components) rather than one latent.</summary>
    public bool IsVector => Kind != NodeKind.Feature;

    /// <summary>The JSON/CSV name of the kind.</summary>
    public string KindName => Kind.ToString().ToLowerInvariant();

    /// <summary>Columns [start, start+count) of the value hook's per-position row that hold this node.</summary>
    public (int Start, int Count) Columns(int rowWidth, int headSize) => Kind switch
    {
        NodeKind.Feature => (Index!.Value, 1),
        NodeKind.Attn => (Index!.Value * headSize, headSize),
        _ => (0, rowWidth),
    };

    public override string ToString() => Index is int i
        ? string.Create(CultureInfo.InvariantCulture, $"{KindName} {Hook}[{i}]@{Pos}")
        : string.Create(CultureInfo.InvariantCulture, $"{KindName} {Hook}@{Pos}");

    /// <summary>The node kind of a component hook (resid_pre/mid/post, attn.hook_z, hook_mlp_out), or null.</summary>
    public static NodeKind? ComponentKind(string hook) =>
        hook.EndsWith("hook_resid_pre", StringComparison.Ordinal) || hook.EndsWith("hook_resid_mid", StringComparison.Ordinal) || hook.EndsWith("hook_resid_post", StringComparison.Ordinal)
            ? NodeKind.Resid
            : hook.EndsWith("attn.hook_z", StringComparison.Ordinal) ? NodeKind.Attn
            : hook.EndsWith("hook_mlp_out", StringComparison.Ordinal) ? NodeKind.Mlp : null;

    /// <summary>The layer a hook belongs to (blocks.L.…), −1 otherwise.</summary>
    public static int LayerOf(string hook)
    {
        if (!hook.StartsWith("blocks.", StringComparison.Ordinal)) return -1;
        int dot = hook.IndexOf('.', 7);
        return dot > 7 && int.TryParse(hook.AsSpan(7, dot - 7), NumberStyles.None, CultureInfo.InvariantCulture, out int l) ? l : -1;
    }

    /// <summary>Checks that a component hook exists in the model and is one of the kinds above.</summary>
    public static void CheckComponentHook(HookedTransformer model, string hook)
    {
        model.CheckHookName(hook);
        if (ComponentKind(hook) is null)
            throw new ArgumentException($"'{hook}' is not a component node hook: expected blocks.L.hook_resid_pre/mid/post, blocks.L.attn.hook_z or blocks.L.hook_mlp_out");
    }
}

/// <summary>A node with its values and effect, as <c>attribute</c> and <c>patch</c> report it.</summary>
public sealed record NodeEffect(Node Node, double Effect, double? Clean, double? Corrupt);
