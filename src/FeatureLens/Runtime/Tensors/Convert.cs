using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace FeatureLens.Runtime.Tensors;

/// <summary>Conversions between float32 and the 16-bit float formats checkpoints use.</summary>
public static class FloatConvert
{
    /// <summary>bfloat16 bits → float32 (exact: bf16 is the top half of a float32).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void BF16ToF32(ReadOnlySpan<ushort> src, Span<float> dst)
    {
        if (dst.Length < src.Length) throw new ArgumentException("destination too short", nameof(dst));
        Span<uint> d = MemoryMarshal.Cast<float, uint>(dst);
        int i = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            for (; i <= src.Length - 16; i += 16)
            {
                var v = Vector256.LoadUnsafe(ref MemoryMarshal.GetReference(src), (nuint)i);
                var w = Vector512.WidenLower(v.ToVector512Unsafe()); // low 16 ushorts → 16 uints
                (Vector512.ShiftLeft(w, 16)).StoreUnsafe(ref MemoryMarshal.GetReference(d), (nuint)i);
            }
        }
        for (; i < src.Length; i++) d[i] = (uint)src[i] << 16;
    }

    /// <summary>float32 → bfloat16 bits with round-to-nearest-even (NaN stays NaN), as PyTorch does.</summary>
    public static ushort F32ToBF16(float f)
    {
        uint u = BitConverter.SingleToUInt32Bits(f);
        if ((u & 0x7fffffff) > 0x7f800000) return (ushort)((u >> 16) | 0x40); // quiet NaN
        uint rounding = 0x7fff + ((u >> 16) & 1);
        return (ushort)((u + rounding) >> 16);
    }

    /// <summary>float32 span → bfloat16 bits (round-to-nearest-even).</summary>
    public static void F32ToBF16(ReadOnlySpan<float> src, Span<ushort> dst)
    {
        for (int i = 0; i < src.Length; i++) dst[i] = F32ToBF16(src[i]);
    }

    /// <summary>IEEE half → float32.</summary>
    public static void F16ToF32(ReadOnlySpan<Half> src, Span<float> dst) => TensorPrimitives.ConvertToSingle(src, dst);

    /// <summary>float32 → IEEE half (round-to-nearest-even).</summary>
    public static void F32ToF16(ReadOnlySpan<float> src, Span<Half> dst) => TensorPrimitives.ConvertToHalf(src, dst);

    /// <summary>Converts <paramref name="count"/> elements of a float-typed buffer (F32/F16/BF16) to float32.</summary>
    public static unsafe void ToF32(DType type, void* src, Span<float> dst, int count)
    {
        switch (type)
        {
            case DType.F32: new ReadOnlySpan<float>(src, count).CopyTo(dst); break;
            case DType.BF16: BF16ToF32(new ReadOnlySpan<ushort>(src, count), dst); break;
            case DType.F16: F16ToF32(new ReadOnlySpan<Half>(src, count), dst); break;
            default: throw new NotSupportedException($"dtype {type} is not a floating-point weight type (expected F32, F16 or BF16)");
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe float ReadAsF32(DType type, void* basePtr, long index) => type switch
    {
        DType.F32 => ((float*)basePtr)[index],
        DType.BF16 => BitConverter.UInt32BitsToSingle((uint)((ushort*)basePtr)[index] << 16),
        DType.F16 => (float)((Half*)basePtr)[index],
        _ => throw new NotSupportedException($"dtype {type} is not a floating-point weight type"),
    };
}
