"""The PyTorch side of a text-conditional export: our text encoder as a torch module, and the guided DDIM loop that
drives diffusers' UNet2DConditionModel with it. It imports torch and diffusers, nothing of this project: copy the
file wherever the exported folder goes.

    python -m conprediff_jax.main --config=configs/digits_text.py --workdir=workdirs/digits_text --mode=export
    # PyTorch side:
    pipe = TextToImage("workdirs/digits_text/export")
    images = pipe(["the digit 3", "a handwritten nine"], guidance_scale=1.5, num_inference_steps=50)

The folder (export/diffusers_export.py, export_text_to_image) holds `unet/` (UNet2DConditionModel), `scheduler/`
(DDIMScheduler), `text_encoder/` (config.json and model.safetensors, a plain state dict) and, for a latent model,
`vae/` (AutoencoderKL). The encoder's context has a learned first position that is always valid; the UNet reads it
with the encoder's mask (`encoder_attention_mask`), and the empty prompt is the unconditional input of guidance.
"""

import json
import os

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F


class _Block(nn.Module):
  """Pre-LN transformer block (models/attention.py's Block): fused qkv, tanh-approximated GELU."""

  def __init__(self, width: int, heads: int, eps: float):
    super().__init__()
    self.heads = heads
    self.norm1, self.norm2 = nn.LayerNorm(width, eps=eps), nn.LayerNorm(width, eps=eps)
    self.attn = nn.Module()
    self.attn.qkv, self.attn.out = nn.Linear(width, 3 * width), nn.Linear(width, width)
    self.mlp_in, self.mlp_out = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

  def forward(self, x, mask):
    b, n, c = x.shape
    q, k, v = self.attn.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
    attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
    x = x + self.attn.out(attended.transpose(1, 2).reshape(b, n, c))
    return x + self.mlp_out(F.gelu(self.mlp_in(self.norm2(x)), approximate="tanh"))


class TextEncoder(nn.Module):
  """`encode(prompts)` (byte-level encoder) or `forward(embedding, mask)` (precomputed embeddings) -> (context
  [B, 1 + max_length, D], mask bool [B, 1 + max_length]), as models/text_encoder.py."""

  def __init__(self, config: dict):
    super().__init__()
    self.config = config
    if config["encoder"] == "bytes":
      width = config["width"]
      self.token_embedding = nn.Embedding(config["vocab"], width)
      self.position_embedding = nn.Parameter(torch.zeros(1 + config["max_length"], width))
      self.blocks = nn.ModuleList([_Block(width, config["num_heads"], config["layer_norm_eps"])
                                   for _ in range(config["depth"])])
      self.norm_out = nn.LayerNorm(width, eps=config["layer_norm_eps"])
    elif config.get("null_position", True):
      self.null_embedding = nn.Parameter(torch.zeros(1, config["embedding_dim"]))
    else:  # Stable Diffusion's form: the embeddings alone; the null prompt a learned [max_length, D]
      self.null_prompt = nn.Parameter(torch.zeros(config["max_length"], config["embedding_dim"]))

  @classmethod
  def from_folder(cls, folder: str) -> "TextEncoder":
    from safetensors.torch import load_file  # pylint: disable=g-import-not-at-top
    with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
      encoder = cls(json.load(f))
    encoder.load_state_dict(load_file(os.path.join(folder, "model.safetensors")))
    return encoder.eval()

  def tokens(self, prompts) -> torch.Tensor:
    """Each prompt's UTF-8 bytes + 1, cut or padded to max_length (conditioning.encode_text)."""
    c = self.config
    out = torch.full((len(prompts), c["max_length"]), c["pad"], dtype=torch.long)
    for i, prompt in enumerate(prompts):
      data = list(prompt.encode("utf-8")[:c["max_length"]])
      out[i, :len(data)] = torch.tensor(data, dtype=torch.long) + 1
    return out

  def encode(self, prompts):
    c = self.config
    tokens = self.tokens(prompts)
    ids = torch.cat([torch.full((len(prompts), 1), c["bos"], dtype=torch.long), tokens], dim=1)
    mask = ids != c["pad"]
    x = self.token_embedding(ids) + self.position_embedding[:ids.shape[1]]
    for block in self.blocks:
      x = block(x, mask)
    return self.norm_out(x), mask

  def forward(self, embedding: torch.Tensor, mask: torch.Tensor):
    """Precomputed embeddings [B, L, D] with their validity mask [B, L] behind the learned null position."""
    length = self.config["max_length"]
    embedding, mask = embedding[:, :length], mask[:, :length].bool()
    pad = length - embedding.shape[1]
    embedding, mask = F.pad(embedding, (0, 0, 0, pad)), F.pad(mask, (0, pad), value=False)
    if not self.config.get("null_position", True):
      empty = ~mask.any(dim=1)
      return (torch.where(empty[:, None, None], self.null_prompt[None], embedding), mask | empty[:, None])
    null = self.null_embedding.expand(embedding.shape[0], 1, -1)
    return (torch.cat([null, embedding], dim=1),
            torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1))


class TextToImage:
  """Guided DDIM (eta 0) from an exported text-conditional model: `pipe(prompts) -> images` float [N, H, W, C] in
  [0, 1]. Guidance is ours: u + scale * (c - u) on the UNet's output, u from the empty prompt (and the null class
  for a class-conditional UNet)."""

  def __init__(self, folder: str):
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel  # pylint: disable=g-import-not-at-top
    self.unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet").eval()
    self.scheduler = DDIMScheduler.from_pretrained(folder, subfolder="scheduler")
    self.text_encoder = TextEncoder.from_folder(os.path.join(folder, "text_encoder"))
    has_vae = os.path.isdir(os.path.join(folder, "vae"))
    self.vae = AutoencoderKL.from_pretrained(folder, subfolder="vae").eval() if has_vae else None

  def context(self, prompts):
    if self.text_encoder.config["encoder"] == "bytes":
      return self.text_encoder.encode(prompts)
    raise ValueError("this model reads precomputed embeddings: pass `context=text_encoder(embedding, mask)`")

  @torch.no_grad()
  def __call__(self, prompts=None, *, context=None, class_labels=None, guidance_scale: float = 1.0,
               num_inference_steps: int = 50, generator=None, latents=None) -> np.ndarray:
    context, mask = context if context is not None else self.context(prompts)
    n = context.shape[0]
    null_class = (self.unet.config.num_class_embeds or 0) - 1
    labels = None if null_class < 0 else (class_labels if class_labels is not None
                                          else torch.full((n,), null_class, dtype=torch.long))
    guided = guidance_scale != 1.0
    if guided:  # one forward over the doubled batch: conditional, then unconditional
      if self.text_encoder.config["encoder"] == "bytes":
        null_context, null_mask = self.text_encoder.encode([""] * n)
      else:
        null_context, null_mask = self.text_encoder(torch.zeros_like(context[:, 1:]), torch.zeros_like(mask[:, 1:]))
      context, mask = torch.cat([context, null_context]), torch.cat([mask, null_mask])
      labels = None if labels is None else torch.cat([labels, torch.full_like(labels, null_class)])
    size, channels = self.unet.config.sample_size, self.unet.config.in_channels
    x = latents if latents is not None else torch.randn((n, channels, size, size), generator=generator)
    self.scheduler.set_timesteps(num_inference_steps)
    for t in self.scheduler.timesteps:
      out = self.unet(torch.cat([x, x]) if guided else x, t, encoder_hidden_states=context,
                      encoder_attention_mask=mask, class_labels=labels).sample
      if guided:
        conditional, unconditional = out.chunk(2)
        out = unconditional + guidance_scale * (conditional - unconditional)
      x = self.scheduler.step(out, t, x, eta=0.0, use_clipped_model_output=True).prev_sample
    if self.vae is not None:
      x = self.vae.decode(x / self.vae.config.scaling_factor).sample
    return (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
