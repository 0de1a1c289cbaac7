"""Training recipes and entry points. Imports ``zoo``; ``zoo`` never imports this package."""
