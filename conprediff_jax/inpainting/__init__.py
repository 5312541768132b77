"""Inpainting: masks (generated or read), RePaint for Gaussian models, and `--mode=inpaint` (run.py).

A mask here is bool [H, W], True where the pixel is known (kept) and False where the model fills it in. Mask files
follow the common convention of inpainting datasets (e.g. LaMa's): white marks the region to fill.
"""
