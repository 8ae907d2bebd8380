using System.Globalization;
using System.Text;
using System.Text.Json;
using FeatureLens.Runtime.Models;
using FeatureLens.Saes;

namespace FeatureLens.Analysis;

/// <summary>What an import read: records seen, labels kept, and what was left out.</summary>
/// <param name="Records">Data rows (CSV) or JSON lines read, blank lines excluded.</param>
/// <param name="Labels">Features labelled in the result.</param>
/// <param name="OtherSaes">Records for layers or hooks that no SAE of the set reads (skipped).</param>
/// <param name="Superseded">Neuronpedia explanations dropped because the feature had a better-scoring one.</param>
public sealed record LabelImportStats(int Records, int Labels, int OtherSaes, int Superseded);

/// <summary>
/// Feature labels: imported from CSV or Neuronpedia explanation exports (JSONL), or computed from a labelled
/// prompt set — for every feature, the category that "the feature fires" detects best (F1), with precision,
/// recall and specialization (the share of the feature's activation that falls on that category).
/// </summary>
public static class FeatureLabels
{
    /// <summary>Most prompts per forward pass in <see cref="Compute"/>.</summary>
    const int MaxBatchPrompts = 16;

    /// <summary>Cached SAE activations per forward pass are kept under this many floats (256 MiB), which can lower the batch.</summary>
    const long MaxCachedFloats = 64L << 20;

    /// <summary>The CSV columns <see cref="SaveCsv"/> writes, in order.</summary>
    static readonly string[] CsvColumns = ["hook", "layer", "feature", "label", "f1", "precision", "recall", "specialization"];

    // ───────────────────────────── import ─────────────────────────────

    /// <summary>
    /// Loads labels for the SAEs of <paramref name="set"/> from a <c>.csv</c> file (header row; columns
    /// <c>layer</c> or <c>hook</c>, <c>feature</c>, <c>label</c>, optional <c>f1</c>, <c>precision</c>,
    /// <c>recall</c>, <c>specialization</c>) or a Neuronpedia explanation export (<c>.jsonl</c>). Records
    /// for layers or hooks without an SAE in the set are skipped.
    /// </summary>
    public static FeatureLabelLookup Load(string path, SaeSet set) => Load(path, set, out _);

    /// <inheritdoc cref="Load(string, SaeSet)"/>
    /// <param name="path">The file.</param>
    /// <param name="set">The SAEs the labels belong to.</param>
    /// <param name="stats">How many records were read, kept and skipped.</param>
    public static FeatureLabelLookup Load(string path, SaeSet set, out LabelImportStats stats)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"{path}: no such labels file");
        string ext = Path.GetExtension(path).ToLowerInvariant();
        using var reader = new StreamReader(path, Encoding.UTF8, detectEncodingFromByteOrderMarks: true);
        return ext switch
        {
            ".csv" => LoadCsv(reader, path, set, out stats),
            ".jsonl" => LoadNeuronpedia(reader, path, set, out stats),
            _ => throw new ArgumentException($"{path}: unknown labels format '{ext}'; expected .csv (layer/hook, feature, label, ...) or .jsonl (Neuronpedia explanations)"),
        };
    }

    static FeatureLabelLookup LoadCsv(TextReader reader, string path, SaeSet set, out LabelImportStats stats)
    {
        var records = new CsvRecords(reader, path);
        if (!records.Next(out int headerLine, out var header))
            throw new InvalidDataException($"{path}: the file is empty; expected a header row (layer or hook, feature, label, ...)");
        var column = new Dictionary<string, int>();
        for (int i = 0; i < header.Count; i++)
        {
            string name = header[i].Trim().ToLowerInvariant();
            if (name.Length == 0) continue;
            if (!column.TryAdd(name, i)) throw new InvalidDataException($"{path}:{headerLine}: column '{name}' appears twice in the header");
        }
        int Col(string name) => column.TryGetValue(name, out int i) ? i : -1;
        int cHook = Col("hook"), cLayer = Col("layer"), cFeature = Col("feature"), cLabel = Col("label");
        int cF1 = Col("f1"), cPrecision = Col("precision"), cRecall = Col("recall"), cSpec = Col("specialization");
        if (cHook < 0 && cLayer < 0) throw new InvalidDataException($"{path}:{headerLine}: the header needs a 'layer' or a 'hook' column (has: {string.Join(", ", header)})");
        if (cFeature < 0) throw new InvalidDataException($"{path}:{headerLine}: the header has no 'feature' column (has: {string.Join(", ", header)})");
        if (cLabel < 0) throw new InvalidDataException($"{path}:{headerLine}: the header has no 'label' column (has: {string.Join(", ", header)})");

        var lookup = new FeatureLabelLookup();
        var firstLine = new Dictionary<(int Sae, int Feature), int>();
        int rows = 0, other = 0;
        while (records.Next(out int line, out var f))
        {
            rows++;
            if (f.Count != header.Count)
                throw new InvalidDataException($"{path}:{line}: {f.Count} fields, but the header has {header.Count}");
            string where = $"{path}:{line}";
            int sae;
            string hook = cHook >= 0 ? f[cHook].Trim() : "";
            if (hook.Length > 0) sae = FindHook(set, hook);
            else if (cLayer >= 0 && f[cLayer].Trim().Length > 0)
            {
                if (!int.TryParse(f[cLayer].Trim(), NumberStyles.Integer, CultureInfo.InvariantCulture, out int layer))
                    throw new InvalidDataException($"{where}: field 'layer' is '{f[cLayer]}', expected a block index (an integer)");
                var at = Enumerable.Range(0, set.Saes.Count).Where(i => set.Layers[i] == layer).ToList();
                if (at.Count > 1)
                    throw new InvalidDataException($"{where}: field 'layer' is {layer}, but several SAEs of the set are at that layer ({string.Join(", ", at.Select(i => set.Hooks[i]))}); use a 'hook' column instead");
                sae = at.Count == 1 ? at[0] : -1;
            }
            else throw new InvalidDataException($"{where}: both 'hook' and 'layer' are empty; one of them says which SAE the label belongs to");
            if (sae < 0) { other++; continue; }

            int feature = ParseFeature(f[cFeature].Trim(), set, sae, where, "feature");
            string label = f[cLabel].Trim();
            if (label.Length == 0) throw new InvalidDataException($"{where}: field 'label' is empty");
            if (!firstLine.TryAdd((sae, feature), line))
                throw new InvalidDataException($"{where}: feature {feature} of {set.Hooks[sae]} is labelled twice (first on line {firstLine[(sae, feature)]})");
            lookup.Set(set.Hooks[sae], feature, new FeatureLabel
            {
                Label = label,
                F1 = OptionalNumber(f, cF1, where, "f1"),
                Precision = OptionalNumber(f, cPrecision, where, "precision"),
                Recall = OptionalNumber(f, cRecall, where, "recall"),
                Specialization = OptionalNumber(f, cSpec, where, "specialization"),
                Source = "csv",
            });
        }
        stats = new LabelImportStats(rows, lookup.Count, other, 0);
        return lookup;
    }

    /// <summary>The SAE reading <paramref name="hook"/> (or named by it, "L2 resid_post"); −1 when none does.</summary>
    static int FindHook(SaeSet set, string hook)
    {
        for (int i = 0; i < set.Hooks.Count; i++) if (set.Hooks[i] == hook || set.Names[i] == hook) return i;
        return -1;
    }

    static int ParseFeature(string s, SaeSet set, int sae, string where, string field)
    {
        if (!int.TryParse(s, NumberStyles.Integer, CultureInfo.InvariantCulture, out int feature) || feature < 0)
            throw new InvalidDataException($"{where}: field '{field}' is '{s}', expected a feature index (an integer ≥ 0)");
        int dSae = set.Saes[sae].DSae;
        if (feature >= dSae)
            throw new InvalidDataException($"{where}: field '{field}' is {feature}, but the SAE at {set.Hooks[sae]} has only {dSae} features");
        return feature;
    }

    static double? OptionalNumber(List<string> f, int col, string where, string field)
    {
        if (col < 0) return null;
        string s = f[col].Trim();
        if (s.Length == 0) return null;
        if (!double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out double v) || !double.IsFinite(v))
            throw new InvalidDataException($"{where}: field '{field}' is '{s}', expected a number (or an empty field)");
        return v;
    }

    /// <summary>
    /// An RFC 4180 record reader: fields separated by commas, records by CRLF, LF or CR; a field in double
    /// quotes may hold commas, line breaks and doubled quotes (""). Blank lines are skipped.
    /// </summary>
    sealed class CsvRecords(TextReader reader, string path)
    {
        int _line = 1;
        bool _lastWasQuoted;
        readonly StringBuilder _field = new();

        /// <summary>Reads the next non-blank record and the line it starts on; false at the end of the file.</summary>
        public bool Next(out int line, out List<string> fields)
        {
            while (true)
            {
                line = _line;
                fields = [];
                if (reader.Peek() < 0) return false;
                ReadRecord(fields);
                bool blank = fields.Count == 1 && fields[0].Length == 0 && !_lastWasQuoted;
                if (!blank) return true;
            }
        }

        /// <summary>Reads fields up to the end of the record (its line break included).</summary>
        void ReadRecord(List<string> fields)
        {
            while (true)
            {
                _field.Clear();
                _lastWasQuoted = false;
                int c = reader.Read();
                if (c == '"')
                {
                    _lastWasQuoted = true;
                    int startLine = _line;
                    while (true)
                    {
                        c = reader.Read();
                        if (c < 0) throw new InvalidDataException($"{path}:{startLine}: a quoted field is never closed (missing '\"')");
                        if (c == '"')
                        {
                            if (reader.Peek() == '"') { reader.Read(); _field.Append('"'); continue; }
                            break;
                        }
                        if (c == '\n' || (c == '\r' && reader.Peek() != '\n')) _line++;
                        _field.Append((char)c);
                    }
                    c = reader.Read();
                    if (c >= 0 && c != ',' && c != '\n' && c != '\r')
                        throw new InvalidDataException($"{path}:{_line}: unexpected '{(char)c}' after the closing quote of a field; a quoted field must be followed by ',' or the end of the line");
                }
                else
                {
                    while (c >= 0 && c != ',' && c != '\n' && c != '\r')
                    {
                        _field.Append((char)c);
                        c = reader.Read();
                    }
                }
                fields.Add(_field.ToString());
                if (c == ',') continue;
                if (c == '\r' && reader.Peek() == '\n') reader.Read();
                if (c >= 0) _line++;
                return;
            }
        }
    }

    static FeatureLabelLookup LoadNeuronpedia(TextReader reader, string path, SaeSet set, out LabelImportStats stats)
    {
        var best = new Dictionary<(int Sae, int Feature), (string Label, double? Score)>();
        var sourceToSae = new Dictionary<string, int>(StringComparer.Ordinal);
        int lineNo = 0, records = 0, other = 0, superseded = 0;
        string? text;
        while ((text = reader.ReadLine()) != null)
        {
            lineNo++;
            if (string.IsNullOrWhiteSpace(text)) continue;
            records++;
            string where = $"{path}:{lineNo}";
            JsonDocument doc;
            try { doc = JsonDocument.Parse(text); }
            catch (JsonException e) { throw new InvalidDataException($"{where}: not valid JSON ({e.Message})"); }
            using (doc)
            {
                var o = doc.RootElement;
                if (o.ValueKind != JsonValueKind.Object) throw new InvalidDataException($"{where}: expected a JSON object, found {o.ValueKind}");
                if (!o.TryGetProperty("layer", out var layerEl))
                    throw new InvalidDataException($"{where}: field 'layer' is missing (a Neuronpedia source id such as \"8-res-jb\")");
                string source = layerEl.ValueKind switch
                {
                    JsonValueKind.String => layerEl.GetString()!.Trim(),
                    JsonValueKind.Number => layerEl.GetRawText(),
                    _ => throw new InvalidDataException($"{where}: field 'layer' is {layerEl.ValueKind}, expected a source id string such as \"8-res-jb\" or a layer number"),
                };
                if (!sourceToSae.TryGetValue(source, out int sae))
                    sourceToSae[source] = sae = SaeOfSource(set, source, where);
                if (sae < 0) { other++; continue; }

                if (!o.TryGetProperty("index", out var indexEl)) throw new InvalidDataException($"{where}: field 'index' is missing (the feature index)");
                string indexText = indexEl.ValueKind switch
                {
                    JsonValueKind.String => indexEl.GetString()!.Trim(),
                    JsonValueKind.Number => indexEl.GetRawText(),
                    _ => throw new InvalidDataException($"{where}: field 'index' is {indexEl.ValueKind}, expected a feature index (a number or a string of digits)"),
                };
                int feature = ParseFeature(indexText, set, sae, where, "index");

                if (!o.TryGetProperty("description", out var descEl) || descEl.ValueKind != JsonValueKind.String)
                    throw new InvalidDataException($"{where}: field 'description' (the explanation text) is missing or not a string");
                string label = descEl.GetString()!.Trim();
                if (label.Length == 0) throw new InvalidDataException($"{where}: field 'description' is empty");
                double? score = Score(o, where);

                if (best.TryGetValue((sae, feature), out var kept))
                {
                    superseded++;
                    bool better = score is double s && (kept.Score is not double k || s > k);
                    if (!better) continue;
                }
                best[(sae, feature)] = (label, score);
            }
        }
        var lookup = new FeatureLabelLookup();
        foreach (var ((sae, feature), (label, _)) in best)
            lookup.Set(set.Hooks[sae], feature, new FeatureLabel { Label = label, Source = "neuronpedia" });
        stats = new LabelImportStats(records, lookup.Count, other, superseded);
        return lookup;
    }

    /// <summary>An explanation's score: "score" (a number), or the best of "scores" (numbers or objects with "value"/"score").</summary>
    static double? Score(JsonElement o, string where)
    {
        if (o.TryGetProperty("score", out var s) && s.ValueKind != JsonValueKind.Null)
        {
            if (s.ValueKind != JsonValueKind.Number) throw new InvalidDataException($"{where}: field 'score' is {s.ValueKind}, expected a number");
            return s.GetDouble();
        }
        if (!o.TryGetProperty("scores", out var list) || list.ValueKind == JsonValueKind.Null) return null;
        if (list.ValueKind != JsonValueKind.Array) throw new InvalidDataException($"{where}: field 'scores' is {list.ValueKind}, expected an array");
        double? best = null;
        foreach (var e in list.EnumerateArray())
        {
            JsonElement v = e;
            if (e.ValueKind == JsonValueKind.Object && !(e.TryGetProperty("value", out v) || e.TryGetProperty("score", out v)))
                throw new InvalidDataException($"{where}: an entry of 'scores' has neither 'value' nor 'score'");
            if (v.ValueKind != JsonValueKind.Number) throw new InvalidDataException($"{where}: an entry of 'scores' is {v.ValueKind}, expected a number");
            double d = v.GetDouble();
            if (best is not double b || d > b) best = d;
        }
        return best;
    }

    /// <summary>
    /// The SAE a Neuronpedia source id refers to: its leading number is the block index; "res", "mlp"/"transcoder"
    /// and "att" parts restrict it to SAEs on the residual stream, MLP or attention hooks, and "pre"/"mid"/"post"
    /// narrow the choice further when several remain. −1 when no SAE of the set matches.
    /// </summary>
    static int SaeOfSource(SaeSet set, string source, string where)
    {
        int digits = 0;
        while (digits < source.Length && char.IsAsciiDigit(source[digits])) digits++;
        if (digits == 0 || digits > 6 || (digits < source.Length && source[digits] != '-'))
            throw new InvalidDataException($"{where}: field 'layer' is '{source}', expected a Neuronpedia source id such as \"8-res-jb\" or a layer number");
        int layer = int.Parse(source.AsSpan(0, digits), CultureInfo.InvariantCulture);
        var parts = source[digits..].ToLowerInvariant().Split(['-', '_'], StringSplitOptions.RemoveEmptyEntries);
        string? kind = null;
        foreach (var p in parts)
        {
            if (p.StartsWith("res", StringComparison.Ordinal)) kind ??= "resid";
            else if (p is "mlp" or "transcoder" or "tc") kind ??= "mlp";
            else if (p.StartsWith("att", StringComparison.Ordinal)) kind ??= "attn";
        }
        var candidates = Enumerable.Range(0, set.Saes.Count)
            .Where(i => set.Layers[i] == layer && (kind == null || set.Hooks[i].Contains(kind, StringComparison.Ordinal))).ToList();
        if (candidates.Count > 1)
            foreach (var position in new[] { "pre", "mid", "post" })
            {
                if (!parts.Contains(position)) continue;
                var narrowed = candidates.Where(i => set.Hooks[i].EndsWith(position, StringComparison.Ordinal)).ToList();
                if (narrowed.Count > 0) candidates = narrowed;
            }
        if (candidates.Count > 1)
            throw new InvalidDataException($"{where}: source '{source}' could be any of {string.Join(", ", candidates.Select(i => set.Hooks[i]))}; " +
                "load these labels with an SAE set that has one SAE at that layer, or convert them to CSV with a 'hook' column");
        return candidates.Count == 1 ? candidates[0] : -1;
    }

    // ───────────────────────────── compute ─────────────────────────────

    /// <summary>
    /// Reads a labelled prompt set: JSONL with one object per line, {"text": "...", "label": "..."} (other
    /// fields are ignored; blank lines are skipped).
    /// </summary>
    public static IEnumerable<(string Text, string Label)> ReadLabelledPrompts(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"{path}: no such prompt file");
        var prompts = new List<(string, string)>();
        int lineNo = 0;
        foreach (var line in File.ReadLines(path))
        {
            lineNo++;
            if (string.IsNullOrWhiteSpace(line)) continue;
            string where = $"{path}:{lineNo}";
            JsonDocument doc;
            try { doc = JsonDocument.Parse(line); }
            catch (JsonException e) { throw new InvalidDataException($"{where}: not valid JSON ({e.Message})"); }
            using (doc)
            {
                var o = doc.RootElement;
                if (o.ValueKind != JsonValueKind.Object) throw new InvalidDataException($"{where}: expected a JSON object {{\"text\": ..., \"label\": ...}}, found {o.ValueKind}");
                prompts.Add((Field(o, "text", where), Field(o, "label", where)));
            }
        }
        if (prompts.Count == 0) throw new InvalidDataException($"{path}: no prompts; expected JSONL lines {{\"text\": ..., \"label\": ...}}");
        return prompts;

        static string Field(JsonElement o, string name, string where)
        {
            if (!o.TryGetProperty(name, out var e)) throw new InvalidDataException($"{where}: field '{name}' is missing");
            if (e.ValueKind != JsonValueKind.String) throw new InvalidDataException($"{where}: field '{name}' is {e.ValueKind}, expected a string");
            string s = e.GetString()!;
            if (string.IsNullOrWhiteSpace(s)) throw new InvalidDataException($"{where}: field '{name}' is empty");
            return name == "label" ? s.Trim() : s;
        }
    }

    /// <summary>
    /// Labels every feature of every SAE of <paramref name="set"/> with the category it detects best.
    /// <para>A feature "fires" on a prompt when its largest activation over the prompt's tokens (BOS excluded) exceeds
    /// <paramref name="fireThreshold"/>. For each category c: precision = fires∧c / fires, recall = fires∧c / |c|, and
    /// F1; the feature gets the category with the best F1 (ties: higher precision, then the category that appears
    /// first in <paramref name="prompts"/>). Specialization = the feature's activation summed over the tokens of c's
    /// prompts / summed over all prompts. Features that never fire get no label.</para>
    /// <para>Prompts are encoded with BOS, cut to the model's context, and run in batches (up to 16 prompts, fewer when
    /// the SAEs' activations would pass 256 MiB) with every SAE spliced in with its error term: one forward pass per
    /// batch for all SAEs, whose outputs are those of the unspliced model.</para>
    /// </summary>
    /// <param name="set">The model and SAEs.</param>
    /// <param name="prompts">Texts and their category labels.</param>
    /// <param name="fireThreshold">Activation a feature must exceed somewhere in a prompt to fire on it (≥ 0).</param>
    /// <param name="done">Receives the number of prompts processed so far.</param>
    public static FeatureLabelLookup Compute(SaeSet set, IEnumerable<(string Text, string Label)> prompts, double fireThreshold = 0, IProgress<int>? done = null)
    {
        if (!double.IsFinite(fireThreshold) || fireThreshold < 0)
            throw new ArgumentOutOfRangeException(nameof(fireThreshold), fireThreshold, "the fire threshold must be a finite number ≥ 0");
        var model = set.Model;
        var tok = model.Tokenizer ?? throw new InvalidOperationException("the model has no tokenizer, so prompts cannot be encoded; load it with a tokenizer");
        var list = prompts.ToList();
        if (list.Count == 0) throw new ArgumentException("no prompts given: labels are computed from a labelled prompt set");

        // categories in order of first appearance; each prompt's category index and tokens
        var categories = new List<string>();
        var categoryIndex = new Dictionary<string, int>(StringComparer.Ordinal);
        var promptCategory = new int[list.Count];
        var tokens = new int[list.Count][];
        int? bos = tok.BosId;
        for (int p = 0; p < list.Count; p++)
        {
            var (text, rawLabel) = list[p];
            if (string.IsNullOrWhiteSpace(rawLabel)) throw new ArgumentException($"prompt {p} has an empty label");
            string label = rawLabel.Trim();
            if (!categoryIndex.TryGetValue(label, out int c)) { c = categories.Count; categories.Add(label); categoryIndex[label] = c; }
            promptCategory[p] = c;
            var ids = tok.Encode(text ?? "", addBos: true);
            if (ids.Length > model.Config.NCtx) ids = ids[..model.Config.NCtx];
            if (ids.Length - FirstScored(ids, bos) <= 0) throw new ArgumentException($"prompt {p} (\"{text}\") has no tokens besides BOS");
            tokens[p] = ids;
        }
        int C = categories.Count;
        var categorySize = new int[C];
        foreach (int c in promptCategory) categorySize[c]++;

        // per SAE: fires[c, j] = prompts of category c on which feature j fired; sums[c, j] = its activation summed over their tokens
        int S = set.Saes.Count;
        var splices = set.Saes.Select((s, i) => new SaeSplice(s, useErrorTerm: true, hookName: set.Hooks[i])).ToList();
        var fires = set.Saes.Select(s => new int[C * s.DSae]).ToArray();
        var sums = set.Saes.Select(s => new double[C * s.DSae]).ToArray();
        var actsNames = new HashSet<string>(splices.Select(s => s.ActsPostHook), StringComparer.Ordinal);
        int? stopAt = StopLayer(set, splices);
        long floatsPerPrompt = (long)tokens.Max(t => t.Length) * set.Saes.Sum(s => (long)s.DSae);
        int batchPrompts = (int)Math.Clamp(MaxCachedFloats / floatsPerPrompt, 1, MaxBatchPrompts);

        for (int start = 0; start < list.Count; start += batchPrompts)
        {
            int B = Math.Min(batchPrompts, list.Count - start);
            var batch = tokens.AsSpan(start, B).ToArray();
            var cache = new ActivationCache { Lengths = batch.Select(b => b.Length).ToArray() };
            model.Run(batch, new RunOptions { Splices = splices, CacheFilter = actsNames.Contains, Cache = cache, ReturnLogits = false, StopAtLayer = stopAt });
            for (int i = 0; i < S; i++)
            {
                var acts = cache[splices[i].ActsPostHook];   // (B, T, d_sae)
                int T = acts.Shape[1], d = set.Saes[i].DSae;
                var max = new float[d];
                var sum = new double[d];
                for (int b = 0; b < B; b++)
                {
                    Array.Fill(max, float.NegativeInfinity);
                    Array.Clear(sum);
                    var seq = batch[b];
                    for (int t = FirstScored(seq, bos); t < seq.Length; t++)
                    {
                        var row = new ReadOnlySpan<float>(acts.Data, (b * T + t) * d, d);
                        for (int j = 0; j < d; j++)
                        {
                            float v = row[j];
                            if (v > max[j]) max[j] = v;
                            sum[j] += v;
                        }
                    }
                    int c = promptCategory[start + b];
                    var fireRow = fires[i].AsSpan(c * d, d);
                    var sumRow = sums[i].AsSpan(c * d, d);
                    for (int j = 0; j < d; j++)
                    {
                        if (max[j] > fireThreshold) fireRow[j]++;
                        sumRow[j] += sum[j];
                    }
                }
            }
            done?.Report(start + B);
        }

        var lookup = new FeatureLabelLookup();
        for (int i = 0; i < S; i++)
        {
            int d = set.Saes[i].DSae;
            for (int j = 0; j < d; j++)
                if (BestCategory(fires[i], sums[i], categorySize, d, j) is var (c, f1, precision, recall, specialization))
                    lookup.Set(set.Hooks[i], j, new FeatureLabel
                    {
                        Label = categories[c], F1 = f1, Precision = precision, Recall = recall, Specialization = specialization, Source = "computed",
                    });
        }
        return lookup;
    }

    /// <summary>The first position that counts: 1 when the sequence starts with BOS, else 0.</summary>
    static int FirstScored(int[] ids, int? bos) => ids.Length > 0 && bos is int b && ids[0] == b ? 1 : 0;

    /// <summary>Blocks to run: up to the deepest block any SAE reads or writes; null (all) when one sits outside the blocks.</summary>
    static int? StopLayer(SaeSet set, IEnumerable<SaeSplice> splices)
    {
        int deepest = -1;
        foreach (var s in splices)
            foreach (var hook in new[] { s.InputHook, s.OutputHook })
            {
                int l = SaeSet.LayerOf(hook);
                if (l < 0) return null;
                deepest = Math.Max(deepest, l);
            }
        return deepest + 1 >= set.Model.Config.NLayers ? null : deepest + 1;
    }

    /// <summary>
    /// Feature j's best category from confusion counts: fires is (C, d) prompts fired on per category, sums is (C, d)
    /// activation per category, size is (C) prompts per category. Null when the feature never fired.
    /// </summary>
    static (int Category, double F1, double Precision, double Recall, double Specialization)? BestCategory(
        int[] fires, double[] sums, int[] size, int d, int j)
    {
        int C = size.Length;
        long total = 0;
        double totalSum = 0;
        for (int c = 0; c < C; c++) { total += fires[c * d + j]; totalSum += sums[c * d + j]; }
        if (total == 0) return null;
        int best = -1;
        double bestF1 = -1, bestPrecision = -1, bestRecall = 0;
        for (int c = 0; c < C; c++)
        {
            int hit = fires[c * d + j];
            double precision = (double)hit / total;
            double recall = (double)hit / size[c];
            double f1 = hit == 0 ? 0 : 2 * precision * recall / (precision + recall);
            if (f1 > bestF1 || (f1 == bestF1 && precision > bestPrecision))
            {
                best = c; bestF1 = f1; bestPrecision = precision; bestRecall = recall;
            }
        }
        double specialization = totalSum > 0 ? sums[best * d + j] / totalSum : 0;
        return (best, bestF1, bestPrecision, bestRecall, specialization);
    }

    // ───────────────────────────── export ─────────────────────────────

    /// <summary>
    /// Writes labels as CSV (hook, layer, feature, label, f1, precision, recall, specialization), SAEs in the set's
    /// order, then labels of hooks outside the set; numbers round-trip exactly. Written to a temporary file, then moved.
    /// </summary>
    public static void SaveCsv(FeatureLabelLookup labels, SaeSet set, string path)
    {
        string tmp = path + ".tmp";
        using (var w = new StreamWriter(tmp, append: false, new UTF8Encoding(encoderShouldEmitUTF8Identifier: false)))
        {
            w.NewLine = "\r\n";
            w.WriteLine(string.Join(",", CsvColumns));
            int Order(string hook) { int i = FindHook(set, hook); return i < 0 ? int.MaxValue : i; }
            foreach (var (hook, feature, label) in labels.All().OrderBy(x => Order(x.Hook)).ThenBy(x => x.Hook, StringComparer.Ordinal).ThenBy(x => x.Feature))
            {
                int layer = SaeSet.LayerOf(hook);
                w.WriteLine(string.Join(",",
                    Quote(hook), layer >= 0 ? layer.ToString(CultureInfo.InvariantCulture) : "", feature.ToString(CultureInfo.InvariantCulture), Quote(label.Label),
                    Number(label.F1), Number(label.Precision), Number(label.Recall), Number(label.Specialization)));
            }
        }
        File.Move(tmp, path, overwrite: true);

        static string Number(double? v) => v is double x ? x.ToString("R", CultureInfo.InvariantCulture) : "";
        static string Quote(string s) =>
            s.IndexOfAny([',', '"', '\r', '\n']) >= 0 || s != s.Trim() ? "\"" + s.Replace("\"", "\"\"") + "\"" : s;
    }
}
