using System.Text;
using FeatureLens.Runtime.Tokenizers;

namespace FeatureLens.Tests.Tokenizers;

public class Llama2cTokenizerTests
{
    private static readonly Lazy<Llama2cTokenizer> tok512 = new(() => Llama2cTokenizer.FromFile(TokenizerTestData.Tok512, 512));
    private static Llama2cTokenizer Tok => tok512.Value;

    /// <summary>
    /// greedy-n200-ids.csv holds the 200 ids run.c generated, comma-separated, followed by the
    /// "achieved tok/s: ..." line run.c writes to stderr (the capture has both streams). Only the
    /// leading integer fields are ids.
    /// </summary>
    private static int[] ReferenceIds()
    {
        string[] fields = File.ReadAllText(Path.Combine(TokenizerTestData.ReferenceDir, "greedy-n200-ids.csv")).Split(',');
        var ids = fields.TakeWhile(f => int.TryParse(f.Trim(), out _)).Select(f => int.Parse(f.Trim(), CultureInfo.InvariantCulture)).ToArray();
        string rest = string.Join(",", fields.Skip(ids.Length)).Trim();
        Assert.True(rest.Length == 0 || rest.StartsWith("achieved tok/s", StringComparison.Ordinal), $"unexpected text after the ids: {rest}");
        return ids;
    }

    [Fact]
    public void Header_and_special_tokens()
    {
        Assert.Equal(512, Tok.VocabSize);
        Assert.Equal(7, Tok.MaxTokenLength);
        Assert.Equal(1, Tok.BosId);
        Assert.Equal(2, Tok.EosId);
        Assert.Equal("<s>", Tok.TokenText(1));
        Assert.Equal("</s>", Tok.TokenText(2));
        Assert.Equal("<unk>", Tok.TokenText(0));
        Assert.Equal("<0x0A>", Tok.TokenText(13));
        Assert.Equal(" Once", Tok.TokenText(403));
        Assert.Equal(-144f, Tok.Score(403));
        // Without a size hint the file is read to its end: the same 512 tokens.
        Assert.Equal(512, Llama2cTokenizer.FromFile(TokenizerTestData.Tok512).VocabSize);
        Assert.Equal(512, TokenizerLoader.Load(TokenizerTestData.Tok512, 512).VocabSize);
        Assert.Throws<ArgumentOutOfRangeException>(() => Tok.TokenText(512));
    }

    /// <summary>
    /// run.c prints each generated piece and then one "\n" when generation ends; greedy-n200.txt
    /// ends with that newline, so decoding BOS + the 200 ids gives the file minus its last byte.
    /// </summary>
    [Fact]
    public void Decoding_greedy_reference_ids_reproduces_the_text_byte_for_byte()
    {
        int[] ids = ReferenceIds();
        Assert.Equal(200, ids.Length);
        byte[] expected = File.ReadAllBytes(Path.Combine(TokenizerTestData.ReferenceDir, "greedy-n200.txt"));
        Assert.Equal((byte)'\n', expected[^1]); // run.c's closing printf("\n")

        int[] withBos = [1, .. ids];
        Assert.Equal(expected[..^1], Tok.DecodeBytes(withBos));
        Assert.Equal(Encoding.UTF8.GetString(expected[..^1]), Tok.Decode(withBos));
    }

    [Fact]
    public void Encoding_greedy_reference_text_gives_the_generated_ids()
    {
        int[] ids = ReferenceIds();
        string text = File.ReadAllText(Path.Combine(TokenizerTestData.ReferenceDir, "greedy-n200.txt"), Encoding.UTF8);
        text = text[..^1]; // drop run.c's closing newline
        int[] encoded = Tok.Encode(text, addBos: true);
        Assert.Equal([1, .. ids], encoded);
    }

    [Fact]
    public void Every_corpus_line_round_trips()
    {
        foreach (string file in TokenizerTestData.CorpusFiles)
        {
            string[] lines = TokenizerTestData.Lines(file);
            for (int i = 0; i < lines.Length; i++)
            {
                int[] ids = Tok.Encode(lines[i], addBos: true);
                Assert.True(Tok.Decode(ids) == lines[i], $"{Path.GetFileName(file)} line {i + 1}: decode(encode(line)) != line: \"{lines[i]}\"");
            }
        }
    }

    [Fact]
    public void Random_text_round_trips_and_matches_naive_run_c_encoding()
    {
        int seed = Random.Shared.Next();
        var random = new Random(seed);
        for (int trial = 0; trial < 200; trial++)
        {
            string text = TokenizerTestData.RandomText(random, 40);
            int[] ids = Tok.Encode(text, addBos: true);
            Assert.True(Tok.Decode(ids) == text, $"seed {seed} trial {trial}: round trip failed for \"{text}\"");
            Assert.True(NaiveRunCEncode(text).SequenceEqual(ids), $"seed {seed} trial {trial}: heap merge differs from run.c's rescanning merge for \"{text}\"");
        }
    }

    /// <summary>Expected strings from CPython 3.11: bytes.fromhex(h).decode("utf-8", errors="replace").</summary>
    [Theory]
    [InlineData("c3", "\uFFFD")]
    [InlineData("e282", "\uFFFD")]
    [InlineData("f09f98", "\uFFFD")]
    [InlineData("f08080", "\uFFFD\uFFFD\uFFFD")]
    [InlineData("eda080", "\uFFFD\uFFFD\uFFFD")]
    [InlineData("808061", "\uFFFD\uFFFDa")]
    [InlineData("c0af", "\uFFFD\uFFFD")]
    [InlineData("f4908080", "\uFFFD\uFFFD\uFFFD\uFFFD")]
    [InlineData("61e282ace262", "a\u20AC\uFFFDb")]
    public void Invalid_utf8_from_byte_tokens_decodes_as_python_replace(string hex, string expected)
    {
        int[] ids = [1, .. Convert.FromHexString(hex).Select(b => b + 3)];
        Assert.Equal(Convert.FromHexString(hex), Tok.DecodeBytes(ids));
        Assert.Equal(expected, Tok.Decode(ids));
    }

    [Fact]
    public void Empty_text_is_just_bos()
    {
        Assert.Equal([1], Tok.Encode("", addBos: true));
        Assert.Empty(Tok.Encode("", addBos: false));
        Assert.Equal("", Tok.Decode([1]));
        // Without BOS, run.c keeps the dummy-prefix space: the leading space is only dropped after BOS.
        Assert.Equal(" Once", Tok.Decode(Tok.Encode("Once", addBos: false)));
    }

    [Fact]
    public void Full_corpus_round_trips_in_one_call()
    {
        string text = File.ReadAllText(TokenizerTestData.CorpusFiles[0]);
        int[] ids = Tok.Encode(text, addBos: true);
        Assert.Equal(text, Tok.Decode(ids));
    }

    /// <summary>
    /// An independent, literal transcription of run.c's encode loop (rescan every adjacent pair,
    /// concatenate the two pieces, look the string up, keep the first best score) as the oracle for
    /// the heap-based merge.
    /// </summary>
    private static readonly Lazy<(List<byte[]> Pieces, List<float> Scores, Dictionary<string, int> Lookup)> rawTok512 = new(() =>
    {
        var pieces = new List<byte[]>();
        var scores = new List<float>();
        using (var reader = new BinaryReader(File.OpenRead(TokenizerTestData.Tok512)))
        {
            reader.ReadInt32();
            for (int i = 0; i < 512; i++) { scores.Add(reader.ReadSingle()); pieces.Add(reader.ReadBytes(reader.ReadInt32())); }
        }
        var lookup = new Dictionary<string, int>();
        for (int i = 0; i < pieces.Count; i++) lookup.TryAdd(Convert.ToHexString(pieces[i]), i);
        return (pieces, scores, lookup);
    });

    private static int[] NaiveRunCEncode(string text)
    {
        var (pieces, scores, lookup) = rawTok512.Value;
        int Lookup(byte[] s) => lookup.TryGetValue(Convert.ToHexString(s), out int id) ? id : -1;

        var tokens = new List<int> { 1 };
        byte[] utf8 = Encoding.UTF8.GetBytes(text);
        if (utf8.Length > 0) tokens.Add(Lookup(" "u8.ToArray()));
        var buffer = new List<byte>();
        for (int c = 0; c < utf8.Length; c++)
        {
            if ((utf8[c] & 0xC0) != 0x80) buffer.Clear();
            buffer.Add(utf8[c]);
            if (c + 1 < utf8.Length && (utf8[c + 1] & 0xC0) == 0x80 && buffer.Count < 4) continue;
            int id = Lookup(buffer.ToArray());
            if (id != -1) tokens.Add(id); else tokens.AddRange(buffer.Select(b => b + 3));
            buffer.Clear();
        }
        while (true)
        {
            float bestScore = -1e10f;
            int bestId = -1, bestIndex = -1;
            for (int i = 0; i < tokens.Count - 1; i++)
            {
                int id = Lookup([.. pieces[tokens[i]], .. pieces[tokens[i + 1]]]);
                if (id != -1 && scores[id] > bestScore) { bestScore = scores[id]; bestId = id; bestIndex = i; }
            }
            if (bestIndex == -1) break;
            tokens[bestIndex] = bestId;
            tokens.RemoveAt(bestIndex + 1);
        }
        return tokens.ToArray();
    }
}
