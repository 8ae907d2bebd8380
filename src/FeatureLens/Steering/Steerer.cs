using System.Numerics.Tensors;
using FeatureLens.Runtime.Models;
using FeatureLens.Saes;
using Tensor = FeatureLens.Runtime.Tensors.Tensor;

namespace FeatureLens.Steering;

/// <summary>A direction added at a hook: strength × <see cref="Scale"/> × <see cref="Direction"/> at every steered position.</summary>
/// <param name="Hook">The hook whose activation is changed (a transcoder feature's is the hook it writes).</param>
/// <param name="Direction">(width) the direction, e.g. a decoder row W_dec[i] as stored, or a steering vector.</param>
/// <param name="Scale">S: the coefficient at strength 1.</param>
/// <param name="Label">How reports name it ("blocks.3.hook_resid_post:42", "happy.safetensors:v").</param>
public sealed record SteeringAddition(string Hook, float[] Direction, float Scale, string Label);

/// <summary>Latent <see cref="Latent"/> of an SAE spliced with its error term, set to <see cref="Value"/> at every steered position.</summary>
public sealed record SteeringClamp(SaeSplice Splice, int Latent, float Value, string Label);

/// <summary>The generated ids and the next-token logits at the prompt's last position (the first step's).</summary>
public sealed record SteeredGeneration(int[] Tokens, float[] NextTokenLogits);

/// <summary>
/// Steering: hook functions that add directions to activations and splices that clamp SAE latents, at the positions
/// <see cref="Positions"/> selects. Works with the KV cache: each incremental pass is told its absolute positions and the
/// hooks add at the new rows only. A strength multiplies every addition's scale; clamps keep their value. Null strength
/// means the unsteered (baseline) model.
/// </summary>
public sealed class Steerer
{
    public HookedTransformer Model { get; }
    public IReadOnlyList<SteeringAddition> Additions { get; }
    public IReadOnlyList<SteeringClamp> Clamps { get; }
    public SteeringPositions Positions { get; }

    public Steerer(HookedTransformer model, IReadOnlyList<SteeringAddition> additions, IReadOnlyList<SteeringClamp> clamps, SteeringPositions positions = SteeringPositions.All)
    {
        Model = model; Additions = additions; Clamps = clamps; Positions = positions;
        foreach (var a in additions) CheckAddition(model, a);
        foreach (var c in clamps)
        {
            if (!c.Splice.UseErrorTerm) throw new ArgumentException($"clamp {c.Label}: the SAE must be spliced with its error term");
            c.Splice.Validate(model);
            if ((uint)c.Latent >= (uint)c.Splice.Sae.DSae)
                throw new ArgumentException($"--clamp {c.Label}: latent {c.Latent} is outside [0, {c.Splice.Sae.DSae}) (d_sae of the SAE at {c.Splice.InputHook})");
            if (!float.IsFinite(c.Value)) throw new ArgumentException($"--clamp {c.Label}: the value {c.Value} is not finite");
        }
    }

    static void CheckAddition(HookedTransformer model, SteeringAddition a)
    {
        try { model.CheckHookName(a.Hook); }
        catch (ArgumentException e) { throw new ArgumentException($"{a.Label}: {e.Message}"); }
        int? width = model.HookWidth(a.Hook);
        if (width is null) throw new ArgumentException($"{a.Label}: '{a.Hook}' is an attention pattern; a direction cannot be added there");
        if (a.Direction.Length != width)
            throw new ArgumentException($"{a.Label}: the vector has {a.Direction.Length} entries but hook '{a.Hook}' has width {width} (d_model {model.Config.DModel})");
        for (int i = 0; i < a.Direction.Length; i++)
            if (!float.IsFinite(a.Direction[i])) throw new ArgumentException($"{a.Label}: entry {i} of the vector is {a.Direction[i]} (not finite)");
        if (!float.IsFinite(a.Scale)) throw new ArgumentException($"{a.Label}: the scale {a.Scale} is not finite");
    }

    /// <summary>The addition of latent <paramref name="latent"/>'s decoder row W_dec[latent] (as stored) × <paramref name="scale"/>, at the hook the SAE writes.</summary>
    public static SteeringAddition Feature(Sae sae, int latent, float scale)
    {
        string hook = sae.Config.IsTranscoder ? sae.Config.Metadata.HookNameOut ?? "" : sae.Config.HookName;
        string label = $"{sae.Config.HookName}:{latent}";
        if ((uint)latent >= (uint)sae.DSae) throw new ArgumentException($"--feature {label}: latent {latent} is outside [0, {sae.DSae}) (d_sae of the SAE at {sae.Config.HookName})");
        if (sae.Config.Metadata.HookHeadIndex is int h)
            throw new ArgumentException($"--feature {label}: the SAE reads one head ({h}) of its hook; steering by its decoder row is supported for whole-hook SAEs only");
        var row = new float[sae.DOut];
        Array.Copy(sae.WDec, (long)latent * sae.DOut, row, 0, sae.DOut);
        return new SteeringAddition(hook, row, scale, label);
    }

    /// <summary>
    /// The hooks and splices of one forward pass whose first row is absolute position <paramref name="offset"/>, steered at
    /// <paramref name="strength"/> (null: none). <paramref name="observe"/> adds SAE splices (with their error term) to read
    /// latents from; a clamp's splice is shared when the same object is observed.
    /// </summary>
    public RunOptions PassOptions(float? strength, int offset, int promptLength, IReadOnlyList<SaeSplice>? observe = null,
        Func<string, bool>? cacheFilter = null, ActivationCache? cache = null)
    {
        var hooks = new List<(string, HookFunction)>();
        var splices = new List<IHookSplice>();
        if (strength is float k)
        {
            foreach (var a in Additions)
            {
                float coef = k * a.Scale;
                var dir = a.Direction;
                hooks.Add((a.Hook, (act, _) => { AddRows(act, dir, coef, offset, promptLength); return null; }));
            }
            foreach (var c in Clamps)
            {
                if (!splices.Contains(c.Splice)) splices.Add(c.Splice);
                var clamp = c;
                hooks.Add((c.Splice.ActsPostHook, (act, _) => { SetLatent(act, clamp.Latent, clamp.Value, offset, promptLength); return null; }));
            }
        }
        foreach (var s in observe ?? []) if (!splices.Contains(s)) splices.Add(s);
        return new RunOptions { Hooks = hooks, Splices = splices, CacheFilter = cacheFilter, Cache = cache };
    }

    /// <summary>act (B, T, width) += coef × dir (width) at the steered rows (absolute position offset + t).</summary>
    void AddRows(Tensor act, float[] dir, float coef, int offset, int promptLength)
    {
        int B = act.Shape[0], T = act.Shape[1], width = dir.Length;
        for (int b = 0; b < B; b++)
            for (int t = 0; t < T; t++)
            {
                if (!SteeringSpec.Covers(Positions, offset + t, promptLength)) continue;
                var row = act.Data.AsSpan((b * T + t) * width, width);
                TensorPrimitives.MultiplyAdd(dir, coef, row, row);
            }
    }

    /// <summary>acts (B, T, d_sae)[.., .., latent] = value at the steered rows.</summary>
    void SetLatent(Tensor acts, int latent, float value, int offset, int promptLength)
    {
        int B = acts.Shape[0], T = acts.Shape[1], d = acts.Shape[2];
        for (int b = 0; b < B; b++)
            for (int t = 0; t < T; t++)
                if (SteeringSpec.Covers(Positions, offset + t, promptLength)) acts.Data[((long)b * T + t) * d + latent] = value;
    }

    /// <summary>
    /// Generates after <paramref name="prompt"/> with the KV cache, steered at <paramref name="strength"/> (null: the baseline);
    /// <paramref name="onLogits"/> sees each step's last-row logits.
    /// </summary>
    public SteeredGeneration Generate(int[] prompt, float? strength, int maxNewTokens, SamplingOptions sampling, Action<int, float[]>? onLogits = null)
    {
        float[]? first = null;
        var step = new GenerationStep
        {
            Options = pos => PassOptions(strength, pos, prompt.Length),
            OnLogits = (i, logits) => { if (i == 0) first = logits; onLogits?.Invoke(i, logits); },
        };
        var tokens = Model.Generate(prompt, maxNewTokens, sampling, step).ToArray();
        first ??= NextTokenLogits(prompt, strength);   // max new tokens 0
        return new SteeredGeneration(tokens, first);
    }

    /// <summary>The logits (V) at the last position of <paramref name="prompt"/>, steered at <paramref name="strength"/>.</summary>
    public float[] NextTokenLogits(int[] prompt, float? strength)
    {
        var logits = Model.Run([prompt], PassOptions(strength, 0, prompt.Length))!;
        int V = Model.Config.VocabSize;
        return logits.Data.AsSpan((prompt.Length - 1) * V, V).ToArray();
    }

    /// <summary>
    /// Each observed SAE's mean latent activation (d_sae, over every position of <paramref name="sequence"/>) in one pass
    /// steered at <paramref name="strength"/> (null: unsteered), positions counted from the prompt's length.
    /// </summary>
    public double[][] MeanLatents(int[] sequence, int promptLength, float? strength, IReadOnlyList<SaeSplice> observe)
    {
        var acts = Latents(sequence, promptLength, strength, observe);
        int T = sequence.Length;
        var means = new double[observe.Count][];
        for (int s = 0; s < observe.Count; s++)
        {
            int d = acts[s].Length / T;
            var m = means[s] = new double[d];
            for (int t = 0; t < T; t++)
                for (int j = 0; j < d; j++) m[j] += acts[s][(long)t * d + j];
            for (int j = 0; j < d; j++) m[j] /= T;
        }
        return means;
    }

    /// <summary>
    /// Each observed SAE's latent activations (T × d_sae, row-major: position t, latent j at t·d_sae + j; its
    /// <c>hook_sae_acts_post</c>, clamps applied) at every position of <paramref name="sequence"/> in one pass steered at
    /// <paramref name="strength"/> (null: unsteered), positions counted from the prompt's length.
    /// </summary>
    public float[][] Latents(int[] sequence, int promptLength, float? strength, IReadOnlyList<SaeSplice> observe)
    {
        var names = observe.Select(s => s.ActsPostHook).ToHashSet(StringComparer.Ordinal);
        using var cache = new ActivationCache { Lengths = [sequence.Length] };
        Model.Run([sequence], PassOptions(strength, 0, promptLength, observe, names.Contains, cache));
        var acts = new float[observe.Count][];
        for (int s = 0; s < observe.Count; s++)
        {
            var a = cache[observe[s].ActsPostHook];   // (1, T, d_sae)
            acts[s] = a.Data.AsSpan(0, a.Shape[1] * a.Shape[2]).ToArray();
        }
        return acts;
    }
}
