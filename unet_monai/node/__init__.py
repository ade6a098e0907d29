"""A listening DICOM node (``unet-monai serve``): a Storage SCP, a durable on-disk queue and a worker that
segments each completed series and sends its SEG back."""
