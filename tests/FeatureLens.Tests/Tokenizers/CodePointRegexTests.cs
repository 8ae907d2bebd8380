using System.Diagnostics;
using System.Text;
using System.Text.Json;
using FeatureLens.Runtime.Tokenizers;

namespace FeatureLens.Tests.Tokenizers;

/// <summary>
/// Pre-tokenizer patterns translated for .NET (<see cref="CodePointRegex"/>) against JavaScript's
/// RegExp in Unicode mode (node, tests/FeatureLens.Tests/node/regex_spans.js), which matches on code
/// points: the same match spans on random text full of astral letters, digits, marks and emoji.
/// </summary>
public class CodePointRegexTests
{
    private static readonly string[] Patterns =
    [
        PreTokenizerStep.ByteLevel.Gpt2Pattern,
        // Llama 3 / 3.1
        @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        // Qwen 2 / 2.5 / 3
        @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        // GPT-4o style: case classes and marks
        @"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        // negated properties, \d, '.', astral literals and ranges ('.' leaves out "\n" only, as Oniguruma's;
        // JavaScript's also leaves out "\r", hence "|\r")
        @"\P{L}{2}|\d+|[\x{1F600}-\x{1F64F}\x{1D400}]+|\p{So}\p{Sk}?|.|\r",
    ];

    /// <summary>Pieces of text: astral letters (𝐀 Lu, 𝐚 Ll, 𠀀 Lo), digits (𝟙 Nd), marks, emoji, skin tones, ZWJ, tags, BMP letters, digits, space.</summary>
    private static readonly string[] Pool =
    [
        "𝐀", "𝐚", "𝒜", "𠀀", "𪚥", "𝟙", "𝟘", "𐐀", "𐐨", "𞤀", "\U0001D165", "\U00011000", "\U0001F600", "\U0001F64F", "😀", "🚀", "👍",
        "\U0001F3FD", "\u200D", "\uFE0F", "\U000E0067", "🏴", "🇯", "🇵", "👨‍👩‍👧", "a", "b", "Z", "é", "e\u0301", "ß", "Ж", "中", "한",
        "ا", "٣", "١٢", "0", "1", "42", "123456", "²", " ", " ", "  ", "\t", "\n", "\r\n", "\r", "\u00A0", "\u3000", "'", "'s", "'LL",
        "'ve", "!", ".", ",", "-", "/", "$", "_", "\u0300", "\u0903", "क", "ि", "'D", "x", "Q",
    ];

    [Fact]
    public void Translated_patterns_match_like_javascript_unicode_regexps()
    {
        int seed = Random.Shared.Next();
        var random = new Random(seed);
        var texts = Enumerable.Range(0, 400).Select(_ =>
        {
            var sb = new StringBuilder();
            int n = random.Next(1, 30);
            for (int i = 0; i < n; i++) sb.Append(Pool[random.Next(Pool.Length)]);
            return sb.ToString();
        }).ToArray();

        var expected = JavaScriptSpans(Patterns, texts);
        for (int p = 0; p < Patterns.Length; p++)
        {
            var regex = CodePointRegex.Get(Patterns[p], "test pattern");
            for (int t = 0; t < texts.Length; t++)
            {
                string text = texts[t];
                var ours = new List<(int, int)>();
                for (var m = regex.Match(text); m.Success; m = m.NextMatch())
                    ours.Add((CodePoints(text, m.Index), CodePoints(text, m.Index + m.Length)));
                if (!ours.SequenceEqual(expected[p][t]))
                    Assert.Fail($"seed {seed}: pattern {p} on \"{text}\" ({string.Join(" ", text.EnumerateRunes().Select(r => $"U+{r.Value:X4}"))}):\n ours {string.Join(" ", ours)}\n JavaScript {string.Join(" ", expected[p][t])}");
            }
        }
    }

    [Fact]
    public void Classes_count_astral_code_points_as_one()
    {
        var llama3 = CodePointRegex.Get(Patterns[1], "test pattern");
        Assert.Equal(["𝐀𝐁𝐂", " 𝐚𝐛"], llama3.Matches("𝐀𝐁𝐂 𝐚𝐛").Select(m => m.Value));
        Assert.Equal(["𝟙𝟚𝟛", "𝟜"], llama3.Matches("𝟙𝟚𝟛𝟜").Select(m => m.Value)); // \p{N}{1,3} counts code points
        Assert.Equal(["a", " 😀", "b"], llama3.Matches("a 😀b").Select(m => m.Value)); // an emoji is not a letter
        Assert.Equal(["😀abc"], llama3.Matches("😀abc").Select(m => m.Value)); // [^\r\n\p{L}\p{N}]? takes the whole emoji
    }

    [Theory]
    [InlineData(@"\p{Han}+", "Han")]
    [InlineData(@"[[:alpha:]]", "nested class")]
    [InlineData(@"[a-z&&[^aeiou]]", "intersection")]
    [InlineData(@"[abc", "not closed")]
    [InlineData(@"(abc", "malformed")]
    [InlineData(@"a{2,1}", "malformed")]
    [InlineData(@"[z-a]", "backwards")]
    [InlineData(@"abc\", "lone backslash")]
    public void Unsupported_or_malformed_patterns_are_refused(string pattern, string expected)
    {
        var e = Assert.Throws<FormatException>(() => CodePointRegex.Get(pattern, "FILE: FIELD"));
        Assert.StartsWith("FILE: FIELD", e.Message);
        Assert.Contains(expected, e.Message);
    }

    private static int CodePoints(string text, int utf16Index) => text[..utf16Index].EnumerateRunes().Count();

    private static List<(int, int)>[][] JavaScriptSpans(string[] patterns, string[] texts)
    {
        using var temp = new TokenizerTestData.TempDir();
        string input = temp.File("in.json"), output = temp.File("out.json");
        File.WriteAllText(input, JsonSerializer.Serialize(new { patterns, texts }), new UTF8Encoding(false));
        var psi = new ProcessStartInfo("node") { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false, WorkingDirectory = TokenizerTestData.NodeDir };
        psi.ArgumentList.Add(Path.Combine(TokenizerTestData.NodeDir, "regex_spans.js"));
        psi.ArgumentList.Add(input);
        psi.ArgumentList.Add(output);
        using var process = Process.Start(psi) ?? throw new InvalidOperationException("could not start node");
        var stderr = process.StandardError.ReadToEndAsync();
        _ = process.StandardOutput.ReadToEndAsync();
        if (!process.WaitForExit(120_000)) { process.Kill(true); throw new TimeoutException("node regex_spans.js took over 120 s."); }
        Assert.True(process.ExitCode == 0, $"node regex_spans.js failed: {stderr.Result}");
        using var document = JsonDocument.Parse(File.ReadAllBytes(output));
        return document.RootElement.EnumerateArray()
            .Select(perPattern => perPattern.EnumerateArray()
                .Select(perText => perText.EnumerateArray().Select(span => (span[0].GetInt32(), span[1].GetInt32())).ToList())
                .ToArray())
            .ToArray();
    }
}
