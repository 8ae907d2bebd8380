using System.Buffers.Binary;
using System.Numerics.Tensors;
using System.Runtime.Intrinsics;
using FeatureLens.Runtime.Kernels;
using FeatureLens.Runtime.Models;
using FeatureLens.Runtime.Tensors;
using FeatureLens.Saes;

namespace FeatureLens.Database;

/// <summary>A token and its logit-lens value.</summary>
public readonly record struct TokenValue(int Token, float Value);

/// <summary>
/// The decoder logit lens of SAE latents (SAEDashboard's "logit effects"): a latent's decoder direction in the residual
/// stream, through the final norm's weight (LayerNorm also removes the direction's mean), times the unembedding:
/// value(v) = Σ_c d'_c · W_U[c, v]. Directions: the decoder row for SAEs writing a d_model hook (resid, attn_out, mlp_out,
/// transcoders), through W_O for hook_z SAEs and through W_out for mlp.hook_post SAEs; one unit of activation (divided by
/// the decoder norm for SAEs that rescale by it). Other hooks (q, k, v, …) have no logit lens.
/// </summary>
public static unsafe class LogitLens
{
    /// <summary>True when the SAE's decoder writes somewhere the lens can follow to the residual stream.</summary>
    public static bool Supports(HookedTransformer model, Sae sae) => Route(model, sae, out _, out _) != null;

    // how a decoder row reaches the residual stream: null (not at all), "resid", "wo" or "wout"; the layer; the head
    static string? Route(HookedTransformer model, Sae sae, out int layer, out int? head)
    {
        var cfg = model.Config;
        string hook = sae.Config.OutputHookName;
        head = sae.Config.Metadata.HookHeadIndex;
        layer = -1;
        var parts = hook.Split('.');
        if (parts.Length >= 2 && parts[0] == "blocks" && int.TryParse(parts[1], NumberStyles.None, CultureInfo.InvariantCulture, out int l)) layer = l;
        if (hook.EndsWith("attn.hook_z", StringComparison.Ordinal) && layer >= 0)
            return sae.DOut == (head is null ? cfg.NHeads * cfg.DHead : cfg.DHead) ? "wo" : null;
        if (hook.EndsWith("mlp.hook_post", StringComparison.Ordinal) && layer >= 0)
            return sae.DOut == cfg.DMlp ? "wout" : null;
        bool residSpace = hook is "hook_embed" or "hook_pos_embed" || hook.EndsWith("hook_resid_pre", StringComparison.Ordinal)
            || hook.EndsWith("hook_resid_mid", StringComparison.Ordinal) || hook.EndsWith("hook_resid_post", StringComparison.Ordinal)
            || hook.EndsWith("hook_attn_out", StringComparison.Ordinal) || hook.EndsWith("hook_mlp_out", StringComparison.Ordinal);
        return residSpace && head is null && sae.DOut == cfg.DModel ? "resid" : null;
    }

    /// <summary>
    /// The top and bottom <paramref name="k"/> tokens of each latent in <paramref name="latents"/>, computed in chunks;
    /// <paramref name="done"/> is called with each chunk's results. Nothing when the SAE has no lens.
    /// </summary>
    public static void Compute(HookedTransformer model, Sae sae, IReadOnlyList<int> latents, int k,
        Action<IReadOnlyList<(int Latent, TokenValue[] Top, TokenValue[] Bottom)>> done, int chunk = 256)
    {
        var route = Route(model, sae, out int layer, out int? head);
        if (route == null || latents.Count == 0 || k == 0) return;
        var cfg = model.Config; var w = model.Weights;
        int C = cfg.DModel, V = cfg.VocabSize, D = sae.DOut;
        bool layerNorm = cfg.LayerNorm;
        var gamma = w.FinalNormWeight;
        var dec = new float[(long)chunk * D];
        var dir = new float[(long)chunk * C];
        var logits = new float[(long)chunk * V];
        // W_U is the right-hand side of every chunk's product: packed once, not once per chunk
        using var unembed = Gemm.Pack(w.Unembed);
        for (int c0 = 0; c0 < latents.Count; c0 += chunk)
        {
            int n = Math.Min(chunk, latents.Count - c0);
            for (int i = 0; i < n; i++)
            {
                int j = latents[c0 + i];
                var row = dec.AsSpan(i * D, D);
                new ReadOnlySpan<float>(sae.WDec, j * D, D).CopyTo(row);
                if (sae.Config.RescaleActsByDecoderNorm) TensorPrimitives.Divide(row, sae.DecoderNorms[j], row);
            }
            fixed (float* pd = dec, pr = dir, pl = logits)
            {
                switch (route)
                {
                    case "resid": dec.AsSpan(0, n * C).CopyTo(dir); break;
                    case "wo":
                        var wo = w.Layers[layer].Wo;
                        Gemm.Multiply(MatrixView.F32(pd, n, D), head is int h ? wo.RowSlice(h * cfg.DHead, cfg.DHead) : wo, pr, C);
                        break;
                    default: Gemm.Multiply(MatrixView.F32(pd, n, D), w.Layers[layer].WOut, pr, C); break;
                }
                for (int i = 0; i < n; i++)
                {
                    var d = dir.AsSpan(i * C, C);
                    if (layerNorm) TensorPrimitives.Subtract(d, TensorPrimitives.Sum(d) / C, d);
                    TensorPrimitives.Multiply(d, gamma, d);
                }
                Gemm.Multiply(MatrixView.F32(pr, n, C), unembed, pl, V);
            }
            var results = new (int, TokenValue[], TokenValue[])[n];
            Parallel.For(0, n, i =>
            {
                var row = new ReadOnlySpan<float>(logits, i * V, V);
                results[i] = (latents[c0 + i], Select(row, k, top: true), Select(row, k, top: false));
            });
            done(results);
        }
    }

    /// <summary>The k largest (or smallest) entries, best first; ties by lower token id.</summary>
    public static TokenValue[] Select(ReadOnlySpan<float> row, int k, bool top)
    {
        k = Math.Min(k, row.Length);
        var best = new List<TokenValue>(k + 1);
        int lanes = Vector256<float>.Count;
        for (int v = 0; v < row.Length; v++)
        {
            // once k are kept, skip whole vectors that hold nothing better than the worst kept (NaN never enters)
            if (best.Count == k && v % lanes == 0 && v + lanes <= row.Length)
            {
                var vec = Vector256.Create(row.Slice(v, lanes));
                var worst = Vector256.Create(best[^1].Value);
                if (!(top ? Vector256.GreaterThanAny(vec, worst) : Vector256.LessThanAny(vec, worst))) { v += lanes - 1; continue; }
            }
            float x = top ? row[v] : -row[v];
            if (best.Count == k && !(x > (top ? best[^1].Value : -best[^1].Value))) continue;
            int i = best.Count;
            while (i > 0 && x > (top ? best[i - 1].Value : -best[i - 1].Value)) i--;
            best.Insert(i, new TokenValue(v, row[v]));
            if (best.Count > k) best.RemoveAt(k);
        }
        return [.. best];
    }

    internal static byte[] Pack(TokenValue[] top, TokenValue[] bottom)
    {
        var b = new byte[8 + (top.Length + bottom.Length) * 8];
        BinaryPrimitives.WriteInt32LittleEndian(b, top.Length);
        BinaryPrimitives.WriteInt32LittleEndian(b.AsSpan(4), bottom.Length);
        int o = 8;
        foreach (var t in top.Concat(bottom))
        {
            BinaryPrimitives.WriteInt32LittleEndian(b.AsSpan(o), t.Token);
            BinaryPrimitives.WriteSingleLittleEndian(b.AsSpan(o + 4), t.Value);
            o += 8;
        }
        return b;
    }

    internal static (TokenValue[] Top, TokenValue[] Bottom) Unpack(byte[] b, string where)
    {
        if (b.Length < 8) throw new InvalidDataException($"{where}: logit-lens blob is truncated");
        int nt = BinaryPrimitives.ReadInt32LittleEndian(b), nb = BinaryPrimitives.ReadInt32LittleEndian(b.AsSpan(4));
        if (nt < 0 || nb < 0 || b.Length != 8 + (nt + nb) * 8L) throw new InvalidDataException($"{where}: logit-lens blob of {b.Length} bytes does not hold {nt} + {nb} entries");
        var all = new TokenValue[nt + nb];
        for (int i = 0; i < all.Length; i++)
            all[i] = new TokenValue(BinaryPrimitives.ReadInt32LittleEndian(b.AsSpan(8 + i * 8)), BinaryPrimitives.ReadSingleLittleEndian(b.AsSpan(12 + i * 8)));
        return (all[..nt], all[nt..]);
    }
}
