namespace FeatureLens.Runtime.Tensors;

/// <summary>
/// Reuse of the large float buffers a run hands out in its caches (an SAE's (tokens × d_sae) latents and their
/// gradients are hundreds of megabytes each). Fresh memory costs a page fault per 4 KiB page, and on a VM the first touch
/// of guest memory far more: an attribution run on the GPT-2-small shape with 12 SAEs allocates gigabytes per pass.
/// Buffers are exact-length (a tensor's data is exactly its elements), handed out uninitialised, and come back when
/// their owner is disposed (<see cref="Models.ActivationCache.Dispose"/>); a buffer never returned is collected as usual.
/// The pool keeps at most a quarter of the memory available to the process.
/// </summary>
public static class BufferPool
{
    /// <summary>Buffers smaller than this (in elements) are plain allocations.</summary>
    public const int MinPooledLength = 1 << 18;

    static readonly object Gate = new();
    static readonly Dictionary<int, Stack<float[]>> Free = [];
    // which arrays are out on loan, held weakly: a buffer whose owner is never disposed is collected as usual
    static readonly System.Runtime.CompilerServices.ConditionalWeakTable<float[], object> Lent = new();
    static readonly object Marker = new();
    static long _pooledBytes;
    static readonly long CapBytes = Math.Max(256L << 20, GC.GetGCMemoryInfo().TotalAvailableMemoryBytes / 4);

    /// <summary>Bytes held by the pool now (not lent out).</summary>
    public static long PooledBytes { get { lock (Gate) return _pooledBytes; } }

    /// <summary>An array of exactly <paramref name="length"/> elements whose contents are undefined (write every entry).</summary>
    public static float[] Rent(int length)
    {
        if (length < MinPooledLength) return GC.AllocateUninitializedArray<float>(length);
        lock (Gate)
        {
            if (!Free.TryGetValue(length, out var stack) || !stack.TryPop(out var a))
                a = GC.AllocateUninitializedArray<float>(length);
            else _pooledBytes -= (long)length * sizeof(float);
            Lent.AddOrUpdate(a, Marker);
            return a;
        }
    }

    /// <summary>An array of <paramref name="length"/> zeros.</summary>
    public static float[] RentZeroed(int length)
    {
        var a = Rent(length);
        Array.Clear(a);
        return a;
    }

    /// <summary>
    /// Gives back a buffer from <see cref="Rent"/> (others, and a second return of the same buffer, are ignored). The
    /// caller must not read or write it afterwards.
    /// </summary>
    public static void Return(float[] a)
    {
        if (a.Length < MinPooledLength) return;
        lock (Gate)
        {
            if (!Lent.Remove(a)) return;
            long bytes = (long)a.Length * sizeof(float);
            if (_pooledBytes + bytes > CapBytes) return;
            if (!Free.TryGetValue(a.Length, out var stack)) Free[a.Length] = stack = new Stack<float[]>();
            stack.Push(a);
            _pooledBytes += bytes;
        }
    }

    /// <summary>Drops every pooled buffer (the garbage collector then reclaims them).</summary>
    public static void Trim()
    {
        lock (Gate) { Free.Clear(); _pooledBytes = 0; }
    }
}
