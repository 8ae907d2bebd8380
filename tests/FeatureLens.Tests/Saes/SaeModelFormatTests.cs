using System.Text.Json.Nodes;
using FeatureLens.Runtime.Checkpoints;
using FeatureLens.Runtime.Tensors;
using FeatureLens.Saes;
using FeatureLens.Saes.Formats;

namespace FeatureLens.Tests.Saes;

/// <summary>
/// Llama Scope, sparsify (Pythia / Llama 3 / Gemma 2 runs, transcoders) and circuit-tracer (Llama 3.2 / Gemma 2 sets)
/// folders written once per test run by python/sae_model_formats.py with a fresh seed, with each format's own encode and
/// decode computed there in float64.
/// </summary>
public sealed class SaeModelFormatFixture : IDisposable
{
    readonly TempDir _dir = new();
    public int Seed { get; } = Random.Shared.Next(1, int.MaxValue);
    public string Root => _dir.Path;
    public JsonObject Manifest { get; }

    public SaeModelFormatFixture()
    {
        TorchReference.RunPython(Path.Combine(AppContext.BaseDirectory, "python", "sae_model_formats.py"), "--out", Root, "--seed", Seed.ToString(CultureInfo.InvariantCulture));
        Manifest = (JsonObject)JsonNode.Parse(File.ReadAllText(Path.Combine(Root, "manifest.json")))!;
    }

    public void Dispose() => _dir.Dispose();
}

public sealed class SaeModelFormatTests(SaeModelFormatFixture fx) : IClassFixture<SaeModelFormatFixture>
{
    string Seed => $"(python seed {fx.Seed})";

    [Theory]
    [InlineData("ls_R")]
    [InlineData("ls_A")]
    [InlineData("ls_M")]
    [InlineData("ls_TC")]
    [InlineData("ls_TC_keyed_norms")]
    [InlineData("ls_topk_converted")]
    [InlineData("ls_topk")]
    [InlineData("ls_relu_inference")]
    [InlineData("sp_pythia_layers")]
    [InlineData("sp_pythia_mlp")]
    [InlineData("sp_llama_skip_transcoder")]
    [InlineData("sp_block_transcoder")]
    [InlineData("sp_gemma2_mlp")]
    [InlineData("gs_res")]
    [InlineData("gs_mlp")]
    [InlineData("gs_att")]
    [InlineData("gs_transcoder")]
    public void Folder_loads_with_its_hooks_and_encodes_and_decodes_as_its_library(string name)
    {
        var e = (JsonObject)fx.Manifest[name]!;
        var sae = SaeLoader.Load(Path.Combine(fx.Root, (string)e["path"]!));
        Check(name, sae, e);
    }

    [Fact]
    public void A_llama_scope_checkpoint_file_and_a_folder_of_llama_scope_folders_load()
    {
        var e = (JsonObject)fx.Manifest["ls_R"]!;
        string dir = Path.Combine(fx.Root, (string)e["path"]!);
        Check("ls_R via final.safetensors", SaeLoader.Load(Path.Combine(dir, "checkpoints", "final.safetensors")), e);
        Check("ls_R via hyperparams.json", SaeLoader.Load(Path.Combine(dir, "hyperparams.json")), e);
        var all = SaeLoader.LoadAll(Path.Combine(fx.Root, "llama_scope"));
        Assert.True(all.Count == 4, $"{Seed}: {all.Count} SAEs under llama_scope/");
        foreach (var (sae, case_) in all.Select(s => (s, fx.Manifest.First(kv => kv.Key.StartsWith("ls_", StringComparison.Ordinal)
            && Path.GetFullPath(Path.Combine(fx.Root, (string)kv.Value!["path"]!)) == s.SourcePath))))
            Check(case_.Key, sae, (JsonObject)case_.Value!);
    }

    [Fact]
    public void Circuit_tracer_sets_for_llama_and_gemma_load_with_mlp_hook_in_and_resolve_hf_references()
    {
        foreach (var (prefix, folder) in new[] { ("ct_llama_", "transcoder-Llama-3.2-1B"), ("ct_gemma_", "gemma-scope-transcoders") })
        {
            var set = CircuitTracerFormat.LoadAll(Path.Combine(fx.Root, folder), Path.Combine(fx.Root, "hub"));
            var cases = fx.Manifest.Where(kv => kv.Key.StartsWith(prefix, StringComparison.Ordinal)).ToList();
            Assert.True(set.Count == cases.Count, $"{Seed}: {folder} has {set.Count} transcoders, expected {cases.Count}");
            foreach (var (n, c) in cases) Check(n, set[(int)c!["layer"]!], (JsonObject)c);
        }
        // the Llama set through the generic loader
        var viaLoader = SaeLoader.LoadAll(Path.Combine(fx.Root, "transcoder-Llama-3.2-1B"));
        Assert.Equal("blocks.0.mlp.hook_in", viaLoader[0].Config.HookName);
        Assert.Equal("blocks.0.mlp.hook_out", viaLoader[0].Config.OutputHookName);
    }

    [Fact]
    public void Splicing_onto_a_model_of_another_width_names_the_sae_hook_and_both_widths()
    {
        using var m = FeatureLens.Runtime.Models.HookedTransformer.Load(Path.Combine(TestPaths.Shared, "models", "stories260K", "stories260K.bin"));
        foreach (var name in new[] { "ls_R", "ls_TC", "gs_res", "sp_pythia_layers" })
        {
            var sae = SaeLoader.Load(Path.Combine(fx.Root, (string)fx.Manifest[name]!["path"]!));
            var e = Assert.Throws<ArgumentException>(() => m.AddSplice(new SaeSplice(sae)));
            Assert.True(e.Message.Contains(sae.Config.HookName, StringComparison.Ordinal), $"{name} {Seed}: {e.Message}");
            if (e.Message.Contains("of this model has width", StringComparison.Ordinal))   // the hook exists: both widths are named
                Assert.True(e.Message.Contains($"d_in = {sae.DIn}", StringComparison.Ordinal) && e.Message.Contains($"d_model {m.Config.DModel}", StringComparison.Ordinal), $"{name} {Seed}: {e.Message}");
            else
                Assert.True(e.Message.Contains("does not have", StringComparison.Ordinal), $"{name} {Seed}: {e.Message}");
        }
    }

    [Theory]
    [InlineData("mlp.hook_in", "mlp.hook_out")]
    [InlineData("mlp.hook_in", "hook_mlp_out")]
    public void A_cross_layer_transcoder_on_circuit_tracers_mlp_hooks_round_trips(string input, string output)
    {
        int seed = Random.Shared.Next(1, int.MaxValue);
        var rng = new Random(seed);
        int layers = rng.Next(2, 4), d = rng.Next(8, 16), dTc = rng.Next(20, 40);
        var saes = Enumerable.Range(0, layers).Select(l => SaeTestData.Random(rng, SaeArchitecture.JumpReluTranscoder, d, dTc, $"blocks.{l}.{input}",
            dOut: d, hookOut: $"blocks.{l}.{output}")).ToList();
        var later = Enumerable.Range(0, layers).Select(i => Enumerable.Range(i + 1, layers - 1 - i)
            .Select(_ => SaeTestData.Gaussian(rng, (long)dTc * d, 0.3f)).ToArray()).ToArray();
        var clt = new CrossLayerTranscoder(saes, later);
        using var dir = new TempDir();
        CircuitTracerFormat.SaveCrossLayer(clt, dir.Path, "meta-llama/Llama-3.2-1B");
        Assert.Contains($"feature_input_hook: \"{input}\"", File.ReadAllText(dir.File("config.yaml")), StringComparison.Ordinal);
        Assert.Contains($"feature_output_hook: \"{output}\"", File.ReadAllText(dir.File("config.yaml")), StringComparison.Ordinal);
        var back = CircuitTracerFormat.LoadCrossLayer(dir.Path);
        for (int l = 0; l < layers; l++)
        {
            Assert.Equal($"blocks.{l}.{input}", back.Layers[l].Config.HookName);
            Assert.Equal($"blocks.{l}.{output}", back.Layers[l].Config.OutputHookName);
            Assert.True(back.Layers[l].WEnc.SequenceEqual(clt.Layers[l].WEnc) && back.Layers[l].WDec.SequenceEqual(clt.Layers[l].WDec), $"seed {seed}: layer {l} weights changed");
            for (int t = l + 1; t < layers; t++) Assert.True(back.Decoder(l, t)!.SequenceEqual(clt.Decoder(l, t)!), $"seed {seed}: decoder {l}→{t} changed");
        }
    }

    void Check(string name, Sae sae, JsonObject e)
    {
        string at = $"{name} {Seed}";
        var c = sae.Config;
        string key = name.Split(' ')[0];
        Assert.True((string)e["architecture"]! == SaeConfig.ArchitectureName(c.Architecture), $"{at}: architecture {SaeConfig.ArchitectureName(c.Architecture)}, expected {e["architecture"]}");
        Assert.True((string)e["hook_name"]! == c.HookName, $"{at}: hook '{c.HookName}', expected '{e["hook_name"]}'");
        Assert.True((string?)e["hook_name_out"] == c.Metadata.HookNameOut, $"{at}: hook out '{c.Metadata.HookNameOut}', expected '{e["hook_name_out"]}'");
        Assert.True((int)e["d_in"]! == c.DIn && (int)e["d_sae"]! == c.DSae && (int)e["d_out"]! == c.DOut, $"{at}: dims {c.DIn} {c.DSae} {c.DOut}");
        Assert.True((int)e["k"]! == c.K, $"{at}: k {c.K}");
        Assert.True((bool)e["apply_b_dec"]! == c.ApplyBDecToInput, $"{at}: apply_b_dec_to_input {c.ApplyBDecToInput}");
        Assert.True(c.ReshapeHookZ == c.HookName.EndsWith("attn.hook_z", StringComparison.Ordinal), $"{at}: reshape_activations hook_z {c.ReshapeHookZ}");
        if (key.StartsWith("gs_", StringComparison.Ordinal))
            Assert.True(c.Metadata.ModelName == (key == "gs_mlp" ? "gemma-2-9b-it" : "gemma-2-2b"), $"{at}: model '{c.Metadata.ModelName}'");

        using var exp = SafetensorsFile.Open(Path.Combine(fx.Root, "expected.safetensors"));
        var x = exp.ReadF32($"{key}/x");
        var wantActs = exp.ReadF32($"{key}/acts").Data;
        var wantOut = exp.ReadF32($"{key}/out").Data;
        var (acts, output) = sae.Forward(x);
        for (int i = 0; i < wantActs.Length; i++)
            Assert.True(wantActs[i] == 0 == (acts.Data[i] == 0),
                $"{at}: latent {i % c.DSae} of row {i / c.DSae} is {(acts.Data[i] == 0 ? "off" : "on")} here but {(wantActs[i] == 0 ? "off" : "on")} in the reference ({acts.Data[i]:R} vs {wantActs[i]:R})");
        double ea = Compare.RelativeError(acts.Data, wantActs, $"{at} activations");
        double eo = Compare.RelativeError(output.Data, wantOut, $"{at} output");
        Assert.True(ea <= 1e-5, $"{at}: activations differ from the reference by {ea:E2} (relative L2; tolerance 1e-5)");
        Assert.True(eo <= 1e-5, $"{at}: output differs from the reference by {eo:E2} (relative L2; tolerance 1e-5)");
    }

    // ───────────────────────────── bad input ─────────────────────────────

    static string CopyCase(string from, TempDir to)
    {
        foreach (var f in Directory.GetFiles(from, "*", SearchOption.AllDirectories))
        {
            string dest = Path.Combine(to.Path, Path.GetRelativePath(from, f));
            Directory.CreateDirectory(Path.GetDirectoryName(dest)!);
            File.Copy(f, dest);
        }
        return to.Path;
    }

    [Fact]
    public void Bad_llama_scope_folders_are_clear_errors_naming_the_file_and_field()
    {
        using var tmp = new TempDir();
        string dir = CopyCase(Path.Combine(fx.Root, (string)fx.Manifest["ls_TC"]!["path"]!), tmp);
        string hp = Path.Combine(dir, "hyperparams.json");
        string original = File.ReadAllText(hp);
        void Expect(Action<JsonObject> edit, params string[] fragments)
        {
            var o = (JsonObject)JsonNode.Parse(original)!;
            edit(o);
            File.WriteAllText(hp, o.ToJsonString());
            var e = Assert.ThrowsAny<Exception>(() => SaeLoader.Load(dir));
            Assert.True(e is InvalidDataException or FileNotFoundException, $"{Seed}: {e.GetType().Name}: {e.Message}");
            foreach (var f in fragments) Assert.True(e.Message.Contains(f, StringComparison.Ordinal), $"{Seed}: message lacks '{f}': {e.Message}");
        }
        Expect(o => o.Remove("d_model"), "hyperparams.json", "'d_model' is missing");
        Expect(o => o.Remove("hook_point_in"), "hyperparams.json", "'hook_point_in' is missing");
        Expect(o => o.Remove("apply_decoder_bias_to_pre_encoder"), "'apply_decoder_bias_to_pre_encoder' is missing");
        Expect(o => o["act_fn"] = "batchtopk", "'act_fn' is 'batchtopk'");
        Expect(o => o["act_fn"] = "swish", "'act_fn' is 'swish'", "expected jumprelu, topk or relu");
        Expect(o => o["norm_activation"] = "token-wise", "'norm_activation' is 'token-wise'");
        Expect(o => o["jump_relu_threshold"] = -0.5, "'jump_relu_threshold'", "≥ 0");
        Expect(o => o["hook_point_in"] = "blocks.3.hook_banana", "'hook_point_in' is 'blocks.3.hook_banana'");
        Expect(o => ((JsonObject)o["dataset_average_activation_norm"]!).Remove("out"), "dataset_average_activation_norm", "output");
        Expect(o => o["use_glu_encoder"] = true, "use_glu_encoder");
        Expect(o => o["d_sae"] = (int)o["d_sae"]! + 1, "final.safetensors", "encoder.weight", "d_sae");
        Expect(o => { o["apply_decoder_bias_to_pre_encoder"] = true; }, "apply_decoder_bias_to_pre_encoder = true for a transcoder");

        // a tensor missing or misshapen
        File.WriteAllText(hp, original);
        string ckpt = Path.Combine(dir, "checkpoints", "final.safetensors");
        var tensors = new Dictionary<string, Tensor>();
        using (var f = SafetensorsFile.Open(ckpt)) foreach (var n in new[] { "encoder.weight", "encoder.bias", "decoder.weight" }) tensors[n] = f.ReadF32(n);
        var w = new SafetensorsWriter();
        foreach (var (n, t) in tensors) w.Add(n, t);
        w.Write(ckpt);
        var missing = Assert.Throws<InvalidDataException>(() => SaeLoader.Load(dir));
        Assert.True(missing.Message.Contains("final.safetensors", StringComparison.Ordinal) && missing.Message.Contains("'decoder.bias' is missing", StringComparison.Ordinal), missing.Message);
        w = new SafetensorsWriter();
        foreach (var (n, t) in tensors) w.Add(n, n == "encoder.bias" ? new Tensor([t.Data.Length + 1], new float[t.Data.Length + 1]) : t);
        w.Add("decoder.bias", new Tensor([tensors["encoder.weight"].Shape[1]], new float[tensors["encoder.weight"].Shape[1]]));
        w.Write(ckpt);
        var shape = Assert.Throws<InvalidDataException>(() => SaeLoader.Load(dir));
        Assert.True(shape.Message.Contains("'encoder.bias'", StringComparison.Ordinal) && shape.Message.Contains("[d_sae]", StringComparison.Ordinal), shape.Message);

        // no weights at all
        File.Delete(ckpt);
        var none = Assert.ThrowsAny<Exception>(() => SaeLoader.Load(dir));
        Assert.True(none.Message.Contains("hyperparams.json", StringComparison.Ordinal) && none.Message.Contains("final.safetensors", StringComparison.Ordinal), none.Message);
    }

    [Fact]
    public void Bad_sparsify_and_circuit_tracer_folders_are_clear_errors()
    {
        using var tmp = new TempDir();
        string run = CopyCase(Path.Combine(fx.Root, "sae-pythia-160m-32k"), tmp);
        string cfg = Path.Combine(run, "layers.4", "cfg.json");
        var o = (JsonObject)JsonNode.Parse(File.ReadAllText(cfg))!;
        o["normalize_io"] = true;
        File.WriteAllText(cfg, o.ToJsonString());
        var e = Assert.Throws<InvalidDataException>(() => SaeLoader.Load(Path.Combine(run, "layers.4")));
        Assert.Contains("normalize_io", e.Message, StringComparison.Ordinal);
        o.Remove("normalize_io");
        o["skip_connection"] = true;
        File.WriteAllText(cfg, o.ToJsonString());
        e = Assert.Throws<InvalidDataException>(() => SaeLoader.Load(Path.Combine(run, "layers.4")));
        Assert.Contains("skip_connection = true without transcode", e.Message, StringComparison.Ordinal);
        Directory.Move(Path.Combine(run, "layers.4"), Path.Combine(run, "embed_tokens"));
        cfg = Path.Combine(run, "embed_tokens", "cfg.json");
        o["transcode"] = true;
        File.WriteAllText(cfg, o.ToJsonString());
        e = Assert.Throws<InvalidDataException>(() => SaeLoader.Load(Path.Combine(run, "embed_tokens")));
        Assert.True(e.Message.Contains("cfg.json", StringComparison.Ordinal) && e.Message.Contains("'embed_tokens'", StringComparison.Ordinal), e.Message);

        // an hf:// reference that is not in the cache names the reference and what to run
        using var tmp2 = new TempDir();
        string set = CopyCase(Path.Combine(fx.Root, "gemma-scope-transcoders"), tmp2);
        var missing = Assert.Throws<FileNotFoundException>(() => CircuitTracerFormat.LoadAll(set, Path.Combine(tmp2.Path, "no-hub")));
        Assert.True(missing.Message.Contains("hf://google/gemma-scope-2b-pt-transcoders/layer_0/", StringComparison.Ordinal)
            && missing.Message.Contains("featurelens download google/gemma-scope-2b-pt-transcoders", StringComparison.Ordinal), missing.Message);
        string yaml = Path.Combine(set, "config.yaml");
        File.WriteAllText(yaml, File.ReadAllText(yaml).Replace("hook_mlp_out", "mlp.hook_sideways", StringComparison.Ordinal));
        var badHook = Assert.Throws<InvalidDataException>(() => CircuitTracerFormat.LoadAll(set, Path.Combine(fx.Root, "hub")));
        Assert.True(badHook.Message.Contains("feature_output_hook 'mlp.hook_sideways'", StringComparison.Ordinal), badHook.Message);
    }
}
