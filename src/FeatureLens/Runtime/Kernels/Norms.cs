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
}
