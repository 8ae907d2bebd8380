using System.Buffers.Binary;
using System.Text;
using FeatureLens.Runtime.Tokenizers;

namespace FeatureLens.Tests.Tokenizers;

/// <summary>Malformed or unsupported tokenizer files fail with a FormatException that names the file and the field.</summary>
public class TokenizerBadInputTests
{
    private static Exception LoadFails(string path, int? vocabSize = null)
    {
        var e = Assert.ThrowsAny<Exception>(() => TokenizerLoader.Load(path, vocabSize));
        Assert.True(e is FormatException or ArgumentException or FileNotFoundException, $"unexpected {e.GetType().Name}: {e.Message}");
        Assert.Contains(Path.GetFileName(path), e.Message);
        return e;
    }

    [Fact]
    public void Truncated_tokenizer_bin_at_a_random_point()
    {
        int seed = Random.Shared.Next();
        byte[] data = File.ReadAllBytes(TokenizerTestData.Tok512);
        using var temp = new TokenizerTestData.TempDir();
        string path = temp.File("tokenizer.bin");
        int cut = new Random(seed).Next(5, data.Length - 1);
        File.WriteAllBytes(path, data[..cut]);
        var e = LoadFails(path, 512);
        Assert.True(e.Message.Contains("truncated"), $"seed {seed}, cut at {cut}: {e.Message}");
        // Without a size hint a cut inside a token fails, naming the file; a cut that lands exactly between
        // two tokens is a well-formed smaller vocabulary (which the model's vocab_size hint then rejects).
        try
        {
            var shorter = TokenizerLoader.Load(path);
            Assert.True(shorter.VocabSize < 512, $"seed {seed}, cut at {cut}: loaded {shorter.VocabSize} tokens");
        }
        catch (Exception e2)
        {
            Assert.True(e2 is FormatException or ArgumentException, $"seed {seed}, cut at {cut}: unexpected {e2.GetType().Name}: {e2.Message}");
            Assert.Contains(Path.GetFileName(path), e2.Message);
        }
    }

    [Fact]
    public void Tokenizer_bin_header_only_or_empty()
    {
        using var temp = new TokenizerTestData.TempDir();
        File.WriteAllBytes(temp.File("empty.bin"), []);
        Assert.Contains("max_token_length", LoadFails(temp.File("empty.bin")).Message);
        File.WriteAllBytes(temp.File("negative.bin"), BitConverter.GetBytes(-3));
        Assert.Contains("max_token_length is -3", LoadFails(temp.File("negative.bin")).Message);
    }

    [Fact]
    public void Tokenizer_bin_with_negative_or_oversized_length()
    {
        byte[] data = File.ReadAllBytes(TokenizerTestData.Tok512);
        using var temp = new TokenizerTestData.TempDir();
        byte[] negative = (byte[])data.Clone();
        BinaryPrimitives.WriteInt32LittleEndian(negative.AsSpan(4 + 4), -5); // token 0's length
        File.WriteAllBytes(temp.File("neg.bin"), negative);
        Assert.Contains("token 0 has length -5", LoadFails(temp.File("neg.bin"), 512).Message);

        byte[] huge = (byte[])data.Clone();
        BinaryPrimitives.WriteInt32LittleEndian(huge.AsSpan(4 + 4), int.MaxValue);
        File.WriteAllBytes(temp.File("huge.bin"), huge);
        Assert.Contains("max_token_length", LoadFails(temp.File("huge.bin"), 512).Message);
    }

    [Fact]
    public void Tokenizer_bin_with_wrong_vocab_size_hint()
    {
        Assert.Contains("truncated", LoadFails(TokenizerTestData.Tok512, 513).Message);
        Assert.Contains("trailing bytes", LoadFails(TokenizerTestData.Tok512, 511).Message);
        Assert.IsType<ArgumentException>(LoadFails(TokenizerTestData.Tok512, 100));
    }

    [Fact]
    public void Tokenizer_bin_without_byte_tokens()
    {
        byte[] data = File.ReadAllBytes(TokenizerTestData.Tok512);
        using var temp = new TokenizerTestData.TempDir();
        // Rename "<0x00>" (token 3) to "<0xZZ>": llama2.c's byte fallback would then be wrong.
        int at = new ReadOnlySpan<byte>(data).IndexOf("<0x00>"u8);
        byte[] broken = (byte[])data.Clone();
        "<0xZZ>"u8.CopyTo(broken.AsSpan(at));
        File.WriteAllBytes(temp.File("nobytes.bin"), broken);
        Assert.Contains("<0x00>", LoadFails(temp.File("nobytes.bin"), 512).Message);
    }

    private static string WriteJson(TokenizerTestData.TempDir temp, string json)
    {
        string path = temp.File("tokenizer.json");
        File.WriteAllText(path, json, new UTF8Encoding(false));
        return path;
    }

    private const string TinyVocab = """{"a": 0, "b": 1, "ab": 2, "<0x00>": 3}""";

    [Fact]
    public void Tokenizer_json_that_is_not_json()
    {
        using var temp = new TokenizerTestData.TempDir();
        Assert.Contains("not valid JSON", LoadFails(WriteJson(temp, """{"model": {"type": "BPE", "vocab": {"a": 0""")).Message);
        Assert.Contains("top level", LoadFails(WriteJson(temp, "[1, 2]")).Message);
        Assert.Contains("\"model\"", LoadFails(WriteJson(temp, "{}")).Message);
    }

    [Theory]
    [InlineData("Unigram")]
    [InlineData("WordPiece")]
    [InlineData("WordLevel")]
    public void Tokenizer_json_with_unsupported_model_type(string type)
    {
        using var temp = new TokenizerTestData.TempDir();
        var e = LoadFails(WriteJson(temp, $$$"""{"model": {"type": "{{{type}}}", "vocab": [["a", 0.0]]}}"""));
        Assert.Contains("model.type", e.Message);
        Assert.Contains(type, e.Message);
        Assert.Contains("BPE", e.Message);
    }

    [Theory]
    [InlineData("normalizer", """{"type": "BertNormalizer"}""", "normalizer.type")]
    [InlineData("normalizer", """{"type": "Sequence", "normalizers": [{"type": "Lowercase"}]}""", "normalizer.normalizers[0].type")]
    [InlineData("normalizer", """{"type": "Replace", "pattern": {"Regex": " +"}, "content": "▁"}""", "normalizer.pattern")]
    [InlineData("pre_tokenizer", """{"type": "Whitespace"}""", "pre_tokenizer.type")]
    [InlineData("pre_tokenizer", """{"type": "Sequence", "pretokenizers": [{"type": "ByteLevel"}, {"type": "Digits"}]}""", "pre_tokenizer.pretokenizers[1].type")]
    [InlineData("pre_tokenizer", """{"type": "Split", "pattern": {"Regex": " "}, "behavior": "Shuffled", "invert": false}""", "pre_tokenizer.behavior")]
    [InlineData("pre_tokenizer", """{"type": "Split", "pattern": {"Regex": " "}, "behavior": "3"}""", "pre_tokenizer.behavior")]
    [InlineData("pre_tokenizer", """{"type": "Split", "pattern": {"Regex": "\\p{Han}"}, "behavior": "Isolated"}""", "pre_tokenizer.pattern.Regex")]
    [InlineData("decoder", """{"type": "WordPiece"}""", "decoder.type")]
    public void Tokenizer_json_with_unsupported_pipeline_step(string field, string value, string expectedField)
    {
        using var temp = new TokenizerTestData.TempDir();
        var e = LoadFails(WriteJson(temp, $$$"""{"{{{field}}}": {{{value}}}, "model": {"type": "BPE", "vocab": {{{TinyVocab}}}, "merges": ["a b"]}}"""));
        Assert.Contains(expectedField, e.Message);
        Assert.Contains("supported", e.Message);
    }

    [Theory]
    [InlineData("""{"Regex": "(?i:'s|'t"}""", "pre_tokenizer.pattern.Regex")]
    [InlineData("""{"Regex": "[^\\s\\p{L}"}""", "pre_tokenizer.pattern.Regex")]
    [InlineData("""{"Regex": "\\p{L"}""", "pre_tokenizer.pattern.Regex")]
    [InlineData("""{"Regex": 5}""", "pre_tokenizer.pattern")]
    [InlineData("""{"String": ""}""", "pre_tokenizer.pattern")]
    public void Tokenizer_json_with_a_malformed_split_pattern(string pattern, string expectedField)
    {
        using var temp = new TokenizerTestData.TempDir();
        var e = LoadFails(WriteJson(temp, $$$"""{"pre_tokenizer": {"type": "Split", "pattern": {{{pattern}}}, "behavior": "Isolated"}, "model": {"type": "BPE", "vocab": {{{TinyVocab}}}, "merges": ["a b"]}}"""));
        Assert.IsType<FormatException>(e);
        Assert.Contains(expectedField, e.Message);
    }

    [Fact]
    public void Tokenizer_json_merges_with_unknown_tokens_or_bad_shape()
    {
        using var temp = new TokenizerTestData.TempDir();
        var e = LoadFails(WriteJson(temp, $$$"""{"model": {"type": "BPE", "vocab": {{{TinyVocab}}}, "merges": ["a b", "b c"]}}"""));
        Assert.Contains("model.merges[1]", e.Message);
        Assert.Contains("\"c\"", e.Message);
        Assert.Contains("model.merges[0]", LoadFails(WriteJson(temp, $$$"""{"model": {"type": "BPE", "vocab": {{{TinyVocab}}}, "merges": [["a"]]}}""")).Message);
        Assert.Contains("model.merges[0]", LoadFails(WriteJson(temp, $$$"""{"model": {"type": "BPE", "vocab": {{{TinyVocab}}}, "merges": ["a b c"]}}""")).Message);
        Assert.Contains("model.vocab[\"a\"]", LoadFails(WriteJson(temp, """{"model": {"type": "BPE", "vocab": {"a": "zero"}, "merges": []}}""")).Message);
        Assert.Contains("model.dropout", LoadFails(WriteJson(temp, $$$"""{"model": {"type": "BPE", "dropout": 0.1, "vocab": {{{TinyVocab}}}, "merges": []}}""")).Message);
        Assert.Contains("no token has id", LoadFails(WriteJson(temp, """{"model": {"type": "BPE", "vocab": {"a": 0, "b": 5}, "merges": []}}""")).Message);
        Assert.Contains("byte_fallback", LoadFails(WriteJson(temp, """{"model": {"type": "BPE", "byte_fallback": true, "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": []}}""")).Message);
    }

    [Fact]
    public void Byte_level_tokenizer_json_without_the_byte_alphabet()
    {
        using var temp = new TokenizerTestData.TempDir();
        var e = LoadFails(WriteJson(temp, $$$"""{"pre_tokenizer": {"type": "ByteLevel"}, "model": {"type": "BPE", "vocab": {{{TinyVocab}}}, "merges": []}}"""));
        Assert.Contains("byte", e.Message);
    }

    [Fact]
    public void Vocab_json_and_merges_txt_errors_name_the_file()
    {
        using var temp = new TokenizerTestData.TempDir();
        var alphabet = ByteLevelBpeTokenizer.BytesToUnicode().Select((c, i) => (Token: c.ToString(), Id: i)).ToDictionary(p => p.Token, p => p.Id);
        alphabet["ab"] = 256;
        string vocab = temp.File("vocab.json"), merges = temp.File("merges.txt");
        File.WriteAllText(vocab, System.Text.Json.JsonSerializer.Serialize(alphabet));

        File.WriteAllText(merges, "#version: 0.2\na b\nb zz\n");
        var e = LoadFails(temp.Path);
        Assert.Contains("merges.txt line 3", e.Message);
        Assert.Contains("\"zz\"", e.Message);

        File.WriteAllText(merges, "#version: 0.2\na b c\n");
        Assert.Contains("merges.txt: line 2", LoadFails(temp.Path).Message);

        File.WriteAllText(merges, "#version: 0.2\na b\n");
        Assert.Equal([256], TokenizerLoader.Load(temp.Path).Encode("ab", addBos: false));

        File.WriteAllText(vocab, "{\"a\": 0,");
        Assert.Contains("vocab.json", LoadFails(temp.Path).Message);
    }

    [Fact]
    public void Missing_paths()
    {
        using var temp = new TokenizerTestData.TempDir();
        Assert.IsType<FileNotFoundException>(LoadFails(temp.File("nothing-here.bin")));
        Assert.Contains("tokenizer.json", LoadFails(temp.Path).Message);
    }
}
