using FeatureLens.Database;

namespace FeatureLens.Tests.Database;

/// <summary>LogitLens.Select (vectorised skipping) against a full sort, on random rows with many ties.</summary>
public class LogitLensSelectTests
{
    [Fact]
    public void SelectEqualsAStableSortOfTheRow()
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        for (int trial = 0; trial < 200; trial++)
        {
            int n = rng.Next(1, 300), k = rng.Next(1, 25), levels = rng.Next(2, 50);
            // few distinct values: ties everywhere; the order of ties is the lower token first
            var row = Enumerable.Range(0, n).Select(_ => (float)(rng.Next(levels) - levels / 2) * 0.37f).ToArray();
            foreach (bool top in new[] { true, false })
            {
                var expected = Enumerable.Range(0, n).Select(v => new TokenValue(v, row[v]))
                    .OrderBy(t => top ? -t.Value : t.Value).ThenBy(t => t.Token).Take(k).ToArray();
                var got = LogitLens.Select(row, k, top);
                Assert.True(expected.SequenceEqual(got), $"seed {seed}, trial {trial}, n {n}, k {k}, top {top}: expected [{string.Join(", ", expected)}], got [{string.Join(", ", got)}]");
            }
        }
    }
}
