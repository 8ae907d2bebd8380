using System.Text.Json;
using FeatureLens.Runtime.Checkpoints;
using FeatureLens.Runtime.Tensors;

namespace FeatureLens.Tests.Checkpoints;

public class CheckpointFolderTests
{
    static Tensor RandomTensor(Random rng, params int[] shape)
    {
        var t = new Tensor(shape);
        for (int i = 0; i < t.Length; i++) t.Data[i] = (float)(rng.NextDouble() * 2 - 1);
        return t;
    }

    static void WriteIndex(string folder, Dictionary<string, string> weightMap) =>
        File.WriteAllText(Path.Combine(folder, CheckpointFolder.IndexFileName),
            JsonSerializer.Serialize(new { metadata = new { total_size = 0 }, weight_map = weightMap }));

    /// <summary>Two shards: a.* in shard 1, b.* in shard 2; returns the tensors written.</summary>
    static Dictionary<string, Tensor> WriteTwoShards(string folder, Random rng)
    {
        var tensors = new Dictionary<string, Tensor>
        {
            ["a.weight"] = RandomTensor(rng, 3, 4),
            ["a.bias"] = RandomTensor(rng, 4),
            ["b.weight"] = RandomTensor(rng, 5, 2),
        };
        new SafetensorsWriter().Add("a.weight", tensors["a.weight"]).Add("a.bias", tensors["a.bias"])
            .Write(Path.Combine(folder, "model-00001-of-00002.safetensors"));
        new SafetensorsWriter().Add("b.weight", tensors["b.weight"])
            .Write(Path.Combine(folder, "model-00002-of-00002.safetensors"));
        WriteIndex(folder, new()
        {
            ["a.weight"] = "model-00001-of-00002.safetensors",
            ["a.bias"] = "model-00001-of-00002.safetensors",
            ["b.weight"] = "model-00002-of-00002.safetensors",
        });
        return tensors;
    }

    [Fact]
    public void Sharded_folder_serves_every_tensor_from_its_shard()
    {
        int seed = CheckpointTestSupport.NewSeed();
        using var dir = new TempDir();
        var tensors = WriteTwoShards(dir.Path, new Random(seed));
        using var src = CheckpointFolder.Open(dir.Path);
        var folder = Assert.IsType<CheckpointFolder>(src);
        Assert.Equal(2, folder.Shards.Count);
        Assert.Equal(tensors.Keys.Order(), src.Names.Order());
        foreach (var (name, t) in tensors)
        {
            Assert.True(src.Contains(name));
            var w = src.Get(name);
            Assert.Equal(t.Shape, w.Shape);
            Assert.True(t.Data.SequenceEqual(w.ToArray()), $"{name} (seed {seed})");
        }
        Assert.EndsWith("model-00002-of-00002.safetensors", folder.ShardOf("b.weight").Location);
        var ex = Assert.Throws<KeyNotFoundException>(() => src.Get("c.weight"));
        Assert.Contains("c.weight", ex.Message);
        Assert.Contains(CheckpointFolder.IndexFileName, ex.Message);
    }

    [Fact]
    public void Single_file_folders_open_as_safetensors_files()
    {
        var rng = new Random(CheckpointTestSupport.NewSeed());
        using var dir = new TempDir();
        new SafetensorsWriter().Add("x", RandomTensor(rng, 2)).Write(dir.File("model.safetensors"));
        using (var src = CheckpointFolder.Open(dir.Path))
            Assert.Equal(dir.File("model.safetensors"), Assert.IsType<SafetensorsFile>(src).Location);

        using var other = new TempDir();
        new SafetensorsWriter().Add("y", RandomTensor(rng, 2)).Write(other.File("sae.safetensors"));
        using (var src = CheckpointFolder.Open(other.Path)) Assert.Equal(["y"], src.Names);
        // A file path is accepted as well.
        using (var src = CheckpointFolder.Open(other.File("sae.safetensors"))) Assert.True(src.Contains("y"));

        new SafetensorsWriter().Add("z", RandomTensor(rng, 2)).Write(other.File("second.safetensors"));
        var ex = Assert.Throws<InvalidDataException>(() => CheckpointFolder.Open(other.Path));
        Assert.Contains("sae.safetensors", ex.Message);
        Assert.Contains("second.safetensors", ex.Message);
        Assert.Contains(CheckpointFolder.IndexFileName, ex.Message);
    }

    [Fact]
    public void Empty_folder_says_what_was_looked_for()
    {
        using var dir = new TempDir();
        var ex = Assert.Throws<FileNotFoundException>(() => CheckpointFolder.Open(dir.Path));
        Assert.Contains(dir.Path, ex.Message);
        Assert.Contains("model.safetensors", ex.Message);
        Assert.Contains(CheckpointFolder.IndexFileName, ex.Message);
    }

    [Fact]
    public void Missing_shard_names_index_and_shard()
    {
        using var dir = new TempDir();
        WriteTwoShards(dir.Path, new Random(CheckpointTestSupport.NewSeed()));
        File.Delete(dir.File("model-00002-of-00002.safetensors"));
        var ex = Assert.Throws<FileNotFoundException>(() => CheckpointFolder.Open(dir.Path));
        Assert.Contains(CheckpointFolder.IndexFileName, ex.Message);
        Assert.Contains("model-00002-of-00002.safetensors", ex.Message);
        Assert.Contains("b.weight", ex.Message);
    }

    [Fact]
    public void Tensor_missing_from_its_shard_names_both()
    {
        using var dir = new TempDir();
        WriteTwoShards(dir.Path, new Random(CheckpointTestSupport.NewSeed()));
        WriteIndex(dir.Path, new()
        {
            ["a.weight"] = "model-00001-of-00002.safetensors",
            ["b.weight"] = "model-00001-of-00002.safetensors", // wrong shard
        });
        var ex = Assert.Throws<InvalidDataException>(() => CheckpointFolder.Open(dir.Path));
        Assert.Contains(CheckpointFolder.IndexFileName, ex.Message);
        Assert.Contains("'b.weight'", ex.Message);
        Assert.Contains("model-00001-of-00002.safetensors", ex.Message);
    }

    [Fact]
    public void Tensor_in_two_shards_is_an_error()
    {
        var rng = new Random(CheckpointTestSupport.NewSeed());
        using var dir = new TempDir();
        WriteTwoShards(dir.Path, rng);
        new SafetensorsWriter().Add("b.weight", RandomTensor(rng, 5, 2)).Add("a.bias", RandomTensor(rng, 4))
            .Write(dir.File("model-00002-of-00002.safetensors"));
        var ex = Assert.Throws<InvalidDataException>(() => CheckpointFolder.Open(dir.Path));
        Assert.Contains("'a.bias'", ex.Message);
        Assert.Contains("two shards", ex.Message);
    }

    [Theory]
    [InlineData("{\"metadata\": {}}")]
    [InlineData("{\"weight_map\": {\"a\": 3}}")]
    [InlineData("{\"weight_map\": ")]
    [InlineData("{\"weight_map\": {\"a\": \"../elsewhere.safetensors\"}}")]
    public void Malformed_index_is_refused(string json)
    {
        using var dir = new TempDir();
        File.WriteAllText(dir.File(CheckpointFolder.IndexFileName), json);
        var ex = Assert.Throws<InvalidDataException>(() => CheckpointFolder.Open(dir.Path));
        Assert.Contains(CheckpointFolder.IndexFileName, ex.Message);
    }
}
