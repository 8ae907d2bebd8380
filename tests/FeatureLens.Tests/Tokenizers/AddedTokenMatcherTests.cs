using FeatureLens.Runtime.Tokenizers;

namespace FeatureLens.Tests.Tokenizers;

/// <summary>
/// Added-token matching options no real tokenizer file here uses (lstrip, rstrip, single_word), on
/// Hugging Face's definitions: lstrip/rstrip take the whitespace before/after the token with it;
/// a single_word token matches only with no letter, digit or '_' touching it; at one position the
/// longest token wins; a skipped match is not searched again inside.
/// </summary>
public class AddedTokenMatcherTests
{
    private static List<string> Parts(AddedTokenMatcher matcher, string text) =>
        matcher.Split(text).Select(p => p.TokenId >= 0 ? $"[{p.TokenId}:{text.Substring(p.Start, p.Length)}]" : text.Substring(p.Start, p.Length)).ToList();

    [Fact]
    public void Lstrip_rstrip_single_word_and_longest_match()
    {
        var matcher = new AddedTokenMatcher(
        [
            new AddedToken(1, "<mask>", Special: true, LStrip: true),
            new AddedToken(2, "<sep>", Special: true, RStrip: true),
            new AddedToken(3, "ab", Special: false, SingleWord: true),
            new AddedToken(4, "<|x|>", Special: true),
            new AddedToken(5, "<|x|>y", Special: true),
        ]);
        Assert.Equal(["Hey", "[1:  <mask>]", " there"], Parts(matcher, "Hey  <mask> there"));
        Assert.Equal(["Hey ", "[2:<sep>\t ]", "there"], Parts(matcher, "Hey <sep>\t there"));
        Assert.Equal(["x ", "[3:ab]", " y"], Parts(matcher, "x ab y"));
        Assert.Equal(["xab y"], Parts(matcher, "xab y"));
        Assert.Equal(["ab_"], Parts(matcher, "ab_"));
        Assert.Equal(["[3:ab]", "!"], Parts(matcher, "ab!"));
        Assert.Equal(["𝐀ab"], Parts(matcher, "𝐀ab")); // an astral letter is a word character too
        Assert.Equal(["[5:<|x|>y]", "[4:<|x|>]", "<|x|"], Parts(matcher, "<|x|>y<|x|><|x|"));
        // lstrip never reaches back into the previous token
        Assert.Equal(["[2:<sep> ]", "[1:<mask>]"], Parts(matcher, "<sep> <mask>"));
        Assert.Equal([], Parts(matcher, ""));
    }
}
