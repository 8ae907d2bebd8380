using FeatureLens.Analysis;
using FeatureLens.Runtime.Models;
using FeatureLens.Saes;
using FeatureLens.Steering;

namespace FeatureLens.Web;

/// <summary>
/// A feature addition: <see cref="Strength"/> × W_dec[<see cref="Latent"/>] of the set's SAE at <see cref="Hook"/> (its hook or
/// its name), or of one of the set's served transcoders (a graph's feature node): <see cref="Hook"/> then names the hook it reads
/// or the hook it writes, its short name ("L0 ln2.normalized") or the graph's layer label ("L0"); it is added at the hook it writes.
/// </summary>
public sealed record SteerFeatureTerm(string? Hook, int? Latent, double? Strength);

/// <summary>A clamp: latent <see cref="Latent"/> of the SAE at <see cref="Hook"/>, spliced with its error term, set to <see cref="Value"/>.</summary>
public sealed record SteerClampTerm(string? Hook, int? Latent, double? Value);

/// <summary>A latent whose activation per token is reported on the baseline and on every steered continuation.</summary>
public sealed record SteerWatchTerm(string? Hook, int? Latent);

/// <summary>
/// POST /api/steer body: baseline and steered continuations of <see cref="Prompt"/> (<see cref="SteeringSweep"/>), steered by
/// <see cref="Features"/> (additions) and <see cref="Clamps"/>, at <see cref="Positions"/> (all | prompt | new), once per
/// multiplier of <see cref="Strengths"/> (default [1]); <see cref="Temperature"/> 0 (the default) is greedy, the same
/// <see cref="Seed"/> for every continuation. <see cref="Watch"/>: latents whose per-token activations are returned;
/// <see cref="Logits"/>: token ids whose next-token logit change is reported; <see cref="TopFeatures"/>: the most changed
/// latents per SAE of the set (by mean over the sequence).
/// </summary>
public sealed record SteerRequest(string? Set, string? Prompt, IReadOnlyList<SteerFeatureTerm?>? Features = null, IReadOnlyList<SteerClampTerm?>? Clamps = null,
    IReadOnlyList<double>? Strengths = null, string? Positions = null, int? MaxNewTokens = null, double? Temperature = null, double? TopP = null,
    int? Seed = null, IReadOnlyList<SteerWatchTerm?>? Watch = null, IReadOnlyList<int>? Logits = null, int? TopFeatures = null);

/// <summary>What is added at a hook: its label, the hook and the scale at strength 1.</summary>
public sealed record SteerAdditionInfo(string Label, string Hook, float Scale);

/// <summary>A watched latent (of an SAE of the set or of a served transcoder): its activation at every position of the baseline sequence and of each steered one (prompt + generated).</summary>
public sealed record SteerWatched(string Hook, string Sae, int SaeIndex, int Latent, FeatureLabel? Label, float[] Baseline, float[][] Steered);

/// <summary>/api/steer: the library's <see cref="SteeringResult"/> and, for the page, token texts and the watched latents.</summary>
public sealed record SteerResponse
{
    public required string Set { get; init; }
    /// <summary>The prompt's tokens (BOS first).</summary>
    public required string[] PromptTokens { get; init; }
    public required IReadOnlyList<SteerAdditionInfo> Additions { get; init; }
    /// <summary>The clamps' labels ("HOOK:I") and values.</summary>
    public required IReadOnlyList<string> Clamps { get; init; }
    /// <summary>Exactly what <see cref="SteeringSweep.Run"/> returns (snake_case fields, as <c>featurelens steer --json</c> writes).</summary>
    public required SteeringResult Result { get; init; }
    /// <summary>The baseline's generated tokens' texts.</summary>
    public required string[] BaselineTokens { get; init; }
    /// <summary>Each strength's generated tokens' texts.</summary>
    public required string[][] SteeredTokens { get; init; }
    public required IReadOnlyList<SteerWatched> Watch { get; init; }
}

/// <summary>
/// The steering panel's work: builds a <see cref="Steerer"/> from the request over the set's SAEs and runs
/// <see cref="SteeringSweep.Run"/>; the watched latents per token come from <see cref="Steerer.Latents"/> on the same sequences.
/// Requests take the set's lock, as the tracker's do. Terms may also name the set's served transcoders (<see cref="TrackerSet.Transcoders"/>,
/// the graph's feature nodes): they are steered, clamped and watched by the same code, indexed after the set's SAEs
/// (<see cref="Steerable"/>); the most changed latents (topFeatures) stay those of the set's SAEs.
/// </summary>
internal sealed class SteeringService(TrackerService tracker)
{
    public const int MaxTerms = 16, MaxStrengths = 8, MaxWatch = 8, MaxNewTokensMax = 256, TopFeaturesMax = 20, MaxLogits = 20;

    public SteerResponse Steer(SteerRequest req)
    {
        var (set, gate) = tracker.FindSet(req.Set);
        string prompt;
        try { prompt = tracker.CheckText(set, req.Prompt); }
        catch (ApiException e) { throw new ApiException(e.Status, $"prompt: {e.Message}"); }
        var s = set.Set;
        var model = s.Model;
        var tok = model.Tokenizer!;

        var features = req.Features ?? [];
        var clampTerms = req.Clamps ?? [];
        if (features.Count + clampTerms.Count == 0) throw new ApiException(400, "features is empty: give at least one feature (HOOK:LATENT) to steer with, or a clamp");
        if (features.Count + clampTerms.Count > MaxTerms) throw new ApiException(400, $"features and clamps: at most {MaxTerms} terms (got {features.Count + clampTerms.Count})");
        IReadOnlyList<double> strengths = req.Strengths is { Count: > 0 } given ? given : [1.0];
        if (strengths.Count > MaxStrengths) throw new ApiException(400, $"strengths: at most {MaxStrengths} (got {strengths.Count})");
        for (int i = 0; i < strengths.Count; i++)
            if (!double.IsFinite(strengths[i])) throw new ApiException(400, $"strengths[{i}] is {strengths[i]}: give finite numbers");
        SteeringPositions positions;
        try { positions = SteeringSpec.ParsePositions(req.Positions ?? "all"); }
        catch (ArgumentException) { throw new ApiException(400, $"positions '{req.Positions}': expected all, prompt or new"); }
        int maxNew = req.MaxNewTokens ?? 24;
        if (maxNew is < 0 or > MaxNewTokensMax) throw new ApiException(400, $"maxNewTokens must be between 0 and {MaxNewTokensMax} (got {maxNew})");
        int top = req.TopFeatures ?? 5;
        if (top is < 0 or > TopFeaturesMax) throw new ApiException(400, $"topFeatures must be between 0 and {TopFeaturesMax} (got {top})");
        var sampling = new SamplingOptions((float)(req.Temperature ?? 0), (float)(req.TopP ?? 1), req.Seed ?? 0);
        try { sampling.Validate(); }
        catch (ArgumentException e) { throw new ApiException(400, e.Message.Replace("top-p", "topP", StringComparison.Ordinal)); }
        var logits = req.Logits ?? [];
        if (logits.Count > MaxLogits) throw new ApiException(400, $"logits: at most {MaxLogits} token ids (got {logits.Count})");
        for (int i = 0; i < logits.Count; i++)
            if ((uint)logits[i] >= (uint)model.Config.VocabSize)
                throw new ApiException(400, $"logits[{i}]: token id {logits[i]} is outside the vocabulary [0, {model.Config.VocabSize})");
        var watchTerms = req.Watch ?? [];
        if (watchTerms.Count > MaxWatch) throw new ApiException(400, $"watch: at most {MaxWatch} latents (got {watchTerms.Count})");

        // one splice (with the error term) per SAE and served transcoder, shared by its clamps and by the observation of its latents
        var (saes, hooks, names) = Steerable(set);
        var splices = saes.Select(sae => new SaeSplice(sae, useErrorTerm: true)).ToArray();
        var additions = new List<SteeringAddition>();
        for (int i = 0; i < features.Count; i++)
        {
            string field = $"features[{i}]";
            var f = features[i] ?? throw new ApiException(400, $"{field} is null: give {{hook, latent, strength}}");
            var (sae, latent) = Latent(set, field, f.Hook, f.Latent);
            double strength = f.Strength ?? 1;
            if (!double.IsFinite(strength)) throw new ApiException(400, $"{field}.strength is {strength}: give a finite number");
            additions.Add(Library(field, () => Steerer.Feature(saes[sae], latent, (float)strength)));
        }
        var clamps = new List<SteeringClamp>();
        for (int i = 0; i < clampTerms.Count; i++)
        {
            string field = $"clamps[{i}]";
            var c = clampTerms[i] ?? throw new ApiException(400, $"{field} is null: give {{hook, latent, value}}");
            var (sae, latent) = Latent(set, field, c.Hook, c.Latent);
            if (c.Value is not double value) throw new ApiException(400, $"{field}.value is missing: give the value to clamp the latent to");
            if (!double.IsFinite(value)) throw new ApiException(400, $"{field}.value is {value}: give a finite number");
            clamps.Add(new SteeringClamp(splices[sae], latent, (float)value, $"{hooks[sae]}:{latent}"));
        }
        var watch = new List<(int Sae, int Latent)>();
        for (int i = 0; i < watchTerms.Count; i++)
        {
            string field = $"watch[{i}]";
            var w = watchTerms[i] ?? throw new ApiException(400, $"{field} is null: give {{hook, latent}}");
            var (sae, latent) = Latent(set, field, w.Hook, w.Latent);
            if (!watch.Contains((sae, latent))) watch.Add((sae, latent));
        }

        var ids = FeatureTracker.Encode(s, prompt);
        lock (gate)
        {
            var steerer = Library("features", () => new Steerer(model, additions, clamps, positions));
            var options = new SweepOptions([.. logits], top > 0 ? splices[..s.Saes.Count] : [], top, tok.TokenText, SteeringSweep.ContinuationText(tok, ids));
            var ks = strengths.Select(k => (float)k).ToArray();
            var result = SteeringSweep.Run(steerer, ids, ks, maxNew, sampling, options);
            var observed = watch.Select(w => w.Sae).Distinct().ToList();
            var observe = observed.Select(i => splices[i]).ToList();
            float[][] PerToken(int[] generated, float? k) =>
                observe.Count == 0 ? [] : steerer.Latents([.. ids, .. generated], ids.Length, k, observe);
            var baseActs = PerToken(result.Baseline.Tokens, null);
            var steeredActs = result.Steered.Select(st => PerToken(st.Tokens, st.Strength)).ToArray();
            float[] Column(float[][] acts, int sae, int latent, int length)
            {
                var a = acts[observed.IndexOf(sae)];
                int d = saes[sae].DSae;
                return Enumerable.Range(0, length).Select(t => a[(long)t * d + latent]).ToArray();
            }
            return new SteerResponse
            {
                Set = set.Name,
                PromptTokens = FeatureTracker.TokenTexts(s, ids),
                Additions = [.. steerer.Additions.Select(a => new SteerAdditionInfo(a.Label, a.Hook, a.Scale))],
                Clamps = [.. steerer.Clamps.Select(c => $"{c.Label}={c.Value.ToString(System.Globalization.CultureInfo.InvariantCulture)}")],
                Result = result,
                BaselineTokens = [.. result.Baseline.Tokens.Select(tok.TokenText)],
                SteeredTokens = [.. result.Steered.Select(st => st.Tokens.Select(tok.TokenText).ToArray())],
                Watch = [.. watch.Select(w => new SteerWatched(hooks[w.Sae], names[w.Sae], w.Sae, w.Latent, set.Labels?.Get(hooks[w.Sae], w.Latent),
                    Column(baseActs, w.Sae, w.Latent, ids.Length + result.Baseline.Tokens.Length),
                    [.. result.Steered.Select((st, i) => Column(steeredActs[i], w.Sae, w.Latent, ids.Length + st.Tokens.Length))]))],
            };
        }
    }

    /// <summary>
    /// What terms may name: the set's SAEs (their indices as in the set), then its served transcoders that are not among them
    /// (named by the hook each reads, "L0 ln2.normalized transcoder").
    /// </summary>
    static (IReadOnlyList<Sae> Saes, IReadOnlyList<string> Hooks, IReadOnlyList<string> Names) Steerable(TrackerSet set)
    {
        var s = set.Set;
        var extra = (set.Transcoders ?? []).Where(t => !s.Saes.Contains(t)).ToList();
        return ([.. s.Saes, .. extra], [.. s.Hooks, .. extra.Select(t => t.Config.HookName)],
            [.. s.Names, .. extra.Select(t => SaeSet.ShortName(t.Config.HookName) + " transcoder")]);
    }

    /// <summary>
    /// The served transcoder <paramref name="hook"/> names (the hook it reads or writes, its short name or the graph's layer
    /// label "L3"), as an index of <see cref="Steerable"/>; -1 when none does.
    /// </summary>
    static int FindTranscoder(TrackerSet set, string hook)
    {
        if (set.Transcoders is not { Count: > 0 } tcs) return -1;
        var s = set.Set;
        var extra = tcs.Where(t => !s.Saes.Contains(t)).ToList();
        foreach (var t in tcs)
        {
            string input = t.Config.HookName;
            int layer = SaeSet.LayerOf(input);
            if (input == hook || t.Config.Metadata.HookNameOut == hook || string.Equals(SaeSet.ShortName(input), hook, StringComparison.OrdinalIgnoreCase)
                || string.Equals(SaeSet.ShortName(input) + " transcoder", hook, StringComparison.OrdinalIgnoreCase)
                || (layer >= 0 && string.Equals($"L{layer}", hook, StringComparison.OrdinalIgnoreCase)))
            {
                int own = s.Saes.ToList().IndexOf(t);
                return own >= 0 ? own : s.Saes.Count + extra.IndexOf(t);
            }
        }
        return -1;
    }

    /// <summary>
    /// The SAE named or hooked at <paramref name="hook"/> (else the served transcoder it names, <see cref="FindTranscoder"/>) and a
    /// latent inside its width, as indices of <see cref="Steerable"/>; errors name <paramref name="field"/>.
    /// </summary>
    static (int Sae, int Latent) Latent(TrackerSet set, string field, string? hook, int? latent)
    {
        if (string.IsNullOrWhiteSpace(hook)) throw new ApiException(400, $"{field}.hook is missing: give the SAE's hook (e.g. {set.Set.Hooks[0]}) or its name");
        int sae;
        try { sae = TrackerService.FindSae(set, hook.Trim()); }
        catch (ApiException e)
        {
            sae = FindTranscoder(set, hook.Trim());
            if (sae < 0)
            {
                string served = set.Transcoders is { Count: > 0 } tcs ? $"; or a served transcoder by the hook it reads or writes ({string.Join(", ", tcs.Select(t => t.Config.HookName))})" : "";
                throw new ApiException(400, $"{field}.hook: {e.Message}{served}");
            }
        }
        if (latent is not int i) throw new ApiException(400, $"{field}.latent is missing: give the latent's index");
        var (saes, _, names) = Steerable(set);
        int d = saes[sae].DSae;
        if (i < 0 || i >= d) throw new ApiException(400, $"{field}.latent: {names[sae]} has no latent {i} (its latents are 0..{d - 1})");
        return (sae, i);
    }

    /// <summary>Runs a library call, its ArgumentException reported as a 400 naming <paramref name="field"/>.</summary>
    static T Library<T>(string field, Func<T> call)
    {
        try { return call(); }
        catch (ArgumentException e) { throw new ApiException(400, $"{field}: {e.Message}"); }
    }
}
