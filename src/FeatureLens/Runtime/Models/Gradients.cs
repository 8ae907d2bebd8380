using FeatureLens.Runtime.Tensors;

namespace FeatureLens.Runtime.Models;

/// <summary>
/// A scalar of one forward pass to differentiate (a metric): its value for each sequence of a batch, and its gradient
/// with respect to the logits and, for metrics that read hook activations (an SAE latent, say), seeds at those hooks.
/// </summary>
public interface IObjective
{
    /// <summary>Hook points whose forward activations the objective reads (they are cached for it).</summary>
    IReadOnlyCollection<string> ReadsHooks { get; }

    /// <summary>Throws a clear error when the objective does not fit the model, the batch or the hook points.</summary>
    void Validate(ModelConfig config, int[][] tokens, IReadOnlyCollection<string> hookNames);

    /// <summary>Values per sequence and the gradient of their sum. <paramref name="logits"/> is (B,T,V).</summary>
    ObjectiveGradient Evaluate(Tensor logits, ActivationCache reads, int[][] tokens);
}

/// <summary>An objective's values and gradients.</summary>
public sealed class ObjectiveGradient
{
    /// <summary>The value for each sequence (the objective is their sum).</summary>
    public required float[] Values { get; init; }
    /// <summary>Rows r = b·T + t of the logits with a nonzero gradient.</summary>
    public int[] LogitRows { get; init; } = [];
    /// <summary>Their gradients, (LogitRows.Length, V).</summary>
    public float[] LogitGradients { get; init; } = [];
    /// <summary>Gradients added at hook points, each a full [batch, pos, ...] buffer.</summary>
    public Dictionary<string, float[]> HookSeeds { get; } = new(StringComparer.Ordinal);
}

/// <summary>Options of <see cref="HookedTransformer.RunWithGradients"/>.</summary>
public sealed class GradientOptions
{
    /// <summary>Forward hooks for this run (e.g. patches); their edits count as constants in the backward.</summary>
    public IReadOnlyList<(string Name, HookFunction Fn)> Hooks { get; init; } = [];
    /// <summary>Backward hooks: each gets the gradient at its hook point and may edit it in place or return a replacement.</summary>
    public IReadOnlyList<(string Name, HookFunction Fn)> BackwardHooks { get; init; } = [];
    /// <summary>Forward activations to keep (null: none).</summary>
    public Func<string, bool>? CacheFilter { get; init; }
    /// <summary>Gradients to keep (null: the same hooks as <see cref="CacheFilter"/>).</summary>
    public Func<string, bool>? GradFilter { get; init; }
    /// <summary>Splices (SAEs, transcoders) for this run, in addition to attached ones.</summary>
    public IReadOnlyList<IHookSplice> Splices { get; init; } = [];

    /// <summary>
    /// SAE latent hooks (<c>{hook}.hook_sae_acts_post</c>) whose gradient is needed only where a latent is active — on this run,
    /// or nonzero in the given [batch, pos, d_sae] tensor (e.g. the corrupt run's latents; null: this run only). Their
    /// gradients elsewhere are not computed and read 0: attribution needs (a′ − a)·∂m/∂a, which is 0 there, and skips the
    /// dense W_dec·g product. Gradients upstream of the SAE are unchanged.
    /// </summary>
    public IReadOnlyDictionary<string, Tensor?>? ActiveLatentGradients { get; init; }
}

/// <summary>What <see cref="HookedTransformer.RunWithGradients"/> returns.</summary>
public sealed class GradientResult : IDisposable
{
    /// <summary>Hands the caches' buffers back for reuse (<see cref="ActivationCache.Dispose"/>).</summary>
    public void Dispose()
    {
        Activations.Dispose();
        Gradients.Dispose();
        BufferPool.Return(Logits.Data);
    }

    /// <summary>The objective summed over the batch.</summary>
    public required float Value { get; init; }
    /// <summary>The objective of each sequence.</summary>
    public required float[] Values { get; init; }
    /// <summary>Logits (B, T, V), padded positions zero.</summary>
    public required Tensor Logits { get; init; }
    /// <summary>The forward activations asked for, [batch, pos, ...].</summary>
    public required ActivationCache Activations { get; init; }
    /// <summary>Their gradients (the objective's derivative with respect to each entry), same names and shapes.</summary>
    public required ActivationCache Gradients { get; init; }
}
