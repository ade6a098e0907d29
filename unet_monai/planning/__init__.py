"""Planning a bundle from a user's dataset: the dataset fingerprint (``planning.fingerprint``).

Kept light on purpose: nothing is imported here, so ``import unet_monai.planning`` does not load torch or
MONAI; import the submodule you need (``from unet_monai.planning.fingerprint import fingerprint_dataset``).
"""
