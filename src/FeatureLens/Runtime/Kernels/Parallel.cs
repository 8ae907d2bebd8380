namespace FeatureLens.Runtime.Kernels;

/// <summary>Splits row-wise work across cores when there is enough of it to pay for the threads.</summary>
internal static class ParallelRows
{
    /// <summary>
    /// Runs <paramref name="body"/>(start, end) over [0, rows) in contiguous chunks. Work below
    /// <paramref name="minWorkPerThread"/> (in rows × <paramref name="costPerRow"/>) stays on this thread.
    /// </summary>
    public static void For(int rows, long costPerRow, Action<int, int> body, long minWorkPerThread = 1 << 15)
    {
        int threads = Math.Min(Environment.ProcessorCount, rows);
        if (threads <= 1 || rows * costPerRow < 2 * minWorkPerThread)
        {
            body(0, rows);
            return;
        }
        int chunks = Math.Min(rows, threads * 4);
        System.Threading.Tasks.Parallel.For(0, chunks, new ParallelOptions { MaxDegreeOfParallelism = threads }, c =>
        {
            int start = (int)((long)rows * c / chunks), end = (int)((long)rows * (c + 1) / chunks);
            if (end > start) body(start, end);
        });
    }
}
