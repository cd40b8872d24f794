"""The zoo's MONAI Label tasks: inference and training of the zoo's bundles (see ``main.py``)."""
