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
    /// <summary>Widest column chunk of C (packed B is KC·NC floats = 512 KiB, half the L2 of a Zen 5 core).</summary>
    internal const int NCMax = 512;
    /// <summary>Column chunks per worker thread aimed for (dynamic load balance), and their least width.</summary>
    const int ChunksPerThread = 2, MinChunkCols = 256;
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

    /// <summary>One multiplication split into work items (column chunk × row chunk) that threads take in turn.</summary>
    sealed class GemmJob
    {
        readonly MatrixView a, b;
        readonly float* c;
        readonly int ldc, m, n, k, kcDepth, nr, threads;
        readonly bool accumulate;
        readonly GemmPath path;
        readonly int chunkCols, nChunks, chunkRows, mChunks;
        int next = -1;

        readonly PackedMatrix? packed;

        public GemmJob(MatrixView a, MatrixView b, float* c, int ldc, bool accumulate, GemmPath path, int threads, PackedMatrix? packed = null)
        {
            this.a = a; this.b = b; this.c = c; this.ldc = ldc; this.accumulate = accumulate; this.path = path; this.packed = packed;
            m = a.Rows; n = b.Cols; k = a.Cols;
            kcDepth = SliceDepth(k);
            nr = GemmMicroKernels.PanelWidth(path);
            if (2.0 * m * n * k < SingleThreadFlops && (long)k * n < SingleThreadBElements) threads = 1;

            // Column chunks: whole panels, at most NCMax wide. With several threads, aim for a few chunks
            // per thread so that a thread slowed by other work on its core leaves its share to the others,
            // but keep chunks at least MinChunkCols wide (every chunk packs the rows of A again).
            int panels = (n + nr - 1) / nr;
            int chunks = (panels + NCMax / nr - 1) / (NCMax / nr);
            if (threads > 1 && panels >= threads)
            {
                int wanted = Math.Min(threads * ChunksPerThread, Math.Max(threads, panels * nr / MinChunkCols));
                chunks = Math.Min(panels, (Math.Max(chunks, wanted) + threads - 1) / threads * threads);
            }
            int panelsPerChunk = (panels + chunks - 1) / chunks;
            chunkCols = panelsPerChunk * nr;
            nChunks = (n + chunkCols - 1) / chunkCols;

            // Too few columns for every thread: also cut the rows (in whole micro-tiles).
            int tiles = (m + GemmMicroKernels.MR - 1) / GemmMicroKernels.MR;
            mChunks = nChunks < threads ? Math.Min(tiles, threads) : 1;
            chunkRows = (tiles + mChunks - 1) / mChunks * GemmMicroKernels.MR;
            mChunks = (m + chunkRows - 1) / chunkRows;
            this.threads = Math.Min(threads, nChunks * mChunks);
        }

        public void Run()
        {
            if (threads == 1) Work(0);
            else Parallel.For(0, threads, new ParallelOptions { MaxDegreeOfParallelism = threads }, Work);
        }

        void Work(int worker)
        {
            var buffers = GemmBuffers.Rent();
            try
            {
                int item;
                while ((item = Interlocked.Increment(ref next)) < nChunks * mChunks)
                {
                    int n0 = item % nChunks * chunkCols, i0 = item / nChunks * chunkRows;
                    Block(i0, Math.Min(m, i0 + chunkRows), n0, Math.Min(n, n0 + chunkCols), buffers);
                }
            }
            finally { GemmBuffers.Return(buffers); }
        }

        /// <summary>C[i0..i1, n0..n1) for all of K: pack each K slice of B, then sweep the A micro-panels over it.</summary>
        void Block(int i0, int i1, int n0, int n1, GemmBuffers buf)
        {
            const int MR = GemmMicroKernels.MR;
            int nc = n1 - n0;
            int panels = (nc + nr - 1) / nr;
            for (int k0 = 0; k0 < k; k0 += kcDepth)
            {
                int kc = Math.Min(kcDepth, k - k0);
                bool add = accumulate || k0 > 0;
                float* packedB;
                if (packed != null) packedB = packed.PanelPointer(k0, kc, n0);
                else
                {
                    GemmPacking.PackB(b, k0, kc, n0, nc, nr, buf.PackedB, buf.Scratch, buf.Zeros);
                    packedB = buf.PackedB;
                }
                for (int i = i0; i < i1; i += MR)
                {
                    int mr = Math.Min(MR, i1 - i);
                    GemmPacking.PackA(a, i, mr, k0, kc, buf.PackedA, out nint aRow, out nint aK);
                    if (i + MR < i1) GemmPacking.PrefetchA(a, i + MR, Math.Min(MR, i1 - i - MR), k0, kc);
                    float* cRow = c + (long)i * ldc + n0;
                    for (int p = 0; p < panels; p++)
                    {
                        int nValid = Math.Min(nr, nc - p * nr);
                        GemmMicroKernels.Run(path, mr, buf.PackedA, aRow, aK, packedB + (nint)p * kc * nr, kc,
                                             cRow + p * nr, ldc, nValid, add);
                    }
                }
            }
        }
    }

    /// <summary>Per-worker packing buffers (64-byte aligned, pinned), pooled so a call allocates nothing large.</summary>
    sealed class GemmBuffers
    {
        static readonly ConcurrentBag<GemmBuffers> pool = new();
        readonly float[] storage;
        public readonly float* PackedB, PackedA, Scratch, Zeros;

        GemmBuffers()
        {
            const int packedB = KCMax * NCMax, packedA = GemmMicroKernels.MR * KCMax;
            int scratch = Math.Max(NCMax, 32 * KCMax), zeros = KCMax;
            storage = GC.AllocateArray<float>(packedB + packedA + scratch + zeros + 64, pinned: true);
            fixed (float* p = storage)
            {
                float* aligned = (float*)(((nint)p + 63) & ~(nint)63);
                PackedB = aligned;
                PackedA = PackedB + packedB;
                Scratch = PackedA + packedA;
                Zeros = Scratch + scratch;
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
