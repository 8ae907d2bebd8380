using System.Runtime.CompilerServices;
using FeatureLens.Runtime.Tensors;

namespace FeatureLens.Tests.Tensors;

/// <summary>The buffer pool hands returned buffers out again, ignores foreign and doubled returns, and never keeps an unreturned buffer alive.</summary>
public class BufferPoolTests
{
    [Fact]
    public void ReturnedBuffersAreReusedOnceAndUnreturnedOnesAreCollected()
    {
        int n = BufferPool.MinPooledLength + Random.Shared.Next(1, 1000);   // a length no other test uses
        var a = BufferPool.Rent(n);
        Assert.Equal(n, a.Length);
        BufferPool.Return(a);
        BufferPool.Return(a);                        // a second return is ignored
        BufferPool.Return(new float[n]);             // so is a buffer the pool never lent
        var b = BufferPool.Rent(n);
        Assert.Same(a, b);
        Assert.NotSame(b, BufferPool.Rent(n));       // handed out once only
        var zero = BufferPool.RentZeroed(n);
        Assert.All(zero, v => Assert.Equal(0f, v));

        var weak = LendAndDrop(n + 1);
        for (int i = 0; i < 3 && weak.IsAlive; i++) { GC.Collect(); GC.WaitForPendingFinalizers(); }
        Assert.False(weak.IsAlive, "a lent buffer that was never returned is still reachable");
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    static WeakReference LendAndDrop(int n) => new(BufferPool.Rent(n));
}
