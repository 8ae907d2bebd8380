namespace FeatureLens.Runtime.Models;

/// <summary>How a forward pass multiplies by the model's weight matrices (<see cref="HookedTransformer.Compute"/>).</summary>
public enum ComputeMode
{
    /// <summary>float32 products (weights stored in 16 bits are widened exactly): the default, PyTorch's float32 numbers.</summary>
    Float32,
    /// <summary>
    /// bf16 weights multiplied with AVX512_BF16 dot products: activations rounded to bfloat16 at each weight product, sums in
    /// float32. Faster, less exact (see the README's measured logit error). Attention, norms and activations stay float32;
    /// weights not stored as bf16 still use the float32 product; gradient passes always run in float32.
    /// </summary>
    BFloat16,
}
