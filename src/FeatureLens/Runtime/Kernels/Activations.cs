using System.Numerics.Tensors;

namespace FeatureLens.Runtime.Kernels;

/// <summary>Elementwise MLP nonlinearities. inp and out have the same length.</summary>
public static class Activations
{
    const float Sqrt2OverPi = 0.7978845608028654f;

    /// <summary>GPT-2's gelu_new: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).</summary>
    public static void GeluNew(ReadOnlySpan<float> inp, Span<float> output)
    {
        const int Chunk = 1024;
        Span<float> t = stackalloc float[Chunk];
        for (int i = 0; i < inp.Length; i += Chunk)
        {
            int n = Math.Min(Chunk, inp.Length - i);
            var x = inp.Slice(i, n);
            var u = t[..n];
            TensorPrimitives.Multiply(x, x, u);                  // x²
            TensorPrimitives.Multiply(u, 0.044715f, u);
            TensorPrimitives.Add(u, 1f, u);                      // 1 + 0.044715x²
            TensorPrimitives.Multiply(u, x, u);                  // x + 0.044715x³
            TensorPrimitives.Multiply(u, Sqrt2OverPi, u);
            TensorPrimitives.Tanh(u, u);
            TensorPrimitives.Add(u, 1f, u);
            TensorPrimitives.Multiply(u, x, u);
            TensorPrimitives.Multiply(u, 0.5f, output.Slice(i, n));
        }
    }

    /// <summary>SwiGLU: out = silu(gate) · up, silu(g) = g / (1 + e^(−g)).</summary>
    public static void SwiGlu(ReadOnlySpan<float> gate, ReadOnlySpan<float> up, Span<float> output)
    {
        const int Chunk = 1024;
        Span<float> t = stackalloc float[Chunk];
        for (int i = 0; i < gate.Length; i += Chunk)
        {
            int n = Math.Min(Chunk, gate.Length - i);
            var g = gate.Slice(i, n);
            var s = t[..n];
            TensorPrimitives.Negate(g, s);
            TensorPrimitives.Exp(s, s);
            TensorPrimitives.Add(s, 1f, s);
            TensorPrimitives.Divide(g, s, s);                    // silu(g)
            TensorPrimitives.Multiply(s, up.Slice(i, n), output.Slice(i, n));
        }
    }
}
