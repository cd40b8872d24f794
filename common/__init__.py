"""Shared components of the bundle zoo.

Bundle configs reference these as ``common.<module>.<Name>``. In the repository ``common`` is importable
from the repository root; a packaged bundle carries a copy of it at its own root, so it runs outside the repo.
"""
