using FeatureLens.Saes;
using FeatureLens.Saes.Formats;
using FeatureLens.Tests.Saes;

namespace FeatureLens.Tests.Cli;

/// <summary>featurelens labels compute | show on the shipped labelled prompt set.</summary>
public class LabelsCliTests
{
    static string Stories => Path.Combine(TestPaths.Shared, "models", "stories260K", "stories260K.bin");

    [Fact]
    public void ComputeWritesACsvThatShowReadsBack()
    {
        using var dir = new TempDir();
        var rng = new Random(Random.Shared.Next());
        string saes = dir.File("saes");
        foreach (int l in new[] { 1, 3 })
            SaeWriter.Save(SaeTestData.Random(rng, SaeArchitecture.TopK, 64, 96, $"blocks.{l}.hook_resid_post", k: 6), Path.Combine(saes, $"blocks.{l}.hook_resid_post"));
        string prompts = Path.Combine(TestPaths.RepoRoot, "data", "prompts", "stories260K-labelled.jsonl");
        string csv = dir.File("labels.csv");
        var r = CliTests.Run("labels", "compute", "--model", Stories, "--sae", saes, "--prompts", prompts, "--out", csv);
        Assert.True(r.ExitCode == 0, r.Stderr + r.Text);
        var lines = File.ReadAllLines(csv);
        Assert.StartsWith("hook", lines[0]);
        Assert.True(lines.Length > 20, $"{lines.Length} lines");
        Assert.Contains("blocks.3.hook_resid_post", string.Join("\n", lines));
        var show = CliTests.Run("labels", "show", csv, "--model", Stories, "--sae", saes);
        Assert.True(show.ExitCode == 0, show.Stderr);
        Assert.Contains("dialogue", show.Text + string.Join("\n", lines));

        var bad = CliTests.Run("labels", "compute", "--model", Stories, "--sae", saes, "--prompts", dir.File("missing.jsonl"), "--out", csv);
        Assert.Equal(1, bad.ExitCode);
        Assert.Contains("missing.jsonl", bad.Stderr);
    }
}
