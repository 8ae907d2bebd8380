namespace FeatureLens.Runtime.Tensors;

/// <summary>
/// A strided 2-D view: element (r, c) lives at Pointer + (r·RowStride + c·ColStride)·size(DType).
/// The same bytes seen transposed are <see cref="T"/>, so one GEMM serves A·B, A·Bᵀ and Aᵀ·B.
/// </summary>
public readonly unsafe struct MatrixView
{
    public readonly byte* Pointer;
    public readonly DType DType;
    public readonly int Rows;
    public readonly int Cols;
    /// <summary>Elements (not bytes) between consecutive rows.</summary>
    public readonly long RowStride;
    /// <summary>Elements (not bytes) between consecutive columns.</summary>
    public readonly long ColStride;

    public MatrixView(void* pointer, DType dtype, int rows, int cols, long rowStride, long colStride)
    {
        if (!dtype.IsWeightFloat()) throw new ArgumentException($"matrix dtype {dtype} is not F32, F16 or BF16");
        Pointer = (byte*)pointer; DType = dtype; Rows = rows; Cols = cols; RowStride = rowStride; ColStride = colStride;
    }

    /// <summary>A row-major float32 matrix [rows, cols] with leading dimension <paramref name="ld"/> (defaults to cols).</summary>
    public static MatrixView F32(float* p, int rows, int cols, long ld = -1) =>
        new(p, DType.F32, rows, cols, ld < 0 ? cols : ld, 1);

    /// <summary>The first element as a float pointer (F32 views).</summary>
    public float* Pointer32 => (float*)Pointer;

    /// <summary>The transpose: same memory, rows and columns swapped.</summary>
    public MatrixView T => new(Pointer, DType, Cols, Rows, ColStride, RowStride);

    /// <summary>Rows [r0, r0+n).</summary>
    public MatrixView RowSlice(int r0, int n) => new(Pointer + r0 * RowStride * DType.Size(), DType, n, Cols, RowStride, ColStride);

    /// <summary>Columns [c0, c0+n).</summary>
    public MatrixView ColSlice(int c0, int n) => new(Pointer + c0 * ColStride * DType.Size(), DType, Rows, n, RowStride, ColStride);

    public float this[int r, int c] => FloatConvert.ReadAsF32(DType, Pointer, r * RowStride + c * ColStride);
}
