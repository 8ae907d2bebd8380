using System.Collections.Concurrent;
using System.Text;

namespace FeatureLens.Runtime.Tokenizers;

/// <summary>A text normalization step of tokenizer.json (<c>normalizer</c>).</summary>
internal abstract record NormalizerStep
{
    public abstract string Apply(string text);

    /// <summary>Prepend: puts a prefix before non-empty text (Llama: "▁").</summary>
    public sealed record Prepend(string Prefix) : NormalizerStep
    {
        public override string Apply(string text) => text.Length > 0 ? Prefix + text : text;
    }

    /// <summary>Replace: every occurrence of a literal string (Llama: " " → "▁").</summary>
    public sealed record Replace(string Pattern, string Content) : NormalizerStep
    {
        public override string Apply(string text) => text.Replace(Pattern, Content, StringComparison.Ordinal);
    }

    /// <summary>NFC, NFD, NFKC or NFKD Unicode normalization.</summary>
    public sealed record Unicode(NormalizationForm Form) : NormalizerStep
    {
        public override string Apply(string text) => text.Normalize(Form);
    }
}

/// <summary>A decoding step of tokenizer.json (<c>decoder</c>), applied to the tokens' bytes in order.</summary>
internal abstract record DecoderStep
{
    public abstract List<byte[]> Apply(List<byte[]> tokens);

    /// <summary>Replace: a literal string in every token (Llama: "▁" → " ").</summary>
    public sealed record Replace(string Pattern, string Content) : DecoderStep
    {
        public override List<byte[]> Apply(List<byte[]> tokens)
        {
            byte[] from = Encoding.UTF8.GetBytes(Pattern), to = Encoding.UTF8.GetBytes(Content);
            return tokens.Select(t => ReplaceBytes(t, from, to)).ToList();
        }
    }

    /// <summary>ByteFallback: a token "&lt;0xNN&gt;" becomes the byte NN.</summary>
    public sealed record ByteFallback : DecoderStep
    {
        public override List<byte[]> Apply(List<byte[]> tokens) =>
            tokens.Select(t => t.Length == 6 && TokenBytes.TryParseBytePiece(Encoding.ASCII.GetString(t), out byte b) ? [b] : t).ToList();
    }

    /// <summary>Fuse: all tokens into one.</summary>
    public sealed record Fuse : DecoderStep
    {
        public override List<byte[]> Apply(List<byte[]> tokens) => [tokens.SelectMany(t => t).ToArray()];
    }

    /// <summary>Strip: removes up to Start leading and Stop trailing copies of an ASCII character from each token.</summary>
    public sealed record Strip(byte Content, int Start, int Stop) : DecoderStep
    {
        public override List<byte[]> Apply(List<byte[]> tokens) => tokens.Select(t =>
        {
            int a = 0, b = t.Length;
            while (a < b && a < Start && t[a] == Content) a++;
            while (b > a && t.Length - b < Stop && t[b - 1] == Content) b--;
            return t[a..b];
        }).ToList();
    }

    /// <summary>Metaspace decoder: the replacement character becomes a space, and disappears from the first token when a prefix was prepended.</summary>
    public sealed record Metaspace(string Replacement, bool DropFromFirst) : DecoderStep
    {
        public override List<byte[]> Apply(List<byte[]> tokens)
        {
            byte[] from = Encoding.UTF8.GetBytes(Replacement);
            return tokens.Select((t, i) => ReplaceBytes(t, from, i == 0 && DropFromFirst ? [] : [(byte)' '])).ToList();
        }
    }

    private static byte[] ReplaceBytes(byte[] source, byte[] from, byte[] to)
    {
        if (from.Length == 0 || source.AsSpan().IndexOf(from) < 0) return source;
        var output = new List<byte>(source.Length);
        ReadOnlySpan<byte> rest = source;
        for (int i; (i = rest.IndexOf(from)) >= 0; rest = rest[(i + from.Length)..])
        {
            output.AddRange(rest[..i]);
            output.AddRange(to);
        }
        output.AddRange(rest);
        return output.ToArray();
    }
}

/// <summary>Everything a SentencePiece-style BPE tokenizer.json describes, as read by <see cref="TokenizerLoader"/>.</summary>
internal sealed record SentencePieceBpeSpec(
    string Source,
    IReadOnlyDictionary<string, int> Vocab,
    IReadOnlyList<(string Left, string Right, string Where)> Merges,
    IReadOnlyList<AddedToken> AddedTokens,
    IReadOnlyList<NormalizerStep> Normalizer,
    PreTokenizer PreTokenizer,
    IReadOnlyList<DecoderStep> Decoder,
    bool ByteFallback,
    string? UnkToken,
    bool FuseUnk,
    bool IgnoreMerges,
    SpecialTokenRules? Rules);

/// <summary>
/// A SentencePiece-style BPE tokenizer from a Hugging Face tokenizer.json (Llama 2, Mistral, Gemma
/// 2/3): added tokens such as &lt;s&gt; are cut out of the text first; each remaining segment is
/// normalized on its own (Llama/Mistral: prepend "▁", spaces → "▁"; Gemma: spaces → "▁" only) and
/// pre-tokenized (Gemma: a Split on " ", which finds nothing left; legacy files: Metaspace);
/// characters map to pieces, or to &lt;0xNN&gt; byte tokens when the vocabulary lacks them
/// (byte_fallback); then BPE merges by rank, lowest rank first.
/// </summary>
/// <remarks>
/// Decoding follows the file's decoder (Llama: "▁" → " ", byte tokens → bytes, fuse, strip one
/// leading space) and skips special tokens, as Hugging Face's <c>decode(ids, skip_special_tokens=True)</c>.
/// Added tokens with normalized = false are matched in the raw text, the others in the normalized text.
/// </remarks>
public sealed class SentencePieceBpeTokenizer : ITokenizer
{
    private const int MaxCachedWordLength = 256;
    private const int MaxCacheEntries = 200_000;

    private readonly SentencePieceBpeSpec spec;
    private readonly string[] pieceOfId;
    private readonly bool[] isSpecial;
    private readonly int[] idOfByte = new int[256]; // -1 where the vocabulary lacks <0xNN>
    private readonly int? unkId;
    private readonly BpeMergeTable merges = new();
    private readonly TokenizerPipeline pipeline;
    private readonly SpecialTokenRules specialTokens;
    private readonly ConcurrentDictionary<string, int[]> cache = new(StringComparer.Ordinal);

    /// <summary>The tokenizer.json this tokenizer was read from.</summary>
    public string Source => spec.Source;
    public int VocabSize => pieceOfId.Length;
    public int? BosId => specialTokens.BosId;
    public int? EosId => specialTokens.EosId;

    internal SentencePieceBpeTokenizer(SentencePieceBpeSpec spec)
    {
        this.spec = spec;
        int size = 0;
        foreach (var (piece, id) in spec.Vocab)
        {
            if (id < 0) throw new FormatException($"{spec.Source}: model.vocab entry \"{piece}\" has negative id {id}.");
            size = Math.Max(size, id + 1);
        }
        foreach (var t in spec.AddedTokens) size = Math.Max(size, t.Id + 1);
        pieceOfId = new string[size];
        isSpecial = new bool[size];
        foreach (var (piece, id) in spec.Vocab) pieceOfId[id] = piece;
        foreach (var t in spec.AddedTokens) { pieceOfId[t.Id] = t.Content; isSpecial[t.Id] = t.Special; }
        for (int id = 0; id < size; id++)
            if (pieceOfId[id] is null) throw new FormatException($"{spec.Source}: no token has id {id} (model.vocab and added_tokens must cover 0..{size - 1}).");

        // Byte fallback uses <0xNN> where the vocabulary has it (Gemma 2 lacks <0x09>: "\t" is a piece of its own).
        for (int b = 0; b < 256; b++) idOfByte[b] = spec.Vocab.TryGetValue($"<0x{b:X2}>", out int id) ? id : -1;
        if (spec.ByteFallback && idOfByte.All(id => id < 0))
            throw new FormatException($"{spec.Source}: model.byte_fallback is true but model.vocab has no byte tokens <0x00>..<0xFF>.");
        if (spec.UnkToken is not null)
        {
            if (!spec.Vocab.TryGetValue(spec.UnkToken, out int unk))
                throw new FormatException($"{spec.Source}: model.unk_token \"{spec.UnkToken}\" is not in model.vocab.");
            unkId = unk;
        }

        for (int rank = 0; rank < spec.Merges.Count; rank++)
        {
            var (left, right, where) = spec.Merges[rank];
            if (!spec.Vocab.TryGetValue(left, out int l) || !spec.Vocab.TryGetValue(right, out int r) || !spec.Vocab.TryGetValue(left + right, out int merged))
                throw new FormatException($"{spec.Source}: {where} (\"{left}\", \"{right}\") uses a token that is not in model.vocab: \"{(spec.Vocab.ContainsKey(left) ? (spec.Vocab.ContainsKey(right) ? left + right : right) : left)}\".");
            merges.Set(l, r, rank, merged);
        }

        pipeline = new TokenizerPipeline(spec.AddedTokens, spec.Normalizer, spec.PreTokenizer);
        specialTokens = spec.Rules ?? new SpecialTokenRules(IdOf("<s>"), IdOf("</s>"), AddBos: true, AddEos: false);
    }

    private int? IdOf(string content)
    {
        var added = spec.AddedTokens.FirstOrDefault(t => t.Content == content);
        if (added is not null) return added.Id;
        return spec.Vocab.TryGetValue(content, out int id) ? id : null;
    }

    public int[] Encode(string text, bool addBos)
    {
        ArgumentNullException.ThrowIfNull(text);
        var ids = new List<int>(text.Length / 2 + 2);
        pipeline.Encode(text, ids, EncodeWord);
        return specialTokens.Wrap(ids, addBos);
    }

    /// <summary>BPE of one word: code points → pieces (or byte tokens, or unk), merged by rank; cached for short words.</summary>
    private int[] EncodeWord(string word)
    {
        if (cache.TryGetValue(word, out var cached)) return cached;
        int[] result;
        if (spec.IgnoreMerges && spec.Vocab.TryGetValue(word, out int whole))
            result = [whole];
        else
        {
            var symbols = new List<int>(word.Length);
            Span<byte> utf8 = stackalloc byte[4];
            bool previousWasUnk = false;
            foreach (var rune in word.EnumerateRunes())
            {
                if (spec.Vocab.TryGetValue(rune.ToString(), out int id)) { symbols.Add(id); previousWasUnk = false; continue; }
                int n = rune.EncodeToUtf8(utf8);
                if (spec.ByteFallback && AllBytesKnown(utf8[..n]))
                {
                    for (int i = 0; i < n; i++) symbols.Add(idOfByte[utf8[i]]);
                    previousWasUnk = false;
                }
                else if (unkId is int unk)
                {
                    if (!(spec.FuseUnk && previousWasUnk)) symbols.Add(unk);
                    previousWasUnk = true;
                }
                // No byte fallback and no unk token: Hugging Face drops the character; so do we.
            }
            result = merges.Merge(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(symbols));
        }
        if (word.Length <= MaxCachedWordLength)
        {
            if (cache.Count >= MaxCacheEntries) cache.Clear();
            cache[word] = result;
        }
        return result;
    }

    private bool AllBytesKnown(ReadOnlySpan<byte> bytes)
    {
        foreach (byte b in bytes)
            if (idOfByte[b] < 0) return false;
        return true;
    }

    public byte[] DecodeBytes(ReadOnlySpan<int> ids)
    {
        var tokens = new List<byte[]>(ids.Length);
        foreach (int id in ids)
            if (!isSpecial[CheckId(id)]) tokens.Add(Encoding.UTF8.GetBytes(pieceOfId[id]));
        foreach (var step in spec.Decoder) tokens = step.Apply(tokens);
        return tokens.SelectMany(t => t).ToArray();
    }

    public string Decode(ReadOnlySpan<int> ids) => TokenBytes.DecodeUtf8(DecodeBytes(ids));

    /// <summary>The piece for display: "▁the" shows as " the"; byte tokens and added tokens as written ("&lt;0x0A&gt;", "&lt;s&gt;").</summary>
    public string TokenText(int id)
    {
        string piece = pieceOfId[CheckId(id)];
        if (isSpecial[id]) return piece;
        if (TokenBytes.TryParseBytePiece(piece, out _)) return piece;
        return TokenBytes.Display(Encoding.UTF8.GetBytes(piece.Replace("▁", " ", StringComparison.Ordinal)));
    }

    private int CheckId(int id) =>
        (uint)id < (uint)pieceOfId.Length ? id : throw new ArgumentOutOfRangeException(nameof(id), id, $"token id outside the vocabulary of {pieceOfId.Length} ({Source}).");
}
