namespace FeatureLens.Runtime.Tensors;

/// <summary>
/// A dense, row-major float32 tensor held in managed memory: activations, logits, gradients.
/// Weights live in <see cref="WeightTensor"/> (memory-mapped, possibly 16-bit).
/// </summary>
public sealed class Tensor
{
    /// <summary>Dimensions, outermost first.</summary>
    public int[] Shape { get; }
    /// <summary>The elements, row-major; length = product of <see cref="Shape"/>.</summary>
    public float[] Data { get; }

    public Tensor(params int[] shape) : this(shape, null) { }

    public Tensor(int[] shape, float[]? data)
    {
        long n = ElementCount(shape);
        if (n > Array.MaxLength) throw new ArgumentException($"tensor of shape [{string.Join(",", shape)}] has {n} elements, more than one array can hold");
        Shape = (int[])shape.Clone();
        if (data is null) Data = new float[n];
        else
        {
            if (data.Length != n) throw new ArgumentException($"data has {data.Length} elements but shape [{string.Join(",", shape)}] needs {n}");
            Data = data;
        }
    }

    public int Rank => Shape.Length;
    public int Length => Data.Length;
    public Span<float> Span => Data;

    /// <summary>Size of dimension <paramref name="d"/> (negative counts from the end).</summary>
    public int Dim(int d) => Shape[d < 0 ? Shape.Length + d : d];

    /// <summary>A tensor sharing this one's data with another shape of the same element count.</summary>
    public Tensor Reshape(params int[] shape)
    {
        int infer = Array.IndexOf(shape, -1);
        if (infer >= 0)
        {
            long known = 1;
            for (int i = 0; i < shape.Length; i++) if (i != infer) known *= shape[i];
            shape = (int[])shape.Clone();
            shape[infer] = (int)(Length / known);
        }
        if (ElementCount(shape) != Length) throw new ArgumentException($"cannot reshape [{string.Join(",", Shape)}] to [{string.Join(",", shape)}]");
        return new Tensor(shape, Data);
    }

    public Tensor Clone() => new(Shape, (float[])Data.Clone());

    public static long ElementCount(ReadOnlySpan<int> shape)
    {
        long n = 1;
        foreach (int s in shape)
        {
            if (s < 0) throw new ArgumentException("negative dimension in shape");
            n *= s;
        }
        return n;
    }

    public override string ToString() => $"Tensor[{string.Join(",", Shape)}]";
}
