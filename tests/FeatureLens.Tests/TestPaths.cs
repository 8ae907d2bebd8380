using System.Runtime.CompilerServices;

namespace FeatureLens.Tests;

/// <summary>Where the tests find the repository and the shared read-only data (../shared beside the repository).</summary>
internal static class TestPaths
{
    private static readonly Lazy<string> repoRoot = new(() => FindRepoRoot());

    /// <summary>The folder that holds FeatureLens.slnx.</summary>
    public static string RepoRoot => repoRoot.Value;

    /// <summary>RepoRoot/../shared: models, reference outputs and corpora.</summary>
    public static string Shared => Path.GetFullPath(Path.Combine(RepoRoot, "..", "shared"));

    /// <summary>
    /// Walks up from the test assembly's folder; when the build output lives elsewhere
    /// (dotnet build --artifacts-path /tmp/...), from the working directory, then from this source
    /// file's folder as the compiler recorded it.
    /// </summary>
    private static string FindRepoRoot([CallerFilePath] string sourceFile = "")
    {
        string?[] starts = [AppContext.BaseDirectory, Environment.CurrentDirectory, Path.GetDirectoryName(sourceFile)];
        foreach (string? start in starts)
        {
            if (string.IsNullOrEmpty(start)) continue;
            for (var dir = new DirectoryInfo(start); dir is not null; dir = dir.Parent)
                if (File.Exists(Path.Combine(dir.FullName, "FeatureLens.slnx"))) return dir.FullName;
        }
        throw new DirectoryNotFoundException($"No folder containing FeatureLens.slnx above {string.Join(", ", starts)}.");
    }
}
