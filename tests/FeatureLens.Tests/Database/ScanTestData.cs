using System.Text;
using FeatureLens.Analysis;
using FeatureLens.Database;
using FeatureLens.Saes;
using FeatureLens.Saes.Formats;
using FeatureLens.Tests.Analysis;
using FeatureLens.Tests.Saes;

namespace FeatureLens.Tests.Database;

/// <summary>Small random scans on stories260K: random SAEs (a TopK, a ReLU and a JumpReLU hook_z one) and a random corpus.</summary>
internal static class ScanTestData
{
    static readonly string[] Words =
    [
        "Lily", "Tom", "the", "a", "dog", "cat", "ball", "park", "happy", "sad", "ran", "jumped", "big", "red", "tree", "sun",
        "mom", "said", "and", "to", "played", "with", "her", "his", "friend", "bird", "flew", "home", "saw", "little", "girl", "boy",
    ];

    /// <summary>A corpus file of random short stories (documents separated by blank lines).</summary>
    public static string Corpus(Random rng, string dir, int documents = 60, string name = "corpus.txt")
    {
        var sb = new StringBuilder();
        for (int d = 0; d < documents; d++)
        {
            int sentences = rng.Next(2, 6);
            for (int s = 0; s < sentences; s++)
            {
                int n = rng.Next(4, 12);
                for (int w = 0; w < n; w++) sb.Append(w == 0 ? "" : " ").Append(Words[rng.Next(Words.Length)]);
                sb.Append(". ");
            }
            sb.Append("\n\n");
        }
        string path = Path.Combine(dir, name);
        File.WriteAllText(path, sb.ToString());
        return path;
    }

    /// <summary>Three random SAEs of d_sae <paramref name="dSae"/>: TopK at L0 resid_post, ReLU at L3 resid_post, JumpReLU at L1 hook_z.</summary>
    public static List<Sae> Saes(Random rng, int dSae = 48)
    {
        var m = AnalysisTestData.Model.Config;
        return
        [
            SaeTestData.Random(rng, SaeArchitecture.TopK, m.DModel, dSae, "blocks.0.hook_resid_post", k: 6),
            SaeTestData.Random(rng, SaeArchitecture.Standard, m.DModel, dSae, "blocks.3.hook_resid_post"),
            SaeTestData.Random(rng, SaeArchitecture.JumpRelu, m.NHeads * m.DHead, dSae, "blocks.1.attn.hook_z"),
        ];
    }

    /// <summary>Saves the SAEs as SAELens folders under <paramref name="dir"/> (one per hook); returns the folders.</summary>
    public static List<string> SaveSaes(IEnumerable<Sae> saes, string dir)
    {
        var list = new List<string>();
        foreach (var s in saes)
        {
            string d = Path.Combine(dir, s.Config.Metadata.HookName);
            SaeWriter.Save(s, d);
            list.Add(d);
        }
        return list;
    }

    /// <summary>Settings small enough for a test, drawn at random (windows of 24–40 tokens, 2–5 windows per block).</summary>
    public static ScanSettings Settings(Random rng) => new()
    {
        Context = rng.Next(24, 41), Tokens = rng.Next(1800, 2600), BlockWindows = rng.Next(2, 6), TopExamples = rng.Next(3, 8),
        Intervals = rng.Next(3, 6), IntervalExamples = rng.Next(2, 4), PartnerTokens = rng.Next(400, 900), Partners = rng.Next(2, 6), LogitTokens = rng.Next(3, 7),
    };

    /// <summary>Every table of a database as text, in key order (meta without the keys a merge sets).</summary>
    public static string Dump(string path)
    {
        using var db = new Microsoft.Data.Sqlite.SqliteConnection($"Data Source={path};Mode=ReadOnly;Pooling=False");
        db.Open();
        var sb = new StringBuilder();
        var tables = new (string Name, string Order)[]
        {
            ("meta", "key"), ("saes", "sae"), ("vocab", "token"), ("blocks", "block"), ("windows", "window"), ("stats", "sae"),
            ("examples", "sae, feature, bin, token"), ("sample", "window"), ("logit_lens", "sae, feature"), ("labels", "sae, feature"),
            ("features", "sae, feature"), ("partners", "sae, feature, rank"), ("example_tokens", "token_id, sae, feature"),
        };
        foreach (var (name, order) in tables)
        {
            sb.Append("## ").Append(name).Append('\n');
            using var cmd = db.CreateCommand();
            cmd.CommandText = $"SELECT * FROM {name} {(name == "meta" ? "WHERE key NOT IN ('shard', 'merged_from')" : "")} ORDER BY {order}";
            using var r = cmd.ExecuteReader();
            while (r.Read())
            {
                for (int i = 0; i < r.FieldCount; i++)
                {
                    object v = r.GetValue(i);
                    sb.Append(v switch
                    {
                        byte[] b => Convert.ToHexString(System.Security.Cryptography.SHA256.HashData(b)),
                        double x => x.ToString("R", CultureInfo.InvariantCulture),
                        _ => Convert.ToString(v, CultureInfo.InvariantCulture),
                    }).Append('|');
                }
                sb.Append('\n');
            }
        }
        return sb.ToString();
    }

    /// <summary>The scan's SAE set.</summary>
    public static SaeSet Set(IEnumerable<Sae> saes) => new(AnalysisTestData.Model, saes);
}
