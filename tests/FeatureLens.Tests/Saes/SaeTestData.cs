using FeatureLens.Saes;

namespace FeatureLens.Tests.Saes;

/// <summary>Random SAEs for tests (Gaussian weights scaled so that a useful share of latents fire).</summary>
internal static class SaeTestData
{
    public static float Gaussian(Random rng) => (float)(Math.Sqrt(-2 * Math.Log(1 - rng.NextDouble())) * Math.Cos(2 * Math.PI * rng.NextDouble()));

    public static float[] Gaussian(Random rng, long n, float scale)
    {
        var a = new float[n];
        for (long i = 0; i < n; i++) a[i] = Gaussian(rng) * scale;
        return a;
    }

    /// <summary>A random SAE of the given architecture reading <paramref name="hook"/>.</summary>
    public static Sae Random(Random rng, SaeArchitecture arch, int dIn, int dSae, string hook, int dOut = 0, string? hookOut = null,
        int k = 0, bool applyBDec = false, ActivationNormalization norm = ActivationNormalization.None, bool rescale = false, float inputScale = 1f)
    {
        var cfg = new SaeConfig
        {
            Architecture = arch, DIn = dIn, DSae = dSae, DOut = dOut > 0 ? dOut : dIn, K = k, ApplyBDecToInput = applyBDec,
            Normalization = norm, RescaleActsByDecoderNorm = rescale,
            Metadata = new SaeMetadata { HookName = hook, HookNameOut = hookOut, ModelName = "test" },
        };
        int o = cfg.DOut;
        float encScale = 1f / (MathF.Sqrt(dIn) * inputScale);
        var wEnc = Gaussian(rng, (long)dIn * dSae, encScale);
        var bEnc = Gaussian(rng, dSae, 0.1f);
        var wDec = Gaussian(rng, (long)dSae * o, 1f / MathF.Sqrt(o) * inputScale * 0.5f);
        var bDec = Gaussian(rng, o, 0.1f * inputScale);
        float[]? threshold = null, bGate = null, rMag = null, bMag = null, wSkip = null;
        if (cfg.HasThreshold) { threshold = new float[dSae]; for (int j = 0; j < dSae; j++) threshold[j] = 0.05f + 0.2f * (float)rng.NextDouble(); }
        if (arch == SaeArchitecture.Gated) { bGate = Gaussian(rng, dSae, 0.1f); rMag = Gaussian(rng, dSae, 0.2f); bMag = Gaussian(rng, dSae, 0.1f); bEnc = null; }
        if (cfg.HasSkip) wSkip = Gaussian(rng, (long)o * dIn, 0.1f / MathF.Sqrt(dIn));
        return new Sae(cfg, wEnc, bEnc, wDec, bDec, threshold, bGate, rMag, bMag, wSkip);
    }
}
