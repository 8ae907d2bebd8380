using System.Text.Json.Nodes;
using FeatureLens.Runtime.Checkpoints;
using FeatureLens.Runtime.Tensors;

namespace FeatureLens.Saes.Formats;

/// <summary>One tensor read from an SAE file, in float32, with the shape and dtype it was stored with.</summary>
internal sealed record StoredTensor(string Name, int[] Shape, float[] Data, string StorageDType)
{
    public string ShapeText => "[" + string.Join(", ", Shape) + "]";
}

/// <summary>Named float tensors of one SAE file (a safetensors file or an npz archive).</summary>
internal interface ISaeTensorFile : IDisposable
{
    /// <summary>The file name used in messages.</summary>
    string FileName { get; }
    bool Contains(string name);
    /// <summary>The tensor's shape without reading its data.</summary>
    int[] ShapeOf(string name);
    StoredTensor Read(string name);
}

/// <summary>A safetensors file of SAE weights.</summary>
internal sealed class SafetensorsSaeFile(SafetensorsFile file) : ISaeTensorFile
{
    public string FileName => file.Location;
    public bool Contains(string name) => file.Contains(name);
    public int[] ShapeOf(string name) => file.Entry(name).Shape;

    public StoredTensor Read(string name)
    {
        var e = file.Entry(name);
        string dtype = e.DType switch
        {
            DType.F32 => "float32",
            DType.F16 => "float16",
            DType.BF16 => "bfloat16",
            DType.F64 => "float64",
            _ => throw new InvalidDataException($"{file.Location}: tensor '{name}' has dtype {e.DType.SafetensorsName()}, expected a float type (F32, F16, BF16 or F64)"),
        };
        return new StoredTensor(name, e.Shape, file.ReadF32(name).Data, dtype);
    }

    public void Dispose() => file.Dispose();
}

/// <summary>An npz archive of SAE weights (Gemma Scope's params.npz).</summary>
internal sealed class NpzSaeFile(NpzReader npz) : ISaeTensorFile
{
    readonly Dictionary<string, NpyArray> _cache = new(StringComparer.Ordinal);

    public string FileName => npz.Location;
    public bool Contains(string name) => npz.Contains(name);
    public int[] ShapeOf(string name) => Get(name).Shape;

    public StoredTensor Read(string name)
    {
        var a = Get(name);
        _cache.Remove(name);
        return new StoredTensor(name, a.Shape, a.Data, a.StorageDType);
    }

    NpyArray Get(string name)
    {
        if (!_cache.TryGetValue(name, out var a)) _cache[name] = a = npz.Read(name);
        return a;
    }

    public void Dispose() => npz.Dispose();
}

/// <summary>
/// Puts SAE tensors into FeatureLens's layout — W_enc (d_in, d_sae), W_dec (d_sae, d_out), W_skip (d_out, d_in) —
/// whichever way a file stored them, and checks them: shapes against the config, finite values.
/// </summary>
internal static class SaeOrientation
{
    /// <summary>
    /// A (rows, cols) row-major matrix from a 2-D tensor stored as [rows, cols] or [cols, rows]. When
    /// rows == cols the two are indistinguishable and <paramref name="storedTransposed"/> (the format's
    /// documented layout) decides. <paramref name="dimsSource"/> says where rows/cols came from, for messages.
    /// </summary>
    public static float[] Matrix(StoredTensor t, string file, int rows, int cols, string rowsName, string colsName,
        bool storedTransposed, string dimsSource)
    {
        bool asIs = t.Shape.Length == 2 && t.Shape[0] == rows && t.Shape[1] == cols;
        bool flipped = t.Shape.Length == 2 && t.Shape[0] == cols && t.Shape[1] == rows;
        if (!asIs && !flipped)
            throw new InvalidDataException(
                $"{file}: tensor '{t.Name}' has shape {t.ShapeText}, expected [{rowsName}, {colsName}] = [{rows}, {cols}] or its transpose [{cols}, {rows}] " +
                $"({dimsSource})");
        CheckFinite(t, file);
        bool transpose = asIs && flipped ? storedTransposed : flipped;
        return transpose ? Transpose(t.Data, cols, rows) : t.Data;
    }

    /// <summary>A vector of <paramref name="n"/> elements (a [n] tensor; [1, n] and [n, 1] are accepted too).</summary>
    public static float[] Vector(StoredTensor t, string file, int n, string nName, string dimsSource)
    {
        bool ok = (t.Shape.Length == 1 && t.Shape[0] == n) || (t.Shape.Length == 2 && t.Data.Length == n && (t.Shape[0] == 1 || t.Shape[1] == 1));
        if (!ok)
            throw new InvalidDataException($"{file}: tensor '{t.Name}' has shape {t.ShapeText}, expected [{nName}] = [{n}] ({dimsSource})");
        CheckFinite(t, file);
        return t.Data;
    }

    /// <summary>Throws naming the tensor and the first bad element when a weight holds NaN or ±Inf.</summary>
    public static void CheckFinite(StoredTensor t, string file)
    {
        var d = t.Data;
        for (int i = 0; i < d.Length; i++)
            if (!float.IsFinite(d[i]))
                throw new InvalidDataException($"{file}: tensor '{t.Name}' holds {d[i]} at element {i} of shape {t.ShapeText}; SAE weights must be finite (a diverged or corrupted checkpoint?)");
    }

    /// <summary>src is (rows, cols) row-major; returns its (cols, rows) transpose.</summary>
    public static float[] Transpose(float[] src, int rows, int cols)
    {
        var dst = new float[src.Length];
        const int B = 32; // tile so both sides stay in cache
        for (int r0 = 0; r0 < rows; r0 += B)
            for (int c0 = 0; c0 < cols; c0 += B)
            {
                int r1 = Math.Min(rows, r0 + B), c1 = Math.Min(cols, c0 + B);
                for (int r = r0; r < r1; r++)
                    for (int c = c0; c < c1; c++) dst[(long)c * rows + r] = src[(long)r * cols + c];
            }
        return dst;
    }

    /// <summary>The length of a vector tensor (rank 1, or a 2-D tensor with one dimension 1), else null.</summary>
    public static int? VectorLength(int[] shape) =>
        shape.Length == 1 ? shape[0] : shape.Length == 2 && (shape[0] == 1 || shape[1] == 1) ? shape[0] * shape[1] : null;

    /// <summary>
    /// d_in from W_enc's shape once d_sae is known: the dimension that is not d_sae (d_sae itself when both
    /// are); null when neither dimension is d_sae.
    /// </summary>
    public static int? OtherDim(int[] shape, int known)
    {
        if (shape.Length != 2) return null;
        if (shape[0] == known) return shape[1];
        if (shape[1] == known) return shape[0];
        return null;
    }
}


/// <summary>
/// Where a format keeps each tensor and how it lays matrices out. Every format reads through this one
/// table, so the orientation and validation rules are written once.
/// </summary>
internal sealed class SaeTensorNames
{
    public string WEnc { get; init; } = "W_enc";
    /// <summary>The documented layout of the encoder is [d_sae, d_in] (used only when d_in == d_sae).</summary>
    public bool WEncStoredTransposed { get; init; }
    public string BEnc { get; init; } = "b_enc";
    public string WDec { get; init; } = "W_dec";
    public string BDec { get; init; } = "b_dec";
    public string Threshold { get; init; } = "threshold";
    /// <summary>Some JumpReLU files store log(threshold) instead.</summary>
    public string LogThreshold { get; init; } = "log_threshold";
    public string WSkip { get; init; } = "W_skip";
}

/// <summary>
/// Turns a parsed config plus a tensor file into an <see cref="Sae"/>: fills in dimensions the config does
/// not state (only where the tensors decide them unambiguously), orients matrices, checks every tensor
/// against the dimensions with messages that name the config field and the tensor.
/// </summary>
internal static class SaeAssembly
{
    /// <param name="cfg">Parsed config; DIn/DSae/DOut of 0 mean "not stated".</param>
    /// <param name="f">The weights.</param>
    /// <param name="names">Where the format keeps each tensor.</param>
    /// <param name="configFile">The config file name used in messages (e.g. ".../cfg.json"), or null when the format has none.</param>
    /// <param name="fieldNames">How the config calls d_in, d_sae, d_out (e.g. sparsify's "num_latents").</param>
    /// <param name="sourcePath">Recorded as <see cref="Sae.SourcePath"/>.</param>
    public static Sae Build(SaeConfig cfg, ISaeTensorFile f, SaeTensorNames names, string? configFile,
        (string DIn, string DSae, string DOut) fieldNames, string sourcePath)
    {
        string file = f.FileName;
        string cfgName = configFile ?? file;
        string Unstated(string field) => configFile is null ? "(the format has no config)" : $"because {Path.GetFileName(configFile)} does not state '{field}'";
        var src = new Dictionary<string, string>();
        void Stated(string dim, string field, int value) => src[dim] = configFile is null ? $"{dim} = {value} from {field}" : $"{dim} = {value} from {Path.GetFileName(configFile)} field '{field}'";

        // d_sae: from the config, else from the length of a per-latent vector.
        if (cfg.DSae > 0) Stated("d_sae", fieldNames.DSae, cfg.DSae);
        else
        {
            string? vec = new[] { names.BEnc, names.Threshold, names.LogThreshold, "b_gate", "b_mag" }.FirstOrDefault(n => f.Contains(n) && SaeOrientation.VectorLength(f.ShapeOf(n)) != null);
            if (vec is null)
                throw new InvalidDataException($"{cfgName}: field '{fieldNames.DSae}' (d_sae) is missing and {Path.GetFileName(file)} has no per-latent vector ({names.BEnc}, {names.Threshold}) to infer it from");
            cfg.DSae = SaeOrientation.VectorLength(f.ShapeOf(vec))!.Value;
            src["d_sae"] = $"d_sae = {cfg.DSae} inferred from tensor '{vec}' {Unstated(fieldNames.DSae)}";
        }

        // d_out (= d_in except for transcoders) and d_in.
        if (cfg.DOut > 0) Stated("d_out", fieldNames.DOut, cfg.DOut);
        if (cfg.DIn > 0) Stated("d_in", fieldNames.DIn, cfg.DIn);
        if (!cfg.IsTranscoder)
        {
            if (cfg.DIn <= 0 && cfg.DOut > 0) { cfg.DIn = cfg.DOut; src["d_in"] = src["d_out"]; }
            if (cfg.DIn <= 0) cfg.DIn = InferFromBDec(cfg, f, names, cfgName, fieldNames.DIn, src, "d_in", Unstated(fieldNames.DIn));
            cfg.DOut = cfg.DIn;
            src["d_out"] = src["d_in"];
        }
        else
        {
            if (cfg.DOut <= 0) cfg.DOut = InferFromBDec(cfg, f, names, cfgName, fieldNames.DOut, src, "d_out", Unstated(fieldNames.DOut));
            if (cfg.DIn <= 0)
            {
                var shape = f.Contains(names.WEnc) ? f.ShapeOf(names.WEnc) : [];
                cfg.DIn = SaeOrientation.OtherDim(shape, cfg.DSae)
                    ?? throw new InvalidDataException($"{cfgName}: field '{fieldNames.DIn}' (d_in) is missing and tensor '{names.WEnc}' of shape [{string.Join(", ", shape)}] does not determine it ({src["d_sae"]})");
                src["d_in"] = $"d_in = {cfg.DIn} inferred from tensor '{names.WEnc}' {Unstated(fieldNames.DIn)}";
            }
        }
        cfg.Validate(cfgName);

        string dims = string.Join(", ", src["d_in"], src["d_sae"]) + (cfg.IsTranscoder ? ", " + src["d_out"] : "");
        StoredTensor Need(string name)
        {
            if (!f.Contains(name))
                throw new InvalidDataException($"{file}: tensor '{name}' is missing; a {SaeConfig.ArchitectureName(cfg.Architecture)} SAE needs it");
            return f.Read(name);
        }

        var wEncT = Need(names.WEnc);
        cfg.StorageDType = wEncT.StorageDType;
        var wEnc = SaeOrientation.Matrix(wEncT, file, cfg.DIn, cfg.DSae, "d_in", "d_sae", names.WEncStoredTransposed, dims);
        var wDec = SaeOrientation.Matrix(Need(names.WDec), file, cfg.DSae, cfg.DOut, "d_sae", cfg.IsTranscoder ? "d_out" : "d_in", false, dims);
        var bDec = SaeOrientation.Vector(Need(names.BDec), file, cfg.DOut, cfg.IsTranscoder ? "d_out" : "d_in", dims);

        float[]? bEnc = null, threshold = null, bGate = null, rMag = null, bMag = null, wSkip = null;
        if (cfg.Architecture == SaeArchitecture.Gated)
        {
            bGate = SaeOrientation.Vector(Need("b_gate"), file, cfg.DSae, "d_sae", dims);
            rMag = SaeOrientation.Vector(Need("r_mag"), file, cfg.DSae, "d_sae", dims);
            bMag = SaeOrientation.Vector(Need("b_mag"), file, cfg.DSae, "d_sae", dims);
        }
        else bEnc = SaeOrientation.Vector(Need(names.BEnc), file, cfg.DSae, "d_sae", dims);

        if (cfg.HasThreshold)
        {
            if (f.Contains(names.Threshold)) threshold = SaeOrientation.Vector(f.Read(names.Threshold), file, cfg.DSae, "d_sae", dims);
            else if (f.Contains(names.LogThreshold))
            {
                var log = SaeOrientation.Vector(f.Read(names.LogThreshold), file, cfg.DSae, "d_sae", dims);
                threshold = new float[log.Length];
                for (int i = 0; i < log.Length; i++) threshold[i] = MathF.Exp(log[i]);
            }
            else throw new InvalidDataException($"{file}: a {SaeConfig.ArchitectureName(cfg.Architecture)} SAE needs tensor '{names.Threshold}' (or '{names.LogThreshold}'); neither is present");
        }
        if (cfg.HasSkip)
            wSkip = SaeOrientation.Matrix(Need(names.WSkip), file, cfg.DOut, cfg.DIn, "d_out", "d_in", false, dims);

        return new Sae(cfg, wEnc, bEnc, wDec, bDec, threshold, bGate, rMag, bMag, wSkip) { SourcePath = sourcePath };
    }

    static int InferFromBDec(SaeConfig cfg, ISaeTensorFile f, SaeTensorNames names, string cfgName, string field, Dictionary<string, string> src, string dim, string unstated)
    {
        int? n = f.Contains(names.BDec) ? SaeOrientation.VectorLength(f.ShapeOf(names.BDec)) : null;
        if (n is null)
            throw new InvalidDataException($"{cfgName}: field '{field}' ({dim}) is missing and there is no vector tensor '{names.BDec}' to infer it from");
        src[dim] = $"{dim} = {n} inferred from tensor '{names.BDec}' {unstated}";
        return n.Value;
    }

    /// <summary>Parses a small JSON config; errors name the file.</summary>
    public static JsonObject ReadJsonObject(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"config not found: {path}", path);
        JsonNode? node;
        try { node = JsonNode.Parse(File.ReadAllText(path)); }
        catch (System.Text.Json.JsonException e) { throw new InvalidDataException($"{path}: not valid JSON ({e.Message})", e); }
        return node as JsonObject ?? throw new InvalidDataException($"{path}: expected a JSON object at the top level");
    }
}

/// <summary>Typed reads of config fields with errors that name the file and field.</summary>
internal readonly struct ConfigFields(string path, JsonObject obj)
{
    public string Path => path;
    public JsonObject Json => obj;

    public bool Has(string key) => obj.TryGetPropertyValue(key, out var v) && v is not null;

    public int? Int(string key)
    {
        if (!obj.TryGetPropertyValue(key, out var v) || v is null) return null;
        if (v is JsonValue jv)
        {
            if (jv.TryGetValue(out int i)) return i;
            if (jv.TryGetValue(out double d) && d == Math.Floor(d) && d is >= int.MinValue and <= int.MaxValue) return (int)d;
        }
        throw new InvalidDataException($"{path}: field '{key}' must be an integer, got {v.ToJsonString()}");
    }

    public double? Double(string key)
    {
        if (!obj.TryGetPropertyValue(key, out var v) || v is null) return null;
        if (v is JsonValue jv && jv.TryGetValue(out double d)) return d;
        throw new InvalidDataException($"{path}: field '{key}' must be a number, got {v.ToJsonString()}");
    }

    public bool? Bool(string key)
    {
        if (!obj.TryGetPropertyValue(key, out var v) || v is null) return null;
        if (v is JsonValue jv && jv.TryGetValue(out bool b)) return b;
        throw new InvalidDataException($"{path}: field '{key}' must be true or false, got {v.ToJsonString()}");
    }

    public string? String(string key)
    {
        if (!obj.TryGetPropertyValue(key, out var v) || v is null) return null;
        if (v is JsonValue jv && jv.TryGetValue(out string? s)) return s;
        throw new InvalidDataException($"{path}: field '{key}' must be a string, got {v.ToJsonString()}");
    }

    public ConfigFields? Object(string key)
    {
        if (!obj.TryGetPropertyValue(key, out var v) || v is null) return null;
        if (v is JsonObject o) return new ConfigFields($"{path} ('{key}')", o);
        throw new InvalidDataException($"{path}: field '{key}' must be an object, got {v.ToJsonString()}");
    }

    /// <summary>Copies every field not in <paramref name="consumed"/> into <paramref name="extra"/>.</summary>
    public void CopyRest(JsonObject extra, ISet<string> consumed)
    {
        foreach (var (k, v) in obj)
            if (!consumed.Contains(k)) extra[k] = v?.DeepClone();
    }
}
