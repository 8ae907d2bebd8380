using FeatureLens.Runtime.Tokenizers;

namespace FeatureLens.Tests.Tokenizers;

/// <summary>
/// The Split pre-tokenizer's behaviors. @lenml/tokenizers implements only Isolated and Removed, so
/// the others are checked against the examples of Hugging Face's SplitDelimiterBehavior
/// documentation, and invert against its definition on fresh random text.
/// </summary>
public class SplitPreTokenizerTests
{
    private static List<string> Run(string pattern, SplitBehavior behavior, bool invert, string text)
    {
        var output = new List<string>();
        new PreTokenizerStep.Split(CodePointRegex.Get(pattern, "test"), behavior, invert).Apply(text, atInputStart: true, output);
        return output;
    }

    [Theory]
    [InlineData("Removed", new[] { "the", "final", "countdown" })]
    [InlineData("Isolated", new[] { "the", "-", "final", "-", "-", "countdown" })]
    [InlineData("MergedWithPrevious", new[] { "the-", "final-", "-", "countdown" })]
    [InlineData("MergedWithNext", new[] { "the", "-final", "-", "-countdown" })]
    [InlineData("Contiguous", new[] { "the", "-", "final", "--", "countdown" })]
    public void Behaviors_give_the_documented_pieces(string behavior, string[] expected)
    {
        Assert.Equal(expected, Run("-", Enum.Parse<SplitBehavior>(behavior), invert: false, "the-final--countdown"));
    }

    [Fact]
    public void Invert_swaps_matches_and_gaps_on_random_text()
    {
        int seed = Random.Shared.Next();
        var random = new Random(seed);
        string[] pool = ["a", "b", "𝐀", "-", "-", "😀", " ", "x"];
        foreach (SplitBehavior behavior in Enum.GetValues<SplitBehavior>())
        {
            for (int t = 0; t < 200; t++)
            {
                string text = string.Concat(Enumerable.Range(0, random.Next(0, 15)).Select(_ => pool[random.Next(pool.Length)]));
                // "-+" matches exactly the gaps between the matches of "[^-]+": inverting one gives the other.
                var direct = Run("-+", behavior, invert: false, text);
                var inverted = Run("[^-]+", behavior, invert: true, text);
                Assert.True(direct.SequenceEqual(inverted), $"seed {seed}, {behavior}, \"{text}\": [{string.Join("|", direct)}] vs inverted [{string.Join("|", inverted)}]");
                // Every behavior but Removed keeps all the text; Removed keeps all but the delimiters.
                Assert.Equal(behavior == SplitBehavior.Removed ? text.Replace("-", "", StringComparison.Ordinal) : text, string.Concat(direct));
                Assert.DoesNotContain("", direct);
            }
        }
    }
}
