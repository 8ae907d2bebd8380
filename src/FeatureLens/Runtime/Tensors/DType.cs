namespace FeatureLens.Runtime.Tensors;

/// <summary>Element types FeatureLens reads from and writes to checkpoints (safetensors names in comments).</summary>
public enum DType
{
    F32,  // "F32"
    F16,  // "F16"
    BF16, // "BF16"
    F64,  // "F64"
    I64,  // "I64"
    I32,  // "I32"
    I16,  // "I16"
    I8,   // "I8"
    U8,   // "U8"
    Bool, // "BOOL"
}

public static class DTypeInfo
{
    /// <summary>Bytes per element.</summary>
    public static int Size(this DType t) => t switch
    {
        DType.F64 or DType.I64 => 8,
        DType.F32 or DType.I32 => 4,
        DType.F16 or DType.BF16 or DType.I16 => 2,
        _ => 1,
    };

    /// <summary>The safetensors header name of a dtype.</summary>
    public static string SafetensorsName(this DType t) => t switch
    {
        DType.F32 => "F32",
        DType.F16 => "F16",
        DType.BF16 => "BF16",
        DType.F64 => "F64",
        DType.I64 => "I64",
        DType.I32 => "I32",
        DType.I16 => "I16",
        DType.I8 => "I8",
        DType.U8 => "U8",
        DType.Bool => "BOOL",
        _ => throw new ArgumentOutOfRangeException(nameof(t)),
    };

    /// <summary>Parses a safetensors dtype name; returns false for names FeatureLens does not support.</summary>
    public static bool TryParseSafetensors(string name, out DType t)
    {
        switch (name)
        {
            case "F32": t = DType.F32; return true;
            case "F16": t = DType.F16; return true;
            case "BF16": t = DType.BF16; return true;
            case "F64": t = DType.F64; return true;
            case "I64": t = DType.I64; return true;
            case "I32": t = DType.I32; return true;
            case "I16": t = DType.I16; return true;
            case "I8": t = DType.I8; return true;
            case "U8": t = DType.U8; return true;
            case "BOOL": t = DType.Bool; return true;
            default: t = default; return false;
        }
    }

    /// <summary>True for the floating-point types a weight may be stored in (F32, F16, BF16).</summary>
    public static bool IsWeightFloat(this DType t) => t is DType.F32 or DType.F16 or DType.BF16;
}
