using System.Text.Json.Nodes;

namespace FeatureLens.Database;

/// <summary>
/// What a corpus scan computes and over which tokens. Two scans (or two shards) agree only when every field agrees:
/// the settings are part of the scan's identity (<see cref="ScanIdentity"/>).
/// </summary>
public sealed record ScanSettings
{
    /// <summary>Tokens per context window (BOS included); the packed stream is cut into windows of this length.</summary>
    public int Context { get; init; } = 128;
    /// <summary>Tokens to read from the corpus (0: all of it).</summary>
    public long Tokens { get; init; } = 1_000_000;
    /// <summary>Windows per block: the unit of a forward pass, of a committed transaction and of sharding.</summary>
    public int BlockWindows { get; init; } = 16;
    /// <summary>Top examples kept per latent.</summary>
    public int TopExamples { get; init; } = 20;
    /// <summary>Quantile intervals shown per latent.</summary>
    public int Intervals { get; init; } = 10;
    /// <summary>Examples kept per quantile sampling bin (and shown per interval).</summary>
    public int IntervalExamples { get; init; } = 5;
    /// <summary>Tokens at the start of the stream over which partners (Pearson r) are computed (the partner sample).</summary>
    public int PartnerTokens { get; init; } = 32_768;
    /// <summary>Partners kept per latent.</summary>
    public int Partners { get; init; } = 10;
    /// <summary>Top and bottom tokens of the decoder logit lens.</summary>
    public int LogitTokens { get; init; } = 10;

    /// <summary>Throws a clear error naming the first setting out of range.</summary>
    public void Validate()
    {
        if (Context < 2) throw new ArgumentException($"--context must be at least 2 tokens, got {Context}");
        if (Tokens < 0) throw new ArgumentException($"--tokens must be ≥ 0 (0 reads the whole corpus), got {Tokens}");
        if (BlockWindows < 1) throw new ArgumentException($"--batch (windows per block) must be at least 1, got {BlockWindows}");
        if (TopExamples < 1 || TopExamples > 1000) throw new ArgumentException($"--top must be in [1, 1000], got {TopExamples}");
        if (Intervals < 1 || Intervals > 100) throw new ArgumentException($"--intervals must be in [1, 100], got {Intervals}");
        if (IntervalExamples < 1 || IntervalExamples > 100) throw new ArgumentException($"--interval-examples must be in [1, 100], got {IntervalExamples}");
        if (PartnerTokens < 0) throw new ArgumentException($"--partner-tokens must be ≥ 0, got {PartnerTokens}");
        if (Partners < 0 || Partners > 1000) throw new ArgumentException($"--partners must be in [0, 1000], got {Partners}");
        if (LogitTokens < 0 || LogitTokens > 1000) throw new ArgumentException($"--logit-tokens must be in [0, 1000], got {LogitTokens}");
    }

    /// <summary>Windows of the stream in the partner sample (the first ⌈PartnerTokens / Context⌉).</summary>
    public long PartnerWindows => (PartnerTokens + (long)Context - 1) / Context;

    internal JsonObject ToJson() => new()
    {
        ["context"] = Context, ["tokens"] = Tokens, ["block_windows"] = BlockWindows, ["top_examples"] = TopExamples,
        ["intervals"] = Intervals, ["interval_examples"] = IntervalExamples, ["partner_tokens"] = PartnerTokens,
        ["partners"] = Partners, ["logit_tokens"] = LogitTokens,
        ["histogram"] = $"log10 bins of 1/{ScanBins.BinsPerDecade} decade from 1e{ScanBins.MinExponent} to 1e{ScanBins.MaxExponent}",
        ["sampling"] = $"{ScanBins.HistogramBinsPerSamplingBin} histogram bins per sampling bin; priority splitmix64",
    };

    internal static ScanSettings FromJson(JsonNode n, string where)
    {
        int I(string k) => n[k]?.GetValue<int>() ?? throw new InvalidDataException($"{where}: settings lack '{k}'");
        return new ScanSettings
        {
            Context = I("context"), Tokens = n["tokens"]?.GetValue<long>() ?? throw new InvalidDataException($"{where}: settings lack 'tokens'"),
            BlockWindows = I("block_windows"), TopExamples = I("top_examples"), Intervals = I("intervals"), IntervalExamples = I("interval_examples"),
            PartnerTokens = I("partner_tokens"), Partners = I("partners"), LogitTokens = I("logit_tokens"),
        };
    }
}

/// <summary>Which part of a scan a run does: every <see cref="Count"/>-th block starting at block <see cref="Index"/>.</summary>
public readonly record struct ShardSpec(int Index, int Count)
{
    /// <summary>The whole scan.</summary>
    public static readonly ShardSpec All = new(0, 1);

    /// <summary>True when block <paramref name="block"/> belongs to this shard.</summary>
    public bool Owns(long block) => block % Count == Index;

    /// <summary>Parses "I/N" (0 ≤ I &lt; N).</summary>
    public static ShardSpec Parse(string text)
    {
        var parts = text.Split('/');
        if (parts.Length != 2 || !int.TryParse(parts[0], NumberStyles.None, CultureInfo.InvariantCulture, out int i)
            || !int.TryParse(parts[1], NumberStyles.None, CultureInfo.InvariantCulture, out int n) || n < 1 || i >= n)
            throw new ArgumentException($"--shard expects I/N with 0 ≤ I < N (e.g. 0/4), got '{text}'");
        return new ShardSpec(i, n);
    }

    public override string ToString() => $"{Index}/{Count}";
}

/// <summary>
/// The fixed grids and hashes every scan and shard shares, so that statistics merge exactly: a log-spaced histogram
/// (the same edges for every latent), quantile sampling bins made of consecutive histogram bins, a priority per
/// (SAE, latent, token) that decides which examples a sampling bin keeps (the lowest priorities), and fixed-point sums.
/// </summary>
public static class ScanBins
{
    /// <summary>Histogram bins per decade of activation.</summary>
    public const int BinsPerDecade = 10;
    /// <summary>The grid spans [10^MinExponent, 10^MaxExponent); values below fall in bin 0, above in the last bin.</summary>
    public const int MinExponent = -6, MaxExponent = 6;
    /// <summary>Number of histogram bins.</summary>
    public const int Bins = (MaxExponent - MinExponent) * BinsPerDecade;
    /// <summary>Consecutive histogram bins that form one quantile sampling bin.</summary>
    public const int HistogramBinsPerSamplingBin = 2;
    /// <summary>Number of sampling bins.</summary>
    public const int SamplingBins = Bins / HistogramBinsPerSamplingBin;
    /// <summary>Sums are kept as integers in units of 2^-FixedPointBits (exact, so shards add in any order).</summary>
    public const int FixedPointBits = 32;

    /// <summary>The histogram bin of a positive activation: ⌊10·log10 x⌋ shifted to start at 0, clamped to the grid.</summary>
    public static int Bin(float x)
    {
        int k = (int)Math.Floor(Math.Log10(x) * BinsPerDecade) - MinExponent * BinsPerDecade;
        return k < 0 ? 0 : k >= Bins ? Bins - 1 : k;
    }

    /// <summary>The lower edge of histogram bin <paramref name="bin"/> (its upper edge is <c>Edge(bin + 1)</c>).</summary>
    public static double Edge(int bin) => Math.Pow(10, MinExponent + (double)bin / BinsPerDecade);

    /// <summary>The sampling bin of histogram bin <paramref name="bin"/>.</summary>
    public static int SamplingBin(int bin) => bin / HistogramBinsPerSamplingBin;

    /// <summary>x in fixed point (units of 2^-32), rounded to nearest.</summary>
    public static Int128 Fixed(double x) => (Int128)Math.Round(x * 4294967296.0);

    /// <summary>A fixed-point sum back as a double.</summary>
    public static double FromFixed(Int128 v) => (double)v / 4294967296.0;

    /// <summary>
    /// The sampling priority of token <paramref name="token"/> (its index in the packed stream) for latent
    /// <paramref name="feature"/> of SAE <paramref name="sae"/>: splitmix64 of the three, independent of sharding.
    /// </summary>
    public static ulong Priority(int sae, int feature, long token)
    {
        ulong z = Mix((ulong)token + 0x9E3779B97F4A7C15UL * (ulong)(sae + 1));
        return Mix(z ^ ((ulong)(uint)feature * 0xD6E8FEB86659FD93UL));
    }

    static ulong Mix(ulong z)
    {
        z += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }
}
