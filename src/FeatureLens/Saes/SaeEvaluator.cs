using FeatureLens.Runtime.Models;
using Tensor = FeatureLens.Runtime.Tensors.Tensor;

namespace FeatureLens.Saes;

/// <summary>Options of <see cref="SaeEvaluator.Evaluate"/>.</summary>
public sealed class SaeEvalOptions
{
    /// <summary>Sequences per forward pass.</summary>
    public int BatchSequences { get; init; } = 8;
    /// <summary>Leave BOS positions out of the reconstruction and sparsity statistics (their activations are outliers).</summary>
    public bool ExcludeBos { get; init; } = true;
    /// <summary>A latent firing on more than this fraction of tokens counts as dense.</summary>
    public double DenseThreshold { get; init; } = 0.1;
}

/// <summary>One bin of the feature-frequency histogram: latents with log10(frequency) in [Lo, Hi).</summary>
public sealed record FrequencyBin(double Log10Lo, double Log10Hi, int Count);

/// <summary>Quality of one SAE on a corpus.</summary>
public sealed class SaeEvalResult
{
    public required string Name { get; init; }
    public required string Hook { get; init; }
    /// <summary>Transcoders: the hook the output replaces (hook_name_out); null for SAEs, which replace <see cref="Hook"/>.</summary>
    public string? HookOut { get; init; }
    public required string Architecture { get; init; }
    public required int DSae { get; init; }
    /// <summary>Tokens in the reconstruction statistics (BOS excluded when asked).</summary>
    public long Tokens { get; set; }
    /// <summary>Mean number of active latents per token.</summary>
    public double L0 { get; set; }
    /// <summary>Mean squared error per element between the SAE output and the activation it replaces.</summary>
    public double Mse { get; set; }
    /// <summary>1 − Σ‖x − x̂‖² / Σ‖x − mean(x)‖² (one minus the fraction of variance unexplained).</summary>
    public double ExplainedVariance { get; set; }
    /// <summary>Next-token cross-entropy (nats/token) of the clean model, with the SAE spliced in (no error term), and with the hook zero-ablated.</summary>
    public double CeClean { get; set; }
    public double CeSpliced { get; set; }
    public double CeZeroAblated { get; set; }
    /// <summary>(CE zero − CE spliced) / (CE zero − CE clean).</summary>
    public double LossRecovered { get; set; }
    public int DeadLatents { get; set; }
    public int DenseLatents { get; set; }
    /// <summary>Fraction of tokens on which each latent fires.</summary>
    public double[] FeatureFrequency { get; set; } = [];
    /// <summary>log10 frequency histogram of the live latents (dead ones are counted in <see cref="DeadLatents"/>).</summary>
    public List<FrequencyBin> Histogram { get; set; } = [];
}

/// <summary>Cross-entropy with every SAE of a set spliced in at once (see <see cref="SaeEvaluator.EvaluateReplacement"/>).</summary>
public sealed class ReplacementEvalResult
{
    /// <summary>The hooks replaced (each SAE's output hook: blocks.L.hook_mlp_out for transcoders).</summary>
    public required IReadOnlyList<string> Hooks { get; init; }
    /// <summary>Predicted positions the cross-entropies average over.</summary>
    public long Positions { get; init; }
    public double CeClean { get; init; }
    /// <summary>Every hook replaced by its SAE's output (no error terms).</summary>
    public double CeReplaced { get; init; }
    /// <summary>Every hook zero-ablated at once.</summary>
    public double CeZeroAblated { get; init; }
    /// <summary>(CE zero − CE replaced) / (CE zero − CE clean).</summary>
    public double LossRecovered { get; set; }
}

/// <summary>
/// Evaluates SAEs on a model and corpus the way SAELens does: reconstruction (L0, MSE, explained variance),
/// downstream loss (clean, spliced, zero-ablated, fraction recovered) and latent frequencies.
/// </summary>
public static class SaeEvaluator
{
    public static IReadOnlyList<SaeEvalResult> Evaluate(HookedTransformer model, IReadOnlyList<Sae> saes, IEnumerable<int[]> windows,
        SaeEvalOptions? options = null, IProgress<long>? tokensDone = null)
    {
        options ??= new SaeEvalOptions();
        if (saes.Count == 0) throw new ArgumentException("no SAEs to evaluate");
        var splices = saes.Select(s => new SaeSplice(s)).ToList();
        foreach (var s in splices) s.Validate(model);
        var acc = saes.Select(s => new Accumulator(s.DSae, s.DOut)).ToList();
        double ceClean = 0; long cePositions = 0;
        var ceSpliced = new double[saes.Count]; var ceZero = new double[saes.Count];
        long tokens = 0;
        var outputHooks = new HashSet<string>(splices.Select(s => s.OutputHook));
        foreach (var batch in windows.Chunk(Math.Max(1, options.BatchSequences)))
        {
            int[] lengths = batch.Select(b => b.Length).ToArray();
            var clean = new ActivationCache { Lengths = lengths };
            var logits = model.Run(batch, new RunOptions { CacheFilter = outputHooks.Contains, Cache = clean })!;
            ceClean += CrossEntropy(logits, batch, out long positions);
            cePositions += positions;
            for (int i = 0; i < saes.Count; i++)
            {
                var sp = splices[i];
                var cache = new ActivationCache { Lengths = lengths };
                string outName = sp.InputHook + ".hook_sae_output";
                var spliced = model.Run(batch, new RunOptions { Splices = [sp], CacheFilter = n => n == sp.ActsPostHook || n == outName, Cache = cache })!;
                ceSpliced[i] += CrossEntropy(spliced, batch, out _);
                var zeroed = model.RunWithHooks(batch, (sp.OutputHook, (t, _) => { Array.Clear(t.Data); return null; }));
                ceZero[i] += CrossEntropy(zeroed, batch, out _);
                acc[i].Add(clean[sp.OutputHook], cache[outName], cache[sp.ActsPostHook], batch, model.Tokenizer?.BosId ?? -1, options.ExcludeBos);
            }
            tokens += lengths.Sum();
            tokensDone?.Report(tokens);
        }
        if (tokens == 0) throw new ArgumentException("the corpus gave no tokens to evaluate on");
        var results = new List<SaeEvalResult>();
        for (int i = 0; i < saes.Count; i++)
        {
            var s = saes[i];
            var r = new SaeEvalResult
            {
                Name = s.SourcePath != null ? Path.GetFileName(Path.TrimEndingDirectorySeparator(s.SourcePath)) : s.ToString(),
                Hook = splices[i].InputHook, HookOut = s.Config.IsTranscoder ? splices[i].OutputHook : null, Architecture = SaeConfig.ArchitectureName(s.Config.Architecture), DSae = s.DSae,
                CeClean = ceClean / cePositions, CeSpliced = ceSpliced[i] / cePositions, CeZeroAblated = ceZero[i] / cePositions,
            };
            r.LossRecovered = (r.CeZeroAblated - r.CeSpliced) / (r.CeZeroAblated - r.CeClean);
            acc[i].Finish(r, options.DenseThreshold);
            results.Add(r);
        }
        return results;
    }

    /// <summary>
    /// The whole replacement: every SAE (typically one transcoder per MLP) spliced in at once, without error terms, against
    /// the clean model and against zero-ablating every hook they write at once. Cross-entropy over every predicted position.
    /// </summary>
    public static ReplacementEvalResult EvaluateReplacement(HookedTransformer model, IReadOnlyList<Sae> saes, IEnumerable<int[]> windows,
        SaeEvalOptions? options = null, IProgress<long>? tokensDone = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(saes);
        options ??= new SaeEvalOptions();
        if (saes.Count == 0) throw new ArgumentException("no SAEs to evaluate");
        var splices = saes.Select(s => new SaeSplice(s)).ToList();
        foreach (var s in splices) s.Validate(model);
        var outputs = splices.Select(s => s.OutputHook).ToList();
        var dup = outputs.GroupBy(h => h).FirstOrDefault(g => g.Count() > 1);
        if (dup != null) throw new ArgumentException($"two SAEs write hook '{dup.Key}'; a replacement needs one per hook");
        var zeroHooks = outputs.Select(h => (h, (HookFunction)((t, _) => { Array.Clear(t.Data); return null; }))).ToArray();
        double clean = 0, replaced = 0, zeroed = 0;
        long positions = 0, tokens = 0;
        foreach (var batch in windows.Chunk(Math.Max(1, options.BatchSequences)))
        {
            clean += CrossEntropy(model.Forward(batch), batch, out long p);
            replaced += CrossEntropy(model.Run(batch, new RunOptions { Splices = [.. splices] })!, batch, out _);
            zeroed += CrossEntropy(model.RunWithHooks(batch, zeroHooks), batch, out _);
            positions += p;
            tokens += batch.Sum(b => b.Length);
            tokensDone?.Report(tokens);
        }
        if (positions == 0) throw new ArgumentException("the corpus gave no predicted positions to evaluate on");
        var r = new ReplacementEvalResult
        {
            Hooks = outputs, Positions = positions,
            CeClean = clean / positions, CeReplaced = replaced / positions, CeZeroAblated = zeroed / positions,
        };
        r.LossRecovered = (r.CeZeroAblated - r.CeReplaced) / (r.CeZeroAblated - r.CeClean);
        return r;
    }

    /// <summary>Summed next-token cross-entropy over the real positions of a padded batch of logits (B, T, V).</summary>
    public static double CrossEntropy(Tensor logits, int[][] batch, out long positions)
    {
        int T = logits.Shape[1], V = logits.Shape[2];
        double total = 0; positions = 0;
        for (int b = 0; b < batch.Length; b++)
            for (int t = 0; t + 1 < batch[b].Length; t++)
            {
                var row = new ReadOnlySpan<float>(logits.Data, ((b * T) + t) * V, V);
                float max = System.Numerics.Tensors.TensorPrimitives.Max(row);
                double sum = 0;
                foreach (float v in row) sum += Math.Exp(v - max);
                total += Math.Log(sum) + max - row[batch[b][t + 1]];
                positions++;
            }
        return total;
    }

    sealed class Accumulator(int dSae, int dOut)
    {
        readonly long[] _fires = new long[dSae];
        readonly double[] _sum = new double[dOut];
        double _sumSq, _sse, _l0;
        long _n;

        public void Add(Tensor target, Tensor output, Tensor acts, int[][] batch, int bos, bool excludeBos)
        {
            int T = target.Shape[1];
            for (int b = 0; b < batch.Length; b++)
                for (int t = 0; t < batch[b].Length; t++)
                {
                    if (excludeBos && batch[b][t] == bos) continue;
                    long row = (long)b * T + t;
                    var x = new ReadOnlySpan<float>(target.Data, (int)(row * dOut), dOut);
                    var y = new ReadOnlySpan<float>(output.Data, (int)(row * dOut), dOut);
                    for (int d = 0; d < dOut; d++)
                    {
                        double xv = x[d], e = xv - y[d];
                        _sum[d] += xv; _sumSq += xv * xv; _sse += e * e;
                    }
                    var a = new ReadOnlySpan<float>(acts.Data, (int)(row * dSae), dSae);
                    for (int j = 0; j < dSae; j++) if (a[j] > 0) { _fires[j]++; _l0++; }
                    _n++;
                }
        }

        public void Finish(SaeEvalResult r, double denseThreshold)
        {
            r.Tokens = _n;
            if (_n == 0) return;
            double meanSq = 0;
            foreach (double s in _sum) meanSq += s * s;
            double sst = _sumSq - meanSq / _n;
            r.Mse = _sse / ((double)_n * dOut);
            r.ExplainedVariance = 1 - _sse / sst;
            r.L0 = _l0 / _n;
            r.FeatureFrequency = _fires.Select(f => (double)f / _n).ToArray();
            r.DeadLatents = _fires.Count(f => f == 0);
            r.DenseLatents = r.FeatureFrequency.Count(f => f > denseThreshold);
            const double lo = -7, step = 0.5;
            var bins = new int[(int)(-lo / step)];
            foreach (double f in r.FeatureFrequency)
            {
                if (f <= 0) continue;
                int bin = (int)Math.Floor((Math.Log10(f) - lo) / step);
                bins[Math.Clamp(bin, 0, bins.Length - 1)]++;
            }
            r.Histogram = bins.Select((c, i) => new FrequencyBin(lo + i * step, lo + (i + 1) * step, c)).ToList();
        }
    }
}
