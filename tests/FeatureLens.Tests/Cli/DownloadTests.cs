using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using FeatureLens.Runtime.Checkpoints;
using FeatureLens.Runtime.Models;

namespace FeatureLens.Tests.Cli;

/// <summary>
/// `featurelens download` against a fake Hugging Face Hub on loopback: the revision API, plain files with git blob ids,
/// LFS files behind a redirect with sha256 and size, Range requests, dropped connections and corrupt bytes.
/// </summary>
public class DownloadTests
{
    const string Repo = "org/tiny-gpt2";
    const string BigFile = "extra/weights.bin";

    /// <summary>A tiny synthetic GPT-2 (config.json, model.safetensors), a README, and a few MB of random LFS bytes.</summary>
    static Dictionary<string, byte[]> RepoFiles(TempDir dir, int seed)
    {
        string model = Path.Combine(dir.Path, "source-model");
        SyntheticModel.Write(model, Architecture.Gpt2, "tiny", FeatureLens.Runtime.Tensors.DType.F32, seed);
        var big = new byte[3 * 1024 * 1024 + new Random(seed).Next(1000)];
        new Random(seed).NextBytes(big);
        return new Dictionary<string, byte[]>
        {
            ["config.json"] = File.ReadAllBytes(Path.Combine(model, "config.json")),
            ["model.safetensors"] = File.ReadAllBytes(Path.Combine(model, "model.safetensors")),
            ["README.md"] = Encoding.UTF8.GetBytes($"# tiny model {seed}\n"),
            [BigFile] = big,
        };
    }

    static Dictionary<string, string> Env(FakeHub hub, TempDir dir) => new()
    {
        ["HF_ENDPOINT"] = hub.Endpoint,
        ["HF_HOME"] = Path.Combine(dir.Path, "hf"),
        ["HF_HUB_CACHE"] = "", ["HF_TOKEN"] = "", ["HF_HUB_OFFLINE"] = "",
        ["http_proxy"] = "", ["HTTP_PROXY"] = "", ["https_proxy"] = "", ["HTTPS_PROXY"] = "", ["all_proxy"] = "", ["ALL_PROXY"] = "",
    };

    static string RepoFolder(TempDir dir) => Path.Combine(dir.Path, "hf", "hub", "models--org--tiny-gpt2");

    static string Sha256(byte[] b) => Convert.ToHexStringLower(SHA256.HashData(b));

    [Fact]
    public void DownloadsIntoTheStandardCacheLayoutAndTheRepoIdThenResolvesOffline()
    {
        int seed = Random.Shared.Next();
        using var dir = new TempDir();
        var files = RepoFiles(dir, seed);
        using var hub = new FakeHub();
        string commit = hub.AddRepo(Repo, files, lfs: ["model.safetensors", BigFile]);
        var env = Env(hub, dir);

        var r = CliTests.RunWithEnv(env, "download", Repo);
        Assert.True(r.ExitCode == 0, $"seed {seed}: {r.Stderr}");
        string repoFolder = RepoFolder(dir);
        string snapshot = Path.Combine(repoFolder, "snapshots", commit);
        Assert.Equal(snapshot, r.Text.Trim());
        Assert.Equal(commit, File.ReadAllText(Path.Combine(repoFolder, "refs", "main")));

        foreach (var (path, bytes) in files)
        {
            string pointer = Path.Combine(snapshot, path);
            string blobName = hub.BlobName(Repo, path);
            var link = new FileInfo(pointer).LinkTarget;
            string expectedTarget = Path.GetRelativePath(Path.GetDirectoryName(pointer)!, Path.Combine(repoFolder, "blobs", blobName));
            Assert.Equal(expectedTarget, link);
            Assert.StartsWith(path.Contains('/') ? "../../../blobs/" : "../../blobs/", link);
            Assert.Equal(bytes, File.ReadAllBytes(pointer));
        }
        // LFS blobs are named by sha256, the others by their git blob id, as huggingface_hub names them
        Assert.True(File.Exists(Path.Combine(repoFolder, "blobs", Sha256(files[BigFile]))));
        Assert.Equal(40, hub.BlobName(Repo, "config.json").Length);
        Assert.Empty(Directory.GetFiles(Path.Combine(repoFolder, "blobs"), "*.incomplete"));
        // LFS files went through the redirect to the storage path
        Assert.Contains(hub.Requests, q => q.Path.StartsWith("/lfs-storage/", StringComparison.Ordinal));

        // the rest of FeatureLens finds the model by repo id, from the cache alone
        Assert.Equal(snapshot, ModelPath.Resolve(Repo, Path.Combine(dir.Path, "hf", "hub")));
        hub.Dispose();
        var i = CliTests.RunWithEnv(env, "inspect", Repo);
        Assert.True(i.ExitCode == 0, $"seed {seed}: {i.Stderr}");
        Assert.Contains("Gpt2", i.Text);
    }

    [Fact]
    public void SecondRunTransfersNothing()
    {
        int seed = Random.Shared.Next();
        using var dir = new TempDir();
        using var hub = new FakeHub();
        string commit = hub.AddRepo(Repo, RepoFiles(dir, seed), lfs: ["model.safetensors", BigFile]);
        var env = Env(hub, dir);
        var first = CliTests.RunWithEnv(env, "download", Repo);
        Assert.True(first.ExitCode == 0, $"seed {seed}: {first.Stderr}");
        int before = hub.Requests.Count;

        var second = CliTests.RunWithEnv(env, "download", Repo);
        Assert.True(second.ExitCode == 0, $"seed {seed}: {second.Stderr}");
        Assert.Equal(first.Text, second.Text);
        var later = hub.Requests.Skip(before).ToList();
        Assert.Single(later); // only the revision listing
        Assert.StartsWith($"/api/models/{Repo}/revision/main", later[0].Path);
        Assert.Contains("0 files downloaded (0 bytes), 4 already in the cache", second.Stderr);
    }

    [Fact]
    public void IncludeGlobsSelectFiles()
    {
        int seed = Random.Shared.Next();
        using var dir = new TempDir();
        using var hub = new FakeHub();
        string commit = hub.AddRepo(Repo, RepoFiles(dir, seed), lfs: ["model.safetensors", BigFile]);
        var env = Env(hub, dir);

        var r = CliTests.RunWithEnv(env, "download", Repo, "--include", "*.json", "--include", "*.md");
        Assert.True(r.ExitCode == 0, $"seed {seed}: {r.Stderr}");
        string snapshot = r.Text.Trim();
        Assert.Equal(["README.md", "config.json"], Directory.GetFiles(snapshot, "*", SearchOption.AllDirectories)
            .Select(f => Path.GetRelativePath(snapshot, f)).Order(StringComparer.Ordinal));
        Assert.DoesNotContain(hub.Requests, q => q.Path.StartsWith("/lfs-storage/", StringComparison.Ordinal));

        // '*' crosses '/', like fnmatch; a glob ending in '/' takes the whole folder
        var folder = CliTests.RunWithEnv(env, "download", Repo, "--include", "extra/");
        Assert.True(folder.ExitCode == 0, $"seed {seed}: {folder.Stderr}");
        Assert.True(File.Exists(Path.Combine(snapshot, "extra", "weights.bin")));
        Assert.False(File.Exists(Path.Combine(snapshot, "model.safetensors")));

        var none = CliTests.RunWithEnv(env, "download", Repo, "--include", "*.gguf");
        Assert.Equal(1, none.ExitCode);
        Assert.Contains("no file of Hugging Face repo 'org/tiny-gpt2' at main matches '*.gguf'", none.Stderr);
        Assert.Contains("config.json", none.Stderr);
    }

    [Theory]
    [InlineData("*.json", "config.json", true)]
    [InlineData("*.json", "sub/dir/config.json", true)]
    [InlineData("**/*.json", "sub/config.json", true)]
    [InlineData("*.json", "config.json.bak", false)]
    [InlineData("model-0000?-of-00002.safetensors", "model-00001-of-00002.safetensors", true)]
    [InlineData("tok[0-9]*.bin", "tok512.bin", true)]
    [InlineData("tok[!0-9]*.bin", "tok512.bin", false)]
    [InlineData("stories260K/", "stories260K/tok512.bin", true)]
    [InlineData("stories260K/*", "stories15M/model.bin", false)]
    [InlineData("a+b(c).txt", "a+b(c).txt", true)]
    [InlineData("[", "[", true)]
    public void GlobsFollowFnmatch(string glob, string path, bool expected) => Assert.Equal(expected, HubDownloader.GlobMatches(glob, path));

    [Fact]
    public void AnInterruptedTransferResumesWithARangeRequest()
    {
        int seed = Random.Shared.Next();
        using var dir = new TempDir();
        var files = RepoFiles(dir, seed);
        using var hub = new FakeHub();
        hub.AddRepo(Repo, files, lfs: ["model.safetensors", BigFile]);
        hub.DropAfterHalf = 1; // the first request for the big file breaks off halfway

        var r = CliTests.RunWithEnv(Env(hub, dir), "download", Repo, "--include", BigFile);
        Assert.True(r.ExitCode == 0, $"seed {seed}: {r.Stderr}");
        string sha = Sha256(files[BigFile]);
        var storage = hub.Requests.Where(q => q.Path == "/lfs-storage/" + sha).ToList();
        Assert.Equal(2, storage.Count);
        Assert.Null(storage[0].Range);
        int half = files[BigFile].Length / 2;
        Assert.Equal($"bytes={half}-", storage[1].Range);
        Assert.Equal(sha, Sha256(File.ReadAllBytes(Path.Combine(r.Text.Trim(), BigFile))));
        Assert.Contains("retry 1 of 5", r.Stderr);
    }

    [Fact]
    public void AServerThatKeepsFailingGivesAClearErrorAndKeepsThePartialFileForTheNextRun()
    {
        int seed = Random.Shared.Next();
        using var dir = new TempDir();
        var files = RepoFiles(dir, seed);
        using var hub = new FakeHub();
        hub.AddRepo(Repo, files, lfs: ["model.safetensors", BigFile]);
        hub.DropAfterHalf = int.MaxValue;
        var env = Env(hub, dir);

        var r = CliTests.RunWithEnv(env, "download", Repo, "--include", BigFile, "--retries", "1");
        Assert.Equal(1, r.ExitCode);
        string sha = Sha256(files[BigFile]);
        string partial = Path.Combine(RepoFolder(dir), "blobs", sha + ".incomplete");
        Assert.Contains($"downloading '{BigFile}'", r.Stderr);
        Assert.Contains("failed after 2 attempts", r.Stderr);
        Assert.Contains(partial, r.Stderr);
        Assert.Contains("run the same command again to resume", r.Stderr);
        long kept = new FileInfo(partial).Length;
        int n = files[BigFile].Length;
        Assert.Equal(n / 2 + (n - n / 2) / 2, kept); // half, then half of the rest
        Assert.False(File.Exists(Path.Combine(RepoFolder(dir), "blobs", sha)));

        hub.DropAfterHalf = 0;
        int before = hub.Requests.Count;
        var again = CliTests.RunWithEnv(env, "download", Repo, "--include", BigFile);
        Assert.True(again.ExitCode == 0, $"seed {seed}: {again.Stderr}");
        Assert.Contains(hub.Requests.Skip(before), q => q.Range == $"bytes={kept}-");
        Assert.Equal(sha, Sha256(File.ReadAllBytes(Path.Combine(again.Text.Trim(), BigFile))));
        Assert.False(File.Exists(partial));
    }

    [Fact]
    public void ASha256MismatchFailsNamingTheFileAndLeavesNoBlob()
    {
        int seed = Random.Shared.Next();
        using var dir = new TempDir();
        var files = RepoFiles(dir, seed);
        using var hub = new FakeHub();
        hub.AddRepo(Repo, files, lfs: ["model.safetensors", BigFile]);
        hub.Corrupt = true;

        var r = CliTests.RunWithEnv(Env(hub, dir), "download", Repo, "--include", BigFile);
        Assert.Equal(1, r.ExitCode);
        string sha = Sha256(files[BigFile]);
        Assert.Contains($"'{BigFile}'", r.Stderr);
        Assert.Contains($"sha256 mismatch: expected {sha}, got ", r.Stderr);
        Assert.Empty(Directory.GetFiles(Path.Combine(RepoFolder(dir), "blobs")));
        Assert.False(File.Exists(Path.Combine(RepoFolder(dir), "refs", "main")));
    }

    [Fact]
    public void MissingRepoRevisionGatedRepoAndUnreachableHubGiveClearErrors()
    {
        int seed = Random.Shared.Next();
        using var dir = new TempDir();
        using var hub = new FakeHub();
        hub.AddRepo(Repo, RepoFiles(dir, seed), lfs: ["model.safetensors"]);
        hub.AddRepo("org/gated", new() { ["config.json"] = "{}"u8.ToArray() }, lfs: [], requiredToken: "hf_secret");
        var env = Env(hub, dir);

        var missing = CliTests.RunWithEnv(env, "download", "org/no-such-model");
        Assert.Equal(1, missing.ExitCode);
        Assert.Contains("error: Hugging Face repo 'org/no-such-model' revision 'main': repo not found at " + hub.Endpoint, missing.Stderr);
        Assert.Empty(missing.Stdout);

        var badRevision = CliTests.RunWithEnv(env, "download", Repo, "--revision", "v9");
        Assert.Equal(1, badRevision.ExitCode);
        Assert.Contains("revision 'v9': revision not found", badRevision.Stderr);

        var gated = CliTests.RunWithEnv(env, "download", "org/gated");
        Assert.Equal(1, gated.ExitCode);
        Assert.Contains("is gated", gated.Stderr);
        Assert.Contains("set HF_TOKEN", gated.Stderr);
        var withToken = CliTests.RunWithEnv(new Dictionary<string, string>(env) { ["HF_TOKEN"] = "hf_secret" }, "download", "org/gated");
        Assert.True(withToken.ExitCode == 0, withToken.Stderr);
        Assert.Equal("{}", File.ReadAllText(Path.Combine(withToken.Text.Trim(), "config.json")));

        var badId = CliTests.RunWithEnv(env, "download", "../etc");
        Assert.Equal(1, badId.ExitCode);
        Assert.Contains("is not a Hugging Face repo id", badId.Stderr);

        int closedPort = FakeHub.FreePort();
        var unreachable = CliTests.RunWithEnv(new Dictionary<string, string>(env) { ["HF_ENDPOINT"] = $"http://127.0.0.1:{closedPort}" }, "download", Repo);
        Assert.Equal(1, unreachable.ExitCode);
        Assert.Contains($"cannot reach the Hugging Face Hub at http://127.0.0.1:{closedPort}", unreachable.Stderr);
        Assert.False(Directory.Exists(RepoFolder(dir)));
    }

    [Fact]
    public void DownloadHasHelp()
    {
        var r = CliTests.Run("download", "--help");
        Assert.Equal(0, r.ExitCode);
        Assert.Contains("--include", r.Text);
    }
}

/// <summary>
/// A Hugging Face Hub stand-in on 127.0.0.1: <c>/api/models/{repo}/revision/{rev}</c>, <c>/{repo}/resolve/{rev}/{path}</c>
/// (plain files directly with their git blob id as ETag, LFS files by a 302 to <c>/lfs-storage/{sha256}</c>), and Range support.
/// </summary>
internal sealed class FakeHub : IDisposable
{
    sealed record RepoEntry(string Commit, Dictionary<string, byte[]> Files, HashSet<string> Lfs, string? Token);

    readonly HttpListener listener = new();
    readonly ConcurrentDictionary<string, RepoEntry> repos = new();
    readonly ConcurrentQueue<(string Method, string Path, string? Range)> requests = new();
    readonly Task loop;
    int dropsLeft;

    /// <summary>http://127.0.0.1:PORT</summary>
    public string Endpoint { get; }

    /// <summary>Every request seen: method, path (with query), Range header.</summary>
    public IReadOnlyList<(string Method, string Path, string? Range)> Requests => requests.ToArray();

    /// <summary>How many more LFS transfers break off after sending half of what they were asked for.</summary>
    public int DropAfterHalf { get => Volatile.Read(ref dropsLeft); set => Volatile.Write(ref dropsLeft, value); }

    /// <summary>LFS transfers send one flipped byte.</summary>
    public volatile bool Corrupt;

    public FakeHub()
    {
        for (int attempt = 0; ; attempt++)
        {
            Endpoint = $"http://127.0.0.1:{FreePort()}";
            listener.Prefixes.Clear();
            listener.Prefixes.Add(Endpoint + "/");
            try { listener.Start(); break; }
            catch (HttpListenerException) when (attempt < 5) { }
        }
        loop = Task.Run(Serve);
    }

    /// <summary>A port nothing listens on right now.</summary>
    public static int FreePort()
    {
        var l = new TcpListener(IPAddress.Loopback, 0);
        l.Start();
        int port = ((IPEndPoint)l.LocalEndpoint).Port;
        l.Stop();
        return port;
    }

    /// <summary>Adds a repo at a fresh random commit (returned); <paramref name="requiredToken"/> makes it gated.</summary>
    public string AddRepo(string repoId, Dictionary<string, byte[]> files, string[] lfs, string? requiredToken = null)
    {
        string commit = Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(20));
        repos[repoId] = new RepoEntry(commit, files, [.. lfs], requiredToken);
        return commit;
    }

    /// <summary>The blob name the Hub implies for a file: sha256 for LFS files, the git blob id otherwise.</summary>
    public string BlobName(string repoId, string path)
    {
        var repo = repos[repoId];
        return repo.Lfs.Contains(path) ? Convert.ToHexStringLower(SHA256.HashData(repo.Files[path])) : GitBlobId(repo.Files[path]);
    }

    static string GitBlobId(byte[] content) =>
        Convert.ToHexStringLower(SHA1.HashData([.. Encoding.ASCII.GetBytes($"blob {content.Length}\0"), .. content]));

    async Task Serve()
    {
        while (listener.IsListening)
        {
            HttpListenerContext ctx;
            try { ctx = await listener.GetContextAsync(); }
            catch (Exception e) when (e is HttpListenerException or ObjectDisposedException or InvalidOperationException) { return; }
            _ = Task.Run(() => Handle(ctx));
        }
    }

    void Handle(HttpListenerContext ctx)
    {
        var req = ctx.Request;
        var res = ctx.Response;
        string path = req.Url!.AbsolutePath;
        requests.Enqueue((req.HttpMethod, req.Url.PathAndQuery, req.Headers["Range"]));
        try
        {
            if (path.StartsWith("/api/models/", StringComparison.Ordinal)) ServeListing(ctx, Uri.UnescapeDataString(path["/api/models/".Length..]));
            else if (path.StartsWith("/lfs-storage/", StringComparison.Ordinal)) ServeLfs(ctx, path["/lfs-storage/".Length..]);
            else ServeResolve(ctx, path[1..]);
        }
        catch (Exception e) when (e is IOException or HttpListenerException or ObjectDisposedException) { }
    }

    // GET /api/models/ORG/NAME/revision/REV
    void ServeListing(HttpListenerContext ctx, string rest)
    {
        int at = rest.IndexOf("/revision/", StringComparison.Ordinal);
        string repoId = rest[..at], revision = rest[(at + "/revision/".Length)..];
        if (Refuse(ctx, repoId, revision) is not { } repo) return;
        var siblings = repo.Files.Select(f => repo.Lfs.Contains(f.Key)
            ? (object)new { rfilename = f.Key, size = f.Value.Length, blobId = GitBlobId(Encoding.ASCII.GetBytes("version https://git-lfs.github.com/spec/v1\n")), lfs = new { sha256 = Convert.ToHexStringLower(SHA256.HashData(f.Value)), size = f.Value.Length, pointerSize = 134 } }
            : new { rfilename = f.Key, size = f.Value.Length, blobId = GitBlobId(f.Value) });
        Send(ctx, 200, JsonSerializer.SerializeToUtf8Bytes(new { id = repoId, sha = repo.Commit, siblings }), "application/json");
    }

    // GET /ORG/NAME/resolve/REV/PATH
    void ServeResolve(HttpListenerContext ctx, string rest)
    {
        int at = rest.IndexOf("/resolve/", StringComparison.Ordinal);
        if (at < 0) { Send(ctx, 404, "{}"u8.ToArray(), "application/json"); return; }
        string repoId = rest[..at];
        string[] revAndPath = rest[(at + "/resolve/".Length)..].Split('/', 2);
        if (Refuse(ctx, repoId, revAndPath[0]) is not { } repo) return;
        string file = Uri.UnescapeDataString(revAndPath[1]);
        if (!repo.Files.TryGetValue(file, out var bytes))
        {
            ctx.Response.Headers["X-Error-Code"] = "EntryNotFound";
            Send(ctx, 404, "{}"u8.ToArray(), "application/json");
            return;
        }
        ctx.Response.Headers["X-Repo-Commit"] = repo.Commit;
        if (repo.Lfs.Contains(file))
        {
            string sha = Convert.ToHexStringLower(SHA256.HashData(bytes));
            ctx.Response.Headers["X-Linked-Etag"] = $"\"{sha}\"";
            ctx.Response.Headers["X-Linked-Size"] = bytes.Length.ToString(CultureInfo.InvariantCulture);
            ctx.Response.Headers["Location"] = "/lfs-storage/" + sha;
            ctx.Response.StatusCode = 302;
            ctx.Response.Close();
            return;
        }
        ctx.Response.Headers["ETag"] = $"\"{GitBlobId(bytes)}\"";
        Send(ctx, 200, bytes, "application/octet-stream");
    }

    // GET /lfs-storage/SHA256 with an optional Range: bytes=N-
    void ServeLfs(HttpListenerContext ctx, string sha)
    {
        var bytes = repos.Values.SelectMany(r => r.Files.Values).FirstOrDefault(b => Convert.ToHexStringLower(SHA256.HashData(b)) == sha);
        if (bytes is null) { Send(ctx, 404, [], "text/plain"); return; }
        if (Corrupt) { bytes = (byte[])bytes.Clone(); bytes[bytes.Length / 3] ^= 0x5a; }
        long from = 0;
        string? range = ctx.Request.Headers["Range"];
        if (range is not null && range.StartsWith("bytes=", StringComparison.Ordinal) && range.EndsWith('-')) from = long.Parse(range[6..^1], CultureInfo.InvariantCulture);
        if (from >= bytes.Length) { Send(ctx, 416, [], "text/plain"); return; }
        var res = ctx.Response;
        res.StatusCode = from > 0 ? 206 : 200;
        if (from > 0) res.Headers["Content-Range"] = $"bytes {from}-{bytes.Length - 1}/{bytes.Length}";
        res.ContentType = "application/octet-stream";
        res.ContentLength64 = bytes.Length - from;
        if (Interlocked.Decrement(ref dropsLeft) >= 0)
        {
            // send half of what was asked for, then cut the connection
            res.OutputStream.Write(bytes, (int)from, (int)(bytes.Length - from) / 2);
            res.OutputStream.Flush();
            Thread.Sleep(50);
            res.Abort();
            return;
        }
        Interlocked.Increment(ref dropsLeft);
        res.OutputStream.Write(bytes, (int)from, (int)(bytes.Length - from));
        res.Close();
    }

    /// <summary>Answers 401/404 like the Hub (with X-Error-Code) and returns null, or returns the repo.</summary>
    RepoEntry? Refuse(HttpListenerContext ctx, string repoId, string revision)
    {
        if (!repos.TryGetValue(repoId, out var repo))
        {
            ctx.Response.Headers["X-Error-Code"] = "RepoNotFound";
            Send(ctx, 404, """{"error":"Repository not found"}"""u8.ToArray(), "application/json");
            return null;
        }
        if (repo.Token is not null && ctx.Request.Headers["Authorization"] != "Bearer " + repo.Token)
        {
            ctx.Response.Headers["X-Error-Code"] = "GatedRepo";
            Send(ctx, 401, """{"error":"Access to this model is restricted"}"""u8.ToArray(), "application/json");
            return null;
        }
        if (revision != "main" && revision != repo.Commit)
        {
            ctx.Response.Headers["X-Error-Code"] = "RevisionNotFound";
            Send(ctx, 404, """{"error":"Invalid rev id"}"""u8.ToArray(), "application/json");
            return null;
        }
        return repo;
    }

    static void Send(HttpListenerContext ctx, int status, byte[] body, string contentType)
    {
        ctx.Response.StatusCode = status;
        ctx.Response.ContentType = contentType;
        ctx.Response.ContentLength64 = body.Length;
        ctx.Response.OutputStream.Write(body);
        ctx.Response.Close();
    }

    public void Dispose()
    {
        if (!listener.IsListening) return;
        // Close alone: on Unix the managed HttpListener's Stop() then Close() removes the endpoint twice, and the second
        // removal binds the port again (fails with "Address already in use" when another socket took it meanwhile)
        listener.Close();
        try { loop.Wait(2000); } catch (AggregateException) { }
    }
}
