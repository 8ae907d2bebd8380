using System.Collections.Concurrent;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using FeatureLens.Runtime.Tensors;

namespace FeatureLens.Runtime.Kernels;

/// <summary>Which micro-kernel the GEMM uses. Auto picks the widest the CPU supports.</summary>
public enum GemmPath { Auto, Vector512, Vector256, Scalar }

/// <summary>
/// float32 matrix multiplication C[M,N] = A[M,K]·B[K,N] (+ C when accumulating).
/// A and B are strided views (<see cref="MatrixView"/>), so Aᵀ·B and A·Bᵀ are the same call on
/// transposed views; A and B may be F32, F16 or BF16 (converted a block at a time while packing).
/// </summary>
/// <remarks>
/// GotoBLAS/BLIS structure. The columns of C are cut into chunks of at most <see cref="NCMax"/>;
/// worker threads take chunks in turn. For each chunk and each KC-deep slice of K, B[kc, nc] is
/// packed into NR-wide panels (about half of a core's L2), then every MR-row micro-panel of A
/// (kept in L1) sweeps across those panels with a register-blocked micro-kernel.
/// Each element of C is summed the same way wherever it falls: k in order within a KC slice
/// (one FMA chain), the slices added to C in order, and KC depends on K only. So a row of C does
/// not depend on M, on the other rows, on the thread count or on scheduling — a sequence gives
/// bit-identical results alone or in a batch, run after run.
/// </remarks>
public static unsafe class Gemm
{
    /// <summary>Forces a kernel path (tests and benchmarks); Auto by default.</summary>
    public static GemmPath Path { get; set; } = GemmPath.Auto;

    /// <summary>Worker threads (default: all cores).</summary>
    public static int Threads { get; set; } = Environment.ProcessorCount;

    /// <summary>Deepest K slice summed in registers before C is updated (the packed panel height).</summary>
    internal const int KCMax = 256;
    /// <summary>Widest column chunk of C a worker packs for itself (column mode; packed B is KC·NC floats, 512 KiB).</summary>
    internal const int NCMax = 512;
    /// <summary>
    /// Column chunk width: the packed B block (KC × width floats, two of them in row mode) takes at most half of a
    /// core's L2 as this CPU reports it (256 columns on a 1 MiB L2), within [64, <see cref="NCMax"/>].
    /// </summary>
    internal static readonly int ChunkCols = Math.Clamp(CpuInfo.Current.L2Bytes / 2 / 2 / (KCMax * sizeof(float)) / 64 * 64, 64, NCMax);
    /// <summary>Column mode: chunks per worker thread aimed for (dynamic load balance), and their least width.</summary>
    const int ColumnChunksPerThread = 4, MinChunkCols = 128;
    /// <summary>Row mode: micro-tiles per row group, row groups per worker per phase needed to choose it, B panels per packing item.</summary>
    const int GroupTiles = 4, RowModeGroupsPerThread = 4, PackPanelsPerItem = 2;
    /// <summary>A stored by columns is copied to rows first when it has at most this many elements (64 MiB).</summary>
    const long TransposeAMaxElements = 1L << 24;
    /// <summary>At most this many rows of A take the transposed schedule when B is a weight stored by rows.</summary>
    const int TransposedMaxRows = 64;
    /// <summary>Below this many FLOPs (and this much of B) one thread does the whole product.</summary>
    const double SingleThreadFlops = 4e6;
    const long SingleThreadBElements = 1 << 18;

    /// <summary>C[M,N] (row-major, leading dimension ldc) = A·B, or += when <paramref name="accumulate"/>. C must not overlap A or B.</summary>
    public static void Multiply(MatrixView a, MatrixView b, float* c, int ldc, bool accumulate = false) =>
        Multiply(a, b, c, ldc, accumulate, Path, Threads);

    /// <summary>
    /// Packs B [K, N] once into the micro-kernel's panel layout, for products with many different A (e.g. an SAE
    /// encoder applied to batch after batch): <see cref="Multiply(MatrixView, PackedMatrix, float*, int, bool)"/> then
    /// skips re-packing B, which dominates when A has few rows. The result is bit-identical to the unpacked product.
    /// </summary>
    public static PackedMatrix Pack(MatrixView b)
    {
        var path = Resolve(Path);
        int k = b.Rows, n = b.Cols, nr = GemmMicroKernels.PanelWidth(path), kc = SliceDepth(Math.Max(1, k));
        int panels = (n + nr - 1) / nr;
        var packed = new PackedMatrix(k, n, path, nr, kc, panels);
        var buffers = GemmBuffers.Rent();
        try
        {
            for (int k0 = 0; k0 < k; k0 += kc)
            {
                int depth = Math.Min(kc, k - k0);
                for (int n0 = 0; n0 < n; n0 += NCMax)
                    GemmPacking.PackB(b, k0, depth, n0, Math.Min(NCMax, n - n0), nr, packed.PanelPointer(k0, depth, n0), buffers.Scratch, buffers.Zeros);
            }
        }
        finally { GemmBuffers.Return(buffers); }
        return packed;
    }

    /// <summary>C[M,N] = A·B (or +=) with B packed by <see cref="Pack"/>.</summary>
    public static void Multiply(MatrixView a, PackedMatrix b, float* c, int ldc, bool accumulate = false)
    {
        ObjectDisposedException.ThrowIf(b.IsDisposed, b);
        if (a.Cols != b.Rows) throw new ArgumentException($"GEMM inner dimensions differ: A is [{a.Rows},{a.Cols}], packed B is [{b.Rows},{b.Cols}]");
        if (ldc < b.Cols) throw new ArgumentException($"GEMM ldc {ldc} is smaller than N = {b.Cols}");
        int m = a.Rows, n = b.Cols, k = a.Cols;
        if (m == 0 || n == 0) return;
        if (c == null) throw new ArgumentException($"GEMM output pointer is null for C [{m},{n}]");
        if (k == 0)
        {
            if (!accumulate) for (int i = 0; i < m; i++) new Span<float>(c + (long)i * ldc, n).Clear();
            return;
        }
        // the view of B is only used for its shape when B is packed
        var shape = new MatrixView(null, DType.F32, k, n, n, 1);
        new GemmJob(a, shape, c, ldc, accumulate, b.Path, Threads, b).Run();
        GC.KeepAlive(b);
    }

    /// <summary>As <see cref="Multiply(MatrixView, MatrixView, float*, int, bool)"/> with an explicit path and thread count (no global state).</summary>
    internal static void Multiply(MatrixView a, MatrixView b, float* c, int ldc, bool accumulate, GemmPath path, int threads)
    {
        if (a.Cols != b.Rows)
            throw new ArgumentException($"GEMM inner dimensions differ: A is [{a.Rows},{a.Cols}], B is [{b.Rows},{b.Cols}]");
        if (a.Rows < 0 || b.Cols < 0 || a.Cols < 0)
            throw new ArgumentException($"GEMM shapes must be non-negative: A is [{a.Rows},{a.Cols}], B is [{b.Rows},{b.Cols}]");
        if (ldc < b.Cols)
            throw new ArgumentException($"GEMM ldc {ldc} is smaller than N = {b.Cols} (A is [{a.Rows},{a.Cols}], B is [{b.Rows},{b.Cols}])");
        int m = a.Rows, n = b.Cols, k = a.Cols;
        if (m == 0 || n == 0) return;
        if (c == null) throw new ArgumentException($"GEMM output pointer is null for C [{m},{n}]");
        if (threads < 1) throw new ArgumentException($"GEMM thread count must be at least 1, got {threads}");
        path = Resolve(path);
        if (k == 0)
        {
            if (!accumulate)
                for (int i = 0; i < m; i++) new Span<float>(c + (long)i * ldc, n).Clear();
            return;
        }
        if (GemmPacking.PacksGroups(a) && m >= 16 && n >= 64 && (long)m * k <= TransposeAMaxElements)
        {
            // Aᵀ·B with A stored by columns: one transposing copy of A, then the row-major product (same values, same sums)
            float[] rows = PinnedPool.Rent(m * k + 16);
            try
            {
                fixed (float* pr = rows)
                {
                    float* aligned = (float*)(((nint)pr + 63) & ~(nint)63);
                    GemmPacking.TransposeToRows(a, aligned);
                    new GemmJob(MatrixView.F32(aligned, m, k), b, c, ldc, accumulate, path, threads).Run();
                }
            }
            finally { PinnedPool.Return(rows); }
            return;
        }
        var job = new GemmJob(a, b, c, ldc, accumulate, path, threads);
        job.Run();
    }

    /// <summary>The concrete path for a request: Auto → the widest supported; a forced unsupported path throws.</summary>
    internal static GemmPath Resolve(GemmPath path)
    {
        bool v512 = Avx512F.IsSupported && Vector512.IsHardwareAccelerated;
        bool v256 = Fma.IsSupported && Avx.IsSupported;
        return path switch
        {
            GemmPath.Auto => v512 ? GemmPath.Vector512 : v256 ? GemmPath.Vector256 : GemmPath.Scalar,
            GemmPath.Vector512 when !v512 => throw new PlatformNotSupportedException("GEMM path Vector512 needs AVX-512F, which this CPU lacks"),
            GemmPath.Vector256 when !v256 => throw new PlatformNotSupportedException("GEMM path Vector256 needs AVX2 FMA, which this CPU lacks"),
            _ => path,
        };
    }

    /// <summary>True when <paramref name="path"/> can run on this CPU.</summary>
    internal static bool IsSupported(GemmPath path)
    {
        try { Resolve(path); return true; }
        catch (PlatformNotSupportedException) { return false; }
    }

    /// <summary>C[m,n] = A[m,k]·B[k,n], all row-major float32.</summary>
    public static void MatMul(ReadOnlySpan<float> a, ReadOnlySpan<float> b, Span<float> c, int m, int k, int n, bool accumulate = false)
    {
        CheckDims(m, k, n);
        Check(a.Length, (long)m * k, "A", $"[{m},{k}]"); Check(b.Length, (long)k * n, "B", $"[{k},{n}]"); Check(c.Length, (long)m * n, "C", $"[{m},{n}]");
        fixed (float* pa = a) fixed (float* pb = b) fixed (float* pc = c)
            Multiply(MatrixView.F32(pa, m, k), MatrixView.F32(pb, k, n), pc, n, accumulate);
    }

    /// <summary>C[m,n] = A[m,k]·Bᵀ where B is [n,k] row-major (a Linear layer's weight).</summary>
    public static void MatMulTransB(ReadOnlySpan<float> a, ReadOnlySpan<float> b, Span<float> c, int m, int k, int n, bool accumulate = false)
    {
        CheckDims(m, k, n);
        Check(a.Length, (long)m * k, "A", $"[{m},{k}]"); Check(b.Length, (long)n * k, "B", $"[{n},{k}]"); Check(c.Length, (long)m * n, "C", $"[{m},{n}]");
        fixed (float* pa = a) fixed (float* pb = b) fixed (float* pc = c)
            Multiply(MatrixView.F32(pa, m, k), MatrixView.F32(pb, n, k).T, pc, n, accumulate);
    }

    /// <summary>C[m,n] = Aᵀ·B where A is [k,m] and B is [k,n] row-major (weight gradients).</summary>
    public static void MatMulTransA(ReadOnlySpan<float> a, ReadOnlySpan<float> b, Span<float> c, int m, int k, int n, bool accumulate = false)
    {
        CheckDims(m, k, n);
        Check(a.Length, (long)k * m, "A", $"[{k},{m}]"); Check(b.Length, (long)k * n, "B", $"[{k},{n}]"); Check(c.Length, (long)m * n, "C", $"[{m},{n}]");
        fixed (float* pa = a) fixed (float* pb = b) fixed (float* pc = c)
            Multiply(MatrixView.F32(pa, k, m).T, MatrixView.F32(pb, k, n), pc, n, accumulate);
    }

    static void CheckDims(int m, int k, int n)
    {
        if (m < 0 || k < 0 || n < 0) throw new ArgumentException($"GEMM dimensions must be non-negative: m={m}, k={k}, n={n}");
    }

    static void Check(int have, long need, string what, string shape)
    {
        if (have < need) throw new ArgumentException($"GEMM operand {what} {shape} needs {need} elements, has {have}");
    }

    /// <summary>K slice depth for a given K: the slices are as even as possible and depend on K alone.</summary>
    internal static int SliceDepth(int k)
    {
        int slices = (k + KCMax - 1) / KCMax;
        return (k + slices - 1) / slices;
    }

    /// <summary>
    /// One multiplication split into work items that worker threads take in turn — no barrier anywhere: a worker waits
    /// only for an item another worker has already taken (so it is running), never for a worker to arrive, and a
    /// worker that never starts (a busy thread pool) leaves its share to the others.
    /// </summary>
    /// <remarks>
    /// Two schedules, chosen by M. Many rows (row mode): the product runs in phases, one per (column chunk, K slice);
    /// each phase's B block is packed once into a buffer the workers share (two buffers, so a worker that runs out of
    /// rows packs the next phase while the others finish), and the rows are dealt out in groups of a few micro-tiles,
    /// so the two cores stay busy to the end of every phase however uneven their speed. A row group's K slices are
    /// applied in order (a group waits for its previous slice if another worker still has it). Few rows (column
    /// mode): workers take whole column chunks (all rows, all K), each packing its own B.
    /// </remarks>
    sealed class GemmJob
    {
        readonly MatrixView a, b;
        readonly float* c;
        readonly int ldc, m, n, k, kcDepth, nr, threads;
        readonly bool accumulate;
        readonly GemmPath path;
        readonly PackedMatrix? packed;

        // column mode
        readonly int chunkCols, nChunks, chunkRows, mChunks;
        int next = -1;

        // transposed mode: Cᵀ = Bᵀ·Aᵀ, the rows of a column-stored B (a Linear weight's rows) as the micro-kernel's A
        readonly bool transposed;
        readonly GemmPath tPath;
        readonly int tNr, tPanels, tSliceStride;
        float[]? tPacked;

        // row mode
        readonly bool rowMode;
        readonly int nc, slices, phases, groups, groupRows;
        readonly int[]? packNext, packDone, computeNext, computeDone, groupDone;
        SharedPanels? shared;

        public GemmJob(MatrixView a, MatrixView b, float* c, int ldc, bool accumulate, GemmPath path, int threads, PackedMatrix? packed = null)
        {
            const int MR = GemmMicroKernels.MR;
            this.a = a; this.b = b; this.c = c; this.ldc = ldc; this.accumulate = accumulate; this.path = path; this.packed = packed;
            m = a.Rows; n = b.Cols; k = a.Cols;
            kcDepth = SliceDepth(k);
            nr = GemmMicroKernels.PanelWidth(path);
            if (2.0 * m * n * k < SingleThreadFlops && (long)k * n < SingleThreadBElements) threads = 1;
            int tiles = (m + MR - 1) / MR;
            int panels = (n + nr - 1) / nr;
            const int groupRows0 = GroupTiles * MR;

            // Few rows times a Linear weight stored by rows (A·Wᵀ, decode and per-head products): packing W would cost
            // as much as the arithmetic, so multiply the other way round — W's rows are read as they lie and only the
            // few rows of A are packed, once. Each element of C is still one FMA chain over k in order per K slice
            // (fma(w, x, acc) = fma(x, w, acc)), slices added in order: bit-identical to the other schedules.
            if (packed == null && path != GemmPath.Scalar && m <= TransposedMaxRows && b.ColStride != 1 && b.RowStride == 1)
            {
                transposed = true;
                // 16-column tiles for up to 16 rows where 256-bit FMAs run at the 512-bit rate (double-pumped AVX-512)
                tPath = m <= 16 && (path == GemmPath.Vector256 || CpuInfo.Current.Avx512DoublePumped) && Gemm.IsSupported(GemmPath.Vector256) ? GemmPath.Vector256 : path;
                tNr = GemmMicroKernels.PanelWidth(tPath);
                tPanels = (m + tNr - 1) / tNr;
                tSliceStride = tPanels * kcDepth * tNr;
                groups = (n + groupRows0 - 1) / groupRows0;
                groupRows = groupRows0;
                this.threads = Math.Min(threads, groups);
                return;
            }

            // Row mode when there are enough row groups for every worker to take several in each phase.
            groupRows = groupRows0;
            groups = (m + groupRows - 1) / groupRows;
            if (threads > 1 && groups >= RowModeGroupsPerThread * threads)
            {
                rowMode = true;
                nc = Math.Max(nr, ChunkCols / nr * nr);
                slices = (k + kcDepth - 1) / kcDepth;
                phases = (n + nc - 1) / nc * slices;
                packNext = new int[phases]; packDone = new int[phases];
                computeNext = new int[phases]; computeDone = new int[phases];
                groupDone = new int[groups];
                Array.Fill(groupDone, -1);
                this.threads = threads;
                return;
            }

            // Column chunks: whole panels, at most the chunk width. With several threads, aim for a few chunks per
            // thread so that a thread slowed by other work on its core leaves its share to the others.
            int perChunk = Math.Max(1, ChunkCols / nr);
            int chunks = (panels + perChunk - 1) / perChunk;
            if (threads > 1 && panels >= threads)
            {
                int wanted = Math.Min(threads * ColumnChunksPerThread, Math.Max(threads, panels * nr / MinChunkCols));
                chunks = Math.Min(panels, (Math.Max(chunks, wanted) + threads - 1) / threads * threads);
            }
            int panelsPerChunk = (panels + chunks - 1) / chunks;
            chunkCols = panelsPerChunk * nr;
            nChunks = (n + chunkCols - 1) / chunkCols;

            // Too few columns for every thread: also cut the rows (in whole micro-tiles).
            mChunks = nChunks < threads ? Math.Min(tiles, threads) : 1;
            chunkRows = (tiles + mChunks - 1) / mChunks * MR;
            mChunks = (m + chunkRows - 1) / chunkRows;
            this.threads = Math.Min(threads, nChunks * mChunks);
        }

        public void Run()
        {
            if (transposed) PackRowsOfA();
            if (rowMode && packed == null) shared = SharedPanels.Rent(nc);
            try
            {
                if (threads == 1) Work(0);
                else Parallel.For(0, threads, new ParallelOptions { MaxDegreeOfParallelism = threads }, Work);
            }
            finally
            {
                if (shared != null) SharedPanels.Return(shared);
                if (tPacked != null) PinnedPool.Return(tPacked);
            }
        }

        void Work(int worker)
        {
            var buffers = GemmBuffers.Rent();
            try
            {
                if (rowMode) { WorkRows(buffers); return; }
                if (transposed) { WorkTransposed(buffers); return; }
                int item;
                while ((item = Interlocked.Increment(ref next)) < nChunks * mChunks)
                {
                    int n0 = item % nChunks * chunkCols, i0 = item / nChunks * chunkRows;
                    Block(i0, Math.Min(m, i0 + chunkRows), n0, Math.Min(n, n0 + chunkCols), buffers);
                }
            }
            finally { GemmBuffers.Return(buffers); }
        }

        /// <summary>Transposed mode: Aᵀ packed once, every K slice, as the micro-kernel's B panels (tNr columns = rows of A).</summary>
        void PackRowsOfA()
        {
            int slices = (k + kcDepth - 1) / kcDepth;
            tPacked = PinnedPool.Rent(slices * tSliceStride + 16);
            var buffers = GemmBuffers.Rent();
            try
            {
                fixed (float* dst = tPacked)
                    for (int s = 0; s < slices; s++)
                    {
                        int k0 = s * kcDepth, kc = Math.Min(kcDepth, k - k0);
                        GemmPacking.PackB(a.T, k0, kc, 0, m, tNr, Aligned(dst) + (nint)s * tSliceStride, buffers.Scratch, buffers.Zeros);
                    }
            }
            finally { GemmBuffers.Return(buffers); }
        }

        static float* Aligned(float* p) => (float*)(((nint)p + 63) & ~(nint)63);

        /// <summary>
        /// Transposed mode: workers take groups of B's columns (rows of the stored weight) and build the group's block of
        /// Cᵀ in a scratch tile over all K slices in order (starting from Cᵀ when accumulating, so every element is
        /// ((C + slice 0) + slice 1) + … exactly as the other schedules add), then write it into C transposed, once.
        /// </summary>
        [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
        void WorkTransposed(GemmBuffers buf)
        {
            const int MR = GemmMicroKernels.MR;
            var w = b.T; // [N, K]: row j of the weight is column j of B
            int ldS = tPanels * tNr;
            float* scratch = buf.Scratch; // groupRows × ldS floats (≤ 24 × 64)
            bool direct = w.DType == DType.F32 && w.ColStride == 1 && w.RowStride * sizeof(float) % 1024 != 0;
            fixed (float* pinned = tPacked)
            {
                float* xPacked = Aligned(pinned);
                int g;
                while ((g = Interlocked.Increment(ref next)) < groups)
                {
                    int j0 = g * groupRows, j1 = Math.Min(n, j0 + groupRows);
                    if (accumulate)
                        for (int j = j0; j < j1; j++)
                            for (int i = 0; i < m; i++) scratch[(j - j0) * ldS + i] = c[(long)i * ldc + j];
                    for (int k0 = 0, s = 0; k0 < k; k0 += kcDepth, s++)
                    {
                        int kc = Math.Min(kcDepth, k - k0);
                        bool add = accumulate || k0 > 0;
                        for (int j = j0; j < j1; j += MR)
                        {
                            int mr = Math.Min(MR, j1 - j);
                            float* panel = buf.PackedA;
                            nint aRow, aK;
                            // the weight streams from L3 or memory: ask for the next rows while these compute
                            int jn = j + MR < j1 ? j + MR : j1 < n ? j1 : -1;
                            if (jn >= 0) GemmPacking.PrefetchA(w, jn, Math.Min(MR, n - jn), k0, kc);
                            // float32 rows are read where they lie unless their stride makes them alias in L1
                            if (direct) { panel = (float*)w.Pointer + j * w.RowStride + k0; aRow = (nint)w.RowStride; aK = 1; }
                            else GemmPacking.PackA(w, j, mr, k0, kc, panel, out aRow, out aK);
                            float* sRow = scratch + (j - j0) * ldS;
                            for (int q = 0; q < tPanels; q++)
                                GemmMicroKernels.Run(tPath, mr, panel, aRow, aK, xPacked + (nint)s * tSliceStride + (nint)q * kc * tNr, kc, sRow + q * tNr, ldS, tNr, add);
                        }
                    }
                    int width = j1 - j0;
                    for (int i = 0; i < m; i++)
                    {
                        float* dst = c + (long)i * ldc + j0;
                        for (int r = 0; r < width; r++) dst[r] = scratch[r * ldS + i];
                    }
                }
            }
        }

        /// <summary>Row mode: every phase in order; pack what is left of the phase's B block, then take row groups.</summary>
        [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
        void WorkRows(GemmBuffers buf)
        {
            for (int p = 0; p < phases; p++)
            {
                int chunk = p / slices, s = p % slices;
                int n0 = chunk * nc, ncw = Math.Min(nc, n - n0);
                int k0 = s * kcDepth, kc = Math.Min(kcDepth, k - k0);
                int panels = (ncw + nr - 1) / nr;
                float* bp;
                if (packed != null) bp = packed.PanelPointer(k0, kc, n0);
                else
                {
                    bp = shared!.Buffer(p & 1);
                    int items = (panels + PackPanelsPerItem - 1) / PackPanelsPerItem;
                    // the buffer held phase p - 2: every group of it must be done
                    if (p >= 2 && Volatile.Read(ref packNext![p]) < items) WaitFor(ref computeDone![p - 2], groups);
                    int item;
                    while ((item = Interlocked.Increment(ref packNext![p]) - 1) < items)
                    {
                        int p0 = item * PackPanelsPerItem, p1 = Math.Min(panels, p0 + PackPanelsPerItem);
                        GemmPacking.PackB(b, k0, kc, n0 + p0 * nr, Math.Min(ncw, p1 * nr) - p0 * nr, nr, bp + (nint)p0 * kc * nr, buf.Scratch, buf.Zeros);
                        Interlocked.Increment(ref packDone![p]);
                    }
                    WaitFor(ref packDone![p], items);
                }
                int g;
                while ((g = Interlocked.Increment(ref computeNext![p]) - 1) < groups)
                {
                    // this group's previous phase (its previous K slice) may still be with another worker
                    WaitFor(ref groupDone![g], p - 1);
                    int i0 = g * groupRows;
                    Rows(i0, Math.Min(m, i0 + groupRows), n0, ncw, k0, kc, accumulate || s > 0, bp, buf);
                    Volatile.Write(ref groupDone[g], p);
                    Interlocked.Increment(ref computeDone![p]);
                }
            }
        }

        /// <summary>Spins (then yields) until <paramref name="value"/> reaches <paramref name="target"/>: work another running worker holds.</summary>
        static void WaitFor(ref int value, int target)
        {
            var spin = new SpinWait();
            while (Volatile.Read(ref value) < target) spin.SpinOnce(sleep1Threshold: -1);
        }

        /// <summary>C[i0..i1, n0..n0+nc) (+)= A[i0..i1, k0..k0+kc)·B̃ for one packed K slice of B.</summary>
        [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
        void Rows(int i0, int i1, int n0, int nc, int k0, int kc, bool add, float* packedB, GemmBuffers buf)
        {
            const int MR = GemmMicroKernels.MR;
            int panels = (nc + nr - 1) / nr;
            bool byColumns = GemmPacking.PacksGroups(a);
            bool direct = !byColumns && a.DType == DType.F32 && a.ColStride == 1 && a.RowStride * sizeof(float) % 4096 != 0;
            for (int g0 = i0; g0 < i1; g0 += GroupTiles * MR)
            {
                int g1 = Math.Min(i1, g0 + GroupTiles * MR);
                // A stored by columns (Aᵀ·B): pack the group's micro-panels together, reading each k's rows as one run
                if (byColumns)
                {
                    GemmPacking.PackAGroup(a, g0, g1 - g0, k0, kc, buf.PackedA);
                    if (g1 < i1) GemmPacking.PrefetchAGroup(a, g1, Math.Min(GroupTiles * MR, i1 - g1), k0, kc);
                }
                for (int i = g0; i < g1; i += MR)
                {
                    int mr = Math.Min(MR, g1 - i);
                    float* panel = buf.PackedA;
                    nint aRow, aK;
                    if (byColumns) { panel += (nint)((i - g0) / MR) * GemmPacking.GroupPanelStride(kc); aRow = 1; aK = MR; }
                    else
                    {
                        // float32 rows are read where they lie unless their stride makes them alias in L1 (a multiple of 4 KiB)
                        if (direct) { panel = (float*)a.Pointer + i * a.RowStride + k0; aRow = (nint)a.RowStride; aK = 1; }
                        else
                        {
                            GemmPacking.PackA(a, i, mr, k0, kc, panel, out aRow, out aK);
                            if (i + MR < i1) GemmPacking.PrefetchA(a, i + MR, Math.Min(MR, i1 - i - MR), k0, kc);
                        }
                    }
                    float* cRow = c + (long)i * ldc + n0;
                    for (int p = 0; p < panels; p++)
                    {
                        int nValid = Math.Min(nr, nc - p * nr);
                        GemmMicroKernels.Run(path, mr, panel, aRow, aK, packedB + (nint)p * kc * nr, kc, cRow + p * nr, ldc, nValid, add);
                    }
                }
            }
        }

        /// <summary>Column mode: C[i0..i1, n0..n1) for all of K: pack each K slice of B, then sweep the A micro-panels over it.</summary>
        [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
        void Block(int i0, int i1, int n0, int n1, GemmBuffers buf)
        {
            int nc = n1 - n0;
            for (int k0 = 0; k0 < k; k0 += kcDepth)
            {
                int kc = Math.Min(kcDepth, k - k0);
                float* packedB;
                if (packed != null) packedB = packed.PanelPointer(k0, kc, n0);
                else
                {
                    GemmPacking.PackB(b, k0, kc, n0, nc, nr, buf.PackedB, buf.Scratch, buf.Zeros);
                    packedB = buf.PackedB;
                }
                Rows(i0, i1, n0, nc, k0, kc, accumulate || k0 > 0, packedB, buf);
            }
        }
    }

    /// <summary>Pinned scratch arrays reused across calls (a fresh large array would fault its pages in on every product).</summary>
    static class PinnedPool
    {
        static readonly ConcurrentBag<float[]> pool = new();

        /// <summary>An array of at least <paramref name="length"/> floats: a pooled one large enough, else a new one.</summary>
        public static float[] Rent(int length)
        {
            if (pool.TryTake(out var buffer))
            {
                if (buffer.Length >= length) return buffer;
                // too small: drop it and make one that will also serve the next caller of this size
            }
            return GC.AllocateUninitializedArray<float>(Math.Max(length, 1 << 16), pinned: true);
        }

        /// <summary>Keeps up to a few arrays for the next calls.</summary>
        public static void Return(float[] buffer)
        {
            if (pool.Count < 4) pool.Add(buffer);
        }
    }

    /// <summary>The two packed-B buffers (KC × chunk width each) that row-mode workers share, pooled.</summary>
    sealed class SharedPanels
    {
        static readonly ConcurrentBag<SharedPanels> pool = new();
        readonly float[] storage;
        readonly float* first;
        readonly int stride;
        public readonly int Cols;

        SharedPanels(int cols)
        {
            Cols = cols;
            stride = (KCMax * cols + 15) & ~15;
            storage = GC.AllocateArray<float>(2 * stride + 16, pinned: true);
            fixed (float* p = storage) first = (float*)(((nint)p + 63) & ~(nint)63);
        }

        public float* Buffer(int which) => first + which * stride;
        public static SharedPanels Rent(int cols) => pool.TryTake(out var s) && s.Cols >= cols ? s : new SharedPanels(cols);
        public static void Return(SharedPanels s) => pool.Add(s);
    }

    /// <summary>Per-worker packing buffers (64-byte aligned, pinned), pooled so a call allocates nothing large.</summary>
    sealed class GemmBuffers
    {
        static readonly ConcurrentBag<GemmBuffers> pool = new();
        readonly float[] storage;
        public readonly float* PackedB, PackedA, Scratch, Zeros, Tile;

        GemmBuffers()
        {
            const int packedB = KCMax * NCMax, packedA = GroupTiles * (GemmMicroKernels.MR * KCMax + 16);
            int scratch = Math.Max(NCMax, 32 * KCMax), zeros = KCMax;
            storage = GC.AllocateArray<float>(packedB + packedA + scratch + zeros + GemmMicroKernels.MR * 32 + 64, pinned: true);
            fixed (float* p = storage)
            {
                float* aligned = (float*)(((nint)p + 63) & ~(nint)63);
                PackedB = aligned;
                PackedA = PackedB + packedB;
                Scratch = PackedA + packedA;
                Zeros = Scratch + scratch;
                Tile = Zeros + zeros;
            }
        }

        public static GemmBuffers Rent() => pool.TryTake(out var b) ? b : new GemmBuffers();
        public static void Return(GemmBuffers b) => pool.Add(b);
    }
}

/// <summary>
/// A GEMM right-hand side packed once (see <see cref="Gemm.Pack"/>): for each KC-deep slice of K, every NR-wide
/// panel of columns, each (kc, nr) row-major and zero-padded — the layout the micro-kernel reads. Native memory,
/// 64-byte aligned; freed by Dispose or the finalizer.
/// </summary>
public sealed unsafe class PackedMatrix : IDisposable
{
    readonly float* _data;
    internal readonly GemmPath Path;
    internal readonly int Nr, Kc, Panels;
    /// <summary>K and N of the packed B [K, N].</summary>
    public int Rows { get; }
    public int Cols { get; }
    internal bool IsDisposed { get; private set; }

    internal PackedMatrix(int rows, int cols, GemmPath path, int nr, int kc, int panels)
    {
        Rows = rows; Cols = cols; Path = path; Nr = nr; Kc = kc; Panels = panels;
        nuint bytes = (nuint)Math.Max(1L, (long)rows * panels * nr) * sizeof(float);
        _data = (float*)System.Runtime.InteropServices.NativeMemory.AlignedAlloc(bytes, 64);
        GC.AddMemoryPressure((long)bytes);
        _bytes = (long)bytes;
    }

    readonly long _bytes;

    /// <summary>Panels of the K slice starting at k0 (depth kc), from the panel holding column n0 (a multiple of NR).</summary>
    internal float* PanelPointer(int k0, int kc, int n0) => _data + (long)k0 * Panels * Nr + (long)(n0 / Nr) * kc * Nr;

    public void Dispose()
    {
        if (IsDisposed) return;
        IsDisposed = true;
        System.Runtime.InteropServices.NativeMemory.AlignedFree(_data);
        GC.RemoveMemoryPressure(_bytes);
        GC.SuppressFinalize(this);
    }

    ~PackedMatrix()
    {
        if (!IsDisposed) { System.Runtime.InteropServices.NativeMemory.AlignedFree(_data); GC.RemoveMemoryPressure(_bytes); }
    }
}
