using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;

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
    /// Reads a Hugging Face tokenizer.json (and tokenizer_config.json beside it, when present, for
    /// BOS/EOS). Supported: model BPE with a ByteLevel step in its pre-tokenizer (GPT-2; Llama 3 and
    /// Qwen with a Split pattern first) → <see cref="ByteLevelBpeTokenizer"/>; model BPE with
    /// Prepend/Replace normalizers, a Split or Metaspace pre-tokenizer, usually with byte_fallback
    /// (Llama 2, Mistral, Gemma) → <see cref="SentencePieceBpeTokenizer"/>.
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
            var preSteps = new List<PreTokenizerStep>();
            ReadPreTokenizer(file, pre, "pre_tokenizer", preSteps);
            var normalizerSteps = ReadNormalizer(file, normalizer, "normalizer");
            var rules = ReadSpecialTokenRules(file, root, vocab, added);

            if (preSteps.Any(step => step is PreTokenizerStep.ByteLevel))
            {
                if (preSteps.Any(step => step is PreTokenizerStep.Metaspace))
                    throw new FormatException($"{file}: pre_tokenizer combines ByteLevel and Metaspace; supported is one or the other.");
                return new ByteLevelBpeTokenizer(file, vocab, merges, added, normalizerSteps, new PreTokenizer(preSteps), ignoreMerges, rules);
            }
            return new SentencePieceBpeTokenizer(new SentencePieceBpeSpec(
                file, vocab, merges, added,
                normalizerSteps,
                new PreTokenizer(preSteps),
                ReadDecoder(file, root),
                ByteFallback: OptionalBool(file, model, "byte_fallback", "model.byte_fallback") ?? false,
                UnkToken: OptionalString(file, model, "unk_token", "model.unk_token"),
                FuseUnk: OptionalBool(file, model, "fuse_unk", "model.fuse_unk") ?? false,
                IgnoreMerges: ignoreMerges,
                Rules: rules));
        }
    }

    /// <summary>pre_tokenizer: null, Sequence, Split, ByteLevel or Metaspace, flattened into steps.</summary>
    private static void ReadPreTokenizer(string file, JsonElement element, string field, List<PreTokenizerStep> steps)
    {
        if (element.ValueKind is JsonValueKind.Undefined or JsonValueKind.Null) return;
        if (element.ValueKind != JsonValueKind.Object) throw new FormatException($"{file}: {field} must be an object or null.");
        string type = OptionalString(file, element, "type", field + ".type") ?? "(missing)";
        switch (type)
        {
            case "Sequence":
                if (!element.TryGetProperty("pretokenizers", out var list) || list.ValueKind != JsonValueKind.Array)
                    throw new FormatException($"{file}: {field}.pretokenizers must be an array.");
                int i = 0;
                foreach (var inner in list.EnumerateArray()) ReadPreTokenizer(file, inner, $"{field}.pretokenizers[{i++}]", steps);
                break;
            case "Split":
                steps.Add(ReadSplit(file, element, field));
                break;
            case "ByteLevel":
                steps.Add(new PreTokenizerStep.ByteLevel(
                    AddPrefixSpace: OptionalBool(file, element, "add_prefix_space", field + ".add_prefix_space") ?? false,
                    UseRegex: OptionalBool(file, element, "use_regex", field + ".use_regex") ?? true));
                break;
            case "Metaspace":
                steps.Add(new PreTokenizerStep.Metaspace(
                    OptionalString(file, element, "replacement", field + ".replacement") ?? "▁",
                    ReadPrependScheme(file, element, field),
                    OptionalBool(file, element, "split", field + ".split") ?? true));
                break;
            default:
                throw new FormatException($"{file}: {field}.type \"{type}\" is not supported; supported: Sequence, Split, ByteLevel, Metaspace (or null).");
        }
    }

    /// <summary>Split: pattern {"String": literal} or {"Regex": Oniguruma pattern}, behavior, invert.</summary>
    private static PreTokenizerStep.Split ReadSplit(string file, JsonElement element, string field)
    {
        if (!element.TryGetProperty("pattern", out var pattern) || pattern.ValueKind != JsonValueKind.Object)
            throw new FormatException($"{file}: {field}.pattern must be {{\"String\": ...}} or {{\"Regex\": ...}}.");
        Regex regex;
        if (pattern.TryGetProperty("Regex", out var r) && r.ValueKind == JsonValueKind.String)
            regex = CodePointRegex.Get(r.GetString()!, $"{file}: {field}.pattern.Regex");
        else if (pattern.TryGetProperty("String", out var literal) && literal.ValueKind == JsonValueKind.String && literal.GetString()!.Length > 0)
            regex = CodePointRegex.Get(Regex.Escape(literal.GetString()!), $"{file}: {field}.pattern.String");
        else
            throw new FormatException($"{file}: {field}.pattern must be {{\"String\": \"non-empty literal\"}} or {{\"Regex\": \"pattern\"}}; found {pattern.GetRawText()}.");
        string behavior = RequiredString(file, element, "behavior", field + ".behavior");
        if (!Enum.TryParse<SplitBehavior>(behavior, ignoreCase: false, out var b) || !Enum.IsDefined(b) || behavior.Any(char.IsDigit))
            throw new FormatException($"{file}: {field}.behavior is \"{behavior}\"; supported: Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous.");
        return new PreTokenizerStep.Split(regex, b, OptionalBool(file, element, "invert", field + ".invert") ?? false);
    }

    /// <summary>
    /// BOS, EOS and what encoding with special tokens adds. tokenizer_config.json beside the file
    /// (bos_token, eos_token, add_bos_token, add_eos_token) wins; else the TemplateProcessing
    /// post_processor's special tokens before/after the text; where neither says whether BOS is added,
    /// it is (TransformerLens's prepend_bos). Null when there is neither file nor template: the model
    /// class's defaults (&lt;s&gt;/&lt;/s&gt; or &lt;|endoftext|&gt;, BOS added).
    /// </summary>
    private static SpecialTokenRules? ReadSpecialTokenRules(string file, JsonElement root, Dictionary<string, int> vocab, List<AddedToken> added)
    {
        int IdOf(string content, string where)
        {
            var t = added.LastOrDefault(a => a.Content == content);
            if (t is not null) return t.Id;
            return vocab.TryGetValue(content, out int id) ? id : throw new FormatException($"{where} is \"{content}\", which is neither an added token nor in model.vocab of {file}.");
        }

        // post_processor: TemplateProcessing, alone or inside a Sequence.
        int[]? prefix = null, suffix = null;
        if (root.TryGetProperty("post_processor", out var post) && post.ValueKind == JsonValueKind.Object)
        {
            var templates = new List<(JsonElement Element, string Field)>();
            if (OptionalString(file, post, "type", "post_processor.type") == "Sequence" && post.TryGetProperty("processors", out var processors) && processors.ValueKind == JsonValueKind.Array)
            {
                int i = 0;
                foreach (var p in processors.EnumerateArray())
                {
                    if (p.ValueKind == JsonValueKind.Object && OptionalString(file, p, "type", $"post_processor.processors[{i}].type") == "TemplateProcessing")
                        templates.Add((p, $"post_processor.processors[{i}]"));
                    i++;
                }
            }
            else if (OptionalString(file, post, "type", "post_processor.type") == "TemplateProcessing") templates.Add((post, "post_processor"));
            foreach (var (template, field) in templates)
                (prefix, suffix) = ReadTemplate(file, template, field, IdOf);
        }

        string configFile = Path.Combine(Path.GetDirectoryName(Path.GetFullPath(file))!, "tokenizer_config.json");
        if (!File.Exists(configFile))
        {
            if (prefix is null) return null;
            int? Guess(params string[] contents)
            {
                foreach (string content in contents)
                {
                    var t = added.LastOrDefault(a => a.Content == content);
                    if (t is not null) return t.Id;
                    if (vocab.TryGetValue(content, out int id)) return id;
                }
                return null;
            }
            return new SpecialTokenRules(
                prefix.Length > 0 ? prefix[0] : Guess("<s>", "<bos>", "<|begin_of_text|>", "<|endoftext|>"),
                suffix!.Length > 0 ? suffix[0] : Guess("</s>", "<eos>", "<|end_of_text|>", "<|endoftext|>"),
                prefix.Length > 0, suffix.Length > 0);
        }
        JsonDocument config;
        try
        {
            config = JsonDocument.Parse(File.ReadAllBytes(configFile), new JsonDocumentOptions { MaxDepth = 256 });
        }
        catch (JsonException e)
        {
            throw new FormatException($"{configFile}: not valid JSON: {e.Message}", e);
        }
        using (config)
        {
            var c = config.RootElement;
            if (c.ValueKind != JsonValueKind.Object) throw new FormatException($"{configFile}: expected a JSON object at the top level, found {c.ValueKind}.");
            int? Token(string name, int[]? fromTemplate)
            {
                if (!c.TryGetProperty(name, out var value)) return fromTemplate is { Length: > 0 } ? fromTemplate[0] : null;
                string? content = value.ValueKind switch
                {
                    JsonValueKind.Null => null,
                    JsonValueKind.String => value.GetString(),
                    JsonValueKind.Object when value.TryGetProperty("content", out var inner) && inner.ValueKind == JsonValueKind.String => inner.GetString(),
                    _ => throw new FormatException($"{configFile}: {name} must be a string, an object with \"content\", or null; found {value.GetRawText()}."),
                };
                return content is null ? null : IdOf(content, $"{configFile}: {name}");
            }
            int? bos = Token("bos_token", prefix), eos = Token("eos_token", suffix);
            bool addBos = OptionalBool(configFile, c, "add_bos_token", "add_bos_token") ?? (prefix is null || prefix.Length > 0);
            bool addEos = OptionalBool(configFile, c, "add_eos_token", "add_eos_token") ?? (suffix is { Length: > 0 });
            return new SpecialTokenRules(bos, eos, addBos, addEos);
        }
    }

    /// <summary>TemplateProcessing's "single" template: the special tokens' ids before and after the sequence $A.</summary>
    private static (int[] Prefix, int[] Suffix) ReadTemplate(string file, JsonElement template, string field, Func<string, string, int> idOf)
    {
        if (!template.TryGetProperty("single", out var single) || single.ValueKind != JsonValueKind.Array)
            throw new FormatException($"{file}: {field}.single must be an array.");
        var prefix = new List<int>();
        var suffix = new List<int>();
        bool seenSequence = false;
        int i = 0;
        foreach (var piece in single.EnumerateArray())
        {
            string where = $"{field}.single[{i++}]";
            if (piece.ValueKind == JsonValueKind.Object && piece.TryGetProperty("Sequence", out _)) { seenSequence = true; continue; }
            if (piece.ValueKind != JsonValueKind.Object || !piece.TryGetProperty("SpecialToken", out var special) || special.ValueKind != JsonValueKind.Object)
                throw new FormatException($"{file}: {where} must be {{\"SpecialToken\": {{...}}}} or {{\"Sequence\": {{...}}}}.");
            string name = RequiredString(file, special, "id", where + ".SpecialToken.id");
            int[] ids;
            if (template.TryGetProperty("special_tokens", out var map) && map.ValueKind == JsonValueKind.Object && map.TryGetProperty(name, out var entry))
            {
                if (!entry.TryGetProperty("ids", out var idArray) || idArray.ValueKind != JsonValueKind.Array || idArray.EnumerateArray().Any(x => !x.TryGetInt32(out int v) || v < 0))
                    throw new FormatException($"{file}: {field}.special_tokens[\"{name}\"].ids must be an array of token ids.");
                ids = idArray.EnumerateArray().Select(x => x.GetInt32()).ToArray();
            }
            else ids = [idOf(name, $"{file}: {where}.SpecialToken.id")];
            (seenSequence ? suffix : prefix).AddRange(ids);
        }
        if (!seenSequence) throw new FormatException($"{file}: {field}.single has no {{\"Sequence\": ...}} for the text.");
        return (prefix.ToArray(), suffix.ToArray());
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
            bool special = OptionalBool(file, t, "special", field + ".special") ?? false;
            added.Add(new AddedToken(id, content,
                Special: special,
                LStrip: OptionalBool(file, t, "lstrip", field + ".lstrip") ?? false,
                RStrip: OptionalBool(file, t, "rstrip", field + ".rstrip") ?? false,
                SingleWord: OptionalBool(file, t, "single_word", field + ".single_word") ?? false,
                Normalized: OptionalBool(file, t, "normalized", field + ".normalized") ?? !special));
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
