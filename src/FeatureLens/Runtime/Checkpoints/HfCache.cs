using System.Text.RegularExpressions;

namespace FeatureLens.Runtime.Checkpoints;

/// <summary>
/// Finds models in the local Hugging Face hub cache (filled by huggingface_hub or by `featurelens download`, the only
/// command that uses the network).
/// Layout: <c>{root}/models--ORG--NAME/refs/{revision}</c> holds a commit hash and
/// <c>{root}/models--ORG--NAME/snapshots/{hash}/</c> holds the files. The root is
/// <c>$HF_HUB_CACHE</c>, else <c>$HF_HOME/hub</c>, else <c>$XDG_CACHE_HOME/huggingface/hub</c>,
/// else <c>~/.cache/huggingface/hub</c>.
/// </summary>
public static partial class HfCache
{
    /// <summary>The hub cache folder the environment selects (it need not exist).</summary>
    public static string CacheRoot() => CacheRootAndReason().root;

    static (string root, string reason) CacheRootAndReason()
    {
        string? hubCache = Environment.GetEnvironmentVariable("HF_HUB_CACHE");
        if (!string.IsNullOrEmpty(hubCache)) return (Path.GetFullPath(hubCache), "from HF_HUB_CACHE");
        string? hfHome = Environment.GetEnvironmentVariable("HF_HOME");
        if (!string.IsNullOrEmpty(hfHome)) return (Path.GetFullPath(Path.Combine(hfHome, "hub")), "from HF_HOME");
        string? xdg = Environment.GetEnvironmentVariable("XDG_CACHE_HOME");
        if (!string.IsNullOrEmpty(xdg)) return (Path.GetFullPath(Path.Combine(xdg, "huggingface", "hub")), "from XDG_CACHE_HOME");
        string home = Environment.GetFolderPath(Environment.SpecialFolder.UserProfile);
        return (Path.Combine(home, ".cache", "huggingface", "hub"), "default; set HF_HUB_CACHE or HF_HOME to change it");
    }

    /// <summary>The cache folder of a model repo ("ORG/NAME" → <c>{root}/models--ORG--NAME</c>) under the environment's cache root.</summary>
    public static string RepoFolder(string repoId) => RepoFolder(repoId, CacheRoot());

    /// <summary>The cache folder of a model repo under an explicit cache root.</summary>
    public static string RepoFolder(string repoId, string cacheRoot)
    {
        var id = Parse(repoId);
        return Path.Combine(cacheRoot, "models--" + id.Repo.Replace("/", "--"));
    }

    /// <summary>True when <paramref name="text"/> has the shape of a repo reference: NAME or ORG/NAME, optionally @REVISION, optionally /path/inside.</summary>
    public static bool LooksLikeRepoId(string text) => RepoRef().IsMatch(text);

    /// <summary>
    /// Resolves "ORG/NAME", "ORG/NAME@REVISION" (branch, tag or commit hash) or "ORG/NAME[@REVISION]/path/in/repo"
    /// to a snapshot folder (or the file inside it) in the environment's cache.
    /// </summary>
    public static string Resolve(string repoId)
    {
        var (root, reason) = CacheRootAndReason();
        return Resolve(repoId, root, $"cache root {root} ({reason})");
    }

    /// <summary>As <see cref="Resolve(string)"/>, under an explicit cache root (tests, custom layouts).</summary>
    public static string Resolve(string repoId, string cacheRoot) => Resolve(repoId, cacheRoot, $"cache root {cacheRoot}");

    static string Resolve(string repoId, string cacheRoot, string rootDescription)
    {
        var id = Parse(repoId);
        string repoFolder = Path.Combine(cacheRoot, "models--" + id.Repo.Replace("/", "--"));
        if (!Directory.Exists(repoFolder))
            throw new DirectoryNotFoundException(
                $"Hugging Face repo '{id.Repo}' is not in the local cache: looked for {repoFolder} ({rootDescription})");

        string refFile = Path.Combine(repoFolder, "refs", id.Revision);
        string snapshots = Path.Combine(repoFolder, "snapshots");
        string? snapshot = null;
        if (File.Exists(refFile))
        {
            string hash = File.ReadAllText(refFile).Trim();
            if (hash.Length == 0 || hash.IndexOfAny(['/', '\\']) >= 0 || hash.Contains(".."))
                throw new InvalidDataException($"{refFile}: expected a commit hash, found \"{hash}\"");
            snapshot = Path.Combine(snapshots, hash);
            if (!Directory.Exists(snapshot))
                throw new DirectoryNotFoundException(
                    $"Hugging Face repo '{id.Repo}': {refFile} points at commit {hash}, but snapshot folder {snapshot} does not exist");
        }
        else if (Directory.Exists(Path.Combine(snapshots, id.Revision)))
        {
            snapshot = Path.Combine(snapshots, id.Revision);
        }
        else
        {
            string available = Directory.Exists(snapshots)
                ? string.Join(", ", Directory.GetDirectories(snapshots).Select(Path.GetFileName))
                : "none";
            throw new DirectoryNotFoundException(
                $"Hugging Face repo '{id.Repo}' revision '{id.Revision}' is not in the local cache: looked for {refFile} and {Path.Combine(snapshots, id.Revision)} (snapshots present: {available})");
        }

        if (id.PathInRepo is null) return snapshot;
        string inside = Path.Combine(snapshot, id.PathInRepo);
        if (!File.Exists(inside) && !Directory.Exists(inside))
            throw new FileNotFoundException($"Hugging Face repo '{id.Repo}' snapshot {snapshot} has no '{id.PathInRepo}'", inside);
        return inside;
    }

    readonly record struct RepoId(string Repo, string Revision, string? PathInRepo);

    static RepoId Parse(string repoId)
    {
        ArgumentNullException.ThrowIfNull(repoId);
        var m = RepoRef().Match(repoId);
        if (!m.Success)
            throw new ArgumentException(
                $"'{repoId}' is not a Hugging Face repo id (expected ORG/NAME, ORG/NAME@REVISION or ORG/NAME[@REVISION]/path/in/repo)", nameof(repoId));
        string repo = m.Groups["org"].Success ? m.Groups["org"].Value + "/" + m.Groups["name"].Value : m.Groups["name"].Value;
        string revision = m.Groups["rev"].Success ? m.Groups["rev"].Value : "main";
        string? path = m.Groups["path"].Success ? m.Groups["path"].Value : null;
        if (path is not null && path.Split('/').Any(s => s is ".." or "."))
            throw new ArgumentException($"'{repoId}': path inside the repo must not contain '.' or '..' segments", nameof(repoId));
        return new RepoId(repo, revision, path);
    }

    // [ORG/]NAME[@REV][/path]: names use letters, digits, '-', '_', '.'; a path needs the ORG/ part to be unambiguous.
    [GeneratedRegex(@"^(?:(?<org>[A-Za-z0-9][\w.\-]*)/)?(?<name>[A-Za-z0-9][\w.\-]*)(?:@(?<rev>[\w.\-]+))?(?:/(?<path>[^@]+))?$")]
    private static partial Regex RepoRef();
}
