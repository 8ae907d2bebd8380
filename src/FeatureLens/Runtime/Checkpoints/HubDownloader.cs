using System.Net;
using System.Net.Http.Headers;
using System.Runtime.CompilerServices;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;

namespace FeatureLens.Runtime.Checkpoints;

/// <summary>What a <see cref="HubDownloader"/> is doing with one file.</summary>
public enum DownloadStage
{
    /// <summary>Already in the cache with the expected size: nothing transferred.</summary>
    Cached,
    /// <summary>A transfer started (or resumed: <see cref="DownloadProgress.Bytes"/> is what was on disk).</summary>
    Started,
    /// <summary>Bytes arrived.</summary>
    Transferring,
    /// <summary>The connection failed; the transfer resumes from the bytes on disk (<see cref="DownloadProgress.Message"/> says why).</summary>
    Retrying,
    /// <summary>Verified, moved into blobs/ and linked into the snapshot.</summary>
    Done,
}

/// <summary>One progress report: a file of the repo, the bytes of it on disk, and its size when the Hub gave it.</summary>
public readonly record struct DownloadProgress(string File, long Bytes, long? TotalBytes, DownloadStage Stage, string? Message = null);

/// <summary>One file of a download: its path in the repo, its size, and whether it had to be transferred.</summary>
public sealed record DownloadedFile(string PathInRepo, long Size, bool WasCached);

/// <summary>The outcome of <see cref="HubDownloader.DownloadAsync"/>: the commit the revision resolved to and its snapshot folder.</summary>
public sealed record DownloadResult(string RepoId, string Revision, string Commit, string SnapshotFolder, IReadOnlyList<DownloadedFile> Files, long BytesTransferred);

/// <summary>
/// Downloads files of a Hugging Face Hub model repo into the standard hub cache, the layout
/// <see cref="HfCache"/> reads and huggingface_hub writes:
/// <c>models--ORG--NAME/blobs/{sha256 or git blob id}</c> holds the bytes,
/// <c>snapshots/{commit}/{path}</c> is a relative symlink to the blob (a copy where symlinks are not possible),
/// <c>refs/{revision}</c> holds the commit. A transfer goes to <c>blobs/{hash}.incomplete</c> first and resumes
/// from there with an HTTP Range request, after a dropped connection or on the next run.
/// This is the only network access in FeatureLens.
/// </summary>
/// <remarks>
/// Endpoints: <c>GET {endpoint}/api/models/{repo}/revision/{revision}?blobs=true</c> lists the files (commit in
/// <c>sha</c>, files in <c>siblings</c>), <c>GET {endpoint}/{repo}/resolve/{commit}/{path}</c> fetches one
/// (LFS files redirect to a storage host; the token is only sent to the endpoint's host).
/// </remarks>
public sealed partial class HubDownloader : IDisposable
{
    /// <summary>The Hub used when HF_ENDPOINT is not set.</summary>
    public const string DefaultEndpoint = "https://huggingface.co";

    readonly HttpClient http;
    readonly string? token;

    /// <summary>The Hub base address (HF_ENDPOINT, else https://huggingface.co), without a trailing slash.</summary>
    public string Endpoint { get; }

    /// <summary>The hub cache folder files go to (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub).</summary>
    public string CacheRoot { get; }

    /// <summary>How many times one file's transfer is retried after a dropped connection or a server error (5xx, 429).</summary>
    public int MaxRetries { get; init; } = 5;

    /// <summary>Wait before the first retry; doubles with each further retry, up to 8 s.</summary>
    public TimeSpan RetryDelay { get; init; } = TimeSpan.FromSeconds(1);

    /// <summary>A read that waits longer than this for bytes counts as a dropped connection.</summary>
    public TimeSpan ReadTimeout { get; init; } = TimeSpan.FromSeconds(60);

    /// <summary>
    /// A downloader for <paramref name="endpoint"/> (null: HF_ENDPOINT, else <see cref="DefaultEndpoint"/>) writing under
    /// <paramref name="cacheRoot"/> (null: <see cref="HfCache.CacheRoot"/>), authenticating with <paramref name="token"/>
    /// (null: HF_TOKEN when set).
    /// </summary>
    public HubDownloader(string? endpoint = null, string? cacheRoot = null, string? token = null)
    {
        string? offline = Environment.GetEnvironmentVariable("HF_HUB_OFFLINE");
        if (offline is "1" or "true" or "TRUE" or "True" or "yes" or "ON" or "on")
            throw new InvalidOperationException("HF_HUB_OFFLINE is set: downloading from the Hugging Face Hub is disabled (unset it to download)");

        endpoint ??= Environment.GetEnvironmentVariable("HF_ENDPOINT");
        if (string.IsNullOrWhiteSpace(endpoint)) endpoint = DefaultEndpoint;
        endpoint = endpoint.Trim().TrimEnd('/');
        if (!Uri.TryCreate(endpoint, UriKind.Absolute, out var uri) || (uri.Scheme != Uri.UriSchemeHttp && uri.Scheme != Uri.UriSchemeHttps))
            throw new ArgumentException($"Hub endpoint '{endpoint}' (HF_ENDPOINT) is not an http(s) address such as {DefaultEndpoint}", nameof(endpoint));
        Endpoint = endpoint;
        CacheRoot = Path.GetFullPath(cacheRoot ?? HfCache.CacheRoot());
        token ??= Environment.GetEnvironmentVariable("HF_TOKEN");
        this.token = string.IsNullOrWhiteSpace(token) ? null : token.Trim();

        // redirects are followed by hand so that the token goes to the Hub only, never to the storage host
        var handler = new SocketsHttpHandler { AllowAutoRedirect = false, ConnectTimeout = TimeSpan.FromSeconds(20), AutomaticDecompression = DecompressionMethods.None };
        http = new HttpClient(handler) { Timeout = Timeout.InfiniteTimeSpan };
        http.DefaultRequestHeaders.UserAgent.Add(new ProductInfoHeaderValue("featurelens", "1.0"));
    }

    /// <summary>Releases the HTTP connections.</summary>
    public void Dispose() => http.Dispose();

    /// <summary>
    /// Downloads the files of <paramref name="repoId"/> ("ORG/NAME") at <paramref name="revision"/> (branch, tag or commit)
    /// that match any of <paramref name="includeGlobs"/> (all files when null or empty) into the cache, and returns the
    /// snapshot folder. Files already in the cache are not transferred again. Globs follow Python's fnmatch, as
    /// huggingface_hub's allow_patterns: <c>*</c> matches any characters including '/', so <c>*</c> and <c>**</c> are the
    /// same; <c>?</c> is one character, <c>[abc]</c>/<c>[!abc]</c> a set; a glob ending in '/' matches everything below it.
    /// </summary>
    /// <exception cref="HttpRequestException">The Hub refused (names the status and what to do) or could not be reached (names the endpoint).</exception>
    /// <exception cref="InvalidDataException">A file's size or sha256 differs from the Hub's, or the Hub's answer is malformed.</exception>
    /// <exception cref="ArgumentException">A malformed repo id or revision, or globs that match no file.</exception>
    public async Task<DownloadResult> DownloadAsync(string repoId, string revision = "main", IReadOnlyList<string>? includeGlobs = null,
        IProgress<DownloadProgress>? progress = null, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(repoId);
        if (!RepoIdPattern().IsMatch(repoId) || repoId.Contains("--") || repoId.Contains(".."))
            throw new ArgumentException($"'{repoId}' is not a Hugging Face repo id: expected ORG/NAME (letters, digits, '-', '_', '.'; give the revision with --revision, not '@')", nameof(repoId));
        if (string.IsNullOrWhiteSpace(revision) || !RevisionPattern().IsMatch(revision) || revision.Split('/').Any(s => s is "" or "." or ".."))
            throw new ArgumentException($"'{revision}' is not a revision: expected a branch, tag or commit hash", nameof(revision));

        var listing = await ListFilesAsync(repoId, revision, ct);
        var globs = (includeGlobs ?? []).Where(g => !string.IsNullOrWhiteSpace(g)).ToList();
        var selected = globs.Count == 0 ? listing.Files : listing.Files.Where(f => globs.Any(g => GlobMatches(g, f.Path))).ToList();
        if (selected.Count == 0)
        {
            string sample = string.Join(", ", listing.Files.Take(12).Select(f => f.Path)) + (listing.Files.Count > 12 ? ", ..." : "");
            throw new ArgumentException(globs.Count == 0
                ? $"Hugging Face repo '{repoId}' at {revision} has no files"
                : $"no file of Hugging Face repo '{repoId}' at {revision} matches {string.Join(" or ", globs.Select(g => $"'{g}'"))} (the repo has {listing.Files.Count} files: {sample})");
        }

        string repoFolder = HfCache.RepoFolder(repoId, CacheRoot);
        string blobs = Directory.CreateDirectory(Path.Combine(repoFolder, "blobs")).FullName;
        string snapshot = Directory.CreateDirectory(Path.Combine(repoFolder, "snapshots", listing.Commit)).FullName;

        var done = new List<DownloadedFile>();
        long transferred = 0;
        foreach (var file in selected)
        {
            ct.ThrowIfCancellationRequested();
            string fileUrl = $"{Endpoint}/{repoId}/resolve/{listing.Commit}/{EscapePath(file.Path)}";
            string blobName = file.Sha256 ?? file.BlobId ?? await FetchEtagAsync(fileUrl, file.Path, ct);
            string blob = Path.Combine(blobs, blobName);
            string pointer = Path.Combine(snapshot, file.Path.Replace('/', Path.DirectorySeparatorChar));

            bool cached = File.Exists(blob) && (file.Size is null || new FileInfo(blob).Length == file.Size);
            if (cached)
            {
                progress?.Report(new DownloadProgress(file.Path, new FileInfo(blob).Length, file.Size, DownloadStage.Cached));
            }
            else
            {
                transferred += await DownloadBlobAsync(fileUrl, file, blob, progress, ct);
                progress?.Report(new DownloadProgress(file.Path, new FileInfo(blob).Length, file.Size, DownloadStage.Done));
            }
            LinkIntoSnapshot(blob, pointer);
            done.Add(new DownloadedFile(file.Path, new FileInfo(blob).Length, cached));
        }

        if (!string.Equals(revision, listing.Commit, StringComparison.Ordinal))
        {
            string refFile = Path.Combine(repoFolder, "refs", revision.Replace('/', Path.DirectorySeparatorChar));
            Directory.CreateDirectory(Path.GetDirectoryName(refFile)!);
            File.WriteAllText(refFile, listing.Commit);
        }
        return new DownloadResult(repoId, revision, listing.Commit, snapshot, done, transferred);
    }

    /// <summary>True when <paramref name="path"/> (a '/'-separated path in the repo) matches the fnmatch-style <paramref name="glob"/>.</summary>
    public static bool GlobMatches(string glob, string path)
    {
        if (glob.EndsWith('/')) glob += "*";
        var rx = new StringBuilder("^");
        for (int i = 0; i < glob.Length; i++)
        {
            char c = glob[i];
            if (c == '*') { rx.Append(".*"); while (i + 1 < glob.Length && glob[i + 1] == '*') i++; }
            else if (c == '?') rx.Append('.');
            else if (c == '[' && i + 2 < glob.Length && glob.IndexOf(']', i + 2) is int close and > 0)
            {
                string set = glob[(i + 1)..close];
                bool negate = set.StartsWith('!');
                if (negate) set = set[1..];
                rx.Append(negate ? "[^" : "[").Append(set.Replace("\\", "\\\\").Replace("[", "\\[").Replace("^", "\\^")).Append(']');
                i = close;
            }
            else rx.Append(Regex.Escape(c.ToString()));
        }
        rx.Append('$');
        return Regex.IsMatch(path, rx.ToString(), RegexOptions.Singleline | RegexOptions.CultureInvariant);
    }

    // ---- listing -------------------------------------------------------------------------------------------

    /// <summary>A file of the listing: path, size, and the hashes that name its blob (sha256 for LFS, git blob id otherwise).</summary>
    sealed record RepoFile(string Path, long? Size, string? Sha256, string? BlobId);

    sealed record Listing(string Commit, List<RepoFile> Files);

    async Task<Listing> ListFilesAsync(string repoId, string revision, CancellationToken ct)
    {
        string url = $"{Endpoint}/api/models/{repoId}/revision/{Uri.EscapeDataString(revision)}?blobs=true";
        using var response = await SendAsync(url, null, $"Hugging Face repo '{repoId}'", ct);
        await ThrowForStatusAsync(response, $"Hugging Face repo '{repoId}' revision '{revision}'", url, ct);
        string json = await response.Content.ReadAsStringAsync(ct);
        try
        {
            using var doc = JsonDocument.Parse(json);
            var root = doc.RootElement;
            string commit = root.TryGetProperty("sha", out var sha) && sha.ValueKind == JsonValueKind.String ? sha.GetString()! : "";
            if (!CommitPattern().IsMatch(commit))
                throw new InvalidDataException($"{url}: expected a 40-hex-digit commit in \"sha\", found \"{commit}\"");
            if (!root.TryGetProperty("siblings", out var siblings) || siblings.ValueKind != JsonValueKind.Array)
                throw new InvalidDataException($"{url}: expected a \"siblings\" array listing the repo's files");
            var files = new List<RepoFile>();
            foreach (var s in siblings.EnumerateArray())
            {
                string path = s.TryGetProperty("rfilename", out var rf) && rf.ValueKind == JsonValueKind.String ? rf.GetString()! : "";
                if (path.Length == 0 || path.StartsWith('/') || path.Contains('\\') || path.Contains('\0') || path.Split('/').Any(p => p is "" or "." or ".."))
                    throw new InvalidDataException($"{url}: file name \"{path}\" is not a relative path inside the repo");
                long? size = s.TryGetProperty("size", out var sz) && sz.ValueKind == JsonValueKind.Number ? sz.GetInt64() : null;
                string? blobId = s.TryGetProperty("blobId", out var bid) && bid.ValueKind == JsonValueKind.String ? bid.GetString() : null;
                string? sha256 = null;
                if (s.TryGetProperty("lfs", out var lfs) && lfs.ValueKind == JsonValueKind.Object)
                {
                    sha256 = lfs.TryGetProperty("sha256", out var h) && h.ValueKind == JsonValueKind.String ? h.GetString() : null;
                    if (lfs.TryGetProperty("size", out var ls) && ls.ValueKind == JsonValueKind.Number) size = ls.GetInt64();
                }
                if (sha256 is not null && !Sha256Pattern().IsMatch(sha256))
                    throw new InvalidDataException($"{url}: \"{path}\": lfs.sha256 \"{sha256}\" is not 64 hex digits");
                if (blobId is not null && !BlobIdPattern().IsMatch(blobId))
                    throw new InvalidDataException($"{url}: \"{path}\": blobId \"{blobId}\" is not a git object id");
                if (size < 0) throw new InvalidDataException($"{url}: \"{path}\": negative size {size}");
                files.Add(new RepoFile(path, size, sha256?.ToLowerInvariant(), blobId?.ToLowerInvariant()));
            }
            return new Listing(commit, files);
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{url}: the Hub's answer is not the expected JSON: {e.Message}", e);
        }
    }

    /// <summary>The blob name of a file the listing gave no hash for: the ETag of the file's resolve address (X-Linked-Etag for LFS).</summary>
    async Task<string> FetchEtagAsync(string url, string path, CancellationToken ct)
    {
        using var response = await SendAsync(url, null, $"'{path}'", ct, HttpMethod.Head, followRedirects: false);
        if ((int)response.StatusCode >= 400) await ThrowForStatusAsync(response, $"'{path}'", url, ct);
        string? etag = response.Headers.TryGetValues("X-Linked-Etag", out var linked) ? linked.FirstOrDefault() : response.Headers.ETag?.Tag;
        etag = etag?.Replace("W/", "").Trim('"').ToLowerInvariant();
        if (etag is null || !BlobIdPattern().IsMatch(etag))
            throw new InvalidDataException($"{url}: the Hub gave no usable ETag for '{path}' (found \"{etag}\"), so the file has no blob name");
        return etag;
    }

    // ---- one file ------------------------------------------------------------------------------------------

    /// <summary>Transfers one file into <paramref name="blob"/> via <c>{blob}.incomplete</c>, resuming and retrying; returns the bytes transferred.</summary>
    async Task<long> DownloadBlobAsync(string url, RepoFile file, string blob, IProgress<DownloadProgress>? progress, CancellationToken ct)
    {
        string partial = blob + ".incomplete";
        var transferred = new StrongBox<long>(); // bytes received over all attempts
        for (int attempt = 0; ; attempt++)
        {
            long onDisk = File.Exists(partial) ? new FileInfo(partial).Length : 0;
            if (file.Size is long expected && onDisk > expected) { File.Delete(partial); onDisk = 0; }
            if (file.Size is long complete && onDisk == complete && complete > 0) break; // the transfer finished before a crash: only verify
            progress?.Report(new DownloadProgress(file.Path, onDisk, file.Size, DownloadStage.Started));
            try
            {
                await TransferAsync(url, file, partial, onDisk, transferred, progress, ct);
                break;
            }
            catch (Exception e) when (IsTransient(e, ct) && attempt < MaxRetries)
            {
                progress?.Report(new DownloadProgress(file.Path, File.Exists(partial) ? new FileInfo(partial).Length : 0, file.Size, DownloadStage.Retrying,
                    $"{Describe(e)}; retry {attempt + 1} of {MaxRetries}"));
                double seconds = Math.Min(8, RetryDelay.TotalSeconds * Math.Pow(2, attempt));
                await Task.Delay(TimeSpan.FromSeconds(seconds), ct);
            }
            catch (Exception e) when (IsTransient(e, ct))
            {
                long kept = File.Exists(partial) ? new FileInfo(partial).Length : 0;
                throw new HttpRequestException(
                    $"downloading '{file.Path}' from {url} failed after {MaxRetries + 1} attempts: {Describe(e)}. " +
                    $"{kept:N0} bytes are kept in {partial}; run the same command again to resume", e);
            }
        }
        Verify(url, file, partial);
        File.Move(partial, blob, overwrite: true);
        return transferred.Value;
    }

    /// <summary>
    /// One GET of <paramref name="url"/>, appending to <paramref name="partial"/> from byte <paramref name="offset"/> (206) or
    /// rewriting it (200); adds the bytes it receives to <paramref name="received"/>.
    /// </summary>
    async Task TransferAsync(string url, RepoFile file, string partial, long offset, StrongBox<long> received, IProgress<DownloadProgress>? progress, CancellationToken ct)
    {
        using var response = await SendAsync(url, offset > 0 ? offset : null, $"'{file.Path}'", ct);
        if (response.StatusCode == HttpStatusCode.RequestedRangeNotSatisfiable)
        {
            // the partial file is longer than the file on the server: start over
            File.Delete(partial);
            throw new IOException($"the server refused to resume '{file.Path}' at byte {offset:N0} (416); starting over");
        }
        await ThrowForStatusAsync(response, $"'{file.Path}'", url, ct);

        bool resumed = false;
        if (response.StatusCode == HttpStatusCode.PartialContent)
        {
            long? start = response.Content.Headers.ContentRange?.From;
            if (start != offset)
            {
                File.Delete(partial);
                throw new IOException($"the server answered a resume of '{file.Path}' at byte {offset:N0} with a range starting at {start?.ToString(CultureInfo.InvariantCulture) ?? "?"}; starting over");
            }
            resumed = true;
        }
        long total = response.Content.Headers.ContentRange?.Length ?? (response.Content.Headers.ContentLength is long len ? len + (resumed ? offset : 0) : -1);
        long? size = file.Size ?? (total >= 0 ? total : null);

        await using var source = await response.Content.ReadAsStreamAsync(ct);
        await using var output = new FileStream(partial, resumed ? FileMode.Append : FileMode.Create, FileAccess.Write, FileShare.None, 1 << 16);
        long position = resumed ? offset : 0;
        var buffer = new byte[1 << 20];
        using var readTimeout = CancellationTokenSource.CreateLinkedTokenSource(ct);
        var lastReport = DateTime.UtcNow;
        while (true)
        {
            readTimeout.CancelAfter(ReadTimeout);
            int n;
            try { n = await source.ReadAsync(buffer, readTimeout.Token); }
            catch (OperationCanceledException) when (!ct.IsCancellationRequested)
            {
                throw new TimeoutException($"no data for {ReadTimeout.TotalSeconds:g} s while downloading '{file.Path}'");
            }
            if (n == 0) break;
            await output.WriteAsync(buffer.AsMemory(0, n), ct);
            position += n; received.Value += n;
            if (progress is not null && (DateTime.UtcNow - lastReport).TotalMilliseconds >= 100)
            {
                progress.Report(new DownloadProgress(file.Path, position, size, DownloadStage.Transferring));
                lastReport = DateTime.UtcNow;
            }
        }
        await output.FlushAsync(ct);
        if (size is long s && position < s)
            throw new IOException($"the connection closed after {position:N0} of {s:N0} bytes of '{file.Path}'");
        progress?.Report(new DownloadProgress(file.Path, position, size, DownloadStage.Transferring));
    }

    /// <summary>Checks the size, and the sha256 (LFS files) or git blob id (other files) the Hub listed; deletes the partial file on mismatch.</summary>
    static void Verify(string url, RepoFile file, string partial)
    {
        long length = new FileInfo(partial).Length;
        if (file.Size is long expected && length != expected)
        {
            File.Delete(partial);
            throw new InvalidDataException($"'{file.Path}' from {url}: expected {expected:N0} bytes, received {length:N0}; the partial file was deleted, run again to download it afresh");
        }
        if (file.Sha256 is null && file.BlobId is null) return;
        string actual, expectedHash, kind;
        using (var stream = new FileStream(partial, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 20))
        {
            if (file.Sha256 is not null)
            {
                (kind, expectedHash) = ("sha256", file.Sha256);
                actual = Convert.ToHexStringLower(SHA256.HashData(stream));
            }
            else
            {
                // a git blob id is sha1("blob {length}\0" + content)
                (kind, expectedHash) = ("git blob id", file.BlobId!);
                using var sha1 = IncrementalHash.CreateHash(HashAlgorithmName.SHA1);
                sha1.AppendData(Encoding.ASCII.GetBytes($"blob {length}\0"));
                var buffer = new byte[1 << 20];
                for (int n; (n = stream.Read(buffer)) > 0;) sha1.AppendData(buffer, 0, n);
                actual = Convert.ToHexStringLower(sha1.GetHashAndReset());
            }
        }
        if (actual != expectedHash)
        {
            File.Delete(partial);
            throw new InvalidDataException($"'{file.Path}' from {url}: {kind} mismatch: expected {expectedHash}, got {actual}; the download was deleted, run again to download it afresh");
        }
    }

    /// <summary>Makes <paramref name="pointer"/> a relative symlink to <paramref name="blob"/> (../../blobs/HASH), or a copy where symlinks fail.</summary>
    static void LinkIntoSnapshot(string blob, string pointer)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(pointer)!);
        string target = Path.GetRelativePath(Path.GetDirectoryName(pointer)!, blob);
        var existing = new FileInfo(pointer);
        if (existing.LinkTarget == target) return;
        if (existing.Exists || existing.LinkTarget is not null) File.Delete(pointer);
        try { File.CreateSymbolicLink(pointer, target); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or PlatformNotSupportedException) { File.Copy(blob, pointer, overwrite: true); }
    }

    // ---- HTTP ----------------------------------------------------------------------------------------------

    /// <summary>Sends a request, following up to 10 redirects; the token goes only to the endpoint's host. Network failures name the endpoint.</summary>
    async Task<HttpResponseMessage> SendAsync(string url, long? rangeFrom, string what, CancellationToken ct, HttpMethod? method = null, bool followRedirects = true)
    {
        var uri = new Uri(url);
        var hub = new Uri(Endpoint);
        for (int hops = 0; ; hops++)
        {
            var request = new HttpRequestMessage(method ?? HttpMethod.Get, uri); // no content to dispose; the response keeps a reference
            if (token is not null && string.Equals(uri.Authority, hub.Authority, StringComparison.OrdinalIgnoreCase))
                request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", token);
            if (rangeFrom is long from) request.Headers.Range = new RangeHeaderValue(from, null);
            HttpResponseMessage response;
            using (var connectTimeout = CancellationTokenSource.CreateLinkedTokenSource(ct))
            {
                connectTimeout.CancelAfter(ReadTimeout);
                try { response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, connectTimeout.Token); }
                catch (HttpRequestException e) when (e.StatusCode is null && hops == 0 && uri.Authority == hub.Authority && !IsMidTransfer(rangeFrom))
                {
                    throw new HttpRequestException($"cannot reach the Hugging Face Hub at {Endpoint} (fetching {what}): {Describe(e)}. Check the network connection, or set HF_ENDPOINT to a reachable mirror", e);
                }
                catch (OperationCanceledException) when (!ct.IsCancellationRequested)
                {
                    throw new TimeoutException($"{uri.Authority} did not answer within {ReadTimeout.TotalSeconds:g} s (fetching {what})");
                }
            }
            int status = (int)response.StatusCode;
            if (!followRedirects || status is not (301 or 302 or 303 or 307 or 308) || response.Headers.Location is null) return response;
            if (hops >= 10) { response.Dispose(); throw new HttpRequestException($"too many redirects fetching {what} from {url}"); }
            uri = new Uri(uri, response.Headers.Location);
            response.Dispose();
        }
    }

    // a resumed transfer that cannot connect is retried like a dropped connection, not reported as an unreachable Hub
    static bool IsMidTransfer(long? rangeFrom) => rangeFrom is > 0;

    /// <summary>Turns an error status into an exception that says what to do (HF_TOKEN for 401/403, check the name for 404).</summary>
    async Task ThrowForStatusAsync(HttpResponseMessage response, string what, string url, CancellationToken ct)
    {
        int status = (int)response.StatusCode;
        if (status < 400) return;
        string code = response.Headers.TryGetValues("X-Error-Code", out var codes) ? codes.First() : "";
        string serverMessage = response.Headers.TryGetValues("X-Error-Message", out var messages) ? messages.First() : "";
        if (serverMessage.Length == 0)
        {
            try
            {
                string body = await response.Content.ReadAsStringAsync(ct);
                using var doc = JsonDocument.Parse(body);
                if (doc.RootElement.ValueKind == JsonValueKind.Object && doc.RootElement.TryGetProperty("error", out var err) && err.ValueKind == JsonValueKind.String)
                    serverMessage = err.GetString()!;
            }
            catch (Exception e) when (e is JsonException or IOException or HttpRequestException) { }
        }
        string detail = serverMessage.Length > 0 ? $" (the Hub says: {serverMessage})" : "";
        string tokenHint = token is null ? "set HF_TOKEN to an access token of an account that may read it" : "the token in HF_TOKEN may not read it";
        string message = (status, code) switch
        {
            (_, "GatedRepo") => $"{what} is gated: accept its conditions on the Hub's page for it, then {tokenHint} ({status} from {url}){detail}",
            (_, "RepoNotFound") => $"{what}: repo not found at {Endpoint} ({status}); check the name, and if it is private, {tokenHint}{detail}",
            (_, "RevisionNotFound") => $"{what}: revision not found ({status} from {url}); check the branch, tag or commit{detail}",
            (_, "EntryNotFound") => $"{what}: file not found in the repo ({status} from {url}){detail}",
            (401 or 403, _) => $"{what}: access denied ({status} from {url}); the repo may be private or gated: {tokenHint}{detail}",
            (404, _) => $"{what}: not found ({status} from {url}); check the repo id and the revision{detail}",
            _ => $"{what}: the Hub answered {status} {response.ReasonPhrase} from {url}{detail}",
        };
        throw new HttpRequestException(message, null, response.StatusCode);
    }

    /// <summary>Failures worth a retry: dropped connections, timeouts, 5xx and 429 answers.</summary>
    static bool IsTransient(Exception e, CancellationToken ct) => !ct.IsCancellationRequested && e switch
    {
        HttpRequestException h => h.StatusCode is null || (int)h.StatusCode >= 500 || h.StatusCode == HttpStatusCode.TooManyRequests,
        IOException or TimeoutException => true,
        _ => false,
    };

    static string Describe(Exception e)
    {
        var parts = new List<string>();
        for (var x = e; x is not null; x = x.InnerException)
            if (!parts.Any(p => p.Contains(x.Message))) parts.Add(x.Message);
        return string.Join(": ", parts);
    }

    static string EscapePath(string path) => string.Join('/', path.Split('/').Select(Uri.EscapeDataString));

    [GeneratedRegex(@"^[A-Za-z0-9][\w.\-]*(/[A-Za-z0-9][\w.\-]*)?$")]
    private static partial Regex RepoIdPattern();

    [GeneratedRegex(@"^[\w.\-/]+$")]
    private static partial Regex RevisionPattern();

    [GeneratedRegex("^[0-9a-f]{40}$")]
    private static partial Regex CommitPattern();

    [GeneratedRegex("^[0-9a-fA-F]{64}$")]
    private static partial Regex Sha256Pattern();

    [GeneratedRegex("^[0-9a-f]{40}([0-9a-f]{24})?$")]
    private static partial Regex BlobIdPattern();
}
