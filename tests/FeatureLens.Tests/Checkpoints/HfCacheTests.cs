using FeatureLens.Runtime.Checkpoints;

namespace FeatureLens.Tests.Checkpoints;

/// <summary>Resolution against a hub cache laid out in a temporary folder (passed explicitly: no process environment is changed).</summary>
public class HfCacheTests
{
    /// <summary>Lays out models--ORG--NAME with refs/main → a snapshot holding config.json; returns the snapshot hash.</summary>
    static string AddRepo(string root, string repoId, string? branch = "main")
    {
        string hash = Guid.NewGuid().ToString("N") + Guid.NewGuid().ToString("N")[..8]; // 40 hex digits, like a commit
        string repo = Path.Combine(root, "models--" + repoId.Replace("/", "--"));
        string snapshot = Path.Combine(repo, "snapshots", hash);
        Directory.CreateDirectory(Path.Combine(snapshot, "stories260K"));
        File.WriteAllText(Path.Combine(snapshot, "config.json"), "{}");
        File.WriteAllText(Path.Combine(snapshot, "stories260K", "stories260K.bin"), "x");
        if (branch is not null)
        {
            Directory.CreateDirectory(Path.Combine(repo, "refs"));
            File.WriteAllText(Path.Combine(repo, "refs", branch), hash + "\n");
        }
        return hash;
    }

    [Fact]
    public void Resolves_main_a_branch_a_commit_and_a_file_inside()
    {
        using var root = new TempDir();
        string hash = AddRepo(root.Path, "karpathy/tinyllamas");
        string repo = Path.Combine(root.Path, "models--karpathy--tinyllamas");
        Assert.Equal(repo, HfCache.RepoFolder("karpathy/tinyllamas", root.Path));

        string snapshot = Path.Combine(repo, "snapshots", hash);
        Assert.Equal(snapshot, HfCache.Resolve("karpathy/tinyllamas", root.Path));
        Assert.Equal(snapshot, HfCache.Resolve("karpathy/tinyllamas@main", root.Path));
        Assert.Equal(snapshot, HfCache.Resolve($"karpathy/tinyllamas@{hash}", root.Path));
        Assert.Equal(Path.Combine(snapshot, "stories260K", "stories260K.bin"),
            HfCache.Resolve("karpathy/tinyllamas/stories260K/stories260K.bin", root.Path));

        // A second branch pointing at another snapshot.
        string other = AddRepo(root.Path, "karpathy/tinyllamas", "v2");
        Assert.Equal(Path.Combine(repo, "snapshots", other), HfCache.Resolve("karpathy/tinyllamas@v2", root.Path));
        Assert.Equal(snapshot, HfCache.Resolve("karpathy/tinyllamas", root.Path));

        // Single-name (legacy canonical) repos.
        string gpt2 = AddRepo(root.Path, "gpt2");
        Assert.Equal(Path.Combine(root.Path, "models--gpt2", "snapshots", gpt2), HfCache.Resolve("gpt2", root.Path));
    }

    [Fact]
    public void Missing_repo_revision_or_snapshot_says_what_was_looked_for()
    {
        using var root = new TempDir();
        var ex = Assert.Throws<DirectoryNotFoundException>(() => HfCache.Resolve("openai-community/gpt2", root.Path));
        Assert.Contains("models--openai-community--gpt2", ex.Message);
        Assert.Contains(root.Path, ex.Message);

        string hash = AddRepo(root.Path, "org/model");
        ex = Assert.Throws<DirectoryNotFoundException>(() => HfCache.Resolve("org/model@dev", root.Path));
        Assert.Contains(Path.Combine("refs", "dev"), ex.Message);
        Assert.Contains(hash, ex.Message); // lists the snapshots that are there

        Directory.Delete(Path.Combine(root.Path, "models--org--model", "snapshots", hash), recursive: true);
        ex = Assert.Throws<DirectoryNotFoundException>(() => HfCache.Resolve("org/model", root.Path));
        Assert.Contains(hash, ex.Message);
        Assert.Contains("snapshot", ex.Message);

        AddRepo(root.Path, "org/other");
        var missingFile = Assert.Throws<FileNotFoundException>(() => HfCache.Resolve("org/other/nothing.bin", root.Path));
        Assert.Contains("nothing.bin", missingFile.Message);
        Assert.Throws<ArgumentException>(() => HfCache.Resolve("org/other/../../escape", root.Path));
        Assert.Throws<ArgumentException>(() => HfCache.RepoFolder("not a repo id!", root.Path));
    }

    [Fact]
    public void Cache_root_is_a_hub_folder()
    {
        string root = HfCache.CacheRoot();
        Assert.True(Path.IsPathRooted(root));
        string? hubCache = Environment.GetEnvironmentVariable("HF_HUB_CACHE");
        if (string.IsNullOrEmpty(hubCache)) Assert.EndsWith("hub", root);
        else Assert.Equal(Path.GetFullPath(hubCache), root);
        Assert.Equal(Path.Combine(root, "models--a--b"), HfCache.RepoFolder("a/b"));
    }

    [Fact]
    public void ModelPath_prefers_existing_paths_then_the_cache()
    {
        using var root = new TempDir();
        string hash = AddRepo(root.Path, "karpathy/tinyllamas");
        string file = root.File("local.bin");
        File.WriteAllText(file, "x");
        Assert.Equal(file, ModelPath.Resolve(file, root.Path));
        Assert.Equal(root.Path, ModelPath.Resolve(root.Path, root.Path));
        Assert.Equal(Path.Combine(root.Path, "models--karpathy--tinyllamas", "snapshots", hash),
            ModelPath.Resolve("karpathy/tinyllamas", root.Path));

        var ex = Assert.Throws<FileNotFoundException>(() => ModelPath.Resolve("nobody/nothing", root.Path));
        Assert.Contains("not a file, folder, or cached Hugging Face repo id", ex.Message);
        Assert.Contains("models--nobody--nothing", ex.Message);
        ex = Assert.Throws<FileNotFoundException>(() => ModelPath.Resolve("/no/such/file.safetensors", root.Path));
        Assert.Contains("not a file, folder, or cached Hugging Face repo id", ex.Message);
    }
}
