using System.Text.Json;
using FeatureLens.Connections.Graphs;
using FeatureLens.Runtime.Models;
using FeatureLens.Saes;
using Xunit.Abstractions;

namespace FeatureLens.Tests.Connections;

/// <summary>
/// Interventions on graph features (<see cref="GraphInterventions"/>) on stories260K (and a random GPT-2 for the torch check)
/// with fresh random transcoders and prompts each run:
/// <list type="bullet">
/// <item>the frozen replacement model's logits under the edits equal the graph's linear prediction (the frozen model is linear):
/// every vocabulary logit and every graph logit node's Σ Δa/a·A[logit, s], ≤ 1e-4 × max(1, largest |logit|);</item>
/// <item>the real model with the transcoders spliced with error terms and no edits is the model (≤ 1e-5 × max(1, |logit|));</item>
/// <item>the real intervened model against python/intervention_reference.py (torch float64, everything downstream recomputed) ≤ 1e-4 × max(1, |logit|);</item>
/// <item>resolution: * is the active positions, clamp and zero skip inactive positions, bad specs and out-of-range edits are clear errors.</item>
/// </list>
/// </summary>
public sealed class GraphInterventionTests(ITestOutputHelper output)
{
    static string Stories => Path.Combine(TestPaths.Shared, "models", "stories260K", "stories260K.bin");

    static ReplacementModel Build(HookedTransformer model, Random rng, out List<Sae> tcs, out int[] tokens)
    {
        tcs = ReplacementCheck.RandomTranscoders(rng, model.Config.NLayers, model.Config.DModel);
        tokens = [1, .. Enumerable.Range(0, rng.Next(5, 12)).Select(_ => rng.Next(3, model.Config.VocabSize))];
        return ReplacementModel.Build(model, tcs, tokens);
    }

    /// <summary>
    /// A few active features set to random values or zeroed, and one inactive latent set somewhere; each where it can reach
    /// the last position's logits (below the last layer, or at the last position).
    /// </summary>
    static List<FeatureIntervention> RandomEdits(ReplacementModel rm, Random rng)
    {
        var list = new List<FeatureIntervention>();
        int T = rm.Tokens.Count, L = rm.Config.NLayers;
        bool Reaches(GraphNode n) => n.Layer < L - 1 || n.Pos == T - 1;
        var candidates = rm.Sources.Take(rm.FeatureCount).Where(Reaches).ToList();
        int count = rng.Next(1, 4);
        for (int i = 0; i < count && candidates.Count > 0; i++)
        {
            var n = candidates[rng.Next(candidates.Count)];
            candidates.Remove(n);
            float a = rm.SourceActivations[rm.SourceIndex(n)];
            list.Add(rng.Next(3) == 0 ? new FeatureIntervention(InterventionKind.Zero, n.Layer, n.Index, n.Pos, 0)
                : new FeatureIntervention(rng.Next(2) == 0 ? InterventionKind.Set : InterventionKind.Clamp, n.Layer, n.Index, n.Pos, a * (float)(rng.NextDouble() * 4 - 1)));
        }
        for (int tries = 0; tries < 100; tries++)
        {
            int l = rng.Next(L), p = rng.Next(T), j = rng.Next(rm.Transcoders[l].DSae);
            if (!Reaches(new GraphNode(GraphNodeKind.Feature, l, p, j))) continue;
            if (rm.SourceIndex(new GraphNode(GraphNodeKind.Feature, l, p, j)) >= 0) continue;
            list.Add(new FeatureIntervention(InterventionKind.Set, l, j, p - (rng.Next(2) == 0 ? T : 0), (float)(0.5 + rng.NextDouble() * 2)));
            break;
        }
        return list;
    }

    static double MaxAbs(ReadOnlySpan<float> x) { double m = 0; foreach (float v in x) m = Math.Max(m, Math.Abs(v)); return m; }

    [Fact]
    public void FrozenModelEqualsTheLinearPrediction()
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        using var model = HookedTransformer.Load(Stories);
        for (int round = 0; round < 3; round++)
        {
            var rm = Build(model, rng, out _, out var tokens);
            var edits = RandomEdits(rm, rng);
            string context = $"seed {seed}, round {round}, tokens [{string.Join(",", tokens)}], edits [{string.Join("; ", edits)}]";
            var r = GraphInterventions.Run(model, rm, edits);
            Assert.True(r.Skipped.Count == 0, $"skipped: {string.Join("; ", r.Skipped)} ({context})");
            Assert.Contains(r.Edits, e => !e.Active);

            double scale = Math.Max(1, MaxAbs(r.Replacement)), moved = 0, worst = 0;
            for (int v = 0; v < r.Baseline.Length; v++)
            {
                moved = Math.Max(moved, Math.Abs(r.Replacement[v] - r.Baseline[v]));
                worst = Math.Max(worst, Math.Abs(r.Replacement[v] - r.Linear[v]));
            }
            output.WriteLine($"{context}: logits moved up to {moved:E2}; |frozen − linear| ≤ {worst:E2} (scale {scale:F2})");
            Assert.True(moved > 1e-3, $"the edits moved no logit ({context})");
            Assert.True(worst <= 1e-4 * scale, $"frozen vs linear logits differ by {worst:E2} > 1e-4 × {scale:F2} ({context})");

            Assert.Equal(rm.Logits.Count, r.GraphLogits.Count);
            foreach (var g in r.GraphLogits)
                Assert.True(Math.Abs(g.LinearDelta - g.ReplacementDelta) <= 1e-4 * scale,
                    $"logit node {g.Token}: Σ Δa/a·A = {g.LinearDelta:E6}, frozen model {g.ReplacementDelta:E6} ({context})");

            // the same through the graph rows alone, for active edits only: Σ Δa/a·A[logit, s] of ComputeRows
            var active = r.Edits.Where(e => e.Active).ToList();
            var frozenActive = GraphInterventions.RunReplacement(rm, active);
            var clean = rm.RunFrozen(rm.CleanValues());
            int S = rm.Sources.Count;
            var rows = new float[rm.Logits.Count * S];
            rm.ComputeRows(rm.Logits, rows, new float[rm.Logits.Count], new float[rm.Logits.Count]);
            for (int i = 0; i < rm.Logits.Count; i++)
            {
                double pred = active.Sum(e => (double)(e.Value - e.Clean) / e.Clean * rows[i * S + rm.SourceIndex(new GraphNode(GraphNodeKind.Feature, e.Layer, e.Pos, e.Latent))]);
                double actual = (double)frozenActive.LogitInput(rm.Logits[i].Index) - clean.LogitInput(rm.Logits[i].Index);
                Assert.True(Math.Abs(pred - actual) <= 1e-4 * scale, $"logit node {rm.Logits[i].Index}, active edits: rows {pred:E6}, frozen {actual:E6} ({context})");
            }
        }
    }

    [Fact]
    public void RealModelWithoutEditsIsTheModel()
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        using var model = HookedTransformer.Load(Stories);
        var rm = Build(model, rng, out _, out var tokens);
        var real = GraphInterventions.RunReal(model, rm.Transcoders, tokens, []);
        int T = tokens.Length, V = model.Config.VocabSize;
        var clean = rm.CleanLogits.Data.AsSpan((T - 1) * V, V);
        double scale = Math.Max(1, MaxAbs(clean)), worst = 0;
        for (int v = 0; v < V; v++) worst = Math.Max(worst, Math.Abs(real[v] - clean[v]));
        output.WriteLine($"seed {seed}: |spliced − model| ≤ {worst:E2} (scale {scale:F2})");
        Assert.True(worst <= 1e-5 * scale, $"spliced unedited model differs from the model by {worst:E2} (seed {seed}, tokens [{string.Join(",", tokens)}])");
    }

    [Theory]
    [InlineData("stories")]
    [InlineData("gpt2")]
    public void RealInterventionMatchesTorch(string which)
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        using var dir = new TempDir();
        string modelPath = Stories;
        if (which == "gpt2")
        {
            var cfg = GradientCheck.RandomConfig(rng, "gpt2", minLayers: 2);
            modelPath = TorchReference.MakeModel(dir.Path, "gpt2", cfg, "f32", seed);
        }
        using var model = HookedTransformer.Load(modelPath);
        var tcs = ReplacementCheck.RandomTranscoders(rng, model.Config.NLayers, model.Config.DModel);
        int[] tokens = Enumerable.Range(0, rng.Next(4, 11)).Select(_ => rng.Next(model.Config.VocabSize)).ToArray();
        var rm = ReplacementModel.Build(model, tcs, tokens);
        var edits = GraphInterventions.Resolve(rm, RandomEdits(rm, rng), []);
        string context = $"seed {seed}, {which}, tokens [{string.Join(",", tokens)}], edits [{string.Join("; ", edits)}]";
        var ours = GraphInterventions.RunReal(model, rm.Transcoders, tokens, edits);

        string saes = dir.File("tc.safetensors"), tokPath = dir.File("tokens.json"), editPath = dir.File("edits.json"), outPath = dir.File("out.json");
        GradReference.WriteSaes(saes, tcs);
        File.WriteAllText(tokPath, JsonSerializer.Serialize(tokens));
        File.WriteAllText(editPath, JsonSerializer.Serialize(edits.Select(e => new object[] { e.Layer, e.Pos, e.Latent, (double)e.Value })));
        TorchReference.RunPython(Path.Combine(AppContext.BaseDirectory, "python", "intervention_reference.py"),
            "--model", modelPath, "--tokens", tokPath, "--saes", saes, "--edits", editPath, "--out", outPath);
        using var doc = JsonDocument.Parse(File.ReadAllText(outPath));
        var theirs = doc.RootElement.GetProperty("edited").EnumerateArray().Select(x => x.GetDouble()).ToArray();
        var theirsClean = doc.RootElement.GetProperty("clean").EnumerateArray().Select(x => x.GetDouble()).ToArray();
        double scale = Math.Max(1, theirs.Max(Math.Abs)), worst = 0, moved = 0;
        for (int v = 0; v < theirs.Length; v++)
        {
            worst = Math.Max(worst, Math.Abs(ours[v] - theirs[v]));
            moved = Math.Max(moved, Math.Abs(theirs[v] - theirsClean[v]));
        }
        output.WriteLine($"{context}: edits moved torch's logits up to {moved:E2}; |ours − torch| ≤ {worst:E2} (scale {scale:F2})");
        Assert.True(moved > 1e-3, $"the edits moved nothing ({context})");
        Assert.True(worst <= 1e-4 * scale, $"real intervened logits differ from torch by {worst:E2} > 1e-4 × {scale:F2} ({context})");
    }

    [Fact]
    public void ResolutionAndBadInput()
    {
        var rng = new Random(Random.Shared.Next());
        using var model = HookedTransformer.Load(Stories);
        var rm = Build(model, rng, out _, out var tokens);
        int T = tokens.Length;
        var f = rm.Sources[rng.Next(rm.FeatureCount)];
        var activePositions = Enumerable.Range(0, T).Where(p => rm.SourceIndex(f with { Pos = p }) >= 0).ToList();

        var skipped = new List<string>();
        var star = GraphInterventions.Resolve(rm, [FeatureIntervention.Parse(InterventionKind.Clamp, $"{f.Layer}:{f.Index}@*=2.5")], skipped);
        Assert.Equal(activePositions, star.Select(e => e.Pos).ToList());
        Assert.All(star, e => Assert.Equal(2.5f, e.Value));
        Assert.Empty(skipped);
        int inactive = Enumerable.Range(0, T).FirstOrDefault(p => !activePositions.Contains(p), -1);
        if (inactive >= 0)
        {
            var c = GraphInterventions.Resolve(rm, [new FeatureIntervention(InterventionKind.Clamp, f.Layer, f.Index, inactive, 3)], skipped);
            Assert.Empty(c);
            Assert.Single(skipped);
            var s = GraphInterventions.Resolve(rm, [new FeatureIntervention(InterventionKind.Set, f.Layer, f.Index, inactive - T, 3)], skipped);
            Assert.Equal(inactive, Assert.Single(s).Pos);
            Assert.False(s[0].Active);
        }
        var z = FeatureIntervention.Parse(InterventionKind.Zero, $"{f.Layer}:{f.Index}@{f.Pos}");
        Assert.Equal(0f, Assert.Single(GraphInterventions.Resolve(rm, [z], skipped)).Value);

        void Bad(string expect, Action a) => Assert.Contains(expect, Assert.ThrowsAny<ArgumentException>(a).Message, StringComparison.Ordinal);
        Bad("no '=VALUE'", () => FeatureIntervention.Parse(InterventionKind.Set, "1:2@3"));
        Bad("zero takes no value", () => FeatureIntervention.Parse(InterventionKind.Zero, "1:2@3=1"));
        Bad("no '@POS'", () => FeatureIntervention.Parse(InterventionKind.Set, "1:2=1"));
        Bad("position 'x'", () => FeatureIntervention.Parse(InterventionKind.Set, "1:2@x=1"));
        Bad("'nan' is not a finite", () => FeatureIntervention.Parse(InterventionKind.Clamp, "1:2@0=nan"));
        Bad("LAYER:LATENT", () => FeatureIntervention.Parse(InterventionKind.Set, "12@0=1"));
        Bad("layer '-1'", () => FeatureIntervention.Parse(InterventionKind.Set, "-1:2@0=1"));
        int L = model.Config.NLayers, D = rm.Transcoders[0].DSae;
        Bad($"layer {L} does not exist", () => GraphInterventions.Resolve(rm, [new FeatureIntervention(InterventionKind.Set, L, 0, 0, 1)], skipped));
        Bad($"d_sae {D}", () => GraphInterventions.Resolve(rm, [new FeatureIntervention(InterventionKind.Set, 0, D, 0, 1)], skipped));
        Bad($"position {T} is outside the prompt's {T} tokens", () => GraphInterventions.Resolve(rm, [new FeatureIntervention(InterventionKind.Set, 0, 0, T, 1)], skipped));
        Bad($"position {-T - 1} is outside", () => GraphInterventions.Resolve(rm, [new FeatureIntervention(InterventionKind.Set, 0, 0, -T - 1, 1)], skipped));
    }
}
