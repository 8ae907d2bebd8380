using System.Text;
using System.Text.RegularExpressions;

namespace FeatureLens.Runtime.Tokenizers;

/// <summary>A token matched as a whole string in the input before BPE (tokenizer.json <c>added_tokens</c>).</summary>
internal sealed record AddedToken(int Id, string Content, bool Special, bool LStrip = false, bool RStrip = false, bool SingleWord = false);

/// <summary>
/// Finds added tokens in text, leftmost first and longest first at one position (as Hugging Face's
/// added vocabulary does), and cuts the text into plain segments and matched tokens.
/// </summary>
internal sealed class AddedTokenMatcher
{
    private readonly Regex? pattern;
    private readonly Dictionary<string, AddedToken> byContent = new(StringComparer.Ordinal);

    public AddedTokenMatcher(IEnumerable<AddedToken> tokens)
    {
        foreach (var t in tokens)
            if (t.Content.Length > 0) byContent[t.Content] = t;
        if (byContent.Count == 0) return;
        var alternatives = byContent.Keys.OrderByDescending(k => k.Length).ThenBy(k => k, StringComparer.Ordinal).Select(Regex.Escape);
        pattern = new Regex(string.Join("|", alternatives), RegexOptions.CultureInvariant);
    }

    public IReadOnlyCollection<AddedToken> Tokens => byContent.Values;

    /// <summary>
    /// Cuts <paramref name="text"/> into parts: (start, length, -1) for plain text to be tokenized,
    /// (start, length, id) for a matched added token (length covers whitespace eaten by lstrip/rstrip).
    /// </summary>
    public List<(int Start, int Length, int TokenId)> Split(string text)
    {
        var parts = new List<(int, int, int)>();
        if (pattern is null)
        {
            if (text.Length > 0) parts.Add((0, text.Length, -1));
            return parts;
        }
        int plainStart = 0;
        int searchFrom = 0;
        while (searchFrom <= text.Length)
        {
            var m = pattern.Match(text, searchFrom);
            if (!m.Success) break;
            var token = byContent[m.Value];
            int start = m.Index, end = m.Index + m.Length;
            if (token.SingleWord && (IsWordChar(text, start - 1) || IsWordChar(text, end)))
            {
                searchFrom = m.Index + 1;
                continue;
            }
            if (token.LStrip) while (start > plainStart && char.IsWhiteSpace(text[start - 1])) start--;
            if (token.RStrip) while (end < text.Length && char.IsWhiteSpace(text[end])) end++;
            if (start > plainStart) parts.Add((plainStart, start - plainStart, -1));
            parts.Add((start, end - start, token.Id));
            plainStart = searchFrom = end;
        }
        if (plainStart < text.Length) parts.Add((plainStart, text.Length - plainStart, -1));
        return parts;
    }

    private static bool IsWordChar(string text, int i) =>
        i >= 0 && i < text.Length && (char.IsLetterOrDigit(text[i]) || text[i] == '_');
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
