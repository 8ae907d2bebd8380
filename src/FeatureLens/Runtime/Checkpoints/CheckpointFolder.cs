using System.Text.Json;
using FeatureLens.Runtime.Tensors;

namespace FeatureLens.Runtime.Checkpoints;

/// <summary>
/// The weights of a Hugging Face model folder. <see cref="Open"/> picks, in order:
/// <c>model.safetensors</c>; shards listed by <c>model.safetensors.index.json</c> (its
/// <c>weight_map</c> maps each tensor name to a shard file); or the folder's only <c>*.safetensors</c> file.
/// A sharded folder is validated up front: every shard exists, holds the tensors the index
/// assigns to it, and no tensor appears in two shards.
/// </summary>
public sealed class CheckpointFolder : ITensorSource
{
    /// <summary>File name of a single-file checkpoint.</summary>
    public const string SingleFileName = "model.safetensors";
    /// <summary>File name of the shard index.</summary>
    public const string IndexFileName = "model.safetensors.index.json";

    readonly Dictionary<string, SafetensorsFile> _shardOf;
    readonly List<SafetensorsFile> _shards;

    /// <summary>The index file of this sharded checkpoint.</summary>
    public string Location { get; }
    /// <summary>The shard files, in the order the index first mentions them.</summary>
    public IReadOnlyList<SafetensorsFile> Shards => _shards;

    CheckpointFolder(string indexPath, List<SafetensorsFile> shards, Dictionary<string, SafetensorsFile> shardOf)
    {
        Location = indexPath; _shards = shards; _shardOf = shardOf;
    }

    /// <summary>
    /// Opens the weights in <paramref name="folder"/> (a <c>.safetensors</c> file path is accepted too).
    /// Returns a <see cref="SafetensorsFile"/> for a single file, a <see cref="CheckpointFolder"/> for shards.
    /// </summary>
    public static ITensorSource Open(string folder)
    {
        folder = Path.GetFullPath(folder);
        if (File.Exists(folder) && folder.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase))
            return SafetensorsFile.Open(folder);
        if (!Directory.Exists(folder))
            throw new DirectoryNotFoundException($"checkpoint folder not found: {folder}");

        string single = Path.Combine(folder, SingleFileName);
        if (File.Exists(single)) return SafetensorsFile.Open(single);

        string index = Path.Combine(folder, IndexFileName);
        if (File.Exists(index)) return OpenSharded(index);

        var candidates = Directory.GetFiles(folder, "*.safetensors").OrderBy(f => f, StringComparer.Ordinal).ToArray();
        if (candidates.Length == 1) return SafetensorsFile.Open(candidates[0]);
        if (candidates.Length > 1)
            throw new InvalidDataException(
                $"{folder}: holds {candidates.Length} .safetensors files ({string.Join(", ", candidates.Select(Path.GetFileName))}) but no {IndexFileName} saying which tensor is where");
        throw new FileNotFoundException(
            $"{folder}: no weights found; looked for {SingleFileName}, {IndexFileName}, or a single *.safetensors file");
    }

    /// <summary>Opens the shards named by a <c>model.safetensors.index.json</c> and checks them against it.</summary>
    public static CheckpointFolder OpenSharded(string indexPath)
    {
        indexPath = Path.GetFullPath(indexPath);
        string folder = Path.GetDirectoryName(indexPath)!;
        var weightMap = ReadWeightMap(indexPath);

        var shards = new List<SafetensorsFile>();
        var byFile = new Dictionary<string, SafetensorsFile>(StringComparer.Ordinal);
        var shardOf = new Dictionary<string, SafetensorsFile>(StringComparer.Ordinal);
        try
        {
            foreach (var (tensor, file) in weightMap)
            {
                if (!byFile.TryGetValue(file, out var shard))
                {
                    if (Path.IsPathRooted(file) || file.Split('/', '\\').Contains(".."))
                        throw new InvalidDataException($"{indexPath}: shard '{file}' for tensor '{tensor}' must be a file name inside the folder");
                    string shardPath = Path.Combine(folder, file);
                    if (!File.Exists(shardPath))
                        throw new FileNotFoundException($"{indexPath}: shard '{file}' (for tensor '{tensor}') does not exist at {shardPath}", shardPath);
                    shard = SafetensorsFile.Open(shardPath);
                    byFile[file] = shard;
                    shards.Add(shard);
                }
                if (!shard.Contains(tensor))
                    throw new InvalidDataException($"{indexPath}: tensor '{tensor}' is mapped to shard '{file}', but {shard.Location} does not contain it");
                shardOf[tensor] = shard;
            }

            // A tensor stored in two shards is ambiguous, whatever the index says.
            var holder = new Dictionary<string, SafetensorsFile>(StringComparer.Ordinal);
            foreach (var shard in shards)
                foreach (var name in shard.Names)
                    if (!holder.TryAdd(name, shard))
                        throw new InvalidDataException(
                            $"{indexPath}: tensor '{name}' appears in two shards, {Path.GetFileName(holder[name].Location)} and {Path.GetFileName(shard.Location)}");
        }
        catch
        {
            foreach (var s in shards) s.Dispose();
            throw;
        }
        return new CheckpointFolder(indexPath, shards, shardOf);
    }

    static List<(string tensor, string file)> ReadWeightMap(string indexPath)
    {
        JsonDocument doc;
        try { doc = JsonDocument.Parse(File.ReadAllBytes(indexPath)); }
        catch (JsonException e) { throw new InvalidDataException($"{indexPath}: not valid JSON ({e.Message})", e); }
        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object
                || !doc.RootElement.TryGetProperty("weight_map", out var map)
                || map.ValueKind != JsonValueKind.Object)
                throw new InvalidDataException($"{indexPath}: expected a JSON object with an object field 'weight_map' (tensor name → shard file)");
            var result = new List<(string, string)>();
            var seen = new HashSet<string>(StringComparer.Ordinal);
            foreach (var p in map.EnumerateObject())
            {
                if (p.Value.ValueKind != JsonValueKind.String || string.IsNullOrEmpty(p.Value.GetString()))
                    throw new InvalidDataException($"{indexPath}: weight_map entry '{p.Name}' must be a shard file name, found {p.Value.ValueKind}");
                if (!seen.Add(p.Name))
                    throw new InvalidDataException($"{indexPath}: weight_map lists tensor '{p.Name}' more than once");
                result.Add((p.Name, p.Value.GetString()!));
            }
            if (result.Count == 0) throw new InvalidDataException($"{indexPath}: weight_map is empty");
            return result;
        }
    }

    /// <summary>Tensor names from the index.</summary>
    public IEnumerable<string> Names => _shardOf.Keys;

    public bool Contains(string name) => _shardOf.ContainsKey(name);

    /// <summary>The shard that holds <paramref name="name"/> (for integer tensors, raw bytes, metadata).</summary>
    public SafetensorsFile ShardOf(string name) =>
        _shardOf.TryGetValue(name, out var s) ? s
        : throw new KeyNotFoundException($"{Location}: no tensor named '{name}' in the weight_map ({_shardOf.Count} tensors)");

    public WeightTensor Get(string name) => ShardOf(name).Get(name);

    public void Dispose()
    {
        foreach (var s in _shards) s.Dispose();
    }

    public override string ToString() => $"CheckpointFolder({Location}, {_shards.Count} shards, {_shardOf.Count} tensors)";
}
