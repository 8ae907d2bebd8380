using FeatureLens.Runtime.Tensors;

namespace FeatureLens.Runtime.Kernels;

/// <summary>Which micro-kernel the GEMM uses. Auto picks the widest the CPU supports.</summary>
public enum GemmPath { Auto, Vector512, Vector256, Scalar }

/// <summary>
/// float32 matrix multiplication C[M,N] = A[M,K]·B[K,N] (+ C when accumulating).
/// A and B are strided views (<see cref="MatrixView"/>), so Aᵀ·B and A·Bᵀ are the same call on
/// transposed views; B may be F32, F16 or BF16 (converted while packing).
/// PLACEHOLDER: a straightforward implementation; the packed, blocked Vector512 kernel replaces it.
/// </summary>
public static unsafe class Gemm
{
    /// <summary>Forces a kernel path (tests and benchmarks); Auto by default.</summary>
    public static GemmPath Path { get; set; } = GemmPath.Auto;

    /// <summary>Worker threads (default: all cores).</summary>
    public static int Threads { get; set; } = Environment.ProcessorCount;

    /// <summary>C[M,N] (row-major, leading dimension ldc) = A·B, or += when <paramref name="accumulate"/>.</summary>
    public static void Multiply(MatrixView a, MatrixView b, float* c, int ldc, bool accumulate = false)
    {
        if (a.Cols != b.Rows) throw new ArgumentException($"GEMM inner dimensions differ: A is [{a.Rows},{a.Cols}], B is [{b.Rows},{b.Cols}]");
        if (ldc < b.Cols) throw new ArgumentException("ldc smaller than N");
        int m = a.Rows, n = b.Cols, k = a.Cols;
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++)
            {
                float s = accumulate ? c[(long)i * ldc + j] : 0f;
                for (int p = 0; p < k; p++) s += a[i, p] * b[p, j];
                c[(long)i * ldc + j] = s;
            }
    }

    /// <summary>C[m,n] = A[m,k]·B[k,n], all row-major float32.</summary>
    public static void MatMul(ReadOnlySpan<float> a, ReadOnlySpan<float> b, Span<float> c, int m, int k, int n, bool accumulate = false)
    {
        Check(a.Length, (long)m * k, "A"); Check(b.Length, (long)k * n, "B"); Check(c.Length, (long)m * n, "C");
        fixed (float* pa = a) fixed (float* pb = b) fixed (float* pc = c)
            Multiply(MatrixView.F32(pa, m, k), MatrixView.F32(pb, k, n), pc, n, accumulate);
    }

    /// <summary>C[m,n] = A[m,k]·Bᵀ where B is [n,k] row-major (a Linear layer's weight).</summary>
    public static void MatMulTransB(ReadOnlySpan<float> a, ReadOnlySpan<float> b, Span<float> c, int m, int k, int n, bool accumulate = false)
    {
        Check(a.Length, (long)m * k, "A"); Check(b.Length, (long)n * k, "B"); Check(c.Length, (long)m * n, "C");
        fixed (float* pa = a) fixed (float* pb = b) fixed (float* pc = c)
            Multiply(MatrixView.F32(pa, m, k), MatrixView.F32(pb, n, k).T, pc, n, accumulate);
    }

    /// <summary>C[m,n] = Aᵀ·B where A is [k,m] and B is [k,n] row-major (weight gradients).</summary>
    public static void MatMulTransA(ReadOnlySpan<float> a, ReadOnlySpan<float> b, Span<float> c, int m, int k, int n, bool accumulate = false)
    {
        Check(a.Length, (long)k * m, "A"); Check(b.Length, (long)k * n, "B"); Check(c.Length, (long)m * n, "C");
        fixed (float* pa = a) fixed (float* pb = b) fixed (float* pc = c)
            Multiply(MatrixView.F32(pa, k, m).T, MatrixView.F32(pb, k, n), pc, n, accumulate);
    }

    static void Check(int have, long need, string what)
    {
        if (have < need) throw new ArgumentException($"GEMM operand {what} has {have} elements, needs {need}");
    }
}
