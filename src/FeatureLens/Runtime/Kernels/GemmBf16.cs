using System.Collections.Concurrent;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using FeatureLens.Runtime.Tensors;

namespace FeatureLens.Runtime.Kernels;

/// <summary>
/// bfloat16 matrix multiplication with AVX512_BF16 dot products (<c>vdpbf16ps</c>): C[M,N] (=|+=) bf16(A[M,K])·B[K,N],
/// A float32 (rounded to bfloat16, to nearest even, while it is packed), B bfloat16 (a checkpoint's weights), sums and C
/// float32. An opt-in, faster and less exact alternative to <see cref="Gemm"/> for bf16 checkpoints (<c>--compute bf16</c>).
/// </summary>
/// <remarks>
/// The micro-kernels are machine code (Bf16Kernel.S, embedded by scripts/gen-bf16-kernel.sh) mapped into executable memory
/// on first use: .NET has no intrinsic for vdpbf16ps. They run on Linux x86-64 with AVX-512F/BW and AVX512_BF16 (Zen 4,
/// Zen 5, Intel Sapphire Rapids and later); <see cref="UnsupportedReason"/> says what is missing elsewhere.
/// Structure as <see cref="Gemm"/>: A is rounded and packed once into 8-row tiles of (k, k+1) pairs; the columns of C are
/// cut into chunks that worker threads take in turn; for each KC-deep slice of K a chunk of B is packed into 32-column
/// panels of pairs, and every tile of A sweeps across them. Each element of C is summed the same way wherever it falls
/// (pairs in order within a slice, slices added to C in order, the slice depth a function of K alone), so a row's
/// result does not depend on M, the other rows, the thread count or scheduling.
/// </remarks>
public static unsafe partial class GemmBf16
{
    /// <summary>Rows of a micro-tile (kernels exist for 1..MR rows) and columns of a packed panel.</summary>
    internal const int MR = 8, NR = 32;
    /// <summary>Deepest K slice (even: a slice holds whole pairs) and widest column chunk (packed B is KC·NC·2 bytes = 256 KiB).</summary>
    internal const int KCMax = 256, NCMax = 512;
    const int ChunksPerThread = 2, MinChunkCols = 256;
    /// <summary>Below this many FLOPs one thread does the whole product.</summary>
    const double SingleThreadFlops = 4e6;

    /// <summary>True when this machine can run the bf16 kernels.</summary>
    public static bool IsSupported => Native.Kernels != null;

    /// <summary>Why the bf16 kernels cannot run here (null when they can).</summary>
    public static string? UnsupportedReason => Native.Error;

    /// <summary>C[M,N] (row-major, leading dimension ldc) = bf16(A)·B, or += when <paramref name="accumulate"/>, on <see cref="Gemm.Threads"/> threads.</summary>
    public static void Multiply(MatrixView a, MatrixView b, float* c, int ldc, bool accumulate = false) =>
        Multiply(a, b, c, ldc, accumulate, Gemm.Threads);

    /// <summary>As <see cref="Multiply(MatrixView, MatrixView, float*, int, bool)"/> with an explicit thread count.</summary>
    internal static void Multiply(MatrixView a, MatrixView b, float* c, int ldc, bool accumulate, int threads)
    {
        if (a.DType != DType.F32) throw new ArgumentException($"bf16 GEMM: A must be float32 (the activations), got {a.DType}");
        if (b.DType != DType.BF16) throw new ArgumentException($"bf16 GEMM: B must be bfloat16 (the weights), got {b.DType}");
        if (a.Cols != b.Rows) throw new ArgumentException($"bf16 GEMM inner dimensions differ: A is [{a.Rows},{a.Cols}], B is [{b.Rows},{b.Cols}]");
        if (a.Rows < 0 || b.Cols < 0 || a.Cols < 0) throw new ArgumentException($"bf16 GEMM shapes must be non-negative: A is [{a.Rows},{a.Cols}], B is [{b.Rows},{b.Cols}]");
        if (ldc < b.Cols) throw new ArgumentException($"bf16 GEMM ldc {ldc} is smaller than N = {b.Cols}");
        if (threads < 1) throw new ArgumentException($"bf16 GEMM thread count must be at least 1, got {threads}");
        int m = a.Rows, n = b.Cols, k = a.Cols;
        if (m == 0 || n == 0) return;
        if (c == null) throw new ArgumentException($"bf16 GEMM output pointer is null for C [{m},{n}]");
        var kernels = Native.Kernels ?? throw new PlatformNotSupportedException($"the bf16 GEMM cannot run here: {Native.Error}");
        if (k == 0)
        {
            if (!accumulate) for (int i = 0; i < m; i++) new Span<float>(c + (long)i * ldc, n).Clear();
            return;
        }
        new Job(a, b, c, ldc, accumulate, threads, kernels).Run();
    }

    /// <summary>K slice depth for a given K: even, the slices as equal as possible, a function of K alone.</summary>
    internal static int SliceDepth(int k)
    {
        int slices = (k + KCMax - 1) / KCMax;
        int depth = (k + slices - 1) / slices;
        return depth + (depth & 1);
    }

    /// <summary>One product: A packed up front, then (column chunk × row block) items that threads take in turn.</summary>
    sealed class Job
    {
        readonly MatrixView a, b;
        readonly float* c;
        readonly int ldc, m, n, k, kcDepth, pairsK, tiles, threads, chunkCols, nChunks, tilesPerBlock, mBlocks;
        readonly bool accumulate;
        readonly nint[] kernels;
        int next = -1;

        public Job(MatrixView a, MatrixView b, float* c, int ldc, bool accumulate, int threads, nint[] kernels)
        {
            this.a = a; this.b = b; this.c = c; this.ldc = ldc; this.accumulate = accumulate; this.kernels = kernels;
            m = a.Rows; n = b.Cols; k = a.Cols;
            kcDepth = SliceDepth(k);
            pairsK = (k + 1) / 2;
            tiles = (m + MR - 1) / MR;
            if (2.0 * m * n * k < SingleThreadFlops) threads = 1;

            // column chunks of whole panels, a few per thread so that a slowed thread leaves its share to the others
            int panels = (n + NR - 1) / NR;
            int chunks = (panels + NCMax / NR - 1) / (NCMax / NR);
            if (threads > 1 && panels >= threads)
            {
                int wanted = Math.Min(threads * ChunksPerThread, Math.Max(threads, panels * NR / MinChunkCols));
                chunks = Math.Min(panels, (Math.Max(chunks, wanted) + threads - 1) / threads * threads);
            }
            chunkCols = (panels + chunks - 1) / chunks * NR;
            nChunks = (n + chunkCols - 1) / chunkCols;
            // too few columns for every thread: also cut the rows (whole tiles)
            mBlocks = nChunks < threads ? Math.Min(tiles, threads) : 1;
            tilesPerBlock = (tiles + mBlocks - 1) / mBlocks;
            mBlocks = (tiles + tilesPerBlock - 1) / tilesPerBlock;
            this.threads = Math.Min(threads, nChunks * mBlocks);
        }

        public void Run()
        {
            // A rounded to bf16 pairs once: tile t, pair p at packedA[(t·pairsK + p)·MR ..], row r of the tile at + r
            long words = (long)tiles * pairsK * MR;
            var packedA = GC.AllocateUninitializedArray<uint>(checked((int)words), pinned: true);
            fixed (uint* pa = packedA)
            {
                uint* pA = pa;
                ParallelRows.For(tiles, (long)MR * k, (t0, t1) =>
                {
                    for (int t = t0; t < t1; t++) PackA(a, t * MR, Math.Min(MR, m - t * MR), pA + (long)t * pairsK * MR);
                });
                if (threads == 1) Work(pA);
                else Parallel.For(0, threads, new ParallelOptions { MaxDegreeOfParallelism = threads }, _ => Work(pA));
            }
        }

        void Work(uint* pA)
        {
            var buf = Buffers.Rent();
            try
            {
                int item;
                while ((item = Interlocked.Increment(ref next)) < nChunks * mBlocks)
                {
                    int n0 = item % nChunks * chunkCols, t0 = item / nChunks * tilesPerBlock;
                    Block(pA, t0, Math.Min(tiles, t0 + tilesPerBlock), n0, Math.Min(n, n0 + chunkCols), buf);
                }
            }
            finally { Buffers.Return(buf); }
        }

        /// <summary>C[tiles t0..t1, columns n0..n1) over all of K.</summary>
        void Block(uint* pA, int t0, int t1, int n0, int n1, Buffers buf)
        {
            int nc = n1 - n0, panels = (nc + NR - 1) / NR;
            for (int k0 = 0; k0 < k; k0 += kcDepth)
            {
                int kc = Math.Min(kcDepth, k - k0), pairs = (kc + 1) / 2;
                ulong add = accumulate || k0 > 0 ? 1UL << 32 : 0;
                PackB(b, k0, kc, n0, nc, buf.PackedB, buf.Zeros);
                for (int t = t0; t < t1; t++)
                {
                    int i = t * MR, mr = Math.Min(MR, m - i);
                    var kernel = (delegate* unmanaged[SuppressGCTransition]<uint*, uint*, nint, float*, nint, ulong, void>)kernels[mr - 1];
                    uint* aTile = pA + ((long)t * pairsK + k0 / 2) * MR;
                    float* cRow = c + (long)i * ldc + n0;
                    for (int p = 0; p < panels; p++)
                    {
                        int valid = Math.Min(NR, nc - p * NR);
                        ulong mask = valid == NR ? 0xFFFF_FFFFUL : (1UL << valid) - 1;
                        kernel(aTile, buf.PackedB + (nint)p * pairs * NR, pairs, cRow + p * NR, ldc, mask | add);
                    }
                }
            }
        }
    }

    /// <summary>
    /// Rows [i0, i0+mr) of A, all of K, as bf16 pairs: dst[p·MR + r] = bf16(A[i0+r, 2p]) | bf16(A[i0+r, 2p+1]) ≪ 16
    /// (rounded to nearest even; a missing A[·, K] of odd K is 0). Rows past mr are left as they are (never read).
    /// </summary>
    internal static void PackA(in MatrixView a, int i0, int mr, uint* dst)
    {
        int k = a.Cols, pairs = (k + 1) / 2;
        uint* row = stackalloc uint[Math.Min(pairs, 1024)];
        for (int r = 0; r < mr; r++)
        {
            float* src = (float*)a.Pointer + (i0 + r) * a.RowStride;
            for (int p0 = 0; p0 < pairs; p0 += 1024)
            {
                int np = Math.Min(1024, pairs - p0);
                int kk = 2 * p0, count = Math.Min(2 * np, k - kk);
                if (a.ColStride == 1) RoundPairs(src + kk, count, row);
                else
                    for (int p = 0; p < np; p++)
                    {
                        int k0 = kk + 2 * p;
                        uint lo = FloatConvert.F32ToBF16(src[k0 * a.ColStride]);
                        uint hi = k0 + 1 < k ? FloatConvert.F32ToBF16(src[(k0 + 1) * a.ColStride]) : 0u;
                        row[p] = lo | hi << 16;
                    }
                uint* d = dst + (long)p0 * MR + r;
                for (int p = 0; p < np; p++) d[(long)p * MR] = row[p];
            }
        }
    }

    /// <summary>count contiguous floats → (count+1)/2 bf16 pairs (rounded to nearest even, NaN kept a quiet NaN; an odd last element pairs with 0).</summary>
    static void RoundPairs(float* src, int count, uint* dst)
    {
        int i = 0;
        if (Avx512BW.IsSupported)
            for (; i + 32 <= count; i += 32)
            {
                Avx512BW.ConvertToVector256UInt16(RoundToBf16(Vector512.Load(src + i))).Store((ushort*)(dst + i / 2));
                Avx512BW.ConvertToVector256UInt16(RoundToBf16(Vector512.Load(src + i + 16))).Store((ushort*)(dst + i / 2 + 8));
            }
        for (; i < count; i += 2)
        {
            uint lo = FloatConvert.F32ToBF16(src[i]);
            uint hi = i + 1 < count ? FloatConvert.F32ToBF16(src[i + 1]) : 0u;
            dst[i / 2] = lo | hi << 16;
        }
    }

    /// <summary>The bf16 bits of 16 floats in the low halves of 16 dwords, as <see cref="FloatConvert.F32ToBF16(float)"/> rounds them.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector512<uint> RoundToBf16(Vector512<float> x)
    {
        var u = x.AsUInt32();
        var rounded = (u + Vector512.Create(0x7fffu) + ((u >> 16) & Vector512<uint>.One)) >> 16;
        var nan = (u >> 16) | Vector512.Create(0x40u);
        return Vector512.ConditionalSelect(Vector512.Equals(x, x).AsUInt32(), rounded, nan);
    }

    /// <summary>
    /// B[k0 .. k0+kc, n0 .. n0+nc) (bf16) into 32-column panels of pairs: panel p, pair q at dst[(p·pairs + q)·NR ..],
    /// dword j = B[k0+2q, n0+32p+j] | B[k0+2q+1, ·] ≪ 16; the missing row of an odd kc and the columns past nc are 0.
    /// <paramref name="zeros"/> holds KCMax/2 zero dwords.
    /// </summary>
    internal static void PackB(in MatrixView b, int k0, int kc, int n0, int nc, uint* dst, uint* zeros)
    {
        int pairs = (kc + 1) / 2, panels = (nc + NR - 1) / NR;
        if (b.RowStride == 1) PackBColumns(b, k0, kc, n0, nc, dst, zeros);
        else if (b.ColStride == 1) PackBRows(b, k0, kc, n0, nc, dst);
        else
            for (int p = 0; p < panels; p++)
                for (int q = 0; q < pairs; q++)
                    for (int j = 0; j < NR; j++)
                        dst[((long)p * pairs + q) * NR + j] = n0 + p * NR + j < n0 + nc ? Pair(b, k0 + 2 * q, k0 + kc, n0 + p * NR + j) : 0u;
    }

    /// <summary>The pair (B[kk, j], B[kk+1, j]) as one dword; B[kk+1, j] is 0 at kk+1 = kEnd.</summary>
    static uint Pair(in MatrixView b, int kk, int kEnd, int j)
    {
        ushort* p = (ushort*)b.Pointer;
        uint lo = p[kk * b.RowStride + j * b.ColStride];
        uint hi = kk + 1 < kEnd ? p[(kk + 1) * b.RowStride + j * b.ColStride] : 0u;
        return lo | hi << 16;
    }

    /// <summary>B stored by columns (the transpose of a row-major [N,K] weight): a column's pairs are adjacent dwords, transposed 16×16 at a time.</summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
    static void PackBColumns(in MatrixView b, int k0, int kc, int n0, int nc, uint* dst, uint* zeros)
    {
        int pairs = (kc + 1) / 2, fullPairs = kc / 2, panels = (nc + NR - 1) / NR;
        uint** cols = stackalloc uint*[NR];
        for (int p = 0; p < panels; p++)
        {
            int valid = Math.Min(NR, nc - p * NR);
            for (int j = 0; j < NR; j++)
                cols[j] = j < valid ? (uint*)((ushort*)b.Pointer + k0 + (long)(n0 + p * NR + j) * b.ColStride) : zeros;
            uint* d = dst + (long)p * pairs * NR;
            // the weight streams from memory, 32 rows 2·K bytes apart that the hardware prefetcher does not follow:
            // ask for the next panel's rows (into L2: 32 rows 8 KiB apart would evict each other from L1) while this one is transposed
            if (p + 1 < panels && Sse.IsSupported)
            {
                int nextValid = Math.Min(NR, nc - (p + 1) * NR);
                for (int j = 0; j < nextValid; j++)
                {
                    byte* next = (byte*)((ushort*)b.Pointer + k0 + (long)(n0 + (p + 1) * NR + j) * b.ColStride);
                    for (int offset = 0; offset < kc * 2; offset += 64) Sse.Prefetch1(next + offset);
                }
            }
            int q = 0;
            if (Avx512F.IsSupported)
                for (; q + 16 <= fullPairs; q += 16)
                {
                    Transpose16x16(cols, q, d + (long)q * NR, NR);
                    Transpose16x16(cols + 16, q, d + (long)q * NR + 16, NR);
                }
            for (; q < fullPairs; q++)
                for (int j = 0; j < NR; j++) d[(long)q * NR + j] = cols[j][q];
            if (fullPairs < pairs) // odd kc: the last pair's high half is 0
                for (int j = 0; j < NR; j++) d[(long)fullPairs * NR + j] = j < valid ? *(ushort*)(cols[j] + fullPairs) : 0u;
        }
    }

    /// <summary>B stored by rows ([K,N] row-major): pairs interleave two rows, 16 columns at a time.</summary>
    static void PackBRows(in MatrixView b, int k0, int kc, int n0, int nc, uint* dst)
    {
        int pairs = (kc + 1) / 2, panels = (nc + NR - 1) / NR;
        for (int p = 0; p < panels; p++)
        {
            int valid = Math.Min(NR, nc - p * NR), c0 = n0 + p * NR;
            for (int q = 0; q < pairs; q++)
            {
                int kk = k0 + 2 * q;
                uint* d = dst + ((long)p * pairs + q) * NR;
                ushort* lo = (ushort*)b.Pointer + kk * b.RowStride + c0;
                ushort* hi = kk + 1 < k0 + kc ? lo + b.RowStride : null;
                int j = 0;
                if (Avx512F.IsSupported)
                    for (; j + 16 <= valid; j += 16)
                    {
                        var wl = Avx512F.ConvertToVector512UInt32(Vector256.Load(lo + j));
                        var wh = hi != null ? Avx512F.ConvertToVector512UInt32(Vector256.Load(hi + j)) : Vector512<uint>.Zero;
                        (wl | (wh << 16)).Store(d + j);
                    }
                for (; j < valid; j++) d[j] = lo[j] | (hi != null ? (uint)hi[j] << 16 : 0u);
                for (; j < NR; j++) d[j] = 0u;
            }
        }
    }

    /// <summary>dst[qq·ldd + j] = rows[j][q0 + qq] for j, qq in 0..15: the float32 packing's 16×16 register transpose (dwords are dwords).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void Transpose16x16(uint** rows, int q0, uint* dst, int ldd) => GemmPacking.Transpose16x16((float**)rows, q0, (float*)dst, ldd);

    /// <summary>Per-worker packed-B buffer (KCMax/2 pairs × NCMax columns, 64-byte aligned, pinned) and a row of zeros, pooled.</summary>
    sealed class Buffers
    {
        static readonly ConcurrentBag<Buffers> pool = new();
        readonly uint[] storage;
        public readonly uint* PackedB, Zeros;

        Buffers()
        {
            const int packedB = KCMax / 2 * NCMax, zeros = KCMax / 2 + 16;
            storage = GC.AllocateArray<uint>(packedB + zeros + 16, pinned: true);
            fixed (uint* p = storage)
            {
                PackedB = (uint*)(((nint)p + 63) & ~(nint)63);
                Zeros = PackedB + packedB;
            }
        }

        public static Buffers Rent() => pool.TryTake(out var b) ? b : new Buffers();
        public static void Return(Buffers b) => pool.Add(b);
    }

    /// <summary>Why the kernels cannot run on a machine with these properties (null: they can). Pure, so every branch is testable.</summary>
    internal static string? Diagnose(bool linux, Architecture arch, bool avx512FBw, bool avx512Bf16)
    {
        if (arch != Architecture.X64) return $"it needs an x86-64 CPU with AVX512_BF16; this process runs on {arch}";
        if (!linux) return "it runs on Linux only (its machine code is mapped with mmap/mprotect)";
        if (!avx512FBw) return "it needs AVX-512F and AVX-512BW, which this CPU (or the runtime's settings) does not offer";
        if (!avx512Bf16) return "it needs AVX512_BF16 (vdpbf16ps: CPUID leaf 7 sub-leaf 1, EAX bit 5), which this CPU lacks";
        return null;
    }

    /// <summary>CPUID leaf 7 sub-leaf 1, EAX bit 5: AVX512_BF16.</summary>
    static bool CpuHasAvx512Bf16()
    {
        if (!X86Base.IsSupported || X86Base.CpuId(0, 0).Eax < 7) return false;
        if (X86Base.CpuId(7, 0).Eax < 1) return false; // highest sub-leaf of leaf 7
        return (X86Base.CpuId(7, 1).Eax & (1 << 5)) != 0;
    }

    /// <summary>The kernels mapped into executable memory on first use (or why not).</summary>
    static class Native
    {
        public static readonly nint[]? Kernels;
        public static readonly string? Error;

        static Native()
        {
            var arch = RuntimeInformation.ProcessArchitecture;
            bool x64 = arch == Architecture.X64;
            Error = Diagnose(OperatingSystem.IsLinux(), arch, x64 && Avx512F.IsSupported && Avx512BW.IsSupported, x64 && CpuHasAvx512Bf16());
            if (Error != null) return;
            try { Kernels = Map(Bf16KernelCode.Bytes); }
            catch (InvalidOperationException e) { Error = e.Message; }
        }

        const int ProtRead = 1, ProtWrite = 2, ProtExec = 4, MapPrivate = 0x02, MapAnonymous = 0x20;

        /// <summary>Copies the code into fresh pages, makes them read+execute, and returns the 8 kernels' entry points.</summary>
        static nint[] Map(ReadOnlySpan<byte> code)
        {
            nuint size = (nuint)((code.Length + 4095) & ~4095);
            nint mem = MemoryMap(0, size, ProtRead | ProtWrite, MapPrivate | MapAnonymous, -1, 0);
            if (mem == -1) throw new InvalidOperationException($"mmap of {size} bytes for the bf16 kernels failed (errno {Marshal.GetLastPInvokeError()})");
            code.CopyTo(new Span<byte>((void*)mem, code.Length));
            if (MemoryProtect(mem, size, ProtRead | ProtExec) != 0)
                throw new InvalidOperationException($"mprotect(PROT_READ|PROT_EXEC) of the bf16 kernels failed (errno {Marshal.GetLastPInvokeError()})");
            var entries = new nint[MR];
            for (int i = 0; i < MR; i++) entries[i] = mem + BitConverter.ToInt32(code.Slice(4 * i, 4));
            return entries;
        }
    }

    [LibraryImport("libc", EntryPoint = "mmap", SetLastError = true)]
    private static partial nint MemoryMap(nint addr, nuint length, int prot, int flags, int fd, nint offset);

    [LibraryImport("libc", EntryPoint = "mprotect", SetLastError = true)]
    private static partial int MemoryProtect(nint addr, nuint length, int prot);
}
