using System.Text.Json;

namespace FeatureLens.Runtime.Tokenizers;

/// <summary>
/// Text for scans, training and evaluation. A <c>.jsonl</c> file holds one JSON object per line with a
/// "text" field; any other file is plain UTF-8 text whose documents are separated by blank lines.
/// </summary>
public static class Corpus
{
    /// <summary>The documents of a corpus file, streamed in order.</summary>
    public static IEnumerable<string> Documents(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"corpus file not found: {path}");
        return path.EndsWith(".jsonl", StringComparison.OrdinalIgnoreCase) || path.EndsWith(".ndjson", StringComparison.OrdinalIgnoreCase)
            ? JsonlDocuments(path) : TextDocuments(path);
    }

    static IEnumerable<string> JsonlDocuments(string path)
    {
        int lineNo = 0;
        foreach (var line in File.ReadLines(path))
        {
            lineNo++;
            if (string.IsNullOrWhiteSpace(line)) continue;
            string? text;
            try
            {
                using var doc = JsonDocument.Parse(line);
                if (doc.RootElement.ValueKind != JsonValueKind.Object || !doc.RootElement.TryGetProperty("text", out var t) || t.ValueKind != JsonValueKind.String)
                    throw new InvalidDataException($"{path}:{lineNo}: expected a JSON object with a string \"text\" field");
                text = t.GetString();
            }
            catch (JsonException e) { throw new InvalidDataException($"{path}:{lineNo}: not valid JSON ({e.Message})"); }
            if (!string.IsNullOrEmpty(text)) yield return text;
        }
    }

    static IEnumerable<string> TextDocuments(string path)
    {
        var current = new System.Text.StringBuilder();
        foreach (var line in File.ReadLines(path))
        {
            if (line.Trim().Length == 0)
            {
                if (current.Length > 0) { yield return current.ToString(); current.Clear(); }
                continue;
            }
            if (current.Length > 0) current.Append('\n');
            current.Append(line);
        }
        if (current.Length > 0) yield return current.ToString();
    }

    /// <summary>
    /// Packs the documents' tokens into windows of <paramref name="contextSize"/> tokens: documents are
    /// joined with BOS between them, and with <paramref name="prependBos"/> each window starts with BOS
    /// followed by contextSize − 1 tokens of the stream (SAELens's packing). Stops after
    /// <paramref name="maxTokens"/> tokens in all (when positive); the last partial window is dropped
    /// unless it is the only one.
    /// </summary>
    public static IEnumerable<int[]> Windows(IEnumerable<string> documents, ITokenizer tokenizer, int contextSize, bool prependBos = true, long maxTokens = 0)
    {
        if (contextSize < 2) throw new ArgumentOutOfRangeException(nameof(contextSize), $"context size must be at least 2, got {contextSize}");
        int bos = tokenizer.BosId ?? -1;
        if (prependBos && bos < 0) throw new ArgumentException("prepend_bos was asked for but the tokenizer has no BOS token");
        int body = prependBos ? contextSize - 1 : contextSize;
        var buffer = new List<int>(contextSize * 2);
        long emitted = 0;
        bool first = true, any = false;
        foreach (var doc in documents)
        {
            if (!first && bos >= 0) buffer.Add(bos);
            first = false;
            buffer.AddRange(tokenizer.Encode(doc, addBos: false));
            while (buffer.Count >= body)
            {
                var w = new int[contextSize];
                int o = 0;
                if (prependBos) w[o++] = bos;
                buffer.CopyTo(0, w, o, body);
                buffer.RemoveRange(0, body);
                any = true;
                yield return w;
                emitted += contextSize;
                if (maxTokens > 0 && emitted >= maxTokens) yield break;
            }
        }
        if (!any && buffer.Count > 0)
            yield return prependBos ? [bos, .. buffer] : buffer.ToArray();
    }
}
