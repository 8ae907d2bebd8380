using System.Text.Json.Nodes;

namespace FeatureLens.Saes.Training;

/// <summary>
/// Everything that decides how an SAE is trained. Field names follow SAELens where it has one.
/// <para>Losses (n rows per batch, x the possibly rescaled input, x̂ the reconstruction, f the latents):</para>
/// <list type="bullet">
/// <item>all: mse = (1/n)·Σ_r ‖x̂_r − x_r‖² (summed over d_in, averaged over rows, as SAELens).</item>
/// <item>Standard: + λ·(1/n)·Σ_r Σ_j f_rj·‖W_dec_j‖ — the L1 penalty weighted by each latent's decoder norm
/// (SAELens <c>scale_sparsity_penalty_by_decoder_norm</c>), so the decoder is left free and never renormalised.</item>
/// <item>JumpReLU: + λ0·(1/n)·Σ_r #{j : pre_rj &gt; θ_j}, with θ = exp(log θ) trained through the rectangle-kernel
/// straight-through estimator of Rajamanoharan et al. (as SAELens).</item>
/// <item>TopK: + α·min(1, dead/k_aux)·(1/n)·Σ_r ‖ê_r − (x_r − x̂_r)‖², where ê_r decodes (without b_dec) the
/// ReLU'd top k_aux = d_in/2 pre-activations among dead latents and the residual is held constant (AuxK of
/// Gao et al. / EleutherAI). W_dec rows stay unit-norm: the gradient component parallel to each row is removed
/// before the Adam step and the rows are renormalised after it.</item>
/// </list>
/// </summary>
public sealed class SaeTrainingOptions
{
    /// <summary>Standard (ReLU + decoder-norm-weighted L1), TopK or JumpRelu.</summary>
    public SaeArchitecture Architecture { get; set; } = SaeArchitecture.Standard;
    public int DIn { get; set; }
    public int DSae { get; set; }
    /// <summary>Latents kept per token (TopK).</summary>
    public int K { get; set; }
    /// <summary>Train a transcoder: rows hold the input (d_in) followed by the target (d_out) of another hook, and
    /// x̂ = decode(encode(input)) is fitted to the target. <see cref="Architecture"/> names the latents (standard = ReLU + L1,
    /// topk, jumprelu). No input normalisation, b_dec is not subtracted from the input, no resampling.</summary>
    public bool Transcoder { get; set; }
    /// <summary>Transcoders: output width (0 = d_in).</summary>
    public int DOut { get; set; }
    /// <summary>Transcoders: a trained linear skip path x̂ += input·W_skipᵀ (W_skip (d_out, d_in), zero-initialised).</summary>
    public bool SkipConnection { get; set; }

    /// <summary>Standard: weight λ of the decoder-norm-weighted L1 penalty.</summary>
    public double L1Coefficient { get; set; } = 5.0;
    /// <summary>Steps over which the sparsity coefficient (λ for Standard, λ0 for JumpReLU) ramps linearly up to its value: step t uses min(1, (t+1)/N). 0 = none.</summary>
    public int L1WarmupSteps { get; set; }

    public double LearningRate { get; set; } = 4e-4;
    public double Beta1 { get; set; } = 0.9;
    public double Beta2 { get; set; } = 0.999;
    public double AdamEpsilon { get; set; } = 1e-8;
    /// <summary>Linear learning-rate warm-up: step t (from 0) uses lr·(t+1)/N while t &lt; N.</summary>
    public int LrWarmupSteps { get; set; }
    /// <summary>Linear decay to 0 over the last N steps: step t ≥ T−N uses lr·(T−t)/N.</summary>
    public int LrDecaySteps { get; set; }

    /// <summary>Rows (tokens) per optimiser step.</summary>
    public int BatchTokens { get; set; } = 4096;
    /// <summary>Tokens to train on; rounded down to whole batches (steps = TotalTokens / BatchTokens).</summary>
    public long TotalTokens { get; set; }
    /// <summary>Seeds initialisation and resampling; the same seed and data give bit-identical weights.</summary>
    public ulong Seed { get; set; } = 42;

    /// <summary>Subtract b_dec from the input before encoding (SAELens <c>apply_b_dec_to_input</c>).</summary>
    public bool ApplyBDecToInput { get; set; }
    /// <summary>
    /// None, or ExpectedAverageOnlyIn: inputs are multiplied by s = √d_in / mean‖x‖ (estimated from the first
    /// <see cref="NormEstimationBatches"/> batches) during training, and s is folded into the saved weights
    /// (W_enc·s, W_dec/s, b_dec/s) so the saved SAE takes raw activations, as SAELens does.
    /// </summary>
    public ActivationNormalization Normalization { get; set; } = ActivationNormalization.None;
    /// <summary>Batches read to estimate the normalisation scale (the source is rewound afterwards).</summary>
    public int NormEstimationBatches { get; set; } = 10;

    /// <summary>TopK: weight α of the AuxK loss on dead latents (0 = off). k_aux = d_in/2.</summary>
    public double AuxKCoefficient { get; set; } = 1.0 / 32;
    /// <summary>A latent is dead once it has not fired for this many tokens.</summary>
    public long DeadAfterTokens { get; set; } = 10_000_000;

    /// <summary>JumpReLU: half-width scale ε of the rectangle kernel in the threshold's pseudo-derivative.</summary>
    public double JumpReluBandwidth { get; set; } = 0.001;
    /// <summary>JumpReLU: initial threshold (every latent).</summary>
    public double JumpReluInitThreshold { get; set; } = 0.001;
    /// <summary>JumpReLU: weight λ0 of the L0 penalty.</summary>
    public double L0Coefficient { get; set; } = 1.0;

    /// <summary>Standard/JumpReLU: every N steps, re-initialise dead latents from high-loss inputs of the current
    /// batch (Anthropic-style) and reset their Adam moments. 0 = never.</summary>
    public int ResampleDeadEvery { get; set; }
    /// <summary>Initial norm of every W_dec row for Standard/JumpReLU (SAELens v6 uses 0.1); TopK always uses 1.</summary>
    public double DecoderInitNorm { get; set; } = 0.1;

    /// <summary>Write OUT/checkpoints/latest every this many tokens (0 = only at the end and on cancellation).</summary>
    public long CheckpointEveryTokens { get; set; }
    /// <summary>Where <see cref="SaeTrainer.Train"/> writes the final SAE (SAELens layout) and checkpoints/.</summary>
    public string? OutputDir { get; set; }
    /// <summary>Model, hook, dataset and context size recorded in the saved cfg.json.</summary>
    public SaeMetadata Metadata { get; set; } = new();

    /// <summary>Optimiser steps the run will make.</summary>
    public long TotalSteps => BatchTokens > 0 ? TotalTokens / BatchTokens : 0;

    /// <summary>Throws <see cref="ArgumentException"/> naming the first option that is out of range.</summary>
    public void Validate()
    {
        static void Need(bool ok, string message) { if (!ok) throw new ArgumentException("SAE training options: " + message); }
        Need(Architecture is SaeArchitecture.Standard or SaeArchitecture.TopK or SaeArchitecture.JumpRelu,
            $"architecture must be standard, topk or jumprelu; {SaeConfig.ArchitectureName(Architecture)} cannot be trained here");
        Need(DIn > 0, $"d_in must be positive, got {DIn}");
        Need(DSae > 0, $"d_sae must be positive, got {DSae}");
        Need((long)DIn * DSae <= Array.MaxLength, $"d_in·d_sae = {(long)DIn * DSae} is too large for one float32 array");
        Need(DOut >= 0, $"d_out must be >= 0 (0 = d_in), got {DOut}");
        Need(Transcoder || (DOut == 0 || DOut == DIn), $"d_out ({DOut}) differs from d_in ({DIn}); only a transcoder maps one width to another");
        Need(Transcoder || !SkipConnection, "a skip connection is for transcoders only");
        if (Transcoder)
        {
            Need(!ApplyBDecToInput, "a transcoder cannot subtract b_dec (its output bias) from its input; apply_b_dec_to_input must be false");
            Need(Normalization == ActivationNormalization.None, $"a transcoder is trained on raw activations; normalize_activations must be none, got {SaeConfig.NormalizationName(Normalization)}");
            Need(ResampleDeadEvery == 0, "resampling dead latents is not supported for transcoders");
            Need((long)DSae * (DOut > 0 ? DOut : DIn) <= Array.MaxLength, "d_sae·d_out is too large for one float32 array");
        }
        if (Architecture == SaeArchitecture.TopK) Need(K > 0 && K <= DSae, $"topk needs 0 < k <= d_sae ({DSae}), got k = {K}");
        Need(Finite(L1Coefficient) && L1Coefficient >= 0, $"l1_coefficient must be a finite number >= 0, got {L1Coefficient}");
        Need(Finite(L0Coefficient) && L0Coefficient >= 0, $"l0_coefficient must be a finite number >= 0, got {L0Coefficient}");
        Need(Finite(AuxKCoefficient) && AuxKCoefficient >= 0, $"aux_k_coefficient must be a finite number >= 0, got {AuxKCoefficient}");
        Need(L1WarmupSteps >= 0, $"l1_warmup_steps must be >= 0, got {L1WarmupSteps}");
        Need(Finite(LearningRate) && LearningRate > 0, $"learning rate must be positive, got {LearningRate}");
        Need(Beta1 >= 0 && Beta1 < 1, $"beta1 must be in [0, 1), got {Beta1}");
        Need(Beta2 >= 0 && Beta2 < 1, $"beta2 must be in [0, 1), got {Beta2}");
        Need(Finite(AdamEpsilon) && AdamEpsilon > 0, $"Adam epsilon must be positive, got {AdamEpsilon}");
        Need(LrWarmupSteps >= 0, $"lr_warmup_steps must be >= 0, got {LrWarmupSteps}");
        Need(LrDecaySteps >= 0, $"lr_decay_steps must be >= 0, got {LrDecaySteps}");
        Need(BatchTokens > 0, $"batch size in tokens must be positive, got {BatchTokens}");
        Need(TotalTokens >= BatchTokens, $"total tokens ({TotalTokens}) must be at least one batch ({BatchTokens})");
        Need(LrDecaySteps <= TotalSteps, $"lr_decay_steps ({LrDecaySteps}) exceeds the number of steps ({TotalSteps} = total tokens / batch tokens)");
        Need(Normalization is ActivationNormalization.None or ActivationNormalization.ExpectedAverageOnlyIn,
            $"normalize_activations must be none or expected_average_only_in for training, got {SaeConfig.NormalizationName(Normalization)}");
        Need(NormEstimationBatches > 0, $"norm estimation batches must be positive, got {NormEstimationBatches}");
        Need(DeadAfterTokens > 0, $"dead-after tokens must be positive, got {DeadAfterTokens}");
        if (Architecture == SaeArchitecture.JumpRelu)
        {
            Need(Finite(JumpReluBandwidth) && JumpReluBandwidth > 0, $"jumprelu bandwidth must be positive, got {JumpReluBandwidth}");
            Need(Finite(JumpReluInitThreshold) && JumpReluInitThreshold > 0, $"jumprelu initial threshold must be positive (it is trained as log θ), got {JumpReluInitThreshold}");
        }
        Need(ResampleDeadEvery >= 0, $"resample-dead interval must be >= 0, got {ResampleDeadEvery}");
        Need(ResampleDeadEvery == 0 || Architecture != SaeArchitecture.TopK, "resampling dead latents is for standard/jumprelu SAEs; topk uses the AuxK loss instead");
        Need(Finite(DecoderInitNorm) && DecoderInitNorm > 0, $"decoder init norm must be positive, got {DecoderInitNorm}");
        Need(CheckpointEveryTokens >= 0, $"checkpoint interval must be >= 0 tokens, got {CheckpointEveryTokens}");
    }

    static bool Finite(double v) => double.IsFinite(v);

    /// <summary>The options that shape the trajectory, as recorded in a checkpoint and compared on resume.</summary>
    internal JsonObject Fingerprint()
    {
        var o = FingerprintCore();
        if (Transcoder) { o["transcoder"] = true; o["d_out"] = DOut; o["skip_connection"] = SkipConnection; }
        return o;
    }

    JsonObject FingerprintCore() => new()
    {
        ["architecture"] = SaeConfig.ArchitectureName(Architecture),
        ["d_in"] = DIn, ["d_sae"] = DSae, ["k"] = K,
        ["l1_coefficient"] = L1Coefficient, ["l1_warmup_steps"] = L1WarmupSteps,
        ["lr"] = LearningRate, ["beta1"] = Beta1, ["beta2"] = Beta2, ["adam_epsilon"] = AdamEpsilon,
        ["lr_warmup_steps"] = LrWarmupSteps, ["lr_decay_steps"] = LrDecaySteps,
        ["batch_tokens"] = BatchTokens, ["total_tokens"] = TotalTokens, ["seed"] = Seed.ToString(CultureInfo.InvariantCulture),
        ["apply_b_dec_to_input"] = ApplyBDecToInput, ["normalize_activations"] = SaeConfig.NormalizationName(Normalization),
        ["norm_estimation_batches"] = NormEstimationBatches,
        ["aux_k_coefficient"] = AuxKCoefficient, ["dead_after_tokens"] = DeadAfterTokens,
        ["jumprelu_bandwidth"] = JumpReluBandwidth, ["jumprelu_init_threshold"] = JumpReluInitThreshold,
        ["l0_coefficient"] = L0Coefficient, ["resample_dead_every"] = ResampleDeadEvery, ["decoder_init_norm"] = DecoderInitNorm,
    };
}
