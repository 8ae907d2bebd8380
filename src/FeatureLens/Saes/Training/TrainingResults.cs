namespace FeatureLens.Saes.Training;

/// <summary>What one optimiser step did. Losses are those of the batch before the update.</summary>
public sealed record TrainStepStats
{
    /// <summary>Steps completed, this one included.</summary>
    public long Step { get; init; }
    /// <summary>Tokens trained on so far, this batch included.</summary>
    public long Tokens { get; init; }
    /// <summary>Total loss = Mse + SparsityLoss + AuxLoss.</summary>
    public double Loss { get; init; }
    /// <summary>(1/n)·Σ‖x̂ − x‖² on the (rescaled) training inputs.</summary>
    public double Mse { get; init; }
    /// <summary>Standard: the decoder-norm-weighted L1 term; JumpReLU: the L0 term; TopK: 0.</summary>
    public double SparsityLoss { get; init; }
    /// <summary>TopK: the AuxK loss on dead latents (0 when none are dead).</summary>
    public double AuxLoss { get; init; }
    /// <summary>Mean number of active latents per token.</summary>
    public double L0 { get; init; }
    /// <summary>1 − Σ‖x̂ − x‖² / Σ‖x − mean(x)‖² over the batch (SAELens's explained_variance).</summary>
    public double ExplainedVariance { get; init; }
    /// <summary>Latents that have not fired for <see cref="SaeTrainingOptions.DeadAfterTokens"/> tokens, after this step.</summary>
    public int DeadLatents { get; init; }
    /// <summary>Learning rate used by this step.</summary>
    public double LearningRate { get; init; }
    /// <summary>Sparsity coefficient (λ or λ0, after warm-up) used by this step.</summary>
    public double SparsityCoefficient { get; init; }
    /// <summary>Latents re-initialised by resampling at this step.</summary>
    public int Resampled { get; init; }
}

/// <summary>A progress report from <see cref="SaeTrainer.Train"/>: after every step, and after each checkpoint.</summary>
public sealed record TrainProgress
{
    public required TrainStepStats Stats { get; init; }
    public long TotalSteps { get; init; }
    public long TotalTokens { get; init; }
    /// <summary>The checkpoint folder written just now, or null.</summary>
    public string? CheckpointPath { get; init; }
}

/// <summary>The outcome of <see cref="SaeTrainer.Train"/>.</summary>
public sealed record TrainResult
{
    /// <summary>The trained SAE with any normalisation scale folded in (what was saved).</summary>
    public required Sae Sae { get; init; }
    /// <summary>Folder holding cfg.json, sae_weights.safetensors, sparsity.safetensors.</summary>
    public required string OutputDir { get; init; }
    public long Steps { get; init; }
    public long Tokens { get; init; }
    /// <summary>The step the run resumed from (0 for a fresh run).</summary>
    public long ResumedFromStep { get; init; }
    /// <summary>Statistics of the last step (null when no step ran in this call).</summary>
    public TrainStepStats? LastStep { get; init; }
    /// <summary>Fraction of trained tokens on which each latent fired.</summary>
    public required float[] FeatureFrequency { get; init; }
}

/// <summary>Training stopped because a NaN or infinity appeared; no update was applied and the last checkpoint is untouched.</summary>
public sealed class NonFiniteTrainingException(long step, string quantity, string message) : Exception(message)
{
    /// <summary>The 1-based step that failed.</summary>
    public long Step { get; } = step;
    /// <summary>What was not finite: "activations", "loss", "weights", ...</summary>
    public string Quantity { get; } = quantity;
}

/// <summary>Gradients of the loss for one batch, in the parameters' own layouts (for tests and diagnostics).</summary>
internal sealed class SaeGradients
{
    /// <summary>(d_in, d_sae).</summary>
    public required float[] WEnc { get; init; }
    /// <summary>(d_sae).</summary>
    public required float[] BEnc { get; init; }
    /// <summary>(d_sae, d_out).</summary>
    public required float[] WDec { get; init; }
    /// <summary>(d_out).</summary>
    public required float[] BDec { get; init; }
    /// <summary>JumpReLU: d loss / d log θ (d_sae); null otherwise.</summary>
    public float[]? LogThreshold { get; init; }
    /// <summary>Skip transcoders: (d_out, d_in); null otherwise.</summary>
    public float[]? WSkip { get; init; }
    public double Loss { get; init; }
    public double Mse { get; init; }
    public double SparsityLoss { get; init; }
    public double AuxLoss { get; init; }
}
