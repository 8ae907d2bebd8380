using System.Text.RegularExpressions;
using FeatureLens.Runtime.Tensors;

namespace FeatureLens.Runtime.Models;

/// <summary>
/// A function run at a named hook point. It receives the activation (shape [batch, pos, ...], sharing
/// the forward pass's memory, so in-place edits take effect) and may return a replacement of the same
/// shape, or null to keep the (possibly edited) activation.
/// </summary>
public delegate Tensor? HookFunction(Tensor activation, HookPoint hook);

/// <summary>Where a hook fired: the TransformerLens name and the layer (−1 outside blocks).</summary>
public sealed record HookPoint(string Name, int Layer);

/// <summary>Activations kept by a run, keyed by hook name. Tensors are [batch, pos, ...].</summary>
public sealed class ActivationCache : Dictionary<string, Tensor>, IDisposable
{
    /// <summary>
    /// Hands the tensors' buffers back to <see cref="BufferPool"/> for the next run to reuse, and empties the cache. Tensors
    /// taken from this cache must not be used afterwards. Disposing is optional: an undisposed cache is collected as usual.
    /// </summary>
    public void Dispose()
    {
        foreach (var t in Values) BufferPool.Return(t.Data);
        Clear();
    }

    /// <summary>Sequence lengths of the batch; positions at or beyond a sequence's length are padding (zeros).</summary>
    public int[] Lengths { get; init; } = [];

    /// <summary>The activation for sequence <paramref name="b"/> without its batch dimension and padding.</summary>
    public Tensor Sequence(string name, int b)
    {
        if (!TryGetValue(name, out var t)) throw new KeyNotFoundException($"hook '{name}' is not in the cache (cached: {string.Join(", ", Keys.Take(8))}{(Count > 8 ? ", ..." : "")})");
        return HookNames.SliceSequence(name, t, b, Lengths[b]);
    }
}

/// <summary>Hook names of one block, built once so the forward pass formats no strings.</summary>
internal sealed class LayerHookNames
{
    public readonly string ResidPre, ResidMid, ResidPost, AttnOut, MlpIn, MlpOut;
    public readonly string Ln1Scale, Ln1Normalized, Ln2Scale, Ln2Normalized;
    public readonly string Q, K, V, RotQ, RotK, Scores, Pattern, Z, Result;
    public readonly string MlpPre, MlpPreLinear, MlpPost;
    /// <summary>Gemma 2's post-norms (TransformerLens: ln1_post, ln2_post).</summary>
    public readonly string Ln1PostScale, Ln1PostNormalized, Ln2PostScale, Ln2PostNormalized;
    /// <summary>circuit-tracer's MLP input (ln2's output, after its weight) and MLP output (before any post-norm).</summary>
    public readonly string MlpHookIn, MlpHookOut;

    public LayerHookNames(int l)
    {
        string b = $"blocks.{l}.";
        ResidPre = b + "hook_resid_pre"; ResidMid = b + "hook_resid_mid"; ResidPost = b + "hook_resid_post";
        AttnOut = b + "hook_attn_out"; MlpIn = b + "hook_mlp_in"; MlpOut = b + "hook_mlp_out";
        Ln1Scale = b + "ln1.hook_scale"; Ln1Normalized = b + "ln1.hook_normalized";
        Ln2Scale = b + "ln2.hook_scale"; Ln2Normalized = b + "ln2.hook_normalized";
        Q = b + "attn.hook_q"; K = b + "attn.hook_k"; V = b + "attn.hook_v";
        RotQ = b + "attn.hook_rot_q"; RotK = b + "attn.hook_rot_k";
        Scores = b + "attn.hook_attn_scores"; Pattern = b + "attn.hook_pattern";
        Z = b + "attn.hook_z"; Result = b + "attn.hook_result";
        MlpPre = b + "mlp.hook_pre"; MlpPreLinear = b + "mlp.hook_pre_linear"; MlpPost = b + "mlp.hook_post";
        Ln1PostScale = b + "ln1_post.hook_scale"; Ln1PostNormalized = b + "ln1_post.hook_normalized";
        Ln2PostScale = b + "ln2_post.hook_scale"; Ln2PostNormalized = b + "ln2_post.hook_normalized";
        MlpHookIn = b + "mlp.hook_in"; MlpHookOut = b + "mlp.hook_out";
    }
}

/// <summary>Hook-name utilities: the full list for a config, glob filters, per-sequence slicing.</summary>
public static class HookNames
{
    public const string Embed = "hook_embed", PosEmbed = "hook_pos_embed";
    public const string LnFinalScale = "ln_final.hook_scale", LnFinalNormalized = "ln_final.hook_normalized";

    /// <summary>
    /// Every hook point of a model with this config, in the order they fire — TransformerLens's names for each
    /// architecture (see the README's table): GPT-2 adds hook_pos_embed; rotary models hook_rot_q/k; gated MLPs
    /// mlp.hook_pre_linear; Gemma 2 its post-norms ln1_post/ln2_post (before hook_attn_out/hook_mlp_out); parallel
    /// attention+MLP (GPT-NeoX) has no hook_resid_mid. circuit-tracer's mlp.hook_in / mlp.hook_out are extra names (see
    /// <see cref="ExtraFor"/>), not in this list.
    /// </summary>
    public static IReadOnlyList<string> For(ModelConfig cfg)
    {
        var list = new List<string> { Embed };
        if (cfg.LearnedPositions) list.Add(PosEmbed);
        bool rope = cfg.Rope != RopeLayout.None;
        for (int l = 0; l < cfg.NLayers; l++)
        {
            var n = new LayerHookNames(l);
            list.AddRange([n.ResidPre, n.Ln1Scale, n.Ln1Normalized, n.Q, n.K, n.V]);
            if (rope) list.AddRange([n.RotQ, n.RotK]);
            list.AddRange([n.Scores, n.Pattern, n.Z, n.Result]);
            if (cfg.PostNorms) list.AddRange([n.Ln1PostScale, n.Ln1PostNormalized]);
            list.Add(n.AttnOut);
            if (!cfg.ParallelAttnMlp) list.Add(n.ResidMid);
            list.AddRange([n.MlpIn, n.Ln2Scale, n.Ln2Normalized, n.MlpPre]);
            if (cfg.GatedMlp) list.Add(n.MlpPreLinear);
            list.Add(n.MlpPost);
            if (cfg.PostNorms) list.AddRange([n.Ln2PostScale, n.Ln2PostNormalized]);
            list.AddRange([n.MlpOut, n.ResidPost]);
        }
        list.AddRange([LnFinalScale, LnFinalNormalized]);
        return list;
    }

    /// <summary>
    /// Hook points beyond TransformerLens's: circuit-tracer's blocks.L.mlp.hook_in (the MLP's input: ln2's output after its
    /// weight and bias, (B,T,d_model)) and blocks.L.mlp.hook_out (the MLP's output before Gemma 2's post-norm; elsewhere the
    /// same value as hook_mlp_out, firing just before it). Valid for hooks, splices, caches and gradients; a cache filter
    /// that takes every name (e.g. RunWithCache without one) keeps TransformerLens's names only, so these are cached when
    /// a filter names them.
    /// </summary>
    public static bool IsExtra(string name) => name.EndsWith(".mlp.hook_in", StringComparison.Ordinal) || name.EndsWith(".mlp.hook_out", StringComparison.Ordinal);

    /// <summary>The extra hook points of a model with this config (see <see cref="IsExtra"/>).</summary>
    public static IReadOnlyList<string> ExtraFor(ModelConfig cfg) =>
        Enumerable.Range(0, cfg.NLayers).SelectMany(l => { var n = new LayerHookNames(l); return new[] { n.MlpHookIn, n.MlpHookOut }; }).ToList();

    /// <summary>
    /// A filter from comma-separated globs ('*' matches any run of characters, '?' one), e.g.
    /// "blocks.*.hook_resid_post,hook_embed". Null or empty means everything.
    /// </summary>
    public static Func<string, bool> Glob(string? patterns)
    {
        if (string.IsNullOrWhiteSpace(patterns)) return _ => true;
        var regexes = patterns.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
            .Select(p => new Regex("^" + Regex.Escape(p).Replace("\\*", ".*").Replace("\\?", ".") + "$", RegexOptions.CultureInvariant))
            .ToArray();
        return name => regexes.Any(r => r.IsMatch(name));
    }

    /// <summary>True for attention-pattern-shaped hooks ([batch, head, q_pos, k_pos]).</summary>
    public static bool IsAttentionMatrix(string name) => name.EndsWith("hook_attn_scores", StringComparison.Ordinal) || name.EndsWith("hook_pattern", StringComparison.Ordinal);

    /// <summary>Sequence <paramref name="b"/> of a batched activation, cut to its <paramref name="length"/>.</summary>
    public static Tensor SliceSequence(string name, Tensor t, int b, int length)
    {
        if (IsAttentionMatrix(name))
        {
            // [B, NH, T, S] → [NH, len, len]
            int nh = t.Shape[1], T = t.Shape[2], S = t.Shape[3];
            var outT = new Tensor(nh, length, length);
            for (int h = 0; h < nh; h++)
                for (int i = 0; i < length; i++)
                    Array.Copy(t.Data, (((long)b * nh + h) * T + i) * S, outT.Data, ((long)h * length + i) * length, length);
            return outT;
        }
        // [B, T, ...] → [len, ...]
        int tAll = t.Shape[1];
        long inner = t.Length / ((long)t.Shape[0] * tAll);
        var shape = t.Shape[1..]; shape[0] = length;
        var res = new Tensor(shape);
        Array.Copy(t.Data, (long)b * tAll * inner, res.Data, 0, length * inner);
        return res;
    }
}

/// <summary>
/// Something spliced into the forward pass at hook points — an SAE or transcoder, say. It sees the
/// activation of <see cref="InputHook"/> (after that hook's functions ran) and may replace the activation of
/// <see cref="OutputHook"/>, firing hook points of its own (<see cref="HookNames"/>) on the way.
/// </summary>
public interface IHookSplice
{
    string InputHook { get; }
    string OutputHook { get; }
    /// <summary>The hook points it fires (e.g. "blocks.3.hook_resid_post.hook_sae_acts_post"), in firing order.</summary>
    IReadOnlyList<string> HookNames { get; }
    /// <summary>Throws a clear error when it does not fit the model (unknown hook, wrong width).</summary>
    void Validate(HookedTransformer model);
    /// <summary>Per-forward-pass state (e.g. a transcoder's captured input).</summary>
    IHookSpliceRun Start();
}

/// <summary>One forward pass of an <see cref="IHookSplice"/>.</summary>
public interface IHookSpliceRun
{
    /// <summary>The input hook fired; <paramref name="activation"/> is [batch, pos, ...].</summary>
    void OnInput(SpliceContext context, Tensor activation);
    /// <summary>The output hook fired: edit <paramref name="activation"/> in place to replace it.</summary>
    void OnOutput(SpliceContext context, Tensor activation);
}

/// <summary>
/// The backward pass of a spliced run (implemented by <see cref="IHookSpliceRun"/>s that support gradients). The
/// gradient tensors are [batch, pos, ...] like the activations; <see cref="SpliceContext.Fire"/> fires the gradients of
/// the splice's own hook points.
/// </summary>
public interface IHookSpliceBackward
{
    /// <summary>
    /// The backward reached the output hook: <paramref name="gradient"/> holds the gradient of the splice's output; replace
    /// it in place with the gradient of the activation the splice replaced.
    /// </summary>
    void OnOutputBackward(SpliceContext context, Tensor gradient);
    /// <summary>The backward reached the input hook: add the splice's share to <paramref name="gradient"/>.</summary>
    void OnInputBackward(SpliceContext context, Tensor gradient);
}

/// <summary>What a splice may do during a forward pass: fire its own hook points and see which rows are real.</summary>
public sealed class SpliceContext
{
    readonly Action<string, int, float[], int[], bool> _fire;
    readonly Func<string, bool> _active, _hasFunctions;

    internal SpliceContext(int layer, int[] lengths, Action<string, int, float[], int[], bool> fire, Func<string, bool> active, Func<string, bool> hasFunctions,
        bool recording = false)
    {
        Layer = layer; Lengths = lengths; _fire = fire; _active = active; _hasFunctions = hasFunctions; Recording = recording;
    }

    /// <summary>
    /// In a forward pass: a backward pass will follow, so keep what it needs. In a backward pass (the context given to
    /// <see cref="IHookSpliceBackward"/>): always true; <see cref="Fire"/> then fires gradients.
    /// </summary>
    public bool Recording { get; }

    /// <summary>In a backward pass: latent hooks whose gradients are needed only where active (see <see cref="GradientOptions.ActiveLatentGradients"/>).</summary>
    public IReadOnlyDictionary<string, Tensor?>? ActiveLatentGradients { get; init; }

    /// <summary>The layer of the hook being processed (−1 outside blocks).</summary>
    public int Layer { get; }
    /// <summary>Sequence lengths of the batch: rows at or beyond them are padding.</summary>
    public int[] Lengths { get; }

    /// <summary>Runs hook functions on <paramref name="data"/> (seen with <paramref name="shape"/>) and caches it if asked.</summary>
    public void Fire(string name, float[] data, params int[] shape) => _fire(name, Layer, data, shape, false);

    /// <summary>
    /// <see cref="Fire"/> for a buffer the splice will not change afterwards: the cache keeps it without a copy (a
    /// [batch, pos, d_sae] latent block is hundreds of megabytes).
    /// </summary>
    public void FireOwned(string name, float[] data, params int[] shape) => _fire(name, Layer, data, shape, true);
    /// <summary>True when a hook function or the cache wants this hook point.</summary>
    public bool IsActive(string name) => _active(name);
    /// <summary>True when hook functions (not just the cache) are registered on this hook point.</summary>
    public bool HasFunctions(string name) => _hasFunctions(name);
}
