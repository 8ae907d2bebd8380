namespace FeatureLens.Runtime.Tokenizers;

/// <summary>
/// The merge rules of a BPE vocabulary as a map from an adjacent id pair (left, right) to
/// (priority, merged id), and the merge loop shared by all tokenizers here: repeatedly merge the
/// adjacent pair with the lowest priority, the leftmost one among equal priorities, until no
/// adjacent pair has a rule. Hugging Face BPE uses the merge rank as the priority; llama2.c
/// uses the merged piece's score (higher score = lower priority).
/// </summary>
internal sealed class BpeMergeTable
{
    private readonly Dictionary<long, (int Priority, int MergedId)> rules = new(PairKeyComparer.Instance);

    /// <summary>
    /// long's own hash (low ^ high half) is left ^ right, which piles the pairs of a large vocabulary
    /// (Gemma's 515k merges) into few buckets; a multiplicative mix spreads them.
    /// </summary>
    private sealed class PairKeyComparer : IEqualityComparer<long>
    {
        public static readonly PairKeyComparer Instance = new();
        public bool Equals(long x, long y) => x == y;
        public int GetHashCode(long key) => (int)(((ulong)key * 0x9E3779B97F4A7C15UL) >> 32);
    }

    private static long Key(int left, int right) => ((long)left << 32) | (uint)right;

    /// <summary>Adds (or replaces: a later rule for the same pair wins, as in Hugging Face and GPT-2's dict) a rule.</summary>
    public void Set(int left, int right, int priority, int mergedId) => rules[Key(left, right)] = (priority, mergedId);

    /// <summary>Up to this many symbols, rescanning all pairs after each merge beats the heap.</summary>
    private const int ShortWord = 24;

    /// <summary>
    /// The same merge loop by rescanning: find the lowest-priority pair (the first one among
    /// equals), merge it, repeat. O(n²) lookups, no allocation but the result.
    /// </summary>
    private int[] MergeShort(ReadOnlySpan<int> symbols)
    {
        Span<int> ids = stackalloc int[symbols.Length];
        symbols.CopyTo(ids);
        int n = ids.Length;
        while (n > 1)
        {
            int bestIndex = -1, bestPriority = 0, bestMerged = 0;
            for (int i = 0; i + 1 < n; i++)
                if (rules.TryGetValue(Key(ids[i], ids[i + 1]), out var rule) && (bestIndex < 0 || rule.Priority < bestPriority))
                    (bestIndex, bestPriority, bestMerged) = (i, rule.Priority, rule.MergedId);
            if (bestIndex < 0) break;
            ids[bestIndex] = bestMerged;
            ids[(bestIndex + 2)..n].CopyTo(ids[(bestIndex + 1)..]);
            n--;
        }
        return ids[..n].ToArray();
    }

    /// <summary>
    /// Merges <paramref name="symbols"/> (n ids) into the final ids. A binary heap keyed by
    /// (priority, position of the left symbol) gives the same result as rescanning all pairs
    /// after each merge (llama2.c) in O(n log n) instead of O(n²).
    /// </summary>
    public int[] Merge(ReadOnlySpan<int> symbols)
    {
        int n = symbols.Length;
        if (n < 2) return symbols.ToArray();
        if (n <= ShortWord) return MergeShort(symbols);

        // Doubly linked list over symbol positions; a merged-away position has alive = false.
        var ids = symbols.ToArray();
        var prev = new int[n];
        var next = new int[n];
        var alive = new bool[n];
        for (int i = 0; i < n; i++) { prev[i] = i - 1; next[i] = i + 1 < n ? i + 1 : -1; alive[i] = true; }

        // Heap entries remember the ids they were made for: an entry is stale once either side changed.
        var heap = new PriorityQueue<(int Left, int Right, int LeftId, int RightId, int MergedId), long>();
        void Push(int left, int right)
        {
            if (left < 0 || right < 0) return;
            if (rules.TryGetValue(Key(ids[left], ids[right]), out var rule))
                heap.Enqueue((left, right, ids[left], ids[right], rule.MergedId), ((long)rule.Priority << 32) | (uint)left);
        }
        for (int i = 0; i + 1 < n; i++) Push(i, i + 1);

        int remaining = n;
        while (heap.TryDequeue(out var m, out _))
        {
            if (!alive[m.Left] || !alive[m.Right] || next[m.Left] != m.Right) continue;
            if (ids[m.Left] != m.LeftId || ids[m.Right] != m.RightId) continue;
            ids[m.Left] = m.MergedId;
            alive[m.Right] = false;
            int after = next[m.Right];
            next[m.Left] = after;
            if (after >= 0) prev[after] = m.Left;
            remaining--;
            Push(prev[m.Left], m.Left);
            Push(m.Left, after);
        }

        var result = new int[remaining];
        int k = 0;
        for (int i = 0; i >= 0; i = next[i]) result[k++] = ids[i];
        return result;
    }
}
