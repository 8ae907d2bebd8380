using System.Text.Json.Serialization;
using FeatureLens.Connections;
using FeatureLens.Runtime.Models;
using FeatureLens.Saes;
using Tensor = FeatureLens.Runtime.Tensors.Tensor;

namespace FeatureLens.Steering;

/// <summary>A latent whose decoder row or encoder column points along a steering vector.</summary>
public sealed record DirectionMatch(
    [property: JsonPropertyName("latent")] int Latent,
    [property: JsonPropertyName("cosine")] double Cosine,
    [property: JsonPropertyName("label")] string? Label);

/// <summary>A latent of a sparse decomposition and its coefficient.</summary>
public sealed record SparseTerm(
    [property: JsonPropertyName("latent")] int Latent,
    [property: JsonPropertyName("coefficient")] double Coefficient,
    [property: JsonPropertyName("label")] string? Label);

/// <summary>
/// A decomposition v ≈ Σ c_i W_dec[i] over decoder rows (as stored, without b_dec): its terms and the explained fraction
/// 1 − ‖v − Σ c_i W_dec[i]‖² / ‖v‖².
/// </summary>
public sealed record SparseFit(
    [property: JsonPropertyName("atoms")] int Atoms,
    [property: JsonPropertyName("explained")] double Explained,
    [property: JsonPropertyName("terms")] SparseTerm[] Terms);

/// <summary>
/// Steering with the vector vs with its k-atom reconstruction at the same strength, at a prompt's last position: KL between the
/// two steered next-token distributions, each one's KL from the unsteered model, and how the logit changes agree.
/// </summary>
public sealed record BehaviourRow(
    [property: JsonPropertyName("atoms")] int Atoms,
    [property: JsonPropertyName("explained")] double Explained,
    [property: JsonPropertyName("kl_vector_vs_reconstruction")] double Kl,
    [property: JsonPropertyName("kl_vector_vs_baseline")] double KlVector,
    [property: JsonPropertyName("kl_reconstruction_vs_baseline")] double KlReconstruction,
    [property: JsonPropertyName("logit_change_correlation")] double LogitCorrelation,
    [property: JsonPropertyName("logit_change_rms_difference")] double LogitRmsDifference);

/// <summary>A steering vector as an attribution node: its effect on a metric by the gradient and exactly.</summary>
/// <param name="Metric">The metric, in the CONNECTIONS.md grammar.</param>
/// <param name="Clean">m(clean), summed over the prompts.</param>
/// <param name="Gradient">strength × Σ_b Σ_t v·∂m/∂x[b, t] at the hook's steered positions.</param>
/// <param name="Exact">m(with strength × v added at those positions) − m(clean), summed over the prompts.</param>
public sealed record VectorNodeEffect(
    [property: JsonPropertyName("metric")] string Metric,
    [property: JsonPropertyName("clean")] double Clean,
    [property: JsonPropertyName("gradient")] double Gradient,
    [property: JsonPropertyName("exact")] double Exact);

/// <summary>What <c>featurelens compare-vector --json</c> writes.</summary>
public sealed record CompareVectorResult(
    [property: JsonPropertyName("vector")] string Vector,
    [property: JsonPropertyName("hook")] string Hook,
    [property: JsonPropertyName("norm")] double Norm,
    [property: JsonPropertyName("strength")] float Strength,
    [property: JsonPropertyName("prompts")] int Prompts,
    [property: JsonPropertyName("saes")] VectorComparison.SaeComparison[] Saes,
    [property: JsonPropertyName("node_effect")] VectorNodeEffect? NodeEffect);

/// <summary>
/// Steering vectors compared with SAE features (issue 11 §2): cosines with every decoder row and encoder column, sparse
/// decompositions over the decoder (the SAE's own encoding and a non-negative least-squares fit with k atoms), steering with
/// the vector vs its reconstruction, and the vector's effect on a metric as an attribution node. Steering goes through
/// <see cref="Steerer"/>; gradients through <see cref="HookedTransformer.RunWithGradients"/>.
/// </summary>
public static class VectorComparison
{
    /// <summary>The k of the behavioural comparison.</summary>
    public static readonly int[] Atoms = [1, 2, 4, 8, 16];

    /// <summary>The hook an SAE's decoder writes (a transcoder's output hook).</summary>
    public static string OutputHook(Sae sae) => sae.Config.IsTranscoder ? sae.Config.Metadata.HookNameOut ?? "" : sae.Config.HookName;

    /// <summary>Throws unless <paramref name="v"/> is finite and has <paramref name="width"/> entries.</summary>
    public static void CheckVector(float[] v, int width, string what)
    {
        if (v.Length != width) throw new ArgumentException($"{what}: the vector has {v.Length} entries but {width} are expected");
        for (int i = 0; i < v.Length; i++)
            if (!float.IsFinite(v[i])) throw new ArgumentException($"{what}: entry {i} of the vector is {v[i]} (not finite)");
        if (v.All(x => x == 0)) throw new ArgumentException($"{what}: the vector is zero; it has no direction");
    }

    /// <summary>cos(v, W_dec[i]) for every latent i (d_sae); W_dec is (d_sae, d_out), v (d_out). A zero row has cosine 0.</summary>
    public static double[] DecoderCosines(Sae sae, float[] v)
    {
        CheckVector(v, sae.DOut, $"the SAE at {sae.Config.HookName} (decoder width d_out)");
        int d = sae.DOut;
        double vn = Norm(v);
        var cos = new double[sae.DSae];
        for (int i = 0; i < sae.DSae; i++)
        {
            var row = sae.WDec.AsSpan(i * d, d);
            double dot = 0, nn = 0;
            for (int j = 0; j < d; j++) { dot += (double)row[j] * v[j]; nn += (double)row[j] * row[j]; }
            cos[i] = nn > 0 ? dot / (Math.Sqrt(nn) * vn) : 0;
        }
        return cos;
    }

    /// <summary>cos(v, W_enc[:, i]) for every latent i (d_sae); W_enc is (d_in, d_sae), v (d_in). A zero column has cosine 0.</summary>
    public static double[] EncoderCosines(Sae sae, float[] v)
    {
        CheckVector(v, sae.DIn, $"the SAE at {sae.Config.HookName} (encoder width d_in)");
        int n = sae.DSae;
        var dot = new double[n];
        var nn = new double[n];
        for (int j = 0; j < sae.DIn; j++)
        {
            var col = sae.WEnc.AsSpan(j * n, n);
            double vj = v[j];
            for (int i = 0; i < n; i++) { dot[i] += col[i] * vj; nn[i] += (double)col[i] * col[i]; }
        }
        double vn = Norm(v);
        for (int i = 0; i < n; i++) dot[i] = nn[i] > 0 ? dot[i] / (Math.Sqrt(nn[i]) * vn) : 0;
        return dot;
    }

    /// <summary>The <paramref name="top"/> largest cosines (ties: lower latent first).</summary>
    public static DirectionMatch[] Top(double[] cosines, int top, Func<int, string?>? label = null) =>
        [.. Enumerable.Range(0, cosines.Length).OrderByDescending(i => cosines[i]).ThenBy(i => i).Take(top).Select(i => new DirectionMatch(i, cosines[i], label?.Invoke(i)))];

    /// <summary>
    /// The SAE's own encoding of <paramref name="v"/> read as an activation (Sae.Encode of one row), its active latents by
    /// coefficient, and the explained fraction of Σ acts_i W_dec[i] (decoder rows only: a direction has no b_dec).
    /// </summary>
    public static SparseFit Encoding(Sae sae, float[] v, Func<int, string?>? label = null)
    {
        CheckVector(v, sae.DIn, $"the SAE at {sae.Config.HookName} (encoder width d_in)");
        var acts = sae.Encode(new Tensor([1, sae.DIn], (float[])v.Clone())).Data;
        var terms = Enumerable.Range(0, sae.DSae).Where(i => acts[i] != 0).OrderByDescending(i => Math.Abs(acts[i])).ThenBy(i => i)
            .Select(i => new SparseTerm(i, acts[i], label?.Invoke(i))).ToArray();
        return new SparseFit(terms.Length, sae.DIn == sae.DOut ? Explained(sae, v, terms) : double.NaN, terms);
    }

    /// <summary>1 − ‖v − Σ c_i W_dec[i]‖² / ‖v‖², in double precision.</summary>
    public static double Explained(Sae sae, float[] v, IReadOnlyList<SparseTerm> terms)
    {
        var r = Residual(sae, v, terms);
        double rr = 0, vv = 0;
        for (int j = 0; j < v.Length; j++) { rr += r[j] * r[j]; vv += (double)v[j] * v[j]; }
        return 1 - rr / vv;
    }

    /// <summary>v − Σ c_i W_dec[i] (d_out), in double precision.</summary>
    public static double[] Residual(Sae sae, float[] v, IReadOnlyList<SparseTerm> terms)
    {
        int d = sae.DOut;
        var r = v.Select(x => (double)x).ToArray();
        foreach (var t in terms)
            for (int j = 0; j < d; j++) r[j] -= t.Coefficient * sae.WDec[t.Latent * d + j];
        return r;
    }

    /// <summary>
    /// Greedy non-negative sparse least squares over the decoder rows: at each step the row most aligned with the residual
    /// (largest positive d_i·r / ‖d_i‖) joins the support, then the coefficients on the support are the exact NNLS solution
    /// (Lawson–Hanson active set on the support's Gram matrix, in double precision), so c ≥ 0 and the KKT conditions hold on
    /// the support. Returns the fits after 1 … <paramref name="maxAtoms"/> steps (fewer when no row has a positive
    /// correlation with the residual); a fit after k steps uses at most k rows.
    /// </summary>
    public static List<SparseFit> Nnls(Sae sae, float[] v, int maxAtoms, Func<int, string?>? label = null)
    {
        CheckVector(v, sae.DOut, $"the SAE at {sae.Config.HookName} (decoder width d_out)");
        if (maxAtoms < 1) throw new ArgumentException($"the number of atoms must be at least 1 (got {maxAtoms})");
        int d = sae.DOut, n = sae.DSae;
        var norms = new double[n];
        for (int i = 0; i < n; i++)
        {
            double s = 0;
            for (int j = 0; j < d; j++) s += (double)sae.WDec[i * d + j] * sae.WDec[i * d + j];
            norms[i] = Math.Sqrt(s);
        }
        var support = new List<int>();
        var fits = new List<SparseFit>();
        var terms = Array.Empty<SparseTerm>();
        var r = v.Select(x => (double)x).ToArray();
        for (int step = 0; step < Math.Min(maxAtoms, n); step++)
        {
            int best = -1;
            double bestScore = 0;
            for (int i = 0; i < n; i++)
            {
                if (norms[i] == 0 || support.Contains(i)) continue;
                double dot = 0;
                for (int j = 0; j < d; j++) dot += sae.WDec[i * d + j] * r[j];
                double score = dot / norms[i];
                if (score > bestScore * (1 + 1e-12) + 1e-300) { best = i; bestScore = score; }
            }
            if (best < 0) break;
            support.Add(best);
            var c = ActiveSetNnls(sae, v, support);
            terms = [.. support.Select((i, k) => (i, c: c[k])).Where(x => x.c > 0).OrderByDescending(x => x.c).ThenBy(x => x.i).Select(x => new SparseTerm(x.i, x.c, label?.Invoke(x.i)))];
            r = Residual(sae, v, terms);
            fits.Add(new SparseFit(step + 1, Explained(sae, v, terms), terms));
        }
        return fits;
    }

    /// <summary>
    /// Lawson–Hanson: argmin_{c ≥ 0} ‖v − Σ_k c_k W_dec[S_k]‖² over the rows S (s ≤ a few dozen), via the Gram matrix G = D_S D_Sᵀ
    /// and b = D_S v in double precision.
    /// </summary>
    static double[] ActiveSetNnls(Sae sae, float[] v, List<int> rows)
    {
        int s = rows.Count, d = sae.DOut;
        var G = new double[s, s];
        var b = new double[s];
        for (int p = 0; p < s; p++)
        {
            for (int j = 0; j < d; j++) b[p] += (double)sae.WDec[rows[p] * d + j] * v[j];
            for (int q = 0; q <= p; q++)
            {
                double g = 0;
                for (int j = 0; j < d; j++) g += (double)sae.WDec[rows[p] * d + j] * sae.WDec[rows[q] * d + j];
                G[p, q] = G[q, p] = g;
            }
        }
        double scale = Enumerable.Range(0, s).Max(p => G[p, p]);
        double tol = 1e-12 * Math.Max(scale, 1e-300) * Math.Max(1, Math.Sqrt(b.Sum(x => x * x) / Math.Max(scale, 1e-300)));
        var c = new double[s];
        var passive = new bool[s];
        for (int outer = 0; outer < 10 * s + 10; outer++)
        {
            // w = b − G c: minus the gradient of ½cᵀGc − bᵀc
            var w = Gradient(G, b, c);
            int j = -1;
            for (int p = 0; p < s; p++)
                if (!passive[p] && w[p] > tol && (j < 0 || w[p] > w[j])) j = p;
            if (j < 0) break;
            passive[j] = true;
            for (int inner = 0; inner < 10 * s + 10; inner++)
            {
                var z = SolvePassive(G, b, passive);
                bool feasible = true;
                for (int p = 0; p < s; p++) if (passive[p] && z[p] <= 0) feasible = false;
                if (feasible) { c = z; break; }
                double alpha = double.PositiveInfinity;
                for (int p = 0; p < s; p++)
                    if (passive[p] && z[p] <= 0) alpha = Math.Min(alpha, c[p] / (c[p] - z[p]));
                for (int p = 0; p < s; p++)
                {
                    c[p] += alpha * (z[p] - c[p]);
                    if (passive[p] && c[p] <= 1e-15 * Math.Max(1, Math.Abs(z[p]))) { passive[p] = false; c[p] = 0; }
                }
            }
        }
        return c;
    }

    static double[] Gradient(double[,] G, double[] b, double[] c)
    {
        int s = b.Length;
        var w = new double[s];
        for (int p = 0; p < s; p++)
        {
            double g = b[p];
            for (int q = 0; q < s; q++) g -= G[p, q] * c[q];
            w[p] = g;
        }
        return w;
    }

    /// <summary>Solves G_PP z_P = b_P (Gaussian elimination with partial pivoting), z = 0 outside P.</summary>
    static double[] SolvePassive(double[,] G, double[] b, bool[] passive)
    {
        var idx = Enumerable.Range(0, b.Length).Where(p => passive[p]).ToArray();
        int m = idx.Length;
        var a = new double[m, m + 1];
        for (int i = 0; i < m; i++)
        {
            for (int k = 0; k < m; k++) a[i, k] = G[idx[i], idx[k]];
            a[i, m] = b[idx[i]];
        }
        for (int col = 0; col < m; col++)
        {
            int piv = col;
            for (int i = col + 1; i < m; i++) if (Math.Abs(a[i, col]) > Math.Abs(a[piv, col])) piv = i;
            if (a[piv, col] == 0) throw new InvalidOperationException("NNLS: the selected decoder rows are linearly dependent");
            if (piv != col) for (int k = 0; k <= m; k++) (a[col, k], a[piv, k]) = (a[piv, k], a[col, k]);
            for (int i = col + 1; i < m; i++)
            {
                double f = a[i, col] / a[col, col];
                for (int k = col; k <= m; k++) a[i, k] -= f * a[col, k];
            }
        }
        var zP = new double[m];
        for (int i = m - 1; i >= 0; i--)
        {
            double t = a[i, m];
            for (int k = i + 1; k < m; k++) t -= a[i, k] * zP[k];
            zP[i] = t / a[i, i];
        }
        var z = new double[b.Length];
        for (int i = 0; i < m; i++) z[idx[i]] = zP[i];
        return z;
    }

    /// <summary>One SAE's side of <c>featurelens compare-vector</c>.</summary>
    public sealed record SaeComparison(
        [property: JsonPropertyName("hook")] string Hook,
        [property: JsonPropertyName("d_sae")] int DSae,
        [property: JsonPropertyName("decoder_matches")] DirectionMatch[] Decoder,
        [property: JsonPropertyName("encoder_matches")] DirectionMatch[] Encoder,
        [property: JsonPropertyName("encoding")] SparseFit Encoding,
        [property: JsonPropertyName("nnls")] SparseFit[] Nnls,
        [property: JsonPropertyName("behaviour")] BehaviourRow[] Behaviour);

    /// <summary>Σ c_i W_dec[i] (d_out) in float32, the direction a reconstruction steers along.</summary>
    public static float[] Reconstruction(Sae sae, IReadOnlyList<SparseTerm> terms)
    {
        int d = sae.DOut;
        var r = new double[d];
        foreach (var t in terms)
            for (int j = 0; j < d; j++) r[j] += t.Coefficient * sae.WDec[t.Latent * d + j];
        return [.. r.Select(x => (float)x)];
    }

    /// <summary>
    /// For each fit: steer with <paramref name="v"/> × <paramref name="strength"/> and with the fit's reconstruction × the same
    /// strength at <paramref name="hook"/> (through <see cref="Steerer"/>, at <paramref name="positions"/>), and compare the
    /// next-token distributions at each prompt's last position. Values are means over the prompts.
    /// </summary>
    public static List<BehaviourRow> Behaviour(HookedTransformer model, string hook, float[] v, float strength, Sae sae, IReadOnlyList<SparseFit> fits,
        IReadOnlyList<int[]> prompts, SteeringPositions positions = SteeringPositions.All)
    {
        if (prompts.Count == 0) throw new ArgumentException("the behavioural comparison needs at least one prompt");
        if (!float.IsFinite(strength)) throw new ArgumentException($"--strength {strength} is not finite");
        var plain = new Steerer(model, [], [], positions);
        var vector = new Steerer(model, [new SteeringAddition(hook, v, 1f, "vector")], [], positions);
        var baseLogits = prompts.Select(p => plain.NextTokenLogits(p, null)).ToList();
        var vecLogits = prompts.Select(p => vector.NextTokenLogits(p, strength)).ToList();
        var rows = new List<BehaviourRow>();
        foreach (var fit in fits)
        {
            var rec = new Steerer(model, [new SteeringAddition(hook, Reconstruction(sae, fit.Terms), 1f, $"{fit.Atoms}-atom reconstruction")], [], positions);
            double kl = 0, klV = 0, klR = 0, corr = 0, rms = 0;
            for (int p = 0; p < prompts.Count; p++)
            {
                var lr = rec.NextTokenLogits(prompts[p], strength);
                kl += SteeringSweep.Kl(vecLogits[p], lr);
                klV += SteeringSweep.Kl(vecLogits[p], baseLogits[p]);
                klR += SteeringSweep.Kl(lr, baseLogits[p]);
                var dv = vecLogits[p].Select((x, i) => (double)x - baseLogits[p][i]).ToArray();
                var dr = lr.Select((x, i) => (double)x - baseLogits[p][i]).ToArray();
                corr += Correlation(dv, dr);
                rms += Math.Sqrt(dv.Zip(dr, (a, b) => (a - b) * (a - b)).Average());
            }
            int n = prompts.Count;
            rows.Add(new BehaviourRow(fit.Atoms, fit.Explained, kl / n, klV / n, klR / n, corr / n, rms / n));
        }
        return rows;
    }

    /// <summary>Pearson correlation; 0 when either side is constant.</summary>
    public static double Correlation(double[] x, double[] y)
    {
        double mx = x.Average(), my = y.Average(), sxy = 0, sxx = 0, syy = 0;
        for (int i = 0; i < x.Length; i++) { sxy += (x[i] - mx) * (y[i] - my); sxx += (x[i] - mx) * (x[i] - mx); syy += (y[i] - my) * (y[i] - my); }
        return sxx > 0 && syy > 0 ? sxy / Math.Sqrt(sxx * syy) : 0;
    }

    /// <summary>
    /// The vector as an attribution node for <paramref name="metric"/> over <paramref name="prompts"/> (summed, as attribution
    /// does): by gradient, strength × Σ v·∂m/∂x over the steered positions of each prompt (one
    /// <see cref="HookedTransformer.RunWithGradients"/> pass), and exactly, m(steered) − m(clean) through <see cref="Steerer"/>.
    /// </summary>
    public static VectorNodeEffect NodeEffect(HookedTransformer model, string hook, float[] v, float strength, Metric metric, int[][] prompts,
        SteeringPositions positions = SteeringPositions.All)
    {
        if (prompts.Length == 0) throw new ArgumentException("the vector's effect needs at least one prompt");
        if (!float.IsFinite(strength)) throw new ArgumentException($"--strength {strength} is not finite");
        if (metric.Kind == MetricKind.Feature) throw new ArgumentException($"metric '{metric}': feature metrics need a spliced SAE; use a logit, logprob, prob or loss metric here");
        var steerer = new Steerer(model, [new SteeringAddition(hook, v, 1f, "--vector")], [], positions);
        var objective = Metric.PerSequence(Enumerable.Repeat(metric, prompts.Length).ToList());
        double clean, grad = 0;
        using (var r = model.RunWithGradients(prompts, objective, new GradientOptions { CacheFilter = n => n == hook }))
        {
            clean = r.Values.Sum(x => (double)x);
            var g = r.Gradients[hook];   // (B, T, width)
            int T = g.Shape[1], width = v.Length;
            for (int b = 0; b < prompts.Length; b++)
                for (int t = 0; t < prompts[b].Length; t++)
                {
                    if (!SteeringSpec.Covers(positions, t, prompts[b].Length)) continue;
                    for (int j = 0; j < width; j++) grad += (double)v[j] * g.Data[((long)b * T + t) * width + j];
                }
        }
        double steered = 0;
        foreach (var p in prompts)
        {
            var logits = model.Run([p], steerer.PassOptions(strength, 0, p.Length))!;
            using var none = new ActivationCache { Lengths = [p.Length] };
            steered += metric.Evaluate(logits, none, [p]).Values[0];
        }
        return new VectorNodeEffect(metric.ToString(), clean, strength * grad, steered - clean);
    }

    static readonly System.Text.Json.JsonSerializerOptions JsonOptions = new()
    {
        WriteIndented = true, NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
    };

    /// <summary>Writes <paramref name="result"/> to a temporary file beside <paramref name="path"/>, then moves it into place.</summary>
    public static void WriteJson(string path, CompareVectorResult result) =>
        EffectsJson.WriteAtomic(path, System.Text.Json.JsonSerializer.SerializeToUtf8Bytes(result, JsonOptions));

    static double Norm(float[] v) => Math.Sqrt(v.Sum(x => (double)x * x));
}
