using System.Numerics.Tensors;
using System.Runtime.Intrinsics;
using FeatureLens.Runtime.Kernels;

namespace FeatureLens.Saes.Training;

/// <summary>
/// Trains a standard (ReLU + decoder-norm-weighted L1), TopK (+ AuxK) or JumpReLU (L0, straight-through
/// threshold) SAE with Adam. Forward and backward are written out by hand over <see cref="Gemm"/>; see
/// <see cref="SaeTrainingOptions"/> for the exact losses.
/// <para>Shapes: x is (n, d_in) with d = d_in and m = d_sae; W_enc (d, m); W_dec (m, d_out); pre, f (n, m). An SAE has
/// d_out = d_in and reconstructs its input; a transcoder (<see cref="SaeTrainingOptions.Transcoder"/>) reads rows that hold
/// its input (d_in) followed by its target (d_out) and fits x̂ = decode(encode(x_in)) (+ x_in·W_skipᵀ with the skip
/// connection, W_skip (d_out, d_in)) to the target. The skip path is handled by fitting the rest to target − x_in·W_skipᵀ.</para>
/// <para>Standard and JumpReLU run dense in blocks of rows (five GEMMs per block, vectorised elementwise passes
/// between them); a standard block whose latents are at most 5 % active skips the four GEMMs after the encoder and
/// is done per active latent, as TopK is. TopK is sparse after the encoder GEMM: the decoder, both weight gradients and the AuxK term touch only the k (and k_aux) selected
/// latents of each row, grouped per latent so every gradient row is summed by one thread in row order.</para>
/// <para>Every reduction has a fixed order that depends on neither the thread count nor scheduling, so the
/// same seed and data give bit-identical weights.</para>
/// </summary>
public sealed partial class SaeTrainer
{
    const int DenseBlockRows = 512, SparseBlockRows = 1024, ColumnChunk = 1024;
    /// <summary>Standard SAE: a block of rows whose fraction of active latents is at most this is done sparsely
    /// (per active latent) instead of with the four dense GEMMs after the encoder.</summary>
    const double SparseMaxDensity = 0.05;

    readonly SaeTrainingOptions _o;
    readonly int _d, _dOut, _m;
    readonly bool _topK, _jump, _transcoder;
    readonly float[] _wEnc, _bEnc, _wDec, _bDec;
    /// <summary>(d_out, d_in), transcoders with the skip connection only.</summary>
    readonly float[]? _wSkip, _mWSkip, _vWSkip;
    float[]? _gWSkip;
    readonly float[]? _logTheta, _theta;

    // gradients; _gWEnc is (d, m) after the dense path and (m, d) — transposed — after the TopK path
    float[]? _gWEnc, _gBEnc, _gWDec, _gBDec, _gLogTheta;
    bool _gWEncTransposed;

    // Adam moments, same layouts as the parameters
    readonly float[] _mWEnc, _vWEnc, _mBEnc, _vBEnc, _mWDec, _vWDec, _mBDec, _vBDec;
    readonly float[]? _mLogTheta, _vLogTheta;

    long _step, _tokens;
    readonly long[] _sinceFired, _fireCount;
    long _countedTokens;
    readonly TrainingRng _rng;
    float _normScale;

    // per-step scratch
    // _s: encoder input (n, d_in); _x: target (n, d_out), minus the skip path; _g, _h: (n, d_out)
    float[] _x = [], _s = [], _g = [], _h = [];
    float[] _pre = [], _f = [], _df = [];
    float[]? _gWEncSpare;
    double[] _rowErr = [];
    readonly int[] _batchFires;

    /// <summary>The live model (its arrays are updated in place by every step). It works on inputs multiplied by
    /// <see cref="NormScale"/>; <see cref="ExportSae"/> gives the copy that takes raw activations.</summary>
    public Sae Sae { get; }
    public SaeTrainingOptions Options => _o;
    /// <summary>Steps completed.</summary>
    public long StepCount => _step;
    /// <summary>Tokens trained on.</summary>
    public long TokensSeen => _tokens;
    /// <summary>Input scale (1 without normalisation; NaN until estimated when ExpectedAverageOnlyIn).</summary>
    public float NormScale => _normScale;

    public SaeTrainer(SaeTrainingOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        _o = options;
        _d = options.DIn; _m = options.DSae;
        _transcoder = options.Transcoder;
        _dOut = _transcoder && options.DOut > 0 ? options.DOut : _d;
        _topK = options.Architecture == SaeArchitecture.TopK;
        _jump = options.Architecture == SaeArchitecture.JumpRelu;
        _rng = new TrainingRng(options.Seed);
        _normScale = options.Normalization == ActivationNormalization.None ? 1f : float.NaN;

        long dm = (long)_d * _m, mo = (long)_m * _dOut;
        _wEnc = new float[dm]; _wDec = new float[mo]; _bEnc = new float[_m]; _bDec = new float[_dOut];
        // W_dec rows: random directions of norm DecoderInitNorm (1 for TopK); W_enc = W_decᵀ (SAELens, EleutherAI).
        // Transcoders: W_enc's columns are drawn independently (in a space of another width), with the same norm.
        double initNorm = _topK ? 1.0 : options.DecoderInitNorm;
        for (int j = 0; j < _m; j++)
        {
            var row = _wDec.AsSpan(j * _dOut, _dOut);
            RandomDirection(row, initNorm);
            if (!_transcoder) { for (int i = 0; i < _d; i++) _wEnc[(long)i * _m + j] = row[i]; continue; }
            var col = new float[_d];
            RandomDirection(col, initNorm);
            for (int i = 0; i < _d; i++) _wEnc[(long)i * _m + j] = col[i];
        }
        if (_transcoder && options.SkipConnection)
        {
            // zero-initialised, as circuit-tracer and SAELens's skip transcoders
            _wSkip = new float[(long)_dOut * _d]; _mWSkip = new float[_wSkip.Length]; _vWSkip = new float[_wSkip.Length];
        }
        if (_jump)
        {
            _logTheta = new float[_m]; _theta = new float[_m];
            Array.Fill(_logTheta, (float)Math.Log(options.JumpReluInitThreshold));
            TensorPrimitives.Exp(_logTheta, _theta);
            _mLogTheta = new float[_m]; _vLogTheta = new float[_m];
        }
        _mWEnc = new float[dm]; _vWEnc = new float[dm]; _mWDec = new float[mo]; _vWDec = new float[mo];
        _mBEnc = new float[_m]; _vBEnc = new float[_m]; _mBDec = new float[_dOut]; _vBDec = new float[_dOut];
        _sinceFired = new long[_m]; _fireCount = new long[_m]; _batchFires = new int[_m];

        var cfg = new SaeConfig
        {
            Architecture = _transcoder ? SaeConfig.TranscoderOf(options.Architecture, _wSkip != null) : options.Architecture,
            DIn = _d, DSae = _m, DOut = _dOut, K = _topK ? options.K : 0,
            ApplyBDecToInput = options.ApplyBDecToInput, Normalization = options.Normalization,
            Metadata = CloneMetadata(options.Metadata), Format = "FeatureLens training",
            // a whole hook_z (heads flattened to n_heads·d_head), as SAELens's reshape_activations: hook_z
            ReshapeHookZ = options.Metadata.HookName.EndsWith("attn.hook_z", StringComparison.Ordinal) && options.Metadata.HookHeadIndex is null,
        };
        Sae = new Sae(cfg, _wEnc, _bEnc, _wDec, _bDec, threshold: _theta, wSkip: _wSkip);
    }

    /// <summary>Fills <paramref name="v"/> with a random Gaussian direction of the given norm.</summary>
    void RandomDirection(Span<float> v, double norm)
    {
        double ss = 0;
        for (int i = 0; i < v.Length; i++) { float g = (float)_rng.NextGaussian(); v[i] = g; ss += (double)g * g; }
        TensorPrimitives.Multiply(v, (float)(norm / Math.Sqrt(ss)), v);
    }

    /// <summary>Width of one row of the batch: d_in for an SAE; d_in + d_out (input, then target) for a transcoder.</summary>
    public int RowWidth => _transcoder ? _d + _dOut : _d;

    static SaeMetadata CloneMetadata(SaeMetadata m) => new SaeConfig { Metadata = m }.Clone().Metadata;

    // ───────────────────────────── schedules ─────────────────────────────

    /// <summary>Learning rate of step t (0-based): linear warm-up, then constant, then linear decay to 0 over the last LrDecaySteps.</summary>
    public double LearningRateAt(long t)
    {
        double lr = _o.LearningRate;
        if (_o.LrWarmupSteps > 0 && t < _o.LrWarmupSteps) lr *= (t + 1.0) / _o.LrWarmupSteps;
        long total = _o.TotalSteps;
        if (_o.LrDecaySteps > 0 && t >= total - _o.LrDecaySteps) lr *= Math.Max(0, total - t) / (double)_o.LrDecaySteps;
        return lr;
    }

    /// <summary>Sparsity coefficient of step t: λ (standard) or λ0 (JumpReLU) times min(1, (t+1)/L1WarmupSteps); 0 for TopK.</summary>
    public double SparsityCoefficientAt(long t)
    {
        double c = _o.Architecture switch
        {
            SaeArchitecture.Standard => _o.L1Coefficient,
            SaeArchitecture.JumpRelu => _o.L0Coefficient,
            _ => 0,
        };
        if (_o.L1WarmupSteps > 0 && t < _o.L1WarmupSteps) c *= (t + 1.0) / _o.L1WarmupSteps;
        return c;
    }

    /// <summary>Latents that have not fired for DeadAfterTokens tokens.</summary>
    public int DeadLatentCount()
    {
        int c = 0;
        foreach (long s in _sinceFired) if (s >= _o.DeadAfterTokens) c++;
        return c;
    }

    /// <summary>Fraction of trained tokens on which each latent fired (SAELens's feature sparsity).</summary>
    public float[] FeatureFrequency()
    {
        var f = new float[_m];
        if (_countedTokens > 0) for (int j = 0; j < _m; j++) f[j] = (float)((double)_fireCount[j] / _countedTokens);
        return f;
    }

    /// <summary>Sets the input scale (ExpectedAverageOnlyIn) to √d_in / mean‖x‖ over the given rows.</summary>
    public float EstimateNormScale(ReadOnlySpan<float> rows, int n)
    {
        if (_o.Normalization != ActivationNormalization.ExpectedAverageOnlyIn)
            throw new InvalidOperationException("the normalisation scale is only estimated with normalize_activations = expected_average_only_in");
        if (n <= 0 || rows.Length < (long)n * _d) throw new ArgumentException($"need n > 0 rows of d_in = {_d}; got n = {n} and {rows.Length} values");
        double sum = 0;
        for (int r = 0; r < n; r++) sum += TensorPrimitives.Norm(rows.Slice(r * _d, _d));
        double mean = sum / n;
        if (!(mean > 0) || !double.IsFinite(mean))
            throw new InvalidDataException($"cannot estimate the normalisation scale: the mean activation norm over {n} rows is {mean}");
        return _normScale = (float)(Math.Sqrt(_d) / mean);
    }

    // ───────────────────────────── one step ─────────────────────────────

    /// <summary>One Adam step on n rows of <see cref="RowWidth"/> (the batch). Throws <see cref="NonFiniteTrainingException"/>
    /// (leaving the model untouched) when the batch or the loss is not finite.</summary>
    public TrainStepStats Step(ReadOnlySpan<float> batch, int n)
    {
        var loss = ForwardBackward(batch, n);
        long t = _step;
        double lr = LearningRateAt(t);

        if (_topK) RemoveParallelDecoderGradient();
        var adam = new AdamScalars(lr, _o.Beta1, _o.Beta2, _o.AdamEpsilon, t + 1);
        if (_gWEncTransposed) AdamTransposed(_wEnc, _gWEnc!, _mWEnc, _vWEnc, _d, _m, adam);
        else Adam(_wEnc, _gWEnc!, _mWEnc, _vWEnc, adam);
        Adam(_bEnc, _gBEnc!, _mBEnc, _vBEnc, adam);
        Adam(_wDec, _gWDec!, _mWDec, _vWDec, adam);
        Adam(_bDec, _gBDec!, _mBDec, _vBDec, adam);
        if (_wSkip != null) Adam(_wSkip, _gWSkip!, _mWSkip!, _vWSkip!, adam);
        if (_jump)
        {
            Adam(_logTheta!, _gLogTheta!, _mLogTheta!, _vLogTheta!, adam);
            TensorPrimitives.Exp(_logTheta!, _theta!);
        }
        if (_topK) NormalizeDecoderRows();
        Sae.InvalidateDecoderNorms();

        for (int j = 0; j < _m; j++)
        {
            if (_batchFires[j] > 0) _sinceFired[j] = 0; else _sinceFired[j] += n;
            _fireCount[j] += _batchFires[j];
        }
        _countedTokens += n;
        _step++; _tokens += n;

        int resampled = 0;
        if (_o.ResampleDeadEvery > 0 && _step % _o.ResampleDeadEvery == 0) resampled = ResampleDead(n);

        return new TrainStepStats
        {
            Step = _step, Tokens = _tokens, Loss = loss.Total, Mse = loss.Mse, SparsityLoss = loss.Sparsity, AuxLoss = loss.Aux,
            L0 = loss.L0, ExplainedVariance = loss.ExplainedVariance, DeadLatents = DeadLatentCount(),
            LearningRate = lr, SparsityCoefficient = loss.Coefficient, Resampled = resampled,
        };
    }

    /// <summary>Gradients of the loss at the current weights for this batch, without updating anything
    /// (the dead-latent mask and the sparsity coefficient are those the next step would use).</summary>
    internal SaeGradients ComputeGradients(ReadOnlySpan<float> batch, int n)
    {
        var loss = ForwardBackward(batch, n);
        var gWEnc = _gWEnc!;
        if (_gWEncTransposed)
        {
            gWEnc = new float[(long)_d * _m];
            for (int j = 0; j < _m; j++)
                for (int i = 0; i < _d; i++) gWEnc[(long)i * _m + j] = _gWEnc![(long)j * _d + i];
        }
        else gWEnc = (float[])gWEnc.Clone();
        return new SaeGradients
        {
            WEnc = gWEnc, BEnc = (float[])_gBEnc!.Clone(), WDec = (float[])_gWDec!.Clone(), BDec = (float[])_gBDec!.Clone(),
            LogThreshold = _jump ? (float[])_gLogTheta!.Clone() : null,
            WSkip = _gWSkip is null ? null : (float[])_gWSkip.Clone(),
            Loss = loss.Total, Mse = loss.Mse, SparsityLoss = loss.Sparsity, AuxLoss = loss.Aux,
        };
    }

    /// <summary>JumpReLU: log θ (d_sae), the trained parameter behind <see cref="Sae.Threshold"/>.</summary>
    internal float[]? LogThreshold => _logTheta;

    /// <summary>Tests: marks latents as not having fired for <paramref name="tokens"/> tokens.</summary>
    internal void SetTokensSinceFired(int latent, long tokens) => _sinceFired[latent] = tokens;

    /// <summary>Tests: copies new values into log θ (and θ).</summary>
    internal void SetLogThreshold(ReadOnlySpan<float> logTheta)
    {
        logTheta.CopyTo(_logTheta);
        TensorPrimitives.Exp(_logTheta!, _theta!);
    }

    readonly record struct BatchLoss(double Mse, double Sparsity, double Aux, double L0, double ExplainedVariance, double Coefficient)
    {
        public double Total => Mse + Sparsity + Aux;
    }

    /// <summary>Checks and scales the batch, then runs the architecture's forward and backward, filling the gradient buffers.</summary>
    BatchLoss ForwardBackward(ReadOnlySpan<float> batch, int n)
    {
        if (n <= 0) throw new ArgumentException($"a batch needs at least one row, got n = {n}");
        int w = RowWidth;
        string rowWhat = _transcoder ? $"d_in + d_out = {_d} + {_dOut}" : $"d_in = {_d}";
        if (batch.Length < (long)n * w) throw new ArgumentException($"batch has {batch.Length} values, needs n·({rowWhat}) = {(long)n * w}");
        long stepNo = _step + 1;
        var xin = batch[..(n * w)];
        int bad = IndexOfNonFinite(xin);
        if (bad >= 0)
        {
            int col = bad % w;
            string where = !_transcoder ? $"column {col}" : col < _d ? $"input column {col}" : $"target column {col - _d}";
            throw new NonFiniteTrainingException(stepNo, "activations",
                $"step {stepNo}: activation batch has a non-finite value {xin[bad]} at row {bad / w}, {where}; training stopped before updating, the last checkpoint is untouched");
        }
        if (float.IsNaN(_normScale)) EstimateNormScale(xin, n);

        EnsureBuffers(n);
        var x = _x.AsSpan(0, n * _dOut);
        var s = _s.AsSpan(0, n * _d);
        double totalVar;
        if (_transcoder)
        {
            for (int r = 0; r < n; r++)
            {
                xin.Slice(r * w, _d).CopyTo(s.Slice(r * _d, _d));
                xin.Slice(r * w + _d, _dOut).CopyTo(x.Slice(r * _dOut, _dOut));
            }
            totalVar = TotalVariance(x, n);
            // the skip path's output is a fixed part of x̂ here: the rest is fitted to target − s·W_skipᵀ
            if (_wSkip != null) Gemm.MatMulTransB(s, _wSkip, SkipScratch(n), n, _d, _dOut);
            if (_wSkip != null) TensorPrimitives.Subtract(x, SkipScratch(n), x);
        }
        else
        {
            if (_normScale == 1f) xin.CopyTo(x); else TensorPrimitives.Multiply(xin, _normScale, x);
            x.CopyTo(s);
            if (_o.ApplyBDecToInput) for (int r = 0; r < n; r++) TensorPrimitives.Subtract(s.Slice(r * _d, _d), _bDec, s.Slice(r * _d, _d));
            totalVar = TotalVariance(x, n);
        }
        Array.Clear(_batchFires);

        double coef = SparsityCoefficientAt(_step);
        var loss = _topK ? BackwardTopK(n) : BackwardDense(n, coef);
        // W_skip (d_out, d_in): Σ_r g_r·s_rᵀ, g = (2/n)(x̂ − target) as the backward left it in _g
        if (_wSkip != null) Gemm.MatMulTransA(_g.AsSpan(0, n * _dOut), s, _gWSkip!, _dOut, n, _d);

        double sse = 0;
        for (int r = 0; r < n; r++) sse += _rowErr[r];
        loss = loss with { ExplainedVariance = totalVar > 0 ? 1 - sse / totalVar : double.NaN, Coefficient = coef };
        if (!double.IsFinite(loss.Total))
            throw new NonFiniteTrainingException(stepNo, "loss",
                $"step {stepNo}: loss is not finite (mse {loss.Mse}, sparsity {loss.Sparsity}, aux {loss.Aux}); training stopped before updating, the last checkpoint is untouched");
        return loss;
    }

    static int IndexOfNonFinite(ReadOnlySpan<float> a)
    {
        for (int i = 0; i < a.Length; i++) if (!float.IsFinite(a[i])) return i;
        return -1;
    }

    void EnsureBuffers(int n)
    {
        long nd = (long)n * _d, no = (long)n * _dOut;
        if (_s.Length < nd) _s = new float[nd];
        if (_x.Length < no) { _x = new float[no]; _g = new float[no]; if (_topK) _h = new float[no]; }
        if (_rowErr.Length < n) _rowErr = new double[n];
        _gWEnc ??= new float[(long)_d * _m]; _gWDec ??= new float[(long)_m * _dOut];
        _gBEnc ??= new float[_m]; _gBDec ??= new float[_dOut];
        if (_jump) _gLogTheta ??= new float[_m];
        if (_wSkip != null) _gWSkip ??= new float[_wSkip.Length];
    }

    float[] _skip = [];
    /// <summary>Scratch (n, d_out) for the skip path's output s·W_skipᵀ.</summary>
    Span<float> SkipScratch(int n)
    {
        long no = (long)n * _dOut;
        if (_skip.Length < no) _skip = new float[no];
        return _skip.AsSpan(0, (int)no);
    }

    /// <summary>Σ_r ‖x_r − mean(x)‖² (x is (n, d)).</summary>
    double TotalVariance(ReadOnlySpan<float> x, int n)
    {
        var mean = new double[_dOut];
        for (int r = 0; r < n; r++) { var row = x.Slice(r * _dOut, _dOut); for (int i = 0; i < _dOut; i++) mean[i] += row[i]; }
        for (int i = 0; i < _dOut; i++) mean[i] /= n;
        double tv = 0;
        for (int r = 0; r < n; r++) { var row = x.Slice(r * _dOut, _dOut); for (int i = 0; i < _dOut; i++) { double v = row[i] - mean[i]; tv += v * v; } }
        return tv;
    }

    // ───────────────────────────── dense forward/backward (standard, JumpReLU) ─────────────────────────────

    /// <summary>
    /// Per block of rows (x, s are (b, d)): pre = s·W_enc + b_enc; f = act(pre); x̂ = f·W_dec + b_dec;
    /// g = (2/n)(x̂ − x); dW_dec += fᵀ·g; df = g·W_decᵀ (+ L1 term); dpre = df ⊙ act'(pre); dW_enc += sᵀ·dpre.
    /// Standard blocks with few active latents stop after f and are finished sparsely (<see cref="BackwardSparseRelu"/>).
    /// After all blocks: b_dec's gradient is Σ g − W_enc·Σ dpre (the second term when b_dec is subtracted from the input).
    /// </summary>
    BatchLoss BackwardDense(int n, double coef)
    {
        int d = _d, dOut = _dOut, m = _m;
        int block = Math.Min(n, DenseBlockRows);
        long blockLen = (long)block * m;
        // pre, f, df (b, m) live across steps; standard keeps f in place of pre (act'(pre) is f > 0 there)
        if (_pre.Length < blockLen) { _pre = new float[blockLen]; _df = new float[blockLen]; _f = _jump ? new float[blockLen] : []; }
        var pre = _pre; var f = _jump ? _f : _pre; var df = _df;
        var gWEnc = _gWEnc!; var gWDec = _gWDec!; var gBEnc = _gBEnc!; var gBDec = _gBDec!;
        Array.Clear(gBEnc); Array.Clear(gBDec);
        _gWEncTransposed = false;
        float twoOverN = 2f / n;
        float lamN = (float)(coef / n);
        float eps = (float)_o.JumpReluBandwidth;
        // act(p) = p where p > θ_j (θ = 0 for ReLU), else 0
        var threshold = _jump ? _theta! : new float[m];
        // standard: ‖W_dec_j‖ weights the L1 penalty, so dpre gains λ/n·‖W_dec_j‖ where f > 0; Σ_r f_rj feeds its W_dec gradient
        var norms = _jump ? null : DecoderRowNorms();
        var l1Grad = new float[m];
        if (!_jump) for (int j = 0; j < m; j++) l1Grad[j] = lamN * norms![j];
        var colSumF = new double[m];
        var blockSumF = new float[m];
        var gTheta = _jump ? new double[m] : null;
        int chunks = (m + ColumnChunk - 1) / ColumnChunk;

        // ReLU blocks with few active latents are kept as sparse rows (CSR over the whole batch) and done after the loop
        var sparse = new SparseRows(n);
        int denseBlocks = 0;
        for (int r0 = 0; r0 < n; r0 += block)
        {
            int b = Math.Min(block, n - r0);
            var sBlk = new ReadOnlySpan<float>(_s, r0 * d, b * d);
            var xBlk = new ReadOnlySpan<float>(_x, r0 * dOut, b * dOut);
            var gBlk = new Span<float>(_g, r0 * dOut, b * dOut);
            // pre = s·W_enc (b_enc is added in the activation pass)
            Gemm.MatMul(sBlk, _wEnc, pre.AsSpan(0, b * m), b, d, m);

            // pre += b_enc; f = act(pre); per column: fires and Σ_r f (fixed column chunks → the same sums whatever the thread count)
            long firesBefore = 0;
            for (int j = 0; j < m; j++) firesBefore += _batchFires[j];
            ForChunks(chunks, c =>
            {
                int j0 = c * ColumnChunk, j1 = Math.Min(m, j0 + ColumnChunk);
                ActivateColumns(pre, f, _bEnc, threshold, b, m, j0, j1, blockSumF, _batchFires);
                for (int j = j0; j < j1; j++) colSumF[j] += blockSumF[j];
            });
            long active = -firesBefore;
            for (int j = 0; j < m; j++) active += _batchFires[j];
            if (!_jump && active <= SparseMaxDensity * b * m)
            {
                sparse.Append(f, r0, b, m, active);
                continue;
            }
            bool accumulate = denseBlocks++ > 0;

            // x̂ = f·W_dec + b_dec; e = x̂ − x; g = (2/n)·e
            Gemm.MatMul(f.AsSpan(0, b * m), _wDec, gBlk, b, m, dOut);
            for (int r = 0; r < b; r++)
            {
                var gr = gBlk.Slice(r * dOut, dOut);
                TensorPrimitives.Add(gr, _bDec, gr);
                TensorPrimitives.Subtract(gr, xBlk.Slice(r * dOut, dOut), gr);
                _rowErr[r0 + r] = TensorPrimitives.Dot(gr, gr);
                TensorPrimitives.Multiply(gr, twoOverN, gr);
                TensorPrimitives.Add(gBDec, gr, gBDec);
            }
            // dW_dec (m, d_out) += fᵀ·g;  df (b, m) = g·W_decᵀ
            Gemm.MatMulTransA(f.AsSpan(0, b * m), gBlk, gWDec, m, b, dOut, accumulate);
            Gemm.MatMulTransB(gBlk, _wDec, df.AsSpan(0, b * m), b, dOut, m);

            // dpre = df ⊙ act'(pre) (+ sparsity terms), in place in df; db_enc = Σ_r dpre
            ForChunks(chunks, c =>
            {
                int j0 = c * ColumnChunk, j1 = Math.Min(m, j0 + ColumnChunk);
                if (_jump) JumpDpreColumns(pre, df, _theta!, gTheta!, gBEnc, eps, lamN, b, m, j0, j1);
                else ReluDpreColumns(f, df, l1Grad, gBEnc, b, m, j0, j1);
            });
            // dW_enc (d, m) += sᵀ·dpre
            Gemm.MatMulTransA(sBlk, df.AsSpan(0, b * m), gWEnc, d, b, m, accumulate);
        }
        if (sparse.Rows > 0) BackwardSparseRelu(sparse, n, l1Grad, denseBlocks > 0);

        double l0Sum = 0;
        for (int j = 0; j < m; j++) l0Sum += _batchFires[j];
        double sparsity;
        if (_jump)
        {
            for (int j = 0; j < m; j++) _gLogTheta![j] = (float)(gTheta![j] * _theta![j]);
            sparsity = coef * l0Sum / n;
        }
        else
        {
            // λ/n·Σ_r Σ_j f_rj‖W_dec_j‖ and its W_dec gradient λ/n·(Σ_r f_rj)·W_dec_j/‖W_dec_j‖
            double sparsitySum = 0;
            for (int j = 0; j < m; j++) sparsitySum += colSumF[j] * norms![j];
            sparsity = coef * sparsitySum / n;
            ParallelRows.For(m, dOut, (j0, j1) =>
            {
                for (int j = j0; j < j1; j++)
                    if (norms![j] > 0 && colSumF[j] != 0)
                    {
                        var row = new ReadOnlySpan<float>(_wDec, j * dOut, dOut);
                        TensorPrimitives.MultiplyAdd(row, (float)(lamN * colSumF[j] / norms[j]), gWDec.AsSpan(j * dOut, dOut), gWDec.AsSpan(j * dOut, dOut));
                    }
            });
        }
        FinishBDecGradient();
        double mse = 0;
        for (int r = 0; r < n; r++) mse += _rowErr[r];
        return new BatchLoss(mse / n, sparsity, 0, l0Sum / n, 0, coef);
    }

    /// <summary>Active latents (f &gt; 0) of some rows of the batch, row by row in row order (CSR).</summary>
    sealed class SparseRows(int n)
    {
        /// <summary>Rows held; <see cref="Row"/>[q] is the batch row of held row q, its entries are [Start[q], Start[q+1]).</summary>
        public int Rows;
        public readonly int[] Row = new int[n];
        public readonly int[] Start = new int[n + 1];
        public int[] Col = [];
        public float[] Val = [];

        /// <summary>Appends rows r0 … r0+b−1 of the batch, whose activations are f (b, m) with <paramref name="active"/> positive values.</summary>
        public void Append(float[] f, int r0, int b, int m, long active)
        {
            int baseQ = Rows;
            long need = Start[baseQ] + active;
            if (need > Array.MaxLength) throw new InvalidOperationException($"too many active latents in one batch ({need}) for the sparse path");
            if (Col.Length < need)
            {
                int len = (int)Math.Min(Array.MaxLength, Math.Max(need, 2L * Col.Length));
                Array.Resize(ref Col, len); Array.Resize(ref Val, len);
            }
            var counts = new int[b];
            ParallelRows.For(b, m, (a0, a1) =>
            {
                for (int r = a0; r < a1; r++) counts[r] = CountPositive(new ReadOnlySpan<float>(f, r * m, m));
            });
            for (int r = 0; r < b; r++) { Row[baseQ + r] = r0 + r; Start[baseQ + r + 1] = Start[baseQ + r] + counts[r]; }
            ParallelRows.For(b, m, (a0, a1) =>
            {
                for (int r = a0; r < a1; r++) GatherPositive(new ReadOnlySpan<float>(f, r * m, m), Start[baseQ + r], Col, Val);
            });
            Rows += b;
        }

        static int CountPositive(ReadOnlySpan<float> row)
        {
            int c = 0, j = 0;
            if (Vector512.IsHardwareAccelerated)
                for (; j + 16 <= row.Length; j += 16)
                    c += System.Numerics.BitOperations.PopCount(Vector512.GreaterThan(Vector512.Create(row.Slice(j, 16)), Vector512<float>.Zero).ExtractMostSignificantBits());
            for (; j < row.Length; j++) if (row[j] > 0) c++;
            return c;
        }

        static void GatherPositive(ReadOnlySpan<float> row, int at, int[] col, float[] val)
        {
            int j = 0;
            if (Vector512.IsHardwareAccelerated)
                for (; j + 16 <= row.Length; j += 16)
                {
                    ulong bits = Vector512.GreaterThan(Vector512.Create(row.Slice(j, 16)), Vector512<float>.Zero).ExtractMostSignificantBits();
                    while (bits != 0)
                    {
                        int t = System.Numerics.BitOperations.TrailingZeroCount(bits);
                        col[at] = j + t; val[at] = row[j + t]; at++;
                        bits &= bits - 1;
                    }
                }
            for (; j < row.Length; j++) if (row[j] > 0) { col[at] = j; val[at] = row[j]; at++; }
        }
    }

    /// <summary>
    /// Standard SAE, the rows held sparsely: x̂ = b_dec + Σ f_j·W_dec[j], g = (2/n)(x̂ − x), dpre_j = g·W_dec[j] + λ/n·‖W_dec_j‖
    /// at the active latents only (dpre is 0 elsewhere). The entries are regrouped by latent and each W_dec row gradient
    /// (Σ f·g) and W_enc column gradient (Σ dpre·s, a row of the (m, d) spare buffer) is summed by one thread in row order.
    /// When no block was dense the spare buffer becomes the (transposed) W_enc gradient; otherwise it is added to it.
    /// </summary>
    void BackwardSparseRelu(SparseRows sp, int n, float[] l1Grad, bool denseToo)
    {
        int d = _d, dOut = _dOut, m = _m, rows = sp.Rows;
        int total = sp.Start[rows];
        float twoOverN = 2f / n;
        var col = sp.Col; var val = sp.Val; var start = sp.Start; var rowOf = sp.Row;
        var dEnc = new float[total];
        ParallelRows.For(rows, (long)dOut * 4 * Math.Max(1, total / rows), (q0, q1) =>
        {
            for (int q = q0; q < q1; q++)
            {
                int r = rowOf[q];
                var g = new Span<float>(_g, r * dOut, dOut);
                _bDec.CopyTo(g);
                int e0 = start[q], e1 = start[q + 1];
                SumScaledRows(_wDec, dOut, col.AsSpan(e0, e1 - e0), val.AsSpan(e0, e1 - e0), g, accumulate: true);
                TensorPrimitives.Subtract(g, new ReadOnlySpan<float>(_x, r * dOut, dOut), g); // e = x̂ − x
                _rowErr[r] = TensorPrimitives.Dot(g, g);
                TensorPrimitives.Multiply(g, twoOverN, g);
                for (int e = start[q]; e < start[q + 1]; e++)
                    dEnc[e] = TensorPrimitives.Dot(g, new ReadOnlySpan<float>(_wDec, col[e] * dOut, dOut)) + l1Grad[col[e]];
            }
        });
        var gBDec = _gBDec!;
        for (int q = 0; q < rows; q++) TensorPrimitives.Add(gBDec, new ReadOnlySpan<float>(_g, rowOf[q] * dOut, dOut), gBDec);

        // regroup by latent (counting sort, rows ascending)
        var first = new int[m + 1];
        for (int e = 0; e < total; e++) first[col[e] + 1]++;
        for (int j = 0; j < m; j++) first[j + 1] += first[j];
        var fill = (int[])first.Clone();
        var entRow = new int[total]; var entDec = new float[total]; var entEnc = new float[total];
        for (int q = 0; q < rows; q++)
            for (int e = start[q]; e < start[q + 1]; e++)
            {
                int p = fill[col[e]]++;
                entRow[p] = rowOf[q]; entDec[p] = val[e]; entEnc[p] = dEnc[e];
            }

        var gWDec = _gWDec!; var gBEnc = _gBEnc!;
        var gWEncT = _gWEncSpare ??= new float[(long)d * m];
        ParallelRows.For(m, (long)(d + dOut) * 2 * Math.Max(1, total / m), (j0, j1) =>
        {
            for (int j = j0; j < j1; j++)
            {
                int p0 = first[j], p1 = first[j + 1];
                var rowsJ = entRow.AsSpan(p0, p1 - p0);
                SumScaledRows(_g, dOut, rowsJ, entDec.AsSpan(p0, p1 - p0), gWDec.AsSpan(j * dOut, dOut), accumulate: denseToo);
                SumScaledRows(_s, d, rowsJ, entEnc.AsSpan(p0, p1 - p0), gWEncT.AsSpan(j * d, d), accumulate: false);
                float be = 0;
                for (int p = p0; p < p1; p++) be += entEnc[p];
                gBEnc[j] += be;
            }
        });

        if (!denseToo)
        {
            (_gWEnc, _gWEncSpare) = (gWEncT, _gWEnc);
            _gWEncTransposed = true;
            return;
        }
        // some blocks were dense: add the (m, d) part into W_enc's (d, m) gradient, 16 latents at a time
        var gWEnc = _gWEnc!;
        const int B = 16;
        ParallelRows.For((m + B - 1) / B, (long)d * B, (b0, b1) =>
        {
            for (int blk = b0; blk < b1; blk++)
            {
                int j0 = blk * B, w = Math.Min(B, m - j0);
                for (int i = 0; i < d; i++)
                {
                    long o = (long)i * m + j0;
                    for (int t = 0; t < w; t++) gWEnc[o + t] += gWEncT[(long)(j0 + t) * d + i];
                }
            }
        });
    }

    /// <summary>dst (d) = (dst if accumulating, else 0) + Σ_p coef[p]·src[rows[p]·d …], one fused multiply-add per p in
    /// order for each element; 64 columns at a time are held in registers across all p.</summary>
    static void SumScaledRows(float[] src, int d, ReadOnlySpan<int> rows, ReadOnlySpan<float> coef, Span<float> dst, bool accumulate)
    {
        int i = 0, count = rows.Length;
        if (Vector512.IsHardwareAccelerated)
        {
            ref float s0 = ref System.Runtime.InteropServices.MemoryMarshal.GetArrayDataReference(src);
            for (; i + 64 <= d; i += 64)
            {
                var a0 = Vector512<float>.Zero; var a1 = a0; var a2 = a0; var a3 = a0;
                if (accumulate)
                {
                    a0 = Vector512.Create(dst.Slice(i, 16)); a1 = Vector512.Create(dst.Slice(i + 16, 16));
                    a2 = Vector512.Create(dst.Slice(i + 32, 16)); a3 = Vector512.Create(dst.Slice(i + 48, 16));
                }
                for (int p = 0; p < count; p++)
                {
                    var c = Vector512.Create(coef[p]);
                    nuint o = (nuint)((long)rows[p] * d + i);
                    a0 = Vector512.FusedMultiplyAdd(Vector512.LoadUnsafe(ref s0, o), c, a0);
                    a1 = Vector512.FusedMultiplyAdd(Vector512.LoadUnsafe(ref s0, o + 16), c, a1);
                    a2 = Vector512.FusedMultiplyAdd(Vector512.LoadUnsafe(ref s0, o + 32), c, a2);
                    a3 = Vector512.FusedMultiplyAdd(Vector512.LoadUnsafe(ref s0, o + 48), c, a3);
                }
                a0.CopyTo(dst.Slice(i, 16)); a1.CopyTo(dst.Slice(i + 16, 16));
                a2.CopyTo(dst.Slice(i + 32, 16)); a3.CopyTo(dst.Slice(i + 48, 16));
            }
        }
        for (; i < d; i++)
        {
            float a = accumulate ? dst[i] : 0f;
            for (int p = 0; p < count; p++) a = MathF.FusedMultiplyAdd(src[(long)rows[p] * d + i], coef[p], a);
            dst[i] = a;
        }
    }

    /// <summary>Columns [j0, j1) of b rows (pre, f are (b, m)): pre += b_enc; f = pre where pre &gt; θ_j, else 0;
    /// fires_j += #{r : f_rj &gt; 0}; colSum_j = Σ_r f_rj (in row order).</summary>
    static void ActivateColumns(float[] pre, float[] f, float[] bEnc, float[] threshold, int b, int m, int j0, int j1, float[] colSum, int[] fires)
    {
        Array.Clear(colSum, j0, j1 - j0);
        for (int r = 0; r < b; r++)
        {
            long o = (long)r * m;
            int j = j0;
            if (Vector512.IsHardwareAccelerated)
            {
                var zero = Vector512<float>.Zero;
                for (; j + 16 <= j1; j += 16)
                {
                    var p = Vector512.Create(pre.AsSpan((int)(o + j), 16)) + Vector512.Create(bEnc.AsSpan(j, 16));
                    var on = Vector512.GreaterThan(p, Vector512.Create(threshold.AsSpan(j, 16)));
                    var v = Vector512.ConditionalSelect(on, p, zero);
                    p.CopyTo(pre.AsSpan((int)(o + j), 16));
                    v.CopyTo(f.AsSpan((int)(o + j), 16));
                    (Vector512.Create(colSum.AsSpan(j, 16)) + v).CopyTo(colSum.AsSpan(j, 16));
                    // a true lane is all ones, −1 as an int
                    (Vector512.Create(fires.AsSpan(j, 16)) - Vector512.GreaterThan(v, zero).AsInt32()).CopyTo(fires.AsSpan(j, 16));
                }
            }
            for (; j < j1; j++)
            {
                float p = pre[o + j] + bEnc[j];
                float v = p > threshold[j] ? p : 0f;
                pre[o + j] = p; f[o + j] = v;
                colSum[j] += v;
                if (v > 0) fires[j]++;
            }
        }
    }

    /// <summary>ReLU + L1, columns [j0, j1): dpre = (df + λ/n·‖W_dec_j‖) where f &gt; 0, else 0 (in place in df); db_enc_j += Σ_r dpre_rj in row order.</summary>
    static void ReluDpreColumns(float[] f, float[] df, float[] l1Grad, float[] gBEnc, int b, int m, int j0, int j1)
    {
        for (int r = 0; r < b; r++)
        {
            long o = (long)r * m;
            int j = j0;
            if (Vector512.IsHardwareAccelerated)
            {
                var zero = Vector512<float>.Zero;
                for (; j + 16 <= j1; j += 16)
                {
                    var on = Vector512.GreaterThan(Vector512.Create(f.AsSpan((int)(o + j), 16)), zero);
                    var g = Vector512.ConditionalSelect(on, Vector512.Create(df.AsSpan((int)(o + j), 16)) + Vector512.Create(l1Grad.AsSpan(j, 16)), zero);
                    g.CopyTo(df.AsSpan((int)(o + j), 16));
                    (Vector512.Create(gBEnc.AsSpan(j, 16)) + g).CopyTo(gBEnc.AsSpan(j, 16));
                }
            }
            for (; j < j1; j++)
            {
                float g = f[o + j] > 0 ? df[o + j] + l1Grad[j] : 0f;
                df[o + j] = g;
                gBEnc[j] += g;
            }
        }
    }

    /// <summary>JumpReLU, columns [j0, j1): dpre = df where pre &gt; θ_j, else 0 (in place in df); db_enc += Σ_r dpre; and the
    /// straight-through θ gradient −(θ/ε)·df − λ0/(nε) inside the rectangle kernel |pre − θ|/ε &lt; 1/2.</summary>
    static void JumpDpreColumns(float[] pre, float[] df, float[] theta, double[] gTheta, float[] gBEnc, float eps, float lamN, int b, int m, int j0, int j1)
    {
        float lamOverEps = lamN / eps;
        for (int r = 0; r < b; r++)
        {
            long o = (long)r * m;
            int j = j0;
            if (Vector512.IsHardwareAccelerated)
            {
                var zero = Vector512<float>.Zero; var ev = Vector512.Create(eps); var le = Vector512.Create(lamOverEps);
                var lo = Vector512.Create(-0.5f); var hi = Vector512.Create(0.5f);
                for (; j + 16 <= j1; j += 16)
                {
                    var p = Vector512.Create(pre.AsSpan((int)(o + j), 16)); var gd = Vector512.Create(df.AsSpan((int)(o + j), 16));
                    var th = Vector512.Create(theta.AsSpan(j, 16));
                    var u = (p - th) / ev;
                    var band = Vector512.GreaterThan(u, lo) & Vector512.LessThan(u, hi);
                    if (band.ExtractMostSignificantBits() != 0)
                    {
                        var term = Vector512.ConditionalSelect(band, -(th / ev) * gd - le, zero);
                        var (t0, t1) = Vector512.Widen(term);
                        (Vector512.Create(gTheta.AsSpan(j, 8)) + t0).CopyTo(gTheta.AsSpan(j, 8));
                        (Vector512.Create(gTheta.AsSpan(j + 8, 8)) + t1).CopyTo(gTheta.AsSpan(j + 8, 8));
                    }
                    var g = Vector512.ConditionalSelect(Vector512.GreaterThan(p, th), gd, zero);
                    g.CopyTo(df.AsSpan((int)(o + j), 16));
                    (Vector512.Create(gBEnc.AsSpan(j, 16)) + g).CopyTo(gBEnc.AsSpan(j, 16));
                }
            }
            for (; j < j1; j++)
            {
                float p = pre[o + j], gd = df[o + j], th = theta[j];
                float u = (p - th) / eps;
                if (u > -0.5f && u < 0.5f) gTheta[j] += -(th / eps) * gd - lamOverEps;
                float g = p > th ? gd : 0f;
                df[o + j] = g;
                gBEnc[j] += g;
            }
        }
    }

    float[] DecoderRowNorms()
    {
        var norms = new float[_m];
        for (int j = 0; j < _m; j++) norms[j] = TensorPrimitives.Norm(new ReadOnlySpan<float>(_wDec, j * _dOut, _dOut));
        return norms;
    }

    /// <summary>b_dec enters through x̂ (+Σ g, already summed) and, when subtracted from the input, through s: − W_enc·(Σ_r dpre_r) = − W_enc·db_enc.</summary>
    void FinishBDecGradient()
    {
        if (!_o.ApplyBDecToInput) return;
        var gBDec = _gBDec!; var gBEnc = _gBEnc!;
        for (int i = 0; i < _d; i++) gBDec[i] -= TensorPrimitives.Dot(new ReadOnlySpan<float>(_wEnc, i * _m, _m), gBEnc);
    }

    static void ForChunks(int chunks, Action<int> body)
    {
        if (chunks == 1) { body(0); return; }
        Parallel.For(0, chunks, new ParallelOptions { MaxDegreeOfParallelism = Environment.ProcessorCount }, body);
    }

    // ───────────────────────────── sparse forward/backward (TopK) ─────────────────────────────

    /// <summary>
    /// pre = s·W_enc + b_enc (the one dense GEMM, in row blocks); per row the k largest pre (and, with dead latents,
    /// the k_aux largest among the dead). Then per row: x̂ = b_dec + Σ_i f_i·W_dec[idx_i], g = (2/n)(x̂ − x),
    /// dpre_i = g·W_dec[idx_i] where pre_i &gt; 0; AuxK: ê = Σ a_i·W_dec[aux_i], h = c·(2/n)(ê + x̂ − x),
    /// da_i = h·W_dec[aux_i]. The selections are regrouped by latent, and each latent's W_dec row gradient
    /// (Σ f·g + Σ a·h) and W_enc column gradient (Σ dpre·s, kept as a row of a (m, d) transposed buffer) is
    /// summed by one thread in row order.
    /// </summary>
    BatchLoss BackwardTopK(int n)
    {
        int d = _d, dOut = _dOut, m = _m, k = _o.K;
        // dead latents before this step (as SAELens): AuxK over the top k_aux of them
        int numDead = 0;
        for (int j = 0; j < m; j++) if (_sinceFired[j] >= _o.DeadAfterTokens) numDead++;
        int kAuxBase = Math.Max(1, dOut / 2);
        int kAux = _o.AuxKCoefficient > 0 && numDead > 0 ? Math.Min(kAuxBase, numDead) : 0;
        double auxScale = kAux > 0 ? _o.AuxKCoefficient * Math.Min(1.0, (double)numDead / kAuxBase) : 0;
        var dead = new int[numDead];
        for (int j = 0, c = 0; j < m; j++) if (_sinceFired[j] >= _o.DeadAfterTokens) dead[c++] = j;

        var idx = new int[(long)n * k]; var val = new float[(long)n * k];
        var auxIdx = new int[(long)n * kAux]; var auxVal = new float[(long)n * kAux];
        int block = Math.Min(n, SparseBlockRows);
        var pre = new float[(long)block * m];
        for (int r0 = 0; r0 < n; r0 += block)
        {
            int b = Math.Min(block, n - r0);
            Sae.PreActivations(new ReadOnlySpan<float>(_s, r0 * d, b * d), pre.AsSpan(0, b * m), b);
            ParallelRows.For(b, m, (a0, a1) =>
            {
                var tmp = kAux > 0 ? new float[numDead] : null;
                var ti = kAux > 0 ? new int[kAux] : null;
                for (int r = a0; r < a1; r++)
                {
                    var row = new ReadOnlySpan<float>(pre, r * m, m);
                    long o = (long)(r0 + r) * k;
                    TopK.Select(row, k, idx.AsSpan((int)o, k), val.AsSpan((int)o, k));
                    if (kAux == 0) continue;
                    for (int q = 0; q < numDead; q++) tmp![q] = row[dead[q]];
                    long oa = (long)(r0 + r) * kAux;
                    TopK.Select(tmp, kAux, ti, auxVal.AsSpan((int)oa, kAux));
                    for (int q = 0; q < kAux; q++) auxIdx[oa + q] = dead[ti![q]];
                }
            });
        }

        // per-row decoder, errors and latent gradients
        var dEnc = new float[(long)n * k]; var dAux = new float[(long)n * kAux];
        var auxErr = new double[n]; var rowL0 = new int[n];
        float twoOverN = 2f / n, hScale = (float)(auxScale * 2.0 / n);
        ParallelRows.For(n, (long)(k + kAux) * dOut * 2, (a0, a1) =>
        {
            var eh = kAux > 0 ? new float[dOut] : null;
            for (int r = a0; r < a1; r++)
            {
                var g = new Span<float>(_g, r * dOut, dOut);
                _bDec.CopyTo(g);
                long o = (long)r * k;
                int l0 = 0;
                for (int i = 0; i < k; i++)
                {
                    float v = val[o + i];
                    if (v > 0) { l0++; TensorPrimitives.MultiplyAdd(new ReadOnlySpan<float>(_wDec, idx[o + i] * dOut, dOut), v, g, g); }
                }
                rowL0[r] = l0;
                TensorPrimitives.Subtract(g, new ReadOnlySpan<float>(_x, r * dOut, dOut), g); // e = x̂ − x
                _rowErr[r] = TensorPrimitives.Dot(g, g);
                if (kAux > 0)
                {
                    // ê + e where the residual x − x̂ = −e is a constant
                    g.CopyTo(eh);
                    long oa = (long)r * kAux;
                    for (int i = 0; i < kAux; i++)
                    {
                        float a = auxVal[oa + i];
                        if (a > 0) TensorPrimitives.MultiplyAdd(new ReadOnlySpan<float>(_wDec, auxIdx[oa + i] * dOut, dOut), a, eh, eh);
                    }
                    auxErr[r] = TensorPrimitives.Dot(eh, eh);
                    var h = new Span<float>(_h, r * dOut, dOut);
                    TensorPrimitives.Multiply(eh, hScale, h);
                    for (int i = 0; i < kAux; i++)
                        dAux[oa + i] = auxVal[oa + i] > 0 ? TensorPrimitives.Dot(h, new ReadOnlySpan<float>(_wDec, auxIdx[oa + i] * dOut, dOut)) : 0f;
                }
                TensorPrimitives.Multiply(g, twoOverN, g);
                for (int i = 0; i < k; i++)
                    dEnc[o + i] = val[o + i] > 0 ? TensorPrimitives.Dot(g, new ReadOnlySpan<float>(_wDec, idx[o + i] * dOut, dOut)) : 0f;
            }
        });

        // regroup the active selections by latent (counting sort, rows ascending, main before aux within a row)
        var start = new int[m + 1];
        for (long e = 0; e < (long)n * k; e++) if (val[e] > 0) start[idx[e] + 1]++;
        for (long e = 0; e < (long)n * kAux; e++) if (auxVal[e] > 0) start[auxIdx[e] + 1]++;
        for (int j = 0; j < m; j++) start[j + 1] += start[j];
        int total = start[m];
        var entRow = new int[total]; var entDec = new float[total]; var entEnc = new float[total]; var entAux = new bool[total];
        var fill = (int[])start.Clone();
        for (int r = 0; r < n; r++)
        {
            long o = (long)r * k;
            for (int i = 0; i < k; i++)
            {
                float v = val[o + i];
                if (!(v > 0)) continue;
                int j = idx[o + i], p = fill[j]++;
                entRow[p] = r; entDec[p] = v; entEnc[p] = dEnc[o + i];
                _batchFires[j]++;
            }
            long oa = (long)r * kAux;
            for (int i = 0; i < kAux; i++)
            {
                float a = auxVal[oa + i];
                if (!(a > 0)) continue;
                int j = auxIdx[oa + i], p = fill[j]++;
                entRow[p] = r; entDec[p] = a; entEnc[p] = dAux[oa + i]; entAux[p] = true;
            }
        }

        var gWEncT = _gWEnc!; var gWDec = _gWDec!; var gBEnc = _gBEnc!; var gBDec = _gBDec!;
        _gWEncTransposed = true;
        ParallelRows.For(m, (long)(d + dOut) * 2 * Math.Max(1, total / m), (j0, j1) =>
        {
            for (int j = j0; j < j1; j++)
            {
                var wd = gWDec.AsSpan(j * dOut, dOut); var we = gWEncT.AsSpan(j * d, d);
                wd.Clear(); we.Clear();
                float be = 0;
                for (int p = start[j]; p < start[j + 1]; p++)
                {
                    int r = entRow[p];
                    var src = entAux[p] ? new ReadOnlySpan<float>(_h, r * dOut, dOut) : new ReadOnlySpan<float>(_g, r * dOut, dOut);
                    TensorPrimitives.MultiplyAdd(src, entDec[p], wd, wd);
                    TensorPrimitives.MultiplyAdd(new ReadOnlySpan<float>(_s, r * d, d), entEnc[p], we, we);
                    be += entEnc[p];
                }
                gBEnc[j] = be;
            }
        });
        Array.Clear(gBDec);
        for (int r = 0; r < n; r++) TensorPrimitives.Add(gBDec, new ReadOnlySpan<float>(_g, r * dOut, dOut), gBDec);
        FinishBDecGradient();

        double mse = 0, aux = 0, l0 = 0;
        for (int r = 0; r < n; r++) { mse += _rowErr[r]; aux += auxErr[r]; l0 += rowL0[r]; }
        return new BatchLoss(mse / n, 0, auxScale * aux / n, l0 / n, 0, 0);
    }

    /// <summary>TopK: removes from each W_dec row's gradient its component along the row (unit-norm constraint).</summary>
    void RemoveParallelDecoderGradient()
    {
        var g = _gWDec!;
        ParallelRows.For(_m, _dOut * 4L, (j0, j1) =>
        {
            for (int j = j0; j < j1; j++)
            {
                var w = new ReadOnlySpan<float>(_wDec, j * _dOut, _dOut); var gj = g.AsSpan(j * _dOut, _dOut);
                float ww = TensorPrimitives.Dot(w, w);
                if (ww > 0) TensorPrimitives.MultiplyAdd(w, -TensorPrimitives.Dot(w, gj) / ww, gj, gj);
            }
        });
    }

    void NormalizeDecoderRows()
    {
        ParallelRows.For(_m, _dOut * 2L, (j0, j1) =>
        {
            for (int j = j0; j < j1; j++)
            {
                var w = _wDec.AsSpan(j * _dOut, _dOut);
                float nrm = TensorPrimitives.Norm(w);
                if (nrm > 0) TensorPrimitives.Divide(w, nrm, w);
            }
        });
    }

    // ───────────────────────────── Adam ─────────────────────────────

    /// <summary>torch.optim.Adam's update for step t: m ← β1·m + (1−β1)·g; v ← β2·v + (1−β2)·g²;
    /// p ← p − (lr/(1−β1ᵗ))·m / (√v/√(1−β2ᵗ) + ε).</summary>
    readonly struct AdamScalars
    {
        public readonly float B1, OneMinusB1, B2, OneMinusB2, StepSize, InvSqrtBc2, Eps;
        public AdamScalars(double lr, double b1, double b2, double eps, long t)
        {
            B1 = (float)b1; OneMinusB1 = (float)(1 - b1); B2 = (float)b2; OneMinusB2 = (float)(1 - b2);
            StepSize = (float)(lr / (1 - Math.Pow(b1, t)));
            InvSqrtBc2 = (float)(1 / Math.Sqrt(1 - Math.Pow(b2, t)));
            Eps = (float)eps;
        }
    }

    static void Adam(float[] p, float[] g, float[] mom, float[] vel, AdamScalars a)
    {
        const int Chunk = 1 << 14;
        int chunks = (p.Length + Chunk - 1) / Chunk;
        ParallelRows.For(chunks, Chunk, (c0, c1) =>
        {
            int i0 = c0 * Chunk, i1 = Math.Min(p.Length, c1 * Chunk);
            AdamRange(p.AsSpan(i0, i1 - i0), g.AsSpan(i0, i1 - i0), mom.AsSpan(i0, i1 - i0), vel.AsSpan(i0, i1 - i0), a);
        });
    }

    static void AdamRange(Span<float> p, ReadOnlySpan<float> g, Span<float> mom, Span<float> vel, AdamScalars a)
    {
        int i = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            var b1 = Vector512.Create(a.B1); var c1 = Vector512.Create(a.OneMinusB1);
            var b2 = Vector512.Create(a.B2); var c2 = Vector512.Create(a.OneMinusB2);
            var ss = Vector512.Create(a.StepSize); var ib = Vector512.Create(a.InvSqrtBc2); var ep = Vector512.Create(a.Eps);
            for (; i + 16 <= p.Length; i += 16)
            {
                var gv = Vector512.Create(g.Slice(i, 16));
                var mv = b1 * Vector512.Create(mom.Slice(i, 16)) + c1 * gv;
                var vv = b2 * Vector512.Create(vel.Slice(i, 16)) + c2 * (gv * gv);
                var pv = Vector512.Create(p.Slice(i, 16)) - ss * mv / (Vector512.Sqrt(vv) * ib + ep);
                mv.CopyTo(mom.Slice(i, 16)); vv.CopyTo(vel.Slice(i, 16)); pv.CopyTo(p.Slice(i, 16));
            }
        }
        for (; i < p.Length; i++)
        {
            float gi = g[i];
            float mi = a.B1 * mom[i] + a.OneMinusB1 * gi;
            float vi = a.B2 * vel[i] + a.OneMinusB2 * (gi * gi);
            mom[i] = mi; vel[i] = vi;
            p[i] -= a.StepSize * mi / (MathF.Sqrt(vi) * a.InvSqrtBc2 + a.Eps);
        }
    }

    /// <summary>Adam on W_enc (d, m) whose gradient is stored transposed, gT (m, d): 16 latents at a time, so
    /// each W_enc cache line is touched once and the 16 gradient rows stream in order.</summary>
    static void AdamTransposed(float[] p, float[] gT, float[] mom, float[] vel, int d, int m, AdamScalars a)
    {
        const int B = 16;
        int blocks = (m + B - 1) / B;
        ParallelRows.For(blocks, (long)d * B, (q0, q1) =>
        {
            Span<float> gv = stackalloc float[B];
            for (int q = q0; q < q1; q++)
            {
                int j0 = q * B, w = Math.Min(B, m - j0);
                for (int i = 0; i < d; i++)
                {
                    for (int t = 0; t < w; t++) gv[t] = gT[(long)(j0 + t) * d + i];
                    long o = (long)i * m + j0;
                    AdamRange(p.AsSpan((int)o, w), gv[..w], mom.AsSpan((int)o, w), vel.AsSpan((int)o, w), a);
                }
            }
        });
    }

    // ───────────────────────────── resampling ─────────────────────────────

    /// <summary>
    /// Standard/JumpReLU: gives every dead latent a new direction taken from an input of the last batch, drawn
    /// with probability ∝ (its squared error)² (Anthropic, "Towards Monosemanticity"): W_dec row = u times the mean
    /// alive decoder norm, W_enc column = u times 0.2 × the mean alive encoder norm, b_enc = 0, JumpReLU threshold back
    /// to its initial value; their Adam moments restart at 0.
    /// </summary>
    int ResampleDead(int n)
    {
        var dead = new List<int>();
        for (int j = 0; j < _m; j++) if (_sinceFired[j] >= _o.DeadAfterTokens) dead.Add(j);
        if (dead.Count == 0) return 0;
        var cum = new double[n];
        double acc = 0;
        for (int r = 0; r < n; r++) { acc += _rowErr[r] * _rowErr[r]; cum[r] = acc; }
        if (!(acc > 0)) return 0;

        var encNorm = new double[_m];
        for (int i = 0; i < _d; i++)
        {
            var row = new ReadOnlySpan<float>(_wEnc, i * _m, _m);
            for (int j = 0; j < _m; j++) encNorm[j] += (double)row[j] * row[j];
        }
        double aliveEnc = 0, aliveDec = 0; int alive = 0;
        var deadSet = new HashSet<int>(dead);
        for (int j = 0; j < _m; j++)
        {
            if (deadSet.Contains(j)) continue;
            aliveEnc += Math.Sqrt(encNorm[j]);
            aliveDec += TensorPrimitives.Norm(new ReadOnlySpan<float>(_wDec, j * _d, _d));
            alive++;
        }
        double encScale = 0.2 * (alive > 0 ? aliveEnc / alive : 1.0);
        double decScale = alive > 0 ? aliveDec / alive : _o.DecoderInitNorm;

        var u = new float[_d];
        foreach (int j in dead)
        {
            double target = _rng.NextDouble() * acc;
            int r = Array.BinarySearch(cum, target);
            if (r < 0) r = ~r;
            r = Math.Min(r, n - 1);
            new ReadOnlySpan<float>(_s, r * _d, _d).CopyTo(u);
            float nrm = TensorPrimitives.Norm(u);
            if (!(nrm > 0)) continue;
            TensorPrimitives.Divide(u, nrm, u);
            var wd = _wDec.AsSpan(j * _d, _d);
            TensorPrimitives.Multiply(u, (float)decScale, wd);
            for (int i = 0; i < _d; i++)
            {
                long o = (long)i * _m + j;
                _wEnc[o] = (float)(u[i] * encScale);
                _mWEnc[o] = 0; _vWEnc[o] = 0;
            }
            _mWDec.AsSpan(j * _d, _d).Clear(); _vWDec.AsSpan(j * _d, _d).Clear();
            _bEnc[j] = 0; _mBEnc[j] = 0; _vBEnc[j] = 0;
            if (_jump)
            {
                _logTheta![j] = (float)Math.Log(_o.JumpReluInitThreshold);
                _theta![j] = MathF.Exp(_logTheta[j]);
                _mLogTheta![j] = 0; _vLogTheta![j] = 0;
            }
            _sinceFired[j] = 0;
        }
        Sae.InvalidateDecoderNorms();
        return dead.Count;
    }

    // ───────────────────────────── export ─────────────────────────────

    /// <summary>A copy of the current SAE that takes raw activations: the normalisation scale s is folded in
    /// (W_enc·s, W_dec/s, b_dec/s, as SAELens's fold_activation_norm_scaling_factor).</summary>
    public Sae ExportSae()
    {
        float s = float.IsNaN(_normScale) ? 1f : _normScale;
        var wEnc = (float[])_wEnc.Clone(); var wDec = (float[])_wDec.Clone(); var bDec = (float[])_bDec.Clone();
        if (s != 1f)
        {
            TensorPrimitives.Multiply(wEnc, s, wEnc);
            TensorPrimitives.Divide(wDec, s, wDec);
            TensorPrimitives.Divide(bDec, s, bDec);
        }
        var cfg = Sae.Config.Clone();
        cfg.Format = "FeatureLens training";
        cfg.Metadata.Extra["featurelens_version"] = typeof(SaeTrainer).Assembly.GetName().Version?.ToString() ?? "0";
        cfg.Metadata.Extra["featurelens_training_steps"] = _step;
        cfg.Metadata.Extra["featurelens_training_tokens"] = _tokens;
        return new Sae(cfg, wEnc, (float[])_bEnc.Clone(), wDec, bDec, threshold: _theta is null ? null : (float[])_theta.Clone(),
            wSkip: _wSkip is null ? null : (float[])_wSkip.Clone());
    }
}
