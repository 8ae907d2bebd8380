using System.Numerics;
using System.Numerics.Tensors;
using System.Runtime.Intrinsics;
using FeatureLens.Runtime.Kernels;
using FeatureLens.Runtime.Tensors;
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
        if (config.HasSkip)
            Need(wSkip ?? throw new InvalidDataException($"{arch}: tensor 'W_skip' is missing"), (long)config.DOut * config.DIn, "W_skip", $"[{config.DOut}, {config.DIn}]");
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

    PackedMatrix? _packedEncoder;

    /// <summary>
    /// Packs W_enc once for the GEMM kernel so that every later encode skips re-packing it — the dominant cost when
    /// few tokens are encoded at a time (a prompt in the tracker). Costs a second copy of W_enc in memory; results
    /// are bit-identical. Call <see cref="DropPackedEncoder"/> after changing W_enc in place.
    /// </summary>
    public void PrepackEncoder()
    {
        if (_packedEncoder != null) return;
        unsafe
        {
            fixed (float* w = WEnc) _packedEncoder = Gemm.Pack(MatrixView.F32(w, DIn, DSae));
        }
    }

    /// <summary>Frees the packed copy of W_enc (see <see cref="PrepackEncoder"/>).</summary>
    public void DropPackedEncoder()
    {
        _packedEncoder?.Dispose();
        _packedEncoder = null;
    }

    /// <summary>pre (n, d_sae) = saeIn (n, d_in) · W_enc, from the packed encoder when there is one.</summary>
    unsafe void EncoderGemm(ReadOnlySpan<float> saeIn, Span<float> pre, int n)
    {
        var packed = _packedEncoder;
        if (packed == null || packed.Path != Gemm.Resolve(Gemm.Path)) { Gemm.MatMul(saeIn, WEnc, pre, n, DIn, DSae); return; }
        fixed (float* x = saeIn) fixed (float* p = pre)
            Gemm.Multiply(MatrixView.F32(x, n, DIn), packed, p, DSae);
    }

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
        EncoderGemm(saeIn[..(n * DIn)], pre[..(n * dSae)], n);
        AddBiases(pre, n, gatePre);
    }

    /// <summary>pre += b_enc (rows in parallel); for gated SAEs gate = pre + b_gate and pre = pre·exp(r_mag) + b_mag.</summary>
    unsafe void AddBiases(Span<float> pre, int n, Span<float> gatePre)
    {
        int dSae = DSae;
        bool gated = Config.Architecture == SaeArchitecture.Gated;
        if (gated) CheckLen(gatePre.Length, (long)n * dSae, "gate pre-activations");
        var scale = gated ? MagnitudeScale : null;
        fixed (float* pp = pre) fixed (float* pg = gatePre)
        {
            float* ppc = pp, pgc = pg;
            ParallelRows.For(n, dSae, (r0, r1) =>
            {
                for (int r = r0; r < r1; r++)
                {
                    var p = new Span<float>(ppc + (long)r * dSae, dSae);
                    if (!gated) { TensorPrimitives.Add(p, BEnc, p); continue; }
                    var g = new Span<float>(pgc + (long)r * dSae, dSae);
                    TensorPrimitives.Add(p, BGate!, g);
                    // x·(W_enc ⊙ exp(r_mag)) = (x·W_enc) ⊙ exp(r_mag)
                    TensorPrimitives.MultiplyAdd(p, scale!, BMag!, p);
                }
            });
        }
    }

    float[]? _magScale;
    float[] MagnitudeScale
    {
        get
        {
            if (_magScale != null) return _magScale;
            var s = new float[DSae];
            TensorPrimitives.Exp(RMag!, s);
            return _magScale = s;
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
        unsafe
        {
            fixed (float* pp = pre) fixed (float* pa = acts) fixed (float* pg = gatePre)
            {
                float* ppc = pp, pac = pa, pgc = pg;
                ParallelRows.For(n, dSae, (r0, r1) =>
                {
                    var scratch = new RowScratch(this);
                    for (int r = r0; r < r1; r++)
                        ActivateRow(new ReadOnlySpan<float>(ppc + (long)r * dSae, dSae), new Span<float>(pac + (long)r * dSae, dSae),
                            pgc == null ? default : new ReadOnlySpan<float>(pgc + (long)r * dSae, dSae), scratch);
                });
            }
        }
    }

    /// <summary>Per-thread buffers for row-wise activation.</summary>
    sealed class RowScratch
    {
        public readonly int[] Index;
        public readonly float[] Value;
        public readonly float[]? Scaled;
        public RowScratch(Sae sae)
        {
            int k = Math.Max(1, sae.Config.K);
            Index = new int[sae.Config.IsTopK ? k : 0];
            Value = new float[Index.Length];
            Scaled = sae.Config.RescaleActsByDecoderNorm ? new float[sae.DSae] : null;
        }
    }

    void ActivateRow(ReadOnlySpan<float> p, Span<float> a, ReadOnlySpan<float> g, RowScratch s)
    {
        int dSae = DSae;
        switch (Config.Architecture)
        {
            case SaeArchitecture.Standard or SaeArchitecture.Transcoder or SaeArchitecture.SkipTranscoder:
                TensorPrimitives.Max(p, 0f, a);
                break;
            case SaeArchitecture.JumpRelu or SaeArchitecture.JumpReluTranscoder or SaeArchitecture.JumpReluSkipTranscoder:
            {
                var th = Threshold!;
                for (int j = 0; j < dSae; j++) { float v = p[j]; a[j] = v > th[j] && v > 0 ? v : 0f; }
                break;
            }
            case SaeArchitecture.Gated:
                for (int j = 0; j < dSae; j++) a[j] = g[j] > 0 && p[j] > 0 ? p[j] : 0f;
                break;
            case SaeArchitecture.TopK or SaeArchitecture.TopKTranscoder or SaeArchitecture.TopKSkipTranscoder:
            {
                int k = SelectTopK(p, s);
                a.Clear();
                for (int i = 0; i < k; i++) a[s.Index[i]] = s.Value[i];
                break;
            }
        }
    }

    /// <summary>TopK of a pre-activation row (× decoder norms when rescaling); keeps the positive ones, sorted by index. Returns how many.</summary>
    int SelectTopK(ReadOnlySpan<float> p, RowScratch s)
    {
        if (s.Scaled != null) { TensorPrimitives.Multiply(p, DecoderNorms, s.Scaled); p = s.Scaled; }
        int k = Config.K;
        TopK.Select(p, k, s.Index, s.Value);
        int kept = 0;
        for (int i = 0; i < k; i++)
            if (s.Value[i] > 0) { s.Index[kept] = s.Index[i]; s.Value[kept] = s.Value[i]; kept++; }
        s.Index.AsSpan(0, kept).Sort(s.Value.AsSpan(0, kept));
        return kept;
    }

    /// <summary>The positive activations of one row, appended in increasing latent order.</summary>
    void SparseRow(ReadOnlySpan<float> p, ReadOnlySpan<float> g, RowScratch s, List<int> index, List<float> value)
    {
        int dSae = DSae;
        if (Config.IsTopK)
        {
            int k = SelectTopK(p, s);
            for (int i = 0; i < k; i++) { index.Add(s.Index[i]); value.Add(s.Value[i]); }
            return;
        }
        var th = Threshold;
        bool gated = Config.Architecture == SaeArchitecture.Gated;
        int j = 0;
        if (Vector512.IsHardwareAccelerated && !gated)
        {
            for (; j + 16 <= dSae; j += 16)
            {
                var v = Vector512.Create(p.Slice(j, 16));
                var limit = th != null ? Vector512.Max(Vector512.Create(new ReadOnlySpan<float>(th, j, 16)), Vector512<float>.Zero) : Vector512<float>.Zero;
                ulong mask = Vector512.GreaterThan(v, limit).ExtractMostSignificantBits();
                while (mask != 0)
                {
                    int lane = BitOperations.TrailingZeroCount(mask);
                    mask &= mask - 1;
                    index.Add(j + lane); value.Add(p[j + lane]);
                }
            }
        }
        for (; j < dSae; j++)
        {
            float v = p[j];
            bool on = gated ? g[j] > 0 && v > 0 : v > 0 && (th == null || v > th[j]);
            if (on) { index.Add(j); value.Add(v); }
        }
    }

    /// <summary>Latent activations (n, d_sae) for inputs x (…, d_in): the usual SAELens <c>encode</c>.</summary>
    public Tensor Encode(Tensor x)
    {
        int n = Rows(x, DIn, "input");
        var acts = new Tensor(OutShape(x, DSae));
        EncodeRows(x.Data, acts.Data, n);
        return acts;
    }

    /// <summary>
    /// Encodes n rows into dense activations (n, d_sae), in blocks of rows so that only one block of
    /// pre-activations exists at a time; returns the input normalisation for decoding.
    /// </summary>
    public InputNorm? EncodeRows(ReadOnlySpan<float> x, Span<float> acts, int n, int blockRows = 512)
    {
        int dSae = DSae;
        CheckLen(acts.Length, (long)n * dSae, "activations");
        var saeIn = new float[(long)n * DIn];
        var norm = Preprocess(x, saeIn, n);
        bool gated = Config.Architecture == SaeArchitecture.Gated;
        bool inPlace = Config.IsRelu;
        int block = Math.Max(1, Math.Min(blockRows, n));
        var pre = inPlace ? null : new float[(long)block * dSae];
        var gate = gated ? new float[(long)block * dSae] : null;
        for (int r0 = 0; r0 < n; r0 += block)
        {
            int m = Math.Min(block, n - r0);
            var inBlock = new ReadOnlySpan<float>(saeIn, r0 * DIn, m * DIn);
            var outBlock = acts.Slice(r0 * dSae, m * dSae);
            if (inPlace)
            {
                // ReLU families: the GEMM writes straight into the output, bias and ReLU are applied in place
                PreActivations(inBlock, outBlock, m);
                Activate(outBlock, outBlock, m);
                continue;
            }
            PreActivations(inBlock, pre.AsSpan(0, m * dSae), m, gated ? gate.AsSpan(0, m * dSae) : default);
            Activate(pre.AsSpan(0, m * dSae), outBlock, m, gated ? gate.AsSpan(0, m * dSae) : default);
        }
        return norm;
    }

    /// <summary>
    /// Sparse latent activations of x (…, d_in), computed in blocks of <paramref name="blockRows"/> tokens so
    /// that the dense (n, d_sae) matrix never exists. Only positive activations are kept.
    /// </summary>
    public SparseActivations EncodeSparse(Tensor x, int blockRows = 1024)
    {
        int n = Rows(x, DIn, "input"), dSae = DSae;
        int block = Math.Max(1, Math.Min(blockRows, n));
        bool gated = Config.Architecture == SaeArchitecture.Gated;
        var saeIn = new float[(long)block * DIn];
        // the pre-activation blocks come from the pool: a scan encodes block after block with every SAE
        var pre = BufferPool.Rent(checked(block * dSae));
        var gate = gated ? BufferPool.Rent(checked(block * dSae)) : null;
        var rowIndex = new int[n][]; var rowValue = new float[n][];
        for (int r0 = 0; r0 < n; r0 += block)
        {
            int m = Math.Min(block, n - r0);
            Preprocess(new ReadOnlySpan<float>(x.Data, r0 * DIn, m * DIn), saeIn, m);
            EncoderGemm(saeIn.AsSpan(0, m * DIn), pre.AsSpan(0, m * dSae), m);
            int baseRow = r0;
            unsafe
            {
                fixed (float* pp = pre) fixed (float* pg = gate)
                {
                    float* ppc = pp, pgc = pg;
                    ParallelRows.For(m, dSae, (a, b) =>
                    {
                        var scratch = new RowScratch(this);
                        var idx = new List<int>(); var val = new List<float>();
                        var biased = new float[dSae];
                        var gateRow = gated ? new float[dSae] : null;
                        for (int r = a; r < b; r++)
                        {
                            var raw = new ReadOnlySpan<float>(ppc + (long)r * dSae, dSae);
                            if (gated)
                            {
                                TensorPrimitives.Add(raw, BGate!, gateRow);
                                TensorPrimitives.MultiplyAdd(raw, MagnitudeScale, BMag!, biased);
                            }
                            else TensorPrimitives.Add(raw, BEnc, biased);
                            idx.Clear(); val.Clear();
                            SparseRow(biased, gateRow, scratch, idx, val);
                            rowIndex[baseRow + r] = idx.ToArray(); rowValue[baseRow + r] = val.ToArray();
                        }
                    });
                }
            }
        }
        BufferPool.Return(pre);
        if (gate != null) BufferPool.Return(gate);
        var rowStart = new int[n + 1];
        for (int r = 0; r < n; r++) rowStart[r + 1] = rowStart[r] + rowIndex[r].Length;
        var index = new int[rowStart[n]]; var value = new float[rowStart[n]];
        for (int r = 0; r < n; r++) { rowIndex[r].CopyTo(index, rowStart[r]); rowValue[r].CopyTo(value, rowStart[r]); }
        return new SparseActivations(n, dSae, rowStart, index, value);
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
        if (Config.HasSkip)
        {
            CheckLen(rawInput.Length, (long)n * DIn, "skip-transcoder input");
            Gemm.MatMulTransB(rawInput[..(n * DIn)], WSkip!, output[..(n * dOut)], n, DIn, dOut, accumulate: true);
        }
    }

    // ───────────────────────────── backward (activation gradients, beside each forward stage) ─────────────────────────────
    // Input normalisation factors count as constants (they rescale each token by a number; their own dependence on the
    // input is not differentiated). Shapes as in the forward: n rows.

    /// <summary>Backward of <see cref="Postprocess"/> to the raw reconstruction: dRecons (n, d_out) from dOutput (n, d_out).</summary>
    public void PostprocessBackward(ReadOnlySpan<float> dOutput, Span<float> dRecons, int n, InputNorm? norm)
    {
        int dOut = DOut;
        dOutput[..(n * dOut)].CopyTo(dRecons);
        if (norm == null || Config.IsTranscoder) return;
        for (int r = 0; r < n; r++)
        {
            var o = dRecons.Slice(r * dOut, dOut);
            if (Config.Normalization == ActivationNormalization.ConstantNormRescale) TensorPrimitives.Divide(o, norm.InScale[r], o);
            else TensorPrimitives.Multiply(o, norm.OutScale[r], o);
        }
    }

    /// <summary>Backward of the skip path of skip transcoders (output += x·W_skipᵀ): dX (n, d_in) += dOutput (n, d_out)·W_skip.</summary>
    public void SkipBackward(ReadOnlySpan<float> dOutput, Span<float> dX, int n)
    {
        if (!Config.HasSkip) return;
        Gemm.MatMul(dOutput[..(n * DOut)], WSkip!, dX[..(n * DIn)], n, DOut, DIn, accumulate: true);
    }

    /// <summary>
    /// Backward of <see cref="DecodeRaw"/>: dActs (n, d_sae) = dRecons (n, d_out)·W_decᵀ (÷ decoder norms for rescaling
    /// TopK SAEs) — for every latent, active or not.
    /// </summary>
    public void DecodeBackward(ReadOnlySpan<float> dRecons, Span<float> dActs, int n)
    {
        int dSae = DSae;
        Gemm.MatMulTransB(dRecons[..(n * DOut)], WDec, dActs[..(n * dSae)], n, DOut, dSae);
        if (Config.RescaleActsByDecoderNorm)
        {
            var norms = DecoderNorms;
            for (int r = 0; r < n; r++) TensorPrimitives.Divide(dActs.Slice(r * dSae, dSae), norms, dActs.Slice(r * dSae, dSae));
        }
    }

    /// <summary>
    /// <see cref="DecodeBackward(ReadOnlySpan{float}, Span{float}, int)"/> for the listed latents of each row only (the others
    /// are left 0): dActs[r, j] = dRecons[r]·W_dec[j] for j in <paramref name="latents"/>[r].
    /// </summary>
    public void DecodeBackward(ReadOnlySpan<float> dRecons, Span<float> dActs, int n, int[][] latents)
    {
        int dSae = DSae, dOut = DOut;
        dActs[..(n * dSae)].Clear();
        var norms = Config.RescaleActsByDecoderNorm ? DecoderNorms : null;
        unsafe
        {
            fixed (float* pr = dRecons) fixed (float* pa = dActs)
            {
                float* prc = pr, pac = pa;
                ParallelRows.For(n, 32L * dOut, (r0, r1) =>
                {
                    for (int r = r0; r < r1; r++)
                    {
                        var g = new ReadOnlySpan<float>(prc + (long)r * dOut, dOut);
                        foreach (int j in latents[r])
                        {
                            float v = TensorPrimitives.Dot(g, new ReadOnlySpan<float>(WDec, j * dOut, dOut));
                            pac[(long)r * dSae + j] = norms == null ? v : v / norms[j];
                        }
                    }
                });
            }
        }
    }

    /// <summary>
    /// Backward of <see cref="Activate"/>: dPre (n, d_sae) = dActs where the latent is active (ReLU, JumpReLU, gated
    /// magnitude, the selected TopK latents — × decoder norm when rescaling), 0 elsewhere.
    /// </summary>
    public void ActivateBackward(ReadOnlySpan<float> acts, ReadOnlySpan<float> dActs, Span<float> dPre, int n)
    {
        int dSae = DSae;
        var norms = Config.IsTopK && Config.RescaleActsByDecoderNorm ? DecoderNorms : null;
        for (int r = 0; r < n; r++)
        {
            var a = acts.Slice(r * dSae, dSae); var da = dActs.Slice(r * dSae, dSae); var dp = dPre.Slice(r * dSae, dSae);
            for (int j = 0; j < dSae; j++) dp[j] = a[j] != 0 ? (norms == null ? da[j] : da[j] * norms[j]) : 0f;
        }
    }

    /// <summary>
    /// Backward of <see cref="PreActivations"/> and <see cref="Preprocess"/> to the SAE's raw input: dX (n, d_in) =
    /// dPre·W_encᵀ (gated: the magnitude path, dPre ⊙ exp(r_mag)), × the normalisation's input scale.
    /// </summary>
    public void EncodeBackward(ReadOnlySpan<float> dPre, Span<float> dX, int n, InputNorm? norm)
    {
        int dSae = DSae, d = DIn;
        ReadOnlySpan<float> dp = dPre[..(n * dSae)];
        if (Config.Architecture == SaeArchitecture.Gated)
        {
            var scaled = new float[(long)n * dSae];
            for (int r = 0; r < n; r++) TensorPrimitives.Multiply(dp.Slice(r * dSae, dSae), MagnitudeScale, scaled.AsSpan(r * dSae, dSae));
            dp = scaled;
        }
        Gemm.MatMulTransB(dp, WEnc, dX[..(n * d)], n, dSae, d);
        if (norm != null)
            for (int r = 0; r < n; r++) TensorPrimitives.Multiply(dX.Slice(r * d, d), norm.InScale[r], dX.Slice(r * d, d));
    }

    /// <summary>Reconstruction (…, d_out) of dense activations (…, d_sae), undoing <paramref name="norm"/> if given.</summary>
    public Tensor Decode(Tensor acts, InputNorm? norm = null)
    {
        int n = Rows(acts, DSae, "activations");
        if (Config.HasSkip)
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
        if (Config.HasSkip)
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
        var norm = EncodeRows(x.Data, acts.Data, n);
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
        (Config.IsTopK ? $" k={Config.K}" : "");
}
