using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using FeatureLens.Runtime.Checkpoints;
using FeatureLens.Runtime.Tensors;

namespace FeatureLens.Saes.Formats;

/// <summary>
/// Writes an SAE as a SAELens v6 folder: cfg.json, sae_weights.safetensors (float32) and, when feature
/// frequencies are given, sparsity.safetensors (<c>log_feature_sparsity</c> = log10(freq + 1e-10)).
/// Each file is written to a temporary file in the folder and moved into place when complete.
/// </summary>
public static class SaeWriter
{
    public const string ConfigFile = "cfg.json", WeightsFile = "sae_weights.safetensors", SparsityFile = "sparsity.safetensors";

    static readonly JsonSerializerOptions IndentedJson = new() { WriteIndented = true };

    /// <summary>Saves <paramref name="sae"/> into <paramref name="dir"/> (created if needed; same-named files are replaced).
    /// <paramref name="featureSparsity"/> is each latent's firing frequency in [0, 1] (d_sae values).</summary>
    public static void Save(Sae sae, string dir, float[]? featureSparsity = null)
    {
        ArgumentNullException.ThrowIfNull(sae);
        ArgumentException.ThrowIfNullOrEmpty(dir);
        var c = sae.Config;
        if (featureSparsity != null && featureSparsity.Length != c.DSae)
            throw new ArgumentException($"feature sparsity has {featureSparsity.Length} values, the SAE has d_sae = {c.DSae}");
        Directory.CreateDirectory(dir);

        var w = new SafetensorsWriter();
        if (c.Architecture != SaeArchitecture.Gated) AddF32(w, "b_enc", sae.BEnc, c.DSae);
        AddF32(w, "W_enc", sae.WEnc, c.DIn, c.DSae);
        AddF32(w, "W_dec", sae.WDec, c.DSae, c.DOut);
        AddF32(w, "b_dec", sae.BDec, c.DOut);
        if (c.HasThreshold) AddF32(w, "threshold", sae.Threshold!, c.DSae);
        if (c.Architecture == SaeArchitecture.Gated)
        {
            AddF32(w, "b_gate", sae.BGate!, c.DSae);
            AddF32(w, "r_mag", sae.RMag!, c.DSae);
            AddF32(w, "b_mag", sae.BMag!, c.DSae);
        }
        if (c.HasSkip) AddF32(w, "W_skip", sae.WSkip!, c.DOut, c.DIn);
        w.Write(Path.Combine(dir, WeightsFile));

        if (featureSparsity != null)
        {
            var log = new float[c.DSae];
            for (int j = 0; j < log.Length; j++) log[j] = (float)Math.Log10(featureSparsity[j] + 1e-10);
            var sw = new SafetensorsWriter();
            AddF32(sw, "log_feature_sparsity", log, c.DSae);
            sw.Write(Path.Combine(dir, SparsityFile));
        }

        WriteAtomically(Path.Combine(dir, ConfigFile), ConfigJson(c).ToJsonString(IndentedJson));
    }

    /// <summary>The cfg.json object SAELens v6 reads for this config (dtype is always float32: the weights are written so).</summary>
    public static JsonObject ConfigJson(SaeConfig c)
    {
        var o = new JsonObject
        {
            ["architecture"] = SaeConfig.ArchitectureName(c.Architecture),
            ["d_in"] = c.DIn,
            ["d_sae"] = c.DSae,
        };
        if (c.IsTranscoder) o["d_out"] = c.DOut;
        o["dtype"] = "float32";
        o["device"] = "cpu";
        o["apply_b_dec_to_input"] = c.ApplyBDecToInput;
        o["normalize_activations"] = SaeConfig.NormalizationName(c.Normalization);
        o["reshape_activations"] = c.ReshapeHookZ ? "hook_z" : "none";
        if (c.IsTopK)
        {
            o["k"] = c.K;
            o["rescale_acts_by_decoder_norm"] = c.RescaleActsByDecoderNorm;
        }
        var m = c.Metadata;
        var meta = new JsonObject
        {
            ["model_name"] = m.ModelName,
            ["hook_name"] = m.HookName,
            ["hook_head_index"] = m.HookHeadIndex,
            ["hook_name_out"] = m.HookNameOut,
            ["context_size"] = m.ContextSize,
            ["prepend_bos"] = m.PrependBos,
            ["dataset_path"] = m.DatasetPath,
            ["neuronpedia_id"] = m.NeuronpediaId,
        };
        if (!c.IsTranscoder) meta.Remove("hook_name_out");
        foreach (var kv in m.Extra)
            if (!meta.ContainsKey(kv.Key)) meta[kv.Key] = kv.Value?.DeepClone();
        o["metadata"] = meta;
        return o;
    }

    static void AddF32(SafetensorsWriter w, string name, float[] data, params int[] shape)
    {
        long n = 1;
        foreach (int s in shape) n *= s;
        if (data.Length != n) throw new ArgumentException($"tensor '{name}' has {data.Length} values, expected [{string.Join(", ", shape)}] = {n}");
        w.AddStreamed(name, DType.F32, shape, s => s.Write(MemoryMarshal.AsBytes(data.AsSpan())));
    }

    /// <summary>Writes text to a temporary file beside <paramref name="path"/>, then moves it over <paramref name="path"/>.</summary>
    internal static void WriteAtomically(string path, string text)
    {
        string temp = Path.Combine(Path.GetDirectoryName(Path.GetFullPath(path))!, $".{Path.GetFileName(path)}.{Environment.ProcessId}.{Guid.NewGuid():N}.tmp");
        try
        {
            File.WriteAllText(temp, text, new UTF8Encoding(false));
            File.Move(temp, path, overwrite: true);
        }
        catch
        {
            try { File.Delete(temp); } catch (IOException) { } catch (UnauthorizedAccessException) { }
            throw;
        }
    }
}
