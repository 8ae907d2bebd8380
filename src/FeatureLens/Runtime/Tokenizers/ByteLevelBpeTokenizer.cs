using System.Collections.Concurrent;
using System.Text;
using System.Text.Json;

namespace FeatureLens.Runtime.Tokenizers;

/// <summary>
/// Byte-level BPE (GPT-2, Llama 3, Qwen 2/2.5/3): added tokens are cut out, the text is normalized
/// (Qwen: NFC) and cut by the pre-tokenizer (GPT-2: its own pattern; Llama 3 and Qwen: a Split
/// pattern, then ByteLevel without a pattern); each piece's UTF-8 bytes are mapped to printable
/// characters (bytes_to_unicode) and BPE merges them by merge rank (with <c>ignore_merges</c>, a
/// piece that is itself in the vocabulary is that one token). Loaded from vocab.json + merges.txt
/// or from a tokenizer.json whose pre-tokenizer includes ByteLevel.
/// </summary>
/// <remarks>
/// Patterns are matched on code points (<see cref="CodePointRegex"/>): a letter or digit outside
/// the Basic Multilingual Plane (𝐀, 𝟙, CJK extension B) is one letter or digit, as in Hugging Face.
/// </remarks>
public sealed class ByteLevelBpeTokenizer : ITokenizer
{
    private const int MaxCacheEntries = 200_000;
    private const int MaxCachedWordLength = 256;

    private readonly string[] tokenOfId;          // id -> byte-level token string ("Ġthe"); added tokens: their content
    private readonly bool[] isAdded;              // id -> an added token (decoded as its UTF-8 content)
    private readonly int[] idOfByte = new int[256]; // byte -> id of its one-character token
    private readonly short[] byteOfChar;          // byte-level character (U+0000..U+0143) -> byte, -1 for other characters
    private readonly BpeMergeTable merges;
    private readonly TokenizerPipeline pipeline;
    private readonly SpecialTokenRules specialTokens;
    private readonly Dictionary<string, int>? wholeWords; // ignore_merges: byte-level piece -> id
    private readonly char[] charOfByte;
    private readonly ConcurrentDictionary<string, int[]> cache = new(StringComparer.Ordinal);

    /// <summary>The file(s) this tokenizer was read from.</summary>
    public string Source { get; }
    public int VocabSize => tokenOfId.Length;
    public int? BosId => specialTokens.BosId;
    public int? EosId => specialTokens.EosId;

    /// <param name="source">The file(s), for messages.</param>
    /// <param name="vocab">model.vocab.</param>
    /// <param name="mergeList">model.merges in rank order.</param>
    /// <param name="added">added_tokens.</param>
    /// <param name="normalizer">The normalizer's steps (none for GPT-2).</param>
    /// <param name="preTokenizer">The pre-tokenizer (GPT-2: ByteLevel with its pattern).</param>
    /// <param name="ignoreMerges">model.ignore_merges.</param>
    /// <param name="rules">BOS/EOS and what encoding with special tokens adds; null: &lt;|endoftext|&gt; as BOS and EOS, BOS added.</param>
    internal ByteLevelBpeTokenizer(string source, IReadOnlyDictionary<string, int> vocab, IReadOnlyList<(string Left, string Right, string Where)> mergeList,
        IReadOnlyList<AddedToken> added, IReadOnlyList<NormalizerStep> normalizer, PreTokenizer preTokenizer, bool ignoreMerges, SpecialTokenRules? rules)
    {
        Source = source;
        int size = 0;
        foreach (var (token, id) in vocab)
        {
            if (id < 0) throw new FormatException($"{source}: vocabulary entry \"{token}\" has negative id {id}.");
            size = Math.Max(size, id + 1);
        }
        foreach (var t in added) size = Math.Max(size, t.Id + 1);
        tokenOfId = new string[size];
        isAdded = new bool[size];
        foreach (var (token, id) in vocab) tokenOfId[id] = token;
        foreach (var t in added) { tokenOfId[t.Id] = t.Content; isAdded[t.Id] = true; }
        for (int id = 0; id < size; id++)
            if (tokenOfId[id] is null) throw new FormatException($"{source}: no token has id {id} (ids must be 0..{size - 1} without gaps).");

        // bytes_to_unicode: printable Latin-1 bytes map to themselves, the other 68 to U+0100.. in byte order.
        charOfByte = BytesToUnicode();
        byteOfChar = new short[charOfByte.Max() + 1];
        Array.Fill(byteOfChar, (short)-1);
        for (int b = 0; b < 256; b++)
        {
            byteOfChar[charOfByte[b]] = (short)b;
            if (!vocab.TryGetValue(charOfByte[b].ToString(), out idOfByte[b]))
                throw new FormatException($"{source}: the vocabulary lacks the byte-level token \"{charOfByte[b]}\" for byte 0x{b:X2}; a byte-level BPE vocabulary has all 256.");
        }

        for (int id = 0; id < size; id++)
            if (!isAdded[id] && tokenOfId[id].Any(c => c >= byteOfChar.Length || byteOfChar[c] < 0))
                throw new FormatException($"{source}: token {id} (\"{tokenOfId[id]}\") has a character outside GPT-2's byte-level alphabet (bytes_to_unicode).");

        merges = new BpeMergeTable();
        for (int rank = 0; rank < mergeList.Count; rank++)
        {
            var (left, right, where) = mergeList[rank];
            if (!vocab.TryGetValue(left, out int l) || !vocab.TryGetValue(right, out int r) || !vocab.TryGetValue(left + right, out int merged))
                throw new FormatException($"{source}: {where} (\"{left} {right}\") uses a token that is not in the vocabulary: \"{(vocab.ContainsKey(left) ? (vocab.ContainsKey(right) ? left + right : right) : left)}\".");
            merges.Set(l, r, rank, merged);
        }

        pipeline = new TokenizerPipeline(added, normalizer, preTokenizer);
        if (ignoreMerges) wholeWords = new Dictionary<string, int>(vocab, StringComparer.Ordinal);
        if (rules is null)
        {
            var eot = added.FirstOrDefault(t => t.Content == "<|endoftext|>");
            int? eotId = eot?.Id ?? (vocab.TryGetValue("<|endoftext|>", out int v) ? v : null);
            rules = new SpecialTokenRules(eotId, eotId, AddBos: true, AddEos: false);
        }
        specialTokens = rules;
    }

    /// <summary>
    /// Loads GPT-2's vocab.json (token → id) and merges.txt (a "#version" line, then one "left right"
    /// merge per line, highest priority first). A "&lt;|endoftext|&gt;" entry of the vocabulary is matched
    /// in text as one token, as Hugging Face's GPT2Tokenizer does.
    /// </summary>
    public static ByteLevelBpeTokenizer FromVocabAndMerges(string vocabJsonPath, string mergesPath)
    {
        Dictionary<string, int> vocab;
        try
        {
            vocab = JsonSerializer.Deserialize<Dictionary<string, int>>(File.ReadAllBytes(vocabJsonPath))
                ?? throw new FormatException($"{vocabJsonPath}: expected a JSON object mapping tokens to ids, found null.");
        }
        catch (JsonException e)
        {
            throw new FormatException($"{vocabJsonPath}: not a JSON object mapping tokens to integer ids: {e.Message}", e);
        }

        var mergeList = new List<(string, string, string)>();
        int lineNumber = 0;
        foreach (string line in File.ReadLines(mergesPath))
        {
            lineNumber++;
            if ((lineNumber == 1 && line.StartsWith("#version", StringComparison.Ordinal)) || line.Length == 0) continue;
            string[] parts = line.Split(' ');
            if (parts.Length != 2 || parts[0].Length == 0 || parts[1].Length == 0)
                throw new FormatException($"{mergesPath}: line {lineNumber} is \"{line}\"; expected two tokens separated by one space.");
            mergeList.Add((parts[0], parts[1], $"{Path.GetFileName(mergesPath)} line {lineNumber}"));
        }

        var added = new List<AddedToken>();
        if (vocab.TryGetValue("<|endoftext|>", out int eot)) added.Add(new AddedToken(eot, "<|endoftext|>", Special: true));
        return new ByteLevelBpeTokenizer($"{vocabJsonPath} + {mergesPath}", vocab, mergeList, added, [],
            new PreTokenizer([new PreTokenizerStep.ByteLevel(AddPrefixSpace: false, UseRegex: true)]), ignoreMerges: false, rules: null);
    }

    /// <summary>GPT-2's bytes_to_unicode table: byte → the character that stands for it in vocab.json.</summary>
    internal static char[] BytesToUnicode()
    {
        var map = new char[256];
        int next = 256;
        for (int b = 0; b < 256; b++)
        {
            bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
            map[b] = printable ? (char)b : (char)next++;
        }
        return map;
    }

    public int[] Encode(string text, bool addBos)
    {
        ArgumentNullException.ThrowIfNull(text);
        var ids = new List<int>(text.Length / 3 + 2);
        pipeline.Encode(text, ids, EncodeWord);
        return specialTokens.Wrap(ids, addBos);
    }

    /// <summary>BPE of one pre-token: its UTF-8 bytes as byte-level tokens, merged by rank; cached per pre-token.</summary>
    private int[] EncodeWord(string word)
    {
        if (cache.TryGetValue(word, out var cached)) return cached;
        byte[] bytes = Encoding.UTF8.GetBytes(word);
        int[] result;
        if (wholeWords is not null && wholeWords.TryGetValue(ByteLevelString(bytes), out int whole))
            result = [whole];
        else
        {
            var symbols = new int[bytes.Length];
            for (int i = 0; i < bytes.Length; i++) symbols[i] = idOfByte[bytes[i]];
            result = merges.Merge(symbols);
        }
        if (word.Length <= MaxCachedWordLength)
        {
            if (cache.Count >= MaxCacheEntries) cache.Clear();
            cache[word] = result;
        }
        return result;
    }

    private string ByteLevelString(byte[] bytes) => string.Create(bytes.Length, (bytes, charOfByte), static (span, state) =>
    {
        for (int i = 0; i < span.Length; i++) span[i] = state.charOfByte[state.bytes[i]];
    });

    /// <summary>Each token's bytes: byte-level characters mapped back to bytes; added tokens as their UTF-8 content.</summary>
    public byte[] DecodeBytes(ReadOnlySpan<int> ids)
    {
        var output = new List<byte>(ids.Length * 4);
        foreach (int id in ids) AppendBytes(CheckId(id), output);
        return output.ToArray();
    }

    private void AppendBytes(int id, List<byte> output)
    {
        if (isAdded[id]) { output.AddRange(Encoding.UTF8.GetBytes(tokenOfId[id])); return; }
        foreach (char c in tokenOfId[id]) output.Add((byte)byteOfChar[c]); // checked at load
    }

    public string Decode(ReadOnlySpan<int> ids) => TokenBytes.DecodeUtf8(DecodeBytes(ids));

    /// <summary>The token's bytes for display: "Ġthe" shows as " the"; bytes that are not valid UTF-8 on their own as &lt;0xNN&gt;.</summary>
    public string TokenText(int id)
    {
        if (isAdded[CheckId(id)]) return tokenOfId[id];
        var bytes = new List<byte>();
        AppendBytes(id, bytes);
        return TokenBytes.Display(bytes.ToArray());
    }

    private int CheckId(int id) =>
        (uint)id < (uint)tokenOfId.Length ? id : throw new ArgumentOutOfRangeException(nameof(id), id, $"token id outside the vocabulary of {tokenOfId.Length} ({Source}).");
}
