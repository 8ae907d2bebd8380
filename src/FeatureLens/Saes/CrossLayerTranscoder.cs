using System.Numerics.Tensors;
using FeatureLens.Runtime.Kernels;

namespace FeatureLens.Saes;

/// <summary>
/// A cross-layer transcoder (CLT, as circuit-tracer's <c>CrossLayerTranscoder</c>): the features of source layer i read that
/// layer's MLP input and write into the MLP output of every layer j ≥ i. The reconstruction of layer j's MLP output is
/// <c>recon_j = Σ_{i ≤ j} a_i·W_dec(i → j) + b_dec_j (+ skip_j)</c>, a_i (n, d_i) the activations of layer i's features.
/// <para>Held as one transcoder <see cref="Sae"/> per layer (<see cref="Layers"/>: layer i's encoder, its decoder into its own
/// layer W_dec(i → i), the output bias b_dec_i of layer i and any skip path) plus the decoders into later layers
/// (<see cref="Decoder"/>(i, j), (d_i, d_model) row-major, for j &gt; i). A set of per-layer transcoders is the CLT whose
/// decoders reach only their own layer (<see cref="FromPerLayer"/>), so everything that handles a CLT handles a set.</para>
/// </summary>
public sealed class CrossLayerTranscoder
{
    readonly Sae[] _layers;
    readonly float[]?[][] _later;   // _later[i][j − i − 1]: W_dec(i → j) (d_i, d_model), null where layer i does not write layer j

    /// <summary>Layer i's transcoder: encoder, decoder into layer i, b_dec of layer i (the output bias of layer i's reconstruction).</summary>
    public IReadOnlyList<Sae> Layers => _layers;
    public int NLayers => _layers.Length;
    /// <summary>True when some feature writes into a later layer (false for a set of per-layer transcoders).</summary>
    public bool IsCrossLayer { get; }
    /// <summary>The folder it was loaded from, if any.</summary>
    public string? SourcePath { get; init; }

    /// <param name="layers">One transcoder per layer, layer 0 first (each reads blocks.i.* and writes blocks.i.*).</param>
    /// <param name="laterDecoders">laterDecoders[i][j − i − 1] = W_dec(i → j) (d_i·d_out of layer j), for j = i+1 … L−1; null (or
    /// a null entry) where layer i writes no later layer.</param>
    public CrossLayerTranscoder(IReadOnlyList<Sae> layers, float[]?[][]? laterDecoders = null)
    {
        ArgumentNullException.ThrowIfNull(layers);
        if (layers.Count == 0) throw new ArgumentException("a cross-layer transcoder needs at least one layer", nameof(layers));
        int L = layers.Count;
        _layers = new Sae[L];
        for (int i = 0; i < L; i++)
        {
            _layers[i] = layers[i] ?? throw new ArgumentException($"layer {i}'s transcoder is null", nameof(layers));
            if (!_layers[i].Config.IsTranscoder)
                throw new ArgumentException($"layer {i}: architecture '{SaeConfig.ArchitectureName(_layers[i].Config.Architecture)}' is not a transcoder", nameof(layers));
        }
        if (laterDecoders != null && laterDecoders.Length != L)
            throw new ArgumentException($"later decoders: {laterDecoders.Length} source layers, expected {L}", nameof(laterDecoders));
        _later = new float[]?[L][];
        for (int i = 0; i < L; i++)
        {
            var row = laterDecoders?[i];
            if (row != null && row.Length != L - 1 - i)
                throw new ArgumentException($"later decoders of layer {i}: {row.Length} target layers, expected {L - 1 - i} (layers {i + 1}–{L - 1})", nameof(laterDecoders));
            _later[i] = new float[]?[L - 1 - i];
            for (int j = i + 1; j < L; j++)
            {
                var w = row?[j - i - 1];
                if (w == null) continue;
                long need = (long)_layers[i].DSae * _layers[j].DOut;
                if (w.Length != need)
                    throw new ArgumentException($"W_dec({i} → {j}) has {w.Length} values, expected [d_transcoder {_layers[i].DSae}, d_model {_layers[j].DOut}] = {need}", nameof(laterDecoders));
                if (_layers[i].Config.RescaleActsByDecoderNorm || _layers[i].Config.Normalization != ActivationNormalization.None || _layers[i].Config.ApplyBDecToInput)
                    throw new ArgumentException($"layer {i}: decoders into later layers need plain encoder inputs (no decoder-norm rescaling, input normalisation or b_dec subtracted at the input)", nameof(laterDecoders));
                _later[i][j - i - 1] = w;
                IsCrossLayer = true;
            }
        }
    }

    /// <summary>A set of per-layer transcoders (layer 0 first) as the CLT whose decoders reach only their own layer.</summary>
    public static CrossLayerTranscoder FromPerLayer(IReadOnlyList<Sae> layers) => new(layers);

    /// <summary>
    /// W_dec(<paramref name="source"/> → <paramref name="target"/>): (d_source, d_out) row-major, the weights latents of layer
    /// <paramref name="source"/> write into layer <paramref name="target"/>'s MLP output with (before any decoder-norm rescaling,
    /// which only per-layer transcoders have); the layer's own <see cref="Sae.WDec"/> for target = source; null where there is none.
    /// </summary>
    public float[]? Decoder(int source, int target)
    {
        if ((uint)source >= (uint)NLayers) throw new ArgumentOutOfRangeException(nameof(source), $"source layer {source} outside [0, {NLayers})");
        if ((uint)target >= (uint)NLayers) throw new ArgumentOutOfRangeException(nameof(target), $"target layer {target} outside [0, {NLayers})");
        return target < source ? null : target == source ? _layers[source].WDec : _later[source][target - source - 1];
    }

    /// <summary>
    /// The direction latent <paramref name="latent"/> of layer <paramref name="source"/> writes into each layer's MLP output per
    /// unit of activation (decoder rows, divided by the row's norm for transcoders that rescale by decoder norms): (target layer,
    /// (d_out) fresh copy), own layer first.
    /// </summary>
    public List<(int Layer, float[] Direction)> DecoderWrites(int source, int latent)
    {
        var sae = _layers[(uint)source < (uint)NLayers ? source : throw new ArgumentOutOfRangeException(nameof(source), $"source layer {source} outside [0, {NLayers})")];
        if ((uint)latent >= (uint)sae.DSae) throw new ArgumentOutOfRangeException(nameof(latent), $"latent {latent} outside [0, {sae.DSae}) (d_transcoder of layer {source})");
        var list = new List<(int, float[])>();
        for (int j = source; j < NLayers; j++)
        {
            var w = Decoder(source, j);
            if (w == null) continue;
            int C = _layers[j].DOut;
            var dir = new ReadOnlySpan<float>(w, latent * C, C).ToArray();
            if (j == source && sae.Config.RescaleActsByDecoderNorm) TensorPrimitives.Divide(dir, sae.DecoderNorms[latent], dir);
            list.Add((j, dir));
        }
        return list;
    }

    /// <summary>
    /// Encodes every layer's input and reconstructs every layer's MLP output: inputs[i] (n, d_in of layer i) → acts[i]
    /// (n, d_i) and the returned recon[j] (n, d_out of layer j) = Σ_{i ≤ j} acts_i·W_dec(i → j) + b_dec_j (+ skip of layer j).
    /// </summary>
    public float[][] Forward(IReadOnlyList<float[]> inputs, int n, out float[][] acts)
    {
        ArgumentNullException.ThrowIfNull(inputs);
        int L = NLayers;
        if (inputs.Count != L) throw new ArgumentException($"{inputs.Count} layer inputs, the transcoder has {L} layers", nameof(inputs));
        acts = new float[L][];
        var recon = new float[L][];
        for (int i = 0; i < L; i++)
        {
            var sae = _layers[i];
            if (inputs[i] is not { } x || x.Length != (long)n * sae.DIn)
                throw new ArgumentException($"input of layer {i}: expected (n = {n}, d_in = {sae.DIn}) = {(long)n * sae.DIn} floats, got {inputs[i]?.Length ?? 0}", nameof(inputs));
            var saeIn = new float[(long)n * sae.DIn];
            var pre = new float[(long)n * sae.DSae];
            var a = acts[i] = new float[(long)n * sae.DSae];
            var norm = sae.Preprocess(x, saeIn, n);
            sae.PreActivations(saeIn, pre, n);
            sae.Activate(pre, a, n);
            var raw = new float[(long)n * sae.DOut];
            sae.DecodeRaw(a, raw, n);
            var outJ = recon[i] = new float[(long)n * sae.DOut];
            sae.Postprocess(raw, outJ, n, norm, x);
        }
        for (int j = 1; j < L; j++)
            for (int i = 0; i < j; i++)
                if (Decoder(i, j) is { } w)
                    Gemm.MatMul(acts[i], w, recon[j], n, _layers[i].DSae, _layers[j].DOut, accumulate: true);
        return recon;
    }
}
