using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using FeatureLens.Runtime.Tensors;

namespace FeatureLens.Runtime.Kernels;

/// <summary>
/// Copies blocks of the GEMM operands into the layouts the micro-kernels read, converting 16-bit
/// floats to float32 on the way (only a block at a time, never the whole matrix).
/// Packed B: a kc×nc block becomes ceil(nc/NR) panels; panel p holds row k at
/// dst[p·kc·NR + k·NR .. +NR), columns past nc are zero.
/// </summary>
internal static unsafe class GemmPacking
{
    /// <summary>
    /// Packs B[k0 .. k0+kc, n0 .. n0+nc) into NR-wide panels at <paramref name="dst"/>.
    /// <paramref name="scratch"/> holds max(nc, NR·kc) floats for 16-bit conversion;
    /// <paramref name="zeros"/> holds kc zero floats (the padding columns of the last panel).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void PackB(in MatrixView b, int k0, int kc, int n0, int nc, int nr,
                             float* dst, float* scratch, float* zeros)
    {
        if (b.ColStride == 1 || b.RowStride != 1 && b.ColStride <= b.RowStride)
            PackBRows(b, k0, kc, n0, nc, nr, dst, scratch);
        else
            PackBColumns(b, k0, kc, n0, nc, nr, dst, scratch, zeros);
    }

    /// <summary>B stored by rows (element (k, n) at k·RowStride + n·ColStride, ColStride usually 1): e.g. a GPT-2 Conv1D weight [K,N].</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void PackBRows(in MatrixView b, int k0, int kc, int n0, int nc, int nr, float* dst, float* scratch)
    {
        int panels = (nc + nr - 1) / nr;
        int size = b.DType.Size();
        for (int k = 0; k < kc; k++)
        {
            byte* rowStart = b.Pointer + ((k0 + k) * b.RowStride + n0 * b.ColStride) * size;
            float* src;
            if (b.DType == DType.F32 && b.ColStride == 1) src = (float*)rowStart;
            else
            {
                if (b.ColStride == 1) FloatConvert.ToF32(b.DType, rowStart, new Span<float>(scratch, nc), nc);
                else for (int j = 0; j < nc; j++) scratch[j] = FloatConvert.ReadAsF32(b.DType, rowStart, j * b.ColStride);
                src = scratch;
            }
            for (int p = 0; p < panels; p++)
            {
                float* d = dst + (nint)p * kc * nr + (nint)k * nr;
                float* s = src + p * nr;
                int cols = Math.Min(nr, nc - p * nr);
                if (cols == nr && nr == 32 && Vector512.IsHardwareAccelerated)
                {
                    Vector512.Load(s).Store(d);
                    Vector512.Load(s + 16).Store(d + 16);
                }
                else if (cols == nr && nr == 16 && Vector256.IsHardwareAccelerated)
                {
                    Vector256.Load(s).Store(d);
                    Vector256.Load(s + 8).Store(d + 8);
                }
                else
                {
                    int j = 0;
                    for (; j < cols; j++) d[j] = s[j];
                    for (; j < nr; j++) d[j] = 0f;
                }
            }
        }
    }

    /// <summary>
    /// B stored by columns (element (k, n) at k + n·ColStride): the transpose of a row-major [N,K]
    /// Linear weight. Each packed panel is a transpose of NR k-runs, done in 16×16 register blocks.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void PackBColumns(in MatrixView b, int k0, int kc, int n0, int nc, int nr, float* dst, float* scratch, float* zeros)
    {
        int panels = (nc + nr - 1) / nr;
        int size = b.DType.Size();
        float** runs = stackalloc float*[nr];
        for (int p = 0; p < panels; p++)
        {
            int cols = Math.Min(nr, nc - p * nr);
            for (int j = 0; j < nr; j++)
            {
                if (j >= cols) { runs[j] = zeros; continue; }
                byte* colStart = b.Pointer + (k0 * b.RowStride + (long)(n0 + p * nr + j) * b.ColStride) * size;
                if (b.DType == DType.F32 && b.RowStride == 1) runs[j] = (float*)colStart;
                else
                {
                    float* s = scratch + (nint)j * kc;
                    if (b.RowStride == 1) FloatConvert.ToF32(b.DType, colStart, new Span<float>(s, kc), kc);
                    else for (int k = 0; k < kc; k++) s[k] = FloatConvert.ReadAsF32(b.DType, colStart, k * b.RowStride);
                    runs[j] = s;
                }
            }
            float* d = dst + (nint)p * kc * nr;
            int kDone = 0;
            if (nr % 16 == 0 && Avx512F.IsSupported)
            {
                for (; kDone + 16 <= kc; kDone += 16)
                    for (int jg = 0; jg < nr; jg += 16)
                        Transpose16x16(runs + jg, kDone, d + (nint)kDone * nr + jg, nr);
            }
            for (int k = kDone; k < kc; k++)
            {
                float* row = d + (nint)k * nr;
                for (int j = 0; j < nr; j++) row[j] = runs[j][k];
            }
        }
    }

    /// <summary>dst[kk·ldd + j] = runs[j][k0 + kk] for j, kk in 0..15: a 16×16 transpose in zmm registers.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void Transpose16x16(float** runs, int k0, float* dst, int ldd)
    {
        // Stage 1: interleave pairs of rows within 128-bit lanes.
        var t0 = Vector512.Load(runs[0] + k0); var t1 = Vector512.Load(runs[1] + k0);
        var t2 = Vector512.Load(runs[2] + k0); var t3 = Vector512.Load(runs[3] + k0);
        var t4 = Vector512.Load(runs[4] + k0); var t5 = Vector512.Load(runs[5] + k0);
        var t6 = Vector512.Load(runs[6] + k0); var t7 = Vector512.Load(runs[7] + k0);
        var t8 = Vector512.Load(runs[8] + k0); var t9 = Vector512.Load(runs[9] + k0);
        var ta = Vector512.Load(runs[10] + k0); var tb = Vector512.Load(runs[11] + k0);
        var tc = Vector512.Load(runs[12] + k0); var td = Vector512.Load(runs[13] + k0);
        var te = Vector512.Load(runs[14] + k0); var tf = Vector512.Load(runs[15] + k0);

        var u0 = Avx512F.UnpackLow(t0, t1); var u1 = Avx512F.UnpackHigh(t0, t1);
        var u2 = Avx512F.UnpackLow(t2, t3); var u3 = Avx512F.UnpackHigh(t2, t3);
        var u4 = Avx512F.UnpackLow(t4, t5); var u5 = Avx512F.UnpackHigh(t4, t5);
        var u6 = Avx512F.UnpackLow(t6, t7); var u7 = Avx512F.UnpackHigh(t6, t7);
        var u8 = Avx512F.UnpackLow(t8, t9); var u9 = Avx512F.UnpackHigh(t8, t9);
        var ua = Avx512F.UnpackLow(ta, tb); var ub = Avx512F.UnpackHigh(ta, tb);
        var uc = Avx512F.UnpackLow(tc, td); var ud = Avx512F.UnpackHigh(tc, td);
        var ue = Avx512F.UnpackLow(te, tf); var uf = Avx512F.UnpackHigh(te, tf);

        // Stage 2: gather 4 rows per lane; q{g}{s}: rows 4g..4g+3, k ≡ s (mod 4) in each lane.
        var q00 = Avx512F.Shuffle(u0, u2, 0x44); var q01 = Avx512F.Shuffle(u0, u2, 0xEE);
        var q02 = Avx512F.Shuffle(u1, u3, 0x44); var q03 = Avx512F.Shuffle(u1, u3, 0xEE);
        var q10 = Avx512F.Shuffle(u4, u6, 0x44); var q11 = Avx512F.Shuffle(u4, u6, 0xEE);
        var q12 = Avx512F.Shuffle(u5, u7, 0x44); var q13 = Avx512F.Shuffle(u5, u7, 0xEE);
        var q20 = Avx512F.Shuffle(u8, ua, 0x44); var q21 = Avx512F.Shuffle(u8, ua, 0xEE);
        var q22 = Avx512F.Shuffle(u9, ub, 0x44); var q23 = Avx512F.Shuffle(u9, ub, 0xEE);
        var q30 = Avx512F.Shuffle(uc, ue, 0x44); var q31 = Avx512F.Shuffle(uc, ue, 0xEE);
        var q32 = Avx512F.Shuffle(ud, uf, 0x44); var q33 = Avx512F.Shuffle(ud, uf, 0xEE);

        // Stages 3-4: move 128-bit lanes so output k holds rows 0..15.
        Lanes(q00, q10, q20, q30, dst, 0, ldd);
        Lanes(q01, q11, q21, q31, dst, 1, ldd);
        Lanes(q02, q12, q22, q32, dst, 2, ldd);
        Lanes(q03, q13, q23, q33, dst, 3, ldd);
    }

    /// <summary>Lane l of g0..g3 holds rows 4g..4g+3 at k = 4l + s; writes outputs k = s, s+4, s+8, s+12.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void Lanes(Vector512<float> g0, Vector512<float> g1, Vector512<float> g2, Vector512<float> g3, float* dst, int s, int ldd)
    {
        var v0 = Avx512F.Shuffle4x128(g0, g1, 0x88); // g0.L0 g0.L2 g1.L0 g1.L2
        var v1 = Avx512F.Shuffle4x128(g0, g1, 0xDD); // g0.L1 g0.L3 g1.L1 g1.L3
        var v2 = Avx512F.Shuffle4x128(g2, g3, 0x88);
        var v3 = Avx512F.Shuffle4x128(g2, g3, 0xDD);
        Avx512F.Shuffle4x128(v0, v2, 0x88).Store(dst + (nint)s * ldd);        // lane 0: k = s
        Avx512F.Shuffle4x128(v1, v3, 0x88).Store(dst + (nint)(s + 4) * ldd);  // lane 1: k = s + 4
        Avx512F.Shuffle4x128(v0, v2, 0xDD).Store(dst + (nint)(s + 8) * ldd);  // lane 2: k = s + 8
        Avx512F.Shuffle4x128(v1, v3, 0xDD).Store(dst + (nint)(s + 12) * ldd); // lane 3: k = s + 12
    }

    /// <summary>
    /// Asks for A rows [i0, i0+mr) × [k0, k0+kc) to be brought into L2 while the current micro-panel
    /// computes: the rows are separate short streams (often 4 KiB apart) that the hardware prefetcher
    /// does not pick up in time.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void PrefetchA(in MatrixView a, int i0, int mr, int k0, int kc)
    {
        if (!Sse.IsSupported || a.ColStride != 1) return;
        int size = a.DType.Size();
        for (int r = 0; r < mr; r++)
        {
            byte* start = a.Pointer + ((i0 + r) * a.RowStride + k0) * size;
            for (int offset = 0; offset < kc * size; offset += 64) Sse.Prefetch1(start + offset);
        }
    }

    /// <summary>True when A is a float32 matrix stored by columns (Aᵀ of a row-major matrix): packed a row group at a time.</summary>
    public static bool PacksGroups(in MatrixView a) => a.ColStride != 1 && a.RowStride == 1 && a.DType == DType.F32;

    /// <summary>
    /// Copies a column-stored float32 A (see <see cref="PacksGroups"/>) into row-major dst [Rows, Cols] (leading
    /// dimension Cols) in 16×16 register transposes: done once, it spares the product from reading A 4 KiB apart per k.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void TransposeToRows(in MatrixView a, float* dst)
    {
        int m = a.Rows, k = a.Cols;
        float* src = (float*)a.Pointer; // A(i, kk) at src[i + kk·ColStride]
        float** runs = stackalloc float*[16];
        int kFull = Avx512F.IsSupported ? k / 16 * 16 : 0, mFull = Avx512F.IsSupported ? m / 16 * 16 : 0;
        for (int k0 = 0; k0 < kFull; k0 += 16)
        {
            for (int j = 0; j < 16; j++) runs[j] = src + (k0 + j) * a.ColStride;
            for (int i0 = 0; i0 < mFull; i0 += 16) Transpose16x16(runs, i0, dst + (long)i0 * k + k0, k);
        }
        for (int i = 0; i < m; i++)
        {
            float* d = dst + (long)i * k;
            for (int kk = i < mFull ? kFull : 0; kk < k; kk++) d[kk] = src[i + kk * a.ColStride];
        }
    }

    /// <summary>Floats between consecutive micro-panels packed by <see cref="PackAGroup"/> (MR·kc plus room for an 8-float store past the end).</summary>
    public static int GroupPanelStride(int kc) => GemmMicroKernels.MR * kc + 16;

    /// <summary>
    /// Packs A rows [i0, i0+rows) × [k0, k0+kc) of a column-stored A (see <see cref="PacksGroups"/>) as consecutive
    /// micro-panels: row i0+t·MR+r at dst[t·<see cref="GroupPanelStride"/>(kc) + k·MR + r]. Each k reads the group's
    /// rows as one contiguous run (instead of MR floats 4 KiB apart per micro-panel) and writes each panel's MR floats
    /// with one 8-float store, whose 2 extra floats the next k overwrites (the last k's land in the padding).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void PackAGroup(in MatrixView a, int i0, int rows, int k0, int kc, float* dst)
    {
        const int MR = GemmMicroKernels.MR;
        float* src = (float*)a.Pointer + i0 + (long)k0 * a.ColStride;
        int full = rows / MR, rest = rows - full * MR, stride = GroupPanelStride(kc);
        bool vector = Vector256.IsHardwareAccelerated;
        for (int k = 0; k < kc; k++)
        {
            float* s = src + (long)k * a.ColStride;
            float* d = dst + k * MR;
            int t = 0;
            // the 8-float load reads 2 floats past the tile: only when the next tile's rows exist in A
            if (vector)
                for (; t < full && (t + 1) * MR + 2 <= rows; t++)
                    Vector256.Load(s + t * MR).Store(d + (nint)t * stride);
            for (; t < full; t++)
            {
                float* st = s + t * MR, dt = d + (nint)t * stride;
                dt[0] = st[0]; dt[1] = st[1]; dt[2] = st[2]; dt[3] = st[3]; dt[4] = st[4]; dt[5] = st[5];
            }
            for (int r = 0; r < rest; r++) d[(nint)full * stride + r] = s[full * MR + r];
        }
    }

    /// <summary>Asks for the next group of a column-stored A (one short run 4 KiB apart per k, which the hardware prefetcher misses) to be brought into L2.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void PrefetchAGroup(in MatrixView a, int i0, int rows, int k0, int kc)
    {
        if (!Sse.IsSupported || rows <= 0) return;
        float* src = (float*)a.Pointer + i0 + (long)k0 * a.ColStride;
        for (int k = 0; k < kc; k++)
        {
            float* s = src + (long)k * a.ColStride;
            Sse.Prefetch1(s);
            Sse.Prefetch1(s + rows - 1);
        }
    }

    /// <summary>
    /// Copies A rows [i0, i0+mr) × [k0, k0+kc) into <paramref name="panel"/> (MR·kc floats, converting
    /// 16-bit values) and returns element strides (aRow, aK) such that A(i0+r, k0+k) = panel[r·aRow + k·aK].
    /// A stored by rows gives one contiguous k-run per row (aRow = kc; copying also keeps the rows
    /// from aliasing in L1 when the row stride is a multiple of 4 KiB); A stored by columns (Aᵀ·B)
    /// gives MR consecutive floats per k (aK = MR).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void PackA(in MatrixView a, int i0, int mr, int k0, int kc, float* panel, out nint aRow, out nint aK)
    {
        const int MR = GemmMicroKernels.MR;
        int size = a.DType.Size();
        if (a.ColStride == 1)
        {
            for (int r = 0; r < mr; r++)
            {
                byte* src = a.Pointer + ((i0 + r) * a.RowStride + k0) * size;
                var dst = new Span<float>(panel + r * kc, kc);
                if (a.DType == DType.F32) new ReadOnlySpan<float>(src, kc).CopyTo(dst);
                else FloatConvert.ToF32(a.DType, src, dst, kc);
            }
            aRow = kc; aK = 1;
            return;
        }
        if (a.DType == DType.F32 && a.RowStride == 1)
        {
            float* src = (float*)a.Pointer + i0 + k0 * a.ColStride;
            for (int k = 0; k < kc; k++)
            {
                float* s = src + k * a.ColStride;
                float* d = panel + k * MR;
                if (mr == MR) { d[0] = s[0]; d[1] = s[1]; d[2] = s[2]; d[3] = s[3]; d[4] = s[4]; d[5] = s[5]; }
                else for (int r = 0; r < mr; r++) d[r] = s[r];
            }
        }
        else
        {
            for (int k = 0; k < kc; k++)
                for (int r = 0; r < mr; r++)
                    panel[k * MR + r] = FloatConvert.ReadAsF32(a.DType, a.Pointer, (i0 + r) * a.RowStride + (k0 + k) * a.ColStride);
        }
        aRow = 1; aK = MR;
    }
}
