namespace FeatureLens.Runtime.Models;

/// <summary>The model families FeatureLens runs.</summary>
public enum Architecture { Gpt2, Llama }

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
    public int DHead => DModel / NHeads;
    /// <summary>LayerNorm / RMSNorm epsilon.</summary>
    public float NormEps { get; init; } = 1e-5f;
    public float RopeTheta { get; init; } = 10000f;
    public RopeLayout Rope { get; init; } = RopeLayout.None;
    /// <summary>True when the unembedding is the token embedding (GPT-2; llama2.c shared classifier).</summary>
    public bool TiedEmbeddings { get; init; }
    /// <summary>MLP activation: "gelu_new" (GPT-2) or "silu" (Llama SwiGLU).</summary>
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
        Need(NHeads > 0 && DModel % NHeads == 0, "n_heads", $"must be positive and divide d_model={DModel} (got {NHeads})");
        Need(NKvHeads > 0 && NHeads % NKvHeads == 0, "n_kv_heads", $"must be positive and divide n_heads={NHeads} (got {NKvHeads})");
        Need(DMlp > 0, "d_mlp", $"must be positive (got {DMlp})");
        Need(VocabSize > 0, "vocab_size", $"must be positive (got {VocabSize})");
        Need(NCtx > 0, "n_ctx", $"must be positive (got {NCtx})");
        Need(Rope == RopeLayout.None || DHead % 2 == 0, "head_dim", $"must be even for rotary embeddings (got {DHead})");
        Need(NormEps > 0, "eps", $"must be positive (got {NormEps})");
    }
}
