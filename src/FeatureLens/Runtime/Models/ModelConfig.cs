namespace FeatureLens.Runtime.Models;

/// <summary>
/// The model families FeatureLens runs. Llama covers the Llama-shaped families (Llama 2/3.x, Mistral, Qwen 2/2.5:
/// RMSNorm, rotary, gated MLP, optional q/k/v biases and sliding windows); Gemma2 adds (1 + w) norms before and after
/// attention and MLP, scaled embeddings and soft-capping; NeoX (GPT-NeoX, Pythia) runs attention and MLP in parallel
/// with partial rotary and LayerNorm. <see cref="ModelConfig.ModelType"/> keeps config.json's own name.
/// </summary>
public enum Architecture { Gpt2, Llama, Gemma2, NeoX }

/// <summary>
/// How config.json's <c>rope_scaling</c> changes the rotary frequencies (Hugging Face's rope types): Type "linear"
/// (positions divided by Factor), "dynamic" (NTK-aware base growth past OriginalMaxPositions), or "llama3"
/// (low/high-frequency bands around OriginalMaxPositions).
/// </summary>
public sealed record RopeScaling(string Type, double Factor, double LowFreqFactor = 1, double HighFreqFactor = 4, int OriginalMaxPositions = 8192);

/// <summary>
/// How rotary embeddings pair the dimensions of a head: Hugging Face's rotate-half
/// (dimension i with i + d_head/2) or llama2.c/Meta's interleaved (2i with 2i+1).
/// </summary>
public enum RopeLayout { None, RotateHalf, Interleaved }

/// <summary>Hyper-parameters of a transformer, read from config.json or a llama2.c header.</summary>
public sealed record ModelConfig
{
    public required Architecture Architecture { get; init; }
    public required int DModel { get; init; }
    public required int NLayers { get; init; }
    public required int NHeads { get; init; }
    /// <summary>Key/value heads (grouped-query attention); equals NHeads for multi-head attention.</summary>
    public required int NKvHeads { get; init; }
    public required int DMlp { get; init; }
    public required int VocabSize { get; init; }
    /// <summary>Maximum context (GPT-2: n_positions; Llama: max_position_embeddings / seq_len).</summary>
    public required int NCtx { get; init; }
    /// <summary>Size of one attention head; config.json's head_dim where it is independent of d_model / n_heads (Gemma 2, Llama 3.x, Qwen).</summary>
    public int DHead { get => _dHead ?? (NHeads > 0 ? DModel / NHeads : 0); init => _dHead = value; }
    readonly int? _dHead;
    /// <summary>config.json's model_type ("gpt2", "llama", "mistral", "qwen2", "gemma2", "gpt_neox"; "llama2c" for a llama2.c file).</summary>
    public string ModelType { get; init; } = "";
    /// <summary>LayerNorm with bias (GPT-2, GPT-NeoX) rather than RMSNorm.</summary>
    public bool LayerNorm => Architecture is Architecture.Gpt2 or Architecture.NeoX;
    /// <summary>The MLP is gated (act(gate)·up: Llama SwiGLU, Gemma GeGLU) and fires mlp.hook_pre_linear.</summary>
    public bool GatedMlp => Architecture is Architecture.Llama or Architecture.Gemma2;
    /// <summary>Gemma 2's extra norms on the attention and MLP outputs (ln1_post, ln2_post) before they join the residual stream.</summary>
    public bool PostNorms => Architecture == Architecture.Gemma2;
    /// <summary>Attention and MLP both read resid_pre and add to resid_post (GPT-NeoX use_parallel_residual); no hook_resid_mid.</summary>
    public bool ParallelAttnMlp { get; init; }
    /// <summary>Learned absolute positions (GPT-2's wpe).</summary>
    public bool LearnedPositions => Architecture == Architecture.Gpt2;
    /// <summary>Multiplier of the token embedding (Gemma: √d_model); 1 for none. hook_embed sees the scaled rows, as in TransformerLens.</summary>
    public float EmbeddingScale { get; init; } = 1f;
    /// <summary>Gemma 2's query_pre_attn_scalar: scores are q·k / √(this) instead of / √head_dim.</summary>
    public float? QueryPreAttnScalar { get; init; }
    /// <summary>The factor on q·k in attention scores.</summary>
    public float AttnScoreScale => 1f / MathF.Sqrt(QueryPreAttnScalar ?? DHead);
    /// <summary>Attention-logit soft-capping (Gemma 2): scores = c·tanh(scores / c); 0 for none.</summary>
    public float AttnSoftcap { get; init; }
    /// <summary>Final-logit soft-capping (Gemma 2): logits = c·tanh(logits / c); 0 for none.</summary>
    public float FinalSoftcap { get; init; }
    /// <summary>Per-layer sliding window (query i sees keys j with 0 ≤ i − j &lt; window); empty or 0 for full causal attention.</summary>
    public int[] LayerWindows { get; init; } = [];
    /// <summary>The sliding window of <paramref name="layer"/>, 0 when it attends to every earlier position.</summary>
    public int WindowOf(int layer) => layer < LayerWindows.Length ? LayerWindows[layer] : 0;
    /// <summary>Dimensions of each head that rotary embeddings turn (GPT-NeoX: rotary_pct · head_dim); the rest pass through.</summary>
    public int RotaryDim { get => _rotaryDim ?? DHead; init => _rotaryDim = value; }
    readonly int? _rotaryDim;
    /// <summary>rope_scaling from config.json, or null.</summary>
    public RopeScaling? RopeScaling { get; init; }
    /// <summary>LayerNorm / RMSNorm epsilon.</summary>
    public float NormEps { get; init; } = 1e-5f;
    public float RopeTheta { get; init; } = 10000f;
    public RopeLayout Rope { get; init; } = RopeLayout.None;
    /// <summary>True when the unembedding is the token embedding (GPT-2; llama2.c shared classifier).</summary>
    public bool TiedEmbeddings { get; init; }
    /// <summary>
    /// MLP activation, canonical name: "gelu_new" (tanh approximation: GPT-2, Gemma's gelu_pytorch_tanh), "gelu" (exact,
    /// erf: GPT-NeoX), "silu" (Llama SwiGLU), "relu", "quick_gelu" (x·σ(1.702x)). Gated MLPs apply it to the gate.
    /// </summary>
    public string Activation { get; init; } = "gelu_new";
    public int? BosTokenId { get; init; }
    public int? EosTokenId { get; init; }
    /// <summary>Where the config came from (for messages).</summary>
    public string Source { get; init; } = "";

    /// <summary>Throws a clear error when the numbers cannot describe a model.</summary>
    public void Validate()
    {
        void Need(bool ok, string field, string what)
        {
            if (!ok) throw new FormatException($"{Source}: field '{field}' {what}");
        }
        Need(DModel > 0, "d_model", $"must be positive (got {DModel})");
        Need(NLayers > 0, "n_layers", $"must be positive (got {NLayers})");
        Need(NHeads > 0, "n_heads", $"must be positive (got {NHeads})");
        Need(_dHead is not null || DModel % NHeads == 0, "n_heads", $"must divide d_model={DModel} when head_dim is not given (got {NHeads})");
        Need(DHead > 0, "head_dim", $"must be positive (got {DHead})");
        Need(NKvHeads > 0 && NHeads % NKvHeads == 0, "n_kv_heads", $"must be positive and divide n_heads={NHeads} (got {NKvHeads})");
        Need(DMlp > 0, "d_mlp", $"must be positive (got {DMlp})");
        Need(VocabSize > 0, "vocab_size", $"must be positive (got {VocabSize})");
        Need(NCtx > 0, "n_ctx", $"must be positive (got {NCtx})");
        Need(Rope == RopeLayout.None || DHead % 2 == 0, "head_dim", $"must be even for rotary embeddings (got {DHead})");
        Need(Rope == RopeLayout.None || (RotaryDim > 0 && RotaryDim <= DHead && RotaryDim % 2 == 0), "rotary_dim",
            $"must be even and within (0, head_dim={DHead}] (got {RotaryDim})");
        Need(LayerWindows.Length == 0 || (LayerWindows.Length == NLayers && LayerWindows.All(w => w >= 0)), "sliding_window",
            $"needs one non-negative window per layer ({NLayers}); got {LayerWindows.Length}");
        Need(AttnSoftcap >= 0 && float.IsFinite(AttnSoftcap), "attn_logit_softcapping", $"must be a positive number or null (got {AttnSoftcap})");
        Need(FinalSoftcap >= 0 && float.IsFinite(FinalSoftcap), "final_logit_softcapping", $"must be a positive number or null (got {FinalSoftcap})");
        Need(QueryPreAttnScalar is null || QueryPreAttnScalar > 0, "query_pre_attn_scalar", $"must be positive (got {QueryPreAttnScalar})");
        Need(EmbeddingScale > 0 && float.IsFinite(EmbeddingScale), "embedding scale", $"must be positive (got {EmbeddingScale})");
        Need(Activation is "gelu_new" or "gelu" or "silu" or "relu" or "quick_gelu", "activation", $"'{Activation}' is not one FeatureLens runs (gelu_new, gelu, silu, relu, quick_gelu)");
        Need(NormEps > 0, "eps", $"must be positive (got {NormEps})");
    }
}
