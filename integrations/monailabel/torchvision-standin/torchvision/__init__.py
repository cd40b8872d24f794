"""Stand-in for torchvision in the zoo's MONAI Label environment (see this package's pyproject.toml)."""

__version__ = "0.28.0+zoo.standin"
