"""The example services (not installed with the package); see README.md."""
