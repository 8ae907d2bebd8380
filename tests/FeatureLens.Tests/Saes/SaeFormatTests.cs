using System.Buffers.Binary;
using System.IO.Compression;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json.Nodes;
using FeatureLens.Runtime.Checkpoints;
using FeatureLens.Runtime.Tensors;
using FeatureLens.Saes;
using FeatureLens.Saes.Formats;

namespace FeatureLens.Tests.Saes;

/// <summary>Random SAEs in every format, written once per test run by python/sae_formats.py with a fresh seed.</summary>
public sealed class SaeFormatFixture : IDisposable
{
    readonly TempDir _dir = new();
    public int Seed { get; } = Random.Shared.Next(1, int.MaxValue);
    public string Root => _dir.Path;
    public JsonObject Manifest { get; }

    public SaeFormatFixture()
    {
        TorchReference.RunPython(Path.Combine(AppContext.BaseDirectory, "python", "sae_formats.py"), "--out", Root, "--seed", Seed.ToString(CultureInfo.InvariantCulture));
        Manifest = (JsonObject)JsonNode.Parse(File.ReadAllText(Path.Combine(Root, "manifest.json")))!;
    }

    public void Dispose() => _dir.Dispose();
}

public sealed class SaeFormatTests(SaeFormatFixture fx) : IClassFixture<SaeFormatFixture>
{
    string Seed => $"(python seed {fx.Seed})";

    [Theory]
    [InlineData("v6_standard")]
    [InlineData("v6_gated")]
    [InlineData("v6_jumprelu")]
    [InlineData("v6_jumprelu_log_threshold_bf16")]
    [InlineData("v6_topk_f16")]
    [InlineData("v6_transcoder")]
    [InlineData("v6_skip_transcoder_bf16")]
    [InlineData("v6_jumprelu_transcoder")]
    [InlineData("v6_hook_z")]
    [InlineData("v6_layer_norm")]
    [InlineData("v6_transposed")]
    [InlineData("v6_transposed_transcoder")]
    [InlineData("v6_square")]
    [InlineData("v6_no_dims")]
    [InlineData("flat_standard")]
    [InlineData("flat_topk_f16")]
    [InlineData("suite_l1")]
    [InlineData("sparsify_layers.1")]
    [InlineData("sparsify_layers.0")]
    [InlineData("sparsify_embed_tokens")]
    [InlineData("sparsify_layers.1.mlp")]
    [InlineData("sparsify_custom")]
    [InlineData("gemma_res_stored")]
    [InlineData("gemma_mlp_deflated_v2")]
    [InlineData("gemma_att_fortran_bigendian")]
    [InlineData("gemma_plain_f16_f8")]
    public void Case_loads_with_the_right_config_and_exact_weights(string name)
    {
        var expect = (JsonObject)fx.Manifest[name]!;
        string path = Path.Combine(fx.Root, (string)expect["path"]!);
        var sae = SaeLoader.Load(path);
        CheckCase(name, sae, expect);
        // the describe rows exist and name the architecture
        var rows = SaeInspector.Describe(sae);
        Assert.Contains(rows, r => r.Key == "architecture" && r.Value == (string)expect["architecture"]!);
    }

    void CheckCase(string name, Sae sae, JsonObject e)
    {
        string at = $"{name} {Seed}";
        var c = sae.Config;
        Assert.True((string)e["format"]! == c.Format, $"{at}: format {c.Format}");
        Assert.True((string)e["architecture"]! == SaeConfig.ArchitectureName(c.Architecture), $"{at}: architecture {c.Architecture}");
        Assert.True((int)e["d_in"]! == c.DIn && (int)e["d_sae"]! == c.DSae && (int)e["d_out"]! == c.DOut, $"{at}: dims {c.DIn} {c.DSae} {c.DOut}");
        Assert.True((int)e["k"]! == c.K, $"{at}: k {c.K}");
        Assert.True((bool)e["rescale"]! == c.RescaleActsByDecoderNorm, $"{at}: rescale");
        Assert.True((bool)e["apply_b_dec"]! == c.ApplyBDecToInput, $"{at}: apply_b_dec_to_input {c.ApplyBDecToInput}");
        Assert.True((string)e["normalization"]! == SaeConfig.NormalizationName(c.Normalization), $"{at}: normalization {c.Normalization}");
        Assert.True((bool)e["reshape_hook_z"]! == c.ReshapeHookZ, $"{at}: reshape {c.ReshapeHookZ}");
        Assert.True((string)e["hook_name"]! == c.HookName, $"{at}: hook '{c.HookName}'");
        Assert.True((string?)e["hook_name_out"] == c.Metadata.HookNameOut, $"{at}: hook out '{c.Metadata.HookNameOut}'");
        Assert.True((string?)e["model_name"] == c.Metadata.ModelName, $"{at}: model '{c.Metadata.ModelName}'");
        Assert.True((string)e["storage_dtype"]! == c.StorageDType, $"{at}: storage dtype {c.StorageDType}");
        Assert.True((int?)e["context_size"] == c.Metadata.ContextSize, $"{at}: context size");
        Assert.True((string?)e["neuronpedia_id"] == c.Metadata.NeuronpediaId, $"{at}: neuronpedia id");
        Assert.True((string?)e["dataset_path"] == c.Metadata.DatasetPath, $"{at}: dataset");
        foreach (var (k, v) in (JsonObject)e["extra"]!)
            Assert.True(c.Metadata.Extra.TryGetPropertyValue(k, out var got) && JsonNode.DeepEquals(got, v),
                $"{at}: Metadata.Extra[{k}] = {got?.ToJsonString() ?? "missing"}, expected {v?.ToJsonString()}; Extra = {c.Metadata.Extra.ToJsonString()}");

        string dir = File.Exists(sae.SourcePath) ? Path.GetDirectoryName(sae.SourcePath)! : sae.SourcePath!;
        using var exp = SafetensorsFile.Open(Path.Combine(dir, "expected.safetensors"));
        void Same(string tensor, float[]? ours, bool exact = true)
        {
            Assert.True(ours != null, $"{at}: {tensor} missing");
            var want = exp.ReadF32(tensor).Data;
            Assert.True(want.Length == ours!.Length, $"{at}: {tensor} has {ours.Length} elements, expected {want.Length}");
            for (int i = 0; i < want.Length; i++)
            {
                bool ok = exact ? BitConverter.SingleToInt32Bits(want[i]) == BitConverter.SingleToInt32Bits(ours[i])
                                : Math.Abs(want[i] - ours[i]) <= 2e-7 * Math.Abs(want[i]);
                Assert.True(ok, $"{at}: {tensor}[{i}] = {ours[i]:R}, written {want[i]:R}");
            }
        }
        Same("W_enc", sae.WEnc);
        Same("W_dec", sae.WDec);
        Same("b_dec", sae.BDec);
        if (exp.Contains("b_enc")) Same("b_enc", sae.BEnc);
        if (exp.Contains("threshold")) Same("threshold", sae.Threshold, exact: !name.Contains("log_threshold"));
        foreach (var g in new[] { "b_gate", "r_mag", "b_mag" })
            if (exp.Contains(g)) Same(g, g == "b_gate" ? sae.BGate : g == "r_mag" ? sae.RMag : sae.BMag);
        if (exp.Contains("W_skip")) Same("W_skip", sae.WSkip);
    }

    [Fact]
    public void LoadAll_reads_a_sparsify_run_sorted_by_layer()
    {
        var all = SaeLoader.LoadAll(Path.Combine(fx.Root, "sparsify_run"));
        var hooks = all.Select(s => s.Config.HookName).ToArray();
        Assert.True(hooks.SequenceEqual(["blocks.0.hook_resid_post", "blocks.0.hook_resid_pre", "blocks.1.hook_mlp_out", "blocks.1.hook_resid_post", ""]),
            $"{Seed}: order {string.Join(", ", hooks)}");
        Assert.Equal("encoder.custom_block", all[^1].Config.Metadata.Extra["sparsify_hookpoint"]!.ToString());
        foreach (var sae in all)
        {
            string name = "sparsify_" + Path.GetFileName(sae.SourcePath!);
            if (name == "sparsify_encoder.custom_block") name = "sparsify_custom";
            CheckCase(name, sae, (JsonObject)fx.Manifest[name]!);
        }
    }

    [Fact]
    public void LoadAll_reads_a_suite_folder_and_a_gemma_scope_tree()
    {
        var suite = SaeLoader.LoadAll(Path.Combine(fx.Root, "suite"));
        Assert.True(suite.Select(s => s.Config.HookName).SequenceEqual(["blocks.1.hook_mlp_out", "blocks.1.hook_resid_post", "blocks.3.hook_resid_pre"]), Seed);
        CheckCase("suite_l3", suite[2], (JsonObject)fx.Manifest["suite_l3"]!);
        CheckCase("suite_l1_mlp", suite[0], (JsonObject)fx.Manifest["suite_l1_mlp"]!);

        var gemma = SaeLoader.LoadAll(Path.Combine(fx.Root, "gemma-scope-2b-pt-res"));
        Assert.Single(gemma);
        CheckCase("gemma_res_stored", gemma[0], (JsonObject)fx.Manifest["gemma_res_stored"]!);
        // one SAE folder is a list of one; the folder holding params.npz loads like the file
        Assert.Single(SaeLoader.LoadAll(Path.Combine(fx.Root, "v6_gated")));
        Assert.True(SaeLoader.LooksLikeSae(Path.Combine(fx.Root, "v6_gated")));
        Assert.False(SaeLoader.LooksLikeSae(Path.Combine(fx.Root, "suite")));
        var viaCfg = SaeLoader.Load(Path.Combine(fx.Root, "v6_gated", "cfg.json"));
        Assert.Equal(SaeArchitecture.Gated, viaCfg.Config.Architecture);
        var ex = Assert.Throws<InvalidDataException>(() => SaeLoader.Load(Path.Combine(fx.Root, "suite")));
        Assert.Contains("LoadAll", ex.Message);
    }

    [Fact]
    public void Inspector_describes_a_jumprelu_transcoder()
    {
        var sae = SaeLoader.Load(Path.Combine(fx.Root, "v6_jumprelu_transcoder"));
        var rows = SaeInspector.Describe(sae).ToDictionary(r => r.Key, r => r.Value);
        Assert.Equal("SAELens v6", rows["format"]);
        Assert.Equal("blocks.1.hook_mlp_out", rows["hook out"]);
        Assert.Equal("tiny-stories-1M", rows["model"]);
        Assert.Equal(sae.DOut.ToString(CultureInfo.InvariantCulture), rows["d_out"]);
        var t = sae.Threshold!.Order().ToArray();
        Assert.Equal($"{t[0].ToString("G5", System.Globalization.CultureInfo.InvariantCulture)} / {t[(t.Length - 1) / 2].ToString("G5", System.Globalization.CultureInfo.InvariantCulture)} / {t[^1].ToString("G5", System.Globalization.CultureInfo.InvariantCulture)}", rows["threshold (min / median / max)"]);
        Assert.Contains("decoder norm (min / median / max)", rows.Keys);
        Assert.Equal("tiny/v6_jumprelu_transcoder", rows["neuronpedia id"]);
        var plain = SaeInspector.Describe(SaeLoader.Load(Path.Combine(fx.Root, "plain_npz"))).ToDictionary(r => r.Key, r => r.Value);
        Assert.Equal("not stated", plain["model"]);
        Assert.StartsWith("not stated", plain["hook"]);
    }
}

/// <summary>Bad input, written in C#: each error names the file, field or tensor at fault.</summary>
public sealed class SaeFormatBadInputTests : IDisposable
{
    readonly TempDir _tmp = new();
    readonly int _seed = Random.Shared.Next();
    readonly Random _rng;

    public SaeFormatBadInputTests() => _rng = new Random(_seed);
    public void Dispose() => _tmp.Dispose();

    float[] Rand(long n) { var a = new float[n]; for (long i = 0; i < n; i++) a[i] = (float)(_rng.NextDouble() * 2 - 1) + 0.01f; return a; }

    /// <summary>A SAELens v6 folder with tensors of the given shapes (random values).</summary>
    string SaeLens(string name, JsonObject cfg, Dictionary<string, int[]> tensors, Action<string, float[]>? edit = null)
    {
        string dir = _tmp.File(name);
        Directory.CreateDirectory(dir);
        File.WriteAllText(Path.Combine(dir, "cfg.json"), cfg.ToJsonString());
        var w = new SafetensorsWriter();
        foreach (var (t, shape) in tensors)
        {
            var data = Rand(Tensor.ElementCount(shape));
            edit?.Invoke(t, data);
            w.Add(t, new Tensor(shape, data));
        }
        w.Write(Path.Combine(dir, "sae_weights.safetensors"));
        return dir;
    }

    static JsonObject Cfg(string arch, int? dIn, int? dSae) => new()
    {
        ["architecture"] = arch, ["d_in"] = dIn, ["d_sae"] = dSae, ["apply_b_dec_to_input"] = true,
        ["metadata"] = new JsonObject { ["hook_name"] = "blocks.0.hook_resid_post" },
    };

    static Dictionary<string, int[]> Standard(int dIn, int dSae) => new()
    {
        ["W_enc"] = [dIn, dSae], ["b_enc"] = [dSae], ["W_dec"] = [dSae, dIn], ["b_dec"] = [dIn],
    };

    string S => $"(seed {_seed})";

    [Fact]
    public void Contradicting_cfg_and_tensor_shape_names_field_and_tensor()
    {
        string dir = SaeLens("contra", Cfg("standard", 64, 100), Standard(64, 128));
        var ex = Assert.Throws<InvalidDataException>(() => SaeLoader.Load(dir));
        foreach (var part in new[] { "W_enc", "[64, 128]", "cfg.json field 'd_sae'", "d_sae = 100", "sae_weights.safetensors" })
            Assert.True(ex.Message.Contains(part), $"{S} message lacks '{part}': {ex.Message}");
    }

    [Fact]
    public void Unknown_layout_names_tensor_shape_and_expected_shapes()
    {
        var shapes = Standard(12, 20);
        shapes["W_dec"] = [20, 6, 2];
        string dir = SaeLens("layout", Cfg("standard", 12, 20), shapes);
        var ex = Assert.Throws<InvalidDataException>(() => SaeLoader.Load(dir));
        foreach (var part in new[] { "W_dec", "[20, 6, 2]", "[20, 12]", "[12, 20]" })
            Assert.True(ex.Message.Contains(part), $"{S} message lacks '{part}': {ex.Message}");
    }

    [Fact]
    public void Missing_fields_are_inferred_when_unambiguous_else_named()
    {
        // d_in and d_sae absent: the tensors decide them
        string ok = SaeLens("infer", Cfg("standard", null, null), Standard(12, 20));
        var sae = SaeLoader.Load(ok);
        Assert.True(sae.DIn == 12 && sae.DSae == 20, $"{S} inferred {sae.DIn} {sae.DSae}");

        // topk without k
        var topk = SaeLens("nok", Cfg("topk", 12, 20), Standard(12, 20));
        var ex = Assert.Throws<InvalidDataException>(() => SaeLoader.Load(topk));
        Assert.Contains("'k'", ex.Message);

        // a transcoder without d_in whose W_enc has no d_sae dimension
        var tc = Cfg("transcoder", null, 20);
        tc["d_out"] = 9;
        ((JsonObject)tc["metadata"]!)["hook_name_out"] = "blocks.0.hook_mlp_out";
        tc["apply_b_dec_to_input"] = false;
        string tcDir = SaeLens("tc", tc, new() { ["W_enc"] = [12, 21], ["b_enc"] = [20], ["W_dec"] = [20, 9], ["b_dec"] = [9] });
        ex = Assert.Throws<InvalidDataException>(() => SaeLoader.Load(tcDir));
        Assert.True(ex.Message.Contains("'d_in'") && ex.Message.Contains("W_enc") && ex.Message.Contains("[12, 21]"), $"{S} {ex.Message}");

        // a missing tensor
        var shapes = Standard(12, 20);
        shapes.Remove("b_enc");
        string noBias = SaeLens("nobias", Cfg("standard", 12, 20), shapes);
        ex = Assert.Throws<InvalidDataException>(() => SaeLoader.Load(noBias));
        Assert.Contains("'b_enc' is missing", ex.Message);
    }

    [Fact]
    public void Unknown_architecture_and_bad_field_values_are_named()
    {
        string dir = SaeLens("arch", Cfg("matryoshka_batchtopk", 12, 20), Standard(12, 20));
        var ex = Assert.Throws<InvalidDataException>(() => SaeLoader.Load(dir));
        Assert.True(ex.Message.Contains("architecture") && ex.Message.Contains("matryoshka_batchtopk") && ex.Message.Contains("jumprelu_transcoder"), ex.Message);

        var cfg = Cfg("standard", 12, 20);
        cfg["normalize_activations"] = "whiten";
        dir = SaeLens("norm", cfg, Standard(12, 20));
        ex = Assert.Throws<InvalidDataException>(() => SaeLoader.Load(dir));
        Assert.Contains("normalize_activations", ex.Message);

        cfg = Cfg("standard", 12, 20);
        cfg["d_in"] = "twelve";
        dir = SaeLens("type", cfg, Standard(12, 20));
        ex = Assert.Throws<InvalidDataException>(() => SaeLoader.Load(dir));
        Assert.Contains("'d_in' must be an integer", ex.Message);
    }

    [Fact]
    public void NaN_or_infinity_in_weights_names_the_tensor()
    {
        int at = _rng.Next(12 * 20);
        string dir = SaeLens("nan", Cfg("standard", 12, 20), Standard(12, 20), (t, d) => { if (t == "W_dec") d[at] = float.NaN; });
        var ex = Assert.Throws<InvalidDataException>(() => SaeLoader.Load(dir));
        Assert.True(ex.Message.Contains("'W_dec'") && ex.Message.Contains($"element {at}"), $"{S} {ex.Message}");

        dir = SaeLens("inf", Cfg("standard", 12, 20), Standard(12, 20), (t, d) => { if (t == "b_enc") d[3] = float.PositiveInfinity; });
        ex = Assert.Throws<InvalidDataException>(() => SaeLoader.Load(dir));
        Assert.Contains("'b_enc'", ex.Message);
    }

    [Fact]
    public void Sparsify_refuses_what_it_cannot_honour()
    {
        string dir = _tmp.File("layers.2");
        Directory.CreateDirectory(dir);
        var w = new SafetensorsWriter();
        w.Add("encoder.weight", new Tensor([16, 8], Rand(128))).Add("encoder.bias", new Tensor([16], Rand(16)))
            .Add("W_dec", new Tensor([16, 8], Rand(128))).Add("b_dec", new Tensor([8], Rand(8)));
        w.Write(Path.Combine(dir, "sae.safetensors"));
        File.WriteAllText(Path.Combine(dir, "cfg.json"), """{"k": 4, "num_latents": 16, "d_in": 8, "signed": true}""");
        var ex = Assert.Throws<InvalidDataException>(() => SaeLoader.Load(dir));
        Assert.Contains("signed", ex.Message);
        // transcode runs load as transcoders (SaeModelFormatTests); normalize_io runs are refused
        File.WriteAllText(Path.Combine(dir, "cfg.json"), """{"k": 4, "num_latents": 16, "d_in": 8, "normalize_io": true}""");
        ex = Assert.Throws<InvalidDataException>(() => SaeLoader.Load(dir));
        Assert.Contains("normalize_io", ex.Message);
        File.WriteAllText(Path.Combine(dir, "cfg.json"), """{"num_latents": 16, "d_in": 8}""");
        ex = Assert.Throws<InvalidDataException>(() => SaeLoader.Load(dir));
        Assert.Contains("'k'", ex.Message);
        // multi_topk only affects training: accepted
        File.WriteAllText(Path.Combine(dir, "cfg.json"), """{"k": 4, "num_latents": 0, "expansion_factor": 2, "d_in": 8, "multi_topk": true}""");
        var sae = SaeLoader.Load(dir);
        Assert.True(sae.DSae == 16 && sae.Config.HookName == "blocks.2.hook_resid_post" && sae.Config.ApplyBDecToInput, S);
    }

    // ───────────────────────────── .npy / .npz ─────────────────────────────

    /// <summary>.npy bytes written here, independently of the Python writer.</summary>
    static byte[] Npy(string descr, bool fortran, int[] shape, byte[] data, int major = 1)
    {
        string shapeText = shape.Length == 1 ? $"({shape[0]},)" : "(" + string.Join(", ", shape) + ")";
        string header = $"{{'descr': '{descr}', 'fortran_order': {(fortran ? "True" : "False")}, 'shape': {shapeText}, }}";
        int lenSize = major == 1 ? 2 : 4;
        int pad = (64 - (8 + lenSize + header.Length + 1) % 64) % 64;
        var h = Encoding.Latin1.GetBytes(header + new string(' ', pad) + "\n");
        var ms = new MemoryStream();
        ms.Write([0x93, (byte)'N', (byte)'U', (byte)'M', (byte)'P', (byte)'Y', (byte)major, 0]);
        if (lenSize == 2) { var b = new byte[2]; BinaryPrimitives.WriteUInt16LittleEndian(b, (ushort)h.Length); ms.Write(b); }
        else { var b = new byte[4]; BinaryPrimitives.WriteUInt32LittleEndian(b, (uint)h.Length); ms.Write(b); }
        ms.Write(h);
        ms.Write(data);
        return ms.ToArray();
    }

    [Theory]
    [InlineData("<f4", false, 1)]
    [InlineData("<f4", true, 2)]
    [InlineData(">f4", true, 3)]
    [InlineData("<f8", false, 1)]
    [InlineData(">f8", true, 1)]
    [InlineData("<f2", false, 2)]
    [InlineData(">f2", true, 1)]
    public void Npy_reads_every_float_layout(string descr, bool fortran, int major)
    {
        int rows = _rng.Next(2, 7), cols = _rng.Next(2, 9);
        var want = Rand(rows * cols);
        int size = descr[2] - '0';
        // the values to store, rounded to the stored type, in file order
        var data = new byte[rows * cols * size];
        var expected = new float[rows * cols];
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++)
            {
                int i = r * cols + c, fileIndex = fortran ? c * rows + r : i;
                var span = data.AsSpan(fileIndex * size, size);
                switch (size)
                {
                    case 4: BinaryPrimitives.WriteSingleLittleEndian(span, want[i]); expected[i] = want[i]; break;
                    case 8: BinaryPrimitives.WriteDoubleLittleEndian(span, want[i] * 1.0000001); expected[i] = (float)(want[i] * 1.0000001); break;
                    default: BinaryPrimitives.WriteHalfLittleEndian(span, (Half)want[i]); expected[i] = (float)(Half)want[i]; break;
                }
                if (descr[0] == '>') span.Reverse();
            }
        string path = _tmp.File("a.npy");
        File.WriteAllBytes(path, Npy(descr, fortran, [rows, cols], data, major));
        var a = NpyReader.ReadFile(path);
        Assert.Equal([rows, cols], a.Shape);
        for (int i = 0; i < expected.Length; i++)
            Assert.True(BitConverter.SingleToInt32Bits(expected[i]) == BitConverter.SingleToInt32Bits(a.Data[i]), $"{S} {descr} fortran={fortran} element {i}: {a.Data[i]} vs {expected[i]}");
    }

    [Fact]
    public void Bad_npy_input_is_named()
    {
        var body = MemoryMarshal.AsBytes(Rand(12).AsSpan()).ToArray();
        string path = _tmp.File("bad.npy");

        File.WriteAllBytes(path, Npy("<f4", false, [3, 4], body[..40]));
        var ex = Assert.Throws<InvalidDataException>(() => NpyReader.ReadFile(path));
        Assert.True(ex.Message.Contains("bad.npy") && ex.Message.Contains("truncated"), ex.Message);

        File.WriteAllBytes(path, Npy("<f4", false, [3, 4], [.. body, 1, 2, 3, 4]));
        ex = Assert.Throws<InvalidDataException>(() => NpyReader.ReadFile(path));
        Assert.Contains("shape and size disagree", ex.Message);

        File.WriteAllBytes(path, Npy("<i4", false, [3, 4], body));
        ex = Assert.Throws<InvalidDataException>(() => NpyReader.ReadFile(path));
        Assert.True(ex.Message.Contains("'<i4'") && ex.Message.Contains("not supported"), ex.Message);

        var bytes = Npy("<f4", false, [3, 4], body);
        bytes[1] = (byte)'X';
        File.WriteAllBytes(path, bytes);
        ex = Assert.Throws<InvalidDataException>(() => NpyReader.ReadFile(path));
        Assert.Contains("magic", ex.Message);

        File.WriteAllBytes(path, Npy("<f4", false, [3, 4], body)[..30]);
        ex = Assert.Throws<InvalidDataException>(() => NpyReader.ReadFile(path));
        Assert.Contains("truncated", ex.Message);
    }

    /// <summary>A Gemma Scope params.npz with one entry replaced by <paramref name="override_"/> bytes.</summary>
    string Npz(string dir, CompressionLevel level, string? overrideEntry = null, byte[]? override_ = null)
    {
        Directory.CreateDirectory(dir);
        string path = Path.Combine(dir, "params.npz");
        int dIn = 6, dSae = 10;
        var arrays = new (string, int[])[] { ("W_enc", [dIn, dSae]), ("W_dec", [dSae, dIn]), ("b_enc", [dSae]), ("b_dec", [dIn]), ("threshold", [dSae]) };
        using (var z = ZipFile.Open(path, ZipArchiveMode.Create))
            foreach (var (name, shape) in arrays)
            {
                var bytes = name == overrideEntry ? override_! : Npy("<f4", false, shape, MemoryMarshal.AsBytes(Rand(Tensor.ElementCount(shape)).AsSpan()).ToArray());
                using var s = z.CreateEntry(name + ".npy", level).Open();
                s.Write(bytes);
            }
        return path;
    }

    [Fact]
    public void Truncated_npy_inside_npz_names_archive_and_entry()
    {
        var full = Npy("<f4", false, [6, 10], MemoryMarshal.AsBytes(Rand(60).AsSpan()).ToArray());
        foreach (var level in new[] { CompressionLevel.NoCompression, CompressionLevel.Optimal })
        {
            string path = Npz(_tmp.File("trunc" + level), level, "W_enc", full[..(full.Length - 7)]);
            var ex = Assert.Throws<InvalidDataException>(() => SaeLoader.Load(path));
            Assert.True(ex.Message.Contains("params.npz") && ex.Message.Contains("'W_enc.npy'") && ex.Message.Contains("truncated"), $"{level}: {ex.Message}");
        }
        // a contradicting shape inside the archive
        string bad = Npz(_tmp.File("shape"), CompressionLevel.Optimal, "W_dec", Npy("<f4", false, [10, 7], MemoryMarshal.AsBytes(Rand(70).AsSpan()).ToArray()));
        var ex2 = Assert.Throws<InvalidDataException>(() => SaeLoader.Load(bad));
        Assert.True(ex2.Message.Contains("'W_dec'") && ex2.Message.Contains("[10, 7]"), ex2.Message);
        // not a zip at all
        string notZip = _tmp.File("junk.npz");
        File.WriteAllBytes(notZip, Encoding.ASCII.GetBytes("this is not a zip archive at all"));
        var ex3 = Assert.Throws<InvalidDataException>(() => SaeLoader.Load(notZip));
        Assert.Contains("junk.npz", ex3.Message);
        // a good one loads
        var ok = SaeLoader.Load(Npz(_tmp.File("ok"), CompressionLevel.Optimal));
        Assert.True(ok.DIn == 6 && ok.DSae == 10 && ok.Config.HookName == "" && !ok.Config.ApplyBDecToInput, S);
    }
}
