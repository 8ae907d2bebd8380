using FeatureLens.Runtime.Checkpoints;
using FeatureLens.Runtime.Models;
using FeatureLens.Runtime.Tensors;

namespace FeatureLens.Tests.Checkpoints;

public class SyntheticModelTests
{
    static float Rounded(float x, DType dtype) => dtype switch
    {
        DType.BF16 => BitConverter.UInt32BitsToSingle((uint)FloatConvert.F32ToBF16(x) << 16),
        DType.F16 => (float)(Half)x,
        _ => x,
    };

    /// <summary>Every tensor has its Hugging Face name and shape, and holds exactly <see cref="SyntheticModel.Value"/> rounded to the dtype.</summary>
    static void AssertFolderHolds(string dir, ModelConfig config, DType dtype, int seed)
    {
        using var src = CheckpointFolder.Open(dir);
        var expected = SyntheticModel.TensorShapes(config);
        Assert.Equal(expected.Select(t => t.Name).Order(), src.Names.Order());
        var rng = new Random(seed);
        foreach (var (name, shape) in expected)
        {
            var w = src.Get(name);
            Assert.Equal(shape, w.Shape);
            Assert.Equal(dtype, w.DType);
            long n = w.ElementCount;
            // First and last elements (chunk edges) and random ones.
            foreach (long i in new[] { 0, n - 1, rng.NextInt64(n), rng.NextInt64(n), rng.NextInt64(n) })
            {
                float want = Rounded(SyntheticModel.Value(seed, name, i), dtype);
                Assert.True(want == w[i], $"{name}[{i}] = {w[i]}, expected {want} (seed {seed}, {dtype})");
            }
        }
    }

    [Theory]
    [InlineData(Architecture.Gpt2, DType.F32)]
    [InlineData(Architecture.Gpt2, DType.BF16)]
    [InlineData(Architecture.Llama, DType.F16)]
    [InlineData(Architecture.Llama, DType.BF16)]
    public void Tiny_preset_round_trips_through_config_reader_and_checkpoint_folder(Architecture arch, DType dtype)
    {
        int seed = CheckpointTestSupport.NewSeed();
        using var dir = new TempDir();
        var progress = new List<double>();
        SyntheticModel.Write(dir.Path, arch, "tiny", dtype, seed, new SyncProgress(progress.Add));

        var preset = SyntheticModel.Preset(arch, "tiny");
        var read = HfConfigReader.Read(dir.File("config.json"));
        SyntheticPresetTests.AssertSameModel(preset, read);
        Assert.True(File.Exists(dir.File("model.safetensors")));
        Assert.False(File.Exists(dir.File(CheckpointFolder.IndexFileName)));
        AssertFolderHolds(dir.Path, read, dtype, seed);
        Assert.Equal(1.0, progress[^1], 6);
        Assert.True(progress.SequenceEqual(progress.Order()), "progress must not go backwards");
    }

    [Fact]
    public void Values_have_the_intended_statistics_and_follow_the_seed()
    {
        int seed = CheckpointTestSupport.NewSeed();
        using var dir = new TempDir();
        SyntheticModel.Write(dir.Path, Architecture.Gpt2, "tiny", DType.F32, seed);
        using var st = SafetensorsFile.Open(dir.File("model.safetensors"));

        static (double mean, double std) Stats(float[] x)
        {
            double m = x.Average(v => (double)v);
            return (m, Math.Sqrt(x.Average(v => (v - m) * (v - m))));
        }
        var (mMean, mStd) = Stats(st.ReadF32("h.1.mlp.c_fc.weight").Data);
        Assert.InRange(mMean, -0.002, 0.002);
        Assert.InRange(mStd, 0.018, 0.022);
        var (nMean, nStd) = Stats(st.ReadF32("h.0.ln_1.weight").Data);
        Assert.InRange(nMean, 0.98, 1.02);
        Assert.InRange(nStd, 0.03, 0.07);
        var bias = st.ReadF32("h.0.attn.c_attn.bias").Data;
        Assert.DoesNotContain(0f, bias);
        Assert.InRange(Stats(bias).std, 0.007, 0.013);

        // Same seed → same bytes; another seed → other values.
        using var again = new TempDir();
        SyntheticModel.Write(again.Path, Architecture.Gpt2, "tiny", DType.F32, seed);
        Assert.Equal(File.ReadAllBytes(dir.File("model.safetensors")), File.ReadAllBytes(again.File("model.safetensors")));
        SyntheticModel.Write(again.Path, Architecture.Gpt2, "tiny", DType.F32, seed ^ 0x5a5a5a);
        using var other = SafetensorsFile.Open(again.File("model.safetensors"));
        Assert.NotEqual(st.ReadF32("wte.weight").Data, other.ReadF32("wte.weight").Data);
    }

    [Fact]
    public void Large_weights_are_sharded_with_an_index()
    {
        int seed = CheckpointTestSupport.NewSeed();
        using var dir = new TempDir();
        var config = SyntheticModel.Preset(Architecture.Llama, "tiny") with { TiedEmbeddings = true, NKvHeads = 4 };
        // Leftovers of an earlier single-file write must not survive.
        SyntheticModel.Write(dir.Path, Architecture.Llama, "tiny", DType.F32, seed);
        SyntheticModel.Write(dir.Path, config, DType.BF16, seed, maxShardBytes: 40_000);

        var shards = Directory.GetFiles(dir.Path, "*.safetensors").Select(Path.GetFileName).Order().ToArray();
        Assert.DoesNotContain("model.safetensors", shards);
        Assert.True(shards.Length > 2, string.Join(", ", shards));
        Assert.All(shards, s => Assert.Matches($@"^model-\d{{5}}-of-{shards.Length:D5}\.safetensors$", s));
        using (var src = CheckpointFolder.Open(dir.Path))
        {
            Assert.IsType<CheckpointFolder>(src);
            Assert.False(src.Contains("lm_head.weight"));
        }
        var read = HfConfigReader.Read(dir.File("config.json"));
        Assert.True(read.TiedEmbeddings);
        Assert.Equal(4, read.NKvHeads);
        AssertFolderHolds(dir.Path, read, DType.BF16, seed);
    }

    [Fact]
    public void Gpt2_small_has_the_real_names_and_shapes()
    {
        int seed = CheckpointTestSupport.NewSeed();
        using var dir = new TempDir();
        SyntheticModel.Write(dir.Path, Architecture.Gpt2, "gpt2-small", DType.BF16, seed);
        var c = HfConfigReader.Read(dir.File("config.json"));
        Assert.Equal((768, 12, 12, 3072, 50257, 1024), (c.DModel, c.NLayers, c.NHeads, c.DMlp, c.VocabSize, c.NCtx));
        using var src = CheckpointFolder.Open(dir.Path);
        Assert.Equal(2 + 12 * 12 + 2, src.Names.Count());
        Assert.Equal([50257, 768], src.Get("wte.weight").Shape);
        Assert.Equal([1024, 768], src.Get("wpe.weight").Shape);
        Assert.Equal([768, 2304], src.Get("h.11.attn.c_attn.weight").Shape);
        Assert.Equal([2304], src.Get("h.11.attn.c_attn.bias").Shape);
        Assert.Equal([768, 3072], src.Get("h.5.mlp.c_fc.weight").Shape);
        Assert.Equal([3072, 768], src.Get("h.5.mlp.c_proj.weight").Shape);
        Assert.Equal([768], src.Get("ln_f.bias").Shape);
        var wte = src.Get("wte.weight");
        long last = wte.ElementCount - 1;
        Assert.Equal(Rounded(SyntheticModel.Value(seed, "wte.weight", last), DType.BF16), wte[last]);
    }

    [Fact]
    public void Presets_and_configs_are_checked()
    {
        using var dir = new TempDir();
        var ex = Assert.Throws<ArgumentException>(() => SyntheticModel.Write(dir.Path, Architecture.Gpt2, "llama-7b", DType.BF16, 1));
        Assert.Contains("llama-7b", ex.Message);
        Assert.Contains("tiny", ex.Message);
        Assert.Throws<ArgumentException>(() => SyntheticModel.Write(dir.Path, Architecture.Llama, "tiny", DType.I32, 1));
        var gpt2Untied = SyntheticModel.Preset(Architecture.Gpt2, "tiny") with { TiedEmbeddings = false };
        Assert.Throws<ArgumentException>(() => SyntheticModel.Write(dir.Path, gpt2Untied, DType.F32, 1));
        // A real model folder is never overwritten.
        using var real = new TempDir();
        File.WriteAllText(real.File("config.json"), "{\"model_type\": \"gpt2\"}");
        var refused = Assert.Throws<IOException>(() => SyntheticModel.Write(real.Path, Architecture.Gpt2, "tiny", DType.F32, 1));
        Assert.Contains(real.Path, refused.Message);
        Assert.Equal("{\"model_type\": \"gpt2\"}", File.ReadAllText(real.File("config.json")));
        var llama7b = SyntheticModel.Preset(Architecture.Llama, "llama-7b");
        Assert.Equal((4096, 32, 32, 32, 11008, 32000, 4096), (llama7b.DModel, llama7b.NLayers, llama7b.NHeads, llama7b.NKvHeads, llama7b.DMlp, llama7b.VocabSize, llama7b.NCtx));
        long bytes = SyntheticModel.TensorShapes(llama7b).Sum(t => Tensor.ElementCount(t.Shape)) * 2;
        Assert.Equal(13_476_831_232L, bytes); // Llama-2-7B: 6,738,415,616 parameters
    }

    sealed class SyncProgress(Action<double> report) : IProgress<double>
    {
        public void Report(double value) => report(value);
    }
}
