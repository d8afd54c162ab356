"""diffimage: the DDPM U-Net image model (Ho et al. 2020) on diffcore.

Modules: ``unet`` (the network and ``UNetConfig`` presets), ``data`` (image folders, npz arrays, torchvision
datasets, synthetic shapes), ``task``/``recipe`` (training through diffcore's engine), ``api`` (loading and
sampling), ``grid`` (image grids), ``fid`` (FID and KID with the standard Inception network), ``cli`` (the
``diffimage`` command).

Quick use::

    import diffimage.api as di
    images = di.load("runs/cifar10").sample(16, sampler="ddim", steps=50)
"""

__version__ = "0.1.0"
