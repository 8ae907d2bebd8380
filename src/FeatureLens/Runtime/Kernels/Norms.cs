using System.Numerics.Tensors;

namespace FeatureLens.Runtime.Kernels;

/// <summary>
/// LayerNorm and RMSNorm, split in the stages TransformerLens hooks: the scale (hook_scale), the
/// normalized input (hook_normalized, before weight and bias), then the affine output.
/// Shapes: inp is (R,C) with R = rows (batch·positions), scale is (R), normalized and out are (R,C).
/// </summary>
public static class Norms
{
    /// <summary>LayerNorm scale: sqrt(mean((x − mean(x))²) + eps) per row; also writes the centered input into <paramref name="centered"/>.</summary>
    public static void LayerNormScale(ReadOnlySpan<float> inp, Span<float> centered, Span<float> scale, int rows, int C, float eps)
    {
        for (int r = 0; r < rows; r++)
        {
            var x = inp.Slice(r * C, C);
            var xc = centered.Slice(r * C, C);
            float mean = TensorPrimitives.Sum(x) / C;
            TensorPrimitives.Subtract(x, mean, xc);
            float var = TensorPrimitives.Dot(xc, xc) / C;
            scale[r] = MathF.Sqrt(var + eps);
        }
    }

    /// <summary>RMSNorm scale: sqrt(mean(x²) + eps) per row.</summary>
    public static void RmsNormScale(ReadOnlySpan<float> inp, Span<float> scale, int rows, int C, float eps)
    {
        for (int r = 0; r < rows; r++)
        {
            var x = inp.Slice(r * C, C);
            scale[r] = MathF.Sqrt(TensorPrimitives.Dot(x, x) / C + eps);
        }
    }

    /// <summary>normalized = x / scale (x already centered for LayerNorm).</summary>
    public static void Normalize(ReadOnlySpan<float> x, ReadOnlySpan<float> scale, Span<float> normalized, int rows, int C)
    {
        for (int r = 0; r < rows; r++)
            TensorPrimitives.Divide(x.Slice(r * C, C), scale[r], normalized.Slice(r * C, C));
    }

    /// <summary>out = normalized · weight (+ bias), weight and bias are (C).</summary>
    public static void Affine(ReadOnlySpan<float> normalized, ReadOnlySpan<float> weight, ReadOnlySpan<float> bias, Span<float> output, int rows, int C)
    {
        for (int r = 0; r < rows; r++)
        {
            var o = output.Slice(r * C, C);
            TensorPrimitives.Multiply(normalized.Slice(r * C, C), weight, o);
            if (!bias.IsEmpty) TensorPrimitives.Add(o, bias, o);
        }
    }

    /// <summary>
    /// Backward of <see cref="Affine"/> for the input: dNormalized = dOut · weight (rows (R,C), weight (C)).
    /// Weight and bias gradients are not needed for activation gradients and are not computed.
    /// </summary>
    public static void AffineBackward(ReadOnlySpan<float> dOut, ReadOnlySpan<float> weight, Span<float> dNormalized, int rows, int C)
    {
        for (int r = 0; r < rows; r++)
            TensorPrimitives.Multiply(dOut.Slice(r * C, C), weight, dNormalized.Slice(r * C, C));
    }

    /// <summary>
    /// Backward of normalized = x / scale for the scale: dScale[r] = −Σ_c dNormalized·x / scale² (x is the centered
    /// input for LayerNorm, the input for RMSNorm). Shapes: dNormalized, x (R,C); scale, dScale (R).
    /// </summary>
    public static void NormalizeBackwardScale(ReadOnlySpan<float> dNormalized, ReadOnlySpan<float> x, ReadOnlySpan<float> scale, Span<float> dScale, int rows, int C)
    {
        // summed in double: the terms largely cancel (the final norm's scale gradient is a small difference)
        for (int r = 0; r < rows; r++)
        {
            var d = dNormalized.Slice(r * C, C); var xr = x.Slice(r * C, C);
            double dot = 0;
            for (int c = 0; c < C; c++) dot += (double)d[c] * xr[c];
            dScale[r] = (float)(-dot / ((double)scale[r] * scale[r]));
        }
    }

    /// <summary>
    /// The rest of the norm's backward, to its input: with x centered (LayerNorm) or raw (RMSNorm),
    /// dx = dNormalized/scale + dScale·x/(C·scale) (scale = √(mean(x²)+eps)), then for LayerNorm minus its row mean
    /// (the centering). Shapes: dNormalized, x, dInput (R,C); scale, dScale (R).
    /// </summary>
    public static void NormBackwardInput(ReadOnlySpan<float> dNormalized, ReadOnlySpan<float> x, ReadOnlySpan<float> scale, ReadOnlySpan<float> dScale,
        Span<float> dInput, int rows, int C, bool layerNorm)
    {
        for (int r = 0; r < rows; r++)
        {
            var dx = dInput.Slice(r * C, C);
            TensorPrimitives.Divide(dNormalized.Slice(r * C, C), scale[r], dx);
            TensorPrimitives.MultiplyAdd(x.Slice(r * C, C), dScale[r] / (C * scale[r]), dx, dx);
            if (layerNorm) TensorPrimitives.Subtract(dx, TensorPrimitives.Sum(dx) / C, dx);
        }
    }
    // ───────────── frozen scale: the norm as the linear map it is once hook_scale is held fixed ─────────────

    /// <summary>
    /// normalized = (x − mean(x)) / scale (LayerNorm) or x / scale (RMSNorm) with <paramref name="scale"/> given (frozen at
    /// its clean value), so the map is linear in x. Shapes: x, normalized (rows, C); scale (rows).
    /// </summary>
    public static void FrozenNormalize(ReadOnlySpan<float> x, ReadOnlySpan<float> scale, Span<float> normalized, int rows, int C, bool layerNorm)
    {
        for (int r = 0; r < rows; r++)
        {
            var o = normalized.Slice(r * C, C);
            var xr = x.Slice(r * C, C);
            if (layerNorm) TensorPrimitives.Subtract(xr, TensorPrimitives.Sum(xr) / C, o);
            else xr.CopyTo(o);
            TensorPrimitives.Divide(o, scale[r], o);
        }
    }

    /// <summary>
    /// Backward of <see cref="FrozenNormalize"/> (its transpose): dx = dNormalized / scale, then minus its row mean for
    /// LayerNorm (the centring). In place is allowed. Shapes: dNormalized, dInput (rows, C); scale (rows).
    /// </summary>
    public static void FrozenNormalizeBackward(ReadOnlySpan<float> dNormalized, ReadOnlySpan<float> scale, Span<float> dInput, int rows, int C, bool layerNorm)
    {
        for (int r = 0; r < rows; r++)
        {
            var dx = dInput.Slice(r * C, C);
            TensorPrimitives.Divide(dNormalized.Slice(r * C, C), scale[r], dx);
            if (layerNorm) TensorPrimitives.Subtract(dx, TensorPrimitives.Sum(dx) / C, dx);
        }
    }
}
