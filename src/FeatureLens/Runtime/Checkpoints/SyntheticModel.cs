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
/// with deterministic random weights, so models of real shapes (GPT-2 small, Llama-2-7B) can be run,
/// benchmarked and tested offline. Every value is a pure function of (seed, tensor name, element index)
/// — see <see cref="Value"/> — so the folder is reproducible and can be generated chunk by chunk on
/// several threads with bounded memory (a 13.5 GB bf16 Llama-7B streams through two 8 MB buffers).
/// Matrices and embeddings ≈ N(0, 0.02²); norm weights ≈ 1 + N(0, 0.05²); biases ≈ N(0, 0.01²).
/// </summary>
public static class SyntheticModel
{
    /// <summary>Default largest shard; a model with more bytes of weights is split into model-0000i-of-0000n.safetensors files.</summary>
    public const long MaxShardBytes = 2_000_000_000;

    /// <summary>Preset names accepted by <see cref="Preset"/>.</summary>
    public static readonly IReadOnlyList<string> PresetNames = ["tiny", "gpt2-small", "llama-7b"];

    const int ChunkElements = 1 << 21;  // elements generated per buffer (8 MB of float32, 4 MB of bf16)
    const int BlockElements = 1 << 16;  // elements per parallel work item inside a chunk

    /// <summary>The hyper-parameters of a preset: "tiny" (either architecture), "gpt2-small" (GPT-2) or "llama-7b" (Llama).</summary>
    public static ModelConfig Preset(Architecture arch, string preset) => (arch, preset) switch
    {
        (Architecture.Gpt2, "tiny") => new ModelConfig
        {
            Architecture = Architecture.Gpt2, DModel = 64, NLayers = 2, NHeads = 4, NKvHeads = 4, DMlp = 256,
            VocabSize = 512, NCtx = 256, NormEps = 1e-5f, TiedEmbeddings = true, Activation = "gelu_new",
            BosTokenId = 511, EosTokenId = 511, Source = "preset tiny",
        },
        (Architecture.Gpt2, "gpt2-small") => new ModelConfig
        {
            Architecture = Architecture.Gpt2, DModel = 768, NLayers = 12, NHeads = 12, NKvHeads = 12, DMlp = 3072,
            VocabSize = 50257, NCtx = 1024, NormEps = 1e-5f, TiedEmbeddings = true, Activation = "gelu_new",
            BosTokenId = 50256, EosTokenId = 50256, Source = "preset gpt2-small",
        },
        (Architecture.Llama, "tiny") => new ModelConfig
        {
            Architecture = Architecture.Llama, DModel = 64, NLayers = 2, NHeads = 4, NKvHeads = 2, DMlp = 172,
            VocabSize = 512, NCtx = 256, NormEps = 1e-5f, RopeTheta = 10000f, Rope = RopeLayout.RotateHalf,
            TiedEmbeddings = false, Activation = "silu", BosTokenId = 1, EosTokenId = 2, Source = "preset tiny",
        },
        (Architecture.Llama, "llama-7b") => new ModelConfig
        {
            Architecture = Architecture.Llama, DModel = 4096, NLayers = 32, NHeads = 32, NKvHeads = 32, DMlp = 11008,
            VocabSize = 32000, NCtx = 4096, NormEps = 1e-5f, RopeTheta = 10000f, Rope = RopeLayout.RotateHalf,
            TiedEmbeddings = false, Activation = "silu", BosTokenId = 1, EosTokenId = 2, Source = "preset llama-7b",
        },
        _ => throw new ArgumentException(
            $"no synthetic preset '{preset}' for {arch}; available: tiny (GPT-2, Llama), gpt2-small (GPT-2), llama-7b (Llama)", nameof(preset)),
    };

    /// <summary>Writes a preset model into <paramref name="outDir"/> (see <see cref="Preset"/>).</summary>
    public static void Write(string outDir, Architecture arch, string preset, DType dtype, int seed, IProgress<double>? progress = null) =>
        Write(outDir, Preset(arch, preset), dtype, seed, progress);

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
        if (config.Architecture == Architecture.Gpt2 && !config.TiedEmbeddings)
            throw new ArgumentException("a GPT-2 config must have TiedEmbeddings = true (Hugging Face GPT-2 has no separate lm_head)", nameof(config));

        outDir = Path.GetFullPath(outDir);
        Directory.CreateDirectory(outDir);
        RemoveOldWeights(outDir);
        WriteConfigJson(Path.Combine(outDir, "config.json"), config, dtype, seed);

        var tensors = TensorShapes(config);
        long total = tensors.Sum(t => Tensor.ElementCount(t.Shape) * dtype.Size());
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
                writer.AddStreamed(name, dtype, shape, stream => StreamTensor(stream, seed, name, Tensor.ElementCount(shape), dtype, Advance));
                weightMap[name] = file;
            }
            writer.Write(Path.Combine(outDir, file), new Dictionary<string, string> { ["format"] = "pt" });
        }
        if (shards.Count > 1) WriteIndex(Path.Combine(outDir, CheckpointFolder.IndexFileName), total, weightMap);
    }

    /// <summary>The Hugging Face tensor names and shapes of a model, in layer order.</summary>
    public static IReadOnlyList<(string Name, int[] Shape)> TensorShapes(ModelConfig c)
    {
        var list = new List<(string, int[])>();
        int d = c.DModel, h = c.DMlp;
        if (c.Architecture == Architecture.Gpt2)
        {
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
        }
        else
        {
            int kv = c.DHead * c.NKvHeads;
            list.Add(("model.embed_tokens.weight", [c.VocabSize, d]));
            for (int i = 0; i < c.NLayers; i++)
            {
                string p = $"model.layers.{i}.";
                list.Add((p + "input_layernorm.weight", [d]));
                list.Add((p + "self_attn.q_proj.weight", [d, d])); // Linear: [out, in]
                list.Add((p + "self_attn.k_proj.weight", [kv, d]));
                list.Add((p + "self_attn.v_proj.weight", [kv, d]));
                list.Add((p + "self_attn.o_proj.weight", [d, d]));
                list.Add((p + "post_attention_layernorm.weight", [d]));
                list.Add((p + "mlp.gate_proj.weight", [h, d]));
                list.Add((p + "mlp.up_proj.weight", [h, d]));
                list.Add((p + "mlp.down_proj.weight", [d, h]));
            }
            list.Add(("model.norm.weight", [d]));
            if (!c.TiedEmbeddings) list.Add(("lm_head.weight", [c.VocabSize, d]));
        }
        return list;
    }

    /// <summary>
    /// Element <paramref name="index"/> of tensor <paramref name="name"/> as float32 before rounding to the file's dtype.
    /// Names ending in "bias" are biases, names containing "norm" or "ln_" are norm weights, the rest matrices.
    /// </summary>
    public static float Value(int seed, string name, long index)
    {
        var (key, scale, offset) = Distribution(seed, name);
        return (float)NoiseSum(key, index) * scale + offset;
    }

    /// <summary>
    /// The hash key of a tensor and the affine map from <see cref="NoiseSum(ulong, long)"/> to its values:
    /// value = sum·scale + offset = mean + std·(sum − 131070)·√3/65536.
    /// </summary>
    static (ulong key, float scale, float offset) Distribution(int seed, string name)
    {
        ulong key = Mix((ulong)(uint)seed * 0x9E3779B97F4A7C15UL ^ Fnv1a(name));
        float mean, std;
        if (name.EndsWith("bias", StringComparison.Ordinal)) (mean, std) = (0f, 0.01f);
        else if (name.Contains("norm", StringComparison.Ordinal) || name.Contains("ln_", StringComparison.Ordinal)) (mean, std) = (1f, 0.05f);
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
    /// computes exactly what <see cref="Value"/> does, 8 elements at a time (AVX2 or better; the job is disk-bound, so 256 bits suffice).
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
    static void StreamTensor(Stream stream, int seed, string name, long count, DType dtype, Action<long> advance)
    {
        var (key, scale, offset) = Distribution(seed, name);
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

    /// <summary>config.json with the field names Hugging Face transformers uses for the architecture.</summary>
    static void WriteConfigJson(string path, ModelConfig c, DType dtype, int seed)
    {
        using var ms = new MemoryStream();
        using (var w = new Utf8JsonWriter(ms, new JsonWriterOptions { Indented = true }))
        {
            w.WriteStartObject();
            if (c.Architecture == Architecture.Gpt2)
            {
                w.WriteString("model_type", "gpt2");
                w.WriteStartArray("architectures"); w.WriteStringValue("GPT2LMHeadModel"); w.WriteEndArray();
                w.WriteString("activation_function", "gelu_new");
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
            }
            else
            {
                w.WriteString("model_type", "llama");
                w.WriteStartArray("architectures"); w.WriteStringValue("LlamaForCausalLM"); w.WriteEndArray();
                w.WriteString("hidden_act", "silu");
                w.WriteNumber("hidden_size", c.DModel);
                w.WriteNumber("intermediate_size", c.DMlp);
                w.WriteNumber("num_hidden_layers", c.NLayers);
                w.WriteNumber("num_attention_heads", c.NHeads);
                w.WriteNumber("num_key_value_heads", c.NKvHeads);
                w.WriteNumber("vocab_size", c.VocabSize);
                w.WriteNumber("max_position_embeddings", c.NCtx);
                w.WriteNumber("rms_norm_eps", Decimal(c.NormEps));
                w.WriteNumber("rope_theta", Decimal(c.RopeTheta));
                w.WriteNull("rope_scaling");
                w.WriteBoolean("attention_bias", false);
                w.WriteBoolean("tie_word_embeddings", c.TiedEmbeddings);
                w.WriteNumber("bos_token_id", c.BosTokenId ?? 1);
                w.WriteNumber("eos_token_id", c.EosTokenId ?? 2);
            }
            w.WriteNumber("initializer_range", 0.02);
            w.WriteString("torch_dtype", TorchDtype(dtype));
            w.WriteNumber("featurelens_synthetic_seed", seed);
            w.WriteEndObject();
        }
        File.WriteAllBytes(path, ms.ToArray());
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
