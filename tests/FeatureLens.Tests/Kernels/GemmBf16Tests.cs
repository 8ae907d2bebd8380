using System.Diagnostics;
using System.Runtime.InteropServices;
using FeatureLens.Runtime.Kernels;
using FeatureLens.Runtime.Tensors;
using Xunit.Abstractions;

namespace FeatureLens.Tests.Kernels;

/// <summary>A test that runs the vdpbf16ps kernels: skipped, saying why, on a machine that cannot run them.</summary>
public sealed class Bf16FactAttribute : FactAttribute
{
    public Bf16FactAttribute()
    {
        if (!GemmBf16.IsSupported) Skip = $"bf16 GEMM unavailable: {GemmBf16.UnsupportedReason}";
    }
}

/// <summary>
/// The bf16 GEMM (<see cref="GemmBf16"/>) against a double-precision product of the same bf16-rounded inputs, the machine
/// code against its assembler source, bit-exact row independence, rounding of A, and bad input.
/// </summary>
/// <remarks>
/// Error bound: the kernel forms each product of two bf16 values exactly in float32 and adds it to a float32 sum, rounding
/// to nearest (unit roundoff u = 2⁻²⁴), pair by pair within a K slice, then adds each slice's sum to C. An element of C thus
/// goes through at most K + S + 1 rounded additions (S slices, plus the C it accumulates onto), so by the standard bound
/// |c − exact| ≤ γ_n·(Σ_k |â_k·b_k| + |C₀|) with n = K + S + 1 and γ_n = n·u/(1 − n·u). The test uses 1.01·n·u, plus 1e-30
/// absolute for the denormal products the instruction flushes to zero.
/// </remarks>
public unsafe class GemmBf16Tests(ITestOutputHelper output)
{
    const double U = 1.0 / (1 << 24);

    /// <summary>A logical [rows, cols] operand: float32 A, or bf16 B stored row-major, transposed ([cols, rows]) or with no unit stride.</summary>
    sealed class Operand
    {
        public readonly byte[] Bytes;
        readonly DType type;
        readonly int rows, cols;
        readonly long rowStride, colStride, offset;

        public Operand(Random rng, DType type, int rows, int cols, string layout)
        {
            this.type = type; this.rows = rows; this.cols = cols;
            switch (layout)
            {
                case "T": rowStride = 1; colStride = rows; break;                         // stored [cols, rows]: a Linear weight's transpose
                case "S": rowStride = 3; colStride = 3L * rows + 1; offset = 1; break;   // no unit stride
                default: rowStride = cols; colStride = 1; break;                        // row-major
            }
            long span = offset + (rows == 0 || cols == 0 ? 1 : (rows - 1) * rowStride + (cols - 1) * colStride + 1);
            Bytes = new byte[span * type.Size()];
            fixed (byte* p = Bytes)
                for (long i = 0; i < span; i++)
                {
                    float v = (float)(rng.NextDouble() * 2 - 1);
                    if (type == DType.F32) ((float*)p)[i] = v;
                    else ((ushort*)p)[i] = FloatConvert.F32ToBF16(v);
                }
        }

        public MatrixView View(byte* p) => new(p + offset * type.Size(), type, rows, cols, rowStride, colStride);

        /// <summary>Element (r, c) as the kernel sees it: A rounded to bf16, B exact.</summary>
        public double Rounded(int r, int c)
        {
            fixed (byte* p = Bytes)
            {
                var v = View(p)[r, c];
                return type == DType.F32 ? BitConverter.UInt32BitsToSingle((uint)FloatConvert.F32ToBF16(v) << 16) : v;
            }
        }
    }

    public static TheoryData<string, int, bool> Cases() => new()
    {
        { "T", 1, false }, { "T", 2, true }, { "N", 1, true }, { "N", 2, false }, { "S", 1, false }, { "S", 2, true },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void MatchesDoubleReferenceOfRoundedInputs(string layout, int threads, bool accumulate)
    {
        if (!GemmBf16.IsSupported) return; // Bf16Fact's skip, for a theory
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        for (int trial = 0; trial < 4; trial++)
        {
            // ragged M (tiles of 1..8 rows), N across panel edges, K odd and even, over one and several slices
            int m = rng.Next(1, 30), n = rng.Next(1, 110), k = trial switch { 0 => rng.Next(1, 40) | 1, 1 => rng.Next(1, 40) & ~1 | 2, 2 => rng.Next(257, 700), _ => rng.Next(1, 300) };
            string what = $"seed {seed}, trial {trial}, layout {layout}, threads {threads}, accumulate {accumulate}: M={m} N={n} K={k}";
            var a = new Operand(rng, DType.F32, m, k, rng.Next(2) == 0 ? "N" : "S");
            var b = new Operand(rng, DType.BF16, k, n, layout);
            int ldc = n + rng.Next(3);
            var c = new float[m * ldc];
            for (int i = 0; i < c.Length; i++) c[i] = (float)(rng.NextDouble() * 2 - 1);
            var c0 = (float[])c.Clone();
            fixed (byte* pa = a.Bytes) fixed (byte* pb = b.Bytes) fixed (float* pc = c)
                GemmBf16.Multiply(a.View(pa), b.View(pb), pc, ldc, accumulate, threads);

            int slices = (k + GemmBf16.KCMax - 1) / GemmBf16.KCMax;
            double nAdds = k + slices + 1, worst = 0;
            for (int i = 0; i < m; i++)
                for (int j = 0; j < ldc; j++)
                {
                    if (j >= n) { Assert.True(c[i * ldc + j] == c0[i * ldc + j], $"{what}: C[{i},{j}] past N was written"); continue; }
                    double exact = accumulate ? c0[i * ldc + j] : 0, magnitude = accumulate ? Math.Abs(c0[i * ldc + j]) : 0;
                    for (int kk = 0; kk < k; kk++)
                    {
                        double p = a.Rounded(i, kk) * b.Rounded(kk, j);
                        exact += p; magnitude += Math.Abs(p);
                    }
                    double bound = 1.01 * nAdds * U * magnitude + 1e-30, err = Math.Abs(c[i * ldc + j] - exact);
                    worst = Math.Max(worst, err / bound);
                    Assert.True(err <= bound, $"{what}: C[{i},{j}] = {c[i * ldc + j]}, exact {exact}, |error| {err:E3} > bound {bound:E3}");
                }
            output.WriteLine($"{what}: worst error / bound {worst:F3}");
        }
    }

    /// <summary>A row's result is bit-identical alone (one thread) and inside a batch (two threads): the sum order does not depend on M.</summary>
    [Bf16Fact]
    public void RowsAreBitIdenticalAloneAndInBatch()
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        int m = rng.Next(9, 40), n = rng.Next(600, 1200), k = rng.Next(300, 700);
        var a = new Operand(rng, DType.F32, m, k, "N");
        var b = new Operand(rng, DType.BF16, k, n, "T");
        var all = new float[m * n];
        var one = new float[n];
        fixed (byte* pa = a.Bytes) fixed (byte* pb = b.Bytes) fixed (float* pAll = all) fixed (float* pOne = one)
        {
            GemmBf16.Multiply(a.View(pa), b.View(pb), pAll, n, false, 2);
            for (int i = 0; i < m; i += 7)
            {
                GemmBf16.Multiply(a.View(pa).RowSlice(i, 1), b.View(pb), pOne, n, false, 1);
                for (int j = 0; j < n; j++)
                    Assert.True(BitConverter.SingleToInt32Bits(one[j]) == BitConverter.SingleToInt32Bits(all[i * n + j]),
                        $"seed {seed}: M={m} N={n} K={k}: row {i} column {j} alone {one[j]:R} vs in batch {all[i * n + j]:R}");
            }
        }
    }

    /// <summary>A is rounded to bf16 to nearest even (ties, NaN, infinities, odd K) exactly as <see cref="FloatConvert.F32ToBF16(float)"/>, on the vector and the scalar path.</summary>
    [Fact]
    public void PackARoundsToNearestEven()
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        int k = 2 * rng.Next(40, 80) + 1; // odd: the last pair's high half is 0
        var row = new float[k];
        for (int i = 0; i < k; i++)
            row[i] = (i % 6) switch
            {
                0 => BitConverter.UInt32BitsToSingle((uint)rng.Next() & 0xffff0000u | 0x8000u), // a tie
                1 => BitConverter.UInt32BitsToSingle((uint)rng.Next() | 0x7fff),
                2 => i % 12 == 2 ? float.NaN : BitConverter.UInt32BitsToSingle(0x7f800001u), // NaNs whose payload is only in the low half
                3 => i % 12 == 3 ? float.PositiveInfinity : float.MaxValue,                   // MaxValue rounds up to infinity
                _ => (float)(rng.NextDouble() * 2 - 1),
            };
        var packed = new uint[(k + 1) / 2 * GemmBf16.MR];
        fixed (float* pr = row) fixed (uint* pp = packed)
            GemmBf16.PackA(MatrixView.F32(pr, 1, k), 0, 1, pp);
        for (int p = 0; p < (k + 1) / 2; p++)
        {
            uint lo = FloatConvert.F32ToBF16(row[2 * p]), hi = 2 * p + 1 < k ? FloatConvert.F32ToBF16(row[2 * p + 1]) : 0u;
            Assert.True(packed[p * GemmBf16.MR] == (lo | hi << 16), $"seed {seed}: pair {p} of {row[2 * p]:R}, {(2 * p + 1 < k ? row[2 * p + 1] : 0f):R}: {packed[p * GemmBf16.MR]:x8} vs {lo | hi << 16:x8}");
        }
    }

    [Bf16Fact]
    public void BadInputIsRefusedWithAClearMessage()
    {
        var f = new float[64];
        var h = new ushort[64];
        fixed (float* pinnedF = f) fixed (ushort* pinnedH = h)
        {
            float* pf = pinnedF; // lambdas cannot use fixed locals
            ushort* ph = pinnedH;
            var a = MatrixView.F32(pf, 4, 8);
            var b = new MatrixView(ph, DType.BF16, 8, 8, 8, 1);
            var e1 = Assert.Throws<ArgumentException>(() => GemmBf16.Multiply(a, MatrixView.F32(pf, 8, 8), pf, 8));
            Assert.Contains("B must be bfloat16", e1.Message);
            var e2 = Assert.Throws<ArgumentException>(() => GemmBf16.Multiply(b.RowSlice(0, 4), b, pf, 8));
            Assert.Contains("A must be float32", e2.Message);
            var e3 = Assert.Throws<ArgumentException>(() => GemmBf16.Multiply(MatrixView.F32(pf, 4, 7), b, pf, 8));
            Assert.Contains("inner dimensions differ", e3.Message);
            var e4 = Assert.Throws<ArgumentException>(() => GemmBf16.Multiply(a, b, pf, 7));
            Assert.Contains("ldc 7", e4.Message);
        }
    }

    /// <summary>Where the kernels cannot run, the reason names what is missing.</summary>
    [Fact]
    public void UnsupportedMachinesAreNamed()
    {
        Assert.Null(GemmBf16.Diagnose(true, Architecture.X64, true, true));
        Assert.Contains("x86-64", GemmBf16.Diagnose(true, Architecture.Arm64, false, false));
        Assert.Contains("Linux only", GemmBf16.Diagnose(false, Architecture.X64, true, true));
        Assert.Contains("AVX-512F and AVX-512BW", GemmBf16.Diagnose(true, Architecture.X64, false, false));
        Assert.Contains("AVX512_BF16", GemmBf16.Diagnose(true, Architecture.X64, true, false));
        if (!GemmBf16.IsSupported)
        {
            var f = new float[4];
            var h = new ushort[4];
            fixed (float* pinnedF = f) fixed (ushort* pinnedH = h)
            {
                float* pf = pinnedF;
                ushort* ph = pinnedH;
                var e = Assert.Throws<PlatformNotSupportedException>(() =>
                    GemmBf16.Multiply(MatrixView.F32(pf, 2, 2), new MatrixView(ph, DType.BF16, 2, 2, 2, 1), pf, 2));
                Assert.Contains(GemmBf16.UnsupportedReason!, e.Message);
            }
        }
    }

    /// <summary>The embedded machine code is exactly what GNU as makes of Bf16Kernel.S (skipped where binutils is missing).</summary>
    [Fact]
    public void EmbeddedCodeMatchesTheAssemblerSource()
    {
        string asm = "/usr/bin/as", objcopy = "/usr/bin/objcopy";
        if (!File.Exists(asm) || !File.Exists(objcopy)) { output.WriteLine("binutils (as, objcopy) not installed: not checked"); return; }
        string src = Path.Combine(TestPaths.RepoRoot, "src", "FeatureLens", "Runtime", "Kernels", "Bf16Kernel.S");
        using var dir = new TempDir();
        string obj = Path.Combine(dir.Path, "k.o"), bin = Path.Combine(dir.Path, "k.bin");
        Exec(asm, "--64", "-o", obj, src);
        Exec(objcopy, "-O", "binary", "--only-section=.text", obj, bin);
        var bytes = File.ReadAllBytes(bin);
        Assert.True(bytes.AsSpan().SequenceEqual(Bf16KernelCode.Bytes),
            $"Bf16KernelCode.g.cs ({Bf16KernelCode.Bytes.Length} bytes) differs from Bf16Kernel.S assembled ({bytes.Length} bytes): run scripts/gen-bf16-kernel.sh");
    }

    static void Exec(string file, params string[] args)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardError = true, RedirectStandardOutput = true };
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        string err = p.StandardError.ReadToEnd();
        p.WaitForExit();
        Assert.True(p.ExitCode == 0, $"{file} {string.Join(' ', args)} failed: {err}");
    }
}
