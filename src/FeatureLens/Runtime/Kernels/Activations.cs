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

    /// <summary>
    /// Backward of <see cref="GeluNew"/>: dInp = dOut · gelu_new′(x), with u = √(2/π)(x + 0.044715x³):
    /// gelu_new′(x) = 0.5(1 + tanh u) + 0.5x(1 − tanh²u)·√(2/π)(1 + 3·0.044715x²). All spans have the same length.
    /// </summary>
    public static void GeluNewBackward(ReadOnlySpan<float> inp, ReadOnlySpan<float> dOut, Span<float> dInp)
    {
        for (int i = 0; i < inp.Length; i++)
        {
            float x = inp[i];
            float th = MathF.Tanh(Sqrt2OverPi * (x + 0.044715f * x * x * x));
            float d = 0.5f * (1f + th) + 0.5f * x * (1f - th * th) * Sqrt2OverPi * (1f + 3f * 0.044715f * x * x);
            dInp[i] = dOut[i] * d;
        }
    }

    /// <summary>
    /// Backward of <see cref="SwiGlu"/>: with s = sigmoid(gate), dGate = dOut·up·s(1 + gate(1 − s)) and
    /// dUp = dOut·gate·s. All spans have the same length.
    /// </summary>
    public static void SwiGluBackward(ReadOnlySpan<float> gate, ReadOnlySpan<float> up, ReadOnlySpan<float> dOut, Span<float> dGate, Span<float> dUp)
    {
        for (int i = 0; i < gate.Length; i++)
        {
            float g = gate[i];
            float s = 1f / (1f + MathF.Exp(-g));
            float silu = g * s;
            dUp[i] = dOut[i] * silu;
            dGate[i] = dOut[i] * up[i] * s * (1f + g * (1f - s));
        }
    }
}
