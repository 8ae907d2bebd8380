using System.Numerics.Tensors;
using System.Text.Json;
using System.Text.Json.Nodes;
using FeatureLens.Runtime.Models;
using FeatureLens.Saes;

namespace FeatureLens.Connections.Graphs;

/// <summary>How an intervention changes a transcoder latent.</summary>
public enum InterventionKind
{
    /// <summary>Set the latent to a value at the given position, whether or not it is active there.</summary>
    Set,
    /// <summary>Set the latent to a value only where it is active on the prompt (an inactive position is left alone and reported as skipped).</summary>
    Clamp,
    /// <summary>Set the latent to 0 (only where it is active: zeroing an inactive latent changes nothing).</summary>
    Zero,
}

/// <summary>
/// One intervention as written on the command line: <c>L:LATENT@POS=V</c> (set, clamp) or <c>L:LATENT@POS</c> (zero).
/// <see cref="Pos"/> null stands for <c>*</c>: every position where the latent is active on the prompt. A negative position
/// counts from the end (-1 is the last token).
/// </summary>
public sealed record FeatureIntervention(InterventionKind Kind, int Layer, int Latent, int? Pos, float Value)
{
    /// <summary>Parses a spec of the given kind; throws an <see cref="ArgumentException"/> naming the spec and what was expected.</summary>
    public static FeatureIntervention Parse(InterventionKind kind, string spec)
    {
        ArgumentNullException.ThrowIfNull(spec);
        string name = kind.ToString().ToLowerInvariant();
        string form = kind == InterventionKind.Zero ? "L:LATENT@POS (POS an integer or *)" : "L:LATENT@POS=VALUE (POS an integer or *)";
        ArgumentException Bad(string why) => new($"--{name} '{spec}': {why}; expected {form}, e.g. {(kind == InterventionKind.Zero ? "2:17@*" : "2:17@-1=5")}");
        string s = spec.Trim();
        float value = 0;
        int eq = s.IndexOf('=', StringComparison.Ordinal);
        if (kind == InterventionKind.Zero)
        {
            if (eq >= 0) throw Bad("zero takes no value");
        }
        else
        {
            if (eq < 0) throw Bad("no '=VALUE'");
            string v = s[(eq + 1)..].Trim();
            if (!float.TryParse(v, NumberStyles.Float, CultureInfo.InvariantCulture, out value) || !float.IsFinite(value))
                throw Bad($"the value '{v}' is not a finite number");
            s = s[..eq];
        }
        int at = s.IndexOf('@', StringComparison.Ordinal);
        if (at < 0) throw Bad("no '@POS'");
        string posText = s[(at + 1)..].Trim();
        int? pos = posText == "*" ? null
            : int.TryParse(posText, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out int p) ? p
            : throw Bad($"the position '{posText}' is neither an integer nor *");
        var parts = s[..at].Split(':');
        if (parts.Length != 2) throw Bad("the feature must be LAYER:LATENT");
        if (!int.TryParse(parts[0].Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out int layer)) throw Bad($"the layer '{parts[0]}' is not a non-negative integer");
        if (!int.TryParse(parts[1].Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out int latent)) throw Bad($"the latent '{parts[1]}' is not a non-negative integer");
        return new FeatureIntervention(kind, layer, latent, pos, value);
    }

    /// <summary>The spec as written on the command line.</summary>
    public override string ToString()
    {
        string pos = Pos is int p ? p.ToString(CultureInfo.InvariantCulture) : "*";
        string head = $"{Kind.ToString().ToLowerInvariant()} {Layer}:{Latent}@{pos}";
        return Kind == InterventionKind.Zero ? head : head + "=" + Value.ToString("R", CultureInfo.InvariantCulture);
    }
}

/// <summary>One latent at one position that an intervention set changes: its clean activation and the value it is given.</summary>
public readonly record struct ResolvedIntervention(int Layer, int Pos, int Latent, float Clean, float Value)
{
    /// <summary>Whether the latent is active on the clean prompt (a feature node of the replacement model).</summary>
    public bool Active => Clean != 0;
}

/// <summary>What a graph logit node's input (logit − mean logit) becomes: predicted by the graph's rows and run in the frozen model.</summary>
public sealed record GraphLogitChange(int Token, float CleanInput, double LinearDelta, double ReplacementDelta);

/// <summary>
/// The outcome of one intervention set (<see cref="GraphInterventions.Run"/>): the next-token logits at the last position
/// under four models, and the graph logit nodes' predicted and actual changes.
/// </summary>
public sealed class InterventionResult
{
    public required int[] Tokens { get; init; }
    /// <summary>Every (layer, position, latent) changed, in the order given (a later intervention on the same latent and position wins).</summary>
    public required IReadOnlyList<ResolvedIntervention> Edits { get; init; }
    /// <summary>Interventions that changed nothing, with the reason (a clamp or zero where the latent is inactive, a * with no active position).</summary>
    public required IReadOnlyList<string> Skipped { get; init; }
    /// <summary>(V) the real model's logits at the last position, unedited.</summary>
    public required float[] Baseline { get; init; }
    /// <summary>(V) the frozen replacement model with the edits (<see cref="ReplacementModel.RunFrozen"/>): exact within the linear model.</summary>
    public required float[] Replacement { get; init; }
    /// <summary>(V) the baseline plus the graph's linear prediction Σ_k Δa_k·∂logits/∂a_k (<see cref="ReplacementModel.OutputJacobian"/>).</summary>
    public required float[] Linear { get; init; }
    /// <summary>(V) the real model with every transcoder spliced with its error term and the edited latents set; downstream MLPs and latents recomputed.</summary>
    public required float[] Real { get; init; }
    /// <summary>Per graph logit node: the change of its input predicted by the graph's rows (Σ Δa/a·A) and the frozen model's change.</summary>
    public required IReadOnlyList<GraphLogitChange> GraphLogits { get; init; }
}

/// <summary>
/// Interventions on the features of an attribution graph (set, clamp or zero transcoder latents), evaluated three ways:
/// <list type="bullet">
/// <item>the frozen replacement model (attention patterns and norm scales frozen, every other feature held at its clean value):
/// <see cref="ReplacementModel.RunFrozen"/> with the edited values — an inactive latent, which is no node, enters through its
/// decoder direction added to the error input of its (layer, position), which is exactly what decoding it would add;</item>
/// <item>the graph's linear prediction: Δlogits = Σ_k Δa_k·∂logits/∂a_k, the derivative from one backward through the same frozen
/// model (for an active feature ∂input/∂a = A[t, s]/a_s; for the graph's logit nodes the prediction is Σ Δa_s/a_s·A[logit, s]
/// from <see cref="ReplacementModel.ComputeRows"/>). The frozen model is linear, so the prediction equals it up to rounding;</item>
/// <item>the real model with each transcoder spliced with its error term (so unedited it is the model) and the edited latents
/// set at <c>hook_sae_acts_post</c>; every MLP downstream is recomputed, so later features respond nonlinearly.</item>
/// </list>
/// </summary>
public static class GraphInterventions
{
    /// <summary>
    /// Resolves interventions against the prompt: checks layer, latent and position, expands <c>*</c> to the positions where
    /// the latent is active, drops clamps and zeros at inactive positions (reported in <paramref name="skipped"/>).
    /// </summary>
    public static IReadOnlyList<ResolvedIntervention> Resolve(ReplacementModel rm, IReadOnlyList<FeatureIntervention> interventions, List<string> skipped)
    {
        ArgumentNullException.ThrowIfNull(rm);
        ArgumentNullException.ThrowIfNull(interventions);
        ArgumentNullException.ThrowIfNull(skipped);
        int L = rm.Config.NLayers, T = rm.Tokens.Count;
        var byKey = new Dictionary<(int, int, int), int>();
        var list = new List<ResolvedIntervention>();
        foreach (var iv in interventions)
        {
            if ((uint)iv.Layer >= (uint)L) throw new ArgumentException($"{iv}: layer {iv.Layer} does not exist (the model has layers 0–{L - 1})");
            int dSae = rm.Transcoders[iv.Layer].DSae;
            if ((uint)iv.Latent >= (uint)dSae) throw new ArgumentException($"{iv}: latent {iv.Latent} is outside layer {iv.Layer}'s transcoder (d_sae {dSae}: latents 0–{dSae - 1})");
            if (!float.IsFinite(iv.Value)) throw new ArgumentException($"{iv}: the value must be finite");
            IEnumerable<int> positions;
            if (iv.Pos is int p)
            {
                if (p < -T || p >= T) throw new ArgumentException($"{iv}: position {p} is outside the prompt's {T} tokens (0–{T - 1}, or −{T}–−1 from the end)");
                positions = [p < 0 ? T + p : p];
            }
            else positions = Enumerable.Range(0, T).Where(q => Clean(rm, iv.Layer, q, iv.Latent) != 0);
            bool any = false;
            foreach (int q in positions)
            {
                float clean = Clean(rm, iv.Layer, q, iv.Latent);
                if (iv.Kind != InterventionKind.Set && clean == 0)
                {
                    skipped.Add($"{iv}: latent {iv.Latent} of layer {iv.Layer} is not active at position {q}, so a {iv.Kind.ToString().ToLowerInvariant()} leaves it alone");
                    continue;
                }
                var r = new ResolvedIntervention(iv.Layer, q, iv.Latent, clean, iv.Kind == InterventionKind.Zero ? 0 : iv.Value);
                if (byKey.TryGetValue((iv.Layer, q, iv.Latent), out int at)) list[at] = r;
                else { byKey[(iv.Layer, q, iv.Latent)] = list.Count; list.Add(r); }
                any = true;
            }
            if (!any && iv.Pos is null) skipped.Add($"{iv}: latent {iv.Latent} of layer {iv.Layer} is active at no position of the prompt");
        }
        return list;
    }

    static float Clean(ReplacementModel rm, int layer, int pos, int latent)
    {
        int s = rm.SourceIndex(new GraphNode(GraphNodeKind.Feature, layer, pos, latent));
        return s < 0 ? 0 : rm.SourceActivations[s];
    }

    /// <summary>Runs one intervention set on the prompt of <paramref name="rm"/> (built from <paramref name="model"/>) in the three models.</summary>
    public static InterventionResult Run(HookedTransformer model, ReplacementModel rm, IReadOnlyList<FeatureIntervention> interventions)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(rm);
        var skipped = new List<string>();
        var edits = Resolve(rm, interventions, skipped);
        var tokens = rm.Tokens.ToArray();
        int T = tokens.Length, V = model.Config.VocabSize;
        var baseline = new ReadOnlySpan<float>(rm.CleanLogits.Data, (T - 1) * V, V).ToArray();

        var frozen = RunReplacement(rm, edits);
        var linear = LinearLogits(model, rm, edits, baseline, out _);
        var real = RunReal(model, rm.Transcoder, tokens, edits);

        // graph logit nodes: Σ over active edits of Δa/a·A[logit, s] from the graph's rows, plus the inactive edits' part of the
        // linear prediction (their Δlogit minus its mean: a logit node's input is the logit minus the mean logit)
        var graphLogits = new List<GraphLogitChange>();
        if (rm.Logits.Count > 0)
        {
            int S = rm.Sources.Count, n = rm.Logits.Count;
            var rows = new float[(long)n * S]; var inputs = new float[n]; var biases = new float[n];
            rm.ComputeRows(rm.Logits, rows, inputs, biases);
            var inactive = edits.Where(e => !e.Active).ToList();
            float[]? inactiveDelta = inactive.Count > 0 ? DeltaLogits(model, rm, inactive) : null;
            double inactiveMean = inactiveDelta == null ? 0 : TensorPrimitives.Sum(inactiveDelta) / (double)V;
            var cleanFrozenLogits = rm.RunFrozen(rm.CleanValues());
            for (int i = 0; i < n; i++)
            {
                int token = rm.Logits[i].Index;
                double pred = 0;
                foreach (var e in edits.Where(e => e.Active))
                {
                    int s = rm.SourceIndex(new GraphNode(GraphNodeKind.Feature, e.Layer, e.Pos, e.Latent));
                    pred += (double)(e.Value - e.Clean) / e.Clean * rows[(long)i * S + s];
                }
                if (inactiveDelta != null) pred += inactiveDelta[token] - inactiveMean;
                double frozenDelta = (double)frozen.LogitInput(token) - cleanFrozenLogits.LogitInput(token);
                graphLogits.Add(new GraphLogitChange(token, inputs[i], pred, frozenDelta));
            }
        }
        return new InterventionResult
        {
            Tokens = tokens, Edits = edits, Skipped = skipped, Baseline = baseline,
            Replacement = new ReadOnlySpan<float>(frozen.Logits.Data, (T - 1) * V, V).ToArray(),
            Linear = linear, Real = real, GraphLogits = graphLogits,
        };
    }

    /// <summary>The frozen replacement model with the edits: active features by value, inactive latents through the error input.</summary>
    public static FrozenForwardResult RunReplacement(ReplacementModel rm, IReadOnlyList<ResolvedIntervention> edits)
    {
        ArgumentNullException.ThrowIfNull(rm);
        ArgumentNullException.ThrowIfNull(edits);
        var values = rm.CleanValues();
        int C = rm.Config.DModel;
        foreach (var e in edits)
        {
            int s = rm.SourceIndex(new GraphNode(GraphNodeKind.Feature, e.Layer, e.Pos, e.Latent));
            if (s >= 0) values.Features[s] = e.Value;
            else
            {
                // not a node: decoding it would add Value·direction to mlp_out at (layer, pos) of every layer it writes, as the
                // error inputs there do
                foreach (var (layer, dir) in rm.DecoderWrites(e.Layer, e.Latent))
                {
                    var err = values.Errors[layer].AsSpan(e.Pos * C, C);
                    TensorPrimitives.MultiplyAdd(dir, e.Value, err, err);
                }
            }
        }
        return rm.RunFrozen(values);
    }

    /// <summary>The baseline logits plus the linear prediction of their change (V); <paramref name="delta"/> is the change alone.</summary>
    public static float[] LinearLogits(HookedTransformer model, ReplacementModel rm, IReadOnlyList<ResolvedIntervention> edits, float[] baseline, out float[] delta)
    {
        ArgumentNullException.ThrowIfNull(baseline);
        delta = DeltaLogits(model, rm, edits);
        var result = new float[baseline.Length];
        TensorPrimitives.Add(baseline, delta, result);
        return result;
    }

    /// <summary>Σ_k Δa_k·∂logits/∂a_k at the last position (V): Δh = J·Δa (C), then Δlogits = Δh·W_U.</summary>
    static float[] DeltaLogits(HookedTransformer model, ReplacementModel rm, IReadOnlyList<ResolvedIntervention> edits)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(rm);
        int C = rm.Config.DModel, V = rm.Config.VocabSize, K = edits.Count;
        var dh = new double[C];
        if (K > 0)
        {
            var jac = rm.OutputJacobian(edits.Select(e => new GraphNode(GraphNodeKind.Feature, e.Layer, e.Pos, e.Latent)).ToList());
            for (int c = 0; c < C; c++)
                for (int k = 0; k < K; k++) dh[c] += (double)jac[(long)c * K + k] * (edits[k].Value - edits[k].Clean);
        }
        var wu = model.Weights.Unembed;   // (C, V)
        var delta = new float[V];
        for (int v = 0; v < V; v++)
        {
            double s = 0;
            for (int c = 0; c < C; c++) s += dh[c] * wu[c, v];
            delta[v] = (float)s;
        }
        return delta;
    }

    /// <summary>
    /// The real model on <paramref name="tokens"/> with every transcoder (one per layer, in layer order, as
    /// <see cref="ReplacementModel.Transcoders"/>) spliced with its error term and the edited latents set: the logits (V) at the
    /// last position. See the <see cref="CrossLayerTranscoder"/> overload.
    /// </summary>
    public static float[] RunReal(HookedTransformer model, IReadOnlyList<Sae> transcoders, int[] tokens, IReadOnlyList<ResolvedIntervention> edits)
    {
        ArgumentNullException.ThrowIfNull(transcoders);
        return RunReal(model, CrossLayerTranscoder.FromPerLayer(transcoders), tokens, edits);
    }

    /// <summary>
    /// The real model on <paramref name="tokens"/> with the transcoder spliced with its error term (so unedited it is the model)
    /// and the edited latents set: each MLP output is the model's own plus, for every edit reaching that layer, (value − the
    /// latent's activation in this run)·its decoder direction into the layer — exactly what decoding the edited activations and
    /// adding the error term (true output − unedited reconstruction) gives. The latent's activation is encoded from its layer's
    /// input in this run, so edits upstream move it; every MLP downstream is recomputed. The logits (V) at the last position.
    /// </summary>
    public static float[] RunReal(HookedTransformer model, CrossLayerTranscoder transcoder, int[] tokens, IReadOnlyList<ResolvedIntervention> edits)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(transcoder);
        ArgumentNullException.ThrowIfNull(tokens);
        ArgumentNullException.ThrowIfNull(edits);
        var delta = new float[edits.Count];
        var hooks = new List<(string, HookFunction)>();
        // read: at the input hook of each edited layer, the edited latents' activations in this run
        foreach (var group in edits.Select((e, k) => (e, k)).GroupBy(x => x.e.Layer))
        {
            var sae = transcoder.Layers[group.Key];
            var items = group.ToList();
            hooks.Add((sae.Config.HookName, (act, _) =>
            {
                int d = act.Shape[2];   // act is [1, T, d_in]
                var saeIn = new float[d]; var pre = new float[sae.DSae]; var a = new float[sae.DSae];
                foreach (var (e, k) in items)
                {
                    sae.Preprocess(act.Data.AsSpan(e.Pos * d, d), saeIn, 1);
                    sae.PreActivations(saeIn, pre, 1);
                    sae.Activate(pre, a, 1);
                    delta[k] = e.Value - a[e.Latent];
                }
                return null;
            }
            ));
        }
        // write: at each layer's MLP output, Σ over the edits reaching it of Δ·direction
        var writes = edits.Select((e, k) => transcoder.DecoderWrites(e.Layer, e.Latent).Select(w => (w.Layer, w.Direction, Edit: k, e.Pos))).SelectMany(x => x).ToList();
        foreach (var layerWrites in writes.GroupBy(w => w.Layer))
        {
            var items = layerWrites.ToList();
            hooks.Add((transcoder.Layers[layerWrites.Key].Config.OutputHookName, (act, _) =>
            {
                int c = act.Shape[2];   // act is [1, T, d_model]
                foreach (var w in items)
                {
                    var o = act.Data.AsSpan(w.Pos * c, c);
                    TensorPrimitives.MultiplyAdd(w.Direction, delta[w.Edit], o, o);
                }
                return null;
            }
            ));
        }
        var logits = model.Run([tokens], new RunOptions { Hooks = hooks })!;
        int T = tokens.Length, V = model.Config.VocabSize;
        return new ReadOnlySpan<float>(logits.Data, (T - 1) * V, V).ToArray();
    }
}

/// <summary>The <c>featurelens intervene</c> JSON of an <see cref="InterventionResult"/>.</summary>
public static class InterventionJson
{
    /// <summary>The four models' names, in the order of the JSON's <c>predictions</c> and the CLI's columns.</summary>
    public static readonly string[] Models = ["baseline", "replacement", "linear", "real"];

    /// <summary>The logits (V) of one of <see cref="Models"/>.</summary>
    public static float[] Logits(InterventionResult r, string which)
    {
        ArgumentNullException.ThrowIfNull(r);
        return which switch
        {
            "baseline" => r.Baseline,
            "replacement" => r.Replacement,
            "linear" => r.Linear,
            "real" => r.Real,
            _ => throw new ArgumentException($"unknown model '{which}' (expected {string.Join(", ", Models)})", nameof(which)),
        };
    }

    /// <summary>Softmax probabilities (float64) of a logit vector.</summary>
    public static double[] Softmax(ReadOnlySpan<float> logits)
    {
        double max = double.NegativeInfinity, z = 0;
        foreach (float v in logits) max = Math.Max(max, v);
        var p = new double[logits.Length];
        for (int i = 0; i < p.Length; i++) z += p[i] = Math.Exp(logits[i] - max);
        for (int i = 0; i < p.Length; i++) p[i] /= z;
        return p;
    }

    /// <summary>The <paramref name="k"/> most likely tokens (ties by id) with their probabilities.</summary>
    public static (int Token, double Prob)[] Top(ReadOnlySpan<float> logits, int k)
    {
        var p = Softmax(logits);
        return Enumerable.Range(0, p.Length).OrderByDescending(i => p[i]).ThenBy(i => i).Take(k).Select(i => (i, p[i])).ToArray();
    }

    /// <summary>
    /// <c>{"tokens", "prompt_tokens", "position", "edits": [{layer, latent, pos, clean, value, active}], "skipped",
    /// "predictions": {baseline|replacement|linear|real: [{token, text, logit, prob}]}, "watched": [{token, text, baseline_logit,
    /// baseline_prob, delta: {replacement, linear, real}, prob: {replacement, linear, real}}], "graph_logits": [{token, text,
    /// clean_input, linear_delta, replacement_delta}]}</c>.
    /// </summary>
    public static JsonObject ToJson(InterventionResult r, Func<int, string> tokenText, int top, IReadOnlyList<int> watched)
    {
        ArgumentNullException.ThrowIfNull(r);
        ArgumentNullException.ThrowIfNull(tokenText);
        ArgumentNullException.ThrowIfNull(watched);
        var probs = Models.ToDictionary(m => m, m => Softmax(Logits(r, m)), StringComparer.Ordinal);
        var predictions = new JsonObject();
        foreach (var m in Models)
        {
            var logits = Logits(r, m);
            predictions[m] = new JsonArray(Top(logits, top).Select(t => (JsonNode)new JsonObject
            {
                ["token"] = t.Token, ["text"] = tokenText(t.Token), ["logit"] = logits[t.Token], ["prob"] = t.Prob,
            }).ToArray());
        }
        return new JsonObject
        {
            ["tokens"] = new JsonArray(r.Tokens.Select(t => (JsonNode)t).ToArray()),
            ["prompt_tokens"] = new JsonArray(r.Tokens.Select(t => (JsonNode)tokenText(t)).ToArray()),
            ["position"] = r.Tokens.Length - 1,
            ["edits"] = new JsonArray(r.Edits.Select(e => (JsonNode)new JsonObject
            {
                ["layer"] = e.Layer, ["latent"] = e.Latent, ["pos"] = e.Pos, ["clean"] = e.Clean, ["value"] = e.Value, ["active"] = e.Active,
            }).ToArray()),
            ["skipped"] = new JsonArray(r.Skipped.Select(s => (JsonNode)s).ToArray()),
            ["predictions"] = predictions,
            ["watched"] = new JsonArray(watched.Select(t => (JsonNode)new JsonObject
            {
                ["token"] = t, ["text"] = tokenText(t), ["baseline_logit"] = r.Baseline[t], ["baseline_prob"] = probs["baseline"][t],
                ["delta"] = new JsonObject { ["replacement"] = r.Replacement[t] - r.Baseline[t], ["linear"] = r.Linear[t] - r.Baseline[t], ["real"] = r.Real[t] - r.Baseline[t] },
                ["prob"] = new JsonObject { ["replacement"] = probs["replacement"][t], ["linear"] = probs["linear"][t], ["real"] = probs["real"][t] },
            }).ToArray()),
            ["graph_logits"] = new JsonArray(r.GraphLogits.Select(g => (JsonNode)new JsonObject
            {
                ["token"] = g.Token, ["text"] = tokenText(g.Token), ["clean_input"] = g.CleanInput, ["linear_delta"] = g.LinearDelta, ["replacement_delta"] = g.ReplacementDelta,
            }).ToArray()),
        };
    }

    /// <summary>Writes the JSON through a temporary file beside <paramref name="path"/>.</summary>
    public static void Write(string path, JsonObject json)
    {
        ArgumentNullException.ThrowIfNull(json);
        FeatureLens.Saes.Formats.SaeWriter.WriteAtomically(path, json.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
    }
}
