"""Text-to-image on MS-COCO 256x256 by latent diffusion with the context loss and classifier-free guidance.

    python -m conprediff_jax.data.prepare --images=train2014 --name=coco256 --data_dir=~/tensorflow_datasets \
        --resolution=256 --captions=captions.txt                                  # docs/datasets.md (captions.txt)
    python -m conprediff_jax.main --config=configs/paper_kl.py:coco --workdir=workdirs/coco_kl          # stage 1
    python -m conprediff_jax.main --config=configs/coco_t2i.py --workdir=workdirs/coco_t2i              # stage 2
    python -m conprediff_jax.main --config=configs/coco_t2i.py --workdir=workdirs/coco_t2i --mode=sample \
        --config.sample.prompts='a red bus on a city street|a bowl of fruit on a table'

A Stable-Diffusion-1-shaped UNet (channels 320, mults (1, 2, 4, 4), every attention a transformer block that
cross-attends to the prompt; ~0.9B parameters with the text encoder) on the 32x32x4 latents of the f8 KL
autoencoder; a 6-layer byte-level text encoder (width 512, 77 positions) trained jointly, as LDM trained its text
transformer; 10% of captions dropped for guidance (scale 4 at sampling). Precomputed CLIP or T5 embeddings plug in
instead: `--config.text.encoder=precomputed --config.text.embedding_dim=768 --config.data.text_embeddings_file=...`
(docs/datasets.md). Sized for a TPU v4-64 (global batch 512, bf16, 500k steps; weights, EMA and Adam moments split
over groups of four chips): the TPU compiler fits its train step in 13.3 GiB of a v4 chip's 30.75 and predicts at
least 0.123 s a step, compiled in 21.6 GiB of host memory (`--mode=compile --topology=v4-64`, docs/scaling.md).
Target: the paper's COCO FID 6.21, which is zero-shot (trained on other image-text data); training on COCO itself,
as this config does, is not that protocol. Not run at this size here; tests/test_paper_configs.py builds it and
trains one step at reduced size.
"""

from configs import paper


def get_config():
  config = paper.latent_diffusion("coco", channels=320, channel_mults=(1, 2, 4, 4),
                                  attention_resolutions=(32, 16, 8), num_heads=8, steps=500_000, batch_size=512,
                                  learning_rate=1e-4)
  config.model.text_conditional = True
  # 0.87B parameters: their float32 weights, EMA and Adam moments (14 GB) split over groups of four chips (fsdp),
  # the batch over the rest of the slice (docs/scaling.md).
  config.mesh.shape = (-1, 4)
  config.data.captions = "~/tensorflow_datasets/coco256/1.0.0/captions.txt"
  config.text.update(encoder="bytes", max_length=77, width=512, depth=6, num_heads=8)
  config.train.cond_dropout = 0.1
  config.sample.update(guidance_scale=4.0, prompts="a red bus on a city street|a bowl of fruit on a table")
  return config
