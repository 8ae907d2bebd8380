using System.Text.Json;
using FeatureLens.Runtime.Models;

namespace FeatureLens.Saes;

/// <summary>
/// Pieces of the demo-suite build: an on-distribution corpus sampled from the model itself. Each document is
/// one story generated from BOS alone with its own random stream (seeded seed·1 000 003 + index); documents are
/// decoded 64 at a time in lock step with a batched KV cache, so the corpus is the same for the same seed.
/// </summary>
public static class SaeSuite
{
    /// <summary>
    /// Samples <paramref name="documents"/> documents of up to <paramref name="maxTokens"/> tokens each and writes
    /// them as JSONL ({"text": ...}) to <paramref name="path"/> (via a temporary file). A document ends at EOS/BOS
    /// or at the length limit. Returns the number of tokens written (BOS excluded).
    /// </summary>
    public static long SampleCorpus(HookedTransformer model, string path, int documents, int maxTokens, int seed,
        float temperature = 1f, float topP = 1f, IProgress<int>? documentsDone = null)
    {
        var tok = model.Tokenizer ?? throw new InvalidOperationException("sampling a corpus needs the model's tokenizer");
        int bos = tok.BosId ?? throw new InvalidOperationException("sampling a corpus needs a BOS token to start documents from");
        if (documents <= 0) throw new ArgumentException($"documents must be positive, got {documents}");
        var texts = new string[documents];
        var lengths = new int[documents];
        const int batch = 64;
        var cfg = model.Config;
        int capacity = Math.Min(cfg.NCtx, maxTokens + 1);
        for (int d0 = 0; d0 < documents; d0 += batch)
        {
            // one batch of documents decoded in lock step with a shared KV cache; finished ones ride along unused
            int B = Math.Min(batch, documents - d0);
            var rngs = Enumerable.Range(0, B).Select(b => new Random(unchecked(seed * 1_000_003 + d0 + b))).ToArray();
            var sampling = new SamplingOptions(temperature, topP, seed);
            var ids = Enumerable.Range(0, B).Select(_ => new List<int>()).ToArray();
            var finished = new bool[B];
            var kv = new KvCache(cfg, B, capacity);
            var input = Enumerable.Range(0, B).Select(_ => new[] { bos }).ToArray();
            for (int step = 0; step < maxTokens && kv.Length + 1 <= capacity && finished.Contains(false); step++)
            {
                var logits = model.Run(input, new RunOptions { KvCache = kv })!;
                for (int b = 0; b < B; b++)
                {
                    var last = logits.Data.AsSpan(b * cfg.VocabSize, cfg.VocabSize);
                    int next = temperature == 0 ? Generation.ArgMax(last) : Generation.Sample(last, sampling, rngs[b]);
                    if (!finished[b])
                    {
                        if (next == cfg.EosTokenId || next == cfg.BosTokenId) finished[b] = true;
                        else ids[b].Add(next);
                    }
                    input[b] = [next];
                }
            }
            for (int b = 0; b < B; b++) { texts[d0 + b] = tok.Decode(ids[b].ToArray()); lengths[d0 + b] = ids[b].Count; }
            documentsDone?.Report(d0 + B);
        }
        string tmp = path + ".tmp";
        using (var w = new StreamWriter(tmp))
            foreach (var t in texts) w.WriteLine(JsonSerializer.Serialize(new { text = t }));
        File.Move(tmp, path, overwrite: true);
        return lengths.Sum(l => (long)l);
    }
}
