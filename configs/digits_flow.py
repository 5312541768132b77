"""Flow matching on the embedded digits: the default UNet and context loss, trained on rectified flow's velocity with
logit-normal timesteps (SD3's objective) instead of Gaussian diffusion's v-prediction.

    python -m conprediff_jax.main --config=configs/digits_flow.py --workdir=workdirs/digits_flow
    python -m conprediff_jax.main --config=configs/digits_flow.py --workdir=workdirs/digits_flow --mode=eval

Samples with DDIM at eta 0, which for this process is the Euler step of the flow's ODE (diffusion/gaussian.py);
the other solvers and RePaint inpainting run on it unchanged. On a 2-core CPU it trains in about the default's time
(the same network and steps). Results to expect: docs/families.md, "Flow matching".
"""

from configs import default


def get_config():
  config = default.get_config()
  config.diffusion.update(process="flow", timestep_sampling="logit_normal")
  config.sample.update(sampler="ddim", steps=50, spacing="uniform", sigma_max=0.0)
  return config
