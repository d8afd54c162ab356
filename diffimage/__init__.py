"""diffimage: the DDPM U-Net image model (Ho et al. 2020) on diffcore.

Modules (the same roles as diffwave's): ``config`` (``UNetConfig`` and its presets), ``model`` (the U-Net),
``data`` (image folders, npz arrays, torchvision datasets, synthetic shapes; the data sets of a recipe), ``recipe``
(the recipe dataclasses and loader), ``task`` (training through diffcore's engine), ``sample`` (sampling a trained
network), ``evaluate`` (bits/dim, FID/KID), ``api`` (loading a model; re-exports), ``cli`` (the ``diffimage``
command); and ``fid`` (FID and KID with the standard Inception network), ``grid`` (image grids),
``diffusers_ddpm`` (diffusers' DDPM U-Net import), ``quickstart``.

Quick use::

    import diffimage.api as di
    images = di.load("runs/cifar10").sample(16, sampler="ddim", steps=50)
"""

__version__ = "0.1.0"
