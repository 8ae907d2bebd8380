using System.Text.Json;
using FeatureLens.Runtime.Models;

namespace FeatureLens.Runtime.Checkpoints;

/// <summary>
/// Reads a Hugging Face <c>config.json</c> into a <see cref="ModelConfig"/>. Supported families:
/// GPT-2 (<c>model_type</c> "gpt2") and Llama (<c>model_type</c> "llama"). Settings FeatureLens
/// cannot run exactly (another activation, RoPE scaling, attention biases) are refused by name rather
/// than silently approximated.
/// </summary>
public static class HfConfigReader
{
    /// <summary>The model_type values this reader understands.</summary>
    public static readonly IReadOnlyList<string> SupportedModelTypes = ["gpt2", "llama"];

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
            ModelConfig config = Family(f) switch
            {
                "gpt2" => ReadGpt2(f),
                _ => ReadLlama(f),
            };
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
        throw new FormatException(
            $"{f.Path}: field 'model_type' is missing and 'architectures' [{string.Join(", ", archs)}] names no supported model; supported model_type values are {string.Join(", ", SupportedModelTypes.Select(s => $"\"{s}\""))}");
    }

    static ModelConfig ReadGpt2(Fields f)
    {
        int d = f.Int("n_embd");
        int heads = f.Int("n_head");
        string act = f.OptString("activation_function") ?? "gelu_new";
        // gelu_pytorch_tanh is PyTorch's name for the same tanh approximation GPT-2 calls gelu_new.
        if (act is not ("gelu_new" or "gelu_pytorch_tanh"))
            throw new NotSupportedException(
                $"{f.Path}: field 'activation_function' is \"{act}\"; FeatureLens runs GPT-2 with \"gelu_new\" (or its alias \"gelu_pytorch_tanh\") only");
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
            Activation = "gelu_new",
            BosTokenId = f.OptTokenId("bos_token_id"),
            EosTokenId = f.OptTokenId("eos_token_id"),
        };
    }

    static ModelConfig ReadLlama(Fields f)
    {
        int d = f.Int("hidden_size");
        int heads = f.Int("num_attention_heads");
        string act = f.OptString("hidden_act") ?? "silu";
        if (act != "silu")
            throw new NotSupportedException($"{f.Path}: field 'hidden_act' is \"{act}\"; FeatureLens runs Llama with \"silu\" (SwiGLU) only");
        if (!f.IsNullOrAbsent("rope_scaling"))
            throw new NotSupportedException($"{f.Path}: field 'rope_scaling' is set ({f.Raw("rope_scaling")}); RoPE scaling is not supported, expected null");
        if (f.OptBool("attention_bias") == true)
            throw new NotSupportedException($"{f.Path}: field 'attention_bias' is true; FeatureLens runs Llama attention without biases");
        if (f.OptBool("mlp_bias") == true)
            throw new NotSupportedException($"{f.Path}: field 'mlp_bias' is true; FeatureLens runs the Llama MLP without biases");
        int? headDim = f.OptInt("head_dim");
        if (headDim is int hd && heads > 0 && hd * heads != d)
            throw new NotSupportedException(
                $"{f.Path}: field 'head_dim' is {hd} but hidden_size / num_attention_heads = {d} / {heads}; FeatureLens needs head_dim = hidden_size / num_attention_heads");
        return new ModelConfig
        {
            Architecture = Architecture.Llama,
            DModel = d,
            NLayers = f.Int("num_hidden_layers"),
            NHeads = heads,
            NKvHeads = f.OptInt("num_key_value_heads") ?? heads,
            DMlp = f.Int("intermediate_size"),
            VocabSize = f.Int("vocab_size"),
            NCtx = f.Int("max_position_embeddings"),
            NormEps = (float)(f.OptDouble("rms_norm_eps") ?? 1e-6),
            RopeTheta = (float)(f.OptDouble("rope_theta") ?? 10000.0),
            Rope = RopeLayout.RotateHalf,
            TiedEmbeddings = f.OptBool("tie_word_embeddings") ?? false,
            Activation = "silu",
            BosTokenId = f.OptTokenId("bos_token_id") ?? 1,
            EosTokenId = f.OptTokenId("eos_token_id") ?? 2,
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
