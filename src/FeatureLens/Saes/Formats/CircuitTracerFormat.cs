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
/// hook_resid_pre|mid|post, ln2.hook_normalized, hook_mlp_in and hook_mlp_out map to blocks.L.*; circuit-tracer's own MLP
/// wrapper hooks mlp.hook_in (the MLP's input: the pre-MLP norm's output after its weight) and mlp.hook_out (the MLP's output,
/// before Gemma 2's post-MLP norm; elsewhere equal to hook_mlp_out) map to blocks.L.mlp.hook_in / blocks.L.mlp.hook_out
/// (mntss/transcoder-Llama-3.2-1B: mlp.hook_in → mlp.hook_out; mntss/gemma-scope-transcoders: mlp.hook_in → hook_mlp_out).
/// Negative JumpReLU thresholds are refused (circuit-tracer then lets negative pre-activations through; FeatureLens's JumpReLU
/// is ReLU'd). FeatureLens's TopK keeps the k largest pre-activations that are positive; circuit-tracer's keeps the k largest
/// whatever their sign, which differs only for tokens with fewer than k positive pre-activations.</para>
/// <para>The <c>transcoders:</c> list may name local files (relative to the folder) or <c>hf://ORG/NAME/path?revision=R</c>
/// references, which are looked up in the local Hugging Face hub cache (nothing is downloaded). Listed Gemma Scope
/// <c>params.npz</c> files (as mntss/gemma-scope-transcoders lists google/gemma-scope-2b-pt-transcoders) load in Gemma Scope's
/// layout: W_enc [d_model, d_transcoder], W_dec, b_enc, b_dec, threshold — a JumpReLU transcoder.</para>
/// <para>Cross-layer transcoders (<c>model_kind: cross_layer_transcoder</c>, circuit-tracer's <c>load_clt</c> layout) load with
/// <see cref="LoadCrossLayer"/> into a <see cref="CrossLayerTranscoder"/>: <c>W_enc_{i}.safetensors</c> for every layer i from 0
/// (W_enc_{i} [d_transcoder, d_model], b_enc_{i} [d_transcoder], b_dec_{i} [d_model] — the output bias of layer i's
/// reconstruction — and, for JumpReLU, threshold_{i} [d_transcoder]; ReLU otherwise) and <c>W_dec_{i}.safetensors</c>
/// (W_dec_{i} [d_transcoder, n_layers − i, d_model]: slice k is what layer i's features write into layer i + k). The per-SAE
/// loaders (<see cref="LoadAll"/>, <see cref="LoadFile"/>) refuse them: one <see cref="Sae"/> cannot write several layers.</para>
/// </summary>
public static class CircuitTracerFormat
{
    public const string ConfigFile = "config.yaml";
    static readonly Regex LayerFile = new(@"^layer_(\d+)\.safetensors$", RegexOptions.CultureInvariant);

    /// <summary>circuit-tracer hook (per block) → FeatureLens hook suffix.</summary>
    static readonly Dictionary<string, string> HookMap = new(StringComparer.Ordinal)
    {
        ["hook_resid_pre"] = "hook_resid_pre", ["hook_resid_mid"] = "hook_resid_mid", ["hook_resid_post"] = "hook_resid_post",
        ["ln2.hook_normalized"] = "ln2.hook_normalized", ["hook_mlp_in"] = "hook_mlp_in", ["hook_mlp_out"] = "hook_mlp_out",
        ["mlp.hook_in"] = "mlp.hook_in", ["mlp.hook_out"] = "mlp.hook_out",
    };

    /// <summary>True when <paramref name="dir"/> holds a circuit-tracer config.yaml.</summary>
    public static bool IsFolder(string dir) => File.Exists(Path.Combine(dir, ConfigFile));

    /// <summary>Loads every per-layer transcoder of the set in <paramref name="dir"/>, layer 0 first.</summary>
    /// <param name="dir">The folder holding config.yaml.</param>
    /// <param name="hubCache">The Hugging Face hub cache <c>hf://</c> references are looked up in (default: the environment's, see <see cref="HfCache"/>).</param>
    public static IReadOnlyList<Sae> LoadAll(string dir, string? hubCache = null)
    {
        dir = Path.GetFullPath(dir);
        var (cfg, files) = ReadSet(dir, hubCache);
        return files.Select((f, layer) => LoadLayer(cfg, f, layer)).ToList();
    }

    /// <summary>Loads one layer's file of a set (the config.yaml beside it names the hooks).</summary>
    public static Sae LoadFile(string file)
    {
        file = Path.GetFullPath(file);
        var (cfg, files) = ReadSet(Path.GetDirectoryName(file)!, null);
        int layer = files.FindIndex(f => string.Equals(f, file, StringComparison.Ordinal));
        if (layer < 0) throw new InvalidDataException($"{file}: not one of the transcoder files its {ConfigFile} lists");
        return LoadLayer(cfg, file, layer);
    }

    sealed record SetConfig(string Path, string InputHook, string OutputHook, string? Activation, int? K, string? ModelName);

    static (SetConfig Config, List<string> Files) ReadSet(string dir, string? hubCache)
    {
        string cfgPath = Path.Combine(dir, ConfigFile);
        var yaml = SimpleYaml.Read(cfgPath);
        string Need(string key) => yaml.Scalars.TryGetValue(key, out var v) && !string.IsNullOrEmpty(v) ? v
            : throw new InvalidDataException($"{cfgPath}: field '{key}' is missing");
        string kind = Need("model_kind");
        if (kind == "cross_layer_transcoder")
            throw new InvalidDataException($"{cfgPath}: model_kind cross_layer_transcoder: each CLT feature writes to every later layer's MLP output, which a single-hook SAE cannot represent; load it as a whole (CircuitTracerFormat.LoadCrossLayer, or --transcoders DIR of graph, qk, intervene and feature-links)");
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
                string full;
                if (p.StartsWith("hf://", StringComparison.Ordinal)) full = FromHubCache(p, cfgPath, files.Count, hubCache);
                else if (p.Contains("://", StringComparison.Ordinal))
                    throw new InvalidDataException($"{cfgPath}: transcoder '{p}' (layer {files.Count}) is a remote reference; download the files and list local paths or hf:// references (or name them layer_N.safetensors beside {ConfigFile})");
                else full = Path.GetFullPath(Path.IsPathRooted(p) ? p : Path.Combine(dir, p));
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
        return HookMap.TryGetValue(name, out var mapped) ? mapped
            : throw new InvalidDataException($"{cfgPath}: {field} '{name}' is not a hook FeatureLens knows (expected one of {string.Join(", ", HookMap.Keys)})");
    }

    /// <summary>An <c>hf://ORG/NAME/path/in/repo[?revision=R]</c> reference → the file in the local hub cache.</summary>
    static string FromHubCache(string uri, string cfgPath, int layer, string? hubCache)
    {
        string rest = uri["hf://".Length..];
        string? revision = null;
        int q = rest.IndexOf('?', StringComparison.Ordinal);
        if (q >= 0)
        {
            foreach (string kv in rest[(q + 1)..].Split('&', StringSplitOptions.RemoveEmptyEntries))
                if (kv.StartsWith("revision=", StringComparison.Ordinal)) revision = Uri.UnescapeDataString(kv["revision=".Length..]);
            rest = rest[..q];
        }
        var parts = rest.Split('/', 3);
        if (parts.Length < 3 || parts.Any(string.IsNullOrEmpty))
            throw new InvalidDataException($"{cfgPath}: transcoder '{uri}' (layer {layer}) is not hf://ORG/NAME/path/in/repo");
        string repoRef = $"{parts[0]}/{parts[1]}" + (revision is null ? "" : "@" + revision) + "/" + parts[2];
        try
        {
            return hubCache is null ? HfCache.Resolve(repoRef) : HfCache.Resolve(repoRef, hubCache);
        }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException or InvalidDataException or ArgumentException)
        {
            throw new FileNotFoundException($"{cfgPath}: transcoder '{uri}' (layer {layer}) is not in the local Hugging Face cache ({e.Message}); fetch it first, e.g. featurelens download {parts[0]}/{parts[1]} --include '{parts[2]}'", e);
        }
    }

    static Sae LoadLayer(SetConfig set, string file, int layer)
    {
        if (file.EndsWith(".npz", StringComparison.OrdinalIgnoreCase))
        {
            if (set.Activation is not (null or "jump_relu" or "jumprelu"))
                throw new InvalidDataException($"{set.Path}: activation '{set.Activation}' but layer {layer} is a Gemma Scope params.npz, which is JumpReLU");
            var npz = GemmaScopeFormat.LoadTranscoder(file, $"blocks.{layer}.{set.InputHook}", $"blocks.{layer}.{set.OutputHook}", set.ModelName, "circuit-tracer transcoder (Gemma Scope npz)");
            if (npz.Threshold!.Any(t => t < 0))
                throw new InvalidDataException($"{file}: tensor 'threshold' has negative thresholds; circuit-tracer then passes negative pre-activations, which FeatureLens's (ReLU'd) JumpReLU does not");
            return npz;
        }
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

    // ───────────────────────────── cross-layer transcoders ─────────────────────────────

    static readonly Regex EncoderFile = new(@"^W_enc_(\d+)\.safetensors$", RegexOptions.CultureInvariant);

    /// <summary>True when <paramref name="dir"/> holds a circuit-tracer config.yaml with <c>model_kind: cross_layer_transcoder</c>.</summary>
    public static bool IsCrossLayerFolder(string dir)
    {
        string cfg = Path.Combine(dir, ConfigFile);
        return File.Exists(cfg) && SimpleYaml.Read(cfg).Scalars.GetValueOrDefault("model_kind") == "cross_layer_transcoder";
    }

    /// <summary>
    /// Loads a circuit-tracer cross-layer transcoder folder (config.yaml + W_enc_{i} / W_dec_{i} safetensors files, see the
    /// class remarks). Every tensor's presence, shape and finiteness is checked; a problem names the file and tensor.
    /// </summary>
    public static CrossLayerTranscoder LoadCrossLayer(string dir)
    {
        dir = Path.GetFullPath(dir);
        string cfgPath = Path.Combine(dir, ConfigFile);
        if (!File.Exists(cfgPath)) throw new FileNotFoundException($"{dir}: no {ConfigFile} (a circuit-tracer cross-layer transcoder folder has one with model_kind: cross_layer_transcoder)", cfgPath);
        var yaml = SimpleYaml.Read(cfgPath);
        string kind = yaml.Scalars.GetValueOrDefault("model_kind") ?? throw new InvalidDataException($"{cfgPath}: field 'model_kind' is missing");
        if (kind != "cross_layer_transcoder") throw new InvalidDataException($"{cfgPath}: model_kind is '{kind}', expected cross_layer_transcoder");
        string Need(string key) => yaml.Scalars.TryGetValue(key, out var v) && !string.IsNullOrEmpty(v) ? v
            : throw new InvalidDataException($"{cfgPath}: field '{key}' is missing");
        string input = Hook(Need("feature_input_hook"), "feature_input_hook", cfgPath);
        string output = Hook(Need("feature_output_hook"), "feature_output_hook", cfgPath);
        string? activation = yaml.Scalars.GetValueOrDefault("activation");
        if (activation is not null and not ("relu" or "jump_relu" or "jumprelu"))
            throw new InvalidDataException($"{cfgPath}: field 'activation' is '{activation}', expected relu or jump_relu (circuit-tracer's cross-layer transcoders have no other)");

        var layers = Directory.GetFiles(dir).Select(f => EncoderFile.Match(Path.GetFileName(f))).Where(m => m.Success)
            .Select(m => int.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture)).ToHashSet();
        if (layers.Count == 0) throw new InvalidDataException($"{dir}: no W_enc_0.safetensors (a cross-layer transcoder has W_enc_{{i}}.safetensors and W_dec_{{i}}.safetensors per layer)");
        int L = layers.Count;
        for (int i = 0; i < L; i++)
            if (!layers.Contains(i)) throw new InvalidDataException($"{dir}: W_enc_{i}.safetensors is missing (found {L} W_enc_*.safetensors files; every layer from 0 needs one)");

        var saes = new Sae[L];
        var later = new float[]?[L][];
        int dTc = 0, dModel = 0;
        bool jump = false;
        for (int i = 0; i < L; i++)
        {
            string encPath = Path.Combine(dir, $"W_enc_{i}.safetensors");
            float[] wEnc, bEnc, bDec;
            float[]? threshold = null;
            using (var enc = SafetensorsFile.Open(encPath))
            {
                string wName = $"W_enc_{i}";
                if (!enc.Contains(wName)) throw new InvalidDataException($"{encPath}: tensor '{wName}' is missing");
                var shape = enc.Entry(wName).Shape;
                if (i == 0)
                {
                    if (shape is not [int d0, int c0] || d0 <= 0 || c0 <= 0)
                        throw new InvalidDataException($"{encPath}: tensor '{wName}' has shape [{string.Join(", ", shape)}], expected [d_transcoder, d_model]");
                    dTc = d0; dModel = c0;
                    jump = enc.Contains("threshold_0");
                    if (activation is "jump_relu" or "jumprelu" && !jump) throw new InvalidDataException($"{encPath}: {ConfigFile} says jump_relu but tensor 'threshold_0' is missing");
                    if (activation is "relu" && jump) throw new InvalidDataException($"{encPath}: {ConfigFile} says relu but the file has a JumpReLU tensor 'threshold_0'");
                }
                wEnc = ReadChecked(enc, wName, [dTc, dModel], "[d_transcoder, d_model]");
                bEnc = ReadChecked(enc, $"b_enc_{i}", [dTc], "[d_transcoder]");
                bDec = ReadChecked(enc, $"b_dec_{i}", [dModel], "[d_model]");
                if (jump)
                {
                    threshold = ReadChecked(enc, $"threshold_{i}", [dTc], "[d_transcoder] (layer 0 has a threshold, so every layer needs one)");
                    if (threshold.Any(t => t < 0))
                        throw new InvalidDataException($"{encPath}: tensor 'threshold_{i}' has negative thresholds; circuit-tracer then passes negative pre-activations, which FeatureLens's (ReLU'd) JumpReLU does not");
                }
            }
            string decPath = Path.Combine(dir, $"W_dec_{i}.safetensors");
            if (!File.Exists(decPath)) throw new InvalidDataException($"{dir}: W_dec_{i}.safetensors is missing (layer {i}'s decoder, tensor 'W_dec_{i}' [d_transcoder {dTc}, {L - i}, d_model {dModel}])");
            float[] wDec;
            using (var dec = SafetensorsFile.Open(decPath))
                wDec = ReadChecked(dec, $"W_dec_{i}", [dTc, L - i, dModel], $"[d_transcoder, n_layers − {i}, d_model] (n_layers = {L} W_enc files)");

            // W_enc is [d_transcoder, d_model] (pre = x·W_encᵀ + b_enc): Sae keeps (d_model, d_transcoder)
            var wEncT = new float[wEnc.Length];
            for (int f = 0; f < dTc; f++)
                for (int c = 0; c < dModel; c++) wEncT[(long)c * dTc + f] = wEnc[(long)f * dModel + c];
            // W_dec_i[:, k, :] → one (d_transcoder, d_model) matrix per target layer i + k
            var slices = new float[L - i][];
            for (int k = 0; k < L - i; k++)
            {
                var m = slices[k] = new float[(long)dTc * dModel];
                for (int f = 0; f < dTc; f++)
                    Array.Copy(wDec, ((long)f * (L - i) + k) * dModel, m, (long)f * dModel, dModel);
            }
            var cfg = new SaeConfig
            {
                Architecture = jump ? SaeArchitecture.JumpReluTranscoder : SaeArchitecture.Transcoder,
                DIn = dModel, DSae = dTc, DOut = dModel, ApplyBDecToInput = false, Format = "circuit-tracer cross-layer transcoder",
                Metadata = new SaeMetadata { HookName = $"blocks.{i}.{input}", HookNameOut = $"blocks.{i}.{output}", ModelName = yaml.Scalars.GetValueOrDefault("model_name") },
            };
            saes[i] = new Sae(cfg, wEncT, bEnc, slices[0], bDec, threshold) { SourcePath = encPath };
            later[i] = slices[1..];
        }
        return new CrossLayerTranscoder(saes, later) { SourcePath = dir };
    }

    static float[] ReadChecked(SafetensorsFile f, string name, int[] shape, string expected)
    {
        if (!f.Contains(name)) throw new InvalidDataException($"{f.Location}: tensor '{name}' is missing (expected {expected} = [{string.Join(", ", shape)}])");
        var e = f.Entry(name);
        if (!e.Shape.SequenceEqual(shape))
            throw new InvalidDataException($"{f.Location}: tensor '{name}' has shape [{string.Join(", ", e.Shape)}], expected {expected} = [{string.Join(", ", shape)}]");
        if (e.DType is not (Runtime.Tensors.DType.F32 or Runtime.Tensors.DType.F16 or Runtime.Tensors.DType.BF16 or Runtime.Tensors.DType.F64))
            throw new InvalidDataException($"{f.Location}: tensor '{name}' has dtype {Runtime.Tensors.DTypeInfo.SafetensorsName(e.DType)}, expected a float type (F32, F16, BF16 or F64)");
        var data = f.ReadF32(name).Data;
        for (long k = 0; k < data.Length; k++)
            if (!float.IsFinite(data[k])) throw new InvalidDataException($"{f.Location}: tensor '{name}' has a non-finite value ({data[k]}) at flat index {k}");
        return data;
    }

    /// <summary>
    /// Writes <paramref name="clt"/> as a circuit-tracer cross-layer transcoder folder (config.yaml, W_enc_{i}.safetensors,
    /// W_dec_{i}.safetensors; float32), each file through a temporary file moved into place. Every layer must be a ReLU or
    /// JumpReLU transcoder of one width without skip path, rescaling or input normalisation, reading blocks.i.X and writing
    /// blocks.i.Y for the same X and Y (one of the hooks circuit-tracer names); layers without a decoder into a later layer get
    /// zeros there.
    /// </summary>
    public static void SaveCrossLayer(CrossLayerTranscoder clt, string dir, string? modelName = null)
    {
        ArgumentNullException.ThrowIfNull(clt);
        ArgumentException.ThrowIfNullOrEmpty(dir);
        int L = clt.NLayers;
        var first = clt.Layers[0];
        int dTc = first.DSae, dModel = first.DIn;
        bool jump = first.Config.HasThreshold;
        string Suffix(string hook, int layer, string what)
        {
            string prefix = $"blocks.{layer}.";
            if (!hook.StartsWith(prefix, StringComparison.Ordinal)) throw new ArgumentException($"layer {layer}: {what} '{hook}' is not a hook of block {layer}");
            return hook[prefix.Length..];
        }
        string input = Suffix(first.Config.HookName, 0, "input hook"), output = Suffix(first.Config.OutputHookName, 0, "output hook");
        for (int i = 0; i < L; i++)
        {
            var c = clt.Layers[i].Config;
            if (c.Architecture != (jump ? SaeArchitecture.JumpReluTranscoder : SaeArchitecture.Transcoder))
                throw new ArgumentException($"layer {i}: architecture '{SaeConfig.ArchitectureName(c.Architecture)}'; circuit-tracer's cross-layer format holds {(jump ? "jumprelu_transcoder" : "transcoder")} layers only (as layer 0)");
            if (c.DSae != dTc || c.DIn != dModel || c.DOut != dModel) throw new ArgumentException($"layer {i}: d_in {c.DIn}, d_sae {c.DSae}, d_out {c.DOut}; expected {dModel}, {dTc}, {dModel} as layer 0");
            if (c.ApplyBDecToInput || c.RescaleActsByDecoderNorm || c.Normalization != ActivationNormalization.None)
                throw new ArgumentException($"layer {i}: b_dec at the input, decoder-norm rescaling and input normalisation have no place in circuit-tracer's cross-layer format");
            if (Suffix(c.HookName, i, "input hook") != input || Suffix(c.OutputHookName, i, "output hook") != output)
                throw new ArgumentException($"layer {i}: reads '{c.HookName}' and writes '{c.OutputHookName}'; every layer must use blocks.{i}.{input} → blocks.{i}.{output} as layer 0");
        }
        string? ctIn = HookMap.FirstOrDefault(kv => kv.Value == input).Key, ctOut = HookMap.FirstOrDefault(kv => kv.Value == output).Key;
        if (ctIn is null || ctOut is null) throw new ArgumentException($"hooks '{input}' → '{output}' have no circuit-tracer name (expected one of {string.Join(", ", HookMap.Keys)})");
        Directory.CreateDirectory(dir);
        for (int i = 0; i < L; i++)
        {
            var sae = clt.Layers[i];
            var wEnc = new float[(long)dTc * dModel];   // [d_transcoder, d_model]
            for (int c = 0; c < dModel; c++)
                for (int f = 0; f < dTc; f++) wEnc[(long)f * dModel + c] = sae.WEnc[(long)c * dTc + f];
            var enc = new SafetensorsWriter();
            AddF32(enc, $"W_enc_{i}", wEnc, dTc, dModel);
            AddF32(enc, $"b_enc_{i}", sae.BEnc, dTc);
            AddF32(enc, $"b_dec_{i}", sae.BDec, dModel);
            if (jump) AddF32(enc, $"threshold_{i}", sae.Threshold!, dTc);
            enc.Write(Path.Combine(dir, $"W_enc_{i}.safetensors"));
            var wDec = new float[(long)dTc * (L - i) * dModel];   // [d_transcoder, n_layers − i, d_model]
            for (int k = 0; k < L - i; k++)
                if (clt.Decoder(i, i + k) is { } m)
                    for (int f = 0; f < dTc; f++) Array.Copy(m, (long)f * dModel, wDec, ((long)f * (L - i) + k) * dModel, dModel);
            var dec = new SafetensorsWriter();
            AddF32(dec, $"W_dec_{i}", wDec, dTc, L - i, dModel);
            dec.Write(Path.Combine(dir, $"W_dec_{i}.safetensors"));
        }
        var yaml = new System.Text.StringBuilder();
        yaml.Append("model_kind: cross_layer_transcoder\n");
        if (modelName != null) yaml.Append(CultureInfo.InvariantCulture, $"model_name: \"{modelName}\"\n");
        yaml.Append(CultureInfo.InvariantCulture, $"feature_input_hook: \"{ctIn}\"\nfeature_output_hook: \"{ctOut}\"\n");
        yaml.Append(jump ? "activation: jump_relu\n" : "activation: relu\n");
        SaeWriter.WriteAtomically(Path.Combine(dir, ConfigFile), yaml.ToString());
    }

    static void AddF32(SafetensorsWriter w, string name, float[] data, params int[] shape) =>
        w.AddStreamed(name, Runtime.Tensors.DType.F32, shape, s => s.Write(System.Runtime.InteropServices.MemoryMarshal.AsBytes(data.AsSpan())));

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
