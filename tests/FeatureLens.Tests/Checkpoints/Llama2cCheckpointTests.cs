using System.Buffers.Binary;
using FeatureLens.Runtime.Checkpoints;
using FeatureLens.Runtime.Models;

namespace FeatureLens.Tests.Checkpoints;

public class Llama2cCheckpointTests
{
    static string Stories260K => Path.Combine(TestPaths.Shared, "models", "stories260K", "stories260K.bin");

    [Fact]
    public void Stories260K_header_becomes_the_config()
    {
        using var ck = Llama2cCheckpoint.Open(Stories260K);
        var c = ck.Config;
        Assert.Equal(Architecture.Llama, c.Architecture);
        Assert.Equal((64, 172, 5, 8, 4, 512, 512), (c.DModel, c.DMlp, c.NLayers, c.NHeads, c.NKvHeads, c.VocabSize, c.NCtx));
        Assert.Equal(RopeLayout.Interleaved, c.Rope);
        Assert.True(c.TiedEmbeddings);
        Assert.Equal(1e-5f, c.NormEps);
        Assert.Equal(10000f, c.RopeTheta);
        Assert.Equal("silu", c.Activation);
        Assert.Equal((1, 2), (c.BosTokenId, c.EosTokenId));
        Assert.Equal(1 + 5 * 9 + 1, ck.Names.Count());
        Assert.False(ck.Contains("lm_head.weight"));
        var ex = Assert.Throws<KeyNotFoundException>(() => ck.Get("lm_head.weight"));
        Assert.Contains("shared", ex.Message);
        Assert.Contains(Stories260K, ex.Message);
    }

    [Fact]
    public void Stories260K_views_read_the_right_bytes()
    {
        int seed = CheckpointTestSupport.NewSeed();
        var rng = new Random(seed);
        byte[] file = File.ReadAllBytes(Stories260K);
        float At(long floatIndex) => BinaryPrimitives.ReadSingleLittleEndian(file.AsSpan(checked((int)(28 + 4 * floatIndex))));

        // Offsets (in floats after the header) of each layer-stacked array, laid out by hand from the format description.
        const int dim = 64, hidden = 172, L = 5, kv = 32, vocab = 512;
        long emb = 0;
        long rmsAtt = emb + vocab * dim;
        long wq = rmsAtt + L * dim;
        long wk = wq + L * dim * dim;
        long wv = wk + L * kv * dim;
        long wo = wv + L * kv * dim;
        long rmsFfn = wo + L * dim * dim;
        long w1 = rmsFfn + L * dim;
        long w2 = w1 + L * hidden * dim;
        long w3 = w2 + L * dim * hidden;
        long rmsFinal = w3 + L * hidden * dim;
        Assert.Equal(file.Length, 28 + 4 * (rmsFinal + dim + 512 * (dim / 8)));

        using var ck = Llama2cCheckpoint.Open(Stories260K);
        (string name, long start, int rows, int cols, bool perLayer)[] arrays =
        [
            ("model.embed_tokens.weight", emb, vocab, dim, false),
            ("input_layernorm.weight", rmsAtt, 1, dim, true),
            ("self_attn.q_proj.weight", wq, dim, dim, true),
            ("self_attn.k_proj.weight", wk, kv, dim, true),
            ("self_attn.v_proj.weight", wv, kv, dim, true),
            ("self_attn.o_proj.weight", wo, dim, dim, true),
            ("post_attention_layernorm.weight", rmsFfn, 1, dim, true),
            ("mlp.gate_proj.weight", w1, hidden, dim, true),
            ("mlp.down_proj.weight", w2, dim, hidden, true),
            ("mlp.up_proj.weight", w3, hidden, dim, true),
            ("model.norm.weight", rmsFinal, 1, dim, false),
        ];
        foreach (var (suffix, start, rows, cols, perLayer) in arrays)
        {
            for (int trial = 0; trial < 20; trial++)
            {
                int layer = perLayer ? rng.Next(L) : 0;
                string name = perLayer ? $"model.layers.{layer}.{suffix}" : suffix;
                var w = ck.Get(name);
                int[] expectedShape = rows == 1 ? [cols] : [rows, cols];
                Assert.Equal(expectedShape, w.Shape);
                int r = rng.Next(rows), c = rng.Next(cols);
                float expected = At(start + (long)layer * rows * cols + (long)r * cols + c);
                Assert.True(expected == w[(long)r * cols + c], $"{name}[{r},{c}] = {w[(long)r * cols + c]}, file {expected} (seed {seed})");
                if (rows > 1) Assert.True(expected == w.AsMatrix()[r, c], $"{name} matrix view [{r},{c}] (seed {seed})");
            }
        }
        // Norm weights of a trained model are not all ones and not zero: a sanity check that we are not reading padding.
        var norm = ck.Get("model.norm.weight").ToArray();
        Assert.Contains(norm, x => x != 0 && x != 1);
    }

    /// <summary>A random llama2.c checkpoint with a separate classifier (negative vocab_size); returns all floats after the header.</summary>
    static float[] WriteUnshared(string path, Random rng, int dim = 16, int hidden = 24, int layers = 2, int heads = 4, int kvHeads = 2, int vocab = 10, int seqLen = 6)
    {
        int kv = dim / heads * kvHeads;
        long floats = (long)vocab * dim + layers * dim + layers * dim * dim + 2L * layers * kv * dim + layers * dim * dim
                      + layers * dim + 3L * layers * hidden * dim + dim + seqLen * (dim / heads) + vocab * dim;
        var data = new float[floats];
        for (int i = 0; i < data.Length; i++) data[i] = (float)(rng.NextDouble() * 2 - 1);
        using var f = File.Create(path);
        foreach (int h in new[] { dim, hidden, layers, heads, kvHeads, -vocab, seqLen }) f.Write(BitConverter.GetBytes(h));
        foreach (float x in data) f.Write(BitConverter.GetBytes(x));
        return data;
    }

    [Fact]
    public void Separate_classifier_is_lm_head_after_the_freq_cis_tables()
    {
        int seed = CheckpointTestSupport.NewSeed();
        using var dir = new TempDir();
        string path = dir.File("unshared.bin");
        var data = WriteUnshared(path, new Random(seed));
        using var ck = Llama2cCheckpoint.Open(path);
        Assert.False(ck.Config.TiedEmbeddings);
        Assert.Equal(10, ck.Config.VocabSize);
        var head = ck.Get("lm_head.weight");
        Assert.Equal([10, 16], head.Shape);
        Assert.Equal(data[^(10 * 16)..], head.ToArray());
        Assert.Equal(data[..(10 * 16)], ck.Get("model.embed_tokens.weight").ToArray());
        Assert.Equal([8, 16], ck.Get("model.layers.1.self_attn.k_proj.weight").Shape);
    }

    [Fact]
    public void Wrong_size_names_file_expected_and_actual_bytes()
    {
        using var dir = new TempDir();
        string path = dir.File("stories.bin");
        byte[] bytes = File.ReadAllBytes(Stories260K);
        int extra = 4 * Random.Shared.Next(1, 50);
        File.WriteAllBytes(path, [.. bytes, .. new byte[extra]]);
        var ex = Assert.Throws<InvalidDataException>(() => Llama2cCheckpoint.Open(path));
        Assert.Contains(path, ex.Message);
        Assert.Contains(bytes.Length.ToString(CultureInfo.InvariantCulture), ex.Message);
        Assert.Contains((bytes.Length + extra).ToString(CultureInfo.InvariantCulture), ex.Message);

        File.WriteAllBytes(path, bytes[..^Random.Shared.Next(1, 1000)]);
        ex = Assert.Throws<InvalidDataException>(() => Llama2cCheckpoint.Open(path));
        Assert.Contains(bytes.Length.ToString(CultureInfo.InvariantCulture), ex.Message);

        // The classifier-sign mismatch gets a hint.
        string unshared = dir.File("unshared.bin");
        WriteUnshared(unshared, new Random(CheckpointTestSupport.NewSeed()));
        byte[] u = File.ReadAllBytes(unshared);
        BitConverter.GetBytes(10).CopyTo(u, 20); // claim a shared classifier
        File.WriteAllBytes(unshared, u);
        ex = Assert.Throws<InvalidDataException>(() => Llama2cCheckpoint.Open(unshared));
        Assert.Contains("separate classifier", ex.Message);
    }

    [Theory]
    [InlineData(new[] { 64, 172, 5, 7, 7, 512, 512 }, "n_heads must divide dim")]
    [InlineData(new[] { 64, 172, 5, 8, 3, 512, 512 }, "n_kv_heads must divide n_heads")]
    [InlineData(new[] { 64, -172, 5, 8, 4, 512, 512 }, "positive")]
    [InlineData(new[] { 0x616b3432, 1, 64, 172, 5, 8, 4 }, "version 1/2")]
    [InlineData(new[] { 1 << 30, 1 << 30, 1 << 30, 1, 1, 1 << 30, 1 << 30 }, "more bytes")]
    public void Bad_headers_are_refused(int[] header, string mention)
    {
        using var dir = new TempDir();
        string path = dir.File("bad.bin");
        using (var f = File.Create(path))
        {
            foreach (int h in header) f.Write(BitConverter.GetBytes(h));
            f.Write(new byte[64]);
        }
        var ex = Assert.Throws<InvalidDataException>(() => Llama2cCheckpoint.Open(path));
        Assert.Contains(path, ex.Message);
        Assert.Contains(mention, ex.Message);

        File.WriteAllBytes(path, new byte[Random.Shared.Next(0, 28)]);
        Assert.Contains("at least 28", Assert.Throws<InvalidDataException>(() => Llama2cCheckpoint.Open(path)).Message);
    }
}
