using System.Text.RegularExpressions;
using FeatureLens.Runtime.Checkpoints;

namespace FeatureLens.Saes.Formats;

/// <summary>
/// circuit-tracer's per-layer transcoders (its <c>TranscoderSet</c>): a folder with <c>config.yaml</c>
/// (<c>model_kind: transcoder_set</c>, <c>feature_input_hook</c>, <c>feature_output_hook</c>, optional <c>activation</c>
/// relu|topk|jump_relu and <c>k</c>, optional <c>transcoders:</c> list of files, one per layer in order) and, without
/// that list, <c>layer_0.safetensors</c>, <c>layer_1.safetensors</c>, ….
/// <para>Each file holds W_enc [d_transcoder, d_model] (pre = x·W_encᵀ + b_enc, as F.linear), W_dec [d_transcoder, d_model],
/// b_enc [d_transcoder], b_dec [d_model], optionally <c>activation_function.threshold</c> [d_transcoder] (JumpReLU:
/// pre·[pre &gt; θ]), <c>k</c> (a scalar: TopK) and W_skip [d_model, d_model] (output += x·W_skipᵀ). Output =
/// acts·W_dec + b_dec (+ skip). Float32/16/bfloat16 weights are read as float32.</para>
/// <para>Hooks are circuit-tracer's per-block TransformerLens names, translated to FeatureLens's:
/// hook_resid_pre|mid|post, ln2.hook_normalized, hook_mlp_in, hook_mlp_out and mlp.hook_out (= hook_mlp_out) map to
/// blocks.L.*; mlp.hook_in (the norm's output after its weight) has no FeatureLens hook and is refused, as are
/// negative JumpReLU thresholds (circuit-tracer then lets negative pre-activations through; FeatureLens's JumpReLU is
/// ReLU'd). FeatureLens's TopK keeps the k largest pre-activations that are positive; circuit-tracer's keeps the k largest
/// whatever their sign, which differs only for tokens with fewer than k positive pre-activations.</para>
/// <para>Cross-layer transcoders (<c>model_kind: cross_layer_transcoder</c>) are refused: each feature writes to every
/// later layer, which one <see cref="Sae"/> (one input hook, one output hook) cannot represent.</para>
/// </summary>
public static class CircuitTracerFormat
{
    public const string ConfigFile = "config.yaml";
    static readonly Regex LayerFile = new(@"^layer_(\d+)\.safetensors$", RegexOptions.CultureInvariant);

    /// <summary>circuit-tracer hook (per block) → FeatureLens hook suffix; null: known but not representable.</summary>
    static readonly Dictionary<string, string?> HookMap = new(StringComparer.Ordinal)
    {
        ["hook_resid_pre"] = "hook_resid_pre", ["hook_resid_mid"] = "hook_resid_mid", ["hook_resid_post"] = "hook_resid_post",
        ["ln2.hook_normalized"] = "ln2.hook_normalized", ["hook_mlp_in"] = "hook_mlp_in",
        ["hook_mlp_out"] = "hook_mlp_out", ["mlp.hook_out"] = "hook_mlp_out",
        ["mlp.hook_in"] = null,
    };

    /// <summary>True when <paramref name="dir"/> holds a circuit-tracer config.yaml.</summary>
    public static bool IsFolder(string dir) => File.Exists(Path.Combine(dir, ConfigFile));

    /// <summary>Loads every per-layer transcoder of the set in <paramref name="dir"/>, layer 0 first.</summary>
    public static IReadOnlyList<Sae> LoadAll(string dir)
    {
        dir = Path.GetFullPath(dir);
        var (cfg, files) = ReadSet(dir);
        return files.Select((f, layer) => LoadLayer(cfg, f, layer)).ToList();
    }

    /// <summary>Loads one layer's file of a set (the config.yaml beside it names the hooks).</summary>
    public static Sae LoadFile(string file)
    {
        file = Path.GetFullPath(file);
        var (cfg, files) = ReadSet(Path.GetDirectoryName(file)!);
        int layer = files.FindIndex(f => string.Equals(f, file, StringComparison.Ordinal));
        if (layer < 0) throw new InvalidDataException($"{file}: not one of the transcoder files its {ConfigFile} lists");
        return LoadLayer(cfg, file, layer);
    }

    sealed record SetConfig(string Path, string InputHook, string OutputHook, string? Activation, int? K, string? ModelName);

    static (SetConfig Config, List<string> Files) ReadSet(string dir)
    {
        string cfgPath = Path.Combine(dir, ConfigFile);
        var yaml = SimpleYaml.Read(cfgPath);
        string Need(string key) => yaml.Scalars.TryGetValue(key, out var v) && !string.IsNullOrEmpty(v) ? v
            : throw new InvalidDataException($"{cfgPath}: field '{key}' is missing");
        string kind = Need("model_kind");
        if (kind == "cross_layer_transcoder")
            throw new InvalidDataException($"{cfgPath}: model_kind cross_layer_transcoder is not supported: each CLT feature writes to every later layer's MLP output, which a single-hook SAE cannot represent; per-layer transcoder sets (transcoder_set) are");
        if (kind != "transcoder_set") throw new InvalidDataException($"{cfgPath}: model_kind '{kind}' is unknown (expected transcoder_set)");
        string input = Hook(Need("feature_input_hook"), "feature_input_hook", cfgPath);
        string outputHook = Hook(Need("feature_output_hook"), "feature_output_hook", cfgPath);
        string? activation = yaml.Scalars.GetValueOrDefault("activation");
        if (activation is not null and not ("relu" or "topk" or "jump_relu" or "jumprelu"))
            throw new InvalidDataException($"{cfgPath}: field 'activation' is '{activation}', expected relu, topk or jump_relu");
        int? k = null;
        if (yaml.Scalars.TryGetValue("k", out var ks))
            k = int.TryParse(ks, NumberStyles.Integer, CultureInfo.InvariantCulture, out int kv) && kv > 0 ? kv
                : throw new InvalidDataException($"{cfgPath}: field 'k' must be a positive integer, got '{ks}'");
        var cfg = new SetConfig(cfgPath, input, outputHook, activation, k, yaml.Scalars.GetValueOrDefault("model_name"));

        List<string> files;
        if (yaml.Lists.TryGetValue("transcoders", out var list))
        {
            files = [];
            foreach (string p in list)
            {
                if (p.Contains("://", StringComparison.Ordinal))
                    throw new InvalidDataException($"{cfgPath}: transcoder '{p}' is a remote reference; download the files and list local paths (or name them layer_N.safetensors beside {ConfigFile})");
                string full = Path.GetFullPath(Path.IsPathRooted(p) ? p : Path.Combine(dir, p));
                if (!File.Exists(full)) throw new FileNotFoundException($"{cfgPath}: transcoder file '{p}' (layer {files.Count}) not found", full);
                files.Add(full);
            }
        }
        else
        {
            var byLayer = Directory.GetFiles(dir).Select(f => (f, m: LayerFile.Match(Path.GetFileName(f)))).Where(t => t.m.Success)
                .ToDictionary(t => int.Parse(t.m.Groups[1].Value, CultureInfo.InvariantCulture), t => t.f);
            if (byLayer.Count == 0) throw new InvalidDataException($"{dir}: {ConfigFile} lists no 'transcoders' and there are no layer_N.safetensors files");
            for (int l = 0; l < byLayer.Count; l++)
                if (!byLayer.ContainsKey(l)) throw new InvalidDataException($"{dir}: layer_{l}.safetensors is missing (found {byLayer.Count} layer files; every layer from 0 needs one)");
            files = Enumerable.Range(0, byLayer.Count).Select(l => byLayer[l]).ToList();
        }
        if (files.Count == 0) throw new InvalidDataException($"{cfgPath}: the transcoder list is empty");
        return (cfg, files);
    }

    static string Hook(string name, string field, string cfgPath)
    {
        if (!HookMap.TryGetValue(name, out var mapped))
            throw new InvalidDataException($"{cfgPath}: {field} '{name}' is not a hook FeatureLens knows (expected one of {string.Join(", ", HookMap.Keys)})");
        return mapped ?? throw new InvalidDataException($"{cfgPath}: {field} '{name}' (the MLP's input after the norm's weight) has no FeatureLens hook; transcoders reading ln2.hook_normalized or hook_resid_mid are supported");
    }

    static Sae LoadLayer(SetConfig set, string file, int layer)
    {
        var raw = SafetensorsFile.Open(file);
        using var f = new SafetensorsSaeFile(raw);
        const string threshold = "activation_function.threshold";
        bool skip = f.Contains("W_skip");
        bool jump = f.Contains(threshold);
        bool topK = set.Activation == "topk" || f.Contains("k");
        if (set.Activation is "jump_relu" or "jumprelu" && !jump) throw new InvalidDataException($"{file}: {ConfigFile} says jump_relu but tensor '{threshold}' is missing");
        if (jump && topK) throw new InvalidDataException($"{file}: has both a JumpReLU threshold and a TopK k");
        int k = 0;
        if (topK)
        {
            if (f.Contains("k"))
            {
                var e = raw.Entry("k");
                double[] kv = e.DType switch
                {
                    Runtime.Tensors.DType.I64 => [.. raw.ReadInt64("k").Select(v => (double)v)],
                    Runtime.Tensors.DType.I32 => [.. raw.ReadInt32("k").Select(v => (double)v)],
                    _ => [.. f.Read("k").Data.Select(v => (double)v)],
                };
                if (kv.Length != 1 || kv[0] < 1 || kv[0] != Math.Floor(kv[0]) || kv[0] > int.MaxValue)
                    throw new InvalidDataException($"{file}: tensor 'k' must be one positive integer, got [{string.Join(", ", kv.Take(4))}]");
                k = (int)kv[0];
                if (set.K is int ck && ck != k) throw new InvalidDataException($"{file}: tensor k = {k} contradicts {ConfigFile} k = {ck}");
            }
            else k = set.K ?? throw new InvalidDataException($"{set.Path}: activation topk needs field 'k' (or a tensor 'k' in each file)");
        }
        var cfg = new SaeConfig
        {
            Architecture = SaeConfig.TranscoderOf(jump ? SaeArchitecture.JumpRelu : topK ? SaeArchitecture.TopK : SaeArchitecture.Standard, skip),
            K = k, ApplyBDecToInput = false, Format = "circuit-tracer transcoder",
            Metadata = new SaeMetadata { HookName = $"blocks.{layer}.{set.InputHook}", HookNameOut = $"blocks.{layer}.{set.OutputHook}", ModelName = set.ModelName },
        };
        var names = new SaeTensorNames { WEncStoredTransposed = true, Threshold = threshold };
        if (f.Contains("W_enc") && f.ShapeOf("W_enc") is [int rows, _] && f.Contains("b_enc")
            && f.ShapeOf("b_enc") is [int dTc] && rows == dTc && f.Contains("b_dec") && f.ShapeOf("b_dec") is [int dModel])
        {
            // W_enc is [d_transcoder, d_model] (F.linear): state the sizes so the orientation is never guessed
            cfg.DSae = dTc; cfg.DOut = dModel; cfg.DIn = f.ShapeOf("W_enc")[1];
        }
        var sae = SaeAssembly.Build(cfg, f, names, null, ("d_model", "d_transcoder", "d_model"), file);
        if (jump && sae.Threshold!.Any(t => t < 0))
            throw new InvalidDataException($"{file}: tensor '{threshold}' has negative thresholds; circuit-tracer then passes negative pre-activations, which FeatureLens's (ReLU'd) JumpReLU does not");
        return sae;
    }

    /// <summary>The flat YAML circuit-tracer's configs use: "key: value" scalars and "key:" followed by "- item" lists.</summary>
    sealed class SimpleYaml
    {
        public Dictionary<string, string> Scalars { get; } = new(StringComparer.Ordinal);
        public Dictionary<string, List<string>> Lists { get; } = new(StringComparer.Ordinal);

        public static SimpleYaml Read(string path)
        {
            var y = new SimpleYaml();
            string? listKey = null;
            int lineNo = 0;
            foreach (string raw in File.ReadLines(path))
            {
                lineNo++;
                string line = StripComment(raw).TrimEnd();
                if (line.Trim().Length == 0) continue;
                string t = line.TrimStart();
                if (t.StartsWith("- ", StringComparison.Ordinal) || t == "-")
                {
                    if (listKey is null) throw new InvalidDataException($"{path}:{lineNo}: a list item outside a list");
                    y.Lists[listKey].Add(Unquote(t[1..].Trim()));
                    continue;
                }
                if (line.Length != t.Length) throw new InvalidDataException($"{path}:{lineNo}: nested mappings are not supported here: '{raw.Trim()}'");
                int colon = t.IndexOf(':', StringComparison.Ordinal);
                if (colon <= 0) throw new InvalidDataException($"{path}:{lineNo}: expected 'key: value', got '{raw.Trim()}'");
                string key = t[..colon].Trim(), value = t[(colon + 1)..].Trim();
                if (value.Length == 0) { listKey = key; y.Lists[key] = []; continue; }
                listKey = null;
                y.Scalars[key] = value is "null" or "~" ? "" : Unquote(value);
            }
            return y;
        }

        static string StripComment(string s)
        {
            bool sq = false, dq = false;
            for (int i = 0; i < s.Length; i++)
            {
                char c = s[i];
                if (c == '\'' && !dq) sq = !sq;
                else if (c == '"' && !sq) dq = !dq;
                else if (c == '#' && !sq && !dq && (i == 0 || char.IsWhiteSpace(s[i - 1]))) return s[..i];
            }
            return s;
        }

        static string Unquote(string v) =>
            v.Length >= 2 && (v[0] == '"' && v[^1] == '"' || v[0] == '\'' && v[^1] == '\'') ? v[1..^1] : v;
    }
}
