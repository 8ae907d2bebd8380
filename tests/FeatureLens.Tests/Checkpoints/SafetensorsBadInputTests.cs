using FeatureLens.Runtime.Checkpoints;

namespace FeatureLens.Tests.Checkpoints;

/// <summary>Every malformed file is refused on open with a message naming the file and what was wrong.</summary>
public class SafetensorsBadInputTests
{
    static InvalidDataException OpenFails(string path)
    {
        var ex = Assert.Throws<InvalidDataException>(() => SafetensorsFile.Open(path).Dispose());
        Assert.Contains(path, ex.Message);
        return ex;
    }

    [Fact]
    public void File_shorter_than_the_length_field()
    {
        using var dir = new TempDir();
        string path = dir.File("tiny.safetensors");
        File.WriteAllBytes(path, new byte[Random.Shared.Next(0, 8)]);
        Assert.Contains("at least 8", OpenFails(path).Message);
    }

    [Fact]
    public void Header_length_beyond_the_limit()
    {
        using var dir = new TempDir();
        string path = CheckpointTestSupport.WriteRawSafetensors(dir.File("huge.safetensors"), "{}", 0, declaredHeaderLength: 100_000_001UL + (ulong)Random.Shared.Next(1000));
        Assert.Contains("limit", OpenFails(path).Message);
    }

    [Fact]
    public void Header_length_beyond_the_file_truncated()
    {
        using var dir = new TempDir();
        string header = """{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}""";
        string path = CheckpointTestSupport.WriteRawSafetensors(dir.File("trunc.safetensors"), header, 8, declaredHeaderLength: (ulong)header.Length + 100);
        var ex = OpenFails(path);
        Assert.Contains("truncated", ex.Message);
    }

    [Fact]
    public void Truncated_data_section()
    {
        using var dir = new TempDir();
        string header = """{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}""";
        string path = CheckpointTestSupport.WriteRawSafetensors(dir.File("short.safetensors"), header, Random.Shared.Next(0, 16));
        var ex = OpenFails(path);
        Assert.Contains("'w'", ex.Message);
        Assert.Contains("end of the data section", ex.Message);
    }

    [Theory]
    [InlineData("{\"w\": {\"dtype\": \"F32\", ")]
    [InlineData("not json at all")]
    [InlineData("[1, 2, 3]")]
    public void Malformed_json(string header)
    {
        using var dir = new TempDir();
        string path = CheckpointTestSupport.WriteRawSafetensors(dir.File("bad.safetensors"), header, 0);
        Assert.Contains("JSON", OpenFails(path).Message);
    }

    [Fact]
    public void Unknown_dtype_names_tensor_and_dtype()
    {
        using var dir = new TempDir();
        string path = CheckpointTestSupport.WriteRawSafetensors(dir.File("f8.safetensors"),
            """{"layer.w":{"dtype":"F8_E4M3","shape":[4],"data_offsets":[0,4]}}""", 4);
        var ex = OpenFails(path);
        Assert.Contains("'layer.w'", ex.Message);
        Assert.Contains("F8_E4M3", ex.Message);
    }

    [Fact]
    public void Offsets_out_of_range()
    {
        using var dir = new TempDir();
        int extra = Random.Shared.Next(1, 100);
        string path = CheckpointTestSupport.WriteRawSafetensors(dir.File("oob.safetensors"),
            $$$"""{"x":{"dtype":"U8","shape":[{{{8 + extra}}}],"data_offsets":[0,{{{8 + extra}}}]}}""", 8);
        var ex = OpenFails(path);
        Assert.Contains("'x'", ex.Message);
        Assert.Contains("8 bytes", ex.Message);
    }

    [Fact]
    public void Negative_or_reversed_offsets()
    {
        using var dir = new TempDir();
        string path = CheckpointTestSupport.WriteRawSafetensors(dir.File("neg.safetensors"),
            """{"x":{"dtype":"U8","shape":[0],"data_offsets":[4,2]}}""", 8);
        Assert.Contains("'x'", OpenFails(path).Message);
    }

    [Fact]
    public void Length_not_equal_to_shape_times_dtype_size()
    {
        using var dir = new TempDir();
        string path = CheckpointTestSupport.WriteRawSafetensors(dir.File("len.safetensors"),
            """{"emb":{"dtype":"BF16","shape":[3,5],"data_offsets":[0,32]}}""", 32);
        var ex = OpenFails(path);
        Assert.Contains("'emb'", ex.Message);
        Assert.Contains("expected 30", ex.Message);
    }

    [Fact]
    public void Negative_dimension()
    {
        using var dir = new TempDir();
        string path = CheckpointTestSupport.WriteRawSafetensors(dir.File("dim.safetensors"),
            """{"w":{"dtype":"F32","shape":[-1,4],"data_offsets":[0,0]}}""", 0);
        var ex = OpenFails(path);
        Assert.Contains("'w'", ex.Message);
        Assert.Contains("non-negative", ex.Message);
    }

    [Fact]
    public void Overlapping_tensors()
    {
        using var dir = new TempDir();
        string path = CheckpointTestSupport.WriteRawSafetensors(dir.File("overlap.safetensors"),
            """{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}""", 16);
        var ex = OpenFails(path);
        Assert.Contains("'a'", ex.Message);
        Assert.Contains("'b'", ex.Message);
        Assert.Contains("overlaps", ex.Message);
    }

    [Fact]
    public void Metadata_must_map_strings_to_strings()
    {
        using var dir = new TempDir();
        string path = CheckpointTestSupport.WriteRawSafetensors(dir.File("meta.safetensors"),
            """{"__metadata__":{"step":1000}}""", 0);
        var ex = OpenFails(path);
        Assert.Contains("'step'", ex.Message);
    }

    [Fact]
    public void Missing_fields_are_named()
    {
        using var dir = new TempDir();
        string path = CheckpointTestSupport.WriteRawSafetensors(dir.File("fields.safetensors"),
            """{"w":{"dtype":"F32","shape":[1]}}""", 4);
        var ex = OpenFails(path);
        Assert.Contains("'w'", ex.Message);
        Assert.Contains("data_offsets", ex.Message);
    }

    [Fact]
    public void Empty_header_object_and_padding_are_fine()
    {
        using var dir = new TempDir();
        string path = CheckpointTestSupport.WriteRawSafetensors(dir.File("empty.safetensors"), "{}      ", 0);
        using var st = SafetensorsFile.Open(path);
        Assert.Empty(st.Entries);
    }
}
