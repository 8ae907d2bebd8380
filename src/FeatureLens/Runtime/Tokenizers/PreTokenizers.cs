using System.Text.RegularExpressions;

namespace FeatureLens.Runtime.Tokenizers;

/// <summary>How a Split pre-tokenizer treats the spans its pattern matches (tokenizer.json <c>behavior</c>).</summary>
internal enum SplitBehavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous }

/// <summary>
/// One step of tokenizer.json's <c>pre_tokenizer</c> (a <c>Sequence</c> is a list of them): it cuts
/// each piece of text into smaller pieces; the model then encodes each final piece on its own.
/// </summary>
internal abstract record PreTokenizerStep
{
    /// <summary>Appends the pieces of <paramref name="piece"/> to <paramref name="output"/> (never empty pieces).</summary>
    /// <param name="piece">A piece from the previous step.</param>
    /// <param name="atInputStart">Whether the piece starts the whole input (Metaspace's prepend_scheme "first").</param>
    /// <param name="output">Where the pieces go.</param>
    public abstract void Apply(string piece, bool atInputStart, List<string> output);

    /// <summary>
    /// Split: the pattern's matches (leftmost, non-overlapping; <c>invert</c> swaps matches and the
    /// text between them) are removed, isolated, merged into the previous or next piece, or merged
    /// with adjacent matches, as Hugging Face's SplitDelimiterBehavior defines.
    /// </summary>
    public sealed record Split(Regex Pattern, SplitBehavior Behavior, bool Invert) : PreTokenizerStep
    {
        public override void Apply(string piece, bool atInputStart, List<string> output)
        {
            if (piece.Length == 0) return;
            // (start, end, isMatch) spans covering the piece.
            var spans = new List<(int Start, int End, bool IsMatch)>();
            int previous = 0;
            for (var m = Pattern.Match(piece); m.Success; m = m.NextMatch())
            {
                if (m.Index > previous) spans.Add((previous, m.Index, Invert));
                spans.Add((m.Index, m.Index + m.Length, !Invert));
                previous = m.Index + m.Length;
            }
            if (previous < piece.Length) spans.Add((previous, piece.Length, Invert));

            var pieces = new List<(int Start, int End)>(spans.Count);
            switch (Behavior)
            {
                case SplitBehavior.Removed:
                    foreach (var s in spans) if (!s.IsMatch) pieces.Add((s.Start, s.End));
                    break;
                case SplitBehavior.Isolated:
                    foreach (var s in spans) pieces.Add((s.Start, s.End));
                    break;
                case SplitBehavior.MergedWithPrevious:
                {
                    bool previousMatch = false;
                    foreach (var s in spans)
                    {
                        if (s.IsMatch && !previousMatch && pieces.Count > 0) pieces[^1] = (pieces[^1].Start, s.End);
                        else pieces.Add((s.Start, s.End));
                        previousMatch = s.IsMatch;
                    }
                    break;
                }
                case SplitBehavior.MergedWithNext:
                {
                    bool previousMatch = false;
                    for (int k = spans.Count - 1; k >= 0; k--)
                    {
                        var s = spans[k];
                        if (s.IsMatch && !previousMatch && pieces.Count > 0) pieces[^1] = (s.Start, pieces[^1].End);
                        else pieces.Add((s.Start, s.End));
                        previousMatch = s.IsMatch;
                    }
                    pieces.Reverse();
                    break;
                }
                case SplitBehavior.Contiguous:
                {
                    bool previousMatch = false;
                    foreach (var s in spans)
                    {
                        if (s.IsMatch == previousMatch && pieces.Count > 0) pieces[^1] = (pieces[^1].Start, s.End);
                        else pieces.Add((s.Start, s.End));
                        previousMatch = s.IsMatch;
                    }
                    break;
                }
            }
            foreach (var (start, end) in pieces)
                if (end > start) output.Add(start == 0 && end == piece.Length ? piece : piece[start..end]);
        }
    }

    /// <summary>
    /// ByteLevel: a space before the piece when <c>add_prefix_space</c> and it lacks one, then (with
    /// <c>use_regex</c>) GPT-2's pattern isolates words, numbers, punctuation runs and spaces. The
    /// byte-to-character mapping itself is done by the byte-level model.
    /// </summary>
    public sealed record ByteLevel(bool AddPrefixSpace, bool UseRegex) : PreTokenizerStep
    {
        /// <summary>GPT-2's pre-tokenization pattern.</summary>
        public const string Gpt2Pattern = @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

        private static readonly Lazy<Split> Gpt2Split = new(() =>
            new Split(CodePointRegex.Get(Gpt2Pattern, "GPT-2 pattern"), SplitBehavior.Isolated, Invert: false));

        public override void Apply(string piece, bool atInputStart, List<string> output)
        {
            if (AddPrefixSpace && !piece.StartsWith(' ')) piece = " " + piece;
            if (UseRegex) Gpt2Split.Value.Apply(piece, atInputStart, output);
            else if (piece.Length > 0) output.Add(piece);
        }
    }

    /// <summary>
    /// The legacy Metaspace pre-tokenizer: spaces become the replacement character, which is also put
    /// before the text (prepend_scheme "always", or "first" = only for text at the start of the input),
    /// and with Split the text is cut before each replacement character.
    /// </summary>
    public sealed record Metaspace(string Replacement, string PrependScheme, bool SplitWords) : PreTokenizerStep
    {
        public override void Apply(string piece, bool atInputStart, List<string> output)
        {
            string s = piece.Replace(" ", Replacement, StringComparison.Ordinal);
            bool prepend = PrependScheme == "always" || (PrependScheme == "first" && atInputStart);
            if (prepend && s.Length > 0 && !s.StartsWith(Replacement, StringComparison.Ordinal)) s = Replacement + s;
            if (s.Length == 0) return;
            if (!SplitWords)
            {
                output.Add(s);
                return;
            }
            // MergedWithNext on the replacement: each replacement character starts a new word.
            int wordStart = 0;
            for (int i = s.IndexOf(Replacement, 1, StringComparison.Ordinal); i > 0; i = s.IndexOf(Replacement, i + 1, StringComparison.Ordinal))
            {
                output.Add(s[wordStart..i]);
                wordStart = i;
            }
            if (wordStart < s.Length) output.Add(s[wordStart..]);
        }
    }
}

/// <summary>A pre-tokenizer pipeline: each step applied to every piece the previous step produced.</summary>
internal sealed class PreTokenizer(IReadOnlyList<PreTokenizerStep> steps)
{
    public IReadOnlyList<PreTokenizerStep> Steps { get; } = steps;

    /// <summary>The pieces of one normalized segment of text.</summary>
    public List<string> Run(string segment, bool atInputStart)
    {
        var pieces = new List<string>(1) { segment };
        if (Steps.Count == 0)
        {
            if (segment.Length == 0) pieces.Clear();
            return pieces;
        }
        foreach (var step in Steps)
        {
            var next = new List<string>(pieces.Count * 2);
            for (int k = 0; k < pieces.Count; k++) step.Apply(pieces[k], atInputStart && k == 0, next);
            pieces = next;
        }
        return pieces;
    }
}
