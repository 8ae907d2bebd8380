using System.Text.Json;
using System.Text.Json.Nodes;
using FeatureLens.Connections.Graphs;
using FeatureLens.Runtime.Checkpoints;
using FeatureLens.Runtime.Models;
using FeatureLens.Saes;
using FeatureLens.Saes.Formats;
using FeatureLens.Tests.Cli;
using FeatureLens.Tests.Saes;
using Xunit.Abstractions;

namespace FeatureLens.Tests.Connections;

/// <summary>Random cross-layer transcoders and the CLT oracle (python/clt_reference.py: the circuit-tracer folder read and run in float64 torch).</summary>
internal static class CltCheck
{
    public static string Script => Path.Combine(AppContext.BaseDirectory, "python", "clt_reference.py");

    /// <summary>
    /// A random CLT of <paramref name="layers"/> layers: every layer reads blocks.i.<paramref name="inputHook"/> and writes
    /// blocks.i.hook_mlp_out, ReLU or JumpReLU (thresholds in [0.05, 0.25]), d_transcoder in [16, 40), decoders into every later layer.
    /// </summary>
    public static CrossLayerTranscoder Random(Random rng, int layers, int C, string inputHook, bool jump)
    {
        int D = rng.Next(16, 40);
        float inputScale = inputHook.EndsWith("normalized", StringComparison.Ordinal) ? 1f : 0.7f;
        var arch = jump ? SaeArchitecture.JumpReluTranscoder : SaeArchitecture.Transcoder;
        var saes = Enumerable.Range(0, layers).Select(l => SaeTestData.Random(rng, arch, C, D, $"blocks.{l}.{inputHook}", dOut: C,
            hookOut: $"blocks.{l}.hook_mlp_out", inputScale: inputScale)).ToList();
        var later = new float[]?[layers][];
        for (int i = 0; i < layers; i++)
            later[i] = Enumerable.Range(i + 1, layers - 1 - i).Select(_ => SaeTestData.Gaussian(rng, (long)D * C, 0.3f / MathF.Sqrt(C) * inputScale)).ToArray();
        return new CrossLayerTranscoder(saes, later);
    }

    public static string Describe(CrossLayerTranscoder clt) =>
        $"{clt.NLayers} layers, {SaeConfig.ArchitectureName(clt.Layers[0].Config.Architecture)} d_tc={clt.Layers[0].DSae} reading {clt.Layers[0].Config.HookName}";
}

/// <summary>
/// Cross-layer transcoders (circuit-tracer's format and semantics) against python/clt_reference.py, an independent float64 torch
/// reading of the same folder:
/// <list type="bullet">
/// <item>the folder round-trips (written by <see cref="CircuitTracerFormat.SaveCrossLayer"/>, read back bit-identically) and its
/// reconstruction recon_j = Σ_{i ≤ j} a_i·W_dec_i[:, j − i] + b_dec_j matches torch (relative error ≤ 1e-5, activations too);</item>
/// <item>on fresh random GPT-2 and Llama models, the replacement model built from the CLT reproduces the model's logits (≤ 1e-5),
/// its node set and activations match torch's (≤ 1e-5), rows of 24 random feature targets and every logit target match torch
/// autograd through the frozen CLT replacement model (max |ours − torch| ≤ 1e-4 × the row's largest |entry|; inputs, biases
/// likewise), completeness holds for every feature and logit node (≤ 1e-4), and the real model spliced with the CLT and no edits
/// is the model (≤ 1e-5 of the logit scale).</item>
/// </list>
/// Inputs or prompts are redrawn while a decision (pre-activation vs 0 or threshold) lies within 1e-5 (relative) of its boundary.
/// </summary>
public class CrossLayerTranscoderTests(ITestOutputHelper output)
{
    [Fact]
    public void ReconstructionMatchesTorchAndTheFolderRoundTrips()
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        using var dir = new TempDir();
        int L = rng.Next(2, 5), C = rng.Next(8, 24);
        var clt = CltCheck.Random(rng, L, C, "hook_resid_mid", jump: rng.Next(2) == 0);
        string folder = Path.Combine(dir.Path, "clt");
        CircuitTracerFormat.SaveCrossLayer(clt, folder);
        Assert.Empty(Directory.GetFiles(folder, "*.tmp"));
        var loaded = CircuitTracerFormat.LoadCrossLayer(folder);
        string context = $"seed {seed}, C {C}, {CltCheck.Describe(clt)}";
        output.WriteLine(context);
        Assert.True(loaded.IsCrossLayer, context);
        for (int i = 0; i < L; i++)
        {
            Assert.Equal(clt.Layers[i].WEnc, loaded.Layers[i].WEnc);
            Assert.Equal(clt.Layers[i].BEnc, loaded.Layers[i].BEnc);
            Assert.Equal(clt.Layers[i].BDec, loaded.Layers[i].BDec);
            Assert.Equal(clt.Layers[i].Threshold, loaded.Layers[i].Threshold);
            Assert.Equal($"blocks.{i}.hook_resid_mid", loaded.Layers[i].Config.HookName);
            Assert.Equal($"blocks.{i}.hook_mlp_out", loaded.Layers[i].Config.OutputHookName);
            for (int j = 0; j < L; j++) Assert.Equal(clt.Decoder(i, j), loaded.Decoder(i, j));
        }

        for (int attempt = 0; ; attempt++)
        {
            int n = rng.Next(3, 12);
            var inputs = Enumerable.Range(0, L).Select(_ => SaeTestData.Gaussian(rng, (long)n * C, 0.7f)).ToArray();
            var w = new SafetensorsWriter();
            w.Add("x", new Runtime.Tensors.Tensor([L, n, C], [.. inputs.SelectMany(x => x)]));
            string inPath = dir.File($"x{attempt}.safetensors"), outPath = dir.File($"r{attempt}.safetensors");
            w.Write(inPath);
            TorchReference.RunPython(CltCheck.Script, "--clt", folder, "--recon", inPath, "--out", outPath);
            using var reference = SafetensorsFile.Open(outPath);
            float margin = reference.ReadF32("margin").Data[0];
            if (margin < 1e-5f)
            {
                Assert.True(attempt < 5, $"no input clear of the activation boundaries in 6 draws ({context})");
                continue;
            }
            var recon = loaded.Forward(inputs, n, out var acts);
            double reconErr = Compare.RelativeError([.. recon.SelectMany(r => r)], reference.ReadF32("recon").Data, "recon");
            double actErr = Compare.RelativeError([.. acts.SelectMany(a => a)], reference.ReadF32("acts").Data, "acts");
            output.WriteLine($"n {n}: reconstruction relative error {reconErr:E2}, activations {actErr:E2}");
            Assert.True(reconErr <= 1e-5, $"CLT reconstruction vs torch: relative error {reconErr:E2} ({context})");
            Assert.True(actErr <= 1e-5, $"CLT activations vs torch: relative error {actErr:E2} ({context})");
            return;
        }
    }

    [Theory]
    [InlineData("gpt2")]
    [InlineData("llama")]
    public void ReplacementModelMatchesTorchAutograd(string arch)
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        using var dir = new TempDir();
        var cfg = GradientCheck.RandomConfig(rng, arch, minLayers: 2);
        int vocab = (int)cfg["vocab"], C = (int)cfg["d_model"], L = (int)cfg["n_layers"];
        string modelDir = TorchReference.MakeModel(dir.Path, arch, cfg, "f32", seed);
        using var model = HookedTransformer.Load(modelDir);
        string hook = new[] { "hook_resid_mid", "ln2.hook_normalized", "hook_mlp_in" }[rng.Next(3)];
        string folder = Path.Combine(dir.Path, "clt");
        CircuitTracerFormat.SaveCrossLayer(CltCheck.Random(rng, L, C, hook, jump: rng.Next(2) == 0), folder);
        var clt = CircuitTracerFormat.LoadCrossLayer(folder);

        for (int attempt = 0; ; attempt++)
        {
            int[] tokens = Enumerable.Range(0, rng.Next(4, 12)).Select(_ => rng.Next(vocab)).ToArray();
            string context = $"seed {seed}, {arch}, attempt {attempt}, tokens [{string.Join(",", tokens)}], config {JsonSerializer.Serialize(cfg)}, CLT {CltCheck.Describe(clt)}";
            output.WriteLine(context);
            string tokPath = dir.File($"t{attempt}.json"), refPath = dir.File($"ref{attempt}.safetensors");
            File.WriteAllText(tokPath, JsonSerializer.Serialize(tokens));
            TorchReference.RunPython(CltCheck.Script, "--model", modelDir, "--tokens", tokPath, "--clt", folder, "--out", refPath,
                "--features", "24", "--seed", seed.ToString(CultureInfo.InvariantCulture));
            using var reference = SafetensorsFile.Open(refPath);
            float margin = reference.ReadF32("margin").Data[0];
            if (margin < 1e-5f)
            {
                Assert.True(attempt < 5, $"no prompt with CLT decisions clear of their boundaries in 6 draws ({context})");
                output.WriteLine($"a CLT decision is {margin:E1} from its boundary; redrawing the prompt");
                continue;
            }
            var rm = ReplacementModel.Build(model, clt, tokens);
            Assert.Same(clt, rm.Transcoder);
            CompareWithOracle(rm, reference, context);
            var (rows, inputs, biases, targets) = ReplacementCheck.AllRows(rm, 16);
            double worst = ReplacementCheck.CheckCompleteness(rows, inputs, biases, targets, rm.Sources.Count, context);
            var real = GraphInterventions.RunReal(model, clt, tokens, []);
            int T = tokens.Length, V = model.Config.VocabSize;
            var clean = rm.CleanLogits.Data.AsSpan((T - 1) * V, V);
            double scale = 1, gap = 0;
            for (int v = 0; v < V; v++) { scale = Math.Max(scale, Math.Abs(clean[v])); gap = Math.Max(gap, Math.Abs(real[v] - clean[v])); }
            Assert.True(gap <= 1e-5 * scale, $"real model with the CLT spliced and no edits differs from the model by {gap:E2} ({context})");
            output.WriteLine($"{rm.FeatureCount} features over {L} layers, {rm.Sources.Count} sources, {rm.Logits.Count} logit nodes; completeness worst {worst:E2}");
            return;
        }
    }

    void CompareWithOracle(ReplacementModel rm, SafetensorsFile reference, string context)
    {
        var src = reference.ReadInt64("sources");
        int S = src.Length / 4;
        Assert.True(S == rm.Sources.Count, $"{rm.Sources.Count} sources vs torch {S} ({context})");
        for (int s = 0; s < S; s++)
        {
            var theirs = new GraphNode((GraphNodeKind)src[s * 4], (int)src[s * 4 + 1], (int)src[s * 4 + 2], (int)src[s * 4 + 3]);
            Assert.True(theirs == rm.Sources[s], $"source {s}: {rm.Sources[s]} vs torch {theirs} ({context})");
        }
        double actErr = Compare.RelativeError(rm.SourceActivations.ToArray(), reference.ReadF32("activations").Data, "activations");
        Assert.True(actErr <= 1e-5, $"source activations: relative error {actErr:E2} ({context})");

        var frozen = rm.RunFrozen(rm.CleanValues());
        double own = Compare.RelativeError(frozen.Logits.Data, rm.CleanLogits.Data, "frozen vs model logits");
        double torchFrozen = Compare.RelativeError(frozen.Logits.Data, reference.ReadF32("frozen_logits").Data, "frozen logits vs torch");
        output.WriteLine($"replacement logits vs the model's: {own:E2}; vs torch's frozen CLT model: {torchFrozen:E2}");
        Assert.True(own <= 1e-5, $"CLT replacement logits vs the model's: relative error {own:E2} ({context})");
        Assert.True(torchFrozen <= 1e-5, $"CLT replacement logits vs torch: relative error {torchFrozen:E2} ({context})");

        var tg = reference.ReadInt64("targets");
        int Nt = tg.Length / 4;
        var targets = Enumerable.Range(0, Nt).Select(t => new GraphNode((GraphNodeKind)tg[t * 4], (int)tg[t * 4 + 1], (int)tg[t * 4 + 2], (int)tg[t * 4 + 3])).ToList();
        Assert.True(targets.Where(t => t.Kind == GraphNodeKind.Logit).SequenceEqual(rm.Logits), $"logit nodes differ from torch's ({context})");
        var rows = new float[Nt * S]; var inputs = new float[Nt]; var biases = new float[Nt];
        rm.ComputeRows(targets, rows, inputs, biases);
        var rRows = reference.ReadF32("rows").Data; var rIn = reference.ReadF32("inputs").Data; var rBias = reference.ReadF32("biases").Data;
        double worst = 0;
        int crossLayer = 0;
        for (int t = 0; t < Nt; t++)
        {
            double scale = 0, diff = 0;
            for (int s = 0; s < S; s++) { scale = Math.Max(scale, Math.Abs(rRows[t * S + s])); diff = Math.Max(diff, Math.Abs(rows[t * S + s] - rRows[t * S + s])); }
            worst = Math.Max(worst, diff / scale);
            Assert.True(diff <= 1e-4 * scale, $"row of {targets[t]}: max |ours − torch| = {diff:E3}, largest |entry| {scale:E3} ({context})");
            double s2 = Math.Max(scale, Math.Abs(rIn[t]));
            Assert.True(Math.Abs(inputs[t] - rIn[t]) <= 1e-4 * s2, $"input of {targets[t]}: {inputs[t]:E6} vs torch {rIn[t]:E6} ({context})");
            Assert.True(Math.Abs(biases[t] - rBias[t]) <= 1e-4 * Math.Max(s2, Math.Abs(rBias[t])), $"bias of {targets[t]}: {biases[t]:E6} vs torch {rBias[t]:E6} ({context})");
            // edges from features more than one layer below a feature target: only cross-layer decoders (or attention) carry them
            if (targets[t].Kind == GraphNodeKind.Feature)
                for (int s = 0; s < rm.FeatureCount; s++)
                    if (rm.Sources[s].Layer < targets[t].Layer && rRows[t * S + s] != 0) crossLayer++;
        }
        output.WriteLine($"{Nt} target rows vs torch: worst max-difference / largest entry {worst:E2}; {crossLayer} edges from lower-layer features");
    }
}

/// <summary>
/// <c>featurelens graph</c> with <c>--transcoders CLT_DIR</c> on the real stories260K model (5 layers, d_model 64) and a random
/// CLT: a valid graph JSON (python/graph_schema_check.py), whose unpruned rows satisfy completeness from the file alone (Σ incoming
/// weights + bias = input, ≤ 1e-4 of the largest term); <c>qk</c>, <c>intervene</c> and <c>feature-links</c> accept the folder too.
/// </summary>
public class CrossLayerTranscoderCliTests(ITestOutputHelper output)
{
    static string Bin => Path.Combine(TestPaths.Shared, "models", "stories260K", "stories260K.bin");

    [Fact]
    public void GraphQkInterveneAndFeatureLinksAcceptACltFolder()
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        using var dir = new TempDir();
        string folder = Path.Combine(dir.Path, "clt");
        CircuitTracerFormat.SaveCrossLayer(CltCheck.Random(rng, 5, 64, "hook_resid_mid", jump: rng.Next(2) == 0), folder, "stories260K");
        string tokens = string.Join(",", new[] { 1 }.Concat(Enumerable.Range(0, rng.Next(4, 9)).Select(_ => rng.Next(3, 512))));
        string context = $"seed {seed}, tokens {tokens}";
        output.WriteLine(context);
        string graph = dir.File("g.json");
        var r = CliTests.Run("graph", "--model", Bin, "--tokens", tokens, "--transcoders", folder, "--no-prune", "--out", graph);
        Assert.True(r.ExitCode == 0, $"graph: exit {r.ExitCode}: {r.Stderr} ({context})");
        output.WriteLine(TorchReference.RunPython(Path.Combine(AppContext.BaseDirectory, "python", "graph_schema_check.py"), graph).Trim());

        var json = JsonNode.Parse(File.ReadAllText(graph))!;
        var nodes = json["nodes"]!.AsArray().Select(n => n!).ToDictionary(n => (string)n["node_id"]!);
        var incoming = new Dictionary<string, List<double>>();
        foreach (var l in json["links"]!.AsArray())
        {
            string t = (string)l!["target"]!;
            if (!incoming.TryGetValue(t, out var list)) incoming[t] = list = [];
            list.Add((double)l["weight"]!);
        }
        int checkedRows = 0;
        var featureLayers = new HashSet<string>();
        foreach (var (id, n) in nodes)
        {
            if ((string)n["feature_type"]! == "cross layer transcoder") featureLayers.Add((string)n["layer"]!);
            if (n["input"] is null || n["bias"] is null) continue;
            var w = incoming.GetValueOrDefault(id) ?? [];
            double input = (double)n["input"]!, bias = (double)n["bias"]!, sum = bias + w.Sum();
            double scale = Math.Max(Math.Max(Math.Abs(input), Math.Abs(bias)), w.Count > 0 ? w.Max(Math.Abs) : 0);
            Assert.True(Math.Abs(sum - input) <= 1e-4 * scale, $"{id}: Σ incoming + bias = {sum:E6}, input {input:E6} ({context})");
            checkedRows++;
        }
        output.WriteLine($"{nodes.Count} nodes ({featureLayers.Count} layers with features), {json["links"]!.AsArray().Count} links; completeness of {checkedRows} rows");
        Assert.True(checkedRows > 0 && featureLayers.Count > 1, $"expected features in several layers ({context})");

        var feature = nodes.Values.First(n => (string)n["feature_type"]! == "cross layer transcoder");
        string f = $"{(string)feature["layer"]!}:{(int)feature["feature"]!}";
        foreach (var args in new[]
        {
            new[] { "qk", "--layer", "2", "--head", "0", "--key-pos", "0", "--json", dir.File("qk.json") },
            ["intervene", "--zero", $"{f}@*", "--json", dir.File("iv.json")],
            ["feature-links", "--feature", f, "--json", dir.File("fl.json")],
        })
        {
            var res = CliTests.Run([.. args, "--model", Bin, "--tokens", tokens, "--transcoders", folder]);
            Assert.True(res.ExitCode == 0, $"{args[0]}: exit {res.ExitCode}: {res.Stderr} ({context})");
            Assert.True(File.Exists(args[^1]), $"{args[0]} wrote no JSON ({context})");
        }
    }
}

/// <summary>Bad CLT folders and mismatches are clear errors naming the file, tensor and expected shape.</summary>
public class CrossLayerTranscoderInputTests
{
    static string Bin => Path.Combine(TestPaths.Shared, "models", "stories260K", "stories260K.bin");

    [Fact]
    public void BadFoldersAreClearErrors()
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        using var dir = new TempDir();
        int n = 0;
        string Fresh(int layers = 5, bool jump = true)
        {
            string f = Path.Combine(dir.Path, $"clt{n++}");
            CircuitTracerFormat.SaveCrossLayer(CltCheck.Random(rng, layers, 64, "hook_resid_mid", jump), f);
            return f;
        }
        void Expect<TE>(Action a, params string[] parts) where TE : Exception
        {
            var e = Assert.ThrowsAny<TE>(a);
            foreach (var p in parts) Assert.True(e.Message.Contains(p, StringComparison.Ordinal), $"'{e.Message}' should mention '{p}' (seed {seed})");
        }
        static void Rewrite(string file, Func<Dictionary<string, Runtime.Tensors.Tensor>, Dictionary<string, Runtime.Tensors.Tensor>> edit)
        {
            Dictionary<string, Runtime.Tensors.Tensor> t;
            using (var f = SafetensorsFile.Open(file)) t = f.Entries.ToDictionary(e => e.Name, e => f.ReadF32(e.Name));
            var w = new SafetensorsWriter();
            foreach (var (k, v) in edit(t)) w.Add(k, v);
            w.Write(file);
        }

        string a = Fresh();
        File.Delete(Path.Combine(a, "W_dec_3.safetensors"));
        Expect<InvalidDataException>(() => CircuitTracerFormat.LoadCrossLayer(a), "W_dec_3.safetensors is missing", "[d_transcoder");

        string b = Fresh();
        Rewrite(Path.Combine(b, "W_dec_1.safetensors"), t => new() { ["W_dec_1"] = new Runtime.Tensors.Tensor([t["W_dec_1"].Shape[0], 5, 64], new float[t["W_dec_1"].Data.Length / 4 * 5]) });
        Expect<InvalidDataException>(() => CircuitTracerFormat.LoadCrossLayer(b), "W_dec_1.safetensors", "tensor 'W_dec_1' has shape [", ", 5, 64]", "n_layers − 1", ", 4, 64]");

        string c = Fresh();
        Rewrite(Path.Combine(c, "W_enc_2.safetensors"), t => { t.Remove("b_enc_2"); return t; });
        Expect<InvalidDataException>(() => CircuitTracerFormat.LoadCrossLayer(c), "W_enc_2.safetensors", "tensor 'b_enc_2' is missing");

        string d = Fresh();
        Rewrite(Path.Combine(d, "W_enc_4.safetensors"), t => { t.Remove("threshold_4"); return t; });
        Expect<InvalidDataException>(() => CircuitTracerFormat.LoadCrossLayer(d), "W_enc_4.safetensors", "threshold_4");

        string e = Fresh();
        File.Move(Path.Combine(e, "W_enc_2.safetensors"), Path.Combine(e, "W_enc_7.safetensors"));
        Expect<InvalidDataException>(() => CircuitTracerFormat.LoadCrossLayer(e), "W_enc_2.safetensors is missing");

        string g = Fresh(jump: false);
        File.AppendAllText(Path.Combine(g, "config.yaml"), "activation: topk\n");
        Expect<InvalidDataException>(() => CircuitTracerFormat.LoadCrossLayer(g), "config.yaml", "'activation' is 'topk'");

        string h = Fresh();
        Rewrite(Path.Combine(h, "W_enc_0.safetensors"), t => { t["threshold_0"].Data[3] = -0.5f; return t; });
        Expect<InvalidDataException>(() => CircuitTracerFormat.LoadCrossLayer(h), "W_enc_0.safetensors", "threshold_0", "negative");

        string k = Fresh();
        Rewrite(Path.Combine(k, "W_enc_1.safetensors"), t => { t["W_enc_1"].Data[5] = float.NaN; return t; });
        Expect<InvalidDataException>(() => CircuitTracerFormat.LoadCrossLayer(k), "W_enc_1.safetensors", "W_enc_1", "non-finite");

        // the per-SAE loaders refuse a CLT with a pointer to the whole-folder loader
        Expect<InvalidDataException>(() => SaeLoader.LoadAll(Fresh()), "cross_layer_transcoder", "--transcoders");

        // a 4-layer CLT on the 5-layer model; a CLT folder with other transcoders on the command line
        using var model = HookedTransformer.Load(Bin);
        string four = Fresh(layers: 4);
        Expect<ArgumentException>(() => ReplacementModel.Build(model, CircuitTracerFormat.LoadCrossLayer(four), [1, 300, 42]), "has 4 layers", "the model has 5");
        var r = CliTests.Run("graph", "--model", Bin, "--tokens", "1,300,42", "--transcoders", four, "--out", dir.File("g.json"));
        Assert.True(r.ExitCode == 1 && r.Stderr.Contains("has 4 layers", StringComparison.Ordinal), $"exit {r.ExitCode}: {r.Stderr} (seed {seed})");
        r = CliTests.Run("graph", "--model", Bin, "--tokens", "1,300,42", "--transcoders", Fresh(), "--transcoders", four, "--out", dir.File("g.json"));
        Assert.True(r.ExitCode == 1 && r.Stderr.Contains("give it alone", StringComparison.Ordinal), $"exit {r.ExitCode}: {r.Stderr} (seed {seed})");
    }
}
