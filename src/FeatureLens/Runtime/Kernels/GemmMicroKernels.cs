using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace FeatureLens.Runtime.Kernels;

/// <summary>How many rows of A a micro-kernel instantiation handles (1..6); a struct so the JIT specialises each.</summary>
internal interface IGemmRows { static abstract int Count { get; } }
internal struct GemmRows1 : IGemmRows { public static int Count => 1; }
internal struct GemmRows2 : IGemmRows { public static int Count => 2; }
internal struct GemmRows3 : IGemmRows { public static int Count => 3; }
internal struct GemmRows4 : IGemmRows { public static int Count => 4; }
internal struct GemmRows5 : IGemmRows { public static int Count => 5; }
internal struct GemmRows6 : IGemmRows { public static int Count => 6; }

/// <summary>
/// Register-blocked GEMM micro-kernels: C[mr, NR] (=|+=) A[mr, kc]·Bp[kc, NR].
/// A element (r, k) is at a[r·aRow + k·aK] (a packed micro-panel or the caller's matrix itself);
/// Bp is a packed panel, row k at bp[k·NR .. k·NR+NR).
/// Every kernel computes each element of C the same way — acc = 0; acc = fma(A[r,k], B[k,j], acc)
/// for k = 0..kc-1 in order; then C = acc or C = C + acc — whatever the number of rows (mr) or valid
/// columns (nValid), so a row of C never depends on which other rows share its tile.
/// </summary>
internal static unsafe class GemmMicroKernels
{
    /// <summary>Rows per micro-tile (all paths).</summary>
    public const int MR = 6;

    /// <summary>Columns per packed B panel for each path: 2 zmm, 2 ymm, or 8 scalars.</summary>
    public static int PanelWidth(GemmPath path) => path switch
    {
        GemmPath.Vector512 => 32,
        GemmPath.Vector256 => 16,
        _ => 8,
    };

    /// <summary>Runs the micro-kernel of <paramref name="path"/> on an mr×NR tile (1 ≤ mr ≤ 6).</summary>
    public static void Run(GemmPath path, int mr, float* a, nint aRow, nint aK, float* bp, int kc,
                           float* c, nint ldc, int nValid, bool add)
    {
        if (path == GemmPath.Vector512)
        {
            switch (mr)
            {
                case 6: Tile512<GemmRows6>(a, aRow, aK, bp, kc, c, ldc, nValid, add); break;
                case 5: Tile512<GemmRows5>(a, aRow, aK, bp, kc, c, ldc, nValid, add); break;
                case 4: Tile512<GemmRows4>(a, aRow, aK, bp, kc, c, ldc, nValid, add); break;
                case 3: Tile512<GemmRows3>(a, aRow, aK, bp, kc, c, ldc, nValid, add); break;
                case 2: Tile512<GemmRows2>(a, aRow, aK, bp, kc, c, ldc, nValid, add); break;
                default: Tile512<GemmRows1>(a, aRow, aK, bp, kc, c, ldc, nValid, add); break;
            }
        }
        else if (path == GemmPath.Vector256)
        {
            switch (mr)
            {
                case 6: Tile256<GemmRows6>(a, aRow, aK, bp, kc, c, ldc, nValid, add); break;
                case 5: Tile256<GemmRows5>(a, aRow, aK, bp, kc, c, ldc, nValid, add); break;
                case 4: Tile256<GemmRows4>(a, aRow, aK, bp, kc, c, ldc, nValid, add); break;
                case 3: Tile256<GemmRows3>(a, aRow, aK, bp, kc, c, ldc, nValid, add); break;
                case 2: Tile256<GemmRows2>(a, aRow, aK, bp, kc, c, ldc, nValid, add); break;
                default: Tile256<GemmRows1>(a, aRow, aK, bp, kc, c, ldc, nValid, add); break;
            }
        }
        else TileScalar(mr, a, aRow, aK, bp, kc, c, ldc, nValid, add);
    }

    /// <summary>6×32 tile (mr ≤ 6 rows × 2 zmm): 12 independent FMA chains hide the FMA latency.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Tile512<R>(float* a, nint aRow, nint aK, float* bp, int kc, float* c, nint ldc, int nValid, bool add)
        where R : struct, IGemmRows
    {
        const int NR = 32;
        PrefetchTile(c, ldc, R.Count, NR);
        var c00 = Vector512<float>.Zero; var c01 = Vector512<float>.Zero;
        var c10 = Vector512<float>.Zero; var c11 = Vector512<float>.Zero;
        var c20 = Vector512<float>.Zero; var c21 = Vector512<float>.Zero;
        var c30 = Vector512<float>.Zero; var c31 = Vector512<float>.Zero;
        var c40 = Vector512<float>.Zero; var c41 = Vector512<float>.Zero;
        var c50 = Vector512<float>.Zero; var c51 = Vector512<float>.Zero;
        nint r1 = aRow, r2 = 2 * aRow, r3 = 3 * aRow, r4 = 4 * aRow, r5 = 5 * aRow;
        float* p = a;
        float* b = bp;
        for (int k = 0; k < kc; k++)
        {
            var b0 = Vector512.Load(b);
            var b1 = Vector512.Load(b + 16);
            Vector512<float> x;
            x = Vector512.Create(p[0]); c00 = Avx512F.FusedMultiplyAdd(x, b0, c00); c01 = Avx512F.FusedMultiplyAdd(x, b1, c01);
            if (R.Count > 1) { x = Vector512.Create(p[r1]); c10 = Avx512F.FusedMultiplyAdd(x, b0, c10); c11 = Avx512F.FusedMultiplyAdd(x, b1, c11); }
            if (R.Count > 2) { x = Vector512.Create(p[r2]); c20 = Avx512F.FusedMultiplyAdd(x, b0, c20); c21 = Avx512F.FusedMultiplyAdd(x, b1, c21); }
            if (R.Count > 3) { x = Vector512.Create(p[r3]); c30 = Avx512F.FusedMultiplyAdd(x, b0, c30); c31 = Avx512F.FusedMultiplyAdd(x, b1, c31); }
            if (R.Count > 4) { x = Vector512.Create(p[r4]); c40 = Avx512F.FusedMultiplyAdd(x, b0, c40); c41 = Avx512F.FusedMultiplyAdd(x, b1, c41); }
            if (R.Count > 5) { x = Vector512.Create(p[r5]); c50 = Avx512F.FusedMultiplyAdd(x, b0, c50); c51 = Avx512F.FusedMultiplyAdd(x, b1, c51); }
            p += aK;
            b += NR;
        }

        if (nValid == NR)
        {
            // All loads of C before any store: with a row stride of 4 KiB a store followed by a load of
            // the next row looks like a dependency to the CPU (4K aliasing) and would stall.
            if (add)
            {
                c00 += Vector512.Load(c); c01 += Vector512.Load(c + 16);
                if (R.Count > 1) { c10 += Vector512.Load(c + ldc); c11 += Vector512.Load(c + ldc + 16); }
                if (R.Count > 2) { c20 += Vector512.Load(c + 2 * ldc); c21 += Vector512.Load(c + 2 * ldc + 16); }
                if (R.Count > 3) { c30 += Vector512.Load(c + 3 * ldc); c31 += Vector512.Load(c + 3 * ldc + 16); }
                if (R.Count > 4) { c40 += Vector512.Load(c + 4 * ldc); c41 += Vector512.Load(c + 4 * ldc + 16); }
                if (R.Count > 5) { c50 += Vector512.Load(c + 5 * ldc); c51 += Vector512.Load(c + 5 * ldc + 16); }
            }
            c00.Store(c); c01.Store(c + 16);
            if (R.Count > 1) { c10.Store(c + ldc); c11.Store(c + ldc + 16); }
            if (R.Count > 2) { c20.Store(c + 2 * ldc); c21.Store(c + 2 * ldc + 16); }
            if (R.Count > 3) { c30.Store(c + 3 * ldc); c31.Store(c + 3 * ldc + 16); }
            if (R.Count > 4) { c40.Store(c + 4 * ldc); c41.Store(c + 4 * ldc + 16); }
            if (R.Count > 5) { c50.Store(c + 5 * ldc); c51.Store(c + 5 * ldc + 16); }
            return;
        }
        // Right edge: spill the tile and copy the valid columns with the same arithmetic.
        float* t = stackalloc float[MR * NR];
        c00.Store(t); c01.Store(t + 16);
        if (R.Count > 1) { c10.Store(t + NR); c11.Store(t + NR + 16); }
        if (R.Count > 2) { c20.Store(t + 2 * NR); c21.Store(t + 2 * NR + 16); }
        if (R.Count > 3) { c30.Store(t + 3 * NR); c31.Store(t + 3 * NR + 16); }
        if (R.Count > 4) { c40.Store(t + 4 * NR); c41.Store(t + 4 * NR + 16); }
        if (R.Count > 5) { c50.Store(t + 5 * NR); c51.Store(t + 5 * NR + 16); }
        StoreEdge(t, NR, R.Count, c, ldc, nValid, add);
    }

    /// <summary>Starts fetching the C tile so its update after the k loop does not wait on memory.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void PrefetchTile(float* c, nint ldc, int rows, int nr)
    {
        if (!Sse.IsSupported) return;
        for (int r = 0; r < rows; r++)
        {
            Sse.Prefetch0(c + r * ldc);
            Sse.Prefetch0(c + r * ldc + nr - 1);
        }
    }

    /// <summary>6×16 tile (mr ≤ 6 rows × 2 ymm) for AVX2+FMA machines.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Tile256<R>(float* a, nint aRow, nint aK, float* bp, int kc, float* c, nint ldc, int nValid, bool add)
        where R : struct, IGemmRows
    {
        const int NR = 16;
        PrefetchTile(c, ldc, R.Count, NR);
        var c00 = Vector256<float>.Zero; var c01 = Vector256<float>.Zero;
        var c10 = Vector256<float>.Zero; var c11 = Vector256<float>.Zero;
        var c20 = Vector256<float>.Zero; var c21 = Vector256<float>.Zero;
        var c30 = Vector256<float>.Zero; var c31 = Vector256<float>.Zero;
        var c40 = Vector256<float>.Zero; var c41 = Vector256<float>.Zero;
        var c50 = Vector256<float>.Zero; var c51 = Vector256<float>.Zero;
        nint r1 = aRow, r2 = 2 * aRow, r3 = 3 * aRow, r4 = 4 * aRow, r5 = 5 * aRow;
        float* p = a;
        float* b = bp;
        for (int k = 0; k < kc; k++)
        {
            var b0 = Vector256.Load(b);
            var b1 = Vector256.Load(b + 8);
            Vector256<float> x;
            x = Vector256.Create(p[0]); c00 = Fma.MultiplyAdd(x, b0, c00); c01 = Fma.MultiplyAdd(x, b1, c01);
            if (R.Count > 1) { x = Vector256.Create(p[r1]); c10 = Fma.MultiplyAdd(x, b0, c10); c11 = Fma.MultiplyAdd(x, b1, c11); }
            if (R.Count > 2) { x = Vector256.Create(p[r2]); c20 = Fma.MultiplyAdd(x, b0, c20); c21 = Fma.MultiplyAdd(x, b1, c21); }
            if (R.Count > 3) { x = Vector256.Create(p[r3]); c30 = Fma.MultiplyAdd(x, b0, c30); c31 = Fma.MultiplyAdd(x, b1, c31); }
            if (R.Count > 4) { x = Vector256.Create(p[r4]); c40 = Fma.MultiplyAdd(x, b0, c40); c41 = Fma.MultiplyAdd(x, b1, c41); }
            if (R.Count > 5) { x = Vector256.Create(p[r5]); c50 = Fma.MultiplyAdd(x, b0, c50); c51 = Fma.MultiplyAdd(x, b1, c51); }
            p += aK;
            b += NR;
        }

        if (nValid == NR)
        {
            // All loads of C before any store: with a row stride of 4 KiB a store followed by a load of
            // the next row looks like a dependency to the CPU (4K aliasing) and would stall.
            if (add)
            {
                c00 += Vector256.Load(c); c01 += Vector256.Load(c + 8);
                if (R.Count > 1) { c10 += Vector256.Load(c + ldc); c11 += Vector256.Load(c + ldc + 8); }
                if (R.Count > 2) { c20 += Vector256.Load(c + 2 * ldc); c21 += Vector256.Load(c + 2 * ldc + 8); }
                if (R.Count > 3) { c30 += Vector256.Load(c + 3 * ldc); c31 += Vector256.Load(c + 3 * ldc + 8); }
                if (R.Count > 4) { c40 += Vector256.Load(c + 4 * ldc); c41 += Vector256.Load(c + 4 * ldc + 8); }
                if (R.Count > 5) { c50 += Vector256.Load(c + 5 * ldc); c51 += Vector256.Load(c + 5 * ldc + 8); }
            }
            c00.Store(c); c01.Store(c + 8);
            if (R.Count > 1) { c10.Store(c + ldc); c11.Store(c + ldc + 8); }
            if (R.Count > 2) { c20.Store(c + 2 * ldc); c21.Store(c + 2 * ldc + 8); }
            if (R.Count > 3) { c30.Store(c + 3 * ldc); c31.Store(c + 3 * ldc + 8); }
            if (R.Count > 4) { c40.Store(c + 4 * ldc); c41.Store(c + 4 * ldc + 8); }
            if (R.Count > 5) { c50.Store(c + 5 * ldc); c51.Store(c + 5 * ldc + 8); }
            return;
        }
        float* t = stackalloc float[MR * NR];
        c00.Store(t); c01.Store(t + 8);
        if (R.Count > 1) { c10.Store(t + NR); c11.Store(t + NR + 8); }
        if (R.Count > 2) { c20.Store(t + 2 * NR); c21.Store(t + 2 * NR + 8); }
        if (R.Count > 3) { c30.Store(t + 3 * NR); c31.Store(t + 3 * NR + 8); }
        if (R.Count > 4) { c40.Store(t + 4 * NR); c41.Store(t + 4 * NR + 8); }
        if (R.Count > 5) { c50.Store(t + 5 * NR); c51.Store(t + 5 * NR + 8); }
        StoreEdge(t, NR, R.Count, c, ldc, nValid, add);
    }

    /// <summary>Portable fallback: an mr×8 tile in scalar code, same per-element order (multiply then add).</summary>
    static void TileScalar(int mr, float* a, nint aRow, nint aK, float* bp, int kc, float* c, nint ldc, int nValid, bool add)
    {
        const int NR = 8;
        float* t = stackalloc float[MR * NR];
        new Span<float>(t, MR * NR).Clear();
        for (int k = 0; k < kc; k++)
        {
            float* b = bp + (nint)k * NR;
            for (int r = 0; r < mr; r++)
            {
                float x = a[r * aRow + k * aK];
                float* acc = t + r * NR;
                for (int j = 0; j < NR; j++) acc[j] += x * b[j];
            }
        }
        StoreEdge(t, NR, mr, c, ldc, nValid, add);
    }

    /// <summary>Writes the first <paramref name="nValid"/> columns of an mr×nr tile spilled to <paramref name="t"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void StoreEdge(float* t, int nr, int mr, float* c, nint ldc, int nValid, bool add)
    {
        for (int r = 0; r < mr; r++)
        {
            float* src = t + r * nr;
            float* dst = c + r * ldc;
            if (add) for (int j = 0; j < nValid; j++) dst[j] += src[j];
            else for (int j = 0; j < nValid; j++) dst[j] = src[j];
        }
    }
}
