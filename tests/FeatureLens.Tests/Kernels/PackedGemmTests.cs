using FeatureLens.Runtime.Kernels;
using FeatureLens.Runtime.Tensors;
using FeatureLens.Saes;
using FeatureLens.Tests.Saes;

namespace FeatureLens.Tests.Kernels;

/// <summary>A right-hand side packed once gives bit-identical products to packing it on every call.</summary>
public unsafe class PackedGemmTests
{
    [Theory]
    [InlineData(1, 37, 53)]
    [InlineData(7, 300, 1000)]     // two K slices, N not a multiple of the panel width
    [InlineData(130, 520, 777)]    // three K slices, several column chunks and threads
    [InlineData(64, 64, 2048)]
    public void PackedProductEqualsTheUnpackedOneBitForBit(int m, int k, int n)
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        var a = SaeTestData.Gaussian(rng, (long)m * k, 1f);
        var b = SaeTestData.Gaussian(rng, (long)k * n, 1f);
        var c0 = SaeTestData.Gaussian(rng, (long)m * n, 1f);
        var expected = (float[])c0.Clone();
        var got = (float[])c0.Clone();
        Gemm.MatMul(a, b, expected, m, k, n, accumulate: true);
        fixed (float* pb = b) fixed (float* pa = a) fixed (float* pc = got)
        {
            using var packed = Gemm.Pack(MatrixView.F32(pb, k, n));
            Gemm.Multiply(MatrixView.F32(pa, m, k), packed, pc, n, accumulate: true);
        }
        Assert.True(expected.AsSpan().SequenceEqual(got), $"seed {seed}: packed product differs");
        // and against a double-precision reference, to be sure both are right
        for (int t = 0; t < 20; t++)
        {
            int i = rng.Next(m), j = rng.Next(n);
            double r = c0[(long)i * n + j];
            for (int p = 0; p < k; p++) r += (double)a[(long)i * k + p] * b[(long)p * n + j];
            Assert.True(Math.Abs(got[(long)i * n + j] - r) <= 1e-4 * (1 + Math.Abs(r)), $"seed {seed}: C[{i},{j}] = {got[(long)i * n + j]} vs {r}");
        }
    }

    [Theory]
    [InlineData(SaeArchitecture.TopK)]
    [InlineData(SaeArchitecture.Standard)]
    [InlineData(SaeArchitecture.Gated)]
    public void PrepackedSaeEncodesBitForBit(SaeArchitecture arch)
    {
        var rng = new Random(Random.Shared.Next());
        var sae = SaeTestData.Random(rng, arch, 70, 300, "blocks.0.hook_resid_post", k: 9, applyBDec: true);
        var x = new Tensor([23, 70], SaeTestData.Gaussian(rng, 23 * 70, 1f));
        var dense = sae.Encode(x).Data; var sparse = sae.EncodeSparse(x, 7).ToDense();
        sae.PrepackEncoder();
        Assert.Equal(dense, sae.Encode(x).Data);
        Assert.Equal(sparse, sae.EncodeSparse(x, 7).ToDense());
        sae.DropPackedEncoder();
        Assert.Equal(dense, sae.Encode(x).Data);
    }

    [Fact]
    public void ShapeMismatchIsAClearError()
    {
        var b = new float[6 * 8];
        fixed (float* pb = b)
        {
            using var packed = Gemm.Pack(MatrixView.F32(pb, 6, 8));
            var a = new float[3 * 5]; var c = new float[3 * 8];
            fixed (float* pa = a) fixed (float* pc = c)
            {
                float* pa2 = pa, pc2 = pc;
                var e = Assert.Throws<ArgumentException>(() => Gemm.Multiply(MatrixView.F32(pa2, 3, 5), packed, pc2, 8));
                Assert.Contains("[6,8]", e.Message);
            }
        }
    }
}
