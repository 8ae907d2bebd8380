using FeatureLens.Runtime.Models;
using FeatureLens.Runtime.Tensors;

namespace FeatureLens.Runtime.Checkpoints;

/// <summary>
/// A llama2.c checkpoint (<c>.bin</c>, legacy version 0), memory-mapped, presenting its float32 arrays
/// under Hugging Face Llama names. Layout: 7 little-endian int32 (dim, hidden_dim, n_layers, n_heads,
/// n_kv_heads, vocab_size, seq_len; negative vocab_size = separate classifier), then layer-stacked
/// float32 arrays token_embedding, rms_att, wq, wk, wv, wo, rms_ffn, w1, w2, w3, rms_final, the unused
/// freq_cis_real/imag tables, and wcls when not shared. Matrices are [out, in] like HF Linear weights.
/// The q/k rows keep llama2.c's interleaved RoPE pairing (the config says <see cref="RopeLayout.Interleaved"/>);
/// nothing is permuted.
/// </summary>
public sealed unsafe class Llama2cCheckpoint : ITensorSource
{
    const int HeaderBytes = 7 * sizeof(int);
    /// <summary>"ak42": the magic of llama2.c's newer export versions 1 and 2.</summary>
    const int NewExportMagic = 0x616b3432;

    readonly MappedFile _file;
    readonly Dictionary<string, (long offset, int[] shape)> _tensors; // byte offset from file start
    readonly List<string> _names;

    /// <summary>The .bin file.</summary>
    public string Location { get; }
    /// <summary>Hyper-parameters from the header (Llama, interleaved RoPE, eps 1e-5, theta 10000, BOS 1, EOS 2).</summary>
    public ModelConfig Config { get; }

    Llama2cCheckpoint(string path, MappedFile file, ModelConfig config)
    {
        Location = path; _file = file; Config = config;
        (_tensors, _names) = Layout(config);
    }

    /// <summary>Maps a llama2.c .bin and checks that its size matches its header exactly.</summary>
    public static Llama2cCheckpoint Open(string path)
    {
        path = Path.GetFullPath(path);
        if (!File.Exists(path)) throw new FileNotFoundException($"llama2.c checkpoint not found: {path}", path);
        var stream = MappedFile.OpenRead(path);
        ModelConfig config;
        try
        {
            long length = stream.Length;
            if (length < HeaderBytes)
                throw new InvalidDataException($"{path}: file has {length} bytes, expected at least {HeaderBytes} (the 7 int32 llama2.c header)");
            Span<byte> hb = stackalloc byte[HeaderBytes];
            stream.ReadExactly(hb);
            var h = new int[7];
            for (int i = 0; i < 7; i++) h[i] = BitConverter.ToInt32(hb[(4 * i)..]);
            config = ConfigFromHeader(path, h, length);
        }
        catch
        {
            stream.Dispose();
            throw;
        }

        return new Llama2cCheckpoint(path, MappedFile.Map(path, stream), config);
    }

    static ModelConfig ConfigFromHeader(string path, int[] h, long fileLength)
    {
        if (h[0] == NewExportMagic)
            throw new InvalidDataException($"{path}: starts with the llama2.c version 1/2 magic 'ak42'; only the legacy version 0 format (7 int32 header) is supported");
        int dim = h[0], hidden = h[1], layers = h[2], heads = h[3], kvHeads = h[4], vocab = h[5], seqLen = h[6];
        string header = $"dim={dim} hidden_dim={hidden} n_layers={layers} n_heads={heads} n_kv_heads={kvHeads} vocab_size={vocab} seq_len={seqLen}";
        if (dim <= 0 || hidden <= 0 || layers <= 0 || heads <= 0 || kvHeads <= 0 || vocab == 0 || vocab == int.MinValue || seqLen <= 0)
            throw new InvalidDataException($"{path}: header ({header}) must hold positive sizes (vocab_size may be negative to mark a separate classifier)");
        if (dim % heads != 0)
            throw new InvalidDataException($"{path}: header ({header}): n_heads must divide dim");
        if (heads % kvHeads != 0)
            throw new InvalidDataException($"{path}: header ({header}): n_kv_heads must divide n_heads");
        bool shared = vocab > 0;
        int v = Math.Abs(vocab);
        int headSize = dim / heads;
        if (headSize % 2 != 0)
            throw new InvalidDataException($"{path}: header ({header}): head size dim/n_heads = {headSize} must be even for rotary embeddings");

        long expected, other;
        try
        {
            expected = ExpectedBytes(dim, hidden, layers, heads, kvHeads, v, seqLen, shared);
            other = ExpectedBytes(dim, hidden, layers, heads, kvHeads, v, seqLen, !shared);
        }
        catch (OverflowException)
        {
            throw new InvalidDataException($"{path}: header ({header}) implies more bytes than any file can hold, but the file has {fileLength} bytes");
        }
        if (expected != fileLength)
        {
            string hint = other == fileLength
                ? $" (that is the size with a {(shared ? "separate" : "shared")} classifier; the sign of vocab_size says {(shared ? "shared" : "separate")})"
                : "";
            throw new InvalidDataException(
                $"{path}: header ({header}) implies {expected} bytes with a {(shared ? "shared" : "separate")} classifier, but the file has {fileLength} bytes{hint}");
        }
        var config = new ModelConfig
        {
            Architecture = Architecture.Llama,
            DModel = dim,
            NLayers = layers,
            NHeads = heads,
            NKvHeads = kvHeads,
            DMlp = hidden,
            VocabSize = v,
            NCtx = seqLen,
            NormEps = 1e-5f,
            RopeTheta = 10000f,
            Rope = RopeLayout.Interleaved,
            TiedEmbeddings = shared,
            Activation = "silu",
            BosTokenId = 1,
            EosTokenId = 2,
            Source = path,
        };
        config.Validate();
        return config;
    }

    /// <summary>File size implied by a header: the header, the weights, the legacy freq_cis tables and wcls when not shared.</summary>
    static long ExpectedBytes(long dim, long hidden, long layers, long heads, long kvHeads, long vocab, long seqLen, bool shared)
    {
        long kvDim = dim * kvHeads / heads;
        long headSize = dim / heads;
        // checked: a corrupt header can name sizes whose product overflows; callers report that as a size mismatch.
        long floats = checked(vocab * dim                    // token_embedding
                    + layers * dim                   // rms_att
                    + layers * dim * dim             // wq
                    + 2 * layers * kvDim * dim       // wk, wv
                    + layers * dim * dim             // wo
                    + layers * dim                   // rms_ffn
                    + 3 * layers * hidden * dim      // w1, w2, w3
                    + dim                            // rms_final
                    + seqLen * headSize              // freq_cis_real + freq_cis_imag, seq_len·head_size/2 each
                    + (shared ? 0 : vocab * dim));   // wcls
        return checked(HeaderBytes + 4 * floats);
    }

    /// <summary>Byte offset and shape of every tensor, under its Hugging Face name, in file order.</summary>
    static (Dictionary<string, (long, int[])>, List<string>) Layout(ModelConfig c)
    {
        var map = new Dictionary<string, (long, int[])>(StringComparer.Ordinal);
        var names = new List<string>();
        int dim = c.DModel, hidden = c.DMlp, kvDim = c.DModel / c.NHeads * c.NKvHeads, L = c.NLayers;
        long offset = HeaderBytes;

        void One(string name, int[] shape)
        {
            map[name] = (offset, shape);
            names.Add(name);
            offset += 4 * Tensor.ElementCount(shape);
        }
        // A layer-stacked array [L, ...]: layer i under name(i).
        void Stacked(Func<int, string> name, int[] shape)
        {
            for (int i = 0; i < L; i++) One(name(i), shape);
        }

        One("model.embed_tokens.weight", [c.VocabSize, dim]);
        Stacked(i => $"model.layers.{i}.input_layernorm.weight", [dim]);
        Stacked(i => $"model.layers.{i}.self_attn.q_proj.weight", [dim, dim]);
        Stacked(i => $"model.layers.{i}.self_attn.k_proj.weight", [kvDim, dim]);
        Stacked(i => $"model.layers.{i}.self_attn.v_proj.weight", [kvDim, dim]);
        Stacked(i => $"model.layers.{i}.self_attn.o_proj.weight", [dim, dim]);
        Stacked(i => $"model.layers.{i}.post_attention_layernorm.weight", [dim]);
        Stacked(i => $"model.layers.{i}.mlp.gate_proj.weight", [hidden, dim]); // w1
        Stacked(i => $"model.layers.{i}.mlp.down_proj.weight", [dim, hidden]); // w2
        Stacked(i => $"model.layers.{i}.mlp.up_proj.weight", [hidden, dim]);   // w3
        One("model.norm.weight", [dim]);
        offset += 4L * c.NCtx * c.DHead; // legacy freq_cis_real and freq_cis_imag
        if (!c.TiedEmbeddings) One("lm_head.weight", [c.VocabSize, dim]);
        return (map, names);
    }

    /// <summary>Hugging Face names of the tensors, in file order.</summary>
    public IEnumerable<string> Names => _names;

    public bool Contains(string name) => _tensors.ContainsKey(name);

    /// <summary>A zero-copy float32 view of one tensor.</summary>
    public WeightTensor Get(string name)
    {
        if (!_tensors.TryGetValue(name, out var t))
            throw new KeyNotFoundException(
                $"{Location}: llama2.c checkpoint has no tensor '{name}'{(name == "lm_head.weight" ? " (the classifier is shared with model.embed_tokens.weight)" : "")}");
        return new WeightTensor(name, DType.F32, t.shape, _file.Pointer + t.offset, this);
    }

    /// <summary>Unmaps the file. Views obtained from <see cref="Get"/> must not be used afterwards.</summary>
    public void Dispose() => _file.Dispose();

    public override string ToString() => $"Llama2cCheckpoint({Location})";
}
