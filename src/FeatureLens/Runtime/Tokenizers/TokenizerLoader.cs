using System.Text;
using System.Text.Json;

namespace FeatureLens.Runtime.Tokenizers;

/// <summary>Opens a tokenizer from the files a model ships with.</summary>
public static class TokenizerLoader
{
    /// <summary>
    /// Loads a tokenizer from <paramref name="path"/>: a folder (tokenizer.json preferred, else
    /// vocab.json + merges.txt, else tokenizer.bin), a tokenizer.json file, or a llama2.c tokenizer.bin.
    /// </summary>
    /// <param name="path">Folder or file.</param>
    /// <param name="vocabSizeHint">For tokenizer.bin: the model's vocab_size (the file does not store it); when null, the file is read to its end.</param>
    /// <exception cref="FileNotFoundException">No tokenizer file at the path.</exception>
    /// <exception cref="FormatException">The file is malformed or describes an unsupported tokenizer; the message names the file and the field.</exception>
    public static ITokenizer Load(string path, int? vocabSizeHint = null)
    {
        if (Directory.Exists(path))
        {
            string json = Path.Combine(path, "tokenizer.json");
            if (File.Exists(json)) return FromTokenizerJson(json);
            string vocab = Path.Combine(path, "vocab.json"), merges = Path.Combine(path, "merges.txt");
            if (File.Exists(vocab) && File.Exists(merges)) return ByteLevelBpeTokenizer.FromVocabAndMerges(vocab, merges);
            string bin = Path.Combine(path, "tokenizer.bin");
            if (File.Exists(bin)) return Llama2cTokenizer.FromFile(bin, vocabSizeHint);
            throw new FileNotFoundException($"{path}: no tokenizer found; expected tokenizer.json, vocab.json + merges.txt, or tokenizer.bin in the folder.", path);
        }
        if (!File.Exists(path)) throw new FileNotFoundException($"{path}: tokenizer file not found.", path);
        if (path.EndsWith(".json", StringComparison.OrdinalIgnoreCase)) return FromTokenizerJson(path);
        return Llama2cTokenizer.FromFile(path, vocabSizeHint);
    }

    /// <summary>
    /// Reads a Hugging Face tokenizer.json. Supported: model BPE with a ByteLevel pre-tokenizer
    /// (GPT-2 family) → <see cref="ByteLevelBpeTokenizer"/>; model BPE with Prepend/Replace
    /// normalizers or a Metaspace pre-tokenizer, usually with byte_fallback (Llama family) →
    /// <see cref="SentencePieceBpeTokenizer"/>.
    /// </summary>
    private static ITokenizer FromTokenizerJson(string file)
    {
        JsonDocument document;
        try
        {
            document = JsonDocument.Parse(File.ReadAllBytes(file), new JsonDocumentOptions { MaxDepth = 256 });
        }
        catch (JsonException e)
        {
            throw new FormatException($"{file}: not valid JSON: {e.Message}", e);
        }
        using (document)
        {
            var root = document.RootElement;
            if (root.ValueKind != JsonValueKind.Object) throw new FormatException($"{file}: expected a JSON object at the top level, found {root.ValueKind}.");
            if (!root.TryGetProperty("model", out var model) || model.ValueKind != JsonValueKind.Object)
                throw new FormatException($"{file}: missing \"model\" object.");

            string modelType = OptionalString(file, model, "type", "model.type") ?? (model.TryGetProperty("merges", out _) ? "BPE" : "(missing)");
            if (modelType != "BPE")
                throw new FormatException($"{file}: model.type is \"{modelType}\"; supported: \"BPE\" (GPT-2 byte-level or Llama/SentencePiece style). Unigram and WordPiece models are not supported.");
            if (model.TryGetProperty("dropout", out var dropout) && dropout.ValueKind == JsonValueKind.Number && dropout.GetDouble() > 0)
                throw new FormatException($"{file}: model.dropout is {dropout.GetDouble()}; only null or 0 (deterministic BPE) is supported.");
            foreach (string affix in new[] { "continuing_subword_prefix", "end_of_word_suffix" })
                if (!string.IsNullOrEmpty(OptionalString(file, model, affix, "model." + affix)))
                    throw new FormatException($"{file}: model.{affix} is set; only BPE without subword prefixes/suffixes (GPT-2, Llama) is supported.");

            var vocab = ReadVocab(file, model);
            var merges = ReadMerges(file, model);
            var added = ReadAddedTokens(file, root);
            bool ignoreMerges = OptionalBool(file, model, "ignore_merges", "model.ignore_merges") ?? false;

            root.TryGetProperty("pre_tokenizer", out var pre);
            root.TryGetProperty("normalizer", out var normalizer);
            string? preType = pre.ValueKind == JsonValueKind.Object ? OptionalString(file, pre, "type", "pre_tokenizer.type") : null;
            if (pre.ValueKind is not (JsonValueKind.Undefined or JsonValueKind.Null or JsonValueKind.Object))
                throw new FormatException($"{file}: pre_tokenizer must be an object or null.");

            if (preType == "ByteLevel")
            {
                if (normalizer.ValueKind is not (JsonValueKind.Undefined or JsonValueKind.Null))
                    throw new FormatException($"{file}: normalizer must be null with a ByteLevel pre_tokenizer (GPT-2 style); found {normalizer.GetRawText()[..Math.Min(80, normalizer.GetRawText().Length)]}.");
                if (ignoreMerges)
                    throw new FormatException($"{file}: model.ignore_merges is true; supported only for SentencePiece-style BPE, not ByteLevel.");
                bool addPrefixSpace = OptionalBool(file, pre, "add_prefix_space", "pre_tokenizer.add_prefix_space") ?? false;
                bool useRegex = OptionalBool(file, pre, "use_regex", "pre_tokenizer.use_regex") ?? true;
                return new ByteLevelBpeTokenizer(file, vocab, merges, added, addPrefixSpace, useRegex);
            }

            MetaspaceOptions? metaspace = preType switch
            {
                null => null,
                "Metaspace" => ReadMetaspace(file, pre),
                _ => throw new FormatException($"{file}: pre_tokenizer.type \"{preType}\" is not supported; supported: ByteLevel (GPT-2), Metaspace (legacy Llama) or null."),
            };
            return new SentencePieceBpeTokenizer(new SentencePieceBpeSpec(
                file, vocab, merges, added,
                ReadNormalizer(file, normalizer, "normalizer"),
                metaspace,
                ReadDecoder(file, root),
                ByteFallback: OptionalBool(file, model, "byte_fallback", "model.byte_fallback") ?? false,
                UnkToken: OptionalString(file, model, "unk_token", "model.unk_token"),
                FuseUnk: OptionalBool(file, model, "fuse_unk", "model.fuse_unk") ?? false,
                IgnoreMerges: ignoreMerges));
        }
    }

    private static Dictionary<string, int> ReadVocab(string file, JsonElement model)
    {
        if (!model.TryGetProperty("vocab", out var vocabElement) || vocabElement.ValueKind != JsonValueKind.Object)
            throw new FormatException($"{file}: model.vocab must be an object mapping tokens to ids.");
        var vocab = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var entry in vocabElement.EnumerateObject())
        {
            if (entry.Value.ValueKind != JsonValueKind.Number || !entry.Value.TryGetInt32(out int id) || id < 0)
                throw new FormatException($"{file}: model.vocab[\"{entry.Name}\"] is {entry.Value.GetRawText()}; expected a non-negative integer id.");
            vocab[entry.Name] = id;
        }
        return vocab;
    }

    /// <summary>model.merges: either "left right" strings (older files) or ["left", "right"] pairs.</summary>
    private static List<(string, string, string)> ReadMerges(string file, JsonElement model)
    {
        if (!model.TryGetProperty("merges", out var mergesElement) || mergesElement.ValueKind != JsonValueKind.Array)
            throw new FormatException($"{file}: model.merges must be an array.");
        var merges = new List<(string, string, string)>(mergesElement.GetArrayLength());
        int index = 0;
        foreach (var merge in mergesElement.EnumerateArray())
        {
            if (merge.ValueKind == JsonValueKind.String)
            {
                string text = merge.GetString()!;
                int space = text.IndexOf(' ');
                if (space <= 0 || space == text.Length - 1 || text.IndexOf(' ', space + 1) >= 0)
                    throw new FormatException($"{file}: model.merges[{index}] is \"{text}\"; expected two tokens separated by one space.");
                merges.Add((text[..space], text[(space + 1)..], $"model.merges[{index}]"));
            }
            else if (merge.ValueKind == JsonValueKind.Array && merge.GetArrayLength() == 2
                     && merge[0].ValueKind == JsonValueKind.String && merge[1].ValueKind == JsonValueKind.String)
                merges.Add((merge[0].GetString()!, merge[1].GetString()!, $"model.merges[{index}]"));
            else
                throw new FormatException($"{file}: model.merges[{index}] is {merge.GetRawText()}; expected \"left right\" or [\"left\", \"right\"].");
            index++;
        }
        return merges;
    }

    private static List<AddedToken> ReadAddedTokens(string file, JsonElement root)
    {
        var added = new List<AddedToken>();
        if (!root.TryGetProperty("added_tokens", out var array) || array.ValueKind == JsonValueKind.Null) return added;
        if (array.ValueKind != JsonValueKind.Array) throw new FormatException($"{file}: added_tokens must be an array.");
        int index = 0;
        foreach (var t in array.EnumerateArray())
        {
            string field = $"added_tokens[{index++}]";
            if (t.ValueKind != JsonValueKind.Object) throw new FormatException($"{file}: {field} must be an object.");
            if (!t.TryGetProperty("id", out var idElement) || !idElement.TryGetInt32(out int id) || id < 0)
                throw new FormatException($"{file}: {field}.id must be a non-negative integer.");
            string content = OptionalString(file, t, "content", field + ".content") ?? throw new FormatException($"{file}: {field}.content is missing.");
            added.Add(new AddedToken(id, content,
                Special: OptionalBool(file, t, "special", field + ".special") ?? false,
                LStrip: OptionalBool(file, t, "lstrip", field + ".lstrip") ?? false,
                RStrip: OptionalBool(file, t, "rstrip", field + ".rstrip") ?? false,
                SingleWord: OptionalBool(file, t, "single_word", field + ".single_word") ?? false));
        }
        return added;
    }

    private static List<NormalizerStep> ReadNormalizer(string file, JsonElement element, string field)
    {
        var steps = new List<NormalizerStep>();
        if (element.ValueKind is JsonValueKind.Undefined or JsonValueKind.Null) return steps;
        if (element.ValueKind != JsonValueKind.Object) throw new FormatException($"{file}: {field} must be an object or null.");
        string type = OptionalString(file, element, "type", field + ".type") ?? "(missing)";
        switch (type)
        {
            case "Sequence":
                if (!element.TryGetProperty("normalizers", out var list) || list.ValueKind != JsonValueKind.Array)
                    throw new FormatException($"{file}: {field}.normalizers must be an array.");
                int i = 0;
                foreach (var inner in list.EnumerateArray()) steps.AddRange(ReadNormalizer(file, inner, $"{field}.normalizers[{i++}]"));
                break;
            case "Prepend":
                steps.Add(new NormalizerStep.Prepend(RequiredString(file, element, "prepend", field + ".prepend")));
                break;
            case "Replace":
                steps.Add(new NormalizerStep.Replace(ReadReplacePattern(file, element, field), RequiredString(file, element, "content", field + ".content")));
                break;
            case "NFC": steps.Add(new NormalizerStep.Unicode(NormalizationForm.FormC)); break;
            case "NFD": steps.Add(new NormalizerStep.Unicode(NormalizationForm.FormD)); break;
            case "NFKC": steps.Add(new NormalizerStep.Unicode(NormalizationForm.FormKC)); break;
            case "NFKD": steps.Add(new NormalizerStep.Unicode(NormalizationForm.FormKD)); break;
            default:
                throw new FormatException($"{file}: {field}.type \"{type}\" is not supported; supported: Sequence, Prepend, Replace (literal String pattern), NFC, NFD, NFKC, NFKD.");
        }
        return steps;
    }

    private static string ReadReplacePattern(string file, JsonElement element, string field)
    {
        if (element.TryGetProperty("pattern", out var pattern) && pattern.ValueKind == JsonValueKind.Object
            && pattern.TryGetProperty("String", out var literal) && literal.ValueKind == JsonValueKind.String && literal.GetString()!.Length > 0)
            return literal.GetString()!;
        throw new FormatException($"{file}: {field}.pattern must be {{\"String\": \"...\"}} (a non-empty literal); Regex patterns are not supported.");
    }

    private static MetaspaceOptions ReadMetaspace(string file, JsonElement pre)
    {
        string replacement = OptionalString(file, pre, "replacement", "pre_tokenizer.replacement") ?? "▁";
        string scheme = ReadPrependScheme(file, pre, "pre_tokenizer");
        bool split = OptionalBool(file, pre, "split", "pre_tokenizer.split") ?? true;
        return new MetaspaceOptions(replacement, scheme, split);
    }

    /// <summary>prepend_scheme ("always", "first", "never"), or the legacy add_prefix_space bool (true = "always").</summary>
    private static string ReadPrependScheme(string file, JsonElement element, string field)
    {
        string? scheme = OptionalString(file, element, "prepend_scheme", field + ".prepend_scheme");
        if (scheme is null) return (OptionalBool(file, element, "add_prefix_space", field + ".add_prefix_space") ?? true) ? "always" : "never";
        if (scheme is not ("always" or "first" or "never"))
            throw new FormatException($"{file}: {field}.prepend_scheme is \"{scheme}\"; expected always, first or never.");
        return scheme;
    }

    private static List<DecoderStep> ReadDecoder(string file, JsonElement root)
    {
        var steps = new List<DecoderStep>();
        if (!root.TryGetProperty("decoder", out var decoder) || decoder.ValueKind == JsonValueKind.Null) return steps;
        ReadDecoderStep(file, decoder, "decoder", steps);
        return steps;
    }

    private static void ReadDecoderStep(string file, JsonElement element, string field, List<DecoderStep> steps)
    {
        if (element.ValueKind != JsonValueKind.Object) throw new FormatException($"{file}: {field} must be an object.");
        string type = OptionalString(file, element, "type", field + ".type") ?? "(missing)";
        switch (type)
        {
            case "Sequence":
                if (!element.TryGetProperty("decoders", out var list) || list.ValueKind != JsonValueKind.Array)
                    throw new FormatException($"{file}: {field}.decoders must be an array.");
                int i = 0;
                foreach (var inner in list.EnumerateArray()) ReadDecoderStep(file, inner, $"{field}.decoders[{i++}]", steps);
                break;
            case "Replace":
                steps.Add(new DecoderStep.Replace(ReadReplacePattern(file, element, field), RequiredString(file, element, "content", field + ".content")));
                break;
            case "ByteFallback": steps.Add(new DecoderStep.ByteFallback()); break;
            case "Fuse": steps.Add(new DecoderStep.Fuse()); break;
            case "Strip":
                string content = RequiredString(file, element, "content", field + ".content");
                if (content.Length != 1 || content[0] > 0x7F)
                    throw new FormatException($"{file}: {field}.content is \"{content}\"; only a single ASCII character is supported.");
                steps.Add(new DecoderStep.Strip((byte)content[0], OptionalInt(file, element, "start", field + ".start"), OptionalInt(file, element, "stop", field + ".stop")));
                break;
            case "Metaspace":
                string replacement = OptionalString(file, element, "replacement", field + ".replacement") ?? "▁";
                steps.Add(new DecoderStep.Metaspace(replacement, DropFromFirst: ReadPrependScheme(file, element, field) != "never"));
                break;
            default:
                throw new FormatException($"{file}: {field}.type \"{type}\" is not supported for SentencePiece-style BPE; supported: Sequence, Replace, ByteFallback, Fuse, Strip, Metaspace.");
        }
    }

    private static string? OptionalString(string file, JsonElement element, string name, string field)
    {
        if (!element.TryGetProperty(name, out var value) || value.ValueKind == JsonValueKind.Null) return null;
        return value.ValueKind == JsonValueKind.String ? value.GetString() : throw new FormatException($"{file}: {field} must be a string, found {value.ValueKind}.");
    }

    private static string RequiredString(string file, JsonElement element, string name, string field) =>
        OptionalString(file, element, name, field) ?? throw new FormatException($"{file}: {field} is missing.");

    private static bool? OptionalBool(string file, JsonElement element, string name, string field)
    {
        if (!element.TryGetProperty(name, out var value) || value.ValueKind == JsonValueKind.Null) return null;
        return value.ValueKind switch
        {
            JsonValueKind.True => true,
            JsonValueKind.False => false,
            _ => throw new FormatException($"{file}: {field} must be true or false, found {value.GetRawText()}."),
        };
    }

    private static int OptionalInt(string file, JsonElement element, string name, string field)
    {
        if (!element.TryGetProperty(name, out var value) || value.ValueKind == JsonValueKind.Null) return 0;
        return value.TryGetInt32(out int n) && n >= 0 ? n : throw new FormatException($"{file}: {field} must be a non-negative integer, found {value.GetRawText()}.");
    }
}
