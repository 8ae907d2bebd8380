using FeatureLens.Runtime.Checkpoints;

namespace FeatureLens.Runtime.Models;

/// <summary>
/// Llama and its relatives (model_type llama — 2 and 3.x —, mistral, qwen2): RMSNorm without bias, rotary positions
/// (rope_scaling in <see cref="Kernels.Rope"/>), grouped-query attention with an explicit head_dim, optional q/k/v biases
/// (Qwen 2; attention_bias adds o_proj's), sliding windows (in the config), SwiGLU MLP, separate or tied lm_head. This
/// file is the one place that maps Hugging Face Llama tensor names (llama2.c checkpoints present their arrays under the
/// same names).
/// </summary>
public static class Llama
{
    /// <summary>Maps a Hugging Face Llama checkpoint onto <see cref="TransformerWeights"/>.</summary>
    public static TransformerWeights LoadWeights(ModelConfig cfg, ITensorSource source)
    {
        var r = new CheckpointReader(source);
        int C = cfg.DModel, qDim = cfg.NHeads * cfg.DHead, kvDim = cfg.NKvHeads * cfg.DHead;
        // grown layer by layer: a config that claims more layers than the checkpoint holds fails at the first missing tensor
        var layers = new List<LayerWeights>();
        for (int l = 0; l < cfg.NLayers; l++)
        {
            string p = $"model.layers.{l}.";
            var (wq, wk, wv, wo) = r.AttentionProjections(p + "self_attn.", cfg);
            var (gate, up, down) = r.GatedMlp(p + "mlp.", cfg);
            layers.Add(new LayerWeights
            {
                Ln1Weight = r.Vector(p + "input_layernorm.weight", C),
                Wq = wq, Wk = wk, Wv = wv, Wo = wo,
                Bq = r.OptionalVector(p + "self_attn.q_proj.bias", qDim),
                Bk = r.OptionalVector(p + "self_attn.k_proj.bias", kvDim),
                Bv = r.OptionalVector(p + "self_attn.v_proj.bias", kvDim),
                Bo = r.OptionalVector(p + "self_attn.o_proj.bias", C),
                Ln2Weight = r.Vector(p + "post_attention_layernorm.weight", C),
                WIn = gate, WUp = up, WOut = down,
            });
        }
        var embed = r.Tensor("model.embed_tokens.weight", cfg.VocabSize, C);
        var weights = new TransformerWeights
        {
            TokenEmbedding = embed,
            Layers = [.. layers],
            FinalNormWeight = r.Vector("model.norm.weight", C),
            Unembed = r.Unembedding(embed, cfg, "lm_head.weight"),
            Source = source,
        };
        bool tied = cfg.TiedEmbeddings;
        r.RejectUnused(n => n.EndsWith("rotary_emb.inv_freq", StringComparison.Ordinal) || (tied && n == "lm_head.weight"), "Llama");
        return weights;
    }
}
