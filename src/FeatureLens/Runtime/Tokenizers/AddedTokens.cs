using System.Text;

namespace FeatureLens.Runtime.Tokenizers;

/// <summary>
/// A token matched as a whole string in the input before BPE (tokenizer.json <c>added_tokens</c>).
/// <paramref name="Normalized"/>: matched in the normalized text rather than the raw input.
/// </summary>
internal sealed record AddedToken(int Id, string Content, bool Special, bool LStrip = false, bool RStrip = false, bool SingleWord = false, bool Normalized = false);

/// <summary>
/// Finds added tokens in text as Hugging Face's added vocabulary does: leftmost match first, the
/// longest token at that position; a <c>single_word</c> token only where no word character touches
/// it; <c>lstrip</c>/<c>rstrip</c> take the whitespace before/after the match with the token. Text
/// between matches is returned as plain segments. A trie over the tokens' characters, entered only at
/// characters that start some token, keeps this fast with thousands of added tokens (Gemma 3).
/// </summary>
internal sealed class AddedTokenMatcher
{
    private sealed class Node
    {
        public Dictionary<char, Node>? Next;
        public AddedToken? Token;
    }

    private readonly Node root = new();
    private readonly System.Buffers.SearchValues<char>? firstChars;

    public AddedTokenMatcher(IEnumerable<AddedToken> tokens)
    {
        var first = new HashSet<char>();
        foreach (var t in tokens)
        {
            if (t.Content.Length == 0) continue;
            var node = root;
            foreach (char c in t.Content)
            {
                node.Next ??= [];
                if (!node.Next.TryGetValue(c, out var child)) node.Next[c] = child = new Node();
                node = child;
            }
            node.Token = t; // a later token with the same content replaces an earlier one
            first.Add(t.Content[0]);
        }
        if (first.Count > 0) firstChars = System.Buffers.SearchValues.Create([.. first]);
    }

    /// <summary>
    /// Cuts <paramref name="text"/> into parts: (start, length, -1) for plain text to be tokenized,
    /// (start, length, id) for a matched added token (length covers whitespace taken by lstrip/rstrip).
    /// </summary>
    public List<(int Start, int Length, int TokenId)> Split(string text)
    {
        var parts = new List<(int, int, int)>();
        int plainStart = 0, searchFrom = 0;
        while (firstChars is not null && searchFrom < text.Length)
        {
            int offset = text.AsSpan(searchFrom).IndexOfAny(firstChars);
            if (offset < 0) break;
            int at = searchFrom + offset;
            var (token, length) = LongestAt(text, at);
            if (token is null) { searchFrom = at + 1; continue; }
            int start = at, end = at + length;
            searchFrom = end; // the next match starts after this one, even when this one is skipped
            if (token.SingleWord && (EndsWithWordChar(text, start) || StartsWithWordChar(text, end))) continue;
            if (token.LStrip) while (start > plainStart && char.IsWhiteSpace(text[start - 1])) start--;
            if (token.RStrip) while (end < text.Length && char.IsWhiteSpace(text[end])) end++;
            if (start > plainStart) parts.Add((plainStart, start - plainStart, -1));
            parts.Add((start, end - start, token.Id));
            plainStart = searchFrom = end;
        }
        if (plainStart < text.Length) parts.Add((plainStart, text.Length - plainStart, -1));
        return parts;
    }

    private (AddedToken? Token, int Length) LongestAt(string text, int at)
    {
        var node = root;
        AddedToken? best = null;
        int bestLength = 0;
        for (int i = at; i < text.Length && node.Next is not null && node.Next.TryGetValue(text[i], out var child); i++)
        {
            node = child;
            if (node.Token is not null) (best, bestLength) = (node.Token, i + 1 - at);
        }
        return (best, bestLength);
    }

    /// <summary>Whether the code point before <paramref name="index"/> is alphanumeric or '_' (Rust's is_alphanumeric).</summary>
    private static bool EndsWithWordChar(string text, int index) =>
        index > 0 && Rune.TryGetRuneAt(text, char.IsLowSurrogate(text[index - 1]) && index > 1 ? index - 2 : index - 1, out var r) && IsWordRune(r);

    private static bool StartsWithWordChar(string text, int index) =>
        index < text.Length && Rune.TryGetRuneAt(text, index, out var r) && IsWordRune(r);

    private static bool IsWordRune(Rune r) => Rune.IsLetter(r) || Rune.IsNumber(r) || r.Value == '_';
}

/// <summary>UTF-8 helpers shared by the tokenizers.</summary>
internal static class TokenBytes
{
    /// <summary>UTF-8 decoding with U+FFFD for each maximal invalid subsequence (the same substitutions as Python's errors="replace").</summary>
    public static string DecodeUtf8(ReadOnlySpan<byte> bytes) => Encoding.UTF8.GetString(bytes);

    /// <summary>
    /// A display form of a token's bytes: valid UTF-8 as text; control bytes and bytes that are not
    /// part of a valid UTF-8 sequence as &lt;0xNN&gt;.
    /// </summary>
    public static string Display(ReadOnlySpan<byte> bytes)
    {
        var sb = new StringBuilder(bytes.Length);
        while (!bytes.IsEmpty)
        {
            var status = Rune.DecodeFromUtf8(bytes, out var rune, out int consumed);
            if (status == System.Buffers.OperationStatus.Done && !Rune.IsControl(rune))
                sb.Append(rune.ToString());
            else
            {
                consumed = status == System.Buffers.OperationStatus.Done ? consumed : 1;
                for (int i = 0; i < consumed; i++) sb.Append(CultureInfo.InvariantCulture, $"<0x{bytes[i]:X2}>");
            }
            bytes = bytes[consumed..];
        }
        return sb.ToString();
    }

    /// <summary>Parses a byte-fallback piece "&lt;0xNN&gt;" (two upper- or lower-case hex digits).</summary>
    public static bool TryParseBytePiece(ReadOnlySpan<char> piece, out byte value)
    {
        value = 0;
        return piece.Length == 6 && piece.StartsWith("<0x") && piece[5] == '>'
            && byte.TryParse(piece.Slice(3, 2), NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out value);
    }
}
