namespace FeatureLens.Saes.Training;

/// <summary>
/// A stream of activation rows (tokens) of width d_in, read in order and re-readable from any position, so a
/// resumed run sees exactly the rows the uninterrupted run would have.
/// </summary>
public interface IActivationSource
{
    /// <summary>Width of a row.</summary>
    int DIn { get; }

    /// <summary>Writes up to <paramref name="maxRows"/> rows (row-major, d_in each) into <paramref name="batch"/>;
    /// returns the number written, 0 at the end of the data.</summary>
    int Next(Span<float> batch, int maxRows);

    /// <summary>Rows delivered so far (the index of the next row).</summary>
    long Position { get; }

    /// <summary>Continues from row <paramref name="position"/> (0 rewinds).</summary>
    void Seek(long position);

    /// <summary>Where the rows come from, in words (recorded in checkpoints and logs).</summary>
    string Describe();
}
