using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace FeatureLens.Bench;

/// <summary>
/// Measures the float32 FMA peak of this machine: each thread runs 12 independent Vector512 FMA
/// chains held in registers (enough to cover the FMA latency on two pipes), nothing touches memory.
/// </summary>
public static class PeakFlops
{
    const long Iterations = 40_000_000;

    /// <summary>GFLOP/s reached by <paramref name="threads"/> threads together (best of 7 runs).</summary>
    public static double Measure(int threads)
    {
        if (!Avx512F.IsSupported) return MeasureWith(threads, Chains256, 12 * 8 * 2);
        return MeasureWith(threads, Chains512, 12 * 16 * 2);
    }

    /// <summary>GFLOP/s of 256-bit FMAs (to tell full-width AVX-512 from double-pumped).</summary>
    public static double Measure256(int threads) => MeasureWith(threads, Chains256, 12 * 8 * 2);

    static double MeasureWith(int threads, Func<long, float> body, double flopsPerIteration)
    {
        body(100_000); // JIT warm-up
        double best = 0;
        for (int run = 0; run < 7; run++) // best of 7: a busy VM host can steal a core for a moment
        {
            using var start = new Barrier(threads + 1);
            var workers = new Thread[threads];
            for (int t = 0; t < threads; t++)
            {
                workers[t] = new Thread(() => { start.SignalAndWait(); Sink(body(Iterations)); }) { IsBackground = true };
                workers[t].Start();
            }
            start.SignalAndWait();
            var sw = Stopwatch.StartNew();
            foreach (var w in workers) w.Join();
            double seconds = sw.Elapsed.TotalSeconds;
            best = Math.Max(best, threads * Iterations * flopsPerIteration / seconds / 1e9);
        }
        return best;
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    static void Sink(float x) { if (x == 1234.5f) Console.Write(""); }

    /// <summary>12 independent zmm FMA chains: acc_i = acc_i·m + a.</summary>
    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    static float Chains512(long iterations)
    {
        var m = Vector512.Create(0.999999f); var add = Vector512.Create(1e-7f);
        Vector512<float> a0 = Vector512.Create(1f), a1 = Vector512.Create(1.1f), a2 = Vector512.Create(1.2f),
            a3 = Vector512.Create(1.3f), a4 = Vector512.Create(1.4f), a5 = Vector512.Create(1.5f),
            a6 = Vector512.Create(1.6f), a7 = Vector512.Create(1.7f), a8 = Vector512.Create(1.8f),
            a9 = Vector512.Create(1.9f), a10 = Vector512.Create(2.0f), a11 = Vector512.Create(2.1f);
        for (long i = 0; i < iterations; i++)
        {
            a0 = Avx512F.FusedMultiplyAdd(a0, m, add); a1 = Avx512F.FusedMultiplyAdd(a1, m, add);
            a2 = Avx512F.FusedMultiplyAdd(a2, m, add); a3 = Avx512F.FusedMultiplyAdd(a3, m, add);
            a4 = Avx512F.FusedMultiplyAdd(a4, m, add); a5 = Avx512F.FusedMultiplyAdd(a5, m, add);
            a6 = Avx512F.FusedMultiplyAdd(a6, m, add); a7 = Avx512F.FusedMultiplyAdd(a7, m, add);
            a8 = Avx512F.FusedMultiplyAdd(a8, m, add); a9 = Avx512F.FusedMultiplyAdd(a9, m, add);
            a10 = Avx512F.FusedMultiplyAdd(a10, m, add); a11 = Avx512F.FusedMultiplyAdd(a11, m, add);
        }
        var s = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8 + a9 + a10 + a11;
        return Vector512.Sum(s);
    }

    /// <summary>12 independent ymm FMA chains, for machines without AVX-512.</summary>
    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    static float Chains256(long iterations)
    {
        var m = Vector256.Create(0.999999f); var add = Vector256.Create(1e-7f);
        Vector256<float> a0 = Vector256.Create(1f), a1 = Vector256.Create(1.1f), a2 = Vector256.Create(1.2f),
            a3 = Vector256.Create(1.3f), a4 = Vector256.Create(1.4f), a5 = Vector256.Create(1.5f),
            a6 = Vector256.Create(1.6f), a7 = Vector256.Create(1.7f), a8 = Vector256.Create(1.8f),
            a9 = Vector256.Create(1.9f), a10 = Vector256.Create(2.0f), a11 = Vector256.Create(2.1f);
        for (long i = 0; i < iterations; i++)
        {
            a0 = Fma.MultiplyAdd(a0, m, add); a1 = Fma.MultiplyAdd(a1, m, add);
            a2 = Fma.MultiplyAdd(a2, m, add); a3 = Fma.MultiplyAdd(a3, m, add);
            a4 = Fma.MultiplyAdd(a4, m, add); a5 = Fma.MultiplyAdd(a5, m, add);
            a6 = Fma.MultiplyAdd(a6, m, add); a7 = Fma.MultiplyAdd(a7, m, add);
            a8 = Fma.MultiplyAdd(a8, m, add); a9 = Fma.MultiplyAdd(a9, m, add);
            a10 = Fma.MultiplyAdd(a10, m, add); a11 = Fma.MultiplyAdd(a11, m, add);
        }
        var s = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8 + a9 + a10 + a11;
        return Vector256.Sum(s);
    }
}
