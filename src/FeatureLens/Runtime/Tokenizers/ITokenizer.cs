namespace FeatureLens.Runtime.Tokenizers;

/// <summary>
/// Text ⇄ token ids for one model's vocabulary. Implementations are immutable after loading and
/// safe to use from several threads at once.
/// </summary>
public interface ITokenizer
{
    /// <summary>Number of token ids (the largest id plus one), added tokens included.</summary>
    int VocabSize { get; }

    /// <summary>
    /// Beginning-of-sequence id: tokenizer_config.json's bos_token when that file is beside
    /// tokenizer.json (null where it says null, as Qwen's); else Llama <c>&lt;s&gt;</c> (1), GPT-2
    /// <c>&lt;|endoftext|&gt;</c> (50256) when the vocabulary has it.
    /// </summary>
    int? BosId { get; }

    /// <summary>End-of-sequence id: tokenizer_config.json's eos_token; else Llama <c>&lt;/s&gt;</c> (2); GPT-2 <c>&lt;|endoftext|&gt;</c>.</summary>
    int? EosId { get; }

    /// <summary>
    /// Token ids of <paramref name="text"/>. <paramref name="addBos"/> encodes with special tokens:
    /// <see cref="BosId"/> first unless the tokenizer's files say not to (tokenizer_config.json's
    /// add_bos_token, else tokenizer.json's TemplateProcessing post-processor; with neither, BOS is
    /// added when known, as TransformerLens's prepend_bos), and <see cref="EosId"/> last when
    /// add_eos_token (or the template) says so.
    /// </summary>
    int[] Encode(string text, bool addBos);

    /// <summary>
    /// The text of a whole id sequence, as the family's reference decoder writes it
    /// (llama2.c drops the leading space of the piece after BOS; byte tokens become raw bytes).
    /// Invalid UTF-8 becomes U+FFFD, as Python's <c>bytes.decode("utf-8", errors="replace")</c>.
    /// Equals the UTF-8 decoding of <see cref="DecodeBytes"/>.
    /// </summary>
    string Decode(ReadOnlySpan<int> ids);

    /// <summary>One token as a display string for tables and web pages: "▁the" shows as " the", a byte token as "&lt;0x0A&gt;".</summary>
    string TokenText(int id);

    /// <summary>The exact bytes <see cref="Decode"/> decodes (for streaming generation: print bytes as they are produced).</summary>
    byte[] DecodeBytes(ReadOnlySpan<int> ids);
}
