using System.Runtime.InteropServices;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json.Nodes;
using FeatureLens.Analysis;
using FeatureLens.Runtime.Models;
using FeatureLens.Runtime.Tokenizers;
using FeatureLens.Saes;

namespace FeatureLens.Database;

/// <summary>
/// What a scan was built from, as fingerprints: the model (its config, tokenizer vocabulary and sampled weights), each
/// SAE (all its parameters), the corpus (the files' contents, in order) and the settings. Resuming, sharding and merging
/// are only allowed between databases of the same identity; <see cref="Describe"/> names what differs.
/// </summary>
public sealed record ScanIdentity(string Model, string ModelName, IReadOnlyList<string> Saes, string Corpus, string Settings)
{
    /// <summary>One hash of everything.</summary>
    public string Id => Hex(Encoding.UTF8.GetBytes(string.Join("\n", [Model, .. Saes, Corpus, Settings])));

    /// <summary>What differs between this identity and <paramref name="other"/>, in words (empty when they agree).</summary>
    public string Describe(ScanIdentity other)
    {
        var d = new List<string>();
        if (Model != other.Model) d.Add($"the model ({ModelName} vs {other.ModelName})");
        if (!Saes.SequenceEqual(other.Saes)) d.Add($"the SAEs ({Saes.Count} vs {other.Saes.Count}, or their weights)");
        if (Corpus != other.Corpus) d.Add("the corpus files");
        if (Settings != other.Settings) d.Add($"the settings ({Settings} vs {other.Settings})");
        return string.Join(", ", d);
    }

    internal JsonObject ToJson() => new()
    {
        ["model"] = Model, ["model_name"] = ModelName, ["saes"] = new JsonArray([.. Saes.Select(s => (JsonNode)s)]), ["corpus"] = Corpus, ["settings"] = Settings,
    };

    internal static ScanIdentity FromJson(JsonNode n, string where)
    {
        string S(string k) => n[k]?.GetValue<string>() ?? throw new InvalidDataException($"{where}: identity lacks '{k}'");
        return new ScanIdentity(S("model"), S("model_name"), n["saes"]?.AsArray().Select(x => x!.GetValue<string>()).ToList()
            ?? throw new InvalidDataException($"{where}: identity lacks 'saes'"), S("corpus"), S("settings"));
    }

    /// <summary>The identity of a scan of <paramref name="corpus"/> through <paramref name="set"/> with <paramref name="settings"/>.</summary>
    public static ScanIdentity Of(SaeSet set, IReadOnlyList<string> corpus, ScanSettings settings) =>
        new(ModelFingerprint(set.Model), NameOf(set.Model.Config), set.Saes.Select(SaeFingerprint).ToList(), CorpusFingerprint(corpus), settings.ToJson().ToJsonString());

    /// <summary>A short name for the model: its folder or file name.</summary>
    public static string NameOf(ModelConfig cfg) =>
        cfg.Source.Length == 0 ? "model" : Path.GetFileName(cfg.Source.TrimEnd('/', '\\')) is { Length: > 0 } n ? n : cfg.Source;

    /// <summary>SHA-256 of the model's config, tokenizer vocabulary, embedding rows, norm weights and unembedding rows.</summary>
    public static string ModelFingerprint(HookedTransformer model)
    {
        using var h = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        var cfg = model.Config;
        h.AppendData(Encoding.UTF8.GetBytes(string.Join(",", cfg.Architecture, cfg.NLayers, cfg.DModel, cfg.NHeads, cfg.NKvHeads, cfg.DHead, cfg.DMlp, cfg.VocabSize, cfg.NCtx)));
        if (model.Tokenizer is { } tok)
            for (int i = 0; i < tok.VocabSize; i++) h.AppendData(Encoding.UTF8.GetBytes(tok.TokenText(i) + "\u0001"));
        var w = model.Weights;
        var row = new float[cfg.DModel];
        foreach (int r in new[] { 0, cfg.VocabSize / 3, 2 * cfg.VocabSize / 3, cfg.VocabSize - 1 })
        {
            w.TokenEmbedding.ReadRow(r, row);
            h.AppendData(MemoryMarshal.AsBytes(row.AsSpan()));
        }
        h.AppendData(MemoryMarshal.AsBytes(w.FinalNormWeight.AsSpan()));
        foreach (var l in w.Layers)
        {
            h.AppendData(MemoryMarshal.AsBytes(l.Ln1Weight.AsSpan()));
            h.AppendData(MemoryMarshal.AsBytes(l.Ln2Weight.AsSpan()));
        }
        var logits = new float[cfg.VocabSize];
        // one column of the unembedding's product with a fixed vector: depends on every unembedding weight
        var probe = new float[cfg.DModel];
        for (int c = 0; c < probe.Length; c++) probe[c] = 1f / (c + 1);
        unsafe
        {
            fixed (float* pp = probe, pl = logits)
                Runtime.Kernels.Gemm.Multiply(Runtime.Tensors.MatrixView.F32(pp, 1, cfg.DModel), w.Unembed, pl, cfg.VocabSize);
        }
        h.AppendData(MemoryMarshal.AsBytes(logits.AsSpan()));
        return Convert.ToHexStringLower(h.GetHashAndReset());
    }

    /// <summary>SHA-256 of an SAE's hook, architecture and every parameter.</summary>
    public static string SaeFingerprint(Sae sae)
    {
        using var h = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        var c = sae.Config;
        h.AppendData(Encoding.UTF8.GetBytes($"{c.Metadata.HookName}|{c.Architecture}|{c.DIn}|{c.DSae}|{c.DOut}|{c.Metadata.HookHeadIndex}"));
        foreach (var a in new[] { sae.WEnc, sae.BEnc, sae.WDec, sae.BDec, sae.Threshold, sae.BGate, sae.RMag, sae.BMag, sae.WSkip })
            if (a != null) h.AppendData(MemoryMarshal.AsBytes(a.AsSpan()));
        return Convert.ToHexStringLower(h.GetHashAndReset());
    }

    /// <summary>SHA-256 of the corpus files' contents, in order.</summary>
    public static string CorpusFingerprint(IReadOnlyList<string> files)
    {
        using var h = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        foreach (var f in files)
        {
            if (!File.Exists(f)) throw new FileNotFoundException($"corpus file not found: {f}");
            h.AppendData(SHA256.HashData(File.ReadAllBytes(f)));
            // jsonl and text corpora split documents differently
            h.AppendData(Encoding.UTF8.GetBytes(Path.GetExtension(f).ToLowerInvariant()));
        }
        return Convert.ToHexStringLower(h.GetHashAndReset());
    }

    static string Hex(byte[] data) => Convert.ToHexStringLower(SHA256.HashData(data));
}
