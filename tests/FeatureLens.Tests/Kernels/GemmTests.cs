using FeatureLens.Runtime.Kernels;
using FeatureLens.Runtime.Tensors;

namespace FeatureLens.Tests.Kernels;

/// <summary>
/// GEMM against a double-precision reference: every path, odd shapes, all three transposition cases,
/// 16-bit operands, accumulate, bit-exact row independence and determinism, argument validation.
/// Paths and thread counts are passed per call (internal overload), so no global state is touched.
/// </summary>
public unsafe class GemmTests
{
    const double Tolerance = 1e-5;

    public static TheoryData<GemmPath> Paths()
    {
        var data = new TheoryData<GemmPath>();
        foreach (var p in new[] { GemmPath.Vector512, GemmPath.Vector256, GemmPath.Scalar })
            if (Gemm.IsSupported(p)) data.Add(p);
        return data;
    }

    /// <summary>How A and B are laid out: NN = A[M,K]·B[K,N]; NT = B seen transposed from [N,K]; TN = A seen transposed from [K,M].</summary>
    public enum Layout { NN, NT, TN, Strided }

    /// <summary>Owns the bytes of a test matrix and hands out a view of them.</summary>
    sealed class Operand
    {
        public readonly byte[] Bytes;
        readonly DType type;
        readonly int rows, cols;
        readonly long rowStride, colStride, offset;

        /// <summary>A logical [rows, cols] matrix of random values in [-1, 1) stored with the given layout.</summary>
        public Operand(Random rng, DType type, int rows, int cols, bool transposed, bool strided = false)
        {
            this.type = type; this.rows = rows; this.cols = cols;
            if (strided) { rowStride = 2; colStride = 2L * rows + 3; offset = 1; }      // no unit stride, gaps in between
            else if (transposed) { rowStride = 1; colStride = rows; }                     // stored [cols, rows]
            else { rowStride = cols; colStride = 1; }                                    // stored [rows, cols]
            long span = offset + (rows == 0 || cols == 0 ? 1 : (rows - 1) * rowStride + (cols - 1) * colStride + 1);
            Bytes = new byte[span * type.Size()];
            fixed (byte* p = Bytes)
                for (long i = 0; i < span; i++) Write(p, i, (float)(rng.NextDouble() * 2 - 1));
        }

        void Write(byte* p, long i, float v)
        {
            switch (type)
            {
                case DType.F32: ((float*)p)[i] = v; break;
                case DType.BF16: ((ushort*)p)[i] = FloatConvert.F32ToBF16(v); break;
                default: ((Half*)p)[i] = (Half)v; break;
            }
        }

        public MatrixView View(byte* p) => new(p + offset * type.Size(), type, rows, cols, rowStride, colStride);
    }

    /// <summary>
    /// C = A·B (+ C0) in double precision, reading elements through the views, and the magnitude
    /// |C0| + |A|·|B| of each element (what float32 rounding errors scale with).
    /// </summary>
    static (double[] Value, double[] Magnitude) Reference(MatrixView a, MatrixView b, float[]? c0, int ldc)
    {
        int m = a.Rows, n = b.Cols, k = a.Cols;
        var r = new double[m * n];
        var mag = new double[m * n];
        var row = new double[k];
        for (int i = 0; i < m; i++)
        {
            for (int p = 0; p < k; p++) row[p] = a[i, p];
            for (int j = 0; j < n; j++)
            {
                double s = c0 == null ? 0 : c0[i * ldc + j], g = Math.Abs(s);
                for (int p = 0; p < k; p++) { double t = row[p] * b[p, j]; s += t; g += Math.Abs(t); }
                r[i * n + j] = s;
                mag[i * n + j] = g;
            }
        }
        return (r, mag);
    }

    /// <summary>‖got − want‖ / ‖want‖ over the M×N elements (got has leading dimension ldc).</summary>
    static double RelativeError(float[] got, int ldc, double[] want, int m, int n) =>
        ErrorNorm(got, ldc, want, m, n) / Math.Max(Norm(want), double.Epsilon);

    static double ErrorNorm(float[] got, int ldc, double[] want, int m, int n)
    {
        double sum = 0;
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++) { double d = got[i * ldc + j] - want[i * n + j]; sum += d * d; }
        return Math.Sqrt(sum);
    }

    static double Norm(double[] x) { double s = 0; foreach (var v in x) s += v * v; return Math.Sqrt(s); }

    /// <summary>Runs one multiplication on <paramref name="path"/> and checks it against the reference and that C beyond N is untouched.</summary>
    static void CheckCase(GemmPath path, int threads, Random rng, int seed, int m, int k, int n, Layout layout,
                          DType aType, DType bType, bool accumulate)
    {
        var A = new Operand(rng, aType, m, k, layout == Layout.TN, layout == Layout.Strided);
        var B = new Operand(rng, bType, k, n, layout == Layout.NT, layout == Layout.Strided);
        int ldc = n + rng.Next(0, 3);
        var c = new float[Math.Max(1, m * ldc)];
        for (int i = 0; i < c.Length; i++) c[i] = (float)(rng.NextDouble() * 2 - 1);
        var before = (float[])c.Clone();
        double[] want, magnitude;
        fixed (byte* pa = A.Bytes) fixed (byte* pb = B.Bytes) fixed (float* pc = c)
        {
            MatrixView av = A.View(pa), bv = B.View(pb);
            (want, magnitude) = Reference(av, bv, accumulate ? before : null, ldc);
            Gemm.Multiply(av, bv, pc, ldc, accumulate, path, threads);
        }
        string what = $"seed {seed}: path {path}, {threads} threads, M={m} K={k} N={n} ldc={ldc}, {layout}, A {aType}, B {bType}, accumulate={accumulate}";
        // ‖ours − ref‖/‖ref‖ ≤ 1e-5; a tiny C (say 1×1) can cancel to near zero, so an error that is
        // small against the magnitudes summed, ‖|C0| + |A|·|B|‖, passes too (float32 rounding scales with those).
        double err = RelativeError(c, ldc, want, m, n);
        double errVsMagnitude = ErrorNorm(c, ldc, want, m, n) / Math.Max(Norm(magnitude), double.Epsilon);
        Assert.True(err <= Tolerance || errVsMagnitude <= Tolerance / 10,
            $"{what}: relative error {err:E3} > {Tolerance:E0} (against magnitudes {errVsMagnitude:E3})");
        for (int i = 0; i < m; i++)
            for (int j = n; j < ldc; j++)
                Assert.True(c[i * ldc + j] == before[i * ldc + j], $"{what}: padding C[{i},{j}] beyond N was written");
    }

    static readonly int[] OddSizes = [1, 2, 5, 7, 16, 31, 33, 64, 97, 129, 200, 257];

    [Theory]
    [MemberData(nameof(Paths))]
    public void RandomShapesAllLayoutsMatchReference(GemmPath path)
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        foreach (Layout layout in Enum.GetValues<Layout>())
            for (int trial = 0; trial < 6; trial++)
            {
                int m = OddSizes[rng.Next(OddSizes.Length)], k = OddSizes[rng.Next(OddSizes.Length)], n = OddSizes[rng.Next(OddSizes.Length)];
                CheckCase(path, 1 + trial % 2, rng, seed, m, k, n, layout, DType.F32, DType.F32, accumulate: trial % 3 == 2);
            }
    }

    [Theory]
    [MemberData(nameof(Paths))]
    public void EdgeSizesAroundTileBoundaries(GemmPath path)
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        int nr = GemmMicroKernels.PanelWidth(path);
        int[] ms = [1, 5, 6, 7, 12, 13];
        int[] ns = [1, nr - 1, nr, nr + 1, 2 * nr + 3];
        int[] ks = [1, 15, 16, 17, Gemm.KCMax, Gemm.KCMax + 1];
        foreach (int m in ms)
            foreach (int n in ns)
            {
                int k = ks[rng.Next(ks.Length)];
                CheckCase(path, 2, rng, seed, m, k, n, (Layout)rng.Next(3), DType.F32, DType.F32, accumulate: rng.Next(2) == 0);
            }
    }

    [Theory]
    [MemberData(nameof(Paths))]
    public void SixteenBitOperandsMatchReference(GemmPath path)
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        foreach (var bType in new[] { DType.BF16, DType.F16 })
            foreach (var layout in new[] { Layout.NN, Layout.NT, Layout.Strided })
            {
                int m = OddSizes[rng.Next(OddSizes.Length)], k = OddSizes[rng.Next(OddSizes.Length)], n = OddSizes[rng.Next(OddSizes.Length)];
                CheckCase(path, 2, rng, seed, m, k, n, layout, DType.F32, bType, accumulate: rng.Next(2) == 0);
                CheckCase(path, 2, rng, seed, m, k, n, layout, bType, bType, accumulate: false);
            }
    }

    [Theory]
    [MemberData(nameof(Paths))]
    public void LargeKAccumulatesAcrossSlices(GemmPath path)
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        int m = path == GemmPath.Scalar ? 9 : 37, n = path == GemmPath.Scalar ? 40 : 130;
        CheckCase(path, 2, rng, seed, m, 3072 + rng.Next(1, 64), n, Layout.NN, DType.F32, DType.F32, accumulate: true);
        CheckCase(path, 2, rng, seed, m, 2000 + rng.Next(1, 64), n, Layout.NT, DType.F32, DType.BF16, accumulate: false);
    }

    [Fact]
    public void LargeShapeOnTwoThreadsMatchesReference()
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        CheckCase(GemmPath.Auto, 2, rng, seed, 150, 300, 1100 + rng.Next(0, 40), Layout.NT, DType.F32, DType.F32, accumulate: false);
        CheckCase(GemmPath.Auto, 2, rng, seed, 300, 200, 20, Layout.NN, DType.F32, DType.F32, accumulate: true);
    }

    /// <summary>C for rows [r0, r0+count) of A, computed with only those rows in the batch.</summary>
    static float[] Rows(float[] a, int r0, int count, int k, MatrixView b, GemmPath path, int threads)
    {
        int n = b.Cols;
        var c = new float[count * n];
        fixed (float* pa = a) fixed (float* pc = c)
            Gemm.Multiply(MatrixView.F32(pa + r0 * k, count, k), b, pc, n, false, path, threads);
        return c;
    }

    [Theory]
    [MemberData(nameof(Paths))]
    public void RowResultsAreBitIdenticalAloneOrInAnyBatch(GemmPath path)
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        int m = 41, k = 300 + rng.Next(0, 300), n = 70 + rng.Next(0, 100);
        var a = new float[m * k];
        for (int i = 0; i < a.Length; i++) a[i] = (float)(rng.NextDouble() * 2 - 1);
        foreach (var layout in new[] { Layout.NN, Layout.NT })
        {
            var B = new Operand(rng, layout == Layout.NN ? DType.F32 : DType.BF16, k, n, layout == Layout.NT);
            fixed (byte* pb = B.Bytes)
            {
                var bv = B.View(pb);
                float[] all = Rows(a, 0, m, k, bv, path, 2);
                Assert.Equal(all, Rows(a, 0, m, k, bv, path, 2));            // run to run
                Assert.Equal(all, Rows(a, 0, m, k, bv, path, 1));            // thread count
                foreach (var (r0, count) in new[] { (0, 1), (m - 1, 1), (3, 1), (5, 7), (1, 12), (17, 24) })
                {
                    float[] part = Rows(a, r0, count, k, bv, path, 2);
                    for (int i = 0; i < count * n; i++)
                    {
                        int row = r0 + i / n, col = i % n;
                        if (BitConverter.SingleToInt32Bits(part[i]) != BitConverter.SingleToInt32Bits(all[row * n + col]))
                            Assert.Fail($"seed {seed}: path {path}, {layout}, K={k} N={n}: row {row} col {col} is {part[i]:R} in a batch of {count} at {r0} but {all[row * n + col]:R} in the batch of {m}");
                    }
                }
            }
        }
    }

    /// <summary>
    /// Many rows on two threads take the row-mode schedule (shared packed B, row groups dealt out per phase): rows
    /// stay bit-identical to the same rows computed alone (column mode), on one thread, and run to run, for every
    /// layout, several K slices and a ragged last group and chunk.
    /// </summary>
    [Theory]
    [MemberData(nameof(Paths))]
    public void RowModeOnTwoThreadsIsBitIdenticalToFewRows(GemmPath path)
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        int m = 200 + rng.Next(0, 120), k = Gemm.KCMax * 2 + rng.Next(1, 100), n = Gemm.ChunkCols + rng.Next(1, 300);
        var a = new float[m * k];
        for (int i = 0; i < a.Length; i++) a[i] = (float)(rng.NextDouble() * 2 - 1);
        foreach (var layout in new[] { Layout.NN, Layout.NT })
        {
            var B = new Operand(rng, layout == Layout.NN ? DType.F32 : DType.BF16, k, n, layout == Layout.NT);
            fixed (byte* pb = B.Bytes)
            {
                var bv = B.View(pb);
                float[] all = Rows(a, 0, m, k, bv, path, 2);
                Assert.Equal(all, Rows(a, 0, m, k, bv, path, 2));
                Assert.Equal(all, Rows(a, 0, m, k, bv, path, 1));
                foreach (var (r0, count) in new[] { (0, 1), (m - 1, 1), (7, 13), (m - 30, 30) })
                {
                    float[] part = Rows(a, r0, count, k, bv, path, 2);
                    for (int i = 0; i < count * n; i++)
                        if (BitConverter.SingleToInt32Bits(part[i]) != BitConverter.SingleToInt32Bits(all[(r0 + i / n) * n + i % n]))
                            Assert.Fail($"seed {seed}: path {path}, {layout}, M={m} K={k} N={n}: row {r0 + i / n} col {i % n} differs alone ({part[i]:R}) and in the batch ({all[(r0 + i / n) * n + i % n]:R})");
                }
            }
        }
        // the same schedule against the double-precision reference, Aᵀ·B included, accumulating into C
        CheckCase(path, 2, rng, seed, m, k, n, Layout.TN, DType.F32, DType.F32, accumulate: true);
        CheckCase(path, 2, rng, seed, m, k, n, Layout.NT, DType.F32, DType.F32, accumulate: false);
    }

    [Fact]
    public void PublicSpanOverloadsMatchReference()
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        int m = 23, k = 45, n = 67;
        float[] Rand(int count) { var x = new float[count]; for (int i = 0; i < count; i++) x[i] = (float)(rng.NextDouble() * 2 - 1); return x; }
        float[] a = Rand(m * k), b = Rand(k * n), bt = new float[n * k], at = new float[k * m];
        for (int i = 0; i < k; i++) for (int j = 0; j < n; j++) bt[j * k + i] = b[i * n + j];
        for (int i = 0; i < m; i++) for (int j = 0; j < k; j++) at[j * m + i] = a[i * k + j];
        var want = new double[m * n];
        for (int i = 0; i < m; i++) for (int j = 0; j < n; j++) { double s = 0; for (int p = 0; p < k; p++) s += (double)a[i * k + p] * b[p * n + j]; want[i * n + j] = s; }

        var c1 = new float[m * n]; Gemm.MatMul(a, b, c1, m, k, n);
        var c2 = new float[m * n]; Gemm.MatMulTransB(a, bt, c2, m, k, n);
        var c3 = new float[m * n]; Gemm.MatMulTransA(at, b, c3, m, k, n);
        var c4 = new float[m * n]; Gemm.MatMul(a, b, c4, m, k, n); Gemm.MatMul(a, b, c4, m, k, n, accumulate: true);
        Assert.True(RelativeError(c1, n, want, m, n) <= Tolerance, $"seed {seed}: MatMul");
        Assert.True(RelativeError(c2, n, want, m, n) <= Tolerance, $"seed {seed}: MatMulTransB");
        Assert.True(RelativeError(c3, n, want, m, n) <= Tolerance, $"seed {seed}: MatMulTransA");
        for (int i = 0; i < want.Length; i++) want[i] *= 2;
        Assert.True(RelativeError(c4, n, want, m, n) <= Tolerance, $"seed {seed}: MatMul accumulate");
    }

    [Fact]
    public void EmptyInnerDimensionClearsOrKeepsC()
    {
        var c = new float[] { 1, 2, 3, 4, 5, 6 };
        Gemm.MatMul(ReadOnlySpan<float>.Empty, ReadOnlySpan<float>.Empty, c, 2, 0, 3, accumulate: true);
        Assert.Equal(new float[] { 1, 2, 3, 4, 5, 6 }, c);
        Gemm.MatMul(ReadOnlySpan<float>.Empty, ReadOnlySpan<float>.Empty, c, 2, 0, 3);
        Assert.All(c, v => Assert.Equal(0f, v));
        Gemm.MatMul(ReadOnlySpan<float>.Empty, new float[12], Span<float>.Empty, 0, 4, 3); // M = 0: nothing to do
    }

    [Fact]
    public void MismatchedShapesThrowNamingThem()
    {
        var a = new float[3 * 4]; var b = new float[5 * 6]; var c = new float[3 * 6];
        var e = Assert.Throws<ArgumentException>(() =>
        {
            fixed (float* pa = a) fixed (float* pb = b) fixed (float* pc = c)
                Gemm.Multiply(MatrixView.F32(pa, 3, 4), MatrixView.F32(pb, 5, 6), pc, 6);
        });
        Assert.Contains("[3,4]", e.Message);
        Assert.Contains("[5,6]", e.Message);

        var e2 = Assert.Throws<ArgumentException>(() =>
        {
            fixed (float* pa = a) fixed (float* pb = b) fixed (float* pc = c)
                Gemm.Multiply(MatrixView.F32(pa, 3, 4), MatrixView.F32(pb, 4, 6), pc, 5);
        });
        Assert.Contains("ldc", e2.Message);

        var e3 = Assert.Throws<ArgumentException>(() => Gemm.MatMul(new float[3 * 4], new float[4 * 5 - 1], new float[3 * 5], 3, 4, 5));
        Assert.Contains("B [4,5]", e3.Message);
        var e4 = Assert.Throws<ArgumentException>(() => Gemm.MatMulTransB(new float[3 * 4], new float[5 * 4], new float[14], 3, 4, 5));
        Assert.Contains("C [3,5]", e4.Message);
        var e5 = Assert.Throws<ArgumentException>(() => Gemm.MatMulTransA(new float[11], new float[4 * 5], new float[15], 3, 4, 5));
        Assert.Contains("A [4,3]", e5.Message);
    }
}
