using System.Runtime.InteropServices;

namespace FeatureLens.Runtime.Tensors;

/// <summary>
/// A read-only tensor of F32, F16 or BF16 elements in unmanaged memory (usually a memory-mapped
/// checkpoint). 16-bit weights stay 16-bit: kernels convert while packing, so a bf16 checkpoint is
/// never copied to float32 as a whole. The <see cref="Owner"/> keeps the mapping alive.
/// </summary>
public sealed unsafe class WeightTensor
{
    public string Name { get; }
    public DType DType { get; }
    public int[] Shape { get; }
    /// <summary>First element.</summary>
    public byte* Pointer { get; }
    /// <summary>Whatever must stay alive for <see cref="Pointer"/> to stay valid (a mapping, a native buffer).</summary>
    public object? Owner { get; }

    public WeightTensor(string name, DType dtype, int[] shape, byte* pointer, object? owner)
    {
        if (!dtype.IsWeightFloat()) throw new ArgumentException($"tensor '{name}': dtype {dtype} cannot be used as a weight (expected F32, F16 or BF16)");
        Name = name; DType = dtype; Shape = (int[])shape.Clone(); Pointer = pointer; Owner = owner;
    }

    public long ElementCount => Tensor.ElementCount(Shape);
    public int Rank => Shape.Length;

    /// <summary>Element <paramref name="index"/> (flat, row-major) as float32.</summary>
    public float this[long index] => (ulong)index < (ulong)ElementCount
        ? FloatConvert.ReadAsF32(DType, Pointer, index)
        : throw new ArgumentOutOfRangeException(nameof(index), $"element {index} outside tensor '{Name}' of {ElementCount} elements");

    /// <summary>Copies row <paramref name="row"/> of a 2-D weight (or of the tensor seen as [Shape[0], rest]) into <paramref name="dst"/> as float32.</summary>
    public void ReadRow(int row, Span<float> dst)
    {
        long rowLen = ElementCount / Shape[0];
        if ((uint)row >= (uint)Shape[0]) throw new ArgumentOutOfRangeException(nameof(row), $"row {row} outside tensor '{Name}' with {Shape[0]} rows");
        FloatConvert.ToF32(DType, Pointer + row * rowLen * DType.Size(), dst, (int)rowLen);
    }

    /// <summary>All elements as a new float32 array (use for small tensors: norms, biases).</summary>
    public float[] ToArray()
    {
        var a = new float[ElementCount];
        FloatConvert.ToF32(DType, Pointer, a, a.Length);
        return a;
    }

    /// <summary>This 2-D weight [rows, cols] as a row-major matrix view.</summary>
    public MatrixView AsMatrix()
    {
        if (Rank != 2) throw new InvalidOperationException($"tensor '{Name}' has shape [{string.Join(",", Shape)}], expected 2 dimensions");
        return new MatrixView(Pointer, DType, Shape[0], Shape[1], Shape[1], 1);
    }

    /// <summary>A view of slice <paramref name="index"/> along the first dimension (e.g. one layer of a layer-stacked llama2.c array).</summary>
    public WeightTensor Slice(int index, string name)
    {
        long inner = ElementCount / Shape[0];
        return new WeightTensor(name, DType, Shape[1..], Pointer + index * inner * DType.Size(), Owner);
    }

    /// <summary>A view of <paramref name="shape"/> elements starting at element <paramref name="offset"/>.</summary>
    public WeightTensor View(long offset, int[] shape, string name) =>
        new(name, DType, shape, Pointer + offset * DType.Size(), Owner);

    /// <summary>Copies float32 data into a new native buffer (tests, synthetic weights, small models).</summary>
    public static WeightTensor FromArray(string name, float[] data, params int[] shape)
    {
        if (Tensor.ElementCount(shape) != data.Length) throw new ArgumentException($"tensor '{name}': {data.Length} elements do not fit shape [{string.Join(",", shape)}]");
        var buf = new NativeBuffer((long)data.Length * 4);
        data.AsSpan().CopyTo(new Span<float>(buf.Pointer, data.Length));
        return new WeightTensor(name, DType.F32, shape, buf.Pointer, buf);
    }
}

/// <summary>64-byte aligned unmanaged memory, freed when collected or disposed.</summary>
public sealed unsafe class NativeBuffer : IDisposable
{
    public byte* Pointer { get; private set; }
    public long Length { get; }

    public NativeBuffer(long bytes)
    {
        Length = bytes;
        Pointer = (byte*)NativeMemory.AlignedAlloc((nuint)Math.Max(bytes, 1), 64);
    }

    public void Dispose()
    {
        if (Pointer != null) { NativeMemory.AlignedFree(Pointer); Pointer = null; }
        GC.SuppressFinalize(this);
    }

    ~NativeBuffer() => Dispose();
}
