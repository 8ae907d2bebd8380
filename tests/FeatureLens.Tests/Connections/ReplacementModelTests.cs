using System.Text.Json;
using FeatureLens.Connections.Graphs;
using FeatureLens.Runtime.Checkpoints;
using FeatureLens.Runtime.Models;
using FeatureLens.Saes;
using FeatureLens.Tests.Saes;
using Xunit.Abstractions;

namespace FeatureLens.Tests.Connections;

/// <summary>The replacement-model oracle (python/replacement_reference.py): float64 autograd through an independently written frozen model.</summary>
internal static class ReplacementReference
{
    public static string Script => Path.Combine(AppContext.BaseDirectory, "python", "replacement_reference.py");

    public static string Run(string model, int[] tokens, string saesPath, string outPath, int features, int seed, string? qk = null)
    {
        string tokPath = outPath + ".tokens.json";
        File.WriteAllText(tokPath, JsonSerializer.Serialize(tokens));
        var args = new List<string> { "--model", model, "--tokens", tokPath, "--saes", saesPath, "--out", outPath,
            "--features", features.ToString(CultureInfo.InvariantCulture), "--seed", seed.ToString(CultureInfo.InvariantCulture) };
        if (qk != null) args.AddRange(["--qk", qk]);
        TorchReference.RunPython(Script, [.. args]);
        return outPath;
    }
}

/// <summary>Random transcoders and shared checks for the replacement-model tests.</summary>
internal static class ReplacementCheck
{
    static readonly string[] InputHooks = ["ln2.hook_normalized", "hook_mlp_in", "hook_resid_mid"];

    /// <summary>
    /// One random transcoder per layer: layer 0 a skip transcoder, layer 1 a JumpReLU transcoder, the others of a random kind;
    /// each reads a random one of the three MLP-input hooks, some subtract b_dec from their input.
    /// </summary>
    public static List<Sae> RandomTranscoders(Random rng, int layers, int C)
    {
        var list = new List<Sae>();
        for (int l = 0; l < layers; l++)
        {
            var arch = l switch
            {
                0 => SaeArchitecture.SkipTranscoder,
                1 => SaeArchitecture.JumpReluTranscoder,
                _ => new[] { SaeArchitecture.Transcoder, SaeArchitecture.SkipTranscoder, SaeArchitecture.JumpReluTranscoder }[rng.Next(3)],
            };
            string hook = $"blocks.{l}.{InputHooks[rng.Next(3)]}";
            list.Add(SaeTestData.Random(rng, arch, C, rng.Next(24, 72), hook, dOut: C, hookOut: $"blocks.{l}.hook_mlp_out", applyBDec: rng.Next(3) == 0,
                inputScale: hook.EndsWith("normalized", StringComparison.Ordinal) ? 1f : 0.7f));
        }
        return list;
    }

    public static string Describe(IEnumerable<Sae> saes) => string.Join(", ", saes.Select(s =>
        $"{SaeConfig.ArchitectureName(s.Config.Architecture)}@{s.Config.HookName} d_sae={s.DSae}{(s.Config.ApplyBDecToInput ? " b_dec-in" : "")}"));

    /// <summary>Every feature and logit node (all targets), in batches of <paramref name="batch"/>: rows, inputs, biases.</summary>
    public static (float[] Rows, float[] Inputs, float[] Biases, List<GraphNode> Targets) AllRows(ReplacementModel rm, int batch)
    {
        var targets = rm.Sources.Take(rm.FeatureCount).Concat(rm.Logits).ToList();
        int S = rm.Sources.Count;
        var rows = new float[(long)targets.Count * S]; var inputs = new float[targets.Count]; var biases = new float[targets.Count];
        for (int i = 0; i < targets.Count; i += batch)
        {
            int n = Math.Min(batch, targets.Count - i);
            rm.ComputeRows(targets.GetRange(i, n), rows.AsSpan(i * S, n * S), inputs.AsSpan(i, n), biases.AsSpan(i, n));
        }
        return (rows, inputs, biases, targets);
    }

    /// <summary>
    /// Completeness for every target: |Σ_s A[t, s] + bias_t − input_t| ≤ 1e-4 · max(|input_t|, |bias_t|, max_s |A[t, s]|).
    /// Returns the worst relative gap.
    /// </summary>
    public static double CheckCompleteness(float[] rows, float[] inputs, float[] biases, List<GraphNode> targets, int S, string context)
    {
        double worst = 0;
        for (int t = 0; t < targets.Count; t++)
        {
            var row = rows.AsSpan(t * S, S);
            double sum = biases[t], scale = Math.Max(Math.Abs(inputs[t]), Math.Abs(biases[t]));
            foreach (float a in row) { sum += a; scale = Math.Max(scale, Math.Abs(a)); }
            double rel = Math.Abs(sum - inputs[t]) / Math.Max(scale, 1e-12);
            worst = Math.Max(worst, rel);
            Assert.True(rel <= 1e-4, $"completeness of {targets[t]}: Σ A + bias = {sum:E6}, input {inputs[t]:E6} (relative gap {rel:E2}; {context})");
        }
        return worst;
    }
}

/// <summary>
/// The local replacement model against an independent PyTorch autograd oracle (python/replacement_reference.py, float64,
/// patterns and norm scales detached) on fresh random GPT-2 and Llama (GQA, RoPE) models with random transcoders (a skip
/// transcoder, a JumpReLU one, the three input hooks, b_dec subtracted at the input for some):
/// <list type="bullet">
/// <item>the node set and activations match (activations ≤ 1e-5 relative);</item>
/// <item>the frozen forward at the clean node values reproduces the model's logits (relative error ≤ 1e-5);</item>
/// <item>rows of a random sample of feature targets and of every logit target: max |ours − torch| ≤ 1e-4 × the row's largest
/// |entry|; inputs and biases to 1e-4 of the same scale;</item>
/// <item>completeness for every feature and logit node (≤ 1e-4, see <see cref="ReplacementCheck.CheckCompleteness"/>);</item>
/// <item>QK attribution of a random head and (query, key) pair: each source's q and k contribution vectors ≤ 1e-4 × the largest,
/// the biases likewise, and the sum over all pairs equals the model's score (≤ 1e-4 relative to Σ |q|·|k|/√d_head).</item>
/// </list>
/// Prompts are redrawn while a transcoder decision lies within 1e-5 (relative) of its boundary.
/// </summary>
public class ReplacementModelTests(ITestOutputHelper output)
{
    [Theory]
    [InlineData("gpt2")]
    [InlineData("llama")]
    public void RowsMatchTorchAutogradOnTheFrozenModel(string arch)
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        using var dir = new TempDir();
        var cfg = GradientCheck.RandomConfig(rng, arch, minLayers: 2);
        int vocab = (int)cfg["vocab"], C = (int)cfg["d_model"], L = (int)cfg["n_layers"], NH = (int)cfg["n_heads"];
        string modelDir = TorchReference.MakeModel(dir.Path, arch, cfg, "f32", seed);
        using var model = HookedTransformer.Load(modelDir);
        var tcs = ReplacementCheck.RandomTranscoders(rng, L, C);
        string saePath = dir.File("tc.safetensors");
        GradReference.WriteSaes(saePath, tcs);

        for (int attempt = 0; ; attempt++)
        {
            int[] tokens = Enumerable.Range(0, rng.Next(4, 13)).Select(_ => rng.Next(vocab)).ToArray();
            int qLayer = rng.Next(1, L), head = rng.Next(NH), qPos = rng.Next(tokens.Length), kPos = rng.Next(qPos + 1);
            string qk = $"{qLayer},{head},{qPos},{kPos}";
            string context = $"seed {seed}, {arch}, attempt {attempt}, tokens [{string.Join(",", tokens)}], qk {qk}, config {JsonSerializer.Serialize(cfg)}, transcoders {ReplacementCheck.Describe(tcs)}";
            output.WriteLine(context);
            string refPath = ReplacementReference.Run(modelDir, tokens, saePath, dir.File($"ref{attempt}.safetensors"), 24, seed, qk);
            using var reference = SafetensorsFile.Open(refPath);
            float margin = reference.ReadF32("margin").Data[0];
            if (margin < 1e-5f)
            {
                Assert.True(attempt < 5, $"no prompt with transcoder decisions clear of their boundaries in 6 draws ({context})");
                output.WriteLine($"a transcoder decision is {margin:E1} from its boundary; redrawing the prompt");
                continue;
            }
            var rm = ReplacementModel.Build(model, tcs, tokens);
            CompareWithOracle(rm, reference, context);
            CompareQk(rm, reference, qLayer, head, qPos, kPos, context);
            var (rows, inputs, biases, targets) = ReplacementCheck.AllRows(rm, 16);
            double worst = ReplacementCheck.CheckCompleteness(rows, inputs, biases, targets, rm.Sources.Count, context);
            output.WriteLine($"{rm.FeatureCount} features, {rm.Sources.Count} sources, {rm.Logits.Count} logit nodes; completeness worst {worst:E2}");
            return;
        }
    }

    void CompareWithOracle(ReplacementModel rm, SafetensorsFile reference, string context)
    {
        // ---- nodes ----
        var src = reference.ReadInt64("sources");
        int S = src.Length / 4;
        Assert.True(S == rm.Sources.Count, $"{rm.Sources.Count} sources vs torch {S} ({context})");
        for (int s = 0; s < S; s++)
        {
            var kind = (GraphNodeKind)src[s * 4];
            var theirs = new GraphNode(kind, (int)src[s * 4 + 1], (int)src[s * 4 + 2], (int)src[s * 4 + 3]);
            Assert.True(theirs == rm.Sources[s], $"source {s}: {rm.Sources[s]} vs torch {theirs} ({context})");
        }
        double actErr = Compare.RelativeError(rm.SourceActivations.ToArray(), reference.ReadF32("activations").Data, "activations");
        Assert.True(actErr <= 1e-5, $"source activations: relative error {actErr:E2} ({context})");

        // ---- the frozen forward reproduces the logits ----
        var frozen = rm.RunFrozen(rm.CleanValues());
        double own = Compare.RelativeError(frozen.Logits.Data, rm.CleanLogits.Data, "frozen vs model logits");
        double torchFrozen = Compare.RelativeError(frozen.Logits.Data, reference.ReadF32("frozen_logits").Data, "frozen logits vs torch");
        output.WriteLine($"frozen logits vs the model's: {own:E2}; vs torch's frozen model: {torchFrozen:E2}");
        Assert.True(own <= 1e-5, $"frozen replacement logits vs the model's: relative error {own:E2} ({context})");
        Assert.True(torchFrozen <= 1e-5, $"frozen replacement logits vs torch: relative error {torchFrozen:E2} ({context})");

        // ---- rows for the oracle's targets ----
        var tg = reference.ReadInt64("targets");
        int Nt = tg.Length / 4;
        var targets = Enumerable.Range(0, Nt).Select(t => new GraphNode((GraphNodeKind)tg[t * 4], (int)tg[t * 4 + 1], (int)tg[t * 4 + 2], (int)tg[t * 4 + 3])).ToList();
        var logitTargets = targets.Where(t => t.Kind == GraphNodeKind.Logit).ToList();
        Assert.True(logitTargets.SequenceEqual(rm.Logits), $"logit nodes [{string.Join(",", rm.Logits.Select(n => n.Index))}] vs torch [{string.Join(",", logitTargets.Select(n => n.Index))}] ({context})");
        var rows = new float[Nt * S]; var inputs = new float[Nt]; var biases = new float[Nt];
        rm.ComputeRows(targets, rows, inputs, biases);
        var rRows = reference.ReadF32("rows").Data; var rIn = reference.ReadF32("inputs").Data; var rBias = reference.ReadF32("biases").Data;
        double worst = 0;
        for (int t = 0; t < Nt; t++)
        {
            double scale = 0, diff = 0;
            for (int s = 0; s < S; s++) { scale = Math.Max(scale, Math.Abs(rRows[t * S + s])); diff = Math.Max(diff, Math.Abs(rows[t * S + s] - rRows[t * S + s])); }
            worst = Math.Max(worst, diff / scale);
            Assert.True(diff <= 1e-4 * scale, $"row of {targets[t]}: max |ours − torch| = {diff:E3}, largest |entry| {scale:E3} ({context})");
            double s2 = Math.Max(scale, Math.Abs(rIn[t]));
            Assert.True(Math.Abs(inputs[t] - rIn[t]) <= 1e-4 * s2, $"input of {targets[t]}: {inputs[t]:E6} vs torch {rIn[t]:E6} ({context})");
            Assert.True(Math.Abs(biases[t] - rBias[t]) <= 1e-4 * Math.Max(s2, Math.Abs(rBias[t])), $"bias of {targets[t]}: {biases[t]:E6} vs torch {rBias[t]:E6} ({context})");
        }
        output.WriteLine($"{Nt} target rows vs torch: worst max-difference / largest entry {worst:E2}");
    }

    void CompareQk(ReplacementModel rm, SafetensorsFile reference, int layer, int head, int qPos, int kPos, string context)
    {
        var qk = rm.AttributeScore(layer, head, qPos, kPos);
        double score = reference.ReadF32("qk_score").Data[0];
        Assert.True(Math.Abs(qk.Score - score) <= 1e-4 * Math.Max(Math.Abs(score), 1e-3), $"QK score {qk.Score:E6} vs torch {score:E6} ({context})");
        foreach (var (name, ours, bias) in new[] { ("q", qk.QueryContributions, qk.QueryBias), ("k", qk.KeyContributions, qk.KeyBias) })
        {
            var theirs = reference.ReadF32($"qk_{name}").Data;
            var theirBias = reference.ReadF32($"qk_{name}bias").Data;
            double scale = Math.Max(theirs.Max(Math.Abs), theirBias.Max(Math.Abs)), diff = 0;
            for (int i = 0; i < theirs.Length; i++) diff = Math.Max(diff, Math.Abs(ours[i] - theirs[i]));
            for (int i = 0; i < theirBias.Length; i++) diff = Math.Max(diff, Math.Abs(bias[i] - theirBias[i]));
            Assert.True(diff <= 1e-4 * scale, $"QK {name} contributions: max |ours − torch| {diff:E3}, largest {scale:E3} ({context})");
        }
        // the pairs sum to the score the model computed
        double sum = qk.SumOfPairs();
        int HS = qk.QueryBias.Length;
        double mag = 0;
        for (int d = 0; d < HS; d++) mag += Math.Abs(qk.CleanQuery[d] * qk.CleanKey[d]);
        mag /= Math.Sqrt(HS);
        Assert.True(Math.Abs(sum - qk.Score) <= 1e-4 * Math.Max(mag, Math.Abs(qk.Score)), $"Σ pairs {sum:E6} vs score {qk.Score:E6} ({context})");
        output.WriteLine($"QK layer {layer} head {head} ({qPos}→{kPos}): score {qk.Score:F5}, Σ pairs {sum:F5}");
    }
}

/// <summary>
/// On the real stories260K model (Llama, 5 layers, GQA, interleaved RoPE) with random transcoders: the frozen model reproduces
/// the logits (≤ 1e-5), completeness holds for every feature and logit node (≤ 1e-4), and interventions on the frozen model move
/// every target input by exactly the edge's prediction: scaling a source feature (the strongest of 16 random ones) by (1 + r),
/// r = ±1, moves input_t by r·A[t, s]
/// (|Δ − r·A| ≤ 1e-4 · max(max_t |r·A[t, s]|, 1e-3·|input_t|)), and the same for an error node.
/// </summary>
public class ReplacementInterventionTests(ITestOutputHelper output)
{
    static string Bin => Path.Combine(TestPaths.Shared, "models", "stories260K", "stories260K.bin");

    [Fact]
    public void InterventionsMoveTargetsByTheEdgePredictions()
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        using var model = HookedTransformer.Load(Bin);
        var tcs = ReplacementCheck.RandomTranscoders(rng, model.Config.NLayers, model.Config.DModel);
        int[] tokens = [1, .. Enumerable.Range(0, rng.Next(5, 14)).Select(_ => rng.Next(3, 512))];
        string context = $"seed {seed}, tokens [{string.Join(",", tokens)}], transcoders {ReplacementCheck.Describe(tcs)}";
        output.WriteLine(context);
        var rm = ReplacementModel.Build(model, tcs, tokens);
        var clean = rm.RunFrozen(rm.CleanValues());
        double logitErr = Compare.RelativeError(clean.Logits.Data, rm.CleanLogits.Data, "frozen logits");
        Assert.True(logitErr <= 1e-5, $"frozen logits vs model: {logitErr:E2} ({context})");

        var (rows, inputs, biases, targets) = ReplacementCheck.AllRows(rm, 32);
        int S = rm.Sources.Count;
        double worstComplete = ReplacementCheck.CheckCompleteness(rows, inputs, biases, targets, S, context);
        output.WriteLine($"{rm.FeatureCount} features, {S} sources, {rm.Logits.Count} logits; completeness worst {worstComplete:E2}");

        double Input(FrozenForwardResult r, GraphNode t) => t.Kind == GraphNodeKind.Logit ? r.LogitInput(t.Index) : r.FeatureInputs[rm.SourceIndex(t)];
        var baseInputs = targets.Select(t => Input(clean, t)).ToArray();
        // intervene (zero or double) on the 4 features with the largest edges among 16 random ones (so that the moves stand
        // clear of float32 rounding of the inputs themselves), and on one random error node
        double Largest(int s) => Enumerable.Range(0, targets.Count).Max(t => Math.Abs(rows[(long)t * S + s]));
        var sources = Enumerable.Range(0, 16).Select(_ => rng.Next(rm.FeatureCount)).Distinct().OrderByDescending(Largest).Take(4)
            .Append(rm.FeatureCount + rng.Next(model.Config.NLayers * tokens.Length)).ToList();
        double worst = 0;
        foreach (int s in sources)
        {
            double r = rng.Next(2) == 0 ? -1.0 : 1.0;
            var values = rm.CleanValues();
            if (s < rm.FeatureCount) values.Features[s] *= (float)(1 + r);
            else
            {
                var node = rm.Sources[s];
                var e = values.Errors[node.Layer].AsSpan(node.Pos * model.Config.DModel, model.Config.DModel);
                System.Numerics.Tensors.TensorPrimitives.Multiply(e, (float)(1 + r), e);
            }
            var moved = rm.RunFrozen(values);
            double scale = 0;
            for (int t = 0; t < targets.Count; t++) scale = Math.Max(scale, Math.Abs(r * rows[(long)t * S + s]));
            for (int t = 0; t < targets.Count; t++)
            {
                double delta = Input(moved, targets[t]) - baseInputs[t], predicted = r * rows[(long)t * S + s];
                double tol = 1e-4 * Math.Max(scale, 1e-3 * Math.Abs(baseInputs[t]));
                worst = Math.Max(worst, Math.Abs(delta - predicted) / Math.Max(scale, 1e-12));
                Assert.True(Math.Abs(delta - predicted) <= tol,
                    $"scaling {rm.Sources[s]} by {1 + r}: {targets[t]} moved {delta:E6}, the edge predicts {predicted:E6} (largest prediction {scale:E3}; {context})");
            }
        }
        output.WriteLine($"interventions: worst |Δ − prediction| / largest prediction {worst:E2}");
    }
}

/// <summary>Bad input to the replacement model is a clear ArgumentException naming what is wrong (stories260K: 5 layers, d_model 64, n_ctx 512).</summary>
public class ReplacementModelInputTests
{
    static string Bin => Path.Combine(TestPaths.Shared, "models", "stories260K", "stories260K.bin");

    static Sae Tc(Random rng, int layer, string hook = "ln2.hook_normalized", int dIn = 64, int dOut = 64, string? hookOut = null,
        SaeArchitecture arch = SaeArchitecture.Transcoder, ActivationNormalization norm = ActivationNormalization.None) =>
        SaeTestData.Random(rng, arch, dIn, 32, $"blocks.{layer}.{hook}", dOut: dOut, hookOut: arch == SaeArchitecture.Standard ? null : hookOut ?? $"blocks.{layer}.hook_mlp_out", norm: norm);

    [Fact]
    public void BadTranscodersPromptsAndTargetsAreClearErrors()
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        using var model = HookedTransformer.Load(Bin);
        List<Sae> Good() => Enumerable.Range(0, 5).Select(l => Tc(rng, l)).ToList();
        int[] prompt = [1, 300, 42, 17];
        void Expect(Action build, params string[] parts)
        {
            var e = Assert.ThrowsAny<ArgumentException>(build);
            foreach (var part in parts) Assert.True(e.Message.Contains(part, StringComparison.Ordinal), $"'{e.Message}' should mention '{part}' (seed {seed})");
        }
        List<Sae> With(int layer, Sae sae) { var l = Good(); l[layer] = sae; return l; }

        Expect(() => ReplacementModel.Build(model, With(2, Tc(rng, 7)), prompt), "transcoder 2", "blocks.7.ln2.hook_normalized", "lacks");
        Expect(() => ReplacementModel.Build(model, With(1, Tc(rng, 1, "hook_resid_pre")), prompt), "blocks.1.hook_resid_pre", "not an MLP input");
        Expect(() => ReplacementModel.Build(model, With(3, Tc(rng, 3, dIn: 48)), prompt), "transcoder 3", "d_in is 48", "d_model is 64");
        Expect(() => ReplacementModel.Build(model, With(0, Tc(rng, 0, dOut: 32)), prompt), "transcoder 0", "d_out is 32");
        Expect(() => ReplacementModel.Build(model, With(0, Tc(rng, 0, hookOut: "blocks.1.hook_mlp_out")), prompt), "writes 'blocks.1.hook_mlp_out'", "blocks.0.hook_mlp_out");
        Expect(() => ReplacementModel.Build(model, With(4, Tc(rng, 2, "hook_mlp_in")), prompt), "two transcoders for layer 2", "transcoder 2", "transcoder 4");
        Expect(() => ReplacementModel.Build(model, Good().Where((_, l) => l != 3).ToList(), prompt), "no transcoder for layer 3");
        Expect(() => ReplacementModel.Build(model, With(1, Tc(rng, 1, arch: SaeArchitecture.Standard)), prompt), "transcoder 1", "'standard' is not a transcoder");
        Expect(() => ReplacementModel.Build(model, With(1, Tc(rng, 1, norm: ActivationNormalization.ConstantNormRescale)), prompt), "constant_norm_rescale");
        Expect(() => ReplacementModel.Build(model, Good(), Enumerable.Repeat(5, 513).ToArray()), "513 tokens", "context is 512");
        Expect(() => ReplacementModel.Build(model, Good(), []), "empty");
        Expect(() => ReplacementModel.Build(model, Good(), [1, 600]), "600");

        var rm = ReplacementModel.Build(model, Good(), prompt);
        int S = rm.Sources.Count;
        var err = rm.Sources[rm.FeatureCount];
        Expect(() => rm.ComputeRows([err], new float[S], new float[1], new float[1]), "Error node", "only features and logits");
        var inactive = Enumerable.Range(0, 32).Select(j => new GraphNode(GraphNodeKind.Feature, 0, 0, j)).First(n => rm.SourceIndex(n) < 0);
        Expect(() => rm.ComputeRows([inactive], new float[S], new float[1], new float[1]), "not an active feature");
        Expect(() => rm.ComputeRows([new GraphNode(GraphNodeKind.Logit, 5, 3, rm.Logits[0].Index + 1000)], new float[S], new float[1], new float[1]), "not one of this graph's logit nodes");
        Expect(() => rm.ComputeRows([rm.Logits[0], rm.Logits[0]], new float[S], new float[2], new float[2]), "rows", $"{2 * S}");
        Expect(() => rm.AttributeScore(0, 0, 1, 2), "key position 2");
    }
}
