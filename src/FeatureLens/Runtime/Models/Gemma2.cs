using FeatureLens.Runtime.Checkpoints;

namespace FeatureLens.Runtime.Models;

/// <summary>
/// Gemma 2: RMSNorm with (1 + w) before and after attention and MLP, embeddings scaled by √d_model, GeGLU
/// (gelu-tanh gate × up), head_dim independent of d_model / heads, query_pre_attn_scalar, attention-logit and
/// final-logit soft-capping, sliding-window attention on even layers, GQA, unembedding tied to the (unscaled) token
/// embedding. This file is the one place that maps Hugging Face Gemma 2 tensor names. Hugging Face's
/// <c>post_attention_layernorm</c> is the norm on the attention output (TransformerLens's ln1_post) and
/// <c>pre_feedforward_layernorm</c> the one before the MLP (ln2).
/// </summary>
public static class Gemma2
{
    /// <summary>Maps a Hugging Face Gemma 2 checkpoint onto <see cref="TransformerWeights"/>; the norms' 1 + w is folded in.</summary>
    public static TransformerWeights LoadWeights(ModelConfig cfg, ITensorSource source)
    {
        var r = new CheckpointReader(source);
        int C = cfg.DModel, M = cfg.DMlp, HS = cfg.DHead;
        int qDim = cfg.NHeads * HS, kvDim = cfg.NKvHeads * HS;
        var layers = new List<LayerWeights>();
        for (int l = 0; l < cfg.NLayers; l++)
        {
            string p = $"model.layers.{l}.";
            layers.Add(new LayerWeights
            {
                Ln1Weight = r.OnePlusVector(p + "input_layernorm.weight", C),
                Wq = r.Linear(p + "self_attn.q_proj.weight", qDim, C),
                Wk = r.Linear(p + "self_attn.k_proj.weight", kvDim, C),
                Wv = r.Linear(p + "self_attn.v_proj.weight", kvDim, C),
                Wo = r.Linear(p + "self_attn.o_proj.weight", C, qDim),
                Ln1PostWeight = r.OnePlusVector(p + "post_attention_layernorm.weight", C),
                Ln2Weight = r.OnePlusVector(p + "pre_feedforward_layernorm.weight", C),
                WIn = r.Linear(p + "mlp.gate_proj.weight", M, C),
                WUp = r.Linear(p + "mlp.up_proj.weight", M, C),
                WOut = r.Linear(p + "mlp.down_proj.weight", C, M),
                Ln2PostWeight = r.OnePlusVector(p + "post_feedforward_layernorm.weight", C),
            });
        }
        var embed = r.Tensor("model.embed_tokens.weight", cfg.VocabSize, C);
        bool tied = cfg.TiedEmbeddings;
        if (!tied && !r.Has("lm_head.weight"))
            throw new InvalidDataException($"{source.Location}: tensor 'lm_head.weight' is missing and tie_word_embeddings is false");
        var weights = new TransformerWeights
        {
            TokenEmbedding = embed,
            Layers = [.. layers],
            FinalNormWeight = r.OnePlusVector("model.norm.weight", C),
            Unembed = tied ? embed.AsMatrix().T : r.Linear("lm_head.weight", cfg.VocabSize, C),
            Source = source,
        };
        r.RejectUnused(n => n.EndsWith("rotary_emb.inv_freq", StringComparison.Ordinal) || (tied && n == "lm_head.weight"), "Gemma 2");
        return weights;
    }
}
