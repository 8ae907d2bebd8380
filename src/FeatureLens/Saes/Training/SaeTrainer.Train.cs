using System.Globalization;
using System.Runtime.InteropServices;
using System.Text.Json.Nodes;
using FeatureLens.Runtime.Checkpoints;
using FeatureLens.Runtime.Tensors;
using FeatureLens.Saes.Formats;

namespace FeatureLens.Saes.Training;

public sealed partial class SaeTrainer
{
    /// <summary>Sub-folder of the output folder that holds <c>latest</c> (and, briefly, <c>previous</c>).</summary>
    public const string CheckpointsFolder = "checkpoints";
    /// <summary>Optimiser state beside the SAELens files of a checkpoint.</summary>
    public const string StateFile = "trainer_state.safetensors";
    const string StateFormat = "featurelens-sae-trainer-1";

    /// <summary>
    /// Trains to <see cref="SaeTrainingOptions.TotalSteps"/> steps on rows from <paramref name="source"/> (rewinding it
    /// when it ends), then saves the SAE (normalisation folded in, sparsity.safetensors beside it) into
    /// <see cref="SaeTrainingOptions.OutputDir"/>.
    /// <para>Checkpoints: every CheckpointEveryTokens tokens, at the end, and when <paramref name="ct"/> is cancelled
    /// (then <see cref="OperationCanceledException"/> follows), OUT/checkpoints/latest is replaced atomically (written
    /// beside it, then renamed; the previous one is kept until the new one is complete). It holds a SAELens folder plus
    /// trainer_state.safetensors: raw weights, Adam moments, step, tokens, RNG state, source position, dead-latent
    /// counters and the norm scale. When latest exists, Train resumes from it — after checking that the options
    /// match — and reaches bit-identical weights to an uninterrupted run.</para>
    /// <para>A NaN or infinity in a batch or the loss stops training with <see cref="NonFiniteTrainingException"/>
    /// before the update; the last checkpoint is left as it was.</para>
    /// </summary>
    public TrainResult Train(IActivationSource source, IProgress<TrainProgress>? progress = null, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(source);
        string outDir = _o.OutputDir ?? throw new ArgumentException("SAE training options: OutputDir must be set to train (final SAE and checkpoints go there)");
        if (source.DIn != RowWidth)
            throw new ArgumentException(_transcoder
                ? $"activation source {source.Describe()} has rows of width {source.DIn}; a transcoder needs input and target side by side, d_in + d_out = {_d} + {_dOut} = {RowWidth}"
                : $"activation source {source.Describe()} has rows of width {source.DIn}, the SAE's d_in is {_d}");
        string ckDir = Path.Combine(outDir, CheckpointsFolder);
        string? found = FindCheckpoint(ckDir);
        if (found != null) LoadState(found, source);
        else if (float.IsNaN(_normScale)) EstimateNormScale(source);
        long resumedFrom = _step, savedStep = found != null ? _step : -1;

        long total = _o.TotalSteps;
        var batch = new float[(long)_o.BatchTokens * RowWidth];
        TrainStepStats? last = null;
        while (_step < total)
        {
            if (ct.IsCancellationRequested)
            {
                if (_step != savedStep) SaveCheckpoint(ckDir, source);
                ct.ThrowIfCancellationRequested();
            }
            Fill(source, batch, _o.BatchTokens);
            last = Step(batch, _o.BatchTokens);
            string? ck = null;
            long every = _o.CheckpointEveryTokens;
            if (every > 0 && _tokens / every > (_tokens - _o.BatchTokens) / every && _step < total)
            {
                ck = SaveCheckpoint(ckDir, source);
                savedStep = _step;
            }
            progress?.Report(new TrainProgress { Stats = last, TotalSteps = total, TotalTokens = total * _o.BatchTokens, CheckpointPath = ck });
        }
        if (_step != savedStep)
        {
            string ck = SaveCheckpoint(ckDir, source);
            if (last != null) progress?.Report(new TrainProgress { Stats = last, TotalSteps = total, TotalTokens = total * _o.BatchTokens, CheckpointPath = ck });
        }
        var sae = ExportSae();
        var freq = FeatureFrequency();
        SaeWriter.Save(sae, outDir, freq);
        return new TrainResult { Sae = sae, OutputDir = outDir, Steps = _step, Tokens = _tokens, ResumedFromStep = resumedFrom, LastStep = last, FeatureFrequency = freq };
    }

    /// <summary>Reads exactly <paramref name="rows"/> rows, rewinding the source when it ends.</summary>
    static void Fill(IActivationSource source, float[] batch, int rows)
    {
        int d = source.DIn, have = 0;
        bool rewound = false;
        while (have < rows)
        {
            int got = source.Next(batch.AsSpan(have * d), rows - have);
            if (got > 0) { have += got; rewound = false; continue; }
            if (rewound) throw new InvalidDataException($"activation source {source.Describe()} yields no rows");
            source.Seek(0);
            rewound = true;
        }
    }

    /// <summary>ExpectedAverageOnlyIn: s = √d_in / mean‖x‖ over the first NormEstimationBatches batches; the source is then put back.</summary>
    void EstimateNormScale(IActivationSource source)
    {
        long start = source.Position;
        var buf = new float[(long)_o.BatchTokens * _d];
        double sum = 0; long rows = 0;
        for (int b = 0; b < _o.NormEstimationBatches; b++)
        {
            int got = source.Next(buf, _o.BatchTokens);
            if (got == 0) break;
            for (int r = 0; r < got; r++)
            {
                var row = buf.AsSpan(r * _d, _d);
                if (IndexOfNonFinite(row) >= 0)
                    throw new NonFiniteTrainingException(0, "activations", $"estimating the normalisation scale: row {source.Position - got + r} of {source.Describe()} is not finite");
                sum += System.Numerics.Tensors.TensorPrimitives.Norm(row);
            }
            rows += got;
        }
        source.Seek(start);
        if (rows == 0) throw new InvalidDataException($"activation source {source.Describe()} yields no rows to estimate the normalisation scale from");
        double mean = sum / rows;
        if (!(mean > 0)) throw new InvalidDataException($"cannot estimate the normalisation scale: mean activation norm over {rows} rows is {mean}");
        _normScale = (float)(Math.Sqrt(_d) / mean);
    }

    static string? FindCheckpoint(string ckDir)
    {
        foreach (var name in new[] { "latest", "previous" })
        {
            string dir = Path.Combine(ckDir, name);
            if (File.Exists(Path.Combine(dir, StateFile))) return dir;
        }
        return null;
    }

    /// <summary>Writes the state into a fresh folder beside latest, then swaps it in; returns latest's path.</summary>
    string SaveCheckpoint(string ckDir, IActivationSource source)
    {
        foreach (var (name, a) in Parameters())
            if (IndexOfNonFinite(a) is int i and >= 0)
                throw new NonFiniteTrainingException(_step, "weights", $"after step {_step}: parameter {name} has a non-finite value at index {i}; no checkpoint written, the last one is untouched");
        Directory.CreateDirectory(ckDir);
        foreach (var stale in Directory.EnumerateDirectories(ckDir, ".incoming-*")) TryDelete(stale);
        string incoming = Path.Combine(ckDir, $".incoming-{Guid.NewGuid():N}");
        string latest = Path.Combine(ckDir, "latest"), previous = Path.Combine(ckDir, "previous");
        try
        {
            Directory.CreateDirectory(incoming);
            SaeWriter.Save(ExportSae(), incoming, FeatureFrequency());
            WriteState(Path.Combine(incoming, StateFile), source);
            if (Directory.Exists(latest))
            {
                if (Directory.Exists(previous)) Directory.Delete(previous, recursive: true);
                Directory.Move(latest, previous);
            }
            Directory.Move(incoming, latest);
        }
        catch
        {
            TryDelete(incoming);
            throw;
        }
        TryDelete(previous);
        return latest;
    }

    static void TryDelete(string dir)
    {
        try { if (Directory.Exists(dir)) Directory.Delete(dir, recursive: true); }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
    }

    IEnumerable<(string Name, float[] Data)> Parameters()
    {
        yield return ("W_enc", _wEnc); yield return ("b_enc", _bEnc); yield return ("W_dec", _wDec); yield return ("b_dec", _bDec);
        if (_jump) yield return ("log_threshold", _logTheta!);
        if (_wSkip != null) yield return ("W_skip", _wSkip);
    }

    IEnumerable<(string Name, float[] Data, int[] Shape)> StateTensors()
    {
        int[] enc = [_d, _m], dec = [_m, _dOut], lat = [_m], inp = [_dOut];
        yield return ("param.W_enc", _wEnc, enc); yield return ("adam_m.W_enc", _mWEnc, enc); yield return ("adam_v.W_enc", _vWEnc, enc);
        yield return ("param.b_enc", _bEnc, lat); yield return ("adam_m.b_enc", _mBEnc, lat); yield return ("adam_v.b_enc", _vBEnc, lat);
        yield return ("param.W_dec", _wDec, dec); yield return ("adam_m.W_dec", _mWDec, dec); yield return ("adam_v.W_dec", _vWDec, dec);
        yield return ("param.b_dec", _bDec, inp); yield return ("adam_m.b_dec", _mBDec, inp); yield return ("adam_v.b_dec", _vBDec, inp);
        if (_jump)
        {
            yield return ("param.log_threshold", _logTheta!, lat); yield return ("adam_m.log_threshold", _mLogTheta!, lat); yield return ("adam_v.log_threshold", _vLogTheta!, lat);
        }
        if (_wSkip != null)
        {
            int[] skip = [_dOut, _d];
            yield return ("param.W_skip", _wSkip, skip); yield return ("adam_m.W_skip", _mWSkip!, skip); yield return ("adam_v.W_skip", _vWSkip!, skip);
        }
    }

    void WriteState(string path, IActivationSource source)
    {
        var w = new SafetensorsWriter();
        foreach (var (name, data, shape) in StateTensors())
            w.AddStreamed(name, DType.F32, shape, s => s.Write(MemoryMarshal.AsBytes(data.AsSpan())));
        var since = (long[])_sinceFired.Clone(); var fires = (long[])_fireCount.Clone(); var rng = _rng.GetState();
        w.AddStreamed("tokens_since_fired", DType.I64, [_m], s => s.Write(MemoryMarshal.AsBytes(since.AsSpan())));
        w.AddStreamed("fire_count", DType.I64, [_m], s => s.Write(MemoryMarshal.AsBytes(fires.AsSpan())));
        w.AddStreamed("rng_state", DType.I64, [4], s => s.Write(MemoryMarshal.AsBytes(rng.AsSpan())));
        var inv = CultureInfo.InvariantCulture;
        w.Write(path, new Dictionary<string, string>
        {
            ["format"] = StateFormat,
            ["step"] = _step.ToString(inv),
            ["tokens_seen"] = _tokens.ToString(inv),
            ["counted_tokens"] = _countedTokens.ToString(inv),
            ["source_position"] = source.Position.ToString(inv),
            ["source"] = source.Describe(),
            ["norm_scale_bits"] = BitConverter.SingleToInt32Bits(_normScale).ToString(inv),
            ["options"] = _o.Fingerprint().ToJsonString(),
        });
    }

    void LoadState(string dir, IActivationSource source)
    {
        string path = Path.Combine(dir, StateFile);
        using var f = SafetensorsFile.Open(path);
        var meta = f.Metadata;
        string Meta(string key) => meta.TryGetValue(key, out var v) ? v : throw new InvalidDataException($"{path}: metadata field '{key}' is missing");
        if (Meta("format") != StateFormat) throw new InvalidDataException($"{path}: format '{Meta("format")}', expected '{StateFormat}'");

        JsonObject saved;
        try { saved = JsonNode.Parse(Meta("options")) as JsonObject ?? throw new InvalidDataException($"{path}: 'options' is not a JSON object"); }
        catch (System.Text.Json.JsonException ex) { throw new InvalidDataException($"{path}: 'options' is not valid JSON ({ex.Message})"); }
        var now = _o.Fingerprint();
        var diffs = now.Select(kv => (kv.Key, Now: kv.Value?.ToJsonString() ?? "null", Then: saved[kv.Key]?.ToJsonString() ?? "missing"))
            .Where(t => t.Now != t.Then).Select(t => $"{t.Key}: checkpoint {t.Then}, now {t.Now}").ToList();
        if (diffs.Count > 0)
            throw new ArgumentException($"cannot resume from {dir}: it was trained with different options ({string.Join("; ", diffs)}). " +
                "Use the same options, or delete the checkpoints folder (or pick another output folder) to start afresh.");

        long Long(string key) => long.TryParse(Meta(key), NumberStyles.Integer, CultureInfo.InvariantCulture, out long v) ? v
            : throw new InvalidDataException($"{path}: metadata '{key}' = '{Meta(key)}' is not an integer");
        foreach (var (name, data, shape) in StateTensors())
        {
            if (!f.Contains(name)) throw new InvalidDataException($"{path}: tensor '{name}' is missing");
            var e = f.Entry(name);
            if (e.DType != DType.F32 || !e.Shape.AsSpan().SequenceEqual(shape))
                throw new InvalidDataException($"{path}: tensor '{name}' is {e.DType.SafetensorsName()} [{string.Join(", ", e.Shape)}], expected F32 [{string.Join(", ", shape)}]");
            MemoryMarshal.Cast<byte, float>(f.RawBytes(name)).CopyTo(data);
        }
        var since = f.ReadInt64("tokens_since_fired"); var fires = f.ReadInt64("fire_count");
        if (since.Length != _m || fires.Length != _m) throw new InvalidDataException($"{path}: dead-latent counters have {since.Length}/{fires.Length} entries, expected d_sae = {_m}");
        since.CopyTo(_sinceFired, 0); fires.CopyTo(_fireCount, 0);
        _rng.SetState(f.ReadInt64("rng_state"));
        _step = Long("step"); _tokens = Long("tokens_seen"); _countedTokens = Long("counted_tokens");
        _normScale = BitConverter.Int32BitsToSingle((int)Long("norm_scale_bits"));
        if (_jump) System.Numerics.Tensors.TensorPrimitives.Exp(_logTheta!, _theta!);
        Sae.InvalidateDecoderNorms();
        source.Seek(Long("source_position"));
    }
}
