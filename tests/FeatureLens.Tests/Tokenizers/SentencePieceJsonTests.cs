using System.Text;
using System.Text.Json;
using FeatureLens.Runtime.Tokenizers;

namespace FeatureLens.Tests.Tokenizers;

/// <summary>
/// A Llama-style tokenizer.json built from tok512.bin the way Hugging Face's SentencePiece converter
/// builds one, checked against llama2.c's encoder on both corpora.
/// </summary>
public class SentencePieceJsonTests
{
    private static readonly Lazy<Llama2cTokenizer> llama2c = new(() => Llama2cTokenizer.FromFile(TokenizerTestData.Tok512, 512));

    public enum Style { PrependReplace, PrependReplaceStringMerges, LegacyMetaspace }

    /// <summary>tok512.bin read independently of Llama2cTokenizer: pieces (with "▁" for space, as SentencePiece writes them) and scores.</summary>
    private static (List<string> Pieces, List<float> Scores) ReadTok512()
    {
        var pieces = new List<string>();
        var scores = new List<float>();
        using var reader = new BinaryReader(File.OpenRead(TokenizerTestData.Tok512));
        reader.ReadInt32(); // max_token_length
        while (reader.BaseStream.Position < reader.BaseStream.Length)
        {
            scores.Add(reader.ReadSingle());
            string piece = Encoding.UTF8.GetString(reader.ReadBytes(reader.ReadInt32()));
            pieces.Add(piece switch { "\n<s>\n" => "<s>", "\n</s>\n" => "</s>", _ => piece.Replace(' ', '▁') });
        }
        return (pieces, scores);
    }

    /// <summary>
    /// Hugging Face's SentencePieceExtractor: for every piece (in id order), every split into two
    /// vocabulary pieces, sorted by (id of left, id of right); then all of them stably sorted by the
    /// merged piece's score, highest first.
    /// </summary>
    private static List<(string Left, string Right)> DeriveMerges(List<string> pieces, List<float> scores)
    {
        var idOf = new Dictionary<string, int>();
        for (int i = 0; i < pieces.Count; i++) idOf.TryAdd(pieces[i], i);
        var merges = new List<(string Left, string Right, float Score)>();
        for (int id = 0; id < pieces.Count; id++)
        {
            var runes = pieces[id].EnumerateRunes().Select(r => r.ToString()).ToArray(); // Python slices by code point
            var local = new List<(string, string, float)>();
            for (int k = 1; k < runes.Length; k++)
            {
                string left = string.Concat(runes[..k]), right = string.Concat(runes[k..]);
                if (idOf.ContainsKey(left) && idOf.ContainsKey(right)) local.Add((left, right, scores[id]));
            }
            merges.AddRange(local.OrderBy(m => idOf[m.Item1]).ThenBy(m => idOf[m.Item2]));
        }
        return merges.OrderByDescending(m => m.Score).Select(m => (m.Left, m.Right)).ToList();
    }

    /// <summary>Writes tok512 as a tokenizer.json like Hugging Face's LlamaConverter output (or the legacy Metaspace form).</summary>
    private static void WriteLlamaTokenizerJson(string path, Style style)
    {
        var (pieces, scores) = ReadTok512();
        var merges = DeriveMerges(pieces, scores);
        var vocab = new Dictionary<string, int>();
        for (int i = 0; i < pieces.Count; i++) vocab[pieces[i]] = i;
        object special(int id, string content) => new { id, content, single_word = false, lstrip = false, rstrip = false, normalized = false, special = true };

        var json = new Dictionary<string, object?>
        {
            ["version"] = "1.0",
            ["added_tokens"] = new[] { special(0, "<unk>"), special(1, "<s>"), special(2, "</s>") },
            ["normalizer"] = style == Style.LegacyMetaspace ? null : new
            {
                type = "Sequence",
                normalizers = new object[] { new { type = "Prepend", prepend = "▁" }, new { type = "Replace", pattern = new { String = " " }, content = "▁" } },
            },
            ["pre_tokenizer"] = style == Style.LegacyMetaspace ? new { type = "Metaspace", replacement = "▁", add_prefix_space = true } : null,
            ["post_processor"] = new
            {
                type = "TemplateProcessing",
                single = new object[] { new { SpecialToken = new { id = "<s>", type_id = 0 } }, new { Sequence = new { id = "A", type_id = 0 } } },
            },
            ["decoder"] = style == Style.LegacyMetaspace
                ? new
                {
                    type = "Sequence",
                    decoders = new object[] { new { type = "ByteFallback" }, new { type = "Metaspace", replacement = "▁", add_prefix_space = true } },
                }
                : new
                {
                    type = "Sequence",
                    decoders = new object[]
                    {
                        new { type = "Replace", pattern = new { String = "▁" }, content = " " },
                        new { type = "ByteFallback" },
                        new { type = "Fuse" },
                        new { type = "Strip", content = " ", start = 1, stop = 0 },
                    },
                },
            ["model"] = new Dictionary<string, object?>
            {
                ["type"] = "BPE", ["dropout"] = null, ["unk_token"] = "<unk>", ["continuing_subword_prefix"] = null,
                ["end_of_word_suffix"] = null, ["fuse_unk"] = true, ["byte_fallback"] = true, ["ignore_merges"] = false,
                ["vocab"] = vocab,
                ["merges"] = style == Style.PrependReplaceStringMerges
                    ? merges.Select(m => $"{m.Left} {m.Right}").ToList()
                    : merges.Select(m => new[] { m.Left, m.Right }).ToList(),
            },
        };
        File.WriteAllText(path, JsonSerializer.Serialize(json), new UTF8Encoding(false));
    }

    /// <summary>Every corpus line and some random text, with llama2.c's ids (computed once for all styles).</summary>
    private static readonly Lazy<List<(string Where, string Line, int[] Expected)>> cases = new(() =>
    {
        int seed = Random.Shared.Next();
        var random = new Random(seed);
        return TokenizerTestData.CorpusFiles
            .SelectMany(f => TokenizerTestData.Lines(f).Select((line, i) => (Where: $"{Path.GetFileName(f)} line {i + 1}", Line: line)))
            .Concat(Enumerable.Range(0, 300).Select(i => (Where: $"seed {seed} random text {i}", Line: TokenizerTestData.RandomText(random, 40).Replace("<", "«"))))
            .Select(c => (c.Where, c.Line, llama2c.Value.Encode(c.Line, addBos: true)))
            .ToList();
    });

    /// <summary>
    /// Rank-ordered merges (Hugging Face) and score-ordered merges (llama2.c) give the same ids on
    /// every line here. They could differ only when two different splits of one piece compete at the
    /// same time (llama2.c: the leftmost wins, both having the piece's score; HF: the split with the
    /// lower rank, i.e. the lower left id, wins), e.g. "ab"+"a" against "a"+"ba" overlapping in
    /// "ab a ba"; no line of these corpora hits such a case with tok512.
    /// The legacy Metaspace pre-tokenizer differs from llama2.c in one known way: it puts "▁" before
    /// the text only when the text does not already start with a space, so " x" encodes like "x"
    /// (llama2.c: dummy prefix + " x"), and its decoder drops that leading space. This is why
    /// Hugging Face moved Llama to the Prepend + Replace normalizers.
    /// </summary>
    [Theory]
    [InlineData(Style.PrependReplace)]
    [InlineData(Style.PrependReplaceStringMerges)]
    [InlineData(Style.LegacyMetaspace)]
    public void Encodes_every_corpus_line_like_llama2c(Style style)
    {
        using var temp = new TokenizerTestData.TempDir();
        WriteLlamaTokenizerJson(temp.File("tokenizer.json"), style);
        var tok = TokenizerLoader.Load(temp.Path);
        Assert.IsType<SentencePieceBpeTokenizer>(tok);
        Assert.Equal(512, tok.VocabSize);
        Assert.Equal(1, tok.BosId);
        Assert.Equal(2, tok.EosId);

        foreach (var (where, line, llamaIds) in cases.Value)
        {
            bool legacyLeadingSpace = style == Style.LegacyMetaspace && line.StartsWith(' ');
            // A lone space: Metaspace encodes it as "▁", while llama2.c's rule for the stripped text
            // (empty: no dummy prefix) gives nothing, so the two conventions are not comparable there.
            if (legacyLeadingSpace && line.Length == 1) continue;
            int[] expected = legacyLeadingSpace ? llama2c.Value.Encode(line[1..], addBos: true) : llamaIds;
            string expectedText = legacyLeadingSpace ? line[1..] : line;
            int[] ids = tok.Encode(line, addBos: true);
            if (!ids.SequenceEqual(expected))
                Assert.Fail($"{style}, {where} \"{line}\":\n tokenizer.json [{string.Join(",", ids)}]\n llama2.c [{string.Join(",", expected)}]");
            Assert.True(tok.Decode(ids) == expectedText, $"{style}, {where}: decode gives \"{tok.Decode(ids)}\", expected \"{expectedText}\"");
        }
    }

    [Fact]
    public void Special_tokens_in_text_token_text_and_decoding()
    {
        using var temp = new TokenizerTestData.TempDir();
        WriteLlamaTokenizerJson(temp.File("tokenizer.json"), Style.PrependReplace);
        var tok = TokenizerLoader.Load(temp.File("tokenizer.json"));
        var reference = llama2c.Value;

        // Added tokens are cut out first; each text segment is then normalized on its own, so the
        // segment after </s> gets its own "▁" prefix (Hugging Face tokenizers behaves the same).
        int[] ids = tok.Encode("Once upon</s>a time", addBos: true);
        int[] once = reference.Encode("Once upon", addBos: false), time = reference.Encode("a time", addBos: false);
        Assert.Equal([1, .. once, 2, .. time], ids);
        Assert.Equal("Once upon a time", tok.Decode(ids)); // special tokens skipped; "▁a" decodes to " a"

        Assert.Equal(" Once", tok.TokenText(403));
        Assert.Equal("<0x0A>", tok.TokenText(13));
        Assert.Equal("<s>", tok.TokenText(1));
        Assert.Equal("Hi\n\u00e9", tok.Decode(tok.Encode("Hi\n\u00e9", addBos: false)));
        Assert.Equal(Encoding.UTF8.GetBytes("Hi\n\u00e9"), tok.DecodeBytes(tok.Encode("Hi\n\u00e9", addBos: true)));
        // A byte token that is half of a character decodes to U+FFFD, as Python's errors="replace".
        Assert.Equal("\uFFFD", tok.Decode([3 + 0xC3]));
        Assert.Throws<ArgumentOutOfRangeException>(() => tok.Decode([512]));
    }
}
