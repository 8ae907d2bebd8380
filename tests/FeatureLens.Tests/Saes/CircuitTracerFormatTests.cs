using FeatureLens.Runtime.Checkpoints;
using FeatureLens.Runtime.Models;
using FeatureLens.Saes;
using FeatureLens.Saes.Formats;
using Tensor = FeatureLens.Runtime.Tensors.Tensor;

namespace FeatureLens.Tests.Saes;

/// <summary>circuit-tracer per-layer transcoder sets written by torch (circuit_tracer_files.py), loaded and compared.</summary>
public class CircuitTracerFormatTests
{
    static string Write(TempDir dir, int seed, int layers, int dModel, int dTc, string act, bool skip, bool listed)
    {
        TorchReference.RunPython(Path.Combine(AppContext.BaseDirectory, "python", "circuit_tracer_files.py"),
            dir.Path, seed.ToString(CultureInfo.InvariantCulture), layers.ToString(CultureInfo.InvariantCulture),
            dModel.ToString(CultureInfo.InvariantCulture), dTc.ToString(CultureInfo.InvariantCulture), act, skip ? "1" : "0", listed ? "1" : "0");
        return dir.Path;
    }

    [Theory]
    [InlineData("relu", false, false)]
    [InlineData("relu", true, true)]
    [InlineData("jump_relu", false, true)]
    [InlineData("jump_relu", true, false)]
    [InlineData("topk", false, false)]
    [InlineData("topk", true, true)]
    public void A_transcoder_set_loads_with_translated_hooks_and_matches_torch(string act, bool skip, bool listed)
    {
        int seed = Random.Shared.Next(1, int.MaxValue);
        var rng = new Random(seed);
        int layers = rng.Next(1, 4), dModel = rng.Next(8, 24), dTc = rng.Next(30, 80);
        if (rng.Next(4) == 0) dTc = dModel;   // square: the documented [d_transcoder, d_model] layout decides
        using var dir = new TempDir();
        Write(dir, seed, layers, dModel, dTc, act, skip, listed);
        string ctx = $"seed {seed}, {act}, skip={skip}, listed={listed}, layers={layers}, d_model={dModel}, d_tc={dTc}";
        var set = SaeLoader.LoadAll(dir.Path);
        Assert.Equal(layers, set.Count);
        using var expected = SafetensorsFile.Open(dir.File("expected.safetensors"));
        for (int l = 0; l < layers; l++)
        {
            var tc = set[l];
            Assert.Equal($"blocks.{l}.ln2.hook_normalized", tc.Config.HookName);
            Assert.Equal($"blocks.{l}.mlp.hook_out", tc.Config.OutputHookName);
            Assert.Equal((dModel, dTc, dModel), (tc.DIn, tc.DSae, tc.DOut));
            var arch = act switch { "relu" => SaeArchitecture.Standard, "jump_relu" => SaeArchitecture.JumpRelu, _ => SaeArchitecture.TopK };
            Assert.Equal(SaeConfig.TranscoderOf(arch, skip), tc.Config.Architecture);
            var x = expected.ReadF32($"{l}/x");
            var (acts, outT) = tc.Forward(x);
            double ea = Compare.RelativeError(acts.Data, expected.ReadF32($"{l}/acts").Data, $"acts layer {l} ({ctx})");
            double eo = Compare.RelativeError(outT.Data, expected.ReadF32($"{l}/out").Data, $"output layer {l} ({ctx})");
            Assert.True(ea <= 1e-5, $"{ctx}: layer {l} activations differ from torch by {ea:E2}");
            Assert.True(eo <= 1e-5, $"{ctx}: layer {l} output differs from torch by {eo:E2}");
        }
        // one layer's file on its own, with the config beside it
        string file = dir.File(listed ? "tc_0.safetensors" : "layer_0.safetensors");
        Assert.Equal(set[0].WDec, SaeLoader.Load(file).WDec);
        if (layers > 1)
        {
            var e = Assert.Throws<InvalidDataException>(() => SaeLoader.Load(dir.Path));
            Assert.Contains("LoadAll", e.Message, StringComparison.Ordinal);
        }
    }

    [Fact]
    public void Bad_sets_are_clear_errors_naming_the_file_and_what_was_expected()
    {
        int seed = Random.Shared.Next(1, int.MaxValue);
        using var dir = new TempDir();
        Write(dir, seed * 2, 2, 12, 40, "relu", false, false);   // even seed: float32 files
        string cfg = dir.File("config.yaml"), text = File.ReadAllText(cfg);

        // a tensor missing
        string l1 = dir.File("layer_1.safetensors");
        var tensors = new Dictionary<string, Tensor>();
        using (var f = SafetensorsFile.Open(l1)) foreach (var n in new[] { "W_enc", "W_dec", "b_dec" }) tensors[n] = f.ReadF32(n);
        var w = new SafetensorsWriter();
        foreach (var (n, t) in tensors) w.Add(n, t);
        w.Write(l1);
        var e = Assert.Throws<InvalidDataException>(() => SaeLoader.LoadAll(dir.Path));
        Assert.Contains("layer_1.safetensors", e.Message, StringComparison.Ordinal);
        Assert.Contains("b_enc", e.Message, StringComparison.Ordinal);

        // a wrong shape
        w = new SafetensorsWriter();
        w.Add("W_enc", tensors["W_enc"]); w.Add("W_dec", tensors["W_dec"]); w.Add("b_dec", tensors["b_dec"]);
        w.Add("b_enc", new Tensor([40], new float[40]));
        w.Add("W_skip", new Tensor([12, 7], new float[84]));
        w.Write(l1);
        e = Assert.Throws<InvalidDataException>(() => SaeLoader.LoadAll(dir.Path));
        Assert.Contains("W_skip", e.Message, StringComparison.Ordinal);

        // a layer file missing
        File.Delete(l1);
        File.Copy(dir.File("layer_0.safetensors"), dir.File("layer_2.safetensors"));
        e = Assert.Throws<InvalidDataException>(() => SaeLoader.LoadAll(dir.Path));
        Assert.Contains("layer_1.safetensors is missing", e.Message, StringComparison.Ordinal);
        File.Copy(dir.File("layer_0.safetensors"), l1);

        // hooks FeatureLens does not have; a cross-layer transcoder (mlp.hook_in is circuit-tracer's MLP-input hook: it loads)
        File.WriteAllText(cfg, text.Replace("ln2.hook_normalized", "mlp.hook_in", StringComparison.Ordinal));
        Assert.Equal("blocks.1.mlp.hook_in", SaeLoader.LoadAll(dir.Path)[1].Config.HookName);
        File.WriteAllText(cfg, text.Replace("ln2.hook_normalized", "hook_banana", StringComparison.Ordinal));
        e = Assert.Throws<InvalidDataException>(() => SaeLoader.LoadAll(dir.Path));
        Assert.Contains("hook_banana", e.Message, StringComparison.Ordinal);
        File.WriteAllText(cfg, text.Replace("transcoder_set", "cross_layer_transcoder", StringComparison.Ordinal));
        e = Assert.Throws<InvalidDataException>(() => SaeLoader.LoadAll(dir.Path));
        Assert.Contains("cross_layer_transcoder: each CLT feature writes to every later layer", e.Message, StringComparison.Ordinal);
        Assert.Contains("LoadCrossLayer", e.Message, StringComparison.Ordinal);
        File.WriteAllText(cfg, text.Replace("feature_output_hook", "feature_out", StringComparison.Ordinal));
        e = Assert.Throws<InvalidDataException>(() => SaeLoader.LoadAll(dir.Path));
        Assert.Contains("'feature_output_hook' is missing", e.Message, StringComparison.Ordinal);

        // a set for more layers than the model has: splicing names the hook the model lacks
        File.WriteAllText(cfg, text);
        for (int l = 2; l < 7; l++) File.Copy(dir.File("layer_0.safetensors"), dir.File($"layer_{l}.safetensors"), overwrite: true);
        var set = SaeLoader.LoadAll(dir.Path);
        using var m = HookedTransformer.Load(Path.Combine(TestPaths.Shared, "models", "stories260K", "stories260K.bin"));
        var wrongWidth = Assert.Throws<ArgumentException>(() => m.AddSplice(new SaeSplice(set[0])));
        Assert.Contains("d_in = 12", wrongWidth.Message, StringComparison.Ordinal);
        var lacking = Assert.Throws<ArgumentException>(() => m.AddSplice(new SaeSplice(set[6])));
        Assert.Contains("blocks.6.ln2.hook_normalized", lacking.Message, StringComparison.Ordinal);
    }
}
