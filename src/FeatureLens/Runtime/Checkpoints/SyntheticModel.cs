using System.Buffers;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using Architecture = FeatureLens.Runtime.Models.Architecture;
using System.Text.Json;
using FeatureLens.Runtime.Models;
using FeatureLens.Runtime.Tensors;

namespace FeatureLens.Runtime.Checkpoints;

/// <summary>
/// Writes Hugging Face model folders (config.json + safetensors, sharded above <see cref="MaxShardBytes"/>)
/// with deterministic random weights, so models of real shapes (GPT-2 small, Llama-2-7B, Gemma 2 2B, Llama 3.2 1B,
/// Qwen 2.5 0.5B, Pythia 160M, Mistral 7B) can be run, benchmarked and tested offline. config.json carries the
/// real model's fields and values (as its Hugging Face repository has them) and the tensors have Hugging Face's
/// names and shapes. Every value is a pure function of (seed, tensor name, element index)
/// — see <see cref="Value(int, string, long, ModelConfig)"/> — so the folder is reproducible and can be generated
/// chunk by chunk on several threads with bounded memory (a 14.5 GB bf16 Mistral-7B streams through two 8 MB buffers).
/// Matrices and embeddings ≈ N(0, 0.02²); norm weights ≈ 1 + N(0, 0.05²) (Gemma 2, whose norms multiply by 1 + w:
/// N(0, 0.05²)); biases ≈ N(0, 0.01²).
/// </summary>
public static class SyntheticModel
{
    /// <summary>Default largest shard; a model with more bytes of weights is split into model-0000i-of-0000n.safetensors files.</summary>
    public const long MaxShardBytes = 2_000_000_000;

    /// <summary>
    /// Preset names accepted by <see cref="Preset(string)"/>: "tiny" (GPT-2 or Llama, needs the architecture) and
    /// models at their real shapes.
    /// </summary>
    public static readonly IReadOnlyList<string> PresetNames =
        ["tiny", "gpt2-small", "llama-7b", "gemma-2-2b", "llama-3.2-1b", "qwen2.5-0.5b", "pythia-160m", "mistral-7b"];

    const int ChunkElements = 1 << 21;  // elements generated per buffer (8 MB of float32, 4 MB of bf16)
    const int BlockElements = 1 << 16;  // elements per parallel work item inside a chunk

    /// <summary>
    /// The hyper-parameters of a preset: "tiny" (either architecture), "gpt2-small" (GPT-2), "llama-7b" (Llama 2 7B), or
    /// one of the real-shape presets of <see cref="Preset(string)"/> when <paramref name="arch"/> is its architecture.
    /// </summary>
    public static ModelConfig Preset(Architecture arch, string preset) => (arch, preset) switch
    {
        (Architecture.Gpt2, "tiny") => new ModelConfig
        {
            Architecture = Architecture.Gpt2, DModel = 64, NLayers = 2, NHeads = 4, NKvHeads = 4, DMlp = 256,
            VocabSize = 512, NCtx = 256, NormEps = 1e-5f, TiedEmbeddings = true, Activation = "gelu_new",
            BosTokenId = 511, EosTokenId = 511, Source = "preset tiny",
        },
        (Architecture.Llama, "tiny") => new ModelConfig
        {
            Architecture = Architecture.Llama, DModel = 64, NLayers = 2, NHeads = 4, NKvHeads = 2, DMlp = 172,
            VocabSize = 512, NCtx = 256, NormEps = 1e-5f, RopeTheta = 10000f, Rope = RopeLayout.RotateHalf,
            TiedEmbeddings = false, Activation = "silu", BosTokenId = 1, EosTokenId = 2, Source = "preset tiny",
        },
        (_, "tiny") => throw new ArgumentException($"no synthetic preset 'tiny' for {arch}; 'tiny' is GPT-2 or Llama", nameof(arch)),
        _ when RealShape(preset) is { } c && c.Architecture == arch => c,
        _ => throw new ArgumentException(
            $"no synthetic preset '{preset}' for {arch}; available: tiny (GPT-2, Llama), " +
            string.Join(", ", PresetNames.Where(n => n != "tiny").Select(n => $"{n} ({RealShape(n)!.Architecture})")), nameof(preset)),
    };

    /// <summary>
    /// A real-shape preset by name alone (its architecture is implied): gpt2-small, llama-7b (Llama 2 7B), gemma-2-2b
    /// (google/gemma-2-2b), llama-3.2-1b (meta-llama/Llama-3.2-1B), qwen2.5-0.5b (Qwen/Qwen2.5-0.5B), pythia-160m
    /// (EleutherAI/pythia-160m), mistral-7b (mistralai/Mistral-7B-v0.1). "tiny" needs <see cref="Preset(Architecture, string)"/>.
    /// </summary>
    public static ModelConfig Preset(string preset) => RealShape(preset) ?? throw new ArgumentException(
        preset == "tiny" ? "preset 'tiny' needs an architecture (GPT-2 or Llama)"
            : $"no synthetic preset '{preset}'; available: {string.Join(", ", PresetNames)}", nameof(preset));

    /// <summary>The dtype a preset is written in unless one is chosen: bf16 for mistral-7b (14.5 GB), float32 otherwise.</summary>
    public static DType DefaultDType(string preset) => preset == "mistral-7b" ? DType.BF16 : DType.F32;

    /// <summary>The first <paramref name="layers"/> blocks of <paramref name="config"/> (per-layer windows cut to match).</summary>
    public static ModelConfig Truncate(ModelConfig config, int layers)
    {
        ArgumentNullException.ThrowIfNull(config);
        if (layers < 1 || layers > config.NLayers)
            throw new ArgumentOutOfRangeException(nameof(layers), layers, $"--layers must be between 1 and the preset's {config.NLayers} layers");
        return config with { NLayers = layers, LayerWindows = config.LayerWindows.Length == 0 ? [] : config.LayerWindows[..layers] };
    }

    static ModelConfig? RealShape(string preset) => preset switch
    {
        "gpt2-small" => new ModelConfig
        {
            Architecture = Architecture.Gpt2, DModel = 768, NLayers = 12, NHeads = 12, NKvHeads = 12, DMlp = 3072,
            VocabSize = 50257, NCtx = 1024, NormEps = 1e-5f, TiedEmbeddings = true, Activation = "gelu_new",
            BosTokenId = 50256, EosTokenId = 50256, Source = "preset gpt2-small",
        },
        "llama-7b" => new ModelConfig
        {
            Architecture = Architecture.Llama, DModel = 4096, NLayers = 32, NHeads = 32, NKvHeads = 32, DMlp = 11008,
            VocabSize = 32000, NCtx = 4096, NormEps = 1e-5f, RopeTheta = 10000f, Rope = RopeLayout.RotateHalf,
            TiedEmbeddings = false, Activation = "silu", BosTokenId = 1, EosTokenId = 2, Source = "preset llama-7b",
        },
        // google/gemma-2-2b: sliding window 4096 on even layers, soft-capping 50 (attention) and 30 (logits).
        "gemma-2-2b" => new ModelConfig
        {
            Architecture = Architecture.Gemma2, ModelType = "gemma2", DModel = 2304, NLayers = 26, NHeads = 8, NKvHeads = 4,
            DHead = 256, DMlp = 9216, VocabSize = 256000, NCtx = 8192, NormEps = 1e-6f, RopeTheta = 10000f,
            Rope = RopeLayout.RotateHalf, TiedEmbeddings = true, Activation = "gelu_new", EmbeddingScale = MathF.Sqrt(2304f),
            QueryPreAttnScalar = 256f, AttnSoftcap = 50f, FinalSoftcap = 30f,
            LayerWindows = [.. Enumerable.Range(0, 26).Select(l => l % 2 == 0 ? 4096 : 0)],
            BosTokenId = 2, EosTokenId = 1, Source = "preset gemma-2-2b",
        },
        // meta-llama/Llama-3.2-1B: llama3 rope scaling, tied embeddings, GQA 32/8.
        "llama-3.2-1b" => new ModelConfig
        {
            Architecture = Architecture.Llama, ModelType = "llama", DModel = 2048, NLayers = 16, NHeads = 32, NKvHeads = 8,
            DHead = 64, DMlp = 8192, VocabSize = 128256, NCtx = 131072, NormEps = 1e-5f, RopeTheta = 500000f,
            Rope = RopeLayout.RotateHalf, RopeScaling = new RopeScaling("llama3", 32, 1, 4, 8192), TiedEmbeddings = true,
            Activation = "silu", BosTokenId = 128000, EosTokenId = 128001, Source = "preset llama-3.2-1b",
        },
        // Qwen/Qwen2.5-0.5B: q/k/v biases, tied embeddings, GQA 14/2, no sliding window (use_sliding_window false).
        "qwen2.5-0.5b" => new ModelConfig
        {
            Architecture = Architecture.Llama, ModelType = "qwen2", DModel = 896, NLayers = 24, NHeads = 14, NKvHeads = 2,
            DMlp = 4864, VocabSize = 151936, NCtx = 32768, NormEps = 1e-6f, RopeTheta = 1000000f, Rope = RopeLayout.RotateHalf,
            TiedEmbeddings = true, Activation = "silu", BosTokenId = 151643, EosTokenId = 151643, Source = "preset qwen2.5-0.5b",
        },
        // EleutherAI/pythia-160m: parallel residual, rotary on 16 of 64 head dims, exact gelu, untied embed_out.
        "pythia-160m" => new ModelConfig
        {
            Architecture = Architecture.NeoX, ModelType = "gpt_neox", DModel = 768, NLayers = 12, NHeads = 12, NKvHeads = 12,
            DMlp = 3072, VocabSize = 50304, NCtx = 2048, NormEps = 1e-5f, RopeTheta = 10000f, Rope = RopeLayout.RotateHalf,
            RotaryDim = 16, ParallelAttnMlp = true, TiedEmbeddings = false, Activation = "gelu", BosTokenId = 0, EosTokenId = 0,
            Source = "preset pythia-160m",
        },
        // mistralai/Mistral-7B-v0.1: sliding window 4096 on every layer, GQA 32/8.
        "mistral-7b" => new ModelConfig
        {
            Architecture = Architecture.Llama, ModelType = "mistral", DModel = 4096, NLayers = 32, NHeads = 32, NKvHeads = 8,
            DMlp = 14336, VocabSize = 32000, NCtx = 32768, NormEps = 1e-5f, RopeTheta = 10000f, Rope = RopeLayout.RotateHalf,
            TiedEmbeddings = false, Activation = "silu", LayerWindows = [.. Enumerable.Repeat(4096, 32)],
            BosTokenId = 1, EosTokenId = 2, Source = "preset mistral-7b",
        },
        _ => null,
    };

    /// <summary>Writes a preset model into <paramref name="outDir"/> (see <see cref="Preset(Architecture, string)"/>).</summary>
    public static void Write(string outDir, Architecture arch, string preset, DType dtype, int seed, IProgress<double>? progress = null) =>
        Write(outDir, Preset(arch, preset), dtype, seed, progress);

    /// <summary>
    /// Writes a real-shape preset (see <see cref="Preset(string)"/>) into <paramref name="outDir"/>, its first
    /// <paramref name="layers"/> blocks only when that is given (embeddings, final norm and unembedding stay whole).
    /// </summary>
    public static void Write(string outDir, string preset, DType dtype, int seed, IProgress<double>? progress = null, int? layers = null)
    {
        var config = Preset(preset);
        Write(outDir, layers is int n ? Truncate(config, n) : config, dtype, seed, progress);
    }

    /// <summary>
    /// Writes config.json and the weights of <paramref name="config"/> into <paramref name="outDir"/> in
    /// <paramref name="dtype"/> (F32, BF16 or F16). Weight files left there by an earlier synthetic write are replaced;
    /// a folder holding any other model is refused.
    /// <paramref name="progress"/> receives the fraction of weight bytes written. Weights larger than
    /// <paramref name="maxShardBytes"/> are split into shards listed by model.safetensors.index.json.
    /// </summary>
    public static void Write(string outDir, ModelConfig config, DType dtype, int seed, IProgress<double>? progress = null,
                             long maxShardBytes = MaxShardBytes)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(maxShardBytes);
        ArgumentNullException.ThrowIfNull(config);
        if (!dtype.IsWeightFloat()) throw new ArgumentException($"synthetic weights must be F32, BF16 or F16, not {dtype}", nameof(dtype));
        (config with { Source = config.Source.Length > 0 ? config.Source : "synthetic model config" }).Validate();
        byte[] configJson = ConfigJson(config, dtype, seed); // checks what config.json can express before anything is written

        outDir = Path.GetFullPath(outDir);
        Directory.CreateDirectory(outDir);
        RemoveOldWeights(outDir);
        var tensors = TensorShapes(config);
        long total = tensors.Sum(t => Tensor.ElementCount(t.Shape) * dtype.Size());
        long free = new DriveInfo(outDir).AvailableFreeSpace;
        if (free < total)
            throw new IOException($"{outDir}: the weights need {total / 1e9:F2} GB but only {free / 1e9:F2} GB are free on its disk");
        WriteAtomically(Path.Combine(outDir, "config.json"), configJson);

        var shards = SplitIntoShards(tensors, dtype, maxShardBytes);
        long done = 0;
        void Advance(long bytes)
        {
            done += bytes;
            progress?.Report(total == 0 ? 1.0 : (double)done / total);
        }

        var weightMap = new SortedDictionary<string, string>(StringComparer.Ordinal);
        for (int s = 0; s < shards.Count; s++)
        {
            string file = shards.Count == 1 ? CheckpointFolder.SingleFileName : $"model-{s + 1:D5}-of-{shards.Count:D5}.safetensors";
            var writer = new SafetensorsWriter();
            foreach (var (name, shape) in shards[s])
            {
                writer.AddStreamed(name, dtype, shape, stream => StreamTensor(stream, seed, name, NormMean(config), Tensor.ElementCount(shape), dtype, Advance));
                weightMap[name] = file;
            }
            writer.Write(Path.Combine(outDir, file), new Dictionary<string, string> { ["format"] = "pt" });
        }
        if (shards.Count > 1) WriteIndex(Path.Combine(outDir, CheckpointFolder.IndexFileName), total, weightMap);
    }

    /// <summary>
    /// The Hugging Face tensor names and shapes of a model, in layer order. B = batch-free shapes as the checkpoint
    /// stores them: Linear weights are [out, in] (GPT-2's Conv1D weights [in, out]); C = d_model, NH/KV = query/key-value
    /// heads, HS = head_dim, H = d_mlp, V = vocabulary.
    /// </summary>
    public static IReadOnlyList<(string Name, int[] Shape)> TensorShapes(ModelConfig c)
    {
        ArgumentNullException.ThrowIfNull(c);
        var list = new List<(string, int[])>();
        int d = c.DModel, h = c.DMlp, q = c.NHeads * c.DHead, kv = c.NKvHeads * c.DHead;
        switch (c.Architecture)
        {
            case Architecture.Gpt2:
                list.Add(("wte.weight", [c.VocabSize, d]));
                list.Add(("wpe.weight", [c.NCtx, d]));
                for (int i = 0; i < c.NLayers; i++)
                {
                    string p = $"h.{i}.";
                    list.Add((p + "ln_1.weight", [d]));
                    list.Add((p + "ln_1.bias", [d]));
                    list.Add((p + "attn.c_attn.weight", [d, 3 * d])); // Conv1D: [in, out]
                    list.Add((p + "attn.c_attn.bias", [3 * d]));
                    list.Add((p + "attn.c_proj.weight", [d, d]));
                    list.Add((p + "attn.c_proj.bias", [d]));
                    list.Add((p + "ln_2.weight", [d]));
                    list.Add((p + "ln_2.bias", [d]));
                    list.Add((p + "mlp.c_fc.weight", [d, h]));
                    list.Add((p + "mlp.c_fc.bias", [h]));
                    list.Add((p + "mlp.c_proj.weight", [h, d]));
                    list.Add((p + "mlp.c_proj.bias", [d]));
                }
                list.Add(("ln_f.weight", [d]));
                list.Add(("ln_f.bias", [d]));
                break;
            case Architecture.NeoX:
                list.Add(("gpt_neox.embed_in.weight", [c.VocabSize, d]));
                for (int i = 0; i < c.NLayers; i++)
                {
                    string p = $"gpt_neox.layers.{i}.";
                    list.Add((p + "input_layernorm.weight", [d]));
                    list.Add((p + "input_layernorm.bias", [d]));
                    list.Add((p + "post_attention_layernorm.weight", [d]));
                    list.Add((p + "post_attention_layernorm.bias", [d]));
                    list.Add((p + "attention.query_key_value.weight", [3 * q, d])); // per head: q, k, v rows
                    list.Add((p + "attention.query_key_value.bias", [3 * q]));
                    list.Add((p + "attention.dense.weight", [d, q]));
                    list.Add((p + "attention.dense.bias", [d]));
                    list.Add((p + "mlp.dense_h_to_4h.weight", [h, d]));
                    list.Add((p + "mlp.dense_h_to_4h.bias", [h]));
                    list.Add((p + "mlp.dense_4h_to_h.weight", [d, h]));
                    list.Add((p + "mlp.dense_4h_to_h.bias", [d]));
                }
                list.Add(("gpt_neox.final_layer_norm.weight", [d]));
                list.Add(("gpt_neox.final_layer_norm.bias", [d]));
                list.Add(("embed_out.weight", [c.VocabSize, d]));
                break;
            default: // Llama family and Gemma 2
                bool qkvBias = Family(c) == "qwen2";
                list.Add(("model.embed_tokens.weight", [c.VocabSize, d]));
                for (int i = 0; i < c.NLayers; i++)
                {
                    string p = $"model.layers.{i}.";
                    list.Add((p + "input_layernorm.weight", [d]));
                    list.Add((p + "self_attn.q_proj.weight", [q, d])); // Linear: [out, in]
                    if (qkvBias) list.Add((p + "self_attn.q_proj.bias", [q]));
                    list.Add((p + "self_attn.k_proj.weight", [kv, d]));
                    if (qkvBias) list.Add((p + "self_attn.k_proj.bias", [kv]));
                    list.Add((p + "self_attn.v_proj.weight", [kv, d]));
                    if (qkvBias) list.Add((p + "self_attn.v_proj.bias", [kv]));
                    list.Add((p + "self_attn.o_proj.weight", [d, q]));
                    list.Add((p + "post_attention_layernorm.weight", [d]));
                    if (c.Architecture == Architecture.Gemma2)
                    {
                        list.Add((p + "pre_feedforward_layernorm.weight", [d]));
                        list.Add((p + "post_feedforward_layernorm.weight", [d]));
                    }
                    list.Add((p + "mlp.gate_proj.weight", [h, d]));
                    list.Add((p + "mlp.up_proj.weight", [h, d]));
                    list.Add((p + "mlp.down_proj.weight", [d, h]));
                }
                list.Add(("model.norm.weight", [d]));
                if (!c.TiedEmbeddings) list.Add(("lm_head.weight", [c.VocabSize, d]));
                break;
        }
        return list;
    }

    /// <summary>
    /// Element <paramref name="index"/> of tensor <paramref name="name"/> as float32 before rounding to the file's dtype,
    /// for a GPT-2 or Llama-family model (norm weights around 1).
    /// Names ending in "bias" are biases, names containing "norm" or "ln_" are norm weights, the rest matrices.
    /// </summary>
    public static float Value(int seed, string name, long index) => Value(seed, name, index, 1f);

    /// <summary>
    /// Element <paramref name="index"/> of tensor <paramref name="name"/> of a model of <paramref name="config"/>'s
    /// family as float32 before rounding: as <see cref="Value(int, string, long)"/>, but Gemma 2's norm weights
    /// (used as 1 + w) are centred on 0.
    /// </summary>
    public static float Value(int seed, string name, long index, ModelConfig config) => Value(seed, name, index, NormMean(config));

    static float Value(int seed, string name, long index, float normMean)
    {
        var (key, scale, offset) = Distribution(seed, name, normMean);
        return (float)NoiseSum(key, index) * scale + offset;
    }

    /// <summary>The mean of norm weights: 0 where the model multiplies by (1 + w) (Gemma 2), else 1.</summary>
    static float NormMean(ModelConfig c) => c.Architecture == Architecture.Gemma2 ? 0f : 1f;

    /// <summary>
    /// The hash key of a tensor and the affine map from <see cref="NoiseSum(ulong, long)"/> to its values:
    /// value = sum·scale + offset = mean + std·(sum − 131070)·√3/65536.
    /// </summary>
    static (ulong key, float scale, float offset) Distribution(int seed, string name, float normMean)
    {
        ulong key = Mix((ulong)(uint)seed * 0x9E3779B97F4A7C15UL ^ Fnv1a(name));
        float mean, std;
        if (name.EndsWith("bias", StringComparison.Ordinal)) (mean, std) = (0f, 0.01f);
        else if (name.Contains("norm", StringComparison.Ordinal) || name.Contains("ln_", StringComparison.Ordinal)) (mean, std) = (normMean, 0.05f);
        else (mean, std) = (0f, 0.02f);
        float scale = std * (1.7320508f / 65536f);
        return (key, scale, mean - 131070f * scale);
    }

    /// <summary>
    /// The sum of the four 16-bit fields of one hash of (key, index): roughly normal with mean 131070 and
    /// standard deviation 65536/√3 (each field is uniform with variance ≈ 65536²/12).
    /// </summary>
    static uint NoiseSum(ulong key, long index)
    {
        ulong z = Mix(key + (ulong)index * 0x9E3779B97F4A7C15UL);
        return (uint)(z & 0xFFFF) + (uint)((z >> 16) & 0xFFFF) + (uint)((z >> 32) & 0xFFFF) + (uint)(z >> 48);
    }

    /// <summary>
    /// Values of elements [start, start + dst.Length) of the tensor with <paramref name="key"/>; the vector path
    /// computes exactly what <see cref="Value(int, string, long)"/> does, 8 elements at a time (AVX2 or better; the job is disk-bound, so 256 bits suffice).
    /// </summary>
    static void Generate(ulong key, float scale, float offset, long start, Span<float> dst)
    {
        int i = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            var lanes = Vector256.Create(0UL, 1, 2, 3);
            var k = Vector256.Create(key);
            var vScale = Vector256.Create(scale);
            var vOffset = Vector256.Create(offset);
            ref float d = ref MemoryMarshal.GetReference(dst);
            for (; i <= dst.Length - 8; i += 8)
            {
                var idx = Vector256.Create((ulong)(start + i)) + lanes;
                var lo = NoiseSum(k, idx);
                var hi = NoiseSum(k, idx + Vector256.Create(4UL));
                var sum = Vector256.ConvertToSingle(Vector256.Narrow(lo, hi));
                (sum * vScale + vOffset).StoreUnsafe(ref d, (nuint)i);
            }
        }
        for (; i < dst.Length; i++) dst[i] = (float)NoiseSum(key, start + i) * scale + offset;
    }

    /// <summary><see cref="NoiseSum(ulong, long)"/> for four indices at once.</summary>
    static Vector256<ulong> NoiseSum(Vector256<ulong> key, Vector256<ulong> index)
    {
        var z = key + index * Vector256.Create(0x9E3779B97F4A7C15UL);
        z = (z ^ Vector256.ShiftRightLogical(z, 30)) * Vector256.Create(0xBF58476D1CE4E5B9UL);
        z = (z ^ Vector256.ShiftRightLogical(z, 27)) * Vector256.Create(0x94D049BB133111EBUL);
        z ^= Vector256.ShiftRightLogical(z, 31);
        var m = Vector256.Create(0xFFFFUL);
        return (z & m) + (Vector256.ShiftRightLogical(z, 16) & m) + (Vector256.ShiftRightLogical(z, 32) & m) + Vector256.ShiftRightLogical(z, 48);
    }

    /// <summary>float32 → bfloat16 with round-to-nearest-even, for finite values (synthetic weights have no NaN).</summary>
    static void FiniteToBF16(ReadOnlySpan<float> src, Span<ushort> dst)
    {
        int i = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            ref uint s = ref Unsafe.As<float, uint>(ref MemoryMarshal.GetReference(src));
            ref ushort d = ref MemoryMarshal.GetReference(dst);
            var one = Vector256.Create(1u);
            var half = Vector256.Create(0x7FFFu);
            for (; i <= src.Length - 16; i += 16)
            {
                var a = Vector256.LoadUnsafe(ref s, (nuint)i);
                var b = Vector256.LoadUnsafe(ref s, (nuint)i + 8);
                a = Vector256.ShiftRightLogical(a + half + (Vector256.ShiftRightLogical(a, 16) & one), 16);
                b = Vector256.ShiftRightLogical(b + half + (Vector256.ShiftRightLogical(b, 16) & one), 16);
                Vector256.Narrow(a, b).StoreUnsafe(ref d, (nuint)i);
            }
        }
        for (; i < src.Length; i++) dst[i] = FloatConvert.F32ToBF16(src[i]);
    }

    /// <summary>SplitMix64's finaliser: a bijective 64-bit mixer.</summary>
    static ulong Mix(ulong z)
    {
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    static ulong Fnv1a(string s)
    {
        ulong h = 14695981039346656037UL;
        foreach (char c in s) { h ^= c; h *= 1099511628211UL; }
        return h;
    }

    /// <summary>
    /// Writes <paramref name="count"/> elements of one tensor: while one chunk is written to the stream, the next
    /// is generated on the thread pool, so at most two chunk buffers exist at a time.
    /// </summary>
    static void StreamTensor(Stream stream, int seed, string name, float normMean, long count, DType dtype, Action<long> advance)
    {
        var (key, scale, offset) = Distribution(seed, name, normMean);
        int esize = dtype.Size();
        byte[] front = ArrayPool<byte>.Shared.Rent(ChunkElements * esize);
        byte[] back = ArrayPool<byte>.Shared.Rent(ChunkElements * esize);
        try
        {
            long start = 0;
            int n = (int)Math.Min(ChunkElements, count);
            FillChunk(front, dtype, key, scale, offset, start, n);
            while (n > 0)
            {
                long nextStart = start + n;
                int nextN = (int)Math.Min(ChunkElements, count - nextStart);
                byte[] fillBuf = back;
                Task next = nextN > 0
                    ? Task.Run(() => FillChunk(fillBuf, dtype, key, scale, offset, nextStart, nextN))
                    : Task.CompletedTask;
                stream.Write(front, 0, n * esize);
                advance((long)n * esize);
                next.GetAwaiter().GetResult();
                (front, back) = (back, front);
                start = nextStart;
                n = nextN;
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(front);
            ArrayPool<byte>.Shared.Return(back);
        }
    }

    /// <summary>Elements [start, start+n) of a tensor into <paramref name="dst"/> as <paramref name="dtype"/>, in parallel blocks.</summary>
    static void FillChunk(byte[] dst, DType dtype, ulong key, float scale, float offset, long start, int n)
    {
        int blocks = (n + BlockElements - 1) / BlockElements;
        Parallel.For(0, blocks, b =>
        {
            int i0 = b * BlockElements;
            int len = Math.Min(BlockElements, n - i0);
            if (dtype == DType.F32)
            {
                Generate(key, scale, offset, start + i0, MemoryMarshal.Cast<byte, float>(dst.AsSpan(i0 * 4, len * 4)));
                return;
            }
            // 16-bit: generate float32 in small pieces on the stack, then round.
            Span<float> tmp = stackalloc float[4096];
            for (int j = 0; j < len; j += tmp.Length)
            {
                int m = Math.Min(tmp.Length, len - j);
                var f = tmp[..m];
                Generate(key, scale, offset, start + i0 + j, f);
                var bytes = dst.AsSpan((i0 + j) * 2, m * 2);
                if (dtype == DType.BF16) FiniteToBF16(f, MemoryMarshal.Cast<byte, ushort>(bytes));
                else FloatConvert.F32ToF16(f, MemoryMarshal.Cast<byte, Half>(bytes));
            }
        });
    }

    /// <summary>Groups tensors, in order, into shards of at most <paramref name="maxBytes"/> (a bigger tensor gets a shard of its own).</summary>
    static List<List<(string Name, int[] Shape)>> SplitIntoShards(IReadOnlyList<(string Name, int[] Shape)> tensors, DType dtype, long maxBytes)
    {
        var shards = new List<List<(string, int[])>> { new() };
        long bytes = 0;
        foreach (var t in tensors)
        {
            long size = Tensor.ElementCount(t.Shape) * dtype.Size();
            if (bytes > 0 && bytes + size > maxBytes)
            {
                shards.Add(new());
                bytes = 0;
            }
            shards[^1].Add(t);
            bytes += size;
        }
        return shards;
    }

    /// <summary>
    /// Deletes weight files an earlier synthetic write may have left, so the folder holds exactly one checkpoint.
    /// A folder whose config.json was not written here (a real model) is never touched.
    /// </summary>
    static void RemoveOldWeights(string dir)
    {
        string config = Path.Combine(dir, "config.json");
        bool hasModel = File.Exists(config) || File.Exists(Path.Combine(dir, CheckpointFolder.SingleFileName))
                        || File.Exists(Path.Combine(dir, CheckpointFolder.IndexFileName));
        if (hasModel && !(File.Exists(config) && File.ReadAllText(config).Contains("\"featurelens_synthetic_seed\"", StringComparison.Ordinal)))
            throw new IOException($"{dir} already holds a model that SyntheticModel did not write; refusing to overwrite it (choose an empty or new folder)");
        foreach (var f in Directory.GetFiles(dir, "model*.safetensors"))
        {
            string name = Path.GetFileName(f);
            if (name == CheckpointFolder.SingleFileName || System.Text.RegularExpressions.Regex.IsMatch(name, @"^model-\d+-of-\d+\.safetensors$"))
                File.Delete(f);
        }
        File.Delete(Path.Combine(dir, CheckpointFolder.IndexFileName));
    }

    static string TorchDtype(DType t) => t switch { DType.F32 => "float32", DType.BF16 => "bfloat16", _ => "float16" };

    /// <summary>A float32 value as the shortest decimal that reads back to it (1e-5f → 1E-05, not 9.99999974737875E-06).</summary>
    static double Decimal(float f) => double.Parse(f.ToString("R", System.Globalization.CultureInfo.InvariantCulture), System.Globalization.CultureInfo.InvariantCulture);

    /// <summary>
    /// config.json's model_type for <paramref name="c"/>: its <see cref="ModelConfig.ModelType"/>, or "gpt2" / "llama"
    /// for a GPT-2 / Llama config that names none. A model_type that does not belong to the architecture is an error.
    /// </summary>
    static string Family(ModelConfig c)
    {
        string type = c.ModelType.Length > 0 ? c.ModelType : c.Architecture switch
        {
            Architecture.Gpt2 => "gpt2",
            Architecture.Llama => "llama",
            Architecture.Gemma2 => "gemma2",
            _ => "gpt_neox",
        };
        var arch = type switch
        {
            "gpt2" => Architecture.Gpt2,
            "llama" or "mistral" or "qwen2" => Architecture.Llama,
            "gemma2" => Architecture.Gemma2,
            "gpt_neox" => Architecture.NeoX,
            _ => throw new ArgumentException($"model_type '{type}' cannot be written; synthetic models are gpt2, llama, mistral, qwen2, gemma2 or gpt_neox", nameof(c)),
        };
        if (arch != c.Architecture)
            throw new ArgumentException($"model_type '{type}' is a {arch} model, but the config's architecture is {c.Architecture}", nameof(c));
        return type;
    }

    /// <summary>
    /// config.json as the model's Hugging Face repository has it: the field names and constant fields transformers
    /// writes for the model_type (<see cref="Family"/>), values from <paramref name="c"/>, torch_dtype from
    /// <paramref name="dtype"/>, plus "featurelens_synthetic_seed". A config that config.json cannot express for its
    /// family (an untied GPT-2, a tied Pythia, Gemma 2 windows on odd layers, ...) is an ArgumentException naming the field.
    /// </summary>
    public static byte[] ConfigJson(ModelConfig c, DType dtype, int seed)
    {
        ArgumentNullException.ThrowIfNull(c);
        string family = Family(c);
        void Need(bool ok, string message)
        {
            if (!ok) throw new ArgumentException($"{family} config.json: {message}", nameof(c));
        }
        using var ms = new MemoryStream();
        using (var w = new Utf8JsonWriter(ms, new JsonWriterOptions { Indented = true }))
        {
            w.WriteStartObject();
            void Architectures(string name)
            {
                w.WriteStartArray("architectures");
                w.WriteStringValue(name);
                w.WriteEndArray();
            }
            void Window(string field, int window)
            {
                if (window > 0) w.WriteNumber(field, window); else w.WriteNull(field);
            }
            void Common(string act)
            {
                w.WriteString("hidden_act", act);
                w.WriteNumber("hidden_size", c.DModel);
                w.WriteNumber("initializer_range", 0.02);
                w.WriteNumber("intermediate_size", c.DMlp);
                w.WriteNumber("max_position_embeddings", c.NCtx);
                w.WriteString("model_type", family);
                w.WriteNumber("num_attention_heads", c.NHeads);
                w.WriteNumber("num_hidden_layers", c.NLayers);
            }
            int[] windows = [.. Enumerable.Range(0, c.NLayers).Select(c.WindowOf)];
            switch (family)
            {
                case "gpt2":
                    Need(c.TiedEmbeddings, "GPT-2 has no separate lm_head: TiedEmbeddings must be true");
                    Need(windows.All(x => x == 0), "GPT-2 has no sliding window");
                    Architectures("GPT2LMHeadModel");
                    w.WriteString("activation_function", c.Activation);
                    w.WriteNumber("n_embd", c.DModel);
                    w.WriteNumber("n_layer", c.NLayers);
                    w.WriteNumber("n_head", c.NHeads);
                    if (c.DMlp == 4 * c.DModel) w.WriteNull("n_inner"); else w.WriteNumber("n_inner", c.DMlp);
                    w.WriteNumber("n_positions", c.NCtx);
                    w.WriteNumber("n_ctx", c.NCtx);
                    w.WriteNumber("vocab_size", c.VocabSize);
                    w.WriteNumber("layer_norm_epsilon", Decimal(c.NormEps));
                    w.WriteNumber("bos_token_id", c.BosTokenId ?? c.VocabSize - 1);
                    w.WriteNumber("eos_token_id", c.EosTokenId ?? c.VocabSize - 1);
                    w.WriteBoolean("tie_word_embeddings", true);
                    w.WriteNumber("initializer_range", 0.02);
                    break;
                case "llama":
                    Need(windows.All(x => x == 0), "Llama has no sliding window (use model_type mistral or qwen2)");
                    Architectures("LlamaForCausalLM");
                    w.WriteBoolean("attention_bias", false);
                    w.WriteNumber("attention_dropout", 0.0);
                    w.WriteNumber("bos_token_id", c.BosTokenId ?? 1);
                    w.WriteNumber("eos_token_id", c.EosTokenId ?? 2);
                    w.WriteNumber("head_dim", c.DHead);
                    Common(c.Activation);
                    w.WriteBoolean("mlp_bias", false);
                    w.WriteNumber("num_key_value_heads", c.NKvHeads);
                    w.WriteNumber("pretraining_tp", 1);
                    w.WriteNumber("rms_norm_eps", Decimal(c.NormEps));
                    WriteRopeScaling(w, c.RopeScaling);
                    w.WriteNumber("rope_theta", Decimal(c.RopeTheta));
                    w.WriteBoolean("tie_word_embeddings", c.TiedEmbeddings);
                    w.WriteString("transformers_version", "4.45.0.dev0");
                    break;
                case "mistral":
                    Need(windows.All(x => x == windows[0]), $"Mistral has one sliding_window for every layer (got [{string.Join(",", windows)}])");
                    Architectures("MistralForCausalLM");
                    w.WriteNumber("bos_token_id", c.BosTokenId ?? 1);
                    w.WriteNumber("eos_token_id", c.EosTokenId ?? 2);
                    if (c.DHead * c.NHeads != c.DModel) w.WriteNumber("head_dim", c.DHead);
                    Common(c.Activation);
                    w.WriteNumber("num_key_value_heads", c.NKvHeads);
                    w.WriteNumber("rms_norm_eps", Decimal(c.NormEps));
                    WriteRopeScalingIfAny(w, c.RopeScaling);
                    w.WriteNumber("rope_theta", Decimal(c.RopeTheta));
                    Window("sliding_window", windows[0]);
                    w.WriteBoolean("tie_word_embeddings", c.TiedEmbeddings);
                    w.WriteString("transformers_version", "4.34.0.dev0");
                    break;
                case "qwen2":
                {
                    // Qwen 2: layers ≥ max_window_layers slide when use_sliding_window is true.
                    int first = Array.FindIndex(windows, x => x > 0);
                    bool sliding = first >= 0;
                    Need(!sliding || (windows.Skip(first).All(x => x == windows[first]) && windows.Take(first).All(x => x == 0)),
                        $"Qwen 2 slides the same window on every layer from max_window_layers on (got [{string.Join(",", windows)}])");
                    Need(c.DHead * c.NHeads == c.DModel, "Qwen 2's head_dim is hidden_size / num_attention_heads");
                    Architectures("Qwen2ForCausalLM");
                    w.WriteNumber("attention_dropout", 0.0);
                    w.WriteNumber("bos_token_id", c.BosTokenId ?? 151643);
                    w.WriteNumber("eos_token_id", c.EosTokenId ?? 151643);
                    Common(c.Activation);
                    // Without sliding, the real files carry sliding_window = max_position_embeddings and max_window_layers = num_hidden_layers.
                    w.WriteNumber("max_window_layers", sliding ? first : c.NLayers);
                    w.WriteNumber("num_key_value_heads", c.NKvHeads);
                    w.WriteNumber("rms_norm_eps", Decimal(c.NormEps));
                    WriteRopeScalingIfAny(w, c.RopeScaling);
                    w.WriteNumber("rope_theta", Decimal(c.RopeTheta));
                    w.WriteNumber("sliding_window", sliding ? windows[first] : c.NCtx);
                    w.WriteBoolean("tie_word_embeddings", c.TiedEmbeddings);
                    w.WriteString("transformers_version", "4.40.1");
                    w.WriteBoolean("use_mrope", false);
                    w.WriteBoolean("use_sliding_window", sliding);
                    break;
                }
                case "gemma2":
                {
                    Need(c.TiedEmbeddings, "Gemma 2 ties its unembedding to embed_tokens: TiedEmbeddings must be true");
                    Need(c.Activation == "gelu_new", $"Gemma 2's MLP is GeGLU with gelu_pytorch_tanh (Activation \"gelu_new\"), not \"{c.Activation}\"");
                    Need(c.EmbeddingScale == MathF.Sqrt(c.DModel), $"Gemma 2 scales embeddings by sqrt(hidden_size) = {MathF.Sqrt(c.DModel)} (got {c.EmbeddingScale})");
                    Need(c.QueryPreAttnScalar is not null, "query_pre_attn_scalar is required");
                    int window = windows.Length > 0 ? windows[0] : 0;
                    Need(windows.Select((x, l) => x == (l % 2 == 0 ? window : 0)).All(ok => ok),
                        $"Gemma 2 slides one window on even layers only (got [{string.Join(",", windows)}])");
                    Architectures("Gemma2ForCausalLM");
                    w.WriteBoolean("attention_bias", false);
                    w.WriteNumber("attention_dropout", 0.0);
                    if (c.AttnSoftcap > 0) w.WriteNumber("attn_logit_softcapping", Decimal(c.AttnSoftcap)); else w.WriteNull("attn_logit_softcapping");
                    w.WriteNumber("bos_token_id", c.BosTokenId ?? 2);
                    w.WriteString("cache_implementation", "hybrid");
                    w.WriteNumber("eos_token_id", c.EosTokenId ?? 1);
                    if (c.FinalSoftcap > 0) w.WriteNumber("final_logit_softcapping", Decimal(c.FinalSoftcap)); else w.WriteNull("final_logit_softcapping");
                    w.WriteNumber("head_dim", c.DHead);
                    Common("gelu_pytorch_tanh");
                    w.WriteString("hidden_activation", "gelu_pytorch_tanh");
                    w.WriteNumber("num_key_value_heads", c.NKvHeads);
                    w.WriteNumber("pad_token_id", 0);
                    w.WriteNumber("query_pre_attn_scalar", Decimal(c.QueryPreAttnScalar!.Value));
                    w.WriteNumber("rms_norm_eps", Decimal(c.NormEps));
                    w.WriteNumber("rope_theta", Decimal(c.RopeTheta));
                    Window("sliding_window", window);
                    w.WriteString("transformers_version", "4.42.4");
                    break;
                }
                default: // gpt_neox
                {
                    Need(!c.TiedEmbeddings, "GPT-NeoX has its own embed_out: TiedEmbeddings must be false");
                    Need(windows.All(x => x == 0), "GPT-NeoX has no sliding window");
                    Need(c.NKvHeads == c.NHeads, "GPT-NeoX has no grouped-query attention (NKvHeads must equal NHeads)");
                    Need(c.DHead * c.NHeads == c.DModel, "GPT-NeoX's head size is hidden_size / num_attention_heads");
                    double pct = (double)c.RotaryDim / c.DHead;
                    Need((int)(c.DHead * pct) == c.RotaryDim, $"rotary dims {c.RotaryDim} of {c.DHead} cannot be written as rotary_pct");
                    Architectures("GPTNeoXForCausalLM");
                    w.WriteNumber("bos_token_id", c.BosTokenId ?? 0);
                    w.WriteNumber("eos_token_id", c.EosTokenId ?? 0);
                    Common(c.Activation);
                    w.WriteNumber("layer_norm_eps", Decimal(c.NormEps));
                    WriteRopeScalingIfAny(w, c.RopeScaling);
                    w.WriteNumber("rotary_emb_base", Decimal(c.RopeTheta));
                    w.WriteNumber("rotary_pct", pct);
                    w.WriteBoolean("tie_word_embeddings", false);
                    w.WriteString("transformers_version", "4.24.0");
                    w.WriteBoolean("use_parallel_residual", c.ParallelAttnMlp);
                    break;
                }
            }
            if (family != "gpt2") w.WriteBoolean("use_cache", true);
            if (family != "gpt2") w.WriteNumber("vocab_size", c.VocabSize);
            w.WriteString("torch_dtype", TorchDtype(dtype));
            w.WriteNumber("featurelens_synthetic_seed", seed);
            w.WriteEndObject();
        }
        return ms.ToArray();
    }

    static void WriteRopeScalingIfAny(Utf8JsonWriter w, RopeScaling? r)
    {
        if (r is not null) WriteRopeScaling(w, r);
    }

    /// <summary>rope_scaling as transformers writes it (keys in alphabetical order, "rope_type"), or null.</summary>
    static void WriteRopeScaling(Utf8JsonWriter w, RopeScaling? r)
    {
        if (r is null)
        {
            w.WriteNull("rope_scaling");
            return;
        }
        w.WriteStartObject("rope_scaling");
        w.WriteNumber("factor", r.Factor);
        if (r.Type == "llama3")
        {
            w.WriteNumber("high_freq_factor", r.HighFreqFactor);
            w.WriteNumber("low_freq_factor", r.LowFreqFactor);
        }
        if (r.Type is "llama3" or "dynamic") w.WriteNumber("original_max_position_embeddings", r.OriginalMaxPositions);
        w.WriteString("rope_type", r.Type);
        w.WriteEndObject();
    }

    /// <summary>Writes <paramref name="bytes"/> to a temporary file beside <paramref name="path"/>, then moves it into place.</summary>
    static void WriteAtomically(string path, ReadOnlySpan<byte> bytes)
    {
        string temp = Path.Combine(Path.GetDirectoryName(path)!, $".{Path.GetFileName(path)}.{Environment.ProcessId}.{Guid.NewGuid():N}.tmp");
        try
        {
            File.WriteAllBytes(temp, bytes.ToArray());
            File.Move(temp, path, overwrite: true);
        }
        catch
        {
            File.Delete(temp);
            throw;
        }
    }

    /// <summary>The tokenizer files copied by <see cref="CopyTokenizer"/> when present (tokenizer.json is required).</summary>
    public static readonly IReadOnlyList<string> TokenizerFiles = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"];

    /// <summary>
    /// Copies a real Hugging Face tokenizer (tokenizer.json, and tokenizer_config.json / special_tokens_map.json when they
    /// exist) from <paramref name="from"/> — a folder, or the tokenizer.json file itself — into <paramref name="outDir"/>.
    /// Returns the names copied. A source without tokenizer.json is an error naming the path.
    /// </summary>
    public static IReadOnlyList<string> CopyTokenizer(string from, string outDir)
    {
        ArgumentNullException.ThrowIfNull(from);
        string full = Path.GetFullPath(from);
        string dir = File.Exists(full) && Path.GetFileName(full) == "tokenizer.json" ? Path.GetDirectoryName(full)! : full;
        if (!File.Exists(Path.Combine(dir, "tokenizer.json")))
            throw new FileNotFoundException($"--tokenizer: {full} is not a tokenizer.json file or a folder holding one", Path.Combine(dir, "tokenizer.json"));
        outDir = Path.GetFullPath(outDir);
        Directory.CreateDirectory(outDir);
        var copied = new List<string>();
        foreach (string name in TokenizerFiles)
        {
            string src = Path.Combine(dir, name);
            if (!File.Exists(src)) continue;
            string temp = Path.Combine(outDir, $".{name}.{Environment.ProcessId}.{Guid.NewGuid():N}.tmp");
            try
            {
                File.Copy(src, temp);
                File.Move(temp, Path.Combine(outDir, name), overwrite: true);
            }
            catch
            {
                File.Delete(temp);
                throw;
            }
            copied.Add(name);
        }
        return copied;
    }

    static void WriteIndex(string path, long totalSize, SortedDictionary<string, string> weightMap)
    {
        using var ms = new MemoryStream();
        using (var w = new Utf8JsonWriter(ms, new JsonWriterOptions { Indented = true }))
        {
            w.WriteStartObject();
            w.WriteStartObject("metadata");
            w.WriteNumber("total_size", totalSize);
            w.WriteEndObject();
            w.WriteStartObject("weight_map");
            foreach (var (name, file) in weightMap) w.WriteString(name, file);
            w.WriteEndObject();
            w.WriteEndObject();
        }
        File.WriteAllBytes(path, ms.ToArray());
    }
}
