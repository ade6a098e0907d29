"""``python -m unet_monai.deploy -i DICOM_FOLDER -o OUTPUT -m BUNDLE``: the default rules, or
``$UNET_MONAI_RULES``."""

from unet_monai.deploy.app import main

if __name__ == "__main__":
    main()
