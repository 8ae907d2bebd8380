using System.Numerics.Tensors;
using FeatureLens.Runtime.Kernels;
using Tensor = FeatureLens.Runtime.Tensors.Tensor;

namespace FeatureLens.Saes;

/// <summary>
/// A sparse autoencoder (or transcoder) held in float32, whatever dtype it was stored in.
/// x is (n, d_in); latents are (n, d_sae); reconstructions are (n, d_out).
/// <para>Encode: x → normalise (per <see cref="SaeConfig.Normalization"/>) → − b_dec (if apply_b_dec_to_input)
/// → pre = ·W_enc + b_enc → activation. Decode: acts·W_dec + b_dec → undo normalisation (+ x·W_skipᵀ for skip transcoders).</para>
/// </summary>
public sealed class Sae
{
    public SaeConfig Config { get; }
    /// <summary>(d_in, d_sae).</summary>
    public float[] WEnc { get; }
    /// <summary>(d_sae); zeros for gated SAEs, which have none.</summary>
    public float[] BEnc { get; }
    /// <summary>(d_sae, d_out).</summary>
    public float[] WDec { get; }
    /// <summary>(d_out).</summary>
    public float[] BDec { get; }
    /// <summary>(d_sae), JumpReLU only.</summary>
    public float[]? Threshold { get; }
    /// <summary>Gated only: gate bias b_gate (d_sae), magnitude log-scale r_mag (d_sae) and bias b_mag (d_sae).</summary>
    public float[]? BGate { get; }
    public float[]? RMag { get; }
    public float[]? BMag { get; }
    /// <summary>(d_out, d_in), skip transcoders only.</summary>
    public float[]? WSkip { get; }
    /// <summary>The folder or file it was loaded from, if any.</summary>
    public string? SourcePath { get; init; }

    float[]? _decoderNorms;

    public int DIn => Config.DIn;
    public int DSae => Config.DSae;
    public int DOut => Config.DOut;

    public Sae(SaeConfig config, float[] wEnc, float[]? bEnc, float[] wDec, float[] bDec,
        float[]? threshold = null, float[]? bGate = null, float[]? rMag = null, float[]? bMag = null, float[]? wSkip = null)
    {
        config.Validate("SAE config");
        Config = config;
        string arch = SaeConfig.ArchitectureName(config.Architecture);
        Need(wEnc, (long)config.DIn * config.DSae, "W_enc", $"[{config.DIn}, {config.DSae}]");
        Need(wDec, (long)config.DSae * config.DOut, "W_dec", $"[{config.DSae}, {config.DOut}]");
        Need(bDec, config.DOut, "b_dec", $"[{config.DOut}]");
        if (config.Architecture == SaeArchitecture.Gated)
        {
            Need(bGate ?? throw new InvalidDataException("gated SAE: tensor 'b_gate' is missing"), config.DSae, "b_gate", $"[{config.DSae}]");
            Need(rMag ?? throw new InvalidDataException("gated SAE: tensor 'r_mag' is missing"), config.DSae, "r_mag", $"[{config.DSae}]");
            Need(bMag ?? throw new InvalidDataException("gated SAE: tensor 'b_mag' is missing"), config.DSae, "b_mag", $"[{config.DSae}]");
            bEnc ??= new float[config.DSae];
        }
        Need(bEnc ?? throw new InvalidDataException($"{arch} SAE: tensor 'b_enc' is missing"), config.DSae, "b_enc", $"[{config.DSae}]");
        if (config.HasThreshold)
            Need(threshold ?? throw new InvalidDataException($"{arch} SAE: tensor 'threshold' is missing"), config.DSae, "threshold", $"[{config.DSae}]");
        if (config.Architecture == SaeArchitecture.SkipTranscoder)
            Need(wSkip ?? throw new InvalidDataException("skip_transcoder: tensor 'W_skip' is missing"), (long)config.DOut * config.DIn, "W_skip", $"[{config.DOut}, {config.DIn}]");
        WEnc = wEnc; BEnc = bEnc; WDec = wDec; BDec = bDec; Threshold = threshold; BGate = bGate; RMag = rMag; BMag = bMag; WSkip = wSkip;
    }

    static void Need(float[] a, long n, string name, string shape)
    {
        if (a.Length != n) throw new InvalidDataException($"tensor '{name}' has {a.Length} elements, expected {shape} = {n} from the config");
    }

    /// <summary>‖W_dec[j,:]‖ for every latent (computed once).</summary>
    public float[] DecoderNorms
    {
        get
        {
            if (_decoderNorms != null) return _decoderNorms;
            var norms = new float[DSae];
            for (int j = 0; j < DSae; j++) norms[j] = TensorPrimitives.Norm(new ReadOnlySpan<float>(WDec, j * DOut, DOut));
            return _decoderNorms = norms;
        }
    }

    /// <summary>Call after changing W_dec in place (training) so cached decoder norms are recomputed.</summary>
    public void InvalidateDecoderNorms() => _decoderNorms = null;

    // ───────────────────────────── encode ─────────────────────────────

    /// <summary>
    /// Per-token input normalisation, needed again to undo it on the output. Rows are tokens.
    /// normalised = (x − Shift)·InScale; output = recons·OutScale + Shift.
    /// </summary>
    public sealed class InputNorm
    {
        public required float[] InScale { get; init; }
        public required float[] OutScale { get; init; }
        public required float[] Shift { get; init; }
    }

    /// <summary>
    /// The encoder's input: x (n, d_in) normalised and with b_dec subtracted when configured. Returns the
    /// normalisation (null when there is none) so the decoder can undo it.
    /// </summary>
    public InputNorm? Preprocess(ReadOnlySpan<float> x, Span<float> saeIn, int n)
    {
        int d = DIn;
        CheckLen(x.Length, (long)n * d, "input");
        x[..(n * d)].CopyTo(saeIn);
        InputNorm? norm = null;
        switch (Config.Normalization)
        {
            case ActivationNormalization.ConstantNormRescale:
            {
                var inS = new float[n]; var outS = new float[n];
                float sqrtD = MathF.Sqrt(d);
                for (int r = 0; r < n; r++)
                {
                    var row = saeIn.Slice(r * d, d);
                    float nrm = TensorPrimitives.Norm(row);
                    if (nrm == 0) throw new InvalidDataException($"constant_norm_rescale: token {r} has a zero activation vector, whose norm cannot be rescaled");
                    float c = sqrtD / nrm;
                    inS[r] = c; outS[r] = 1f / c;
                    TensorPrimitives.Multiply(row, c, row);
                }
                norm = new InputNorm { InScale = inS, OutScale = outS, Shift = new float[n] };
                break;
            }
            case ActivationNormalization.LayerNorm:
            {
                var inS = new float[n]; var outS = new float[n]; var mu = new float[n];
                for (int r = 0; r < n; r++)
                {
                    var row = saeIn.Slice(r * d, d);
                    float m = TensorPrimitives.Sum(row) / d;
                    TensorPrimitives.Subtract(row, m, row);
                    // unbiased standard deviation, as torch.std
                    float std = d > 1 ? MathF.Sqrt(TensorPrimitives.SumOfSquares(row) / (d - 1)) : 0f;
                    float s = 1f / (std + 1e-5f);
                    TensorPrimitives.Multiply(row, s, row);
                    inS[r] = s; outS[r] = std; mu[r] = m;
                }
                norm = new InputNorm { InScale = inS, OutScale = outS, Shift = mu };
                break;
            }
        }
        if (Config.ApplyBDecToInput)
            for (int r = 0; r < n; r++) TensorPrimitives.Subtract(saeIn.Slice(r * d, d), BDec, saeIn.Slice(r * d, d));
        return norm;
    }

    /// <summary>
    /// Pre-activations (n, d_sae) = saeIn·W_enc + b_enc (for gated SAEs: the magnitude path, and the
    /// gate path's pre-activations go to <paramref name="gatePre"/>, which must then be (n, d_sae)).
    /// </summary>
    public void PreActivations(ReadOnlySpan<float> saeIn, Span<float> pre, int n, Span<float> gatePre = default)
    {
        int dSae = DSae;
        CheckLen(saeIn.Length, (long)n * DIn, "SAE input");
        CheckLen(pre.Length, (long)n * dSae, "pre-activations");
        Gemm.MatMul(saeIn[..(n * DIn)], WEnc, pre[..(n * dSae)], n, DIn, dSae);
        if (Config.Architecture == SaeArchitecture.Gated)
        {
            CheckLen(gatePre.Length, (long)n * dSae, "gate pre-activations");
            var scale = new float[dSae];
            TensorPrimitives.Exp(RMag!, scale);
            for (int r = 0; r < n; r++)
            {
                var p = pre.Slice(r * dSae, dSae);
                var g = gatePre.Slice(r * dSae, dSae);
                TensorPrimitives.Add(p, BGate!, g);
                // x·(W_enc ⊙ exp(r_mag)) = (x·W_enc) ⊙ exp(r_mag)
                TensorPrimitives.MultiplyAdd(p, scale, BMag!, p);
            }
        }
        else
        {
            for (int r = 0; r < n; r++) TensorPrimitives.Add(pre.Slice(r * dSae, dSae), BEnc, pre.Slice(r * dSae, dSae));
        }
    }

    /// <summary>
    /// Latent activations from pre-activations: ReLU, JumpReLU, gated (gate &gt; 0)·ReLU(mag), or TopK
    /// (k largest of pre, times decoder norms when rescaling, then ReLU). Writes (n, d_sae) into
    /// <paramref name="acts"/> and, when given, the same activations sparsely.
    /// </summary>
    public void Activate(ReadOnlySpan<float> pre, Span<float> acts, int n, ReadOnlySpan<float> gatePre = default)
    {
        int dSae = DSae;
        CheckLen(pre.Length, (long)n * dSae, "pre-activations");
        CheckLen(acts.Length, (long)n * dSae, "activations");
        switch (Config.Architecture)
        {
            case SaeArchitecture.Standard or SaeArchitecture.Transcoder or SaeArchitecture.SkipTranscoder:
                TensorPrimitives.Max(pre[..(n * dSae)], 0f, acts);
                break;
            case SaeArchitecture.JumpRelu or SaeArchitecture.JumpReluTranscoder:
                for (int r = 0; r < n; r++)
                {
                    var p = pre.Slice(r * dSae, dSae); var a = acts.Slice(r * dSae, dSae);
                    var th = Threshold!;
                    for (int j = 0; j < dSae; j++) { float v = p[j]; a[j] = v > th[j] && v > 0 ? v : 0f; }
                }
                break;
            case SaeArchitecture.Gated:
                for (int r = 0; r < n; r++)
                {
                    var p = pre.Slice(r * dSae, dSae); var g = gatePre.Slice(r * dSae, dSae); var a = acts.Slice(r * dSae, dSae);
                    for (int j = 0; j < dSae; j++) a[j] = g[j] > 0 && p[j] > 0 ? p[j] : 0f;
                }
                break;
            case SaeArchitecture.TopK:
            {
                acts[..(n * dSae)].Clear();
                int k = Config.K;
                var norms = Config.RescaleActsByDecoderNorm ? DecoderNorms : null;
                unsafe
                {
                    fixed (float* pp = pre) fixed (float* pa = acts)
                    {
                        float* ppc = pp, pac = pa;
                        ParallelRows.For(n, dSae, (r0, r1) =>
                        {
                            var idx = new int[k]; var val = new float[k];
                            var scaled = norms != null ? new float[dSae] : null;
                            for (int r = r0; r < r1; r++)
                            {
                                var row = new ReadOnlySpan<float>(ppc + (long)r * dSae, dSae);
                                if (scaled != null) { TensorPrimitives.Multiply(row, norms, scaled); row = scaled; }
                                TopK.Select(row, k, idx, val);
                                float* a = pac + (long)r * dSae;
                                for (int i = 0; i < k; i++) if (val[i] > 0) a[idx[i]] = val[i];
                            }
                        });
                    }
                }
                break;
            }
        }
    }

    /// <summary>Latent activations (n, d_sae) for inputs x (…, d_in): the usual SAELens <c>encode</c>.</summary>
    public Tensor Encode(Tensor x)
    {
        int n = Rows(x, DIn, "input");
        var acts = new Tensor(OutShape(x, DSae));
        EncodeRows(x.Data, acts.Data, n, out _);
        return acts;
    }

    /// <summary>Encodes n rows into dense activations; returns the input normalisation for decoding.</summary>
    public InputNorm? EncodeRows(ReadOnlySpan<float> x, Span<float> acts, int n, out float[] pre)
    {
        var saeIn = new float[(long)n * DIn];
        var norm = Preprocess(x, saeIn, n);
        pre = new float[(long)n * DSae];
        var gate = Config.Architecture == SaeArchitecture.Gated ? new float[(long)n * DSae] : null;
        PreActivations(saeIn, pre, n, gate);
        Activate(pre, acts, n, gate);
        return norm;
    }

    /// <summary>
    /// Sparse latent activations of x (…, d_in), computed in blocks of <paramref name="blockRows"/> tokens so
    /// that the dense (n, d_sae) matrix never exists. Only positive activations are kept.
    /// </summary>
    public SparseActivations EncodeSparse(Tensor x, int blockRows = 256)
    {
        int n = Rows(x, DIn, "input");
        var builder = new SparseActivations.Builder(n, DSae);
        int block = Math.Max(1, Math.Min(blockRows, n));
        var acts = new float[(long)block * DSae];
        for (int r0 = 0; r0 < n; r0 += block)
        {
            int m = Math.Min(block, n - r0);
            EncodeRows(new ReadOnlySpan<float>(x.Data, r0 * DIn, m * DIn), acts, m, out _);
            for (int r = 0; r < m; r++) builder.AddDenseRow(new ReadOnlySpan<float>(acts, r * DSae, DSae));
        }
        return builder.Build();
    }

    // ───────────────────────────── decode ─────────────────────────────

    /// <summary>
    /// recons (n, d_out) = acts·W_dec + b_dec (acts divided by decoder norms first for rescaling TopK SAEs) —
    /// the value of <c>hook_sae_recons</c>, before normalisation is undone. Uses a sparse kernel when few
    /// latents are active.
    /// </summary>
    public void DecodeRaw(ReadOnlySpan<float> acts, Span<float> recons, int n)
    {
        int dSae = DSae, dOut = DOut;
        CheckLen(acts.Length, (long)n * dSae, "activations");
        CheckLen(recons.Length, (long)n * dOut, "reconstruction");
        long nonZero = CountNonZero(acts[..(n * dSae)]);
        var norms = Config.RescaleActsByDecoderNorm ? DecoderNorms : null;
        if (nonZero * 8 < (long)n * dSae)
        {
            unsafe
            {
                fixed (float* pa = acts) fixed (float* pr = recons)
                {
                    float* pac = pa, prc = pr;
                    ParallelRows.For(n, dSae + 64L * dOut, (r0, r1) =>
                    {
                        for (int r = r0; r < r1; r++)
                        {
                            var a = new ReadOnlySpan<float>(pac + (long)r * dSae, dSae);
                            var o = new Span<float>(prc + (long)r * dOut, dOut);
                            BDec.CopyTo(o);
                            for (int j = 0; j < dSae; j++)
                            {
                                float v = a[j];
                                if (v == 0) continue;
                                if (norms != null) v /= norms[j];
                                TensorPrimitives.MultiplyAdd(new ReadOnlySpan<float>(WDec, j * dOut, dOut), v, o, o);
                            }
                        }
                    });
                }
            }
            return;
        }
        ReadOnlySpan<float> a2 = acts[..(n * dSae)];
        if (norms != null)
        {
            var scaled = new float[(long)n * dSae];
            for (int r = 0; r < n; r++) TensorPrimitives.Divide(a2.Slice(r * dSae, dSae), norms, scaled.AsSpan(r * dSae, dSae));
            a2 = scaled;
        }
        Gemm.MatMul(a2, WDec, recons[..(n * dOut)], n, dSae, dOut);
        for (int r = 0; r < n; r++) TensorPrimitives.Add(recons.Slice(r * dOut, dOut), BDec, recons.Slice(r * dOut, dOut));
    }

    static long CountNonZero(ReadOnlySpan<float> a)
    {
        long c = 0;
        foreach (float v in a) if (v != 0) c++;
        return c;
    }

    /// <summary>
    /// Final output (n, d_out) from the raw reconstruction: undoes the input normalisation (not for
    /// transcoders, as SAELens) and adds the skip path x·W_skipᵀ of skip transcoders (x is the raw input).
    /// </summary>
    public void Postprocess(ReadOnlySpan<float> recons, Span<float> output, int n, InputNorm? norm, ReadOnlySpan<float> rawInput = default)
    {
        int dOut = DOut;
        recons[..(n * dOut)].CopyTo(output);
        if (norm != null && !Config.IsTranscoder)
            for (int r = 0; r < n; r++)
            {
                var o = output.Slice(r * dOut, dOut);
                if (Config.Normalization == ActivationNormalization.ConstantNormRescale) TensorPrimitives.Divide(o, norm.InScale[r], o);
                else { TensorPrimitives.Multiply(o, norm.OutScale[r], o); TensorPrimitives.Add(o, norm.Shift[r], o); }
            }
        if (Config.Architecture == SaeArchitecture.SkipTranscoder)
        {
            CheckLen(rawInput.Length, (long)n * DIn, "skip-transcoder input");
            Gemm.MatMulTransB(rawInput[..(n * DIn)], WSkip!, output[..(n * dOut)], n, DIn, dOut, accumulate: true);
        }
    }

    /// <summary>Reconstruction (…, d_out) of dense activations (…, d_sae), undoing <paramref name="norm"/> if given.</summary>
    public Tensor Decode(Tensor acts, InputNorm? norm = null)
    {
        int n = Rows(acts, DSae, "activations");
        if (Config.Architecture == SaeArchitecture.SkipTranscoder)
            throw new InvalidOperationException("a skip transcoder's output needs its input too: use Forward");
        var recons = new float[(long)n * DOut];
        DecodeRaw(acts.Data, recons, n);
        var outT = new Tensor(OutShape(acts, DOut));
        Postprocess(recons, outT.Data, n, norm);
        return outT;
    }

    /// <summary>Reconstruction (n, d_out) of sparse activations.</summary>
    public Tensor Decode(SparseActivations acts, InputNorm? norm = null)
    {
        if (acts.Columns != DSae) throw new ArgumentException($"sparse activations have {acts.Columns} latents, this SAE has d_sae = {DSae}");
        if (Config.Architecture == SaeArchitecture.SkipTranscoder)
            throw new InvalidOperationException("a skip transcoder's output needs its input too: use Forward");
        int n = acts.Rows, dOut = DOut;
        var recons = new float[(long)n * dOut];
        var norms = Config.RescaleActsByDecoderNorm ? DecoderNorms : null;
        for (int r = 0; r < n; r++)
        {
            var o = recons.AsSpan(r * dOut, dOut);
            BDec.CopyTo(o);
            for (int e = acts.RowStart[r]; e < acts.RowStart[r + 1]; e++)
            {
                int j = acts.Index[e];
                float v = norms != null ? acts.Value[e] / norms[j] : acts.Value[e];
                TensorPrimitives.MultiplyAdd(new ReadOnlySpan<float>(WDec, j * dOut, dOut), v, o, o);
            }
        }
        var outT = new Tensor(n, dOut);
        Postprocess(recons, outT.Data, n, norm);
        return outT;
    }

    /// <summary>Encode then decode: activations (…, d_sae) and the output (…, d_out) that replaces the hook's value.</summary>
    public (Tensor Acts, Tensor Output) Forward(Tensor x)
    {
        int n = Rows(x, DIn, "input");
        var acts = new Tensor(OutShape(x, DSae));
        var norm = EncodeRows(x.Data, acts.Data, n, out _);
        var recons = new float[(long)n * DOut];
        DecodeRaw(acts.Data, recons, n);
        var output = new Tensor(OutShape(x, DOut));
        Postprocess(recons, output.Data, n, norm, x.Data);
        return (acts, output);
    }

    static int Rows(Tensor t, int width, string what)
    {
        if (t.Rank == 0 || t.Shape[^1] != width)
            throw new ArgumentException($"{what} has shape [{string.Join(", ", t.Shape)}]; its last dimension must be {width}");
        return checked((int)(t.Length / width));
    }

    static int[] OutShape(Tensor t, int width)
    {
        var s = (int[])t.Shape.Clone();
        s[^1] = width;
        return s;
    }

    static void CheckLen(long have, long need, string what)
    {
        if (have < need) throw new ArgumentException($"{what} buffer has {have} elements, needs {need}");
    }

    public override string ToString() =>
        $"{SaeConfig.ArchitectureName(Config.Architecture)} SAE {Config.HookName} d_in={DIn} d_sae={DSae}" + (Config.IsTranscoder ? $" d_out={DOut}" : "") +
        (Config.Architecture == SaeArchitecture.TopK ? $" k={Config.K}" : "");
}
