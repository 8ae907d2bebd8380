using System.Numerics.Tensors;
using System.Runtime.Intrinsics;

namespace FeatureLens.Runtime.Kernels;

/// <summary>Elementwise MLP nonlinearities. inp and out have the same length.</summary>
public static class Activations
{
    const float Sqrt2OverPi = 0.7978845608028654f;

    /// <summary>
    /// GPT-2's gelu_new: 0.5·x·(1 + tanh(u)), u = √(2/π)·(x + 0.044715·x³), computed in one pass as the equal
    /// x / (1 + e^(−2u)) (no cancellation near u = 0, no overflow: e^(−2u) → ∞ gives 0, → 0 gives x). Every element
    /// goes through the same vector code (the tail through a padded vector), so a value does not depend on where it lies.
    /// </summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
    public static unsafe void GeluNew(ReadOnlySpan<float> inp, Span<float> output)
    {
        if (output.Length < inp.Length) throw new ArgumentException($"gelu_new: output has {output.Length} elements, input {inp.Length}");
        int n = inp.Length, i = 0;
        fixed (float* x = inp) fixed (float* y = output)
        {
            for (; i + 16 <= n; i += 16) GeluNew16(Vector512.Load(x + i)).Store(y + i);
            if (i < n)
            {
                float* t = stackalloc float[16];
                new Span<float>(t, 16).Clear();
                for (int j = i; j < n; j++) t[j - i] = x[j];
                GeluNew16(Vector512.Load(t)).Store(t);
                for (int j = i; j < n; j++) y[j] = t[j - i];
            }
        }
    }

    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveInlining)]
    static Vector512<float> GeluNew16(Vector512<float> x)
    {
        var u = x * x * 0.044715f;
        u = (u + Vector512<float>.One) * x * Sqrt2OverPi;
        return x / (Vector512<float>.One + Vector512.Exp(-(u + u)));
    }

    /// <summary>SwiGLU: out = silu(gate) · up, silu(g) = g / (1 + e^(−g)); one pass, every element through the same vector code.</summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
    public static unsafe void SwiGlu(ReadOnlySpan<float> gate, ReadOnlySpan<float> up, Span<float> output)
    {
        if (up.Length < gate.Length || output.Length < gate.Length)
            throw new ArgumentException($"SwiGLU: gate has {gate.Length} elements, up {up.Length}, output {output.Length}");
        int n = gate.Length, i = 0;
        fixed (float* g = gate) fixed (float* u = up) fixed (float* y = output)
        {
            for (; i + 16 <= n; i += 16) SwiGlu16(Vector512.Load(g + i), Vector512.Load(u + i)).Store(y + i);
            if (i < n)
            {
                float* t = stackalloc float[32];
                new Span<float>(t, 32).Clear();
                for (int j = i; j < n; j++) { t[j - i] = g[j]; t[16 + j - i] = u[j]; }
                SwiGlu16(Vector512.Load(t), Vector512.Load(t + 16)).Store(t);
                for (int j = i; j < n; j++) y[j] = t[j - i];
            }
        }
    }

    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveInlining)]
    static Vector512<float> SwiGlu16(Vector512<float> g, Vector512<float> up) => g / (Vector512.Exp(-g) + Vector512<float>.One) * up;

    /// <summary>
    /// Backward of <see cref="GeluNew"/>: dInp = dOut · gelu_new′(x), with u = √(2/π)(x + 0.044715x³):
    /// gelu_new′(x) = 0.5(1 + tanh u) + 0.5x(1 − tanh²u)·√(2/π)(1 + 3·0.044715x²). All spans have the same length.
    /// </summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
    public static unsafe void GeluNewBackward(ReadOnlySpan<float> inp, ReadOnlySpan<float> dOut, Span<float> dInp)
    {
        if (dOut.Length < inp.Length || dInp.Length < inp.Length)
            throw new ArgumentException($"gelu_new backward: input has {inp.Length} elements, dOut {dOut.Length}, dInp {dInp.Length}");
        int n = inp.Length, i = 0;
        fixed (float* x = inp) fixed (float* g = dOut) fixed (float* y = dInp)
        {
            for (; i + 16 <= n; i += 16) GeluNewGrad16(Vector512.Load(x + i), Vector512.Load(g + i)).Store(y + i);
            if (i < n)
            {
                float* t = stackalloc float[32];
                new Span<float>(t, 32).Clear();
                for (int j = i; j < n; j++) { t[j - i] = x[j]; t[16 + j - i] = g[j]; }
                GeluNewGrad16(Vector512.Load(t), Vector512.Load(t + 16)).Store(t);
                for (int j = i; j < n; j++) y[j] = t[j - i];
            }
        }
    }

    /// <summary>dOut·gelu_new′(x) with s = sigmoid(2u) = (1 + tanh u)/2: gelu_new′ = s + 2x·s(1 − s)·√(2/π)(1 + 3·0.044715x²).</summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveInlining)]
    static Vector512<float> GeluNewGrad16(Vector512<float> x, Vector512<float> dOut)
    {
        var x2 = x * x;
        var u = (x2 * 0.044715f + Vector512<float>.One) * x * Sqrt2OverPi;
        var s = Vector512<float>.One / (Vector512<float>.One + Vector512.Exp(-(u + u)));
        var du = (x2 * (3f * 0.044715f) + Vector512<float>.One) * Sqrt2OverPi;
        return dOut * (s + (x + x) * s * (Vector512<float>.One - s) * du);
    }

    /// <summary>
    /// Backward of <see cref="SwiGlu"/>: with s = sigmoid(gate), dGate = dOut·up·s(1 + gate(1 − s)) and
    /// dUp = dOut·gate·s. All spans have the same length.
    /// </summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
    public static unsafe void SwiGluBackward(ReadOnlySpan<float> gate, ReadOnlySpan<float> up, ReadOnlySpan<float> dOut, Span<float> dGate, Span<float> dUp)
    {
        int n = gate.Length, i = 0;
        if (up.Length < n || dOut.Length < n || dGate.Length < n || dUp.Length < n)
            throw new ArgumentException($"SwiGLU backward: gate has {n} elements, up {up.Length}, dOut {dOut.Length}, dGate {dGate.Length}, dUp {dUp.Length}");
        fixed (float* g = gate) fixed (float* u = up) fixed (float* d = dOut) fixed (float* dg = dGate) fixed (float* du = dUp)
        {
            for (; i + 16 <= n; i += 16)
            {
                var (vg, vu) = SwiGluGrad16(Vector512.Load(g + i), Vector512.Load(u + i), Vector512.Load(d + i));
                vg.Store(dg + i); vu.Store(du + i);
            }
            if (i < n)
            {
                float* t = stackalloc float[48];
                new Span<float>(t, 48).Clear();
                for (int j = i; j < n; j++) { t[j - i] = g[j]; t[16 + j - i] = u[j]; t[32 + j - i] = d[j]; }
                var (vg, vu) = SwiGluGrad16(Vector512.Load(t), Vector512.Load(t + 16), Vector512.Load(t + 32));
                vg.Store(t); vu.Store(t + 16);
                for (int j = i; j < n; j++) { dg[j] = t[j - i]; du[j] = t[16 + j - i]; }
            }
        }
    }

    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveInlining)]
    static (Vector512<float> DGate, Vector512<float> DUp) SwiGluGrad16(Vector512<float> g, Vector512<float> up, Vector512<float> dOut)
    {
        var s = Vector512<float>.One / (Vector512<float>.One + Vector512.Exp(-g));
        return (dOut * up * s * (Vector512<float>.One + g * (Vector512<float>.One - s)), dOut * (g * s));
    }

    // ───────────── every activation a config names ("gelu_new", "gelu", "silu", "relu", "quick_gelu") ─────────────

    /// <summary>output = act(inp) for a canonical activation name (see ModelConfig.Activation).</summary>
    public static void Apply(string act, ReadOnlySpan<float> inp, Span<float> output)
    {
        switch (act)
        {
            case "gelu_new": GeluNew(inp, output); return;
            case "relu": TensorPrimitives.Max(inp, 0f, output); return;
            default:
                for (int i = 0; i < inp.Length; i++) output[i] = Value(act, inp[i]);
                return;
        }
    }

    /// <summary>Backward of <see cref="Apply"/>: dInp = dOut · act′(inp).</summary>
    public static void Backward(string act, ReadOnlySpan<float> inp, ReadOnlySpan<float> dOut, Span<float> dInp)
    {
        if (act == "gelu_new") { GeluNewBackward(inp, dOut, dInp); return; }
        for (int i = 0; i < inp.Length; i++) dInp[i] = dOut[i] * Derivative(act, inp[i]);
    }

    /// <summary>A gated MLP's activation: output = act(gate) · up (SwiGLU for silu, GeGLU for gelu_new).</summary>
    public static void Gated(string act, ReadOnlySpan<float> gate, ReadOnlySpan<float> up, Span<float> output)
    {
        if (act == "silu") { SwiGlu(gate, up, output); return; }
        Apply(act, gate, output);
        TensorPrimitives.Multiply(output, up, output);
    }

    /// <summary>Backward of <see cref="Gated"/>: dUp = dOut·act(gate), dGate = dOut·up·act′(gate).</summary>
    public static void GatedBackward(string act, ReadOnlySpan<float> gate, ReadOnlySpan<float> up, ReadOnlySpan<float> dOut, Span<float> dGate, Span<float> dUp)
    {
        if (act == "silu") { SwiGluBackward(gate, up, dOut, dGate, dUp); return; }
        Apply(act, gate, dUp);
        TensorPrimitives.Multiply(dUp, dOut, dUp);
        for (int i = 0; i < gate.Length; i++) dGate[i] = dOut[i] * up[i] * Derivative(act, gate[i]);
    }

    static float Value(string act, float x) => act switch
    {
        "gelu" => (float)(0.5 * x * Erfc(-x * InvSqrt2)),
        "silu" => x / (1f + MathF.Exp(-x)),
        "quick_gelu" => x / (1f + MathF.Exp(-1.702f * x)),
        "relu" => MathF.Max(x, 0f),
        "gelu_new" => 0.5f * x * (1f + MathF.Tanh(Sqrt2OverPi * (x + 0.044715f * x * x * x))),
        _ => throw new ArgumentException($"unknown activation '{act}'"),
    };

    static float Derivative(string act, float x)
    {
        switch (act)
        {
            case "gelu":
            {
                // Φ(x) + x·φ(x)
                double xd = x;
                return (float)(0.5 * Erfc(-xd * InvSqrt2) + xd * Math.Exp(-0.5 * xd * xd) * InvSqrt2Pi);
            }
            case "silu":
            {
                float sg = 1f / (1f + MathF.Exp(-x));
                return sg * (1f + x * (1f - sg));
            }
            case "quick_gelu":
            {
                float sg = 1f / (1f + MathF.Exp(-1.702f * x));
                return sg + 1.702f * x * sg * (1f - sg);
            }
            case "relu": return x > 0 ? 1f : 0f;
            case "gelu_new":
            {
                float th = MathF.Tanh(Sqrt2OverPi * (x + 0.044715f * x * x * x));
                return 0.5f * (1f + th) + 0.5f * x * (1f - th * th) * Sqrt2OverPi * (1f + 3f * 0.044715f * x * x);
            }
            default: throw new ArgumentException($"unknown activation '{act}'");
        }
    }

    const double InvSqrt2 = 0.70710678118654752440, InvSqrt2Pi = 0.39894228040143267794;

    /// <summary>
    /// The complementary error function in double precision to a relative error below 1.2e-7 everywhere (a Chebyshev
    /// fit of erfc(z)·e^(z²) in t = 1/(1 + z/2)) — well inside float32's resolution for the exact GELU.
    /// </summary>
    static double Erfc(double x)
    {
        double z = Math.Abs(x), t = 1.0 / (1.0 + 0.5 * z);
        double r = t * Math.Exp(-z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (-0.18628806 +
                   t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277)))))))));
        return x >= 0 ? r : 2.0 - r;
    }
}
