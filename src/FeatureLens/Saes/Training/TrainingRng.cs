namespace FeatureLens.Saes.Training;

/// <summary>
/// xoshiro256** with its four words of state exposed, so a checkpoint can store it and a resumed run draws
/// exactly the numbers the uninterrupted run would have. Seeded through SplitMix64.
/// </summary>
internal sealed class TrainingRng
{
    ulong _s0, _s1, _s2, _s3;

    public TrainingRng(ulong seed)
    {
        ulong x = seed;
        _s0 = SplitMix(ref x); _s1 = SplitMix(ref x); _s2 = SplitMix(ref x); _s3 = SplitMix(ref x);
    }

    static ulong SplitMix(ref ulong x)
    {
        ulong z = x += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    public ulong NextUInt64()
    {
        ulong result = ulong.RotateLeft(_s1 * 5, 7) * 9;
        ulong t = _s1 << 17;
        _s2 ^= _s0; _s3 ^= _s1; _s1 ^= _s2; _s0 ^= _s3;
        _s2 ^= t;
        _s3 = ulong.RotateLeft(_s3, 45);
        return result;
    }

    /// <summary>Uniform in [0, 1).</summary>
    public double NextDouble() => (NextUInt64() >> 11) * (1.0 / (1UL << 53));

    /// <summary>Uniform integer in [0, n).</summary>
    public int NextInt(int n) => (int)(NextDouble() * n);

    /// <summary>Standard normal (Box–Muller, one value per call so the state stays four words).</summary>
    public double NextGaussian()
    {
        double u1 = 1.0 - NextDouble(), u2 = NextDouble();
        return Math.Sqrt(-2.0 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2);
    }

    public long[] GetState() => [(long)_s0, (long)_s1, (long)_s2, (long)_s3];

    public void SetState(ReadOnlySpan<long> s)
    {
        if (s.Length != 4) throw new InvalidDataException($"RNG state has {s.Length} words, expected 4");
        _s0 = (ulong)s[0]; _s1 = (ulong)s[1]; _s2 = (ulong)s[2]; _s3 = (ulong)s[3];
        if ((_s0 | _s1 | _s2 | _s3) == 0) throw new InvalidDataException("RNG state is all zeros, which xoshiro256** cannot leave");
    }
}
