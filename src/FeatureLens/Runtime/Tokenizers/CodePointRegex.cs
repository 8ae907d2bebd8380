using System.Collections.Concurrent;
using System.Text;
using System.Text.RegularExpressions;

namespace FeatureLens.Runtime.Tokenizers;

/// <summary>
/// Compiles a Hugging Face pre-tokenizer pattern (Oniguruma syntax, matched on code points) into a
/// .NET <see cref="Regex"/> that matches the same code point spans in a UTF-16 string.
/// </summary>
/// <remarks>
/// .NET's regex engine sees a character outside the Basic Multilingual Plane as two surrogate
/// halves, neither of which is a letter or digit: 𝐀 would fail <c>\p{L}</c> and match
/// <c>[^\s\p{L}\p{N}]</c> half by half. So every character class of the pattern (<c>\p{..}</c>,
/// <c>\P{..}</c>, <c>\s \S \d \D \w \W</c>, <c>.</c> and bracket classes) is rewritten as
/// <c>(?:[the class's BMP members, surrogates excluded]|HIGH[LOWS]|…)</c>: its BMP part as written
/// plus the surrogate pairs of exactly the astral code points the class contains (decided by each
/// code point's Unicode general category). A quantifier after the class then counts code points.
/// Literal surrogate pairs in the pattern are grouped the same way. Unsupported constructs (script
/// or binary properties, POSIX brackets, nested classes and class intersection) are refused with a
/// <see cref="FormatException"/>.
/// </remarks>
internal static class CodePointRegex
{
    private static readonly ConcurrentDictionary<string, Regex> Compiled = new(StringComparer.Ordinal);
    private static readonly Lazy<byte[]> AstralCategories = new(() =>
    {
        var categories = new byte[0x110000 - 0x10000];
        for (int cp = 0x10000; cp < 0x110000; cp++) categories[cp - 0x10000] = (byte)CharUnicodeInfo.GetUnicodeCategory(cp);
        return categories;
    });

    /// <summary>The compiled translation of <paramref name="pattern"/> (cached per pattern).</summary>
    /// <param name="pattern">The Oniguruma-style pattern as tokenizer.json stores it.</param>
    /// <param name="where">"FILE: FIELD" for error messages.</param>
    /// <exception cref="FormatException">The pattern is malformed or uses an unsupported construct.</exception>
    public static Regex Get(string pattern, string where)
    {
        if (Compiled.TryGetValue(pattern, out var regex)) return regex;
        string translated = Translate(pattern, where);
        try
        {
            regex = new Regex(translated, RegexOptions.Compiled | RegexOptions.CultureInvariant);
        }
        catch (ArgumentException e)
        {
            throw new FormatException($"{where}: the regular expression \"{pattern}\" is malformed: {e.Message}", e);
        }
        return Compiled.GetOrAdd(pattern, regex);
    }

    /// <summary>The .NET pattern that matches what <paramref name="pattern"/> matches on code points.</summary>
    internal static string Translate(string pattern, string where)
    {
        var output = new StringBuilder(pattern.Length * 4);
        int i = 0;
        while (i < pattern.Length)
        {
            char c = pattern[i];
            if (c == '[')
            {
                var cls = ParseBracket(pattern, ref i, where);
                output.Append(Emit(cls));
            }
            else if (c == '\\')
            {
                if (i + 1 >= pattern.Length) throw Malformed(pattern, where, "it ends with a lone backslash");
                char e = pattern[i + 1];
                if (TryParseClassEscape(pattern, ref i, where, out var item))
                    output.Append(Emit(new CharClass(false, [item])));
                else if (e == 'x' && i + 2 < pattern.Length && pattern[i + 2] == '{')
                {
                    int cp = ParseBracedHex(pattern, ref i, where);
                    output.Append(EmitLiteral(cp));
                }
                else
                {
                    // Any other escape (\r, \n, \t, \b, \A, \z, \., \1, \uHHHH ...) means the same to .NET.
                    output.Append(c).Append(e);
                    i += 2;
                }
            }
            else if (c == '.')
            {
                output.Append(Emit(new CharClass(true, [new ClassItem.Range('\n', '\n')])));
                i++;
            }
            else if (char.IsHighSurrogate(c) && i + 1 < pattern.Length && char.IsLowSurrogate(pattern[i + 1]))
            {
                output.Append(EmitLiteral(char.ConvertToUtf32(c, pattern[i + 1])));
                i += 2;
            }
            else
            {
                output.Append(c);
                i++;
            }
        }
        return output.ToString();
    }

    /// <summary>One member of a character class.</summary>
    private abstract record ClassItem
    {
        /// <summary>The item as .NET class syntax for its BMP members ("" when it has none).</summary>
        public abstract string BmpSyntax { get; }
        public abstract bool ContainsAstral(int codePoint, UnicodeCategory category);

        public sealed record Range(int First, int Last) : ClassItem
        {
            public override string BmpSyntax
            {
                get
                {
                    if (First > 0xFFFF) return "";
                    int last = Math.Min(Last, 0xFFFF);
                    return First == last ? Esc(First) : $"{Esc(First)}-{Esc(last)}";
                }
            }

            public override bool ContainsAstral(int codePoint, UnicodeCategory category) => codePoint >= First && codePoint <= Last;
            private static string Esc(int c) => $"\\u{c:X4}";
        }

        /// <summary>\p{..} / \P{..} / \d \D \w \W \s \S: a set of general categories, possibly negated.</summary>
        public sealed record Categories(string Syntax, UnicodeCategory[] Members, bool Negated) : ClassItem
        {
            public override string BmpSyntax => Syntax;
            public override bool ContainsAstral(int codePoint, UnicodeCategory category) => Array.IndexOf(Members, category) >= 0 != Negated;
        }
    }

    private sealed record CharClass(bool Negated, List<ClassItem> Items)
    {
        public bool Contains(int codePoint, UnicodeCategory category)
        {
            bool any = false;
            foreach (var item in Items)
                if (item.ContainsAstral(codePoint, category)) { any = true; break; }
            return any != Negated;
        }
    }

    private static readonly Dictionary<string, UnicodeCategory[]> CategoryNames = BuildCategoryNames();

    private static Dictionary<string, UnicodeCategory[]> BuildCategoryNames()
    {
        var names = new Dictionary<string, UnicodeCategory[]>(StringComparer.Ordinal)
        {
            ["Lu"] = [UnicodeCategory.UppercaseLetter], ["Ll"] = [UnicodeCategory.LowercaseLetter],
            ["Lt"] = [UnicodeCategory.TitlecaseLetter], ["Lm"] = [UnicodeCategory.ModifierLetter],
            ["Lo"] = [UnicodeCategory.OtherLetter], ["Mn"] = [UnicodeCategory.NonSpacingMark],
            ["Mc"] = [UnicodeCategory.SpacingCombiningMark], ["Me"] = [UnicodeCategory.EnclosingMark],
            ["Nd"] = [UnicodeCategory.DecimalDigitNumber], ["Nl"] = [UnicodeCategory.LetterNumber],
            ["No"] = [UnicodeCategory.OtherNumber], ["Zs"] = [UnicodeCategory.SpaceSeparator],
            ["Zl"] = [UnicodeCategory.LineSeparator], ["Zp"] = [UnicodeCategory.ParagraphSeparator],
            ["Cc"] = [UnicodeCategory.Control], ["Cf"] = [UnicodeCategory.Format], ["Cs"] = [UnicodeCategory.Surrogate],
            ["Co"] = [UnicodeCategory.PrivateUse], ["Cn"] = [UnicodeCategory.OtherNotAssigned],
            ["Pc"] = [UnicodeCategory.ConnectorPunctuation], ["Pd"] = [UnicodeCategory.DashPunctuation],
            ["Ps"] = [UnicodeCategory.OpenPunctuation], ["Pe"] = [UnicodeCategory.ClosePunctuation],
            ["Pi"] = [UnicodeCategory.InitialQuotePunctuation], ["Pf"] = [UnicodeCategory.FinalQuotePunctuation],
            ["Po"] = [UnicodeCategory.OtherPunctuation], ["Sm"] = [UnicodeCategory.MathSymbol],
            ["Sc"] = [UnicodeCategory.CurrencySymbol], ["Sk"] = [UnicodeCategory.ModifierSymbol], ["So"] = [UnicodeCategory.OtherSymbol],
        };
        foreach (char major in "LMNZCPS")
            names[major.ToString()] = names.Where(kv => kv.Key.Length == 2 && kv.Key[0] == major).SelectMany(kv => kv.Value).ToArray();
        return names;
    }

    /// <summary>\p{..} \P{..} \d \D \w \W \s \S at <paramref name="i"/>; advances past it.</summary>
    private static bool TryParseClassEscape(string pattern, ref int i, string where, out ClassItem item)
    {
        item = null!;
        char e = pattern[i + 1];
        switch (e)
        {
            case 'p' or 'P':
                int close = pattern.IndexOf('}', i + 2);
                if (i + 2 >= pattern.Length || pattern[i + 2] != '{' || close < 0)
                    throw Malformed(pattern, where, $"\\{e} at offset {i} must be followed by {{Name}}");
                string name = pattern[(i + 3)..close];
                bool negated = e == 'P';
                if (name.StartsWith('^')) { negated = !negated; name = name[1..]; }
                if (!CategoryNames.TryGetValue(name, out var members))
                    throw new FormatException($"{where}: the regular expression uses \\{e}{{{name}}}; supported are the Unicode general categories (L, Lu, Ll, Lt, Lm, Lo, M, Mn, Mc, Me, N, Nd, Nl, No, P…, S…, Z…, C…).");
                item = new ClassItem.Categories($"\\{(negated ? 'P' : 'p')}{{{name}}}", members, negated);
                i = close + 1;
                return true;
            case 'd' or 'D':
                item = new ClassItem.Categories($"\\{e}", CategoryNames["Nd"], e == 'D');
                break;
            case 'w' or 'W':
                item = new ClassItem.Categories($"\\{e}", [.. CategoryNames["L"], UnicodeCategory.NonSpacingMark, UnicodeCategory.DecimalDigitNumber, UnicodeCategory.ConnectorPunctuation], e == 'W');
                break;
            case 's' or 'S':
                // White_Space has no member outside the BMP.
                item = new ClassItem.Categories($"\\{e}", [], e == 'S');
                break;
            default:
                return false;
        }
        i += 2;
        return true;
    }

    /// <summary>A bracket class [..] or [^..] starting at <paramref name="i"/>; advances past its ']'.</summary>
    private static CharClass ParseBracket(string pattern, ref int i, string where)
    {
        int open = i;
        i++;
        bool negated = i < pattern.Length && pattern[i] == '^';
        if (negated) i++;
        var items = new List<ClassItem>();
        bool first = true;
        while (true)
        {
            if (i >= pattern.Length) throw Malformed(pattern, where, $"the character class at offset {open} is not closed");
            char c = pattern[i];
            if (c == ']' && !first) { i++; break; }
            first = false;
            if (c == '[')
                throw new FormatException($"{where}: the regular expression \"{pattern}\" has a nested class, POSIX bracket or class intersection at offset {i}; not supported.");
            if (c == '&' && i + 1 < pattern.Length && pattern[i + 1] == '&')
                throw new FormatException($"{where}: the regular expression \"{pattern}\" uses class intersection (&&) at offset {i}; not supported.");
            if (c == '\\' && i + 1 < pattern.Length && TryParseClassEscape(pattern, ref i, where, out var escaped))
            {
                items.Add(escaped);
                continue;
            }
            int low = ReadClassChar(pattern, ref i, where);
            if (i + 1 < pattern.Length && pattern[i] == '-' && pattern[i + 1] != ']')
            {
                i++;
                if (pattern[i] == '\\' && i + 1 < pattern.Length && "pPdDwWsS".Contains(pattern[i + 1], StringComparison.Ordinal))
                    throw Malformed(pattern, where, $"a range at offset {i} ends in a class escape");
                int high = ReadClassChar(pattern, ref i, where);
                if (high < low) throw Malformed(pattern, where, $"the range at offset {i} runs backwards");
                items.Add(new ClassItem.Range(low, high));
            }
            else items.Add(new ClassItem.Range(low, low));
        }
        return new CharClass(negated, items);
    }

    /// <summary>One literal code point inside a bracket class (raw, surrogate pair, or escaped).</summary>
    private static int ReadClassChar(string pattern, ref int i, string where)
    {
        char c = pattern[i];
        if (c != '\\')
        {
            if (char.IsHighSurrogate(c) && i + 1 < pattern.Length && char.IsLowSurrogate(pattern[i + 1]))
            {
                i += 2;
                return char.ConvertToUtf32(c, pattern[i - 1]);
            }
            i++;
            return c;
        }
        if (i + 1 >= pattern.Length) throw Malformed(pattern, where, "it ends with a lone backslash");
        char e = pattern[i + 1];
        switch (e)
        {
            case 'x' when i + 2 < pattern.Length && pattern[i + 2] == '{':
                return ParseBracedHex(pattern, ref i, where);
            case 'x' or 'u':
                int digits = e == 'x' ? 2 : 4;
                if (i + 2 + digits > pattern.Length || !int.TryParse(pattern.AsSpan(i + 2, digits), NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out int value))
                    throw Malformed(pattern, where, $"\\{e} at offset {i} needs {digits} hex digits");
                i += 2 + digits;
                return value;
            default:
                i += 2;
                return e switch { 'r' => '\r', 'n' => '\n', 't' => '\t', 'f' => '\f', 'v' => '\v', 'a' => '\a', 'e' => '\u001B', '0' => '\0', _ => e };
        }
    }

    /// <summary>\x{HHHH}: one code point.</summary>
    private static int ParseBracedHex(string pattern, ref int i, string where)
    {
        int close = pattern.IndexOf('}', i + 3);
        if (close < 0 || !int.TryParse(pattern.AsSpan(i + 3, close - i - 3), NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out int cp) || cp > 0x10FFFF)
            throw Malformed(pattern, where, $"\\x{{...}} at offset {i} is not a code point");
        i = close + 1;
        return cp;
    }

    private static string EmitLiteral(int codePoint) =>
        codePoint <= 0xFFFF ? $"\\u{codePoint:X4}" : $"(?:{Regex.Escape(char.ConvertFromUtf32(codePoint))})";

    /// <summary>(?:[BMP part minus surrogates]|HIGH[LOWS]|…) for one class.</summary>
    private static string Emit(CharClass cls)
    {
        var alternatives = new List<string>();
        string bmpItems = string.Concat(cls.Items.Select(item => item.BmpSyntax));
        if (cls.Negated || bmpItems.Length > 0)
            alternatives.Add($"[{(cls.Negated ? "^" : "")}{bmpItems}-[\\uD800-\\uDFFF]]");

        // Astral members grouped by high surrogate; runs of high surrogates with the same low set share one alternative.
        var categories = AstralCategories.Value;
        string? previousLows = null;
        int runStart = 0;
        var sb = new StringBuilder();
        for (int high = 0xD800; high <= 0xDC00; high++)
        {
            string? lows = null;
            if (high < 0xDC00)
            {
                sb.Clear();
                int baseCp = 0x10000 + ((high - 0xD800) << 10);
                int low = 0;
                while (low < 0x400)
                {
                    int cp = baseCp + low;
                    if (!cls.Contains(cp, (UnicodeCategory)categories[cp - 0x10000])) { low++; continue; }
                    int end = low;
                    while (end + 1 < 0x400 && cls.Contains(baseCp + end + 1, (UnicodeCategory)categories[baseCp + end + 1 - 0x10000])) end++;
                    sb.Append(CultureInfo.InvariantCulture, $"\\u{0xDC00 + low:X4}");
                    if (end > low) sb.Append(CultureInfo.InvariantCulture, $"-\\u{0xDC00 + end:X4}");
                    low = end + 1;
                }
                lows = sb.Length == 0 ? null : sb.ToString();
            }
            if (lows == previousLows) continue;
            if (previousLows is not null)
            {
                string highs = runStart == high - 1 ? $"\\u{runStart:X4}" : $"[\\u{runStart:X4}-\\u{high - 1:X4}]";
                alternatives.Add($"{highs}[{previousLows}]");
            }
            previousLows = lows;
            runStart = high;
        }
        if (alternatives.Count == 0) return "[^\\s\\S]"; // an empty class never matches
        bool bmpOnly = alternatives.Count == 1 && (cls.Negated || bmpItems.Length > 0);
        return bmpOnly ? alternatives[0] : $"(?:{string.Join("|", alternatives)})";
    }

    private static FormatException Malformed(string pattern, string where, string why) =>
        new($"{where}: the regular expression \"{pattern}\" is malformed: {why}.");
}
