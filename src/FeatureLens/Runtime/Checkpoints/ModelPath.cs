namespace FeatureLens.Runtime.Checkpoints;

/// <summary>Turns what a user typed for a model (a path or a cached Hugging Face repo id) into an absolute path.</summary>
public static class ModelPath
{
    /// <summary>
    /// An existing file or folder wins; otherwise something shaped like a repo id is looked up in the
    /// Hugging Face cache; otherwise an error that says both were tried.
    /// </summary>
    public static string Resolve(string pathOrRepoId) => Resolve(pathOrRepoId, null);

    /// <summary>As <see cref="Resolve(string)"/> with an explicit Hugging Face cache root (null = from the environment).</summary>
    public static string Resolve(string pathOrRepoId, string? cacheRoot)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(pathOrRepoId);
        if (File.Exists(pathOrRepoId) || Directory.Exists(pathOrRepoId)) return Path.GetFullPath(pathOrRepoId);
        string why;
        if (HfCache.LooksLikeRepoId(pathOrRepoId))
        {
            try { return cacheRoot is null ? HfCache.Resolve(pathOrRepoId) : HfCache.Resolve(pathOrRepoId, cacheRoot); }
            catch (Exception e) when (e is IOException or ArgumentException or InvalidDataException) { why = e.Message; }
        }
        else why = "it does not have the shape ORG/NAME[@REVISION] of a repo id";
        throw new FileNotFoundException(
            $"'{pathOrRepoId}' is not a file, folder, or cached Hugging Face repo id: no such path ({Path.GetFullPath(pathOrRepoId)}); {why}");
    }
}
