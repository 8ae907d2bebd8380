using System.Text.Json;
using System.Text.RegularExpressions;
using FeatureLens.Runtime.Models;
using FeatureLens.Runtime.Tokenizers;

namespace FeatureLens.Saes.Training;

/// <summary>
/// Activations of a model at one hook, computed on the fly from text.
/// <para>Documents are tokenised without BOS and concatenated, separated by the BOS token when the tokenizer has
/// one; the stream is cut into sequences of <c>contextSize</c> tokens, each starting with BOS when
/// <c>prependBos</c> (then holding contextSize − 1 stream tokens). A short tail is dropped. Every position of every
/// sequence is one row, so Position / contextSize is the sequence index.</para>
/// <para>The model runs on <c>batchSequences</c> sequences at a time and stops after the hook's block. With a
/// shuffle seed, rows are permuted within each such buffer by a permutation that depends only on the seed and
/// the buffer's index, so <see cref="Seek"/> reproduces them exactly: it re-tokenises from the start (cheap),
/// recomputes the buffer that holds the position and skips into it.</para>
/// <para>Hooks with a head dimension (hook_z, hook_q, ...) are flattened per token to heads·d_head; attention
/// patterns and scores are not per-token activations and are refused.</para>
/// <para>With several hooks (a transcoder's input and target), one forward pass fills each row with every hook's
/// activation of that token side by side, in the order given: <see cref="HookWidths"/> says how wide each part is.</para>
/// </summary>
public sealed class ModelActivationSource : IActivationSource
{
    readonly HookedTransformer _model;
    readonly string[] _hooks;
    readonly string _describe;
    readonly IEnumerable<string> _texts;
    readonly int _ctx, _batchSeqs, _bos;
    readonly bool _prependBos;
    readonly int? _stopAtLayer;
    readonly ulong? _shuffleSeed;

    IEnumerator<int[]>? _sequences;
    float[] _buffer = [];
    int[]? _order;
    int _bufferRows, _bufferOffset;
    long _bufferIndex = -1, _position;

    public int DIn { get; }
    public long Position => _position;
    /// <summary>The hooks read, in row order.</summary>
    public IReadOnlyList<string> Hooks => _hooks;
    /// <summary>The width of each hook's part of a row (they sum to <see cref="DIn"/>).</summary>
    public IReadOnlyList<int> HookWidths { get; }

    /// <summary>Streams activations at <paramref name="hookName"/> for <paramref name="texts"/> (enumerated again on every
    /// <see cref="Seek"/>, so it must give the same documents each time).</summary>
    public ModelActivationSource(HookedTransformer model, string hookName, IEnumerable<string> texts, int contextSize,
        bool prependBos = true, int batchSequences = 8, ulong? shuffleSeed = null, string? description = null)
        : this(model, [hookName], texts, contextSize, prependBos, batchSequences, shuffleSeed, description)
    {
    }

    /// <summary>Streams rows holding the activations at every hook of <paramref name="hookNames"/> side by side (e.g. a
    /// transcoder's input hook, then its target hook), from one forward pass.</summary>
    public ModelActivationSource(HookedTransformer model, IReadOnlyList<string> hookNames, IEnumerable<string> texts, int contextSize,
        bool prependBos = true, int batchSequences = 8, ulong? shuffleSeed = null, string? description = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(hookNames);
        ArgumentNullException.ThrowIfNull(texts);
        if (model.Tokenizer == null) throw new ArgumentException("the model has no tokenizer; activations from text need one");
        if (hookNames.Count == 0) throw new ArgumentException("at least one hook is needed");
        if (hookNames.Distinct().Count() != hookNames.Count) throw new ArgumentException($"hooks are repeated: {string.Join(", ", hookNames)}");
        foreach (string hookName in hookNames)
        {
            model.CheckHookName(hookName);
            if (HookNames.IsAttentionMatrix(hookName))
                throw new ArgumentException($"'{hookName}' is an attention matrix [batch, head, q, k], not a per-token activation an SAE can train on");
        }
        if (contextSize < 2 || contextSize > model.Config.NCtx)
            throw new ArgumentOutOfRangeException(nameof(contextSize), $"context size must be in [2, {model.Config.NCtx}] (the model's context), got {contextSize}");
        if (batchSequences <= 0) throw new ArgumentOutOfRangeException(nameof(batchSequences), $"batch of sequences must be positive, got {batchSequences}");
        _model = model; _hooks = [.. hookNames]; _texts = texts; _ctx = contextSize; _batchSeqs = batchSequences;
        _prependBos = prependBos; _shuffleSeed = shuffleSeed;
        _bos = model.Tokenizer.BosId ?? -1;
        if (prependBos && _bos < 0) throw new ArgumentException("prepend_bos was asked for but the tokenizer has no BOS token");
        _stopAtLayer = 0;
        foreach (string hookName in _hooks)
        {
            var m = Regex.Match(hookName, @"^blocks\.(\d+)\.");
            int? stop = m.Success ? int.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture) + 1 : hookName is HookNames.Embed or HookNames.PosEmbed ? 0 : null;
            _stopAtLayer = stop is null || _stopAtLayer is null ? null : Math.Max(_stopAtLayer.Value, stop.Value);
        }
        var widths = new int[_hooks.Length];
        DIn = RunModel([Enumerable.Repeat(Math.Max(_bos, 0), 1).ToArray()], out _, widths);
        HookWidths = widths;
        _describe = description ?? $"{string.Join(" + ", _hooks)} of {model.Config.Architecture} model, context {contextSize}";
    }

    /// <summary>
    /// Streams activations for a corpus file: <c>.jsonl</c> (one JSON object per line, its "text" field a document)
    /// or plain text (documents separated by blank lines).
    /// </summary>
    public static ModelActivationSource FromCorpus(HookedTransformer model, string hookName, string corpusPath, int contextSize,
        bool prependBos = true, int batchSequences = 8, ulong? shuffleSeed = null)
    {
        if (!File.Exists(corpusPath)) throw new FileNotFoundException($"corpus file not found: {corpusPath}", corpusPath);
        return new ModelActivationSource(model, hookName, Corpus.Documents(corpusPath), contextSize, prependBos, batchSequences, shuffleSeed,
            $"{hookName} on {Path.GetFileName(corpusPath)}, context {contextSize}");
    }

    /// <summary><see cref="FromCorpus(HookedTransformer, string, string, int, bool, int, ulong?)"/> for several hooks side by side.</summary>
    public static ModelActivationSource FromCorpus(HookedTransformer model, IReadOnlyList<string> hookNames, string corpusPath, int contextSize,
        bool prependBos = true, int batchSequences = 8, ulong? shuffleSeed = null)
    {
        ArgumentNullException.ThrowIfNull(hookNames);
        if (!File.Exists(corpusPath)) throw new FileNotFoundException($"corpus file not found: {corpusPath}", corpusPath);
        return new ModelActivationSource(model, hookNames, Corpus.Documents(corpusPath), contextSize, prependBos, batchSequences, shuffleSeed,
            $"{string.Join(" + ", hookNames)} on {Path.GetFileName(corpusPath)}, context {contextSize}");
    }

    public string Describe() => _describe;

    public int Next(Span<float> batch, int maxRows)
    {
        if (maxRows < 0) throw new ArgumentOutOfRangeException(nameof(maxRows), $"maxRows must be >= 0, got {maxRows}");
        if (batch.Length < (long)maxRows * DIn) throw new ArgumentException($"batch holds {batch.Length} values, {maxRows} rows of {DIn} need {(long)maxRows * DIn}");
        if (_bufferIndex < 0) LoadBuffer(0);
        int written = 0;
        while (written < maxRows)
        {
            if (_bufferOffset >= _bufferRows)
            {
                if (_bufferRows == 0 || !LoadBuffer(_bufferIndex + 1)) break;
            }
            int take = Math.Min(maxRows - written, _bufferRows - _bufferOffset);
            for (int i = 0; i < take; i++)
            {
                int src = _order != null ? _order[_bufferOffset + i] : _bufferOffset + i;
                _buffer.AsSpan(src * DIn, DIn).CopyTo(batch.Slice((written + i) * DIn, DIn));
            }
            written += take; _bufferOffset += take; _position += take;
        }
        return written;
    }

    public void Seek(long position)
    {
        if (position < 0) throw new ArgumentOutOfRangeException(nameof(position), $"position must be >= 0, got {position}");
        long rowsPerBuffer = (long)_batchSeqs * _ctx;
        long target = position / rowsPerBuffer;
        _sequences?.Dispose();
        _sequences = Sequences().GetEnumerator();
        for (long s = 0; s < target * _batchSeqs; s++)
            if (!_sequences.MoveNext()) throw new ArgumentOutOfRangeException(nameof(position), $"{_describe}: position {position} is past the end of the data");
        _bufferIndex = target - 1;
        _bufferRows = 0; _bufferOffset = 0;
        int offset = (int)(position - target * rowsPerBuffer);
        bool loaded = LoadBuffer(target);
        if (offset > 0 && (!loaded || offset > _bufferRows))
            throw new ArgumentOutOfRangeException(nameof(position), $"{_describe}: position {position} is past the end of the data");
        _bufferOffset = offset;
        _position = position;
    }

    /// <summary>Runs the model on the next batch of sequences (buffer <paramref name="index"/>); false at the end.</summary>
    bool LoadBuffer(long index)
    {
        if (_sequences == null) _sequences = Sequences().GetEnumerator();
        var seqs = new List<int[]>(_batchSeqs);
        while (seqs.Count < _batchSeqs && _sequences.MoveNext()) seqs.Add(_sequences.Current);
        _bufferIndex = index; _bufferOffset = 0;
        if (seqs.Count == 0) { _bufferRows = 0; return false; }
        RunModel(seqs.ToArray(), out var data, null);
        _buffer = data;
        _bufferRows = seqs.Count * _ctx;
        _order = null;
        if (_shuffleSeed is ulong seed)
        {
            var rng = new TrainingRng(seed ^ (0x9E3779B97F4A7C15UL * (ulong)(index + 1)));
            _order = Enumerable.Range(0, _bufferRows).ToArray();
            for (int i = _bufferRows - 1; i > 0; i--)
            {
                int j = rng.NextInt(i + 1);
                (_order[i], _order[j]) = (_order[j], _order[i]);
            }
        }
        return true;
    }

    /// <summary>Runs the model up to the last hook; returns the row width and the (B·T, width) activations (the hooks side by
    /// side); <paramref name="widths"/>, when given, receives each hook's width.</summary>
    int RunModel(int[][] tokens, out float[] data, int[]? widths)
    {
        var cache = new ActivationCache { Lengths = tokens.Select(t => t.Length).ToArray() };
        var wanted = new HashSet<string>(_hooks);
        _model.Run(tokens, new RunOptions { CacheFilter = wanted.Contains, Cache = cache, ReturnLogits = false, StopAtLayer = _stopAtLayer });
        var parts = new (float[] Data, int Width)[_hooks.Length];
        long rows = 0, total = 0;
        for (int h = 0; h < _hooks.Length; h++)
        {
            if (!cache.TryGetValue(_hooks[h], out var t))
                throw new InvalidOperationException($"hook '{_hooks[h]}' did not fire (stopped after layer {_stopAtLayer})");
            long width = 1;
            for (int i = 2; i < t.Shape.Length; i++) width *= t.Shape[i];
            rows = (long)t.Shape[0] * t.Shape[1];
            parts[h] = (t.Data, checked((int)width));
            total += width;
            if (widths != null) widths[h] = (int)width;
        }
        if (parts.Length == 1)
        {
            long count = rows * total;
            data = parts[0].Data.Length == count ? parts[0].Data : parts[0].Data.AsSpan(0, (int)count).ToArray();
            return checked((int)total);
        }
        data = new float[rows * total];
        int offset = 0;
        foreach (var (src, width) in parts)
        {
            for (long r = 0; r < rows; r++) src.AsSpan((int)(r * width), width).CopyTo(data.AsSpan((int)(r * total + offset), width));
            offset += width;
        }
        return checked((int)total);
    }

    /// <summary>Token sequences of exactly contextSize tokens (see the class remarks and <see cref="Corpus.Windows"/>).</summary>
    IEnumerable<int[]> Sequences() => Corpus.Windows(_texts, _model.Tokenizer!, _ctx, _prependBos).Where(w => w.Length == _ctx);
}
