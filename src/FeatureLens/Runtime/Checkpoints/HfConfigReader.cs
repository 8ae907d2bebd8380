using System.Text.Json;
using FeatureLens.Runtime.Models;

namespace FeatureLens.Runtime.Checkpoints;

/// <summary>
/// Reads a Hugging Face <c>config.json</c> into a <see cref="ModelConfig"/>. Supported model_type values: gpt2,
/// llama (2 and 3.x, rope_scaling llama3/linear/dynamic), mistral, qwen2, gemma2, gpt_neox. Settings FeatureLens
/// cannot run exactly (an unknown activation or rope type, a soft-capped model under an attention implementation
/// that ignores the cap) are refused by name rather than silently approximated.
/// </summary>
public static class HfConfigReader
{
    /// <summary>The model_type values this reader understands.</summary>
    public static readonly IReadOnlyList<string> SupportedModelTypes = ["gpt2", "llama", "mistral", "qwen2", "gemma2", "gpt_neox"];

    /// <summary>Parses and validates <paramref name="configJsonPath"/>.</summary>
    public static ModelConfig Read(string configJsonPath)
    {
        string path = Path.GetFullPath(configJsonPath);
        if (!File.Exists(path)) throw new FileNotFoundException($"model config not found: {path}", path);
        JsonDocument doc;
        try { doc = JsonDocument.Parse(File.ReadAllBytes(path), new JsonDocumentOptions { AllowTrailingCommas = true }); }
        catch (JsonException e) { throw new FormatException($"{path}: not valid JSON ({e.Message})", e); }
        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object)
                throw new FormatException($"{path}: expected a JSON object, found {doc.RootElement.ValueKind}");
            var f = new Fields(path, doc.RootElement);
            string family = Family(f);
            ModelConfig config = family switch
            {
                "gpt2" => ReadGpt2(f),
                "gemma2" => ReadGemma2(f),
                "gpt_neox" => ReadNeoX(f),
                _ => ReadLlama(f, family),
            };
            config = config with { ModelType = family };
            config = config with { Source = path };
            config.Validate();
            return config;
        }
    }

    /// <summary>"gpt2" or "llama", from model_type (or, when that is absent, from architectures).</summary>
    static string Family(Fields f)
    {
        string? modelType = f.OptString("model_type");
        if (modelType is not null)
        {
            if (SupportedModelTypes.Contains(modelType)) return modelType;
            throw new FormatException(
                $"{f.Path}: field 'model_type' is \"{modelType}\"; supported values are {string.Join(", ", SupportedModelTypes.Select(s => $"\"{s}\""))}");
        }
        var archs = f.OptStringArray("architectures");
        if (archs.Contains("GPT2LMHeadModel") || archs.Contains("GPT2Model")) return "gpt2";
        if (archs.Contains("LlamaForCausalLM") || archs.Contains("LlamaModel")) return "llama";
        if (archs.Contains("MistralForCausalLM")) return "mistral";
        if (archs.Contains("Qwen2ForCausalLM")) return "qwen2";
        if (archs.Contains("Gemma2ForCausalLM")) return "gemma2";
        if (archs.Contains("GPTNeoXForCausalLM")) return "gpt_neox";
        throw new FormatException(
            $"{f.Path}: field 'model_type' is missing and 'architectures' [{string.Join(", ", archs)}] names no supported model; supported model_type values are {string.Join(", ", SupportedModelTypes.Select(s => $"\"{s}\""))}");
    }

    static ModelConfig ReadGpt2(Fields f)
    {
        int d = f.Int("n_embd");
        int heads = f.Int("n_head");
        string act = Activation(f, "activation_function", "gelu_new");
        int nCtx = f.OptInt("n_positions") ?? f.OptInt("n_ctx")
                   ?? throw new FormatException($"{f.Path}: required field 'n_positions' (or 'n_ctx') is missing");
        return new ModelConfig
        {
            Architecture = Architecture.Gpt2,
            DModel = d,
            NLayers = f.Int("n_layer"),
            NHeads = heads,
            NKvHeads = heads,
            DMlp = f.OptInt("n_inner") ?? 4 * d,
            VocabSize = f.Int("vocab_size"),
            NCtx = nCtx,
            NormEps = (float)(f.OptDouble("layer_norm_epsilon") ?? 1e-5),
            Rope = RopeLayout.None,
            TiedEmbeddings = true,
            Activation = act,
            BosTokenId = f.OptTokenId("bos_token_id"),
            EosTokenId = f.OptTokenId("eos_token_id"),
        };
    }

    /// <summary>config.json's activation name → the canonical one <see cref="ModelConfig.Activation"/> runs (tanh-approximate GELUs share one formula).</summary>
    static string Activation(Fields f, string field, string fallback)
    {
        string act = f.OptString(field) ?? fallback;
        return act switch
        {
            "gelu_new" or "gelu_pytorch_tanh" or "gelu_fast" or "gelu_python_tanh" => "gelu_new",
            "gelu" or "gelu_python" => "gelu",
            "silu" or "swish" => "silu",
            "relu" => "relu",
            "quick_gelu" => "quick_gelu",
            _ => throw new NotSupportedException($"{f.Path}: field '{field}' is \"{act}\"; supported: gelu_new, gelu_pytorch_tanh, gelu_fast, gelu, silu, swish, relu, quick_gelu"),
        };
    }

    /// <summary>head_dim when config.json gives it (Llama 3.x, Qwen, Gemma), else hidden_size / num_attention_heads.</summary>
    static int? HeadDim(Fields f, int d, int heads, bool required)
    {
        int? hd = f.OptInt("head_dim");
        if (hd is null && required) throw new FormatException($"{f.Path}: required field 'head_dim' is missing ({f.OptString("model_type")} heads are not hidden_size / num_attention_heads wide)");
        if (hd is int h && h <= 0) throw new FormatException($"{f.Path}: field 'head_dim' must be positive, found {h}");
        if (hd is null && heads > 0 && d % heads != 0)
            throw new FormatException($"{f.Path}: field 'head_dim' is missing and hidden_size {d} is not divisible by num_attention_heads {heads}");
        return hd;
    }

    /// <summary>rope_scaling: null, or {"rope_type"|"type": "linear"|"dynamic"|"llama3", "factor", …}; anything else is refused by name.</summary>
    static RopeScaling? ReadRopeScaling(Fields f, int maxPositions)
    {
        if (f.IsNullOrAbsent("rope_scaling")) return null;
        var o = f.Object("rope_scaling");
        string? type = null;
        foreach (string key in new[] { "rope_type", "type" })
            if (o.TryGetProperty(key, out var t) && t.ValueKind == JsonValueKind.String) { type = t.GetString(); break; }
        double Num(string key, double? fallback)
        {
            if (o.TryGetProperty(key, out var v) && v.ValueKind == JsonValueKind.Number) return v.GetDouble();
            if (o.TryGetProperty(key, out var bad) && bad.ValueKind != JsonValueKind.Null)
                throw new FormatException($"{f.Path}: field 'rope_scaling.{key}' must be a number, found {bad.GetRawText()}");
            return fallback ?? throw new FormatException($"{f.Path}: field 'rope_scaling.{key}' is missing (rope_scaling type \"{type}\" needs it)");
        }
        switch (type)
        {
            case "default": return null;
            case "linear":
            case "dynamic":
            {
                double factor = Num("factor", null);
                if (!(factor >= 1)) throw new FormatException($"{f.Path}: field 'rope_scaling.factor' must be ≥ 1, found {factor}");
                return new RopeScaling(type, factor, OriginalMaxPositions: (int)Num("original_max_position_embeddings", maxPositions));
            }
            case "llama3":
            {
                double factor = Num("factor", null), low = Num("low_freq_factor", null), high = Num("high_freq_factor", null);
                int orig = (int)Num("original_max_position_embeddings", null);
                if (!(factor > 0) || !(low > 0) || !(high > low) || orig <= 0)
                    throw new FormatException($"{f.Path}: field 'rope_scaling' has factor {factor}, low_freq_factor {low}, high_freq_factor {high}, original_max_position_embeddings {orig}; expected positive values with high_freq_factor > low_freq_factor");
                return new RopeScaling("llama3", factor, low, high, orig);
            }
            default:
                throw new NotSupportedException($"{f.Path}: field 'rope_scaling' has type \"{type ?? "(missing)"}\"; supported rope_scaling types: linear, dynamic, llama3 (or null)");
        }
    }

    /// <summary>Positions a model may run: max_position_embeddings, times the factor under dynamic NTK scaling (which exists to go past it).</summary>
    static int Context(int maxPos, RopeScaling? scaling) =>
        scaling is { Type: "dynamic" } ? (int)Math.Min(int.MaxValue / 2, Math.Floor(maxPos * scaling.Factor)) : maxPos;

    /// <summary>The same window on every layer, or none.</summary>
    static int[] Windows(int layers, int? window) => window is int w && w > 0 ? Enumerable.Repeat(w, layers).ToArray() : [];

    static ModelConfig ReadLlama(Fields f, string family)
    {
        int d = f.Int("hidden_size");
        int heads = f.Int("num_attention_heads");
        int layers = f.Int("num_hidden_layers");
        string act = Activation(f, "hidden_act", "silu");
        if (f.OptBool("mlp_bias") == true)
            throw new NotSupportedException($"{f.Path}: field 'mlp_bias' is true; FeatureLens runs the Llama MLP without biases");
        int maxPos = f.Int("max_position_embeddings");
        int[] windows = [];
        if (family == "mistral") windows = Windows(layers, f.OptInt("sliding_window"));
        else if (family == "qwen2" && f.OptBool("use_sliding_window") == true)
        {
            int w = f.OptInt("sliding_window") ?? throw new FormatException($"{f.Path}: field 'sliding_window' is missing but use_sliding_window is true");
            int from = f.OptInt("max_window_layers") ?? layers;
            windows = Enumerable.Range(0, layers).Select(l => l >= from ? w : 0).ToArray();
            if (windows.All(x => x == 0)) windows = [];
        }
        else if (family == "llama" && !f.IsNullOrAbsent("sliding_window"))
            throw new NotSupportedException($"{f.Path}: field 'sliding_window' is set for model_type llama, which has no sliding-window attention (expected null or absent)");
        int? headDim = HeadDim(f, d, heads, required: false);
        var scaling = ReadRopeScaling(f, maxPos);
        return new ModelConfig
        {
            Architecture = Architecture.Llama,
            DModel = d,
            NLayers = layers,
            NHeads = heads,
            NKvHeads = f.OptInt("num_key_value_heads") ?? heads,
            DHead = headDim ?? d / heads,
            DMlp = f.Int("intermediate_size"),
            VocabSize = f.Int("vocab_size"),
            NCtx = Context(maxPos, scaling),
            NormEps = (float)(f.OptDouble("rms_norm_eps") ?? 1e-6),
            RopeTheta = (float)(f.OptDouble("rope_theta") ?? 10000.0),
            RopeScaling = scaling,
            Rope = RopeLayout.RotateHalf,
            LayerWindows = windows,
            TiedEmbeddings = f.OptBool("tie_word_embeddings") ?? false,
            Activation = act,
            BosTokenId = f.OptTokenId("bos_token_id") ?? (family == "llama" ? 1 : null),
            EosTokenId = f.OptTokenId("eos_token_id") ?? (family == "llama" ? 2 : null),
        };
    }

    static ModelConfig ReadGemma2(Fields f)
    {
        int d = f.Int("hidden_size");
        int heads = f.Int("num_attention_heads");
        int layers = f.Int("num_hidden_layers");
        int headDim = HeadDim(f, d, heads, required: true)!.Value;
        string act = Activation(f, f.IsNullOrAbsent("hidden_activation") ? "hidden_act" : "hidden_activation", "gelu_pytorch_tanh");
        double? softcap = f.OptDouble("attn_logit_softcapping");
        foreach (string field in new[] { "attn_implementation", "_attn_implementation" })
        {
            string? impl = f.OptString(field);
            if (softcap is > 0 && impl is not null && impl != "eager")
                throw new NotSupportedException($"{f.Path}: field '{field}' is \"{impl}\" but attn_logit_softcapping is {softcap}: Gemma 2's soft-capped attention is defined by \"eager\" attention ({impl} ignores or approximates the cap); set '{field}' to \"eager\" or remove it");
        }
        if (f.OptBool("attention_bias") == true)
            throw new NotSupportedException($"{f.Path}: field 'attention_bias' is true; Gemma 2 attention has no biases");
        int window = f.OptInt("sliding_window") ?? 4096;
        int maxPos = f.Int("max_position_embeddings");
        var scaling = ReadRopeScaling(f, maxPos);
        return new ModelConfig
        {
            Architecture = Architecture.Gemma2,
            DModel = d,
            NLayers = layers,
            NHeads = heads,
            NKvHeads = f.OptInt("num_key_value_heads") ?? heads,
            DHead = headDim,
            DMlp = f.Int("intermediate_size"),
            VocabSize = f.Int("vocab_size"),
            NCtx = Context(maxPos, scaling),
            NormEps = (float)(f.OptDouble("rms_norm_eps") ?? 1e-6),
            RopeTheta = (float)(f.OptDouble("rope_theta") ?? 10000.0),
            RopeScaling = scaling,
            Rope = RopeLayout.RotateHalf,
            // Hugging Face: layer i slides when i is even (is_sliding = not bool(layer_idx % 2))
            LayerWindows = window > 0 ? Enumerable.Range(0, layers).Select(l => l % 2 == 0 ? window : 0).ToArray() : [],
            TiedEmbeddings = f.OptBool("tie_word_embeddings") ?? true,
            EmbeddingScale = MathF.Sqrt(d),
            QueryPreAttnScalar = (float?)f.OptDouble("query_pre_attn_scalar") ?? headDim,
            AttnSoftcap = (float)(softcap ?? 0),
            FinalSoftcap = (float)(f.OptDouble("final_logit_softcapping") ?? 0),
            Activation = act,
            BosTokenId = f.OptTokenId("bos_token_id") ?? 2,
            EosTokenId = f.OptTokenId("eos_token_id") ?? 1,
        };
    }

    static ModelConfig ReadNeoX(Fields f)
    {
        int d = f.Int("hidden_size");
        int heads = f.Int("num_attention_heads");
        if (heads <= 0 || d % heads != 0) throw new FormatException($"{f.Path}: field 'num_attention_heads' must be positive and divide hidden_size {d} (got {heads})");
        int hs = d / heads;
        double pct = f.OptDouble("rotary_pct") ?? f.OptDouble("partial_rotary_factor") ?? 1.0;
        if (!(pct > 0 && pct <= 1)) throw new FormatException($"{f.Path}: field 'rotary_pct' must be in (0, 1], found {pct}");
        int rotary = (int)(hs * pct);
        if (rotary <= 0 || rotary % 2 != 0)
            throw new FormatException($"{f.Path}: field 'rotary_pct' {pct} gives {rotary} rotary dimensions of a {hs}-wide head; expected a positive even number");
        if (f.OptBool("attention_bias") == false)
            throw new NotSupportedException($"{f.Path}: field 'attention_bias' is false; FeatureLens runs GPT-NeoX attention with its biases");
        int maxPos = f.Int("max_position_embeddings");
        var scaling = ReadRopeScaling(f, maxPos);
        return new ModelConfig
        {
            Architecture = Architecture.NeoX,
            DModel = d,
            NLayers = f.Int("num_hidden_layers"),
            NHeads = heads,
            NKvHeads = heads,
            DMlp = f.Int("intermediate_size"),
            VocabSize = f.Int("vocab_size"),
            NCtx = Context(maxPos, scaling),
            NormEps = (float)(f.OptDouble("layer_norm_eps") ?? 1e-5),
            RopeTheta = (float)(f.OptDouble("rotary_emb_base") ?? f.OptDouble("rope_theta") ?? 10000.0),
            RopeScaling = scaling,
            Rope = RopeLayout.RotateHalf,
            RotaryDim = rotary,
            ParallelAttnMlp = f.OptBool("use_parallel_residual") ?? true,
            TiedEmbeddings = f.OptBool("tie_word_embeddings") ?? false,
            Activation = Activation(f, "hidden_act", "gelu"),
            BosTokenId = f.OptTokenId("bos_token_id"),
            EosTokenId = f.OptTokenId("eos_token_id"),
        };
    }

    /// <summary>Typed access to the fields of one config object; every error names the file and field.</summary>
    sealed class Fields(string path, JsonElement root)
    {
        public string Path => path;

        bool TryGet(string name, out JsonElement value) =>
            root.TryGetProperty(name, out value) && value.ValueKind != JsonValueKind.Null;

        public bool IsNullOrAbsent(string name) => !TryGet(name, out _);

        public string Raw(string name) => root.TryGetProperty(name, out var v) ? v.GetRawText() : "absent";

        public JsonElement Object(string name)
        {
            if (TryGet(name, out var v) && v.ValueKind == JsonValueKind.Object) return v;
            throw new FormatException($"{path}: field '{name}' must be an object, found {Raw(name)}");
        }

        public int Int(string name) =>
            OptInt(name) ?? throw new FormatException($"{path}: required field '{name}' is missing");

        public int? OptInt(string name)
        {
            if (!TryGet(name, out var v)) return null;
            if (v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out int i)) return i;
            // Some exporters write integral values as 768.0.
            if (v.ValueKind == JsonValueKind.Number && v.TryGetDouble(out double x) && x == Math.Floor(x) && x is >= int.MinValue and <= int.MaxValue)
                return (int)x;
            throw new FormatException($"{path}: field '{name}' must be a 32-bit integer, found {v.GetRawText()}");
        }

        public double? OptDouble(string name)
        {
            if (!TryGet(name, out var v)) return null;
            if (v.ValueKind == JsonValueKind.Number) return v.GetDouble();
            throw new FormatException($"{path}: field '{name}' must be a number, found {v.GetRawText()}");
        }

        public bool? OptBool(string name)
        {
            if (!TryGet(name, out var v)) return null;
            return v.ValueKind switch
            {
                JsonValueKind.True => true,
                JsonValueKind.False => false,
                _ => throw new FormatException($"{path}: field '{name}' must be true or false, found {v.GetRawText()}"),
            };
        }

        public string? OptString(string name)
        {
            if (!TryGet(name, out var v)) return null;
            if (v.ValueKind == JsonValueKind.String) return v.GetString();
            throw new FormatException($"{path}: field '{name}' must be a string, found {v.GetRawText()}");
        }

        public List<string> OptStringArray(string name)
        {
            if (!TryGet(name, out var v)) return [];
            if (v.ValueKind != JsonValueKind.Array)
                throw new FormatException($"{path}: field '{name}' must be an array of strings, found {v.GetRawText()}");
            return v.EnumerateArray().Where(e => e.ValueKind == JsonValueKind.String).Select(e => e.GetString()!).ToList();
        }

        /// <summary>A token id; a list (several end-of-sequence ids) yields its first element.</summary>
        public int? OptTokenId(string name)
        {
            if (!TryGet(name, out var v)) return null;
            if (v.ValueKind == JsonValueKind.Array)
            {
                foreach (var e in v.EnumerateArray())
                    if (e.ValueKind == JsonValueKind.Number && e.TryGetInt32(out int first)) return first;
                throw new FormatException($"{path}: field '{name}' must be a token id or a list of token ids, found {v.GetRawText()}");
            }
            return OptInt(name);
        }
    }
}
