"""A MONAI Deploy App SDK application that segments a DICOM study with a bundle of this project.

Needs the ``deploy`` extra (``pip install 'unet-monai[deploy]'``: ``monai-deploy-app-sdk``, which brings the
Holoscan SDK). The graph is the SDK's DICOM loader, its series selector (MONAI Deploy selection rules),
this project's bundle run on the selected series (:mod:`unet_monai.deploy.operator`, the SDK's custom
operator route) and the SDK's DICOM SEG writer. :mod:`unet_monai.deploy.app` composes it; the folder
``apps/unet_seg`` packages it as a MONAI Application Package (see OPERATIONS.md).
"""
