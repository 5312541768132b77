"""The embedded default: a small UNet on scikit-learn's handwritten digits at 16x16, with the context loss on.

    python -m conprediff_jax.main                      # same as --config=configs/default.py --workdir=workdirs/default

Trains 1,300 steps at batch 24 (cosine learning-rate decay; v-prediction with Min-SNR-5 loss weights) and writes
`samples.png` / `samples.npz` (64 samples from the EMA parameters: DPM-Solver++(2M), 15 steps on Karras sigmas
capped at 80), most of them legible digits. From a fresh clone: 154-185 s on a 2-core AMD EPYC (fp32 matmul 360-430
GFLOP/s, `python -m benchmarks.machine`; 2026-12-03; 167 s in an earlier run that day with the former DDIM-50
sampler), an estimated ~8 minutes on a 2-core Intel Xeon of ~95 GFLOP/s. `--mode=eval` then gave FD-digits 18.3
(seeds 1 and 2: 18.0, 18.3; 512 samples; 18.0 on 2026-12-07 with the head's current form): level with the former
long default (batch 64, 1,500 steps, constant rate,
eps: `--config.train.batch_size=64 --config.train.steps=1500 --config.train.lr_schedule=constant
--config.diffusion.prediction=eps --config.diffusion.min_snr_gamma=0 --config.sample.sampler=ddim
--config.sample.steps=50 --config.sample.spacing=uniform`), which scored 18.0 +- 0.4 over 3 seeds but took 499 s on
the EPYC and ~24 minutes on the Xeon. The same checkpoints sampled with DDIM-50 (`--config.sample.sampler=ddim
--config.sample.steps=50 --config.sample.spacing=uniform`) score 21.0, 20.9, 22.7. docs/benchmarks.md ("The README's
commands", figure 10) has the runs between them.

The context loss (λ = 0.1) is on: over seven paired seeds at 2,048 samples it raises precision by +0.023 [+0.015,
+0.031] and leaves FD-digits and recall unchanged within noise; no variant beat it (docs/ablation.md).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.family = "gaussian"         # what is trained: "gaussian" (this UNet) | "masked" | "autoencoder"
  config.seed = 0

  config.data = ml_collections.ConfigDict()
  config.data.name = "digits"        # "digits" | "tfds" | "folder"
  config.data.tfds_name = ""         # with name="tfds": the TFDS dataset name, read from data_dir
  config.data.data_dir = ""          # TFDS data_dir, or the image folder with name="folder"
  config.data.split = "train"
  config.data.image_size = 16        # 16x16 keeps a 2-core CPU run to minutes; digits are 8x8 to begin with
  config.data.channels = 1
  config.data.num_classes = 10
  config.data.strict = False         # folder: refuse unreadable/wrong-shaped images instead of skipping them
  # Text for text-conditional models (data/text.py): "digit_templates" (captions made from the digit labels) or a
  # .txt file, one caption per example in the source's order; and/or precomputed embeddings (.npz, same order).
  config.data.captions = ""
  config.data.text_embeddings_file = ""

  config.model = ml_collections.ConfigDict()
  # The denoiser: "unet", or "dit" (a diffusion transformer: configs/digits_dit.py).
  config.model.name = "unet"
  config.model.channels = 32
  config.model.channel_mults = (1, 2, 2)
  config.model.num_res_blocks = 1
  config.model.attention_resolutions = (4,)  # feature-map sizes that get self-attention
  config.model.num_heads = 4
  config.model.num_groups = 8
  config.model.dropout = 0.0
  config.model.class_conditional = False  # configs/digits_cond.py: class labels, classifier-free guidance
  config.model.mask_conditional = False   # configs/digits_inpaint.py: also reads known pixels + mask (inpainting)
  config.model.text_conditional = False   # configs/digits_text.py: prompts, read by cross-attention
  # model.name="dit" reads these (and num_heads, dropout) instead of the UNet's widths and levels: patch_size x
  # patch_size patches are its tokens; width, depth (blocks) and mlp_ratio as the DiT paper's sizes
  # (models/dit.py SIZES: S 384/12/6 heads, B 768/12/12, L 1024/24/16, XL 1152/28/16).
  config.model.patch_size = 2
  config.model.width = 384
  config.model.depth = 12
  config.model.mlp_ratio = 4
  config.model.dtype = "float32"     # compute dtype; parameters stay float32
  config.model.remat = False         # recompute each block's activations in the backward pass: less memory
  # A diffusers UNet2DModel folder (safetensors) whose weights a fresh run starts from, to fine-tune it (with the
  # context loss); `python -m conprediff_jax.convert import DIR` prints the model settings that match it.
  config.model.init_from = ""

  config.text = text_settings()

  # Latent diffusion (configs/digits_latent.py): the UNet diffuses the latents of a frozen KL autoencoder.
  config.first_stage = ml_collections.ConfigDict()
  config.first_stage.workdir = ""    # a trained KL autoencoder (configs/digits_kl.py); empty: pixel space
  config.first_stage.scaling_factor = 0.0  # latents are multiplied by this; 0: 1 / their std on the data
  # The config that trains that autoencoder (e.g. configs/digits_kl.py): its shapes when the workdir holds no
  # trained one yet, all --mode=compile needs.
  config.first_stage.config = ""

  config.diffusion = ml_collections.ConfigDict()
  config.diffusion.schedule = "cosine"  # "linear" | "cosine"
  config.diffusion.timesteps = 1000
  # v-prediction with Min-SNR-5 loss weights: FD-digits 21.5 +- 1.1 over 3 seeds at this length, against
  # eps with plain weights: 27.1 +- 4.5 (22.2, 31.2, 27.7; docs/benchmarks.md, "The README's commands").
  config.diffusion.prediction = "v"     # "eps" | "v"
  config.diffusion.min_snr_gamma = 5.0  # > 0: Min-SNR-gamma loss weights (Hang et al. 2023); 0: the plain loss
  # "flow": flow matching (rectified flow, the velocity eps - x0 predicted; schedule, prediction and min_snr_gamma
  # are then not read; configs/digits_flow.py) | "ddpm": the Gaussian diffusion above
  config.diffusion.process = "ddpm"
  config.diffusion.timestep_sampling = "uniform"  # "logit_normal": s = sigmoid(N(0, 1)), SD3's, for "flow"

  config.context = ml_collections.ConfigDict()
  config.context.weight = 0.1        # lambda; 0.0 turns the context loss and its head off
  config.context.solver = "sorted"   # "sorted" | "sinkhorn" | "exact"
  config.context.strides = (1, 2, 3)
  config.context.num_samples = 8     # Q
  config.context.epsilon = 0.05      # sinkhorn entropic regularisation
  # sinkhorn: 19 over-relaxed + 1 plain iteration; nearer the converged cost than the former 50 plain
  # ones, at 40% of the time (measurements in context/sinkhorn_solver.py).
  config.context.sinkhorn_iterations = 20
  config.context.num_projections = 0  # sorted: 0 = per coordinate, K > 0 = sliced over K random directions
  # 1/g: score one position of every set of g positions (H*W/g apart) of each example, drawn afresh each step: an
  # unbiased estimate of the same loss at 1/g of the decoder's cost. 1.0 scores every position.
  config.context.position_fraction = 0.125
  config.context.latent_dim = 16     # size of z (the decoder's Gaussian); 0: the feature width
  config.context.hidden_dim = 32     # width of each stride's MLP g_s
  # The factors of the context study (docs/ablation.md; context/objective.py):
  config.context.head_input = "features"  # "features" | "features+denoised" (also the model's own x0 estimate)
  config.context.targets = "clean"   # "clean": x0's neighbourhoods | "denoised": those of the model's x0 estimate
  # Each example's term weighted by the signal s its input kept (abar_t; tokens: the unmasked fraction): "none" |
  # "alpha_bar" (w = s) | "snr" (min(SNR, snr_gamma) / snr_gamma) | "cutoff" (w = [s >= min_signal]).
  config.context.timestep_weighting = "none"
  config.context.snr_gamma = 1.0
  config.context.min_signal = 0.5
  config.context.weight_warmup_steps = 0  # lambda ramps linearly from 0 over these steps; 0: constant

  config.train = ml_collections.ConfigDict()
  config.train.steps = 1300
  config.train.batch_size = 24       # global, across all devices and hosts
  # Gradient accumulation: each step's batch is run as this many equal parts, one after another, and their
  # gradients averaged: the same update with the activations of one part (docs/scaling.md).
  config.train.microbatches = 1
  config.train.learning_rate = 2e-3
  config.train.warmup_steps = 100
  config.train.lr_schedule = "cosine"  # "constant" | "cosine" (decays to 0 at train.steps)
  config.train.weight_decay = 0.0
  config.train.grad_clip = 1.0
  config.train.ema_decay = 0.995     # a ~200-step average suits a run of about a thousand steps
  config.train.log_every = 50
  # A conditional model sees the null condition in this fraction of examples: the unconditional model that
  # classifier-free guidance needs, in the same network (conditioning.drop).
  config.train.cond_dropout = 0.1
  # Non-finite loss or gradient: that update is always skipped (and counted in `skipped_steps`); after this many
  # in a row the run stops with a message, its last checkpoint holding the last good parameters. 0: never stop.
  config.train.max_nonfinite_steps = 10

  config.checkpoint = ml_collections.ConfigDict()
  config.checkpoint.every_steps = 500
  config.checkpoint.max_to_keep = 3

  config.sample = ml_collections.ConfigDict()
  config.sample.num_images = 64
  config.sample.batch_size = 64      # per sampler call; more images are streamed to samples/, a batch per file
  # DPM-Solver++(2M), 15 steps on Karras sigmas capped at 80: FD-digits 18.3, 18.0, 18.3 on seeds 0-2, against
  # DDIM-50's 21.0, 20.9, 22.7 on the same checkpoints (docs/benchmarks.md figure 10), at 15 model evaluations.
  config.sample.sampler = "dpm++2m"  # "ddim" | "ddpm" | "dpm++2m" | "unipc" | "euler" | "heun" (diffusion/samplers.py)
  config.sample.steps = 15           # model evaluations (heun: 2 * steps - 1)
  config.sample.spacing = "karras"   # noise levels: "uniform" | "linspace" | "trailing" | "karras"
  config.sample.sigma_max = 80.0     # karras: cap on the largest sigma (0: the schedule's own; EDM's 80)
  config.sample.eta = 0.0
  config.sample.guidance_scale = 1.0  # conditional models: 1 = no guidance, w > 1 = u + w (c - u), 0 = unconditional
  prompt_settings(config.sample)

  config.inpaint = ml_collections.ConfigDict()  # --mode=inpaint (conprediff_jax/inpainting/run.py)
  config.inpaint.images = ""         # a folder of images at the model's size; empty: the digits of `split`
  config.inpaint.split = "train[1600:]"  # the last 197 digits
  config.inpaint.masks = ""          # a folder of mask images (white = fill), one per image or one for all
  config.inpaint.mask = "box"        # generated when `masks` is empty: "box" | "strokes" | "half" | "border" |
  #                                    "lines" | "super_resolve" (docs/inpainting.md)
  config.inpaint.num_images = 16
  config.inpaint.steps = 50          # RePaint (Gaussian models): its ancestral schedule's steps
  config.inpaint.jump_length = 10    # RePaint (Gaussian models): re-noise this many steps back ...
  config.inpaint.resamples = 10      # ... this many times per jump point; 1 = plain replacement, no resampling

  config.eval = ml_collections.ConfigDict()
  config.eval.every_steps = 0        # periodic eval during training (0: off); --mode=eval scores the latest checkpoint
  config.eval.num_samples = 512
  config.eval.sample_seed = 0        # > 0: other samples (the same checkpoint scored again, for the metric's noise)
  config.eval.batch_size = 128
  config.eval.metric = "fd_digits"   # the best checkpoint's: fd_digits | kid_digits | precision_digits | recall_digits
  #                                    | fid | kid | class_accuracy
  config.eval.inception_weights = ""  # FID Inception-v3 .safetensors (README: "FID"); empty: no FID/KID
  config.eval.inception_sha256 = ""   # optional checksum of that file (a prefix of >= 8 hex digits)
  config.eval.inpaint_masks = ()     # --mode=eval also fills config.inpaint's images under each of these masks
  #                                    (docs/inpainting.md) and scores them: masked_mse, and lpips and fid with weights
  config.eval.lpips_weights = ""     # LPIPS .safetensors (evaluation/convert_lpips_weights.py): --mode=inpaint
  #                                    scores the filled images against the originals; empty: no LPIPS
  config.eval.lpips_sha256 = ""      # optional checksum of that file (a prefix of >= 8 hex digits)
  config.eval.reference_stats = ""   # .npz with mu, sigma of the real data; empty: computed from the data once
  config.eval.reference_samples = 10000

  config.mesh = ml_collections.ConfigDict()
  config.mesh.shape = (-1, 1)        # -1: all remaining devices
  config.mesh.axes = ("data", "fsdp")  # add "model" (e.g. shape (-1, 1, 2)) to split wide layers' features
  return config


def text_settings() -> ml_collections.ConfigDict:
  """How a text-conditional model (model.text_conditional) reads its prompt (models/text_encoder.py)."""
  text = ml_collections.ConfigDict()
  text.encoder = "bytes"             # "bytes": a small byte-level transformer trained jointly | "precomputed":
  #                                    embeddings a frozen encoder (T5, CLIP) made ahead, carried by the data
  text.max_length = 48               # prompt positions: bytes, or embedding vectors; longer prompts are cut
  text.width = 64                    # bytes: the encoder's width, which the cross-attention reads
  text.depth = 2                     # bytes: transformer layers
  text.num_heads = 4                 # bytes: attention heads
  text.embedding_dim = 0             # precomputed: the stored embeddings' width (768 for CLIP ViT-L/14, ...)
  # precomputed: False attends to the embeddings alone, the null prompt a learned [max_length, D] in their place
  # (Stable Diffusion's form; an imported UNet2DConditionModel's). True: a learned position ahead of every prompt.
  text.null_position = True
  return text


def prompt_settings(sample: ml_collections.ConfigDict) -> None:
  """What a text-conditional model samples (sample_requests.py): prompts in turn, one per row of samples.png."""
  sample.prompts = ""                # prompts separated by "|": --config.sample.prompts='the digit 3|a handwritten 7'
  sample.prompts_file = ""           # or a text file, one prompt per line
  sample.prompt_embeddings_file = ""  # text.encoder="precomputed": .npz with prompts [P], embedding [P, L, D], mask
