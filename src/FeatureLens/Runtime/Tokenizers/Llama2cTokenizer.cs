using System.Buffers.Binary;
using System.Text;

namespace FeatureLens.Runtime.Tokenizers;

/// <summary>
/// llama2.c's tokenizer (<c>tokenizer.bin</c>): a SentencePiece BPE vocabulary with byte fallback,
/// encoded and decoded exactly as llama2.c's <c>run.c</c> does.
/// </summary>
/// <remarks>
/// File layout (little-endian): int32 max_token_length; then, for each of vocab_size tokens,
/// float32 score, int32 length, length bytes of UTF-8. The vocabulary size is not stored: llama2.c
/// takes it from the model header. Pieces use a plain space where SentencePiece has "▁"; BOS (id 1)
/// and EOS (id 2) are stored as "\n&lt;s&gt;\n" and "\n&lt;/s&gt;\n"; ids 3..258 are the byte tokens
/// &lt;0x00&gt;..&lt;0xFF&gt;.
/// </remarks>
public sealed class Llama2cTokenizer : ITokenizer
{
    private const int FirstByteTokenId = 3; // run.c: byte b is token b + 3
    private const long MaxFileBytes = 256L << 20;

    private readonly byte[][] pieces;   // id -> piece bytes
    private readonly float[] scores;    // id -> merge score (higher merges first)
    private readonly Dictionary<string, int> idOfPiece; // piece bytes as a Latin-1 string -> id
    private readonly BpeMergeTable merges;
    private readonly int spaceId;       // the dummy prefix " " (or the byte token of 0x20 when the vocab lacks it)

    /// <summary>The file this tokenizer was read from.</summary>
    public string Source { get; }

    /// <summary>Longest piece in bytes, as stored in the header.</summary>
    public int MaxTokenLength { get; }

    public int VocabSize => pieces.Length;
    public int? BosId => 1;
    public int? EosId => 2;

    private Llama2cTokenizer(string source, int maxTokenLength, byte[][] pieces, float[] scores)
    {
        Source = source;
        MaxTokenLength = maxTokenLength;
        this.pieces = pieces;
        this.scores = scores;
        idOfPiece = new Dictionary<string, int>(pieces.Length, StringComparer.Ordinal);
        for (int id = 0; id < pieces.Length; id++)
            idOfPiece.TryAdd(Latin1(pieces[id]), id); // run.c's bsearch would find either of two equal pieces; we keep the lowest id

        for (int b = 0; b < 256; b++)
        {
            string expected = $"<0x{b:X2}>";
            if (Encoding.ASCII.GetString(pieces[FirstByteTokenId + b]) != expected)
                throw new FormatException($"{source}: token {FirstByteTokenId + b} should be the byte token {expected} (llama2.c maps byte b to id b+3), found \"{Encoding.UTF8.GetString(pieces[FirstByteTokenId + b])}\".");
        }
        spaceId = idOfPiece.TryGetValue(" ", out int s) ? s : FirstByteTokenId + ' ';
        merges = BuildMerges();
    }

    /// <summary>
    /// run.c merges the adjacent pair whose concatenation is in the vocabulary with the highest
    /// score (the leftmost among equal scores). Every split of every piece into two vocabulary
    /// pieces is such a pair; its priority is the dense rank of the merged piece's score.
    /// </summary>
    private BpeMergeTable BuildMerges()
    {
        // run.c starts from best_score = -1e10 and compares with '>': lower scores (and NaN) never merge.
        var rankOfScore = new Dictionary<float, int>();
        foreach (float score in scores.Where(s => s > -1e10f).Select(s => s == 0f ? 0f : s).Distinct().OrderByDescending(s => s))
            rankOfScore[score] = rankOfScore.Count;

        var table = new BpeMergeTable();
        for (int id = 0; id < pieces.Length; id++)
        {
            if (!(scores[id] > -1e10f) || idOfPiece[Latin1(pieces[id])] != id) continue;
            string whole = Latin1(pieces[id]);
            int priority = rankOfScore[scores[id] == 0f ? 0f : scores[id]];
            for (int k = 1; k < whole.Length; k++)
                if (idOfPiece.TryGetValue(whole[..k], out int left) && idOfPiece.TryGetValue(whole[k..], out int right))
                    table.Set(left, right, priority, id);
        }
        return table;
    }

    private static string Latin1(ReadOnlySpan<byte> bytes) => Encoding.Latin1.GetString(bytes);

    /// <summary>
    /// Reads a llama2.c <c>tokenizer.bin</c>. Pass the model's vocab_size as <paramref name="vocabSize"/>
    /// (the file does not store it); without it, tokens are read until the end of the file.
    /// </summary>
    /// <exception cref="FormatException">The file is truncated, has a negative or oversized length, trailing bytes, or no byte tokens at ids 3..258.</exception>
    public static Llama2cTokenizer FromFile(string path, int? vocabSize = null)
    {
        if (vocabSize is < 259)
            throw new ArgumentException($"{path}: vocab size {vocabSize} is too small; llama2.c tokenizers have 3 special tokens and 256 byte tokens.", nameof(vocabSize));
        string name = path;
        long fileLength = new FileInfo(path).Length;
        if (fileLength > MaxFileBytes)
            throw new FormatException($"{name}: {fileLength} bytes is too large for a llama2.c tokenizer.bin (a 128k-token vocabulary is ~2 MB); is this a model checkpoint?");
        byte[] data = File.ReadAllBytes(path);
        if (data.Length < 4)
            throw new FormatException($"{name}: truncated llama2.c tokenizer: {data.Length} bytes, expected at least the 4-byte max_token_length header.");
        int maxTokenLength = BinaryPrimitives.ReadInt32LittleEndian(data);
        if (maxTokenLength <= 0 || maxTokenLength > 1 << 16)
            throw new FormatException($"{name}: max_token_length is {maxTokenLength}; expected 1..65536 (is this a llama2.c tokenizer.bin?).");

        var pieceList = new List<byte[]>(vocabSize ?? 32000);
        var scoreList = new List<float>(vocabSize ?? 32000);
        int offset = 4;
        while (vocabSize is null ? offset < data.Length : pieceList.Count < vocabSize)
        {
            int id = pieceList.Count;
            if (data.Length - offset < 8)
                throw new FormatException($"{name}: truncated at token {id} (byte offset {offset}): expected float32 score and int32 length, {data.Length - offset} bytes left" + (vocabSize is null ? "." : $"; vocab_size {vocabSize} needs {vocabSize} tokens."));
            float score = BinaryPrimitives.ReadSingleLittleEndian(data.AsSpan(offset));
            int length = BinaryPrimitives.ReadInt32LittleEndian(data.AsSpan(offset + 4));
            offset += 8;
            if (length < 0 || length > maxTokenLength)
                throw new FormatException($"{name}: token {id} has length {length}; expected 0..max_token_length ({maxTokenLength}).");
            if (data.Length - offset < length)
                throw new FormatException($"{name}: truncated in token {id}: length {length} but only {data.Length - offset} bytes left.");
            pieceList.Add(data.AsSpan(offset, length).ToArray());
            scoreList.Add(score);
            offset += length;
        }
        if (offset != data.Length)
            throw new FormatException($"{name}: {data.Length - offset} trailing bytes after {pieceList.Count} tokens; the vocab_size given ({vocabSize}) does not match the file.");
        if (pieceList.Count < FirstByteTokenId + 256)
            throw new FormatException($"{name}: only {pieceList.Count} tokens; a llama2.c tokenizer has at least 259 (<unk>, <s>, </s> and 256 byte tokens).");
        return new Llama2cTokenizer(path, maxTokenLength, pieceList.ToArray(), scoreList.ToArray());
    }

    /// <summary>The piece's bytes as stored (a space where SentencePiece writes "▁").</summary>
    public ReadOnlySpan<byte> PieceBytes(int id) => pieces[CheckId(id)];

    /// <summary>The piece's merge score.</summary>
    public float Score(int id) => scores[CheckId(id)];

    /// <summary>
    /// run.c's encode: optional BOS; a dummy prefix " " when the text is not empty; each UTF-8 code
    /// point becomes its piece or, when the vocabulary lacks it, one byte token per byte; then
    /// best-score pair merges (BOS takes part in them, as in run.c). A NUL character is encoded as
    /// a byte token where run.c would stop reading the C string.
    /// </summary>
    public int[] Encode(string text, bool addBos)
    {
        ArgumentNullException.ThrowIfNull(text);
        byte[] utf8 = Encoding.UTF8.GetBytes(text); // lone surrogates become EF BF BD
        var symbols = new List<int>(utf8.Length + 2);
        if (addBos) symbols.Add(1);
        if (utf8.Length > 0) symbols.Add(spaceId);

        // Group bytes into code points as run.c does: a new group starts at every byte that is not
        // a continuation byte (10xxxxxx), and a group holds at most 4 bytes.
        int start = 0;
        while (start < utf8.Length)
        {
            int end = start + 1;
            while (end < utf8.Length && (utf8[end] & 0xC0) == 0x80 && end - start < 4) end++;
            if (idOfPiece.TryGetValue(Latin1(utf8.AsSpan(start, end - start)), out int id))
                symbols.Add(id);
            else
                for (int i = start; i < end; i++) symbols.Add(utf8[i] + FirstByteTokenId);
            start = end;
        }
        return merges.Merge(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(symbols));
    }

    /// <summary>
    /// run.c's decode of a sequence: BOS and EOS print nothing; the piece right after BOS loses its
    /// leading space; &lt;0xNN&gt; byte tokens are raw bytes; other pieces print as stored.
    /// </summary>
    public byte[] DecodeBytes(ReadOnlySpan<int> ids)
    {
        var output = new List<byte>(ids.Length * 4);
        int previous = -1;
        foreach (int id in ids)
        {
            CheckId(id);
            if (id == BosId || id == EosId) { previous = id; continue; }
            ReadOnlySpan<byte> piece = pieces[id];
            if (previous == BosId && piece.Length > 0 && piece[0] == (byte)' ') piece = piece[1..];
            if (id >= FirstByteTokenId && id < FirstByteTokenId + 256) output.Add((byte)(id - FirstByteTokenId));
            else output.AddRange(piece);
            previous = id;
        }
        return output.ToArray();
    }

    public string Decode(ReadOnlySpan<int> ids) => TokenBytes.DecodeUtf8(DecodeBytes(ids));

    /// <summary>The piece for display: " the", "&lt;0x0A&gt;" for byte tokens, "&lt;s&gt;" and "&lt;/s&gt;" for BOS/EOS.</summary>
    public string TokenText(int id)
    {
        CheckId(id);
        if (id == BosId) return "<s>";
        if (id == EosId) return "</s>";
        if (id >= FirstByteTokenId && id < FirstByteTokenId + 256) return $"<0x{id - FirstByteTokenId:X2}>";
        return TokenBytes.Display(pieces[id]);
    }

    private int CheckId(int id) =>
        (uint)id < (uint)pieces.Length ? id : throw new ArgumentOutOfRangeException(nameof(id), id, $"token id outside the vocabulary of {pieces.Length} ({Source}).");
}
