using FeatureLens.Runtime.Checkpoints;
using FeatureLens.Runtime.Tensors;

namespace FeatureLens.Runtime.Models;

/// <summary>
/// Everything a transformer holds, in one place. Matrices are views into the checkpoint (16-bit stays
/// 16-bit) oriented for x·W: Wq is (C, NH·HS), Wk/Wv (C, NKV·HS), Wo (NH·HS, C), WIn/WUp (C, D_MLP),
/// WOut (D_MLP, C), Unembed (C, V). Small vectors (norms, biases) are float32 copies.
/// </summary>
public sealed class TransformerWeights
{
    public required WeightTensor TokenEmbedding { get; init; }     // (V, C)
    public WeightTensor? PositionEmbedding { get; init; }          // (NCtx, C), GPT-2 only
    public required LayerWeights[] Layers { get; init; }
    public required float[] FinalNormWeight { get; init; }         // (C)
    public float[]? FinalNormBias { get; init; }                   // (C), LayerNorm only
    public required MatrixView Unembed { get; init; }              // (C, V)
    public float[]? UnembedBias { get; init; }                     // (V)
    /// <summary>The checkpoint the views point into (kept alive with the model).</summary>
    public required ITensorSource Source { get; init; }
    /// <summary>Memory the views point into besides the checkpoint (repacked weights, e.g. GPT-NeoX's per-head fused q/k/v), kept alive with the model.</summary>
    public IReadOnlyList<object> Owned { get; init; } = [];
}

/// <summary>One block's weights; biases are null where the architecture has none.</summary>
public sealed class LayerWeights
{
    public required float[] Ln1Weight { get; init; }
    public float[]? Ln1Bias { get; init; }
    public required MatrixView Wq { get; init; }
    public required MatrixView Wk { get; init; }
    public required MatrixView Wv { get; init; }
    public float[]? Bq { get; init; }
    public float[]? Bk { get; init; }
    public float[]? Bv { get; init; }
    public required MatrixView Wo { get; init; }
    public float[]? Bo { get; init; }
    /// <summary>Gemma 2's post-attention norm (ln1_post), (1 + w) folded in; null elsewhere.</summary>
    public float[]? Ln1PostWeight { get; init; }
    public required float[] Ln2Weight { get; init; }
    public float[]? Ln2Bias { get; init; }
    /// <summary>Gemma 2's post-MLP norm (ln2_post), (1 + w) folded in; null elsewhere.</summary>
    public float[]? Ln2PostWeight { get; init; }
    /// <summary>GPT-2 c_fc, GPT-NeoX dense_h_to_4h, Llama/Gemma gate_proj (its output is mlp.hook_pre).</summary>
    public required MatrixView WIn { get; init; }
    public float[]? BIn { get; init; }
    /// <summary>Gated MLPs' up_proj (mlp.hook_pre_linear); null for GPT-2 and GPT-NeoX.</summary>
    public MatrixView? WUp { get; init; }
    /// <summary>GPT-2 c_proj, Llama down_proj.</summary>
    public required MatrixView WOut { get; init; }
    public float[]? BOut { get; init; }
}

/// <summary>Reads named checkpoint tensors with shape checks that name the tensor, file and expected shape.</summary>
internal sealed class CheckpointReader(ITensorSource source, string prefix = "")
{
    readonly HashSet<string> _used = [];
    public ITensorSource Source => source;

    public WeightTensor Tensor(string name, params int[] shape)
    {
        string full = prefix + name;
        if (!source.Contains(full))
            throw new InvalidDataException($"{source.Location}: tensor '{full}' is missing (expected shape [{string.Join(",", shape)}])");
        var t = source.Get(full);
        if (!t.Shape.AsSpan().SequenceEqual(shape))
            throw new InvalidDataException($"{source.Location}: tensor '{full}' has shape [{string.Join(",", t.Shape)}] but config.json implies [{string.Join(",", shape)}]");
        _used.Add(full);
        return t;
    }

    public bool Has(string name) => source.Contains(prefix + name);

    public float[] Vector(string name, int length) => Tensor(name, length).ToArray();

    public float[]? OptionalVector(string name, int length) => Has(name) ? Vector(name, length) : null;

    /// <summary>A Hugging Face Linear weight stored (out, in), seen as (in, out) for x·W.</summary>
    public MatrixView Linear(string name, int outFeatures, int inFeatures) => Tensor(name, outFeatures, inFeatures).AsMatrix().T;

    /// <summary>Hugging Face's q_proj, k_proj, v_proj, o_proj under <paramref name="prefix"/> (Llama, Mistral, Qwen 2, Gemma 2), seen for x·W.</summary>
    public (MatrixView Wq, MatrixView Wk, MatrixView Wv, MatrixView Wo) AttentionProjections(string prefix, ModelConfig cfg)
    {
        int C = cfg.DModel, qDim = cfg.NHeads * cfg.DHead, kvDim = cfg.NKvHeads * cfg.DHead;
        return (Linear(prefix + "q_proj.weight", qDim, C), Linear(prefix + "k_proj.weight", kvDim, C), Linear(prefix + "v_proj.weight", kvDim, C),
            Linear(prefix + "o_proj.weight", C, qDim));
    }

    /// <summary>A gated MLP's gate_proj, up_proj, down_proj under <paramref name="prefix"/>, seen for x·W.</summary>
    public (MatrixView Gate, MatrixView Up, MatrixView Down) GatedMlp(string prefix, ModelConfig cfg) =>
        (Linear(prefix + "gate_proj.weight", cfg.DMlp, cfg.DModel), Linear(prefix + "up_proj.weight", cfg.DMlp, cfg.DModel),
         Linear(prefix + "down_proj.weight", cfg.DModel, cfg.DMlp));

    /// <summary>The unembedding: the token embedding's transpose when tied, else <paramref name="name"/> (an error naming it when missing).</summary>
    public MatrixView Unembedding(WeightTensor embed, ModelConfig cfg, string name)
    {
        if (cfg.TiedEmbeddings) return embed.AsMatrix().T;
        if (!Has(name)) throw new InvalidDataException($"{source.Location}: tensor '{prefix + name}' is missing and tie_word_embeddings is false");
        return Linear(name, cfg.VocabSize, cfg.DModel);
    }

    /// <summary>A norm weight stored as w where the model multiplies by (1 + w) (Gemma), returned with the 1 added.</summary>
    public float[] OnePlusVector(string name, int length)
    {
        var w = Vector(name, length);
        for (int i = 0; i < w.Length; i++) w[i] += 1f;
        return w;
    }

    /// <summary>A GPT-2 Conv1D weight, already stored (in, out).</summary>
    public MatrixView Conv1D(string name, int inFeatures, int outFeatures) => Tensor(name, inFeatures, outFeatures).AsMatrix();

    /// <summary>Fails on tensors that no rule consumed, except those <paramref name="ignorable"/> accepts.</summary>
    public void RejectUnused(Func<string, bool> ignorable, string architecture)
    {
        var extra = source.Names.Where(n => !_used.Contains(n) && !ignorable(n)).OrderBy(n => n, StringComparer.Ordinal).ToList();
        if (extra.Count > 0)
            throw new InvalidDataException($"{source.Location}: unexpected tensor{(extra.Count > 1 ? "s" : "")} for a {architecture} checkpoint: " +
                string.Join(", ", extra.Take(5).Select(n => $"'{n}'")) + (extra.Count > 5 ? $" and {extra.Count - 5} more" : "") +
                " (does config.json describe this checkpoint?)");
    }
}
