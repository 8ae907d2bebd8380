using FeatureLens.Runtime.Models;

namespace FeatureLens.Tests.Models;

/// <summary>Temperature and top-p sampling draw from the distribution they claim (checked by frequency).</summary>
public class SamplingTests
{
    [Theory]
    [InlineData(1.0f, 1.0f)]
    [InlineData(0.7f, 0.9f)]
    [InlineData(1.5f, 0.5f)]
    public void DrawsFollowTheTruncatedSoftmax(float temperature, float topP)
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        float[] logits = Enumerable.Range(0, 12).Select(_ => (float)(rng.NextDouble() * 4 - 2)).ToArray();

        // expected: softmax(logits / T), sorted, the shortest prefix reaching top-p, renormalised
        double[] p = logits.Select(l => Math.Exp(l / temperature)).ToArray();
        double z = p.Sum();
        var order = Enumerable.Range(0, p.Length).OrderByDescending(i => p[i]).ToArray();
        var expected = new double[p.Length];
        double mass = 0;
        foreach (int i in order)
        {
            expected[i] = p[i] / z;
            mass += p[i] / z;
            if (mass >= topP) break;
        }
        for (int i = 0; i < expected.Length; i++) expected[i] /= mass;

        const int draws = 40_000;
        var counts = new int[p.Length];
        var options = new SamplingOptions(temperature, topP, seed);
        for (int d = 0; d < draws; d++) counts[Generation.Sample(logits, options, rng)]++;
        for (int i = 0; i < p.Length; i++)
        {
            if (expected[i] == 0) { Assert.True(counts[i] == 0, $"token {i} is outside the nucleus but was drawn {counts[i]} times (seed {seed})"); continue; }
            double sigma = Math.Sqrt(draws * expected[i] * (1 - expected[i]));
            Assert.True(Math.Abs(counts[i] - draws * expected[i]) <= 5 * sigma + 1,
                $"token {i}: drawn {counts[i]} times, expected {draws * expected[i]:F0} ± {sigma:F0} (seed {seed}, T {temperature}, top-p {topP})");
        }
    }

    [Fact]
    public void BadSamplingOptionsAreRejected()
    {
        Assert.Throws<ArgumentException>(() => new SamplingOptions(-1f).Validate());
        Assert.Throws<ArgumentException>(() => new SamplingOptions(float.NaN).Validate());
        Assert.Throws<ArgumentException>(() => new SamplingOptions(1f, 0f).Validate());
        Assert.Throws<ArgumentException>(() => new SamplingOptions(1f, 1.5f).Validate());
    }
}
