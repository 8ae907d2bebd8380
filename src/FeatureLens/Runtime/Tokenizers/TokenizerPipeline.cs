namespace FeatureLens.Runtime.Tokenizers;

/// <summary>
/// What <see cref="ITokenizer.Encode"/> with <c>addBos</c> ("encode with special tokens") adds: BOS
/// first when <paramref name="AddBos"/>, EOS last when <paramref name="AddEos"/> (tokenizer_config.json's
/// add_bos_token / add_eos_token, else tokenizer.json's TemplateProcessing post-processor, else BOS).
/// </summary>
internal sealed record SpecialTokenRules(int? BosId, int? EosId, bool AddBos, bool AddEos)
{
    /// <summary>Prepends/appends what the rules add to <paramref name="body"/>.</summary>
    public int[] Wrap(List<int> body, bool withSpecialTokens)
    {
        if (!withSpecialTokens) return body.ToArray();
        bool bos = AddBos && BosId is not null, eos = AddEos && EosId is not null;
        var ids = new int[body.Count + (bos ? 1 : 0) + (eos ? 1 : 0)];
        if (bos) ids[0] = BosId!.Value;
        body.CopyTo(ids, bos ? 1 : 0);
        if (eos) ids[^1] = EosId!.Value;
        return ids;
    }
}

/// <summary>
/// The text side of a Hugging Face tokenizer, shared by the BPE models here, in Hugging Face's order:
/// added tokens matched in the raw text (those with normalized = false); each text segment between
/// them normalized; added tokens with normalized = true matched in the normalized text; the
/// pre-tokenizer cuts what is left into pieces; the model encodes each piece.
/// </summary>
internal sealed class TokenizerPipeline
{
    private readonly AddedTokenMatcher rawTokens;
    private readonly AddedTokenMatcher normalizedTokens;
    private readonly IReadOnlyList<NormalizerStep> normalizer;
    private readonly PreTokenizer preTokenizer;

    public TokenizerPipeline(IReadOnlyList<AddedToken> added, IReadOnlyList<NormalizerStep> normalizer, PreTokenizer preTokenizer)
    {
        rawTokens = new AddedTokenMatcher(added.Where(t => !t.Normalized));
        normalizedTokens = new AddedTokenMatcher(added.Where(t => t.Normalized));
        this.normalizer = normalizer;
        this.preTokenizer = preTokenizer;
    }

    /// <summary>Appends the ids of <paramref name="text"/> to <paramref name="ids"/>; <paramref name="encodePiece"/> is the model.</summary>
    public void Encode(string text, List<int> ids, Func<string, int[]> encodePiece)
    {
        foreach (var (start, length, tokenId) in rawTokens.Split(text))
        {
            if (tokenId >= 0) { ids.Add(tokenId); continue; }
            string segment = text.Substring(start, length);
            foreach (var step in normalizer) segment = step.Apply(segment);
            foreach (var (nStart, nLength, nTokenId) in normalizedTokens.Split(segment))
            {
                if (nTokenId >= 0) { ids.Add(nTokenId); continue; }
                string piece = nStart == 0 && nLength == segment.Length ? segment : segment.Substring(nStart, nLength);
                foreach (string word in preTokenizer.Run(piece, atInputStart: start == 0 && nStart == 0))
                    ids.AddRange(encodePiece(word));
            }
        }
    }
}
