"""What MONAI Label imports from torchvision.utils, for pathology debug images that no zoo bundle makes."""


def make_grid(*args, **kwargs):
    raise NotImplementedError(
        "torchvision is a stand-in in this environment: its 0.28 release for torch 2.13 is a CUDA build only"
    )


save_image = make_grid
