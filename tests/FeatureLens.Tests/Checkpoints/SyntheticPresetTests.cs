using System.Text.Json;
using FeatureLens.Runtime.Checkpoints;
using FeatureLens.Runtime.Models;
using FeatureLens.Runtime.Tensors;
using FeatureLens.Tests.Cli;

namespace FeatureLens.Tests.Checkpoints;

/// <summary>
/// The real-shape synth-model presets against the real models: config.json as each Hugging Face repository has it,
/// tensor names and shapes (a table from the real config values) and the published parameter counts.
/// </summary>
public class SyntheticPresetTests
{
    public static TheoryData<string> RealPresets => ["gemma-2-2b", "llama-3.2-1b", "qwen2.5-0.5b", "pythia-160m", "mistral-7b"];

    /// <summary>config.json of each model as its Hugging Face repository holds it (the oracle; not written by FeatureLens).</summary>
    static readonly Dictionary<string, (string Json, DType DType)> RealConfigs = new()
    {
        ["gemma-2-2b"] = ("""
            {"architectures": ["Gemma2ForCausalLM"], "attention_bias": false, "attention_dropout": 0.0, "attn_logit_softcapping": 50.0,
             "bos_token_id": 2, "cache_implementation": "hybrid", "eos_token_id": 1, "final_logit_softcapping": 30.0, "head_dim": 256,
             "hidden_act": "gelu_pytorch_tanh", "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 2304, "initializer_range": 0.02,
             "intermediate_size": 9216, "max_position_embeddings": 8192, "model_type": "gemma2", "num_attention_heads": 8,
             "num_hidden_layers": 26, "num_key_value_heads": 4, "pad_token_id": 0, "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06,
             "rope_theta": 10000.0, "sliding_window": 4096, "torch_dtype": "float32", "transformers_version": "4.42.4", "use_cache": true,
             "vocab_size": 256000}
            """, DType.F32),
        ["llama-3.2-1b"] = ("""
            {"architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0, "bos_token_id": 128000,
             "eos_token_id": 128001, "head_dim": 64, "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02,
             "intermediate_size": 8192, "max_position_embeddings": 131072, "mlp_bias": false, "model_type": "llama",
             "num_attention_heads": 32, "num_hidden_layers": 16, "num_key_value_heads": 8, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
             "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0, "original_max_position_embeddings": 8192,
                              "rope_type": "llama3"},
             "rope_theta": 500000.0, "tie_word_embeddings": true, "torch_dtype": "bfloat16", "transformers_version": "4.45.0.dev0",
             "use_cache": true, "vocab_size": 128256}
            """, DType.BF16),
        ["qwen2.5-0.5b"] = ("""
            {"architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151643,
             "hidden_act": "silu", "hidden_size": 896, "initializer_range": 0.02, "intermediate_size": 4864,
             "max_position_embeddings": 32768, "max_window_layers": 24, "model_type": "qwen2", "num_attention_heads": 14,
             "num_hidden_layers": 24, "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768,
             "tie_word_embeddings": true, "torch_dtype": "bfloat16", "transformers_version": "4.40.1", "use_cache": true,
             "use_mrope": false, "use_sliding_window": false, "vocab_size": 151936}
            """, DType.BF16),
        ["pythia-160m"] = ("""
            {"architectures": ["GPTNeoXForCausalLM"], "bos_token_id": 0, "eos_token_id": 0, "hidden_act": "gelu", "hidden_size": 768,
             "initializer_range": 0.02, "intermediate_size": 3072, "layer_norm_eps": 1e-05, "max_position_embeddings": 2048,
             "model_type": "gpt_neox", "num_attention_heads": 12, "num_hidden_layers": 12, "rotary_emb_base": 10000, "rotary_pct": 0.25,
             "tie_word_embeddings": false, "torch_dtype": "float16", "transformers_version": "4.24.0", "use_cache": true,
             "use_parallel_residual": true, "vocab_size": 50304}
            """, DType.F16),
        ["mistral-7b"] = ("""
            {"architectures": ["MistralForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 4096,
             "initializer_range": 0.02, "intermediate_size": 14336, "max_position_embeddings": 32768, "model_type": "mistral",
             "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 10000.0,
             "sliding_window": 4096, "tie_word_embeddings": false, "torch_dtype": "bfloat16", "transformers_version": "4.34.0.dev0",
             "use_cache": true, "vocab_size": 32000}
            """, DType.BF16),
    };

    /// <summary>
    /// Parameters of the real models (their model cards / safetensors metadata) and the shapes of a few tensors, from the
    /// real config values: C = hidden_size, NH·HS query width, KV·HS key/value width, H = intermediate_size, V = vocabulary.
    /// </summary>
    static readonly Dictionary<string, (long Parameters, int Tensors, (string Name, int[] Shape)[] Shapes)> RealShapes = new()
    {
        ["gemma-2-2b"] = (2_614_341_888, 1 + 26 * 11 + 1,
        [
            ("model.embed_tokens.weight", [256000, 2304]),
            ("model.layers.25.self_attn.q_proj.weight", [8 * 256, 2304]),
            ("model.layers.25.self_attn.k_proj.weight", [4 * 256, 2304]),
            ("model.layers.0.self_attn.v_proj.weight", [4 * 256, 2304]),
            ("model.layers.0.self_attn.o_proj.weight", [2304, 8 * 256]),
            ("model.layers.3.pre_feedforward_layernorm.weight", [2304]),
            ("model.layers.3.post_feedforward_layernorm.weight", [2304]),
            ("model.layers.3.post_attention_layernorm.weight", [2304]),
            ("model.layers.7.mlp.gate_proj.weight", [9216, 2304]),
            ("model.layers.7.mlp.down_proj.weight", [2304, 9216]),
            ("model.norm.weight", [2304]),
        ]),
        ["llama-3.2-1b"] = (1_235_814_400, 1 + 16 * 9 + 1,
        [
            ("model.embed_tokens.weight", [128256, 2048]),
            ("model.layers.15.self_attn.q_proj.weight", [32 * 64, 2048]),
            ("model.layers.15.self_attn.k_proj.weight", [8 * 64, 2048]),
            ("model.layers.0.self_attn.v_proj.weight", [8 * 64, 2048]),
            ("model.layers.0.self_attn.o_proj.weight", [2048, 32 * 64]),
            ("model.layers.9.mlp.up_proj.weight", [8192, 2048]),
            ("model.layers.9.mlp.down_proj.weight", [2048, 8192]),
        ]),
        ["qwen2.5-0.5b"] = (494_032_768, 1 + 24 * 12 + 1,
        [
            ("model.embed_tokens.weight", [151936, 896]),
            ("model.layers.23.self_attn.q_proj.weight", [14 * 64, 896]),
            ("model.layers.23.self_attn.q_proj.bias", [14 * 64]),
            ("model.layers.23.self_attn.k_proj.weight", [2 * 64, 896]),
            ("model.layers.23.self_attn.k_proj.bias", [2 * 64]),
            ("model.layers.0.self_attn.v_proj.bias", [2 * 64]),
            ("model.layers.0.self_attn.o_proj.weight", [896, 896]),
            ("model.layers.5.mlp.gate_proj.weight", [4864, 896]),
        ]),
        ["pythia-160m"] = (162_322_944, 1 + 12 * 12 + 3,
        [
            ("gpt_neox.embed_in.weight", [50304, 768]),
            ("gpt_neox.layers.11.attention.query_key_value.weight", [3 * 768, 768]),
            ("gpt_neox.layers.11.attention.query_key_value.bias", [3 * 768]),
            ("gpt_neox.layers.0.attention.dense.weight", [768, 768]),
            ("gpt_neox.layers.0.attention.dense.bias", [768]),
            ("gpt_neox.layers.4.input_layernorm.bias", [768]),
            ("gpt_neox.layers.4.post_attention_layernorm.weight", [768]),
            ("gpt_neox.layers.4.mlp.dense_h_to_4h.weight", [3072, 768]),
            ("gpt_neox.layers.4.mlp.dense_4h_to_h.weight", [768, 3072]),
            ("gpt_neox.layers.4.mlp.dense_4h_to_h.bias", [768]),
            ("gpt_neox.final_layer_norm.bias", [768]),
            ("embed_out.weight", [50304, 768]),
        ]),
        ["mistral-7b"] = (7_241_732_096, 1 + 32 * 9 + 2,
        [
            ("model.embed_tokens.weight", [32000, 4096]),
            ("model.layers.31.self_attn.k_proj.weight", [8 * 128, 4096]),
            ("model.layers.31.self_attn.v_proj.weight", [8 * 128, 4096]),
            ("model.layers.0.self_attn.q_proj.weight", [4096, 4096]),
            ("model.layers.0.mlp.gate_proj.weight", [14336, 4096]),
            ("lm_head.weight", [32000, 4096]),
        ]),
    };

    [Theory]
    [MemberData(nameof(RealPresets))]
    public void Config_json_has_every_field_and_value_of_the_real_models(string preset)
    {
        int seed = CheckpointTestSupport.NewSeed();
        var (json, dtype) = RealConfigs[preset];
        using var real = JsonDocument.Parse(json);
        using var ours = JsonDocument.Parse(SyntheticModel.ConfigJson(SyntheticModel.Preset(preset), dtype, seed));
        var realKeys = real.RootElement.EnumerateObject().Select(p => p.Name).Order().ToList();
        var ourKeys = ours.RootElement.EnumerateObject().Select(p => p.Name).Where(n => n != "featurelens_synthetic_seed").Order().ToList();
        Assert.Equal(realKeys, ourKeys);
        foreach (var p in real.RootElement.EnumerateObject())
            Assert.True(JsonEqual(p.Value, ours.RootElement.GetProperty(p.Name)),
                $"{preset}: field '{p.Name}' is {ours.RootElement.GetProperty(p.Name).GetRawText()}, the real model's is {p.Value.GetRawText()}");
        Assert.Equal(seed, ours.RootElement.GetProperty("featurelens_synthetic_seed").GetInt32());
    }

    [Theory]
    [MemberData(nameof(RealPresets))]
    public void Tensors_have_the_real_names_shapes_and_parameter_count(string preset)
    {
        var (parameters, count, shapes) = RealShapes[preset];
        var tensors = SyntheticModel.TensorShapes(SyntheticModel.Preset(preset));
        Assert.Equal(count, tensors.Count);
        Assert.Equal(tensors.Count, tensors.Select(t => t.Name).Distinct().Count());
        Assert.Equal(parameters, tensors.Sum(t => Tensor.ElementCount(t.Shape)));
        var byName = tensors.ToDictionary(t => t.Name, t => t.Shape);
        foreach (var (name, shape) in shapes)
        {
            Assert.True(byName.ContainsKey(name), $"{preset}: no tensor {name}");
            Assert.Equal(shape, byName[name]);
        }
    }

    [Fact]
    public void Presets_name_their_architecture_and_default_dtype()
    {
        Assert.Equal(Architecture.Gemma2, SyntheticModel.Preset("gemma-2-2b").Architecture);
        Assert.Equal(Architecture.NeoX, SyntheticModel.Preset("pythia-160m").Architecture);
        Assert.All(new[] { "llama-3.2-1b", "qwen2.5-0.5b", "mistral-7b", "llama-7b" }, p => Assert.Equal(Architecture.Llama, SyntheticModel.Preset(p).Architecture));
        Assert.Equal(DType.BF16, SyntheticModel.DefaultDType("mistral-7b"));
        Assert.Equal(DType.F32, SyntheticModel.DefaultDType("gemma-2-2b"));
        // mistral-7b in bf16 is 14.5 GB: it must stream (this only adds up the sizes).
        long bytes = SyntheticModel.TensorShapes(SyntheticModel.Preset("mistral-7b")).Sum(t => Tensor.ElementCount(t.Shape)) * 2;
        Assert.Equal(14_483_464_192L, bytes);
        // Gemma 2's windows are on even layers (HF: not layer_idx % 2), Mistral's on all.
        var g = SyntheticModel.Preset("gemma-2-2b");
        Assert.Equal(Enumerable.Range(0, 26).Select(l => l % 2 == 0 ? 4096 : 0), g.LayerWindows);
        Assert.Equal(48f, g.EmbeddingScale);
        Assert.All(SyntheticModel.Preset("mistral-7b").LayerWindows, w => Assert.Equal(4096, w));
        Assert.Equal(16, SyntheticModel.Preset("pythia-160m").RotaryDim);
        // "tiny" needs an architecture; the two-argument form refuses a preset of another architecture.
        Assert.Contains("tiny", Assert.Throws<ArgumentException>(() => SyntheticModel.Preset("tiny")).Message);
        var wrong = Assert.Throws<ArgumentException>(() => SyntheticModel.Preset(Architecture.Gpt2, "gemma-2-2b"));
        Assert.Contains("gemma-2-2b (Gemma2)", wrong.Message);
        Assert.Contains("no synthetic preset 'gemma-3'", Assert.Throws<ArgumentException>(() => SyntheticModel.Preset("gemma-3")).Message);
    }

    /// <summary>A preset cut to 3 layers and shrunk to small widths, keeping every family-specific field.</summary>
    static ModelConfig Small(string preset)
    {
        var c = SyntheticModel.Truncate(SyntheticModel.Preset(preset), 3);
        int group = c.NHeads / c.NKvHeads, kv = 2, nh = kv * group, hd = 8;
        int kvHeads = c.NKvHeads == c.NHeads ? nh : kv;
        return c.Architecture switch
        {
            // head_dim independent of hidden_size / heads, as in the real model (2304 ≠ 8 × 256)
            Architecture.Gemma2 => c with
            {
                DModel = 48,
                NHeads = nh,
                NKvHeads = kvHeads,
                DHead = hd,
                DMlp = 96,
                VocabSize = 300,
                EmbeddingScale = MathF.Sqrt(48f),
                QueryPreAttnScalar = hd,
            },
            Architecture.NeoX => c with { DModel = nh * hd, NHeads = nh, NKvHeads = kvHeads, DHead = hd, RotaryDim = 2, DMlp = 96, VocabSize = 300 },
            _ => c with { DModel = nh * hd, NHeads = nh, NKvHeads = kvHeads, DHead = hd, DMlp = 96, VocabSize = 300 },
        };
    }

    [Theory]
    [MemberData(nameof(RealPresets))]
    public void Small_variants_write_every_tensor_with_the_deterministic_values(string preset)
    {
        int seed = CheckpointTestSupport.NewSeed();
        var rng = new Random(seed);
        var config = Small(preset);
        var dtype = new[] { DType.F32, DType.BF16, DType.F16 }[rng.Next(3)];
        using var dir = new TempDir();
        SyntheticModel.Write(dir.Path, config, dtype, seed);

        // config.json keeps the real file's fields (3 layers; the family's windows cut to match).
        using (var doc = JsonDocument.Parse(File.ReadAllBytes(dir.File("config.json"))))
        {
            using var real = JsonDocument.Parse(RealConfigs[preset].Json);
            Assert.Equal(real.RootElement.EnumerateObject().Select(p => p.Name).Order(),
                doc.RootElement.EnumerateObject().Select(p => p.Name).Where(n => n != "featurelens_synthetic_seed").Order());
            Assert.Equal(3, doc.RootElement.GetProperty("num_hidden_layers").GetInt32());
        }

        using var src = CheckpointFolder.Open(dir.Path);
        var expected = SyntheticModel.TensorShapes(config);
        Assert.Equal(expected.Select(t => t.Name).Order(), src.Names.Order());
        foreach (var (name, shape) in expected)
        {
            var w = src.Get(name);
            Assert.Equal(shape, w.Shape);
            Assert.Equal(dtype, w.DType);
            long n = w.ElementCount;
            foreach (long i in new[] { 0, n - 1, rng.NextInt64(n), rng.NextInt64(n) })
            {
                float want = Rounded(SyntheticModel.Value(seed, name, i, config), dtype);
                Assert.True(want == w[i], $"{preset} {name}[{i}] = {w[i]}, expected {want} (seed {seed}, {dtype})");
            }
        }
        // Norm weights: Gemma 2 multiplies by (1 + w), so its stored weights centre on 0; the others on 1.
        string norm = config.Architecture == Architecture.NeoX ? "gpt_neox.layers.0.input_layernorm.weight" : "model.layers.0.input_layernorm.weight";
        var nw = src.Get(norm);
        double mean = Enumerable.Range(0, (int)nw.ElementCount).Average(i => (double)nw[i]);
        Assert.InRange(mean, config.Architecture == Architecture.Gemma2 ? -0.03 : 0.97, config.Architecture == Architecture.Gemma2 ? 0.03 : 1.03);
    }

    /// <summary>
    /// HfConfigReader reads each preset's config.json back into the preset (every field the runtime uses). Needs the
    /// runtime's readers for gemma2, gpt_neox, mistral, qwen2 and Llama 3 rope_scaling (issue 12).
    /// </summary>
    [Theory]
    [MemberData(nameof(RealPresets))]
    public void HfConfigReader_reads_every_preset_back(string preset)
    {
        int seed = CheckpointTestSupport.NewSeed();
        using var dir = new TempDir();
        foreach (var config in new[] { SyntheticModel.Preset(preset), Small(preset) })
        {
            File.WriteAllBytes(dir.File("config.json"), SyntheticModel.ConfigJson(config, SyntheticModel.DefaultDType(preset), seed));
            AssertSameModel(config, HfConfigReader.Read(dir.File("config.json")));
        }
    }

    /// <summary>Every field of two configs that describes the model (Source aside; no window and all-zero windows alike).</summary>
    internal static void AssertSameModel(ModelConfig want, ModelConfig got)
    {
        string who = want.Source;
        Assert.True(want.Architecture == got.Architecture, $"{who}: Architecture {got.Architecture}, expected {want.Architecture}");
        Assert.Equal(want.ModelType.Length > 0 ? want.ModelType : got.ModelType, got.ModelType);
        Assert.Equal((want.DModel, want.NLayers, want.NHeads, want.NKvHeads, want.DHead, want.DMlp, want.VocabSize, want.NCtx),
            (got.DModel, got.NLayers, got.NHeads, got.NKvHeads, got.DHead, got.DMlp, got.VocabSize, got.NCtx));
        Assert.Equal((want.NormEps, want.RopeTheta, want.Rope, want.RotaryDim, want.RopeScaling),
            (got.NormEps, got.RopeTheta, got.Rope, got.RotaryDim, got.RopeScaling));
        Assert.Equal((want.TiedEmbeddings, want.Activation, want.ParallelAttnMlp, want.EmbeddingScale),
            (got.TiedEmbeddings, got.Activation, got.ParallelAttnMlp, got.EmbeddingScale));
        Assert.Equal((want.QueryPreAttnScalar, want.AttnSoftcap, want.FinalSoftcap, want.AttnScoreScale),
            (got.QueryPreAttnScalar, got.AttnSoftcap, got.FinalSoftcap, got.AttnScoreScale));
        Assert.Equal(Enumerable.Range(0, want.NLayers).Select(want.WindowOf), Enumerable.Range(0, got.NLayers).Select(got.WindowOf));
        Assert.Equal((want.BosTokenId, want.EosTokenId), (got.BosTokenId, got.EosTokenId));
    }

    [Fact]
    public void Configs_that_config_json_cannot_express_are_refused_by_field()
    {
        var gemma = Small("gemma-2-2b");
        Assert.Contains("even layers", Assert.Throws<ArgumentException>(() => SyntheticModel.ConfigJson(gemma with { LayerWindows = [0, 4096, 0] }, DType.F32, 1)).Message);
        Assert.Contains("sqrt(hidden_size)", Assert.Throws<ArgumentException>(() => SyntheticModel.ConfigJson(gemma with { EmbeddingScale = 1 }, DType.F32, 1)).Message);
        Assert.Contains("TiedEmbeddings", Assert.Throws<ArgumentException>(() => SyntheticModel.ConfigJson(gemma with { TiedEmbeddings = false }, DType.F32, 1)).Message);
        var pythia = Small("pythia-160m");
        Assert.Contains("embed_out", Assert.Throws<ArgumentException>(() => SyntheticModel.ConfigJson(pythia with { TiedEmbeddings = true }, DType.F32, 1)).Message);
        Assert.Contains("rotary_pct", Assert.Throws<ArgumentException>(() => SyntheticModel.ConfigJson(pythia with { DHead = 44, DModel = 88, RotaryDim = 30 }, DType.F32, 1)).Message);
        var mistral = Small("mistral-7b");
        Assert.Contains("sliding_window", Assert.Throws<ArgumentException>(() => SyntheticModel.ConfigJson(mistral with { LayerWindows = [4096, 0, 4096] }, DType.F32, 1)).Message);
        var qwen = Small("qwen2.5-0.5b");
        Assert.Contains("max_window_layers", Assert.Throws<ArgumentException>(() => SyntheticModel.ConfigJson(qwen with { LayerWindows = [64, 0, 64] }, DType.F32, 1)).Message);
        Assert.Contains("gpt_neox", Assert.Throws<ArgumentException>(() => SyntheticModel.ConfigJson(qwen with { ModelType = "gpt_neox" }, DType.F32, 1)).Message);
        Assert.Contains("--layers", Assert.Throws<ArgumentOutOfRangeException>(() => SyntheticModel.Truncate(SyntheticModel.Preset("gemma-2-2b"), 27)).Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => SyntheticModel.Truncate(SyntheticModel.Preset("gemma-2-2b"), 0));
        // Qwen 2 sliding from layer 1 on is written as use_sliding_window with max_window_layers 1.
        using var doc = JsonDocument.Parse(SyntheticModel.ConfigJson(qwen with { LayerWindows = [0, 64, 64] }, DType.F32, 1));
        Assert.True(doc.RootElement.GetProperty("use_sliding_window").GetBoolean());
        Assert.Equal((1, 64), (doc.RootElement.GetProperty("max_window_layers").GetInt32(), doc.RootElement.GetProperty("sliding_window").GetInt32()));
    }

    [Fact]
    public void A_model_larger_than_the_free_disk_is_refused_before_anything_is_written()
    {
        using var dir = new TempDir();
        // ~1 PB of weights: more than any test machine's disk.
        var huge = SyntheticModel.Preset("mistral-7b") with { VocabSize = 2_000_000_000, DModel = 65536, NHeads = 512, NKvHeads = 128, LayerWindows = [] };
        var ex = Assert.Throws<IOException>(() => SyntheticModel.Write(dir.Path, huge with { NLayers = 1, ModelType = "llama" }, DType.BF16, 1));
        Assert.Contains(dir.Path, ex.Message);
        Assert.Contains("free", ex.Message);
        Assert.Empty(Directory.GetFiles(dir.Path));
    }

    [Fact]
    public void Cli_writes_a_truncated_preset_with_a_copied_tokenizer()
    {
        int seed = CheckpointTestSupport.NewSeed();
        using var dir = new TempDir();
        string tok = Directory.CreateDirectory(dir.File("tok")).FullName;
        string tokJson = $"{{\"version\": \"1.0\", \"model\": {{\"type\": \"BPE\", \"vocab\": {{\"a{seed}\": 0}}, \"merges\": []}}}}";
        File.WriteAllText(Path.Combine(tok, "tokenizer.json"), tokJson);
        File.WriteAllText(Path.Combine(tok, "tokenizer_config.json"), "{\"add_bos_token\": true}");
        string outDir = dir.File("pythia");
        var r = CliTests.Run("synth-model", "--preset", "pythia-160m", "--layers", "1", "--dtype", "bf16", "--seed", seed.ToString(CultureInfo.InvariantCulture),
            "--tokenizer", tok, "--out", outDir);
        Assert.True(r.ExitCode == 0, r.Stderr);
        Assert.Equal(tokJson, File.ReadAllText(Path.Combine(outDir, "tokenizer.json")));
        Assert.Equal("{\"add_bos_token\": true}", File.ReadAllText(Path.Combine(outDir, "tokenizer_config.json")));
        Assert.False(File.Exists(Path.Combine(outDir, "special_tokens_map.json")));
        using (var doc = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(outDir, "config.json"))))
        {
            Assert.Equal(1, doc.RootElement.GetProperty("num_hidden_layers").GetInt32());
            Assert.Equal("bfloat16", doc.RootElement.GetProperty("torch_dtype").GetString());
            Assert.Equal(seed, doc.RootElement.GetProperty("featurelens_synthetic_seed").GetInt32());
        }
        var config = SyntheticModel.Truncate(SyntheticModel.Preset("pythia-160m"), 1);
        using (var src = CheckpointFolder.Open(outDir))
        {
            Assert.Equal(SyntheticModel.TensorShapes(config).Select(t => t.Name).Order(), src.Names.Order());
            var w = src.Get("embed_out.weight");
            Assert.Equal([50304, 768], w.Shape);
            long last = w.ElementCount - 1;
            Assert.Equal(Rounded(SyntheticModel.Value(seed, "embed_out.weight", last, config), DType.BF16), w[last]);
        }

        // Bad input: exit 1 and a message naming the option.
        var arch = CliTests.Run("synth-model", "--arch", "gpt2", "--preset", "gemma-2-2b", "--seed", "1", "--out", dir.File("x"));
        Assert.Equal(1, arch.ExitCode);
        Assert.Contains("--arch gpt2", arch.Stderr);
        var layers = CliTests.Run("synth-model", "--preset", "gemma-2-2b", "--layers", "27", "--seed", "1", "--out", dir.File("y"));
        Assert.Equal(1, layers.ExitCode);
        Assert.Contains("--layers", layers.Stderr);
        var noTok = CliTests.Run("synth-model", "--preset", "pythia-160m", "--layers", "1", "--tokenizer", dir.File("none"), "--seed", "1", "--out", dir.File("z"));
        Assert.Equal(1, noTok.ExitCode);
        Assert.Contains(dir.File("none"), noTok.Stderr);
        Assert.False(Directory.Exists(dir.File("z")), "nothing is written when --tokenizer is wrong");
        var tiny = CliTests.Run("synth-model", "--preset", "tiny", "--seed", "1", "--out", dir.File("t"));
        Assert.Equal(1, tiny.ExitCode);
        Assert.Contains("--arch", tiny.Stderr);
    }

    static float Rounded(float x, DType dtype) => dtype switch
    {
        DType.BF16 => BitConverter.UInt32BitsToSingle((uint)FloatConvert.F32ToBF16(x) << 16),
        DType.F16 => (float)(Half)x,
        _ => x,
    };

    /// <summary>JSON values alike: numbers by value (50 = 50.0), objects by key set, arrays in order.</summary>
    static bool JsonEqual(JsonElement a, JsonElement b)
    {
        if (a.ValueKind != b.ValueKind) return false;
        switch (a.ValueKind)
        {
            case JsonValueKind.Number: return a.GetDouble() == b.GetDouble();
            case JsonValueKind.String: return a.GetString() == b.GetString();
            case JsonValueKind.Array:
                return a.GetArrayLength() == b.GetArrayLength() && a.EnumerateArray().Zip(b.EnumerateArray()).All(p => JsonEqual(p.First, p.Second));
            case JsonValueKind.Object:
                var ak = a.EnumerateObject().Select(p => p.Name).Order().ToList();
                var bk = b.EnumerateObject().Select(p => p.Name).Order().ToList();
                return ak.SequenceEqual(bk) && ak.All(k => JsonEqual(a.GetProperty(k), b.GetProperty(k)));
            default: return true; // true, false, null
        }
    }
}
