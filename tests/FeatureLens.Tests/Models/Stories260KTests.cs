using FeatureLens.Runtime.Checkpoints;
using FeatureLens.Runtime.Models;
using Xunit.Abstractions;

namespace FeatureLens.Tests.Models;

/// <summary>The real pretrained stories260K model against llama2.c's reference output and the PyTorch reference.</summary>
public class Stories260KTests(ITestOutputHelper output)
{
    static string Bin => Path.Combine(TestPaths.Shared, "models", "stories260K", "stories260K.bin");
    static string Reference => Path.Combine(TestPaths.Shared, "reference", "stories260K");

    // The CSV is the ids llama2.c printed, comma-separated, followed by its "achieved tok/s" report.
    static int[] ReferenceIds() => File.ReadAllText(Path.Combine(Reference, "greedy-n200-ids.csv"))
        .Split(',', StringSplitOptions.TrimEntries).TakeWhile(s => int.TryParse(s, out _)).Select(int.Parse).ToArray();

    [Fact]
    public void GreedyGenerationReproducesLlama2cIdsAndText()
    {
        using var model = HookedTransformer.Load(Bin);
        int[] expected = ReferenceIds();
        Assert.Equal(200, expected.Length);
        int[] ids = model.Generate([1], 200, new SamplingOptions()).ToArray();
        Assert.Equal(expected, ids);
        string text = model.Tokenizer!.Decode([1, .. ids]) + "\n";
        Assert.Equal(File.ReadAllBytes(Path.Combine(Reference, "greedy-n200.txt")), System.Text.Encoding.UTF8.GetBytes(text));
    }

    [Fact]
    public void LogitsMatchTorchOnTheBinAndOnTheConvertedHuggingFaceFolder()
    {
        using var dir = new TempDir();
        var rng = new Random(Random.Shared.Next());
        int[] seq = [1, .. ReferenceIds().Take(20 + rng.Next(40))];
        int[][] batch = [seq, seq[..(seq.Length / 2 + 1)]];

        // llama2.c interleaved RoPE, read from the .bin by both implementations
        string refBin = TorchReference.RunModel(Bin, batch, Path.Combine(dir.Path, "bin.safetensors"));
        using var model = HookedTransformer.Load(Bin);
        var (logits, cache) = model.RunWithCache(batch);
        using (var r = SafetensorsFile.Open(refBin))
            for (int b = 0; b < batch.Length; b++)
                foreach (string name in model.HookPointNames.Append("logits"))
                {
                    var ours = name == "logits" ? HookNames.SliceSequence(name, logits, b, batch[b].Length) : cache.Sequence(name, b);
                    double err = Compare.RelativeError(ours.Data, r.ReadF32($"{b}/{name}").Data, $"{b}/{name}");
                    Assert.True(err <= 1e-5, $"stories260K {b}/{name}: relative error {err:E2}");
                }

        // The same model as a Hugging Face folder: q/k rows permuted for rotate-half RoPE.
        string hfDir = Path.Combine(dir.Path, "hf");
        TorchReference.Run("convert-llama2c", "--bin", Bin, "--out", hfDir);
        using var hf = HookedTransformer.Load(hfDir);
        Assert.Equal(RopeLayout.RotateHalf, hf.Config.Rope);
        var hfLogits = hf.Forward(batch);
        double e2 = Compare.RelativeError(hfLogits.Data, logits.Data, "HF-folder logits vs .bin logits");
        output.WriteLine($"rotate-half folder vs interleaved .bin: relative error {e2:E2}");
        Assert.True(e2 <= 1e-5, $"HF-folder logits differ from the .bin's: {e2:E2}");
    }

    [Fact]
    public void IncrementalDecodingMatchesTheFullForwardPass()
    {
        using var model = HookedTransformer.Load(Bin);
        var rng = new Random(Random.Shared.Next());
        int[] seq = [1, .. Enumerable.Range(0, 30 + rng.Next(30)).Select(_ => 3 + rng.Next(500))];
        var full = model.Forward(seq);
        var kv = new KvCache(model.Config, 1, seq.Length);
        int split = 1 + rng.Next(seq.Length - 2);
        var first = model.Run([seq[..split]], new RunOptions { KvCache = kv })!;
        int V = model.Config.VocabSize;
        var stepwise = new List<float>(first.Data);
        for (int t = split; t < seq.Length; t++)
            stepwise.AddRange(model.Run([[seq[t]]], new RunOptions { KvCache = kv })!.Data);
        double err = Compare.RelativeError(stepwise.ToArray(), full.Data, "incremental logits");
        Assert.True(err <= 1e-5, $"incremental decoding differs from the full pass: {err:E2} (split {split})");
        Assert.Equal(seq.Length, kv.Length);
    }

    [Fact]
    public void SamplingIsReproducibleFromTheSeed()
    {
        using var model = HookedTransformer.Load(Bin);
        int seed = Random.Shared.Next();
        var s = new SamplingOptions(0.9f, 0.9f, seed);
        var a = model.Generate([1], 60, s).ToArray();
        var b = model.Generate([1], 60, s).ToArray();
        Assert.Equal(a, b);
        var greedy = model.Generate([1], 60, new SamplingOptions()).ToArray();
        Assert.NotEqual(greedy, model.Generate([1], 60, new SamplingOptions(5f, 1f, seed)).ToArray());
    }
}
