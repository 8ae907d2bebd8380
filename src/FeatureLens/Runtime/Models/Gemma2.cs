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
        int C = cfg.DModel;
        var layers = new List<LayerWeights>();
        for (int l = 0; l < cfg.NLayers; l++)
        {
            string p = $"model.layers.{l}.";
            var (wq, wk, wv, wo) = r.AttentionProjections(p + "self_attn.", cfg);
            var (gate, up, down) = r.GatedMlp(p + "mlp.", cfg);
            layers.Add(new LayerWeights
            {
                Ln1Weight = r.OnePlusVector(p + "input_layernorm.weight", C),
                Wq = wq, Wk = wk, Wv = wv, Wo = wo,
                Ln1PostWeight = r.OnePlusVector(p + "post_attention_layernorm.weight", C),
                Ln2Weight = r.OnePlusVector(p + "pre_feedforward_layernorm.weight", C),
                WIn = gate, WUp = up, WOut = down,
                Ln2PostWeight = r.OnePlusVector(p + "post_feedforward_layernorm.weight", C),
            });
        }
        var embed = r.Tensor("model.embed_tokens.weight", cfg.VocabSize, C);
        var weights = new TransformerWeights
        {
            TokenEmbedding = embed,
            Layers = [.. layers],
            FinalNormWeight = r.OnePlusVector("model.norm.weight", C),
            Unembed = r.Unembedding(embed, cfg, "lm_head.weight"),
            Source = source,
        };
        bool tied = cfg.TiedEmbeddings;
        r.RejectUnused(n => n.EndsWith("rotary_emb.inv_freq", StringComparison.Ordinal) || (tied && n == "lm_head.weight"), "Gemma 2");
        return weights;
    }
}
