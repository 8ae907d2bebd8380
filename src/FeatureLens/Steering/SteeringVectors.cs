using System.Globalization;
using System.Text.Json;
using FeatureLens.Runtime.Checkpoints;
using FeatureLens.Runtime.Models;
using FeatureLens.Saes.Formats;
using Tensor = FeatureLens.Runtime.Tensors.Tensor;

namespace FeatureLens.Steering;

/// <summary>How a contrastive steering vector reads each prompt's hook activation.</summary>
public enum ContrastPosition
{
    /// <summary>The prompt's last position (contrastive activation addition).</summary>
    Last,
    /// <summary>The mean over every position of the prompt.</summary>
    Mean,
}

/// <summary>Steering vectors: reading one from a file, and the mean difference of activations over contrastive prompt pairs.</summary>
public static class SteeringVectors
{
    /// <summary>The tensor name <see cref="Save"/> writes.</summary>
    public const string TensorName = "vector";

    /// <summary>
    /// A vector from a .npy file or a safetensors tensor (<paramref name="name"/>, or the file's only tensor when null); shape
    /// (d) or (1, d); F32, F16, BF16 or F64. Every entry must be finite. Errors name the file and tensor.
    /// </summary>
    public static float[] Read(string path, string? name)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"--vector {path}: file not found", path);
        Tensor t;
        string what;
        if (path.EndsWith(".npy", StringComparison.OrdinalIgnoreCase))
        {
            if (name != null) throw new ArgumentException($"--vector {path}:{name}: a .npy file holds one array; give no tensor name");
            var a = NpyReader.ReadFile(path);
            t = new Tensor(a.Shape.Length == 0 ? [1] : a.Shape, a.Data);
            what = path;
        }
        else if (path.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase))
        {
            using var f = SafetensorsFile.Open(path);
            var names = f.Names.ToList();
            if (name == null)
            {
                if (names.Count != 1)
                    throw new ArgumentException($"--vector {path}: the file holds {names.Count} tensors ({string.Join(", ", names.Take(10))}); name one as FILE:NAME");
                name = names[0];
            }
            else if (!f.Contains(name))
                throw new ArgumentException($"--vector {path}: no tensor '{name}' in the file (it has {string.Join(", ", names.Take(10))}{(names.Count > 10 ? ", ..." : "")})");
            t = f.ReadF32(name);
            what = $"{path}:{name}";
        }
        else throw new ArgumentException($"--vector {path}: expected a .safetensors or .npy file");
        if (!(t.Rank == 1 || (t.Rank == 2 && t.Shape[0] == 1)))
            throw new InvalidDataException($"--vector {what}: shape [{string.Join(",", t.Shape)}]; expected a vector [d] or [1, d]");
        for (int i = 0; i < t.Length; i++)
            if (!float.IsFinite(t.Data[i])) throw new InvalidDataException($"--vector {what}: entry {i} is {t.Data[i].ToString(CultureInfo.InvariantCulture)} (NaN or infinite)");
        return t.Data;
    }

    /// <summary>
    /// CAA: mean over pairs of (activation of the positive prompt − activation of the negative prompt) at
    /// <paramref name="hook"/>, each read at the last position or averaged over the prompt's positions. Accumulated in double.
    /// </summary>
    public static float[] Contrastive(HookedTransformer model, string hook, IReadOnlyList<(int[] Positive, int[] Negative)> pairs, ContrastPosition position)
    {
        model.CheckHookName(hook);
        int width = model.HookWidth(hook) ?? throw new ArgumentException($"--hook {hook}: an attention pattern has no vector per position");
        if (pairs.Count == 0) throw new ArgumentException("no prompt pairs given");
        var sum = new double[width];
        foreach (var (pos, neg) in pairs)
        {
            Accumulate(model, hook, pos, position, sum, width, +1);
            Accumulate(model, hook, neg, position, sum, width, -1);
        }
        return sum.Select(v => (float)(v / pairs.Count)).ToArray();
    }

    static void Accumulate(HookedTransformer model, string hook, int[] tokens, ContrastPosition position, double[] sum, int width, int sign)
    {
        using var cache = new ActivationCache { Lengths = [tokens.Length] };
        int? layer = SaeLoader.LayerOf(hook);
        model.Run([tokens], new RunOptions
        {
            CacheFilter = n => n == hook, Cache = cache, ReturnLogits = layer is null,
            StopAtLayer = layer is int l ? l + 1 : null,
        });
        var act = cache[hook];   // (1, T, width)
        int T = tokens.Length;
        int from = position == ContrastPosition.Last ? T - 1 : 0;
        double w = sign / (double)(T - from);
        for (int t = from; t < T; t++)
            for (int j = 0; j < width; j++) sum[j] += w * act.Data[(long)t * width + j];
    }

    /// <summary>Writes the vector as tensor "vector" [d] with metadata (hook, count, position, model), atomically.</summary>
    public static void Save(string path, float[] vector, string hook, int count, ContrastPosition position, string? model)
    {
        var meta = new Dictionary<string, string>
        {
            ["hook"] = hook, ["count"] = count.ToString(CultureInfo.InvariantCulture),
            ["position"] = position.ToString().ToLowerInvariant(), ["format"] = "featurelens-steering-vector",
        };
        if (model != null) meta["model"] = model;
        new SafetensorsWriter().Add(TensorName, new Tensor([vector.Length], vector)).Write(path, meta);
    }

    /// <summary>
    /// Prompts from a text file (one per non-empty line) or a JSONL file (.jsonl: a "text" field or a JSON string per line).
    /// </summary>
    public static List<string> ReadPrompts(string path, string option)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"{option} {path}: file not found", path);
        var list = new List<string>();
        bool jsonl = path.EndsWith(".jsonl", StringComparison.OrdinalIgnoreCase);
        int lineNo = 0;
        foreach (var line in File.ReadLines(path))
        {
            lineNo++;
            if (string.IsNullOrWhiteSpace(line)) continue;
            if (!jsonl) { list.Add(line); continue; }
            try
            {
                using var doc = JsonDocument.Parse(line);
                var root = doc.RootElement;
                if (root.ValueKind == JsonValueKind.String) list.Add(root.GetString()!);
                else if (root.ValueKind == JsonValueKind.Object && root.TryGetProperty("text", out var txt) && txt.ValueKind == JsonValueKind.String) list.Add(txt.GetString()!);
                else throw new InvalidDataException($"{option} {path}: line {lineNo} has no string field \"text\"");
            }
            catch (JsonException e) { throw new InvalidDataException($"{option} {path}: line {lineNo} is not JSON ({e.Message})"); }
        }
        if (list.Count == 0) throw new InvalidDataException($"{option} {path}: no prompts in the file");
        return list;
    }
}
