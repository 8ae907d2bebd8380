using System.Runtime.InteropServices;
using FeatureLens.Runtime.Tensors;

namespace FeatureLens.Tests.Tensors;

/// <summary>16-bit float conversions agree bit for bit with PyTorch's.</summary>
public class FloatConvertTests
{
    [Fact]
    public void RoundingToBf16AndF16MatchesTorchAndWideningIsExact()
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        // random magnitudes over many binades (subnormals included), exact bf16 ties, extremes and infinities
        var values = new List<float>();
        for (int i = 0; i < 20000; i++) values.Add((float)((rng.NextDouble() * 2 - 1) * Math.Pow(2, rng.Next(-140, 120))));
        for (int i = 0; i < 2000; i++) // exactly halfway between two bf16 values: round to even
            values.Add(BitConverter.UInt32BitsToSingle(((uint)rng.Next() & 0x7F7F0000u) | ((uint)rng.Next(2) << 31) | 0x8000u));
        values.AddRange([0f, -0f, float.Epsilon, float.MaxValue, float.PositiveInfinity, float.NegativeInfinity, 65504f, 65520f, 1e-8f]);
        float[] xs = values.ToArray();

        using var dir = new TempDir();
        File.WriteAllBytes(dir.File("x.f32"), MemoryMarshal.AsBytes(xs.AsSpan()).ToArray());
        File.WriteAllText(dir.File("convert.py"), """
            import sys, torch
            d = sys.argv[1]
            x = torch.frombuffer(bytearray(open(d + "/x.f32", "rb").read()), dtype=torch.float32)
            open(d + "/bf16", "w").write(repr(x.to(torch.bfloat16).view(torch.int16).tolist()))
            open(d + "/f16", "w").write(repr(x.to(torch.float16).view(torch.int16).tolist()))
            """);
        TorchReference.RunPython(dir.File("convert.py"), dir.Path);
        ushort[] Parse(string f) => File.ReadAllText(dir.File(f)).Trim('[', ']', ' ', '\n').Split(',').Select(s => unchecked((ushort)short.Parse(s, CultureInfo.InvariantCulture))).ToArray();
        ushort[] torchBf16 = Parse("bf16"), torchF16 = Parse("f16");

        var ours = new ushort[xs.Length];
        FloatConvert.F32ToBF16(xs, ours);
        for (int i = 0; i < xs.Length; i++)
            Assert.True(ours[i] == torchBf16[i], $"bf16 of {xs[i]:R}: ours 0x{ours[i]:X4}, torch 0x{torchBf16[i]:X4} (seed {seed})");
        var half = new Half[xs.Length];
        FloatConvert.F32ToF16(xs, half);
        for (int i = 0; i < xs.Length; i++)
            Assert.True(BitConverter.HalfToUInt16Bits(half[i]) == torchF16[i], $"f16 of {xs[i]:R}: ours 0x{BitConverter.HalfToUInt16Bits(half[i]):X4}, torch 0x{torchF16[i]:X4} (seed {seed})");

        // widening back is exact: bf16 → f32 is the top half of the bits
        var back = new float[xs.Length];
        FloatConvert.BF16ToF32(ours, back);
        for (int i = 0; i < xs.Length; i++)
            Assert.Equal((uint)ours[i] << 16, BitConverter.SingleToUInt32Bits(back[i]));
    }
}
